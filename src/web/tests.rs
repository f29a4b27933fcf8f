use super::*;
use crate::db::JobRecord;
use crate::db::dashboard::like_substring;
use crate::http::{Parsed, parse_request};
use crate::records::EvalId;
use crate::spec::Specification;
use std::io::Write;
use std::path::{Path, PathBuf};

pub(super) const NOW: i64 = 1_700_000_000;
const ODD: &str = "a&b \"q\" <'x'>";

fn spec(name: &str) -> Specification {
    Specification {
        name: name.into(),
        url: format!("file:///srv/{}.git", name.len()),
        branch: Some("master".into()),
        commit: None,
        tag: None,
        no_compile: true,
        load_path: ".".into(),
        file: "ci.scm".into(),
        proc_name: "jobs".into(),
        arguments: "()".into(),
        record: None,
    }
}

pub(super) fn job(name: &str, nonce: &str) -> JobRecord {
    let id: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{id:a<32}-{id}-{nonce}.drv"),
        system: "x86_64-linux".into(),
        nix_name: format!("{id}-1.0"),
        outputs: vec![("out".into(), format!("/gnu/store/{id:b<32}-{id}-{nonce}"))],
        ..JobRecord::default()
    }
}

/// `hello`: evaluation 1 (NOW-3600 .. NOW-3590) with ok (succeeded,
/// 20 s, a 60-line log), bad (failed), `<script>alert(1)</script>`
/// (failed-dependency), 100%_done (scheduled); `ODD`: no evaluation;
/// `quiet`: one failed evaluation.
pub(super) fn fixture() -> (Db, PathBuf) {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("hello"), spec(ODD), spec("quiet")])
        .unwrap();
    let jobs: Vec<JobRecord> = ["ok", "bad", "<script>alert(1)</script>", "100%_done"]
        .iter()
        .map(|n| job(n, "1"))
        .collect();
    let eval = db
        .begin_evaluation("hello", "abcdef0123456789", NOW - 3600)
        .unwrap();
    db.add_jobs("hello", eval, &jobs, NOW - 3600).unwrap();
    db.complete_evaluation("hello", eval, "abcdef0123456789", NOW - 3590)
        .unwrap();
    let quiet = db.begin_evaluation("quiet", "fedcba", NOW - 100).unwrap();
    db.fail_evaluation(
        "quiet",
        quiet,
        "fedcba",
        "boom <oops>",
        &Default::default(),
        NOW - 40,
    )
    .unwrap();
    let root = std::env::temp_dir().join(format!(
        "cuirass-web-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(root.join("ab")).unwrap();
    let log = root.join("ab").join("ok.drv.bz2");
    let mut enc = bzip2::write::BzEncoder::new(
        std::fs::File::create(&log).unwrap(),
        bzip2::Compression::default(),
    );
    for i in 1..=60 {
        writeln!(enc, "line {i} <b>").unwrap();
    }
    enc.finish().unwrap();
    db.build_started(&jobs[0].derivation, log.to_str().unwrap(), NOW - 3000)
        .unwrap();
    db.build_finished(
        &jobs[0].derivation,
        crate::db::status::SUCCEEDED,
        None,
        NOW - 2980,
    )
    .unwrap();
    db.build_finished(
        &jobs[1].derivation,
        crate::db::status::FAILED,
        None,
        NOW - 2900,
    )
    .unwrap();
    db.build_finished(
        &jobs[2].derivation,
        crate::db::status::FAILED_DEPENDENCY,
        None,
        NOW - 2900,
    )
    .unwrap();
    (db, root)
}

pub(super) fn request(target: &str) -> Request {
    let text = format!("GET {target} HTTP/1.1\r\n\r\n");
    match parse_request(text.as_bytes()) {
        Ok(Parsed::Complete(req, _)) => req,
        other => panic!("{target}: {other:?}"),
    }
}

pub(super) fn get_with(
    db: &Db,
    root: &Path,
    target: &str,
    counters: &HttpCounters,
) -> (u16, String, String) {
    let logs = buildlog::Places::new(root, root.join("copies"));
    let ctx = Ctx {
        now: NOW,
        logs: &logs,
        counters,
        session: None,
        base_url: "http://ci.example.org",
    };
    let r = respond(db, &request(target), &ctx);
    (
        r.status,
        r.content_type.to_string(),
        String::from_utf8(r.body).unwrap(),
    )
}

/// A page: 200, HTML, and the body.
pub(super) fn page(db: &Db, root: &Path, target: &str) -> String {
    let (code, ct, body) = get_with(db, root, target, &HttpCounters::default());
    assert_eq!((code, ct.as_str()), (200, HTML), "{target}: {body}");
    assert!(body.contains("<meta name=\"viewport\""));
    body
}

pub(super) fn status_of(db: &Db, root: &Path, target: &str) -> u16 {
    get_with(db, root, target, &HttpCounters::default()).0
}

/// The rows of the page's table body.
pub(super) fn rows(body: &str) -> Vec<&str> {
    match body.split_once("<tbody>") {
        Some((_, rest)) => rest
            .split("</tbody>")
            .next()
            .unwrap()
            .split("<tr>")
            .filter(|r| !r.trim().is_empty())
            .collect(),
        None => Vec::new(),
    }
}

#[test]
fn index_lists_every_specification_with_its_latest_evaluation() {
    let (db, root) = fixture();
    let body = page(&db, &root, "/");
    let rows = rows(&body);
    assert_eq!(rows.len(), 3);
    // By name: ODD sorts first.
    assert!(
        rows[0].contains("href=\"/jobset/a%26b%20%22q%22%20%3C%27x%27%3E\""),
        "{}",
        rows[0]
    );
    assert!(rows[0].contains("a&amp;b &quot;q&quot; &lt;&#39;x&#39;&gt;"));
    assert!(rows[0].contains("no evaluation yet"));
    let hello = rows[1];
    assert!(hello.contains("<a href=\"/jobset/hello\">hello</a>"));
    assert!(hello.contains("<a href=\"/eval/1\">#1</a>"));
    assert!(hello.contains("<code>abcdef012345</code>"));
    assert!(hello.contains("href=\"/eval/1?status=succeeded\">1</a>"));
    assert!(hello.contains("href=\"/eval/1?status=failed\">2</a>"));
    assert!(hello.contains("href=\"/eval/1?status=pending\">1</a>"));
    assert!(hello.contains(">1 hour ago</time>"), "{hello}");
    assert!(rows[2].contains("evaluation failed"));
    assert!(!body.contains(ODD), "unescaped name");
}

#[test]
fn an_odd_specification_name_has_its_own_page() {
    let (db, root) = fixture();
    let body = page(&db, &root, "/jobset/a%26b%20%22q%22%20%3C%27x%27%3E");
    assert!(body.contains("<h1>a&amp;b &quot;q&quot; &lt;&#39;x&#39;&gt;</h1>"));
    assert!(body.contains("No evaluations on this page."));
    let svg = get_with(
        &db,
        &root,
        "/jobset/a%26b%20%22q%22%20%3C%27x%27%3E/badge.svg",
        &HttpCounters::default(),
    );
    assert_eq!((svg.0, svg.1.as_str()), (200, "image/svg+xml"));
    assert!(svg.2.contains(">no evaluation</text>") && svg.2.contains("#7b8494"));
    assert_eq!(status_of(&db, &root, "/jobset/nope"), 404);
    assert_eq!(status_of(&db, &root, "/jobset/nope/badge.svg"), 404);
}

#[test]
fn a_jobset_pages_its_evaluations_newest_first() {
    let (mut db, root) = fixture();
    for i in 0..24 {
        db.register_evaluation(
            "hello",
            &format!("c{i:02}"),
            &[job("ok", &i.to_string())],
            NOW - 50,
        )
        .unwrap();
    }
    // 25 evaluations: ids 3..=26 and 1.
    let first = page(&db, &root, "/jobset/hello");
    let ids: Vec<&str> = rows(&first)
        .iter()
        .map(|r| r.split("\">#").nth(1).unwrap().split('<').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    assert_eq!((ids[0], ids[19]), ("26", "7"));
    assert!(first.contains("<a rel=\"next\" href=\"/jobset/hello?page=2\">"));
    assert!(!first.contains("rel=\"prev\""));
    assert!(first.contains("<img src=\"/jobset/hello/badge.svg\""));
    let second = page(&db, &root, "/jobset/hello?page=2");
    assert_eq!(rows(&second).len(), 5);
    assert!(rows(&second)[4].contains("#1<"));
    assert!(rows(&second)[4].contains("<td class=\"hide-s\">10s</td>"));
    assert!(second.contains("rel=\"prev\" href=\"/jobset/hello?page=1\""));
    assert!(!second.contains("rel=\"next\""));
    assert_eq!(status_of(&db, &root, "/jobset/hello?page=0"), 400);
    assert_eq!(status_of(&db, &root, "/jobset/hello?page=x"), 400);
    // The failed evaluation shows its reason, escaped.
    let quiet = page(&db, &root, "/jobset/quiet");
    assert!(quiet.contains("boom &lt;oops&gt;"));
}

#[test]
fn an_evaluation_filters_and_searches_its_builds() {
    let (db, root) = fixture();
    let jobs_of = |target: &str| -> Vec<String> {
        rows(&page(&db, &root, target))
            .iter()
            .map(|r| {
                r.split("</a></td><td>")
                    .nth(1)
                    .unwrap()
                    .split("</td>")
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        jobs_of("/eval/1"),
        [
            "ok",
            "bad",
            "&lt;script&gt;alert(1)&lt;/script&gt;",
            "100%_done"
        ]
    );
    assert_eq!(jobs_of("/eval/1?status=succeeded"), ["ok"]);
    assert_eq!(
        jobs_of("/eval/1?status=failed"),
        ["bad", "&lt;script&gt;alert(1)&lt;/script&gt;"]
    );
    assert_eq!(jobs_of("/eval/1?status=pending"), ["100%_done"]);
    assert!(jobs_of("/eval/1?status=canceled").is_empty());
    // `%` and `_` are literal, not wildcards.
    assert_eq!(jobs_of("/eval/1?job=%25_"), ["100%_done"]);
    assert!(jobs_of("/eval/1?job=o%25").is_empty());
    assert!(jobs_of("/eval/1?job=_").len() == 1);
    assert_eq!(
        jobs_of("/eval/1?status=failed&job=SCRIPT"),
        ["&lt;script&gt;alert(1)&lt;/script&gt;"]
    );
    let body = page(&db, &root, "/eval/1?status=failed");
    assert!(!body.contains("<script>"));
    assert!(body.contains("<a class=\"on\" href=\"/eval/1?status=failed\">failed (2)</a>"));
    assert!(body.contains("href=\"/eval/1?status=all\">all (4)</a>"));
    assert!(
        body.contains("<a href=\"/jobset/hello\">hello</a>"),
        "breadcrumb"
    );
    assert!(body.contains("<a href=\"/build/3/details\">3</a>"));
    assert!(body.contains("st-failed-dependency"));
    let ok = rows(&page(&db, &root, "/eval/1?status=succeeded"))[0].to_string();
    assert!(ok.contains("st-succeeded") && ok.contains("20s"), "{ok}");
    assert!(
        ok.contains("title=\"2023-11-14 21:23:40 UTC\">49 minutes ago"),
        "{ok}"
    );
    assert_eq!(status_of(&db, &root, "/eval/1?status=weird"), 400);
    assert_eq!(status_of(&db, &root, "/eval/99"), 404);
    assert_eq!(status_of(&db, &root, "/eval/x"), 400);
    let quiet = page(&db, &root, "/eval/2");
    assert!(quiet.contains("<pre>boom &lt;oops&gt;</pre>"));
}

/// Recorded checkouts are listed one per channel, instead of the commit.
#[test]
fn an_evaluation_lists_its_checkouts() {
    let (mut db, root) = fixture();
    let checkout = |channel: &str, commit: &str| crate::fetch::Checkout {
        channel: channel.into(),
        commit: commit.into(),
        directory: format!("/cache/{channel}").into(),
    };
    db.add_checkouts(
        EvalId(2),
        &[checkout("mine", "abc123"), checkout("guix", "")],
    )
    .unwrap();
    let body = page(&db, &root, "/eval/2");
    assert!(
        body.contains("<dt>Checkouts</dt><dd>guix <code>(left to guix time-machine)</code><br>mine <code>abc123</code></dd>"),
        "{body}"
    );
    assert!(page(&db, &root, "/eval/1").contains("<dt>Commit</dt>"));
}

#[test]
fn an_evaluation_pages_its_builds() {
    let (mut db, root) = fixture();
    let jobs: Vec<JobRecord> = (0..120).map(|i| job(&format!("j{i:03}"), "p")).collect();
    let eval = db.register_evaluation("hello", "big", &jobs, NOW).unwrap();
    let p1 = page(&db, &root, &format!("/eval/{eval}?job=j"));
    assert_eq!(rows(&p1).len(), 50);
    assert!(p1.contains("120 matching builds"));
    assert!(p1.contains(&format!(
        "rel=\"next\" href=\"/eval/{eval}?status=all&amp;job=j&amp;page=2\""
    )));
    let p3 = page(&db, &root, &format!("/eval/{eval}?job=j&page=3"));
    assert_eq!(rows(&p3).len(), 20);
    assert!(rows(&p3)[19].contains(">j119<"));
    assert!(!p3.contains("rel=\"next\""));
}

#[test]
fn a_build_page_shows_everything_and_the_log_tail() {
    let (db, root) = fixture();
    let body = page(&db, &root, "/build/1/details");
    assert!(body.contains("<h1>Build 1: ok</h1>"));
    for want in [
        "<dd>ok</dd>",
        "st-succeeded",
        "<a href=\"/jobset/hello\">hello</a>",
        "<a href=\"/eval/1\">#1</a>",
        "<dd>ok-1.0</dd>",
        "<dd>x86_64-linux</dd>",
        "-ok-1.drv</code>",
        "<dd>20s</dd>",
        "-ok-1</code>",
        "<a href=\"/build/1/log/raw\">Full log</a>",
        "line 60 &lt;b&gt;",
        "<pre>line 11 &lt;b&gt;\n",
    ] {
        assert!(body.contains(want), "{want}: {body}");
    }
    assert!(!body.contains("line 10 "), "more than 50 lines");
    assert!(body.contains("<dd>silent the daemon's, total the daemon's</dd>"));
    assert!(!body.contains("<dt>Reason</dt>"), "a success has no reason");
    let missing = page(&db, &root, "/build/3/details");
    assert!(missing.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!missing.contains("<script>"));
    assert!(missing.contains("No log."));
    assert_eq!(status_of(&db, &root, "/build/77/details"), 404);
    // The JSON routes are untouched.
    let (code, ct, _) = get_with(&db, &root, "/build/1", &HttpCounters::default());
    assert_eq!((code, ct.as_str()), (200, "application/json"));
}

#[test]
fn tails() {
    assert_eq!(pages::tail(b"a\nb\nc\n", 2), "b\nc");
    assert_eq!(pages::tail(b"a\nb", 5), "a\nb");
    assert_eq!(pages::tail(b"", 5), "");
}

#[test]
fn search_finds_jobs_across_evaluations() {
    let (mut db, root) = fixture();
    db.register_evaluation("quiet", "q2", &[job("okay", "2")], NOW)
        .unwrap();
    let body = page(&db, &root, "/search?query=OK");
    let found: Vec<&str> = rows(&body)
        .iter()
        .map(|r| {
            r.split("/details\">")
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(found, ["5", "1"]);
    assert!(rows(&body)[0].contains("<a href=\"/jobset/quiet\">quiet</a>"));
    let odd = page(&db, &root, "/search?query=%3Cscript");
    assert_eq!(rows(&odd).len(), 1);
    assert!(odd.contains("value=\"&lt;script\""));
    assert!(page(&db, &root, "/search?query=zzz").contains("No job matches."));
    assert!(page(&db, &root, "/search").contains("name=\"query\""));
}

#[test]
fn badges_count_the_latest_evaluation() {
    let (mut db, root) = fixture();
    let svg = get_with(
        &db,
        &root,
        "/jobset/hello/badge.svg",
        &HttpCounters::default(),
    )
    .2;
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.contains(">1 passed, 2 failed</text>") && svg.contains("#c62828"));
    let eval = db
        .register_evaluation("hello", "g", &[job("fine", "g")], NOW)
        .unwrap();
    let pending = get_with(
        &db,
        &root,
        "/jobset/hello/badge.svg",
        &HttpCounters::default(),
    )
    .2;
    assert!(pending.contains(">0 passed, 0 failed</text>"));
    let fine = job("fine", "g").derivation;
    db.build_finished(&fine, crate::db::status::SUCCEEDED, None, NOW)
        .unwrap();
    assert_eq!(eval, 3);
    let green = get_with(
        &db,
        &root,
        "/jobset/hello/badge.svg",
        &HttpCounters::default(),
    )
    .2;
    assert!(green.contains(">1 passed, 0 failed</text>") && green.contains("#2e8540"));
    assert!(badge::render("a<b", "c&d", "#000").contains(">a&lt;b</text>"));
}

/// A Prometheus text-format parser, strict enough to catch a malformed
/// line: (name, labels, value) samples, and the HELP/TYPE of each family.
type Sample = (String, Vec<(String, String)>, f64);

pub fn parse_prometheus(text: &str) -> (Vec<Sample>, Vec<String>) {
    let mut samples = Vec::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kind, name) = (w.next().unwrap(), w.next().unwrap());
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram"].contains(&w.next().unwrap()),
                    "{line}"
                );
                typed.push(name.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = inner
                    .split("\",")
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        samples.push((name.to_string(), labels, value));
    }
    (samples, typed)
}

#[test]
fn metrics_in_the_text_format() {
    let (db, root) = fixture();
    let mut counters = HttpCounters::default();
    counters.record(crate::routes::pattern(&request("/build/1")), 200);
    counters.record(crate::routes::pattern(&request("/build/2")), 200);
    counters.record(crate::routes::pattern(&request("/no/such/thing")), 404);
    let (code, ct, text) = get_with(&db, &root, "/metrics", &counters);
    assert_eq!((code, ct.as_str()), (200, metrics::CONTENT_TYPE));
    let (samples, typed) = parse_prometheus(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&(k.to_string(), v.to_string())))
            })
            .unwrap_or_else(|| panic!("{name} {labels:?}\n{text}"))
            .2
    };
    assert_eq!(value("cuirass_builds", &[("status", "succeeded")]), 1.0);
    assert_eq!(value("cuirass_builds", &[("status", "failed")]), 1.0);
    assert_eq!(
        value("cuirass_builds", &[("status", "failed-dependency")]),
        1.0
    );
    assert_eq!(value("cuirass_builds", &[("status", "scheduled")]), 1.0);
    assert_eq!(value("cuirass_builds", &[("status", "canceled")]), 0.0);
    assert_eq!(value("cuirass_build_queue_length", &[]), 1.0);
    assert_eq!(
        value("cuirass_evaluations_total", &[("outcome", "succeeded")]),
        1.0
    );
    assert_eq!(
        value("cuirass_evaluations_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        value("cuirass_evaluations_total", &[("outcome", "in-progress")]),
        0.0
    );
    // ok took 20 s; bad and the script job were settled at once (0 s).
    assert_eq!(value("cuirass_build_duration_seconds_count", &[]), 3.0);
    assert_eq!(value("cuirass_build_duration_seconds_sum", &[]), 20.0);
    assert_eq!(
        value("cuirass_build_duration_seconds_bucket", &[("le", "10")]),
        2.0
    );
    assert_eq!(
        value("cuirass_build_duration_seconds_bucket", &[("le", "30")]),
        3.0
    );
    // Evaluations: 10 s and 60 s.
    assert_eq!(value("cuirass_evaluation_duration_seconds_sum", &[]), 70.0);
    assert_eq!(
        value(
            "cuirass_evaluation_duration_seconds_bucket",
            &[("le", "30")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "cuirass_http_requests_total",
            &[("route", "/build/:id"), ("code", "200")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "cuirass_http_requests_total",
            &[("route", "other"), ("code", "404")]
        ),
        1.0
    );
    assert!(value("cuirass_database_size_bytes", &[]) > 0.0);
    for family in [
        "cuirass_builds",
        "cuirass_build_queue_length",
        "cuirass_evaluations_total",
        "cuirass_build_duration_seconds",
        "cuirass_evaluation_duration_seconds",
        "cuirass_http_requests_total",
        "cuirass_database_size_bytes",
    ] {
        assert!(typed.contains(&family.to_string()), "{family}");
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
    }
}

#[test]
fn metrics_read_indexes_and_the_histogram_not_the_builds_table() {
    let (db, _root) = fixture();
    let plan = |sql: &str| crate::db::query_plan(db.connection(), sql, []);
    // Durations come from the histogram kept as builds finish.
    let durations = plan("SELECT bucket, count, sum FROM BuildDurations");
    assert!(!durations.contains("Builds"), "{durations}");
    let statuses = plan("SELECT status, COUNT(*) FROM Builds GROUP BY status ORDER BY status");
    assert!(statuses.contains("COVERING INDEX"), "{statuses}");
}

#[test]
fn routes_are_counted_by_pattern() {
    for (target, want) in [
        ("/", "/"),
        ("/jobset/x%20y", "/jobset/:name"),
        ("/jobset/x/badge.svg", "/jobset/:name/badge.svg"),
        ("/eval/9", "/eval/:id"),
        ("/build/9/details", "/build/:id/details"),
        ("/build/9/log/raw", "/build/:id/log/raw"),
        ("/api/jobs/history?spec=a", "/api/jobs/history"),
        ("/build/9", "/build/:id"),
        ("/build/abc-x.drv", "/build/:derivation.drv"),
        ("/api/evaluation?id=1", "/api/evaluation"),
        ("/api/jobs?evaluation=1", "/api/jobs"),
        ("//api/evaluations?nr=1", "/api/evaluations"),
        ("/output/abc-x", "/output/:item"),
        ("/log/abc-x", "/log/:item"),
        ("/search/latest?query=x", "/search/latest"),
        ("/search/latest/archive?query=x", "/search/latest/:type"),
        ("/favicon.ico", "other"),
        ("/a/b/c/d/e", "other"),
    ] {
        assert_eq!(crate::routes::pattern(&request(target)), want, "{target}");
    }
}

#[test]
fn job_history_across_evaluations() {
    let (mut db, root) = fixture();
    db.register_evaluation("hello", "e3", &[job("ok", "3"), job("bad", "3")], NOW)
        .unwrap();
    db.register_evaluation("quiet", "q", &[job("ok", "q")], NOW)
        .unwrap();
    db.register_evaluation("hello", "e5", &[job("bad", "5")], NOW)
        .unwrap();
    let json = |target: &str| -> (u16, serde_json::Value) {
        let (code, ct, body) = get_with(&db, &root, target, &HttpCounters::default());
        assert_eq!(ct, "application/json");
        (code, serde_json::from_str(&body).unwrap())
    };
    let checkout = |commit: &str| {
        serde_json::json!({"commit": commit, "channel": "hello", "input": "hello",
                           "directory": null})
    };
    let (code, v) = json("/api/jobs/history?spec=hello&names=ok,bad,none&nr=10");
    assert_eq!(code, 200);
    assert_eq!(
        v,
        serde_json::json!([
            {"evaluation": 5, "checkouts": [checkout("e5")], "jobs": [
                {"name": "bad", "build": 8, "status": -2}]},
            {"evaluation": 3, "checkouts": [checkout("e3")], "jobs": [
                {"name": "ok", "build": 5, "status": -2},
                {"name": "bad", "build": 6, "status": -2}]},
            {"evaluation": 1, "checkouts": [checkout("abcdef0123456789")], "jobs": [
                {"name": "ok", "build": 1, "status": 0},
                {"name": "bad", "build": 2, "status": 1}]}
        ])
    );
    // The last two evaluations of hello, of which only 5 has `bad`; 4 is
    // quiet's.
    let (_, v) = json("/api/jobs/history?spec=hello&names=bad&nr=2");
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (_, v) = json("/api/jobs/history?spec=hello&names=ok&nr=2");
    assert_eq!(v[0]["evaluation"], 3);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (_, v) = json("/api/jobs/history?spec=quiet&names=bad&nr=10");
    assert_eq!(v, serde_json::json!([]));
    let many = (0..51).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    for bad in [
        "/api/jobs/history?names=ok&nr=1",
        "/api/jobs/history?spec=hello&nr=1",
        "/api/jobs/history?spec=hello&names=&nr=1",
        "/api/jobs/history?spec=hello&names=ok",
        &format!("/api/jobs/history?spec=hello&names={many}&nr=1"),
    ] {
        let (code, v) = json(bad);
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string());
    }
}

#[test]
fn like_patterns_are_literal() {
    assert_eq!(like_substring("a%b_c\\"), "%a\\%b\\_c\\\\%");
}

#[test]
fn a_build_page_shows_the_limits_and_why_it_failed() {
    let (mut db, root) = fixture();
    let mut slow = job("slow", "limits");
    slow.limits = crate::build::Limits {
        max_silent_time: Some(60),
        timeout: Some(3),
    };
    db.register_evaluation("hello", "c9", &[slow.clone()], NOW - 100)
        .unwrap();
    let id = db
        .dispatch_page(None, 1000)
        .unwrap()
        .iter()
        .map(|p| p.id)
        .max()
        .unwrap();
    db.apply_build_updates(
        &[crate::build::Update::Finished {
            derivation: slow.derivation,
            status: crate::db::status::FAILED,
            log: None,
            reason: Some("timed out after 3 seconds <&>".into()),
        }],
        NOW - 90,
    )
    .unwrap();
    let body = page(&db, &root, &format!("/build/{id}/details"));
    assert!(body.contains("<dd>silent 60 s, total 3 s</dd>"), "{body}");
    assert!(
        body.contains("<dt>Reason</dt><dd>timed out after 3 seconds &lt;&amp;&gt;</dd>"),
        "{body}"
    );
}

#[test]
fn a_pending_builds_page_says_why_it_waits() {
    let (mut db, root) = fixture();
    let lib = job("lib", "w");
    let mut app = job("app", "w");
    app.inputs = vec![lib.derivation.clone()];
    db.register_evaluation("hello", "w1", &[lib, app], NOW)
        .unwrap();
    let queue = db.dispatch_page(None, 10).unwrap();
    let at = |name: &str| {
        queue
            .iter()
            .position(|p| p.derivation.contains(name))
            .unwrap()
    };
    let (lib_id, app_id) = (queue[at("-lib-")].id, queue[at("-app-")].id);
    let started: i64 = db
        .connection()
        .query_row("SELECT COUNT(*) FROM Builds WHERE status = -1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let position = started + at("-lib-") as i64 + 1;
    let body = page(&db, &root, &format!("/build/{lib_id}/details"));
    assert!(
        body.contains(&format!(
            "<dt>Waiting</dt><dd>number {position} in the queue</dd>"
        )),
        "{body}"
    );
    let body = page(&db, &root, &format!("/build/{app_id}/details"));
    assert!(
        body.contains(&format!(
            "<dt>Waiting</dt><dd>for its input, <a href=\"/build/{lib_id}/details\">build {lib_id}</a> (scheduled)</dd>"
        )),
        "{body}"
    );
    let body = page(&db, &root, "/build/1/details");
    assert!(!body.contains("<dt>Waiting</dt>"));
}

#[test]
fn operators_see_buttons_with_their_csrf_token_and_visitors_none() {
    let (db, root) = fixture();
    let logs = buildlog::Places::new(&root, root.join("copies"));
    let counters = HttpCounters::default();
    let session = crate::admin::Session {
        label: "ops <1>".into(),
        csrf: "c5rf".into(),
        expires: std::time::Instant::now(),
    };
    let show = |target: &str, session| {
        let ctx = Ctx {
            now: NOW,
            logs: &logs,
            counters: &counters,
            session,
            base_url: "http://ci.example.org",
        };
        String::from_utf8(respond(&db, &request(target), &ctx).body).unwrap()
    };
    let odd = format!("/jobset/{}", crate::html::url(ODD));
    for target in ["/build/1/details", "/eval/1", "/jobset/hello", odd.as_str()] {
        let anonymous = show(target, None);
        assert!(!anonymous.contains("<form class=\"action\""), "{target}");
        let operator = show(target, Some(&session));
        assert!(
            operator.contains("name=\"csrf\" value=\"c5rf\""),
            "{target}"
        );
        assert!(operator.contains("Log out (ops &lt;1&gt;)"), "{target}");
    }
    // A finished build: restart, no cancel; a scheduled one: cancel.
    let done = show("/build/1/details", Some(&session));
    assert!(done.contains("action=\"/admin/build/1/restart\""));
    assert!(!done.contains("/admin/build/1/cancel"));
    let waiting = show("/build/4/details", Some(&session));
    assert!(
        waiting.contains("action=\"/admin/build/4/cancel\""),
        "{waiting}"
    );
    let eval = show("/eval/1", Some(&session));
    for what in ["restart", "cancel", "retry"] {
        assert!(eval.contains(&format!("action=\"/admin/evaluation/1/{what}\"")));
    }
    let spec = show(&odd, Some(&session));
    let action = format!("/admin/specification/{}/delete", crate::html::url(ODD));
    assert!(spec.contains(&crate::html::esc(&action)), "{spec}");
    assert!(spec.contains(&format!(
        "name=\"confirm\" value=\"{}\"",
        crate::html::esc(ODD)
    )));
}

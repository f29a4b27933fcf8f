//! The dashboard of a real daemon-mode cuirass, over a database filled by
//! a real one-shot build: every page, the badge, the job history and
//! `/metrics`, checked against the database.

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// (status, content type, body) of one GET.
fn get(server: &Server, target: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let ct = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    (head[9..12].parse().unwrap(), ct, body.to_string())
}

fn page(server: &Server, target: &str) -> String {
    let (code, ct, body) = get(server, target);
    assert_eq!(
        (code, ct.as_str()),
        (200, "text/html; charset=utf-8"),
        "{target}"
    );
    assert!(body.starts_with("<!DOCTYPE html>"));
    body
}

fn build_id(conn: &rusqlite::Connection, job: &str) -> i64 {
    conn.query_row(
        "SELECT b.id FROM Builds b JOIN Derivations d
           ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         WHERE d.job_name = ?1",
        [job],
        |r| r.get(0),
    )
    .unwrap()
}

/// Samples of a Prometheus text exposition, checked line by line.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    let mut help = Vec::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.push(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_string());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => {
                    let l = l.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                    for pair in l.split("\",") {
                        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                        assert!(!v.trim_end_matches('"').contains('"'), "{line}");
                    }
                    (n, l)
                }
                None => (series, ""),
            };
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.iter().any(|t| t == f))
                })
                .unwrap_or(name);
            assert!(typed.iter().any(|t| t == family), "no TYPE for {line}");
            assert!(help.iter().any(|t| t == family), "no HELP for {line}");
            samples.push((name.to_string(), labels.to_string(), value));
        }
    }
    samples
}

/// A histogram's buckets are cumulative and end with +Inf equal to _count.
fn check_histogram(samples: &[(String, String, f64)], name: &str) -> f64 {
    let buckets: Vec<&(String, String, f64)> = samples
        .iter()
        .filter(|(n, _, _)| *n == format!("{name}_bucket"))
        .collect();
    assert!(buckets.len() > 2);
    for w in buckets.windows(2) {
        assert!(w[0].2 <= w[1].2, "{w:?}");
    }
    let last = buckets.last().unwrap();
    assert_eq!(last.1, "le=\"+Inf\"");
    let count = samples
        .iter()
        .find(|(n, _, _)| *n == format!("{name}_count"))
        .unwrap()
        .2;
    assert_eq!(last.2, count);
    count
}

#[test]
fn the_dashboard_of_a_real_build() {
    let Built {
        setup, head, name, ..
    } = build_keyword_project("web");
    let conn = setup.db();
    let daemon = Server::start(&setup);

    // The specification, its one evaluation and its counts.
    let index = page(&daemon, "/");
    assert!(
        index.contains(&format!("<a href=\"/jobset/{name}\">{name}</a>")),
        "{index}"
    );
    assert!(index.contains(&format!("<code>{}</code>", &head[..12])));
    assert!(
        index.contains("href=\"/eval/1?status=succeeded\">3</a>"),
        "{index}"
    );
    assert!(index.contains("href=\"/eval/1?status=failed\">2</a>"));
    assert!(index.contains("href=\"/eval/1?status=pending\">0</a>"));

    let jobset = page(&daemon, &format!("/jobset/{name}"));
    assert!(jobset.contains("<a href=\"/eval/1\">#1</a>"));
    assert!(jobset.contains(&format!("<img src=\"/jobset/{name}/badge.svg\"")));

    // The evaluation: every build, then the failed ones.
    let eval = page(&daemon, "/eval/1");
    for job in ["ok-1", "ok-2", "fail", "dep-on-fail", "dep-on-ok"] {
        let id = build_id(&conn, job);
        assert!(
            eval.contains(&format!(
                "<a href=\"/build/{id}/details\">{id}</a></td><td>{job}</td>"
            )),
            "{job}: {eval}"
        );
    }
    let failed = page(&daemon, "/eval/1?status=failed");
    assert!(failed.contains(">fail<") && failed.contains(">dep-on-fail<"));
    assert!(!failed.contains(">ok-1<"));
    assert!(failed.contains("st-failed-dependency"));
    let searched = page(&daemon, "/eval/1?job=dep-");
    assert!(searched.contains("2 matching builds"));

    // A build's page: its log's tail, inline, and the link to all of it.
    let fail = build_id(&conn, "fail");
    let details = page(&daemon, &format!("/build/{fail}/details"));
    let drv: String = conn
        .query_row("SELECT derivation FROM Builds WHERE id = ?1", [fail], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(details.contains(&format!("<code>{drv}</code>")));
    assert!(details.contains(&format!("<a href=\"/build/{fail}/log/raw\">Full log</a>")));
    let pre = details.split("<pre>").nth(1).unwrap();
    assert!(pre.contains("failing"), "{details}");
    let ok = build_id(&conn, "ok-1");
    let out: String = conn
        .query_row("SELECT path FROM Outputs WHERE build = ?1", [ok], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        page(&daemon, &format!("/build/{ok}/details")).contains(&format!("<code>{out}</code>"))
    );

    // Search across evaluations.
    let found = page(&daemon, "/search?query=ok-");
    assert_eq!(found.matches("/details\">").count(), 2);
    // The loop puts the evaluation's job names in the search index
    // within a second or so (searches scan the names it has not reached).
    let indexed = || {
        count(&conn, "SELECT upto FROM JobNamesIndexed")
            == count(&conn, "SELECT MAX(id) FROM JobNames")
    };
    wait_until(Duration::from_secs(10), "job names indexed", indexed);
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM JobNamesText WHERE JobNamesText MATCH '\"ok-\"'"
        ),
        2
    );

    // The badge, the history, and the errors.
    let (code, ct, svg) = get(&daemon, &format!("/jobset/{name}/badge.svg"));
    assert_eq!((code, ct.as_str()), (200, "image/svg+xml"));
    assert!(svg.contains(">3 passed, 2 failed</text>"), "{svg}");
    let (code, ct, history) = get(
        &daemon,
        &format!("/api/jobs/history?spec={name}&names=ok-1,fail&nr=5"),
    );
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{
            "evaluation": 1,
            "checkouts": [{"commit": head, "channel": name, "input": name,
                           "directory": setup.cache.join(&name)}],
            "jobs": [{"name": "ok-1", "build": ok, "status": 0},
                     {"name": "fail", "build": fail, "status": 1}]
        }])
    );
    assert_eq!(get(&daemon, "/api/jobs/history?spec=x").0, 400);
    assert_eq!(get(&daemon, "/eval/7").0, 404);
    assert_eq!(get(&daemon, "/jobset/nope").1, "text/html; charset=utf-8");

    // Metrics: well-formed, and what the database holds.
    let (code, ct, text) = get(&daemon, "/metrics");
    assert_eq!(
        (code, ct.as_str()),
        (200, "text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = parse_metrics(&text);
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("{name}{{{labels}}}: {text}"))
            .2
    };
    assert_eq!(value("cuirass_builds", "status=\"succeeded\""), 3.0);
    assert_eq!(value("cuirass_builds", "status=\"failed\""), 1.0);
    assert_eq!(value("cuirass_builds", "status=\"failed-dependency\""), 1.0);
    assert_eq!(value("cuirass_build_queue_length", ""), 0.0);
    assert_eq!(
        value("cuirass_evaluations_total", "outcome=\"succeeded\""),
        1.0
    );
    assert_eq!(
        check_histogram(&samples, "cuirass_build_duration_seconds"),
        5.0
    );
    assert_eq!(
        check_histogram(&samples, "cuirass_evaluation_duration_seconds"),
        1.0
    );
    assert_eq!(
        value(
            "cuirass_http_requests_total",
            "route=\"/eval/:id\",code=\"200\""
        ),
        3.0
    );
    assert_eq!(
        value(
            "cuirass_http_requests_total",
            "route=\"/eval/:id\",code=\"404\""
        ),
        1.0
    );
    let size: i64 = conn
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(value("cuirass_database_size_bytes", ""), size as f64);
}

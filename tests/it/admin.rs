//! The operators' actions against the real daemon: a transient failure
//! restarted with its failed dependent, each action seen in the database
//! and the API, who may act (401, 403, 405), the trigger's rate limit,
//! signed webhooks, token rotation on SIGHUP, and the dashboard's log-in
//! and buttons.

use crate::support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &str = "ops-token-0123456789abcdef";
const SECRET: &str = "webhook-secret-0123456789";

/// A response: status, headers (names lower-cased), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.0 request (the answer ends with the connection).
pub fn http(port: u16, method: &str, target: &str, headers: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.0\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\nContent-Type: application/json\r\n")
}

/// An action with the operators' token.
fn act(port: u16, target: &str, body: &str) -> Reply {
    http(port, "POST", target, &bearer(TOKEN), body)
}

fn q<T: rusqlite::types::FromSql>(setup: &Setup, sql: &str) -> T {
    setup.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// (id, status) of `job`'s build in the first evaluation of spec `admin`.
fn build(setup: &Setup, job: &str) -> (i64, i64) {
    setup
        .db()
        .query_row(
            "SELECT b.id, b.status FROM Builds b JOIN Derivations d
               ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             WHERE d.job_name = ?1 AND b.evaluation = (SELECT min(id) FROM Evaluations
                                                       WHERE specification = 'admin')",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

struct Bed {
    setup: Setup,
    repo: Repo,
    running: Running,
    port: u16,
    tokens: std::path::PathBuf,
}

/// A daemon with the `admin` spec (flaky, after, steady) and the `spare`
/// spec (steady only), tokens and a webhook secret, its first
/// evaluations built.
fn bed(label: &str) -> Bed {
    let setup = Setup::new(label);
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/admin-jobs.scm")]);
    let nonce = nonce();
    let marker = setup.tmp.path().join("flaky-marker");
    let spec = setup.write_spec(&format!(
        "(list {} {})\n",
        spec_entry(
            "admin",
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\") (marker . \"{}\")", marker.display())
        ),
        spec_entry(
            "spare",
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}-spare\")")
        )
    ));
    let tokens = setup.tmp.path().join("tokens");
    std::fs::write(&tokens, format!("# operators\nops:{TOKEN}\n")).unwrap();
    let secret = setup.tmp.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let running = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--interval",
            "100000",
            "--admin-tokens",
            tokens.to_str().unwrap(),
            "--webhook-secret",
            secret.to_str().unwrap(),
        ],
        &[],
    );
    let port = running.port();
    wait_until(Duration::from_secs(300), "the first builds", || {
        count(&setup.db(), "SELECT count(*) FROM Builds WHERE status >= 0") == 4
    });
    Bed {
        setup,
        repo,
        running,
        port,
        tokens,
    }
}

#[test]
fn a_transient_failure_restarted_succeeds_with_its_dependent_and_keeps_its_first_attempt() {
    let b = bed("admin-restart");
    let (flaky, st) = build(&b.setup, "flaky");
    assert_eq!(st, 1, "flaky fails the first time");
    let (after, st) = build(&b.setup, "after");
    assert_eq!(st, 2, "after failed-dependency");
    let copy = b
        .setup
        .tmp
        .path()
        .join(format!("build-logs/{flaky}.log.gz"));
    wait_until(Duration::from_secs(30), "flaky's log copy", || {
        copy.is_file()
    });

    // Nobody but an operator; nothing by GET.
    let target = format!("/admin/build/{flaky}/restart");
    assert_eq!(http(b.port, "POST", &target, "", "").status, 401);
    assert_eq!(
        http(b.port, "POST", &target, &bearer("not-the-token-at-all"), "").status,
        403
    );
    let r = http(b.port, "GET", &target, &bearer(TOKEN), "");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(q::<i64>(&b.setup, "SELECT count(*) FROM BuildAttempts"), 0);
    assert_eq!(build(&b.setup, "flaky").1, 1);

    let r = act(b.port, &target, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let restarted: Vec<i64> = r.json()["restarted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["build"].as_i64().unwrap())
        .collect();
    assert_eq!(restarted, [flaky, after], "in dependency order");
    wait_until(Duration::from_secs(120), "the restarted builds", || {
        build(&b.setup, "flaky").1 == 0 && build(&b.setup, "after").1 == 0
    });
    let times = |id: i64| -> (i64, i64) {
        b.setup
            .db()
            .query_row(
                "SELECT starttime, stoptime FROM Builds WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert!(times(flaky).1 <= times(after).1, "flaky done before after");
    // The first attempts stay readable: status in the database and the
    // API, flaky's log by its URL.
    let attempts = query_rows::<i64>(
        &b.setup.db(),
        "SELECT build, attempt, status FROM BuildAttempts ORDER BY build",
    );
    let mut expected = vec![vec![flaky, 1, 1], vec![after, 1, 2]];
    expected.sort();
    assert_eq!(attempts, expected);
    let r = http(b.port, "GET", &format!("/build/{flaky}/attempts"), "", "");
    assert_eq!(r.json()[0]["buildstatus"], 1);
    let log_url = r.json()[0]["log"].as_str().unwrap().to_string();
    let first = http(b.port, "GET", &log_url, "", "");
    assert_eq!(first.status, 200);
    assert!(
        first.text().contains("first attempt: failing"),
        "{}",
        first.text()
    );
    wait_until(Duration::from_secs(30), "the second log copy", || {
        copy.is_file()
    });
    let second = http(b.port, "GET", &format!("/build/{flaky}/log/raw"), "", "");
    assert!(
        second.text().contains("second attempt: ok"),
        "{}",
        second.text()
    );
    assert!(!second.text().contains("first attempt"));
    let page = http(b.port, "GET", &format!("/build/{flaky}/details"), "", "").text();
    assert!(
        page.contains("Earlier attempts") && page.contains(&log_url),
        "{page}"
    );
    let who: String = q(
        &b.setup,
        "SELECT who || ' ' || action FROM AdminLog WHERE outcome = 'done'",
    );
    assert_eq!(who, "ops RestartBuild");
}

#[test]
fn evaluation_and_specification_actions_triggers_and_webhooks() {
    let mut b = bed("admin-actions");
    let evals = |b: &Bed, spec: &str| -> i64 {
        count(
            &b.setup.db(),
            &format!(
                "SELECT count(*) FROM Evaluations WHERE specification = '{spec}' AND status = 0"
            ),
        )
    };
    assert_eq!(evals(&b, "admin"), 1);

    // Restart the evaluation's failed builds: flaky and after succeed.
    let eval: i64 = q(
        &b.setup,
        "SELECT min(id) FROM Evaluations WHERE specification = 'admin'",
    );
    let r = act(b.port, &format!("/admin/evaluation/{eval}/restart"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["restarted"].as_array().unwrap().len(), 2);
    wait_until(Duration::from_secs(120), "the evaluation's builds", || {
        count(
            &b.setup.db(),
            &format!("SELECT count(*) FROM Builds WHERE evaluation = {eval} AND status = 0"),
        ) == 3
    });
    // Nothing pending is left to cancel; said by the command-line client.
    let admin = |args: &[&str], token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cuirass"))
            .arg("admin")
            .args(args)
            .env("CUIRASS_URL", format!("http://127.0.0.1:{}", b.port))
            .env("CUIRASS_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = admin(&["cancel-evaluation", &eval.to_string()], TOKEN);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["canceled"], serde_json::json!([]));
    let out = admin(
        &["cancel-evaluation", &eval.to_string()],
        "not-the-token-at-all",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 403"),
        "{out:?}"
    );
    let tokens = format!("--token-file={}", b.tokens.display());
    let out = admin(&["delete-spec", "spare", &tokens], "");
    assert_eq!(out.status.code(), Some(2), "no --confirm");
    assert_eq!(act(b.port, "/admin/evaluation/99/cancel", "").status, 404);

    // Retry: the same commit evaluated again.
    let commit: String = q(
        &b.setup,
        &format!("SELECT revision FROM Evaluations WHERE id = {eval}"),
    );
    assert_eq!(
        act(b.port, &format!("/admin/evaluation/{eval}/retry"), "").status,
        200
    );
    wait_until(Duration::from_secs(120), "the retried evaluation", || {
        evals(&b, "admin") == 2
    });
    let again: String = q(
        &b.setup,
        "SELECT revision FROM Evaluations WHERE specification = 'admin' ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(again, commit);

    // A push signed with another secret triggers nothing; a signed one
    // evaluates the new commit.
    b.repo.commit("new commit");
    let payload = format!(
        r#"{{"ref": "refs/heads/master", "repository": {{"clone_url": "{}"}}}}"#,
        b.repo.url()
    );
    let sign = |secret: &str| {
        format!(
            "X-Gitea-Signature: {}\r\nContent-Type: application/json\r\n",
            cuirass::admin::webhook::sign(secret.as_bytes(), payload.as_bytes())
        )
    };
    let r = http(
        b.port,
        "POST",
        "/api/push-gitea",
        &sign("not-the-secret-at-all"),
        &payload,
    );
    assert_eq!(r.status, 401);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(evals(&b, "admin"), 2);
    let r = http(b.port, "POST", "/api/push-gitea", &sign(SECRET), &payload);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["triggered"], serde_json::json!(["admin", "spare"]));
    wait_until(
        Duration::from_secs(120),
        "the pushed commit's evaluations",
        || evals(&b, "admin") == 3 && evals(&b, "spare") == 2,
    );

    // The open hook: the webhook counted once, two more pass, then 429.
    let hook = |b: &Bed| http(b.port, "POST", "/jobset/admin/hook/evaluate", "", "").status;
    assert_eq!([hook(&b), hook(&b), hook(&b)], [200, 200, 429]);
    assert_eq!(
        http(b.port, "GET", "/jobset/admin/hook/evaluate", "", "").status,
        405
    );

    // Deactivate keeps the history; reactivate; delete asks for the name.
    assert_eq!(
        act(b.port, "/admin/specification/spare/deactivate", "").status,
        200
    );
    assert_eq!(
        q::<i64>(
            &b.setup,
            "SELECT is_active FROM Specifications WHERE repo_name = 'spare'"
        ),
        0
    );
    assert_eq!(
        act(b.port, "/admin/specification/spare/trigger", "").status,
        409
    );
    let page = http(b.port, "GET", "/jobset/spare", "", "").text();
    assert!(page.contains("inactive"), "{page}");
    assert_eq!(
        act(b.port, "/admin/specification/spare/reactivate", "").status,
        200
    );
    assert_eq!(
        act(b.port, "/admin/specification/spare/trigger", "").status,
        200
    );
    let r = act(
        b.port,
        "/admin/specification/spare/delete",
        r#"{"confirm": "admin"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let spare_builds = q::<i64>(
        &b.setup,
        "SELECT count(*) FROM Builds WHERE evaluation IN
           (SELECT id FROM Evaluations WHERE specification = 'spare')",
    );
    // The log copies of its finished builds go with them.
    let copies: Vec<std::path::PathBuf> = q::<String>(
        &b.setup,
        "SELECT group_concat(id) FROM Builds WHERE status >= 0 AND evaluation IN
           (SELECT id FROM Evaluations WHERE specification = 'spare')",
    )
    .split(',')
    .map(|id| b.setup.tmp.path().join(format!("build-logs/{id}.log.gz")))
    .collect();
    wait_until(Duration::from_secs(30), "spare's log copies", || {
        copies.iter().all(|c| c.is_file())
    });
    let r = act(
        b.port,
        "/admin/specification/spare/delete",
        r#"{"confirm": "spare"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // At least those counted before (its evaluation may add more).
    assert!(
        r.json()["builds"].as_i64().unwrap() >= spare_builds,
        "{spare_builds} builds: {}",
        r.text()
    );
    // Its history goes a chunk per loop turn, under its tombstone.
    wait_until(
        Duration::from_secs(30),
        "the deleted spec's history to go",
        || {
            q::<i64>(
                &b.setup,
                "SELECT count(*) FROM Specifications WHERE repo_name = 'spare/(deleted)'",
            ) == 0
        },
    );
    assert_eq!(
        q::<i64>(
            &b.setup,
            "SELECT count(*) FROM Builds WHERE evaluation NOT IN (SELECT id FROM Evaluations)"
        ),
        0
    );
    for c in &copies {
        assert!(!c.exists(), "{} left behind", c.display());
    }
    assert_eq!(
        q::<i64>(
            &b.setup,
            "SELECT count(*) FROM Evaluations WHERE specification = 'spare'"
        ),
        0
    );
    assert_eq!(
        q::<i64>(
            &b.setup,
            "SELECT count(*) FROM Specifications WHERE repo_name = 'spare'"
        ),
        0
    );
    assert_eq!(http(b.port, "GET", "/jobset/spare", "", "").status, 404);

    // Add a specification: it is evaluated at once.
    let body = format!(
        r#"{{"name": "added", "url": "{}", "file": "ci.scm", "proc": "cuirass-jobs",
            "arguments": "((nonce . \"added\"))", "no-compile?": true, "load-path": "."}}"#,
        b.repo.url()
    );
    let r = act(b.port, "/admin/specification/add", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(
        Duration::from_secs(120),
        "the added spec's evaluation",
        || evals(&b, "added") == 1,
    );
    let r = http(b.port, "GET", "/specifications", "", "");
    assert!(r.text().contains("\"added\""));

    // Token rotation: SIGHUP reads the file again.
    std::fs::write(&b.tokens, "new:a-brand-new-token-0123456789\n").unwrap();
    b.running.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the new token", || {
        http(
            b.port,
            "POST",
            "/admin/specification/admin/trigger",
            &bearer("a-brand-new-token-0123456789"),
            "",
        )
        .status
            == 200
    });
    assert_eq!(
        act(b.port, "/admin/specification/admin/trigger", "").status,
        403
    );
    assert!(b.running.wait_for_exit(Duration::from_millis(10)).is_none());
}

#[test]
fn the_dashboard_logs_in_and_its_restart_button_restarts() {
    let b = bed("admin-dashboard");
    let (steady, _) = build(&b.setup, "steady");
    let details = format!("/build/{steady}/details");
    let anonymous = http(b.port, "GET", &details, "", "").text();
    assert!(!anonymous.contains("class=\"action\""), "{anonymous}");
    assert_eq!(http(b.port, "GET", "/login", "", "").status, 200);
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let r = http(
        b.port,
        "POST",
        "/login",
        form,
        "token=wrong-wrong-wrong-wrong",
    );
    assert_eq!((r.status, r.header("set-cookie")), (403, None));
    let r = http(
        b.port,
        "POST",
        "/login",
        form,
        &format!("token={TOKEN}&next=%2F"),
    );
    assert_eq!(r.status, 303);
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = http(
        b.port,
        "GET",
        &details,
        &format!("Cookie: {session}\r\n"),
        "",
    )
    .text();
    let restart = format!("action=\"/admin/build/{steady}/restart\"");
    assert!(page.contains(&restart), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let target = format!("/admin/build/{steady}/restart");
    let headers = format!("Cookie: {session}\r\n{form}");
    // Without the CSRF token, the cookie alone does nothing.
    let r = http(b.port, "POST", &target, &headers, "next=%2F");
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("Missing or wrong CSRF token."),
        "{}",
        r.text()
    );
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let r = http(
        b.port,
        "POST",
        &target,
        &headers,
        &format!("csrf={csrf}&next={}", details.replace('/', "%2F")),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(details.as_str()))
    );
    wait_until(Duration::from_secs(60), "steady rebuilt", || {
        count(
            &b.setup.db(),
            &format!("SELECT count(*) FROM BuildAttempts WHERE build = {steady}"),
        ) == 1
            && build(&b.setup, "steady").1 == 0
    });
    let who: String = q(&b.setup, "SELECT who FROM AdminLog WHERE outcome = 'done'");
    assert_eq!(who, "ops");
}

//! The build queue against the real daemon: specs' priorities decide the
//! order in which builds start, and a build whose input failed never
//! reaches the daemon.

use crate::support::*;
use std::io::{Read, Write};
use std::time::Duration;

fn spec(name: &str, url: &str, nonce: &str, jobs: &str) -> String {
    spec_entry(
        name,
        url,
        "jobs.scm",
        "cuirass-jobs",
        &format!("(nonce . \"{nonce}\") (jobs {jobs})"),
    )
}

fn get(port: u16, target: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// (job, status, starttime) of every build, by start time then id.
fn starts(conn: &rusqlite::Connection) -> Vec<(String, i64, i64)> {
    query_rows::<rusqlite::types::Value>(
        conn,
        "SELECT d.job_name, b.status, b.starttime FROM Builds b
         JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         ORDER BY b.starttime, b.id",
    )
    .into_iter()
    .map(|row| match &row[..] {
        [
            rusqlite::types::Value::Text(j),
            rusqlite::types::Value::Integer(s),
            rusqlite::types::Value::Integer(t),
        ] => (j.clone(), *s, *t),
        other => panic!("{other:?}"),
    })
    .collect()
}

/// A channel `q` whose module `(q NAME)` gives, as a spec record's
/// `(build '(custom (q NAME)))`, the jobs `JOBS` of
/// fixtures/jobs/queue-jobs.scm (NAME, JOBS) for each pair of `modules`.
fn queue_channel(parent: &std::path::Path, nonce: &str, modules: &[(&str, &str)]) -> Repo {
    let repo = Repo::named(parent, "q", &[]);
    let fixture = std::fs::read_to_string(fixture("jobs/queue-jobs.scm")).unwrap();
    let (_, body) = fixture.split_once("(guix derivations))\n").unwrap();
    let body = body.replace("(define (cuirass-jobs store", "(define (queue-jobs store");
    std::fs::create_dir_all(repo.dir.join("q")).unwrap();
    for (name, jobs) in modules {
        let module = format!(
            "(define-module (q {name})\n  #:use-module (guix store)\n  \
             #:use-module (guix derivations)\n  #:use-module (test-shell)\n  \
             #:export (cuirass-jobs))\n{body}\n\
             (define (cuirass-jobs store arguments)\n  \
               (queue-jobs store '((nonce . \"{nonce}\") (jobs {jobs}))))\n"
        );
        std::fs::write(repo.dir.join(format!("q/{name}.scm")), module).unwrap();
    }
    repo.commit("the q channel");
    repo
}

/// A spec record of channel `q` building `(q NAME)`, with `priority`.
fn record(name: &str, q: &Repo, priority: i64) -> String {
    format!(
        "(specification (name \"{name}\") (build '(custom (q {name})))\n\
           (channels (list (channel (name 'q) (url \"{}\") (branch \"master\"))))\n\
           (priority {priority}))",
        q.url()
    )
}

/// Cuirass on spec file `file` with one build at a time, polling every
/// `interval` seconds, once it listens; with a connection to its
/// database and the port.
fn one_build_at_a_time(
    setup: &Setup,
    file: &std::path::Path,
    interval: u64,
) -> (Running, u16, rusqlite::Connection) {
    let port = free_port();
    let args = [
        "-S",
        file.to_str().unwrap(),
        "--max-builds=1",
        &format!("--interval={interval}"),
        "--port",
        &port.to_string(),
    ];
    let cuirass = Running::start(setup, &args, &[]);
    wait_until(Duration::from_secs(20), "cuirass to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    (cuirass, port, conn)
}

/// Two specs of different priorities queue behind a long build: the
/// queue lists them by spec priority, then job priority, and that is the
/// order in which the daemon starts them (one build per request).
#[test]
fn two_specs_queued_behind_a_long_build_start_in_the_order_the_queue_lists() {
    require_daemon();
    let setup = Setup::new("queue-order");
    let n = nonce();
    let q = queue_channel(
        setup.tmp.path(),
        &n,
        &[
            ("first", r#"("long" 0 "sleep 6")"#),
            ("low", r#"("l5" 5 "sleep 1") ("l1" 1 "sleep 1")"#),
            ("high", r#"("h3" 3 "sleep 1") ("h0" 0 "sleep 1")"#),
        ],
    );
    let first = record("first", &q, 9);
    let file = setup.write_spec(&format!("(list {first})"));
    let (cuirass, port, conn) = one_build_at_a_time(&setup, &file, 100_000);
    wait_until(Duration::from_secs(60), "the long build to start", || {
        count(&conn, "SELECT COUNT(*) FROM Builds WHERE status = -1") == 1
    });
    // Spec records give specs a priority (0 first, 9 by default).
    let (low, high) = (record("low", &q, 7), record("high", &q, 1));
    std::fs::write(&file, format!("(list {first} {low} {high})")).unwrap();
    cuirass.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(60), "both specs' builds queued", || {
        count(&conn, "SELECT COUNT(*) FROM Builds") == 5
    });
    // Still behind the long build: the queue as the API lists it.
    let queue: serde_json::Value = serde_json::from_str(&get(port, "/api/queue?nr=10")).unwrap();
    let listed: Vec<(&str, &str)> = queue
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["job"].as_str().unwrap(),
                b["waiting"]["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("long", "started"),
            ("h0", "queued"),
            ("h3", "queued"),
            ("l1", "queued"),
            ("l5", "queued")
        ],
        "{queue:#}"
    );
    let positions: Vec<i64> = queue.as_array().unwrap()[1..]
        .iter()
        .map(|b| b["waiting"]["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, [2, 3, 4, 5]);
    // One build's own JSON says the same.
    let l5 = queue.as_array().unwrap()[4]["id"].as_i64().unwrap();
    let one: serde_json::Value = serde_json::from_str(&get(port, &format!("/build/{l5}"))).unwrap();
    assert_eq!(
        one["waiting"],
        serde_json::json!({"reason": "queued", "position": 5})
    );

    wait_until(Duration::from_secs(90), "every build to succeed", || {
        count(&conn, "SELECT COUNT(*) FROM Builds WHERE status = 0") == 5
    });
    // Each short build sleeps a second, one at a time: start times tell
    // the order apart, and the daemon's build-started set them.
    let started = starts(&conn);
    let order: Vec<&str> = started.iter().map(|(j, _, _)| j.as_str()).collect();
    assert_eq!(order, ["long", "h0", "h3", "l1", "l5"], "{started:?}");
    let times: Vec<i64> = started.iter().map(|s| s.2).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{started:?}");
    let log = cuirass.log_text();
    let submitted: Vec<usize> = ["long", "h0", "h3", "l1", "l5"]
        .iter()
        .map(|j| {
            log.find(&format!("-{j}-{n}.drv\""))
                .unwrap_or_else(|| panic!("{j} not submitted:\n{log}"))
        })
        .collect();
    assert!(submitted.windows(2).all(|w| w[0] < w[1]), "{log}");
    // One slot, one limit class: one connection carried every request.
    assert!(log.contains("request 5 of its connection"), "{log}");
    assert!(!log.contains("request 6 of"), "{log}");
    drop(cuirass);
    assert_sound(&setup.db);
}

/// A build whose input failed is failed-dependency without reaching the
/// daemon; once the same input derivation succeeds (here a newer
/// evaluation builds it, now that what it checks exists), the build is
/// scheduled again and built.
#[test]
fn a_build_whose_input_failed_never_reaches_the_daemon_and_runs_once_the_input_is_fixed() {
    require_daemon();
    let setup = Setup::new("queue-deps");
    let repo = Repo::new(setup.tmp.path(), &[("jobs.scm", "jobs/queue-jobs.scm")]);
    let n = nonce();
    // The builders see the root's files (no build chroot): lib fails
    // until the flag file exists.
    let flag = setup.tmp.path().join("lib-may-succeed");
    let inside = flag
        .to_str()
        .unwrap()
        .strip_prefix(guix_root().to_str().unwrap())
        .unwrap()
        .to_string();
    let jobs = format!(r#"("lib" 5 "test -e {inside}") ("app" 0 "true" "lib")"#);
    let file = setup.write_spec(&format!("(list {})", spec("deps", &repo.url(), &n, &jobs)));
    let out = setup.one_shot(&["-S", file.to_str().unwrap(), "--max-builds=2"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let conn = setup.db();
    let rows: Vec<(String, i64, Option<String>)> = query_rows::<rusqlite::types::Value>(
        &conn,
        "SELECT d.job_name, b.status, b.errormsg FROM Builds b
         JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         ORDER BY b.id",
    )
    .into_iter()
    .map(|r| {
        let text = |v: &rusqlite::types::Value| match v {
            rusqlite::types::Value::Text(t) => Some(t.clone()),
            _ => None,
        };
        let int = |v: &rusqlite::types::Value| match v {
            rusqlite::types::Value::Integer(i) => *i,
            other => panic!("{other:?}"),
        };
        (text(&r[0]).unwrap(), int(&r[1]), text(&r[2]))
    })
    .collect();
    assert_eq!(
        rows,
        [
            ("lib".into(), 1, rows[0].2.clone()),
            ("app".into(), 2, Some("dependency build 1 failed".into()))
        ]
    );
    // Never handed to the daemon: no request, and no log of its own.
    assert!(!log.contains(&format!("-app-{n}.drv\"")), "{log}");
    let app_drv: String = conn
        .query_row("SELECT derivation FROM Builds WHERE id = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    let base = app_drv.strip_prefix("/gnu/store/").unwrap();
    for ext in ["", ".gz", ".bz2"] {
        let daemon_log = format!("/var/log/guix/drvs/{}/{}{ext}", &base[..2], &base[2..]);
        assert!(!setup.host_path(&daemon_log).exists(), "{daemon_log}");
    }

    // Fixed: a new commit evaluates the same derivations again.
    std::fs::write(&flag, "").unwrap();
    std::fs::write(repo.dir.join("README"), "again").unwrap();
    repo.commit("again");
    let out = setup.one_shot(&["--max-builds=2"]);
    assert!(out.status.success());
    let statuses: Vec<Vec<i64>> = query_rows(&conn, "SELECT id, status FROM Builds ORDER BY id");
    // Build 2, failed-dependency before, succeeded with its input.
    assert_eq!(
        statuses,
        [vec![1, 1], vec![2, 0], vec![3, 0], vec![4, 0]],
        "{statuses:?}"
    );
    assert_sound(&setup.db);
}

/// A newer commit's evaluation cancels the scheduled builds it
/// supersedes through the loop's superseding pages, after it closes:
/// the job whose derivation changed loses its queued build, the one
/// whose derivation did not keeps it, and the build the daemon is
/// running goes on.
#[test]
fn a_newer_evaluation_cancels_the_queued_builds_it_supersedes() {
    require_daemon();
    let setup = Setup::new("queue-supersede");
    let repo = Repo::new(setup.tmp.path(), &[("jobs.scm", "jobs/queue-jobs.scm")]);
    let n = nonce();
    let jobs = |a: &str| format!(r#"("long" 0 "sleep 30") ("a" 5 "{a}") ("b" 5 "true")"#);
    let file = setup.write_spec(&format!(
        "(list {})",
        spec("sup", &repo.url(), &n, &jobs("true"))
    ));
    let (cuirass, port, conn) = one_build_at_a_time(&setup, &file, 2);
    wait_until(Duration::from_secs(60), "the long build to start", || {
        count(&conn, "SELECT COUNT(*) FROM Builds WHERE status = -1") == 1
            && count(&conn, "SELECT COUNT(*) FROM Builds") == 3
    });
    let build_of = |eval: i64, job: &str| -> i64 {
        conn.query_row(
            "SELECT b.id FROM Builds b JOIN Derivations d
               ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             WHERE b.evaluation = ?1 AND d.job_name = ?2",
            rusqlite::params![eval, job],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (long, a, b) = (build_of(1, "long"), build_of(1, "a"), build_of(1, "b"));
    // Job a gets another derivation in the next commit; b and long don't.
    std::fs::write(
        &file,
        format!("(list {})", spec("sup", &repo.url(), &n, &jobs("true a"))),
    )
    .unwrap();
    cuirass.signal(libc::SIGHUP);
    std::fs::write(repo.dir.join("README"), "again").unwrap();
    repo.commit("again");
    let status = |id: i64| -> i64 {
        conn.query_row("SELECT status FROM Builds WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    };
    wait_until(
        Duration::from_secs(60),
        "a's old build to be canceled",
        || status(a) == 4,
    );
    assert_eq!(status(b), -2, "b's derivation did not change");
    assert_eq!(status(long), -1, "the daemon's build goes on");
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM Evaluations WHERE status = 0"),
        2
    );
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Superseding"), 0);
    let one: serde_json::Value = serde_json::from_str(&get(port, &format!("/build/{a}"))).unwrap();
    assert_eq!(one["buildstatus"], 4, "{one:#}");
    let log = cuirass.log_text();
    assert!(
        log.contains("evaluation 2: 1 superseded build(s) canceled"),
        "{log}"
    );
    drop(cuirass);
    assert_sound(&setup.db);
}

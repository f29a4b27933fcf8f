//! The specification cycle against the real daemon: what the unit tests of
//! `cycle` cannot show with a fake clock — nothing slow on the loop's
//! thread, and the evaluation track overlapping a long build.

use crate::support::*;
use std::time::{Duration, Instant};

fn query_i64(setup: &Setup, sql: &str) -> i64 {
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}

/// A spec file whose Guile code never ends, read again on SIGHUP: the
/// reader runs in a child, the HTTP server keeps answering fast, and the
/// reader is killed at the evaluation timeout.
#[test]
fn sighup_with_a_spec_file_that_loops_forever_keeps_http_fast_and_times_out() {
    require_daemon();
    let setup = Setup::new("sighup-loop");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = setup.write_spec(&spec_text(
        "steady",
        &repo.url(),
        "ci.scm",
        "cuirass-jobs",
        &nonce(),
    ));
    let port = free_port();
    let daemon = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--interval",
            "600",
            "--evaluation-timeout",
            "4",
            "--listen",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ],
        &[],
    );
    wait_until(Duration::from_secs(60), "the first builds", || {
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status >= 0") == 5
    });
    // Code (a named let that loops) makes the reader go through Guile.
    std::fs::write(
        &spec,
        "(let loop ((n 0)) (loop (+ n 1)))\n(list `((#:name . \"never\")))\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reader to start", || {
        daemon.log_text().contains("SIGHUP: re-reading")
    });
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let asked = Instant::now();
        assert_eq!(http_status(port, "/api/evaluations?nr=5"), Some(200));
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
    wait_until(Duration::from_secs(20), "the reader's timeout", || {
        daemon.log_text().contains("timed out after 4 s")
    });
    assert!(
        daemon
            .log_text()
            .contains("killed (keeping the current specifications)")
    );
    assert_eq!(http_status(port, "/jobsets"), Some(200));
    assert_eq!(
        query_i64(&setup, "SELECT COUNT(*) FROM Specifications"),
        1,
        "nothing from the looping file was added"
    );
}

/// A commit pushed while a 30-second build runs is evaluated within one
/// interval, without waiting for the build.
#[test]
fn a_commit_pushed_during_a_long_build_is_evaluated_within_one_interval() {
    require_daemon();
    let setup = Setup::new("overlap");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    let nonce = nonce();
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "overlap",
            &repo.url(),
            "ci.scm",
            "sleepy-jobs",
            &format!("(nonce . \"{nonce}\") (seconds . \"30\") (count . 1)")
        )
    ));
    let interval = 3;
    let mut daemon = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--interval",
            &interval.to_string(),
        ],
        &[],
    );
    wait_until(Duration::from_secs(60), "the long build to start", || {
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = -1") == 1
    });
    std::fs::write(repo.dir.join("NEWS"), "a new commit\n").unwrap();
    let pushed = Instant::now();
    let second = repo.commit("second");
    wait_until(
        Duration::from_secs(interval + 15),
        "the new commit's evaluation",
        || {
            query_i64(
                &setup,
                &format!(
                    "SELECT COUNT(*) FROM Evaluations WHERE revision = '{second}' AND status = 0"
                ),
            ) == 1
        },
    );
    // Evaluating takes a few seconds of Guile; the poll itself came
    // within one interval of the push.
    let waited = pushed.elapsed();
    assert!(waited < Duration::from_secs(interval + 15), "{waited:?}");
    assert_eq!(
        query_i64(
            &setup,
            "SELECT COUNT(*) FROM Builds WHERE status = -1 AND evaluation = 1"
        ),
        1,
        "the first evaluation's build is still running"
    );
    let log = daemon.log_text();
    assert!(log.contains(&format!("new commit {second}")), "{log}");
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_for_exit(Duration::from_secs(5)).is_some());
    assert_sound(&setup.db);
}

/// One-shot against a remote that does not exist: exit status 1 and a
/// message naming the spec, nothing recorded; a failed build would have
/// been a result, this is not.
#[test]
fn one_shot_against_an_unreachable_remote_exits_1_naming_the_spec() {
    require_daemon();
    let setup = Setup::new("unreachable");
    let missing = setup.tmp.path().join("no-such-repository");
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "far-away",
            &format!("file://{}", missing.display()),
            "ci.scm",
            "cuirass-jobs",
            "(nonce . \"x\")"
        )
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("cuirass: spec \"far-away\": fetch failed"),
        "{stderr}"
    );
    assert_eq!(query_i64(&setup, "SELECT COUNT(*) FROM Evaluations"), 0);
    assert_eq!(query_i64(&setup, "SELECT COUNT(*) FROM Specifications"), 1);
}

/// The same looping file given with `-S` at start-up: the reader is killed
/// at the evaluation timeout and cuirass exits 1 naming the file, with
/// nothing written.
#[test]
fn a_spec_file_that_loops_forever_at_start_up_times_out() {
    require_daemon();
    let setup = Setup::new("start-loop");
    let spec = setup.write_spec("(let loop ((n 0)) (loop (+ n 1)))\n(list)\n");
    let started = Instant::now();
    let out = setup.one_shot(&["-S", spec.to_str().unwrap(), "--evaluation-timeout", "3"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out after 3 s"), "{stderr}");
    assert!(stderr.contains("specs.scm"), "{stderr}");
    assert!(!setup.db.exists(), "nothing written");
}

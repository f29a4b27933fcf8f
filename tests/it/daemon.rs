//! Daemon mode: concurrency between specifications, polling, evaluator
//! failures, crash recovery, daemon restarts and signals, all against the
//! real guix-daemon.

use crate::support::*;
use std::time::Duration;

fn spec_file(entries: &[String]) -> String {
    format!("(list\n{})\n", entries.join("\n"))
}

fn nonce_args(nonce: &str) -> String {
    format!("(nonce . \"{nonce}\")")
}

fn sleepy_args(nonce: &str, seconds: u32, count: u32) -> String {
    format!("(nonce . \"{nonce}\") (seconds . \"{seconds}\") (count . {count})")
}

fn query_i64(setup: &Setup, sql: &str) -> i64 {
    // The daemon may hold a write lock for a moment.
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}

fn finished_builds_of(setup: &Setup, spec: &str) -> i64 {
    query_i64(
        setup,
        &format!(
            "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
             WHERE e.specification = '{spec}' AND b.status >= 0"
        ),
    )
}

#[test]
fn a_long_build_does_not_delay_another_specs_evaluation() {
    require_daemon();
    let setup = Setup::new("concurrent");
    let nonce = nonce();
    let slow = Repo::named(
        setup.tmp.path(),
        "slow",
        &[("ci.scm", "jobs/sleepy-jobs.scm")],
    );
    let quick = Repo::named(
        setup.tmp.path(),
        "quick",
        &[("ci.scm", "jobs/keyword-jobs.scm")],
    );
    let spec = setup.write_spec(&spec_file(&[
        spec_entry(
            "slow",
            &slow.url(),
            "ci.scm",
            "sleepy-jobs",
            &sleepy_args(&nonce, 20, 1),
        ),
        spec_entry(
            "quick",
            &quick.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\") (delay . 3)"),
        ),
    ]));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let slow_start = query_i64(
        &setup,
        "SELECT starttime FROM Builds b JOIN Evaluations e ON e.id = b.evaluation WHERE e.specification = 'slow'",
    );
    let slow_stop = query_i64(
        &setup,
        "SELECT stoptime FROM Builds b JOIN Evaluations e ON e.id = b.evaluation WHERE e.specification = 'slow'",
    );
    let quick_eval = query_i64(
        &setup,
        "SELECT timestamp FROM Evaluations WHERE specification = 'quick'",
    );
    assert!(
        slow_stop - slow_start >= 19,
        "the slow build took {}",
        slow_stop - slow_start
    );
    // quick's evaluation (3 s of Guile) was registered while slow's 20 s
    // build was running, not after it.
    assert!(
        quick_eval <= slow_start + 10,
        "quick evaluated at {quick_eval}, slow built {slow_start}..{slow_stop}"
    );
    assert_eq!(finished_builds_of(&setup, "quick"), 5);
    assert_eq!(finished_builds_of(&setup, "slow"), 1);
}

#[test]
fn new_commits_are_evaluated_within_one_interval() {
    require_daemon();
    let setup = Setup::new("poll");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = setup.write_spec(&spec_text(
        "poll",
        &repo.url(),
        "ci.scm",
        "cuirass-jobs",
        &nonce,
    ));
    let mut daemon = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "2"],
        &[],
    );
    wait_until(
        Duration::from_secs(60),
        "the first evaluation's builds",
        || finished_builds_of(&setup, "poll") == 5,
    );
    let second = {
        std::fs::write(repo.dir.join("NEWS"), "a change\n").unwrap();
        repo.commit("second")
    };
    let pushed = std::time::Instant::now();
    wait_until(Duration::from_secs(30), "the second evaluation", || {
        query_i64(
            &setup,
            &format!("SELECT COUNT(*) FROM Evaluations WHERE revision = '{second}'"),
        ) == 1
    });
    // One interval, plus the fetch and evaluation themselves.
    assert!(
        pushed.elapsed() < Duration::from_secs(2 + 8),
        "{:?}",
        pushed.elapsed()
    );
    wait_until(
        Duration::from_secs(60),
        "the second evaluation's builds",
        || finished_builds_of(&setup, "poll") == 10,
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_for_exit(Duration::from_secs(2))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(daemon.log_text().contains("spec=\"poll\" Idle=>Fetching"));
}

#[test]
fn sigterm_stops_within_two_seconds_and_leaves_nothing_started() {
    require_daemon();
    let setup = Setup::new("sigterm");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    let spec = setup.write_spec(&spec_file(&[spec_entry(
        "term",
        &repo.url(),
        "ci.scm",
        "sleepy-jobs",
        &sleepy_args(&nonce, 30, 2),
    )]));
    let mut daemon = Running::start(&setup, &["-S", spec.to_str().unwrap()], &[]);
    // Started by the daemon (its log named), not only handed to it.
    wait_until(Duration::from_secs(60), "a started build", || {
        query_i64(
            &setup,
            "SELECT COUNT(*) FROM Builds WHERE status = -1 AND log != ''",
        ) >= 1
    });
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_for_exit(Duration::from_secs(2))
        .expect("cuirass did not exit within 2 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = -1"),
        0
    );
    assert_eq!(
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = -2"),
        2
    );
    let conn = setup.db();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn broken_evaluators_leave_other_specs_working_and_are_retried_on_the_next_commit() {
    require_daemon();
    let setup = Setup::new("evalfail");
    let nonce = nonce();
    let tmp = setup.tmp.path();
    let good = Repo::named(tmp, "good", &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let crash = Repo::named(tmp, "crash", &[("ci.scm", "jobs/syntax-error.scm")]);
    let hang = Repo::named(tmp, "hang", &[("ci.scm", "jobs/hang.scm")]);
    let garbage = Repo::named(tmp, "garbage", &[("ci.scm", "jobs/garbage-jobs.scm")]);
    let args = nonce_args(&nonce);
    let spec = setup.write_spec(&spec_file(&[
        spec_entry("good", &good.url(), "ci.scm", "cuirass-jobs", &args),
        spec_entry("crash", &crash.url(), "ci.scm", "cuirass-jobs", &args),
        spec_entry("hang", &hang.url(), "ci.scm", "hang-jobs", &args),
        spec_entry("garbage", &garbage.url(), "ci.scm", "garbage-jobs", &args),
    ]));
    let _daemon = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--interval",
            "2",
            "--evaluation-timeout",
            "4",
        ],
        &[],
    );
    let failed = |name: &str| {
        query_i64(
            &setup,
            &format!(
                "SELECT COUNT(*) FROM Evaluations WHERE specification = '{name}' AND status = 1"
            ),
        )
    };
    wait_until(
        Duration::from_secs(90),
        "every spec's first outcome",
        || {
            finished_builds_of(&setup, "good") == 5
                && failed("crash") == 1
                && failed("hang") == 1
                && failed("garbage") == 1
        },
    );
    let error = |name: &str| -> String {
        setup
            .db()
            .query_row(
                "SELECT error FROM Evaluations WHERE specification = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(error("hang").contains("timed out"), "{}", error("hang"));
    assert!(
        error("garbage").contains("/tmp/not-a-derivation"),
        "{}",
        error("garbage")
    );
    // The evaluator's own message, not its exit status or a backtrace.
    assert!(
        error("crash").starts_with("loading job file "),
        "{}",
        error("crash")
    );
    // Failed commits are not evaluated again at every poll...
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(failed("crash"), 1);
    // ...but the next commit is.
    std::fs::copy(fixture("jobs/keyword-jobs.scm"), crash.dir.join("ci.scm")).unwrap();
    crash.commit("fix the job file");
    wait_until(Duration::from_secs(60), "the fixed spec's builds", || {
        finished_builds_of(&setup, "crash") == 5
    });
}

#[test]
fn kill_9_during_builds_then_restart_finishes_every_job_once() {
    require_daemon();
    let setup = Setup::new("kill9");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    let spec = setup.write_spec(&spec_file(&[spec_entry(
        "k9",
        &repo.url(),
        "ci.scm",
        "sleepy-jobs",
        &sleepy_args(&nonce, 2, 3),
    )]));
    let mut first = Running::start(&setup, &["-S", spec.to_str().unwrap()], &[]);
    wait_until(Duration::from_secs(60), "a started build", || {
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = -1") >= 1
    });
    first.signal(libc::SIGKILL);
    first.wait_for_exit(Duration::from_secs(5)).unwrap();
    assert!(query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = -1") >= 1);

    let out = setup.one_shot(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rescheduled"));
    assert_eq!(query_i64(&setup, "SELECT COUNT(*) FROM Evaluations"), 1);
    assert_eq!(query_i64(&setup, "SELECT COUNT(*) FROM Builds"), 3);
    assert_eq!(
        query_i64(&setup, "SELECT COUNT(DISTINCT derivation) FROM Builds"),
        3
    );
    assert_eq!(
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = 0"),
        3
    );
}

/// A guix-daemon of the test's own, on a private socket, so that killing
/// it does not disturb the tests sharing the main one.
pub struct PrivateDaemon {
    socket: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateDaemon {
    /// Starts `guix` version's daemon; `socket` is a host path under the
    /// test's directory (which that Guix sees at the same path).
    pub fn start(guix: Guix, socket: &std::path::Path) -> PrivateDaemon {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(socket);
        let child = guix
            .command("guix-daemon")
            .arg("--disable-chroot")
            .arg(format!("--listen={}", socket.display()))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("guix-daemon");
        wait_until(
            Duration::from_secs(10),
            "the private daemon's socket",
            || std::os::unix::net::UnixStream::connect(socket).is_ok(),
        );
        PrivateDaemon {
            socket: socket.to_path_buf(),
            child: Some(child),
        }
    }

    /// Kills the daemon and every process it forked: the per-connection
    /// workers leave the daemon's process group, so they are found by
    /// their parent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut victims = descendants(child.id() as i32);
            victims.push(child.id() as i32);
            for pid in victims {
                // SAFETY: kill(2) of processes this test started (via the daemon).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
        }
    }
}

/// Every process below `root`, read from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces: fields resume after ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn builds_finish_when_the_daemon_is_restarted_mid_batch() {
    require_daemon();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: starting a private guix-daemon needs root");
        return;
    }
    let setup = Setup::new("restart");
    let nonce = nonce();
    let socket = setup.tmp.path().join("daemon.sock");
    let mut daemon = PrivateDaemon::start(setup.guix, &socket);
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    let spec = setup.write_spec(&spec_file(&[spec_entry(
        "rs",
        &repo.url(),
        "ci.scm",
        "sleepy-jobs",
        &sleepy_args(&nonce, 3, 2),
    )]));
    let socket_str = socket.to_str().unwrap().to_string();
    let mut cuirass = Running::start(
        &setup,
        &["--one-shot", "-S", spec.to_str().unwrap()],
        &[("GUIX_DAEMON_SOCKET", &socket_str)],
    );
    wait_until(Duration::from_secs(60), "a started build", || {
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = -1") >= 1
    });
    daemon.kill();
    std::thread::sleep(Duration::from_millis(500));
    let _daemon = PrivateDaemon::start(setup.guix, &socket);
    let status = cuirass
        .wait_for_exit(Duration::from_secs(90))
        .expect("cuirass did not finish after the daemon came back");
    assert!(status.success(), "{status:?}");
    assert!(
        cuirass.log_text().contains("lost guix-daemon"),
        "{}",
        cuirass.log_text()
    );
    assert_eq!(
        query_i64(&setup, "SELECT COUNT(*) FROM Builds WHERE status = 0"),
        2
    );
    assert_eq!(query_i64(&setup, "SELECT COUNT(*) FROM Builds"), 2);
}

#[test]
fn sighup_rereads_the_specification_file() {
    require_daemon();
    let setup = Setup::new("sighup");
    let nonce = nonce();
    let first = Repo::named(
        setup.tmp.path(),
        "first",
        &[("ci.scm", "jobs/keyword-jobs.scm")],
    );
    let second = Repo::named(
        setup.tmp.path(),
        "second",
        &[("ci.scm", "jobs/pair-jobs.scm")],
    );
    let args = nonce_args(&nonce);
    let one = spec_entry("first", &first.url(), "ci.scm", "cuirass-jobs", &args);
    let spec = setup.write_spec(&spec_file(std::slice::from_ref(&one)));
    let daemon = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "600"],
        &[],
    );
    wait_until(Duration::from_secs(60), "the first spec's builds", || {
        finished_builds_of(&setup, "first") == 5
    });
    // A broken file is rejected as a whole; the daemon keeps going.
    std::fs::write(&spec, "(list `((#:name . \"oops\")").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the rejection", || {
        daemon
            .log_text()
            .contains("keeping the current specifications")
    });
    let two = spec_entry("second", &second.url(), "ci.scm", "hydra-jobs", &args);
    setup.write_spec(&spec_file(&[one, two]));
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(60), "the added spec's builds", || {
        finished_builds_of(&setup, "second") == 3
    });
    assert_eq!(query_i64(&setup, "SELECT COUNT(*) FROM Specifications"), 2);
}

/// A "git server" that accepts connections and never answers, like a
/// remote stuck behind a dead link.
fn stalling_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (port, handle)
}

#[test]
fn a_stalled_fetch_does_not_block_other_specs_and_times_out() {
    require_daemon();
    let setup = Setup::new("stall");
    let nonce = nonce();
    let (port, _server) = stalling_server();
    let good = Repo::named(
        setup.tmp.path(),
        "good",
        &[("ci.scm", "jobs/keyword-jobs.scm")],
    );
    let args = nonce_args(&nonce);
    let spec = setup.write_spec(&spec_file(&[
        spec_entry(
            "stalled",
            &format!("http://127.0.0.1:{port}/repo.git"),
            "ci.scm",
            "cuirass-jobs",
            &args,
        ),
        spec_entry("good", &good.url(), "ci.scm", "cuirass-jobs", &args),
    ]));
    let port = free_port().to_string();
    let daemon = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--fetch-timeout",
            "15",
            "--listen",
            "127.0.0.1",
            "--port",
            &port,
        ],
        &[],
    );
    wait_until(Duration::from_secs(60), "the good spec's builds", || {
        finished_builds_of(&setup, "good") == 5
    });
    let log = daemon.log_text();
    assert!(log.contains("spec=\"stalled\" Idle=>Fetching"), "{log}");
    // The HTTP server answers promptly while the fetch hangs.
    for _ in 0..10 {
        let asked = std::time::Instant::now();
        assert_eq!(
            http_status(port.parse().unwrap(), "/api/queue?nr=10"),
            Some(200)
        );
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
    }
    assert!(
        !log.contains("spec=\"stalled\" fetch timed out"),
        "finished too late to prove anything"
    );
    wait_until(
        Duration::from_secs(30),
        "the stalled fetch's timeout",
        || {
            daemon
                .log_text()
                .contains("spec=\"stalled\" fetch timed out")
        },
    );
    // Nothing was ever evaluated for it, so nothing is pending either.
    wait_until(
        Duration::from_secs(10),
        "the stalled spec back to Idle",
        || {
            daemon
                .log_text()
                .contains("spec=\"stalled\" Fetching=>Idle (fetch failed)")
        },
    );
    let log = daemon.log_text();
    assert_eq!(
        log.matches("spec=\"stalled\" fetch timed out").count(),
        1,
        "{log}"
    );
}

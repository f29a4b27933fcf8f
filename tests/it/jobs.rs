//! Today's job convention (a list of alists, Guix >= 1.3) under Guix
//! 1.5.0: per-job limits enforced by the daemon with the reason recorded,
//! and Guix 1.5.0's own `(gnu ci)` `cuirass-jobs`.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One build of the run, as the database has it.
#[derive(Debug)]
struct Row {
    id: i64,
    status: i64,
    starttime: i64,
    stoptime: i64,
    priority: i64,
    timeout: Option<i64>,
    maxsilent: Option<i64>,
    errormsg: Option<String>,
    nix_name: String,
    derivation: String,
}

fn builds(conn: &rusqlite::Connection) -> BTreeMap<String, Row> {
    let mut stmt = conn
        .prepare(
            "SELECT d.job_name, b.id, b.status, b.starttime, b.stoptime, b.priority, b.timeout,
                    b.maxsilent, b.errormsg, d.nix_name, b.derivation
             FROM Builds b JOIN Derivations d
               ON d.derivation = b.derivation AND d.evaluation = b.evaluation",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Row {
                id: r.get(1)?,
                status: r.get(2)?,
                starttime: r.get(3)?,
                stoptime: r.get(4)?,
                priority: r.get(5)?,
                timeout: r.get(6)?,
                maxsilent: r.get(7)?,
                errormsg: r.get(8)?,
                nix_name: r.get(9)?,
                derivation: r.get(10)?,
            },
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn inputs_of(conn: &rusqlite::Connection, build: i64) -> Vec<String> {
    query_rows::<String>(
        conn,
        &format!("SELECT derivation FROM Inputs WHERE build = {build} ORDER BY derivation"),
    )
    .into_iter()
    .flatten()
    .collect()
}

/// Starts a daemon-mode cuirass on the test's database (it finds the
/// commit already evaluated) and returns `GET target`'s JSON.
fn api_json(setup: &Setup, targets: &[&str]) -> Vec<Value> {
    let port = free_port();
    let _daemon = Running::start(
        setup,
        &["--interval", "100000", "--port", &port.to_string()],
        &[],
    );
    wait_until(Duration::from_secs(20), "the HTTP server", || {
        http_status(port, "/api/queue?nr=1") == Some(200)
    });
    targets.iter().map(|t| get_json(port, t)).collect()
}

fn get_json(port: u16, target: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{target}: {reply:?}");
    serde_json::from_slice(&reply[end..]).unwrap()
}

/// Each job's own limits hold: the one silent past its max-silent-time
/// and the one running past its timeout are killed by the daemon on
/// time, with the daemon's reason recorded and served; the slow one,
/// quiet and long beyond the others' limits but within its own,
/// succeeds; the run takes seconds, not a global timeout (the silent
/// builder would sleep 60 s, the long one never ends).
#[test]
fn per_job_limits_fail_builds_on_time_with_the_reason_and_spare_the_others() {
    require_daemon();
    let setup = Setup::new("limits");
    let repo = Repo::new(setup.tmp.path(), &[("jobs.scm", "jobs/today-jobs.scm")]);
    let name = format!("limits-{}", nonce());
    let nonce = nonce();
    let spec = setup.write_spec(&spec_text(
        &name,
        &repo.url(),
        "jobs.scm",
        "cuirass-jobs",
        &nonce,
    ));
    let start = Instant::now();
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    let took = start.elapsed();
    assert!(out.status.success());
    assert!(took < Duration::from_secs(45), "the run took {took:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    // One batch, and so one connection, per limit class.
    assert!(
        log.contains("(max-silent-time 2 s, timeout 120 s)"),
        "{log}"
    );
    assert!(log.contains("(max-silent-time 60 s, timeout 3 s)"), "{log}");
    assert!(log.contains("(the daemon's limits)"), "{log}");

    let conn = setup.db();
    let b = builds(&conn);
    assert_eq!(b.len(), 4, "{b:#?}");
    let silent = &b["silent"];
    assert_eq!(
        (silent.status, silent.maxsilent, silent.timeout),
        (1, Some(2), Some(120)),
        "{silent:?}"
    );
    assert_eq!(
        silent.errormsg.as_deref(),
        Some("timed out after 2 seconds of silence")
    );
    let long = &b["long"];
    assert_eq!(
        (long.status, long.maxsilent, long.timeout),
        (1, Some(60), Some(3)),
        "{long:?}"
    );
    assert_eq!(long.errormsg.as_deref(), Some("timed out after 3 seconds"));
    // A build killed at its limit keeps what it printed: its log is
    // copied only once the daemon has finished writing it.
    for (row, printed) in [(silent, "going quiet"), (long, "tick")] {
        let copy = setup
            .tmp
            .path()
            .join(format!("build-logs/{}.log.gz", row.id));
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&copy).unwrap()),
            &mut text,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        assert!(text.contains(printed), "{}: {text:?}", copy.display());
    }
    for (job, row, limit) in [("silent", silent, 2), ("long", long, 3)] {
        let secs = row.stoptime - row.starttime;
        assert!(
            (limit..=limit + 10).contains(&secs),
            "{job} ran {secs} s for a limit of {limit} s"
        );
    }
    let slow = &b["slow"];
    assert_eq!(
        (
            slow.status,
            slow.maxsilent,
            slow.timeout,
            slow.errormsg.as_deref()
        ),
        (0, Some(30), Some(60), None),
        "{slow:?}"
    );
    assert!(slow.stoptime - slow.starttime >= 3, "{slow:?}");
    let quick = &b["quick"];
    assert_eq!(
        (quick.status, quick.priority, quick.timeout, quick.maxsilent),
        (0, 3, None, None),
        "{quick:?}"
    );
    assert_eq!(slow.priority, 0);
    assert_eq!(quick.nix_name, format!("quick-{nonce}"));
    // Inputs come from the .drv: slow's is quick.
    assert_eq!(
        inputs_of(&conn, slow.id),
        std::slice::from_ref(&quick.derivation)
    );
    assert!(inputs_of(&conn, quick.id).is_empty());
    // The store: the successes' outputs are there, the killed ones' not.
    for (job, built) in [
        ("quick", true),
        ("slow", true),
        ("silent", false),
        ("long", false),
    ] {
        let outputs = query_rows::<String>(
            &conn,
            &format!("SELECT path FROM Outputs WHERE build = {}", b[job].id),
        );
        assert_eq!(outputs.len(), 1, "{job}");
        assert_eq!(setup.host_path(&outputs[0][0]).exists(), built, "{job}");
    }
    assert_sound(&setup.db);

    let replies = api_json(
        &setup,
        &[
            &format!("/build/{}", silent.id),
            &format!("/build/{}", long.id),
            &format!("/build/{}", quick.id),
        ],
    );
    assert_eq!(replies[0]["buildstatus"], 1);
    assert_eq!(
        replies[0]["errormsg"],
        "timed out after 2 seconds of silence"
    );
    assert_eq!(
        (&replies[0]["maxsilent"], &replies[0]["timeout"]),
        (&2.into(), &120.into())
    );
    assert_eq!(replies[1]["errormsg"], "timed out after 3 seconds");
    assert_eq!(replies[2]["buildstatus"], 0);
    assert_eq!(replies[2]["priority"], 3);
    assert_eq!(replies[2]["errormsg"], Value::Null);
}

/// Guix 1.5.0's own `(gnu ci)` `cuirass-jobs`, `hello` subset: the job is
/// registered with the name and nix-name Guix gives it, its limits and
/// inputs, and its build, whose sources cannot be downloaded here, is a
/// recorded failure within a minute or two.
#[test]
fn guix_1_5_cuirass_jobs_hello_subset_is_registered_and_its_build_fails_offline() {
    require_daemon();
    let setup = Setup::new("gnu-ci-today");
    let repo = Repo::new(setup.tmp.path(), &[("gnu-ci.scm", "jobs/gnu-ci-today.scm")]);
    let name = format!("guix-{}", nonce());
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            &name,
            &repo.url(),
            "gnu-ci.scm",
            "cuirass-jobs",
            "(subset . hello) (systems \"x86_64-linux\") \
             (channels (repository (version 0) \
                                   (url \"https://git.savannah.gnu.org/git/guix.git\") \
                                   (branch \"master\") \
                                   (commit \"0123456789abcdef0123456789abcdef01234567\") \
                                   (name guix)))"
        )
    ));
    let start = Instant::now();
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    let took = start.elapsed();
    assert!(out.status.success());
    assert!(took < Duration::from_secs(180), "the run took {took:?}");
    let conn = setup.db();
    assert_eq!(
        query_rows::<i64>(&conn, "SELECT status FROM Evaluations"),
        [[0]],
        "the evaluation failed: {:?}",
        query_rows::<Option<String>>(&conn, "SELECT error FROM Evaluations")
    );
    let b = builds(&conn);
    assert_eq!(
        b.keys().collect::<Vec<_>>(),
        ["hello.x86_64-linux"],
        "{b:#?}"
    );
    let hello = &b["hello.x86_64-linux"];
    assert_eq!(hello.nix_name, "hello-2.12.2");
    assert_eq!((hello.maxsilent, hello.timeout), (Some(3600), Some(72000)));
    assert!(
        matches!(hello.status, 1..=3),
        "hello cannot build offline, yet its status is {}",
        hello.status
    );
    // Its inputs are those of its .drv, each in the store; none of its
    // outputs was built.
    let drv = std::fs::read_to_string(setup.host_path(&hello.derivation)).unwrap();
    let inputs = inputs_of(&conn, hello.id);
    assert!(inputs.len() > 3, "{inputs:?}");
    for input in &inputs {
        assert!(
            drv.contains(&format!("(\"{input}\",")),
            "{input} not in the .drv"
        );
        assert!(setup.host_path(input).exists(), "{input}");
    }
    let outputs = query_rows::<String>(
        &conn,
        &format!("SELECT path FROM Outputs WHERE build = {}", hello.id),
    );
    assert!(!outputs.is_empty());
    for o in &outputs {
        assert!(!setup.host_path(&o[0]).exists(), "{o:?} was built");
    }
    assert_sound(&setup.db);
    let replies = api_json(&setup, &[&format!("/build/{}", hello.id)]);
    assert_eq!(replies[0]["job"], "hello.x86_64-linux");
    assert_eq!(replies[0]["nixname"], "hello-2.12.2");
    assert_eq!(replies[0]["buildstatus"], hello.status);
    assert_eq!(
        (&replies[0]["maxsilent"], &replies[0]["timeout"]),
        (&3600.into(), &72000.into())
    );
}

/// The error recorded for a failed evaluation is the evaluator's own
/// one-line message, under 1,000 characters: neither the last frame of a
/// Guile backtrace nor a whole job printed into the message.
#[test]
fn evaluation_errors_are_the_evaluators_one_line_message() {
    require_daemon();
    evaluation_errors_are_one_line(Setup::new("evalerr"));
}

#[test]
fn evaluation_errors_are_the_evaluators_one_line_message_under_guix_1_2() {
    Guix::V1_2.require_daemon();
    evaluation_errors_are_one_line(Setup::new_2018("evalerr"));
}

fn evaluation_errors_are_one_line(setup: Setup) {
    let repo = Repo::new(setup.tmp.path(), &[("bad.scm", "jobs/bad-jobs.scm")]);
    let spec = setup.write_spec(&format!(
        "(list {} {})\n",
        spec_entry("raising", &repo.url(), "bad.scm", "raising-jobs", ""),
        spec_entry("bogus", &repo.url(), "bad.scm", "bogus-jobs", "")
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let conn = setup.db();
    let errors: BTreeMap<String, String> = query_rows::<String>(
        &conn,
        "SELECT specification, error FROM Evaluations WHERE status = 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    // The job file as the evaluator loads it, from the spec's checkout.
    let file = |spec: &str| setup.cache.join(spec).join("bad.scm").display().to_string();
    let raising = &errors["raising"];
    assert!(
        raising.starts_with(&format!("calling 'raising-jobs' of {}: ", file("raising"))),
        "{raising}"
    );
    assert!(raising.contains("Wrong type argument"), "{raising}");
    let bogus = &errors["bogus"];
    assert!(
        bogus.starts_with(&format!(
            "calling 'bogus-jobs' of {}: job is neither a thunk, a (name . thunk) pair nor an alist: (\"xxx",
            file("bogus")
        )),
        "{bogus}"
    );
    for e in [raising, bogus] {
        assert!(e.chars().count() <= 1000, "{} characters", e.len());
        assert!(!e.contains('\n') && !e.contains("Backtrace"), "{e}");
    }
    // The whole job is not in it: the evaluator cut it to 200 characters.
    assert!(bogus.len() < 400, "{bogus}");
    assert_sound(&setup.db);
}

//! `cuirass --one-shot` end to end against the real guix-daemon.

use crate::support::*;
use std::collections::BTreeMap;

#[derive(Debug)]
struct BuildRow {
    status: i64,
    starttime: i64,
    stoptime: i64,
    log: String,
    system: String,
    nix_name: String,
    derivation: String,
}

fn builds_by_job(conn: &rusqlite::Connection, eval: i64) -> BTreeMap<String, BuildRow> {
    let mut stmt = conn
        .prepare(
            "SELECT d.job_name, b.status, b.starttime, b.stoptime, b.log, d.system, d.nix_name, b.derivation
             FROM Builds b JOIN Derivations d
               ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             WHERE b.evaluation = ?1",
        )
        .unwrap();
    stmt.query_map([eval], |r| {
        Ok((
            r.get::<_, String>(0)?,
            BuildRow {
                status: r.get(1)?,
                starttime: r.get(2)?,
                stoptime: r.get(3)?,
                log: r.get(4)?,
                system: r.get(5)?,
                nix_name: r.get(6)?,
                derivation: r.get(7)?,
            },
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn outputs_of(conn: &rusqlite::Connection, drv: &str) -> Vec<String> {
    query_rows::<String>(
        conn,
        &format!(
            "SELECT o.path FROM Outputs o JOIN Builds b ON b.id = o.build WHERE b.derivation = '{drv}'"
        ),
    )
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn keyword_jobs_build_end_to_end_and_new_commits_make_new_evaluations() {
    keyword_jobs_end_to_end(Guix::Today, "gz");
}

/// The Cuirass 2018 job convention where it was born: Guix 1.2.0, whose
/// daemon keeps bzip2 logs.
#[test]
fn keyword_jobs_build_end_to_end_under_guix_1_2() {
    keyword_jobs_end_to_end(Guix::V1_2, "bz2");
}

fn keyword_jobs_end_to_end(guix: Guix, log_extension: &str) {
    let Built {
        setup,
        repo,
        head,
        name,
        nonce,
    } = build_keyword_project_with(guix, "kw");
    let conn = setup.db();
    let evals = query_rows::<String>(&conn, "SELECT specification, revision FROM Evaluations");
    assert_eq!(evals, vec![vec![name.clone(), head.clone()]]);
    let eval = count(&conn, "SELECT id FROM Evaluations");

    let builds = builds_by_job(&conn, eval);
    let expected = [
        ("ok-1", 0),
        ("ok-2", 0),
        ("fail", 1),
        ("dep-on-fail", 2),
        ("dep-on-ok", 0),
    ];
    assert_eq!(builds.len(), expected.len(), "{builds:#?}");
    for (job, status) in expected {
        let b = &builds[job];
        assert_eq!(b.status, status, "{job}: {b:?}");
        assert_eq!(b.system, "x86_64-linux", "{job}");
        assert_eq!(b.nix_name, format!("{job}-{nonce}"), "{job}");
        assert!(
            b.derivation.ends_with(&format!("-{job}-{nonce}.drv")),
            "{job}"
        );
        assert!(b.starttime > 0 && b.stoptime >= b.starttime, "{job}: {b:?}");
        let outputs = outputs_of(&conn, &b.derivation);
        assert_eq!(outputs.len(), 1, "{job}");
        if status == 0 {
            assert!(
                setup.host_path(&outputs[0]).exists(),
                "{job}: output missing from the store"
            );
        } else {
            assert!(
                !setup.host_path(&outputs[0]).exists(),
                "{job}: failed output exists"
            );
        }
        // Everything the daemon started has its log file.
        if job != "dep-on-fail" {
            assert!(
                b.log.ends_with(&format!(".{log_extension}")),
                "{job}: log {:?}",
                b.log
            );
            assert!(setup.host_path(&b.log).exists(), "{job}: {} missing", b.log);
        }
    }
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Builds"), 5);
    assert_eq!(
        query_rows::<String>(&conn, "SELECT stamp FROM Stamps"),
        vec![vec![head.clone()]]
    );

    // The failed build's log is served as its text, whatever the
    // daemon's compression.
    let fail_id = count(
        &conn,
        "SELECT b.id FROM Builds b JOIN Derivations d USING (derivation, evaluation)
         WHERE d.job_name = 'fail'",
    );
    {
        let server = Server::start(&setup);
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail"])
            .arg(format!(
                "http://127.0.0.1:{}/build/{fail_id}/log/raw",
                server.port
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("failing"), "{text:?}");
    }

    // The same commit again: nothing new.
    let out = setup.one_shot(&[]);
    assert!(out.status.success());
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Evaluations"), 1);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Builds"), 5);

    // A new commit: a new evaluation, whose builds all reach a final status.
    std::fs::write(repo.dir.join("README"), "new commit\n").unwrap();
    let second = repo.commit("second");
    let out = setup.one_shot(&[]);
    assert!(out.status.success());
    let evals = query_rows::<String>(&conn, "SELECT revision FROM Evaluations ORDER BY id");
    assert_eq!(evals, vec![vec![head], vec![second]]);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Builds"), 10);
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM Builds WHERE status < 0"),
        0
    );
    let eval2 = count(&conn, "SELECT MAX(id) FROM Evaluations");
    let statuses: Vec<(String, i64)> = builds_by_job(&conn, eval2)
        .into_iter()
        .map(|(k, v)| (k, v.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("dep-on-fail".into(), 2),
            ("dep-on-ok".into(), 0),
            ("fail".into(), 1),
            ("ok-1".into(), 0),
            ("ok-2".into(), 0)
        ]
    );
}

#[test]
fn pair_jobs_with_symbol_keys_are_evaluated() {
    Guix::V1_2.require_daemon();
    let setup = Setup::new_2018("pairs");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("jobs.scm", "jobs/pair-jobs.scm")]);
    let name = format!("pairs-{nonce}");
    let spec = setup.write_spec(&spec_text(
        &name,
        &repo.url(),
        "jobs.scm",
        "hydra-jobs",
        &nonce,
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let conn = setup.db();
    let eval = count(&conn, "SELECT id FROM Evaluations");
    let builds = builds_by_job(&conn, eval);
    // The two broken jobs are reported and skipped; the rest build.
    let jobs: Vec<(&str, i64, &str)> = builds
        .iter()
        .map(|(k, v)| (k.as_str(), v.status, v.nix_name.as_str()))
        .collect();
    let expect_a = format!("pair-a-{nonce}");
    let expect_b = format!("pair-b-{nonce}");
    let expect_c = format!("pair-c-{nonce}");
    assert_eq!(
        jobs,
        vec![
            ("pair-a", 0, expect_a.as_str()),
            ("pair-b", 0, expect_b.as_str()),
            ("pair-c", 0, expect_c.as_str())
        ]
    );
}

#[test]
fn an_unreachable_daemon_is_a_clear_error() {
    let setup = Setup::new("nodaemon");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = setup.write_spec(&spec_text("x", &repo.url(), "ci.scm", "cuirass-jobs", "n"));
    let out = setup
        .command()
        .args(["--one-shot", "-S", spec.to_str().unwrap()])
        .env(
            "GUIX_DAEMON_SOCKET",
            setup.tmp.path().join("no-such-socket"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to guix-daemon"), "{stderr}");
    assert!(stderr.contains("no-such-socket"), "{stderr}");
}

#[test]
fn a_broken_specification_file_writes_nothing() {
    let setup = Setup::new("badspec");
    let spec = setup.write_spec("(list `((#:name . \"x\")\n  (#:url . \"file:///nowhere\")\n  (#:file . \"ci.scm\") (#:proc . jobs))\n");
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("specs.scm:1:"),
        "error should name file and line: {stderr}"
    );
    assert!(
        !setup.db.exists(),
        "a broken spec file must not create the database"
    );
}

#[test]
fn builds_start_while_the_evaluator_is_still_running() {
    require_daemon();
    let setup = Setup::new("stream");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    // The last job's thunk sleeps 4 s: the first four are printed long
    // before the evaluation ends.
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "stream",
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\") (delay . 4)")
        )
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let started = log
        .find(&format!("-ok-1-{nonce}.drv"))
        .expect("ok-1 was built");
    let done = log
        .find("evaluation 1 of")
        .and_then(|_| log.find(" done: 5 jobs"))
        .expect("evaluation done");
    assert!(
        started < done,
        "ok-1 should start building before the evaluation is done:\n{log}"
    );
    let conn = setup.db();
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM Builds WHERE status >= 0"),
        5
    );
    assert_eq!(count(&conn, "SELECT status FROM Evaluations"), 0);
}

#[test]
fn compilation_runs_bootstrap_configure_and_make_and_a_failure_stops_only_its_spec() {
    require_daemon();
    let setup = Setup::new("compile");
    let nonce = nonce();
    let tmp = setup.tmp.path();
    let good = Repo::named(
        tmp,
        "good",
        &[
            ("bootstrap", "compile/bootstrap"),
            ("template.scm", "jobs/keyword-jobs.scm"),
        ],
    );
    // A project whose build is broken: make fails, nothing is evaluated.
    let broken = Repo::named(tmp, "broken", &[("template.scm", "jobs/keyword-jobs.scm")]);
    std::fs::write(
        broken.dir.join("configure"),
        "#!/bin/sh\necho 'all:; exit 3' > Makefile\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(broken.dir.join("configure"))
        .status()
        .unwrap();
    broken.commit("broken build");
    let entry = |name: &str, url: &str| {
        spec_entry(
            name,
            url,
            "generated.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\")"),
        )
        .replace("(#:no-compile? . #t)", "(#:no-compile? . #f)")
    };
    let spec = setup.write_spec(&format!(
        "(list {}\n{})\n",
        entry("good", &good.url()),
        entry("broken", &broken.url())
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let checkout = setup.cache.join("good");
    assert!(checkout.join("generated.scm").exists(), "make did not run");
    assert_eq!(
        std::fs::read_to_string(checkout.join("configure-args"))
            .unwrap()
            .trim(),
        "--localstatedir=/var"
    );
    let conn = setup.db();
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation WHERE e.specification = 'good' AND b.status >= 0"
        ),
        5
    );
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM Evaluations WHERE specification = 'broken'"
        ),
        0
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("spec=\"broken\" compilation failed"), "{log}");
}

/// Guix 1.2.0's own `(gnu ci)` `hydra-jobs` (the `(name . thunk)`
/// convention of its time), on the `hello` subset: the job is registered
/// with the name and nix-name Guix gives it, and its build, which needs
/// sources that cannot be downloaded here, is a recorded failure.
#[test]
fn guix_1_2_hydra_jobs_hello_subset_is_registered_and_its_build_fails_offline() {
    Guix::V1_2.require_daemon();
    let setup = Setup::new_2018("hydra-hello");
    let repo = Repo::new(setup.tmp.path(), &[("gnu-ci.scm", "jobs/gnu-ci.scm")]);
    let name = format!("hydra-{}", nonce());
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            &name,
            &repo.url(),
            "gnu-ci.scm",
            "hydra-jobs",
            "(subset . \"hello\") (systems \"x86_64-linux\")"
        )
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let conn = setup.db();
    let rows = query_rows::<String>(
        &conn,
        "SELECT d.job_name, d.nix_name, d.system, CAST(b.status AS TEXT) FROM Builds b
         JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation",
    );
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["hello-2.10.x86_64-linux"],
        "{rows:?}"
    );
    assert_eq!(rows[0][1], "hello-2.10");
    assert_eq!(rows[0][2], "x86_64-linux");
    let status: i64 = rows[0][3].parse().unwrap();
    assert!(
        matches!(status, 1..=3),
        "hello cannot build offline, yet its status is {status}"
    );
    assert_sound(&setup.db);
}

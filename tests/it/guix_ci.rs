//! Guix's own `(guix ci)` client modules, unmodified, against a daemon-mode
//! cuirass serving real builds: Guix 1.5.0's (what people run today) in
//! its root, and Guix 1.2.0's (the 2018 API) on the host.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Runs a client script of `fixtures/guix-ci/` with this Guix's `guix
/// repl`, from a copy in `dir` (which that Guix can see), and parses the
/// JSON it prints last.
fn run_client(guix: Guix, dir: &Path, script: &str, args: &[&str]) -> Value {
    let copy = dir.join(script);
    std::fs::copy(fixture(&format!("guix-ci/{script}")), &copy).unwrap();
    let out = guix
        .command("guix")
        .args(["repl", "--"])
        .arg(&copy)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    serde_json::from_str(last.unwrap_or_else(|| panic!("{script}: no JSON in {stdout}"))).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x["id"].as_i64().unwrap_or_else(|| x.as_i64().unwrap()))
        .collect()
}

fn column(conn: &rusqlite::Connection, sql: &str) -> Vec<i64> {
    query_rows::<i64>(conn, sql).into_iter().flatten().collect()
}

/// Status names of Guix 1.5.0's `integer->build-status`.
fn status_name(st: i64) -> &'static str {
    match st {
        -3 => "submitted",
        -2 => "scheduled",
        -1 => "started",
        0 => "succeeded",
        1 => "failed",
        2 => "failed-dependency",
        3 => "failed-other",
        4 => "canceled",
        _ => panic!("status {st} is outside what Guix 1.5.0 accepts"),
    }
}

#[test]
fn guix_1_5_ci_module_reads_every_route_it_knows() {
    let setup = Setup::new("guix-ci");
    setup.guix.require_daemon();
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/guix-jobs.scm")]);
    let first = git(&repo.dir, &["rev-parse", "HEAD"]);
    one_shot_of(&setup, "guix", &repo, "guix-jobs", &nonce);
    let second = repo.commit("second");
    assert!(setup.one_shot(&[]).status.success());

    // A second specification whose one build runs for the whole test, so
    // that the queue holds a real build.
    let slow_repo = Repo::named(
        setup.tmp.path(),
        "slow",
        &[("ci.scm", "jobs/sleepy-jobs.scm")],
    );
    let slow = setup.tmp.path().join("slow.scm");
    std::fs::write(
        &slow,
        format!(
            "(list {})\n",
            spec_entry(
                "slow",
                &slow_repo.url(),
                "ci.scm",
                "sleepy-jobs",
                &format!("(nonce . \"{nonce}\") (seconds . \"600\") (count . 1)")
            )
        ),
    )
    .unwrap();
    let port = free_port();
    let _daemon = Running::start(
        &setup,
        &[
            "-S",
            slow.to_str().unwrap(),
            "--interval",
            "100000",
            "--port",
            &port.to_string(),
        ],
        &[],
    );
    wait_until(Duration::from_secs(120), "the slow build to start", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get_json(port, "/api/queue?nr=10").1[0]["buildstatus"] == -1
    });

    let conn = setup.db();
    let url = format!("http://127.0.0.1:{port}");
    let v = run_client(
        setup.guix,
        setup.tmp.path(),
        "client-1.5.scm",
        &[&url, "2", &first],
    );

    // latest-builds, with each filter, against the database.
    let finished = |filter: &str| {
        column(
            &conn,
            &format!(
                "SELECT b.id FROM Builds b
                 JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
                 JOIN Evaluations e ON e.id = b.evaluation
                 WHERE b.status >= 0 AND {filter} ORDER BY b.stoptime DESC, b.id DESC"
            ),
        )
    };
    assert_eq!(ids(&v["latest"]), finished("1"));
    assert_eq!(ids(&v["latest"]).len(), 4);
    assert_eq!(ids(&v["latest-evaluation"]), finished("b.evaluation = 2"));
    assert_eq!(ids(&v["latest-evaluation"]).len(), 2);
    assert_eq!(
        ids(&v["latest-system"]),
        finished("d.system = 'x86_64-linux'")
    );
    assert_eq!(
        ids(&v["latest-job"]),
        finished("d.job_name = 'hello.x86_64-linux'")
    );
    assert_eq!(ids(&v["latest-job"]).len(), 2);
    assert_eq!(
        ids(&v["latest-jobset"]),
        finished("e.specification = 'guix'")
    );
    assert_eq!(ids(&v["latest-status"]), finished("b.status = 0"));
    for b in v["latest"].as_array().unwrap() {
        let id = b["id"].as_i64().unwrap();
        let (drv, eval, st, start, stop): (String, i64, i64, i64, i64) = conn
            .query_row(
                "SELECT derivation, evaluation, status, starttime, stoptime FROM Builds WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(b["derivation"], drv.as_str());
        assert_eq!(b["evaluation"], eval);
        assert_eq!(b["status"], status_name(st));
        assert_eq!(
            (&b["starttime"], &b["stoptime"]),
            (&start.into(), &stop.into())
        );
        assert_eq!(b["timestamp"], stop);
        assert_eq!(b["duration"], stop - start);
        assert_eq!(b["products"], 0);
        assert_eq!(b["system"], "x86_64-linux");
    }

    // queued-builds: the slow build, running.
    let queued = column(&conn, "SELECT id FROM Builds WHERE status < 0");
    assert_eq!(ids(&v["queued"]), queued);
    assert_eq!(v["queued"][0]["status"], "started");

    // evaluation, latest-evaluations (all and #:spec), evaluations-for-commit.
    let e = &v["evaluation"];
    assert_eq!(
        (&e["id"], &e["specification"], &e["complete"]),
        (&2.into(), &"guix".into(), &true.into())
    );
    assert_eq!(
        e["checkouts"],
        serde_json::json!([{"commit": second, "channel": "guix"}])
    );
    let (ts, evaltime): (i64, i64) = conn
        .query_row(
            "SELECT timestamp, evaltime FROM Evaluations WHERE id = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(ts > 0 && evaltime >= ts, "{ts} {evaltime}");
    assert_eq!(
        (&e["timestamp"], &e["checkouttime"], &e["evaltime"]),
        (&ts.into(), &ts.into(), &evaltime.into())
    );
    assert_eq!(ids(&v["evaluations"]), [3, 2, 1]);
    assert_eq!(v["evaluations"][0]["specification"], "slow");
    assert_eq!(ids(&v["evaluations-spec"]), [2, 1]);
    assert_eq!(
        v["evaluations-spec"][1]["checkouts"][0]["commit"],
        first.as_str()
    );
    assert_eq!(ids(&v["evaluations-for-commit"]), [1]);

    // evaluation-jobs, build, job-build.
    let jobs: BTreeSet<(String, i64, String)> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["build"].as_i64().unwrap(),
                j["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect: BTreeSet<(String, i64, String)> = query_rows::<rusqlite::types::Value>(
        &conn,
        "SELECT d.job_name, b.id, b.status FROM Builds b
         JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         WHERE b.evaluation = 2",
    )
    .into_iter()
    .map(|row| match row.as_slice() {
        [
            rusqlite::types::Value::Text(name),
            rusqlite::types::Value::Integer(id),
            rusqlite::types::Value::Integer(st),
        ] => (name.clone(), *id, status_name(*st).to_string()),
        other => panic!("{other:?}"),
    })
    .collect();
    assert_eq!(jobs, expect);
    assert!(
        jobs.contains(&(
            "guix.x86_64-linux".into(),
            v["jobs"][0]["build"].as_i64().unwrap(),
            "succeeded".into()
        )) || jobs.contains(&(
            "hello.x86_64-linux".into(),
            v["jobs"][0]["build"].as_i64().unwrap(),
            "failed".into()
        ))
    );
    assert_eq!(v["build"]["id"], v["jobs"][0]["build"]);
    assert_eq!(v["build"], v["job-build"]);
    assert_eq!(v["build"]["evaluation"], 2);

    // jobs-history: both evaluations of `guix`, newest first.
    let history = v["history"].as_array().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h["evaluation"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(
        history[0]["checkouts"],
        serde_json::json!([{"commit": second, "channel": "guix"}])
    );
    for h in history {
        let mut statuses: Vec<(String, String)> = h["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["name"].as_str().unwrap().into(),
                    j["status"].as_str().unwrap().into(),
                )
            })
            .collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [
                ("guix.x86_64-linux".to_string(), "succeeded".to_string()),
                ("hello.x86_64-linux".to_string(), "failed".to_string())
            ]
        );
    }

    // channel-with-substitutes-available: the commit of the evaluation
    // whose guix.x86_64-linux last succeeded.
    assert_eq!(v["channel-commit"], second.as_str());

    // Weather, which no client above reads: the second evaluation's builds
    // are still succeeding and still failing; the first's are unknown.
    for (eval, job, weather) in [
        (1, "guix.x86_64-linux", -1),
        (1, "hello.x86_64-linux", -1),
        (2, "guix.x86_64-linux", 2),
        (2, "hello.x86_64-linux", 3),
    ] {
        let id: i64 = conn
            .query_row(
                "SELECT b.id FROM Builds b JOIN Derivations d
                   ON d.derivation = b.derivation AND d.evaluation = b.evaluation
                 WHERE b.evaluation = ?1 AND d.job_name = ?2",
                rusqlite::params![eval, job],
                |r| r.get(0),
            )
            .unwrap();
        let (code, b) = get_json(port, &format!("/build/{id}"));
        assert_eq!(
            (code, &b["weather"]),
            (200, &weather.into()),
            "{eval} {job}"
        );
    }

    // Today's routes that no client above calls, over the real builds:
    // a build by derivation, a store item's build and its (gzip) log, and
    // the latest build a search finds.
    let (hello, drv, out): (i64, String, String) = conn
        .query_row(
            "SELECT b.id, b.derivation, o.path FROM Builds b
             JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             JOIN Outputs o ON o.build = b.id
             WHERE b.evaluation = 2 AND d.job_name = 'hello.x86_64-linux'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let base = |path: &str| path.strip_prefix("/gnu/store/").unwrap().to_string();
    assert_eq!(
        get_json(port, &format!("/build/{}", base(&drv))).1["id"],
        hello
    );
    let (code, o) = get_json(port, &format!("/output/{}", base(&out)));
    assert_eq!(
        (code, &o["name"], &o["derivation"]),
        (200, &"out".into(), &drv.as_str().into())
    );
    assert_eq!(o["build"]["buildstatus"], 1);
    let (code, _, log) = get_raw(port, &format!("/log/{}", base(&out)));
    let log = String::from_utf8_lossy(&log);
    assert_eq!(code, 200, "{log}");
    assert!(log.contains("hello is broken"), "{log}");
    let (code, head, _) = get_raw(port, "/search/latest?query=spec:guix%20hello");
    assert_eq!(code, 302);
    assert!(
        head.contains(&format!("\r\nLocation: /build/{hello}/details\r\n")),
        "{head}"
    );
    let (code, jobs) = get_json(
        port,
        "/api/jobs?evaluation=2&names=hello.x86_64-linux&system=x86_64-linux",
    );
    assert_eq!(
        (code, jobs),
        (
            200,
            serde_json::json!([{"name": "hello.x86_64-linux", "build": hello, "status": 1}])
        )
    );
}

#[test]
fn guix_1_2_ci_module_reads_the_2018_routes() {
    let Built {
        setup, head, name, ..
    } = build_keyword_project_with(Guix::V1_2, "guix-ci-2018");
    let conn = setup.db();
    let server = Server::start(&setup);
    // A base URL ending in `/`: Guix 1.2.0 then asks for `//api/…`.
    let url = format!("http://127.0.0.1:{}/", server.port);
    let v = run_client(
        setup.guix,
        setup.tmp.path(),
        "client-1.2.scm",
        &[&url, &head],
    );
    let latest = column(
        &conn,
        "SELECT id FROM Builds ORDER BY stoptime DESC, id DESC",
    );
    assert_eq!(latest.len(), 5);
    assert_eq!(ids(&v["latest"]), latest);
    assert_eq!(ids(&v["latest-evaluation"]), latest);
    assert_eq!(ids(&v["latest-system"]), latest);
    assert_eq!(
        ids(&v["latest-job"]),
        column(
            &conn,
            "SELECT b.id FROM Builds b JOIN Derivations d ON d.derivation = b.derivation
             WHERE d.job_name = 'fail'"
        )
    );
    assert_eq!(
        ids(&v["latest-status"]),
        column(
            &conn,
            "SELECT id FROM Builds WHERE status = 0 ORDER BY stoptime DESC, id DESC"
        )
    );
    for b in v["latest"].as_array().unwrap() {
        let (drv, st): (String, i64) = conn
            .query_row(
                "SELECT derivation, status FROM Builds WHERE id = ?1",
                [b["id"].as_i64().unwrap()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (&b["derivation"], &b["status"]),
            (&drv.as_str().into(), &st.into())
        );
        assert_eq!(b["products"], 0);
    }
    assert_eq!(v["queued"], serde_json::json!([]));
    assert_eq!(
        v["evaluations"],
        serde_json::json!([{"id": 1, "specification": name, "complete": true,
                            "checkouts": [{"commit": head, "input": name}]}])
    );
    assert_eq!(ids(&v["evaluations-for-commit"]), [1]);
    assert_eq!(v["evaluations-for-other-commit"], serde_json::json!([]));
}

//! Issue 14: two job names, one derivation.  A job file gives the same
//! `.drv` under two names; the daemon builds it once, and every route
//! that finds builds by job name finds it under both, with its status.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;

/// The builds of a JSON listing, as (id, job, buildstatus).
fn builds(v: &Value) -> Vec<(i64, String, i64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a listing: {v}"))
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap(),
                b["job"].as_str().unwrap().to_string(),
                b["buildstatus"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// `(name, build, status)` of `/api/jobs`-shaped objects, by name.
fn jobs(v: &Value) -> Vec<(String, i64, i64)> {
    let mut out: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a job list: {v}"))
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["build"].as_i64().unwrap(),
                j["status"].as_i64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn two_job_names_one_derivation_build_once_both_found() {
    require_daemon();
    let setup = Setup::new("aliases");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/alias-jobs.scm")]);
    let name = format!("aliases-{nonce}");
    let spec = setup.write_spec(&spec_text(
        &name,
        &repo.url(),
        "ci.scm",
        "cuirass-jobs",
        &nonce,
    ));
    let daemon = Running::start(&setup, &["-S", spec.to_str().unwrap()], &[]);
    let port = daemon.port();
    let get = |target: &str| {
        let (status, v) = get_json(port, target);
        assert_eq!(status, 200, "{target}: {v}");
        v
    };

    // While it builds (6 s), the queue has it under either name.
    let mut pending = Vec::new();
    wait_until(Duration::from_secs(120), "the build in the queue", || {
        pending = builds(&get("/api/queue?nr=10&job=beta"));
        !pending.is_empty()
    });
    let id = pending[0].0;
    assert_eq!(pending, vec![(id, "beta".into(), pending[0].2)]);
    assert!(pending[0].2 < 0, "{pending:?}");
    let alpha = builds(&get("/api/queue?nr=10&job=alpha"));
    assert_eq!(alpha.iter().map(|b| b.0).collect::<Vec<_>>(), vec![id]);

    wait_until(Duration::from_secs(120), "both builds to finish", || {
        count(&setup.db(), "SELECT COUNT(*) FROM Builds WHERE status >= 0") == 2
            && count(
                &setup.db(),
                "SELECT COUNT(*) FROM Evaluations WHERE status = 0",
            ) == 1
    });
    // The loop moves the registered rows' index entries to the large
    // indexes a page per turn (migration 22); the lookups by name and
    // derivation below read them there.
    wait_until(
        Duration::from_secs(30),
        "the fresh index entries moved",
        || {
            ["Builds", "Derivations", "Outputs"].iter().all(|table| {
                count(
                    &setup.db(),
                    &format!("SELECT COUNT(*) FROM {table} WHERE fresh = 1"),
                ) == 0
            })
        },
    );
    let conn = setup.db();
    let drv: String = conn
        .query_row("SELECT derivation FROM Builds WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(drv.ends_with(&format!("-alias-pkg-{nonce}.drv")), "{drv}");
    // One build of the derivation in the database, one build request
    // started at the daemon, its output in the store.
    assert_eq!(
        count(
            &conn,
            &format!("SELECT COUNT(*) FROM Builds WHERE derivation = '{drv}'")
        ),
        1
    );
    let started = format!("started {drv}");
    assert_eq!(
        daemon.log_text().matches(&started).count(),
        1,
        "{}",
        daemon.log_text()
    );
    let out: String = conn
        .query_row("SELECT path FROM Outputs WHERE build = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(setup.host_path(&out)).unwrap(),
        "built\n"
    );
    // The evaluator's count and the log say what happened.
    let eval: i64 = conn
        .query_row("SELECT evaluation FROM Builds WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "evaluation {eval} of {} done: 3 jobs, 2 build(s) (1 job name(s) share another job's derivation)",
            git(&repo.dir, &["rev-parse", "HEAD"])
        )),
        "{log}"
    );
    assert!(!log.contains("are registered"), "{log}");

    // Every route by job name finds it under both names, succeeded.
    for job in ["alpha", "beta"] {
        assert_eq!(
            builds(&get(&format!("/api/latestbuilds?nr=10&job={job}"))),
            vec![(id, job.to_string(), 0)],
            "{job}"
        );
        assert_eq!(
            builds(&get(&format!(
                "/api/latestbuilds?nr=10&jobset={name}&job={job}&status=succeeded"
            ))),
            vec![(id, job.to_string(), 0)],
            "{job}"
        );
        assert_eq!(
            jobs(&get(&format!("/api/jobs?evaluation={eval}&names={job}"))),
            vec![(job.to_string(), id, 0)]
        );
        let history = get(&format!("/api/jobs/history?spec={name}&names={job}&nr=10"));
        assert_eq!(history[0]["evaluation"].as_i64(), Some(eval), "{history}");
        assert_eq!(jobs(&history[0]["jobs"]), vec![(job.to_string(), id, 0)]);
        let (status, head, _) = get_raw(port, &format!("/search/latest?query=spec:{name}+{job}"));
        assert_eq!(status, 302, "{head}");
        assert!(
            head.contains(&format!("Location: /build/{id}/details")),
            "{head}"
        );
        let (status, _, body) = get_raw(port, &format!("/search?query={job}"));
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 200);
        assert!(
            body.contains(&format!("/build/{id}/details")) && body.contains(job),
            "{body}"
        );
        let (status, _, body) = get_raw(port, &format!("/eval/{eval}?job={job}"));
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(&format!("/build/{id}/details")), "{body}");
        assert!(!body.contains("gamma"), "filtered: {body}");
    }
    let all = jobs(&get(&format!("/api/jobs?evaluation={eval}")));
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.contains(&("alpha".into(), id, 0)) && all.contains(&("beta".into(), id, 0)));
    let history = get(&format!(
        "/api/jobs/history?spec={name}&names=alpha,beta&nr=10"
    ));
    assert_eq!(
        jobs(&history[0]["jobs"]),
        vec![("alpha".into(), id, 0), ("beta".into(), id, 0)]
    );
    // The build's page names it under both.
    let (_, _, body) = get_raw(port, &format!("/build/{id}/details"));
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("alpha <small>(also beta)</small>"), "{body}");
    drop(daemon);
    assert_sound(&setup.db);
}

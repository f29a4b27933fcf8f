//! The routes and fields of today's Cuirass (CUIRASS.md, "HTTP API of
//! today"), beside those of 2018 that `tests.rs` covers.

use super::tests::{fixture, get, ids, job, request, spec};
use super::*;
use crate::db::JobRecord;
use serde_json::{Value, json};
use std::path::Path;

/// `job` with its own derivation and outputs in evaluation `nonce`.
fn job_in(name: &str, nonce: &str) -> JobRecord {
    let mut j = job(&format!("{name}{nonce}"));
    j.job_name = name.into();
    j
}

fn set_status(db: &Db, build: i64, st: i64, stop: i64) {
    db.connection()
        .execute(
            "UPDATE Builds SET status = ?2, starttime = ?3, stoptime = ?3 WHERE id = ?1",
            rusqlite::params![build, st, stop],
        )
        .unwrap();
}

#[test]
fn latest_builds_jobset_is_the_specification_unless_project_is_given() {
    let (db, root) = fixture();
    let q = |t: &str| {
        let (code, v) = get(&db, &root, t);
        assert_eq!(code, 200, "{t}: {v}");
        ids(&v)
    };
    // Today's client: jobset names the specification.
    assert_eq!(q("/api/latestbuilds?nr=10&jobset=hello"), [2, 1]);
    assert_eq!(q("/api/latestbuilds?nr=10&jobset=other"), Vec::<i64>::new());
    assert_eq!(
        q("/api/latestbuilds?nr=10&jobset=master"),
        Vec::<EvalId>::new()
    );
    // 2018's: project names it, jobset is its branch.
    assert_eq!(
        q("/api/latestbuilds?nr=10&project=hello&jobset=master"),
        [2, 1]
    );
    assert_eq!(
        q("/api/latestbuilds?nr=10&project=hello&jobset=hello"),
        Vec::<EvalId>::new()
    );
    // Derivation, alone and with the others.
    let drv = job("bad").derivation;
    assert_eq!(q(&format!("/api/latestbuilds?nr=10&derivation={drv}")), [2]);
    assert_eq!(
        q(&format!(
            "/api/latestbuilds?nr=10&derivation={drv}&jobset=hello&status=1&job=bad&system=x86_64-linux&evaluation=1"
        )),
        [2]
    );
    assert_eq!(
        q(&format!(
            "/api/latestbuilds?nr=10&derivation={drv}&status=0"
        )),
        Vec::<EvalId>::new()
    );
    assert_eq!(
        q(&format!(
            "/api/latestbuilds?nr=10&derivation={}",
            job("wip").derivation
        )),
        Vec::<EvalId>::new()
    );
}

#[test]
fn weather_compares_with_the_jobs_previous_finished_build_in_its_specification() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("hello", None), spec("other", None)])
        .unwrap();
    // Evaluation k of hello has build k of job `ok`; `other` has a job of
    // the same name that always fails, in between.
    let statuses = [0, 1, 3, 4, -2, 0, 0, 2];
    let mut builds = Vec::new();
    for (k, st) in statuses.iter().enumerate() {
        let eval = db
            .register_evaluation("hello", "c", &[job_in("ok", &k.to_string())], 1)
            .unwrap();
        let id: i64 = db
            .connection()
            .query_row("SELECT id FROM Builds WHERE evaluation = ?1", [eval], |r| {
                r.get(0)
            })
            .unwrap();
        set_status(&db, id, *st, 100 + k as i64);
        builds.push(id);
        let other = db
            .register_evaluation("other", "c", &[job_in("ok", &format!("o{k}"))], 1)
            .unwrap();
        db.connection()
            .execute(
                "UPDATE Builds SET status = 1, stoptime = 1 WHERE evaluation = ?1",
                [other],
            )
            .unwrap();
    }
    let weather = |id: i64| get(&db, Path::new("/"), &format!("/build/{id}")).1["weather"].clone();
    let got: Vec<Value> = builds.iter().map(|&id| weather(id)).collect();
    // First: nothing to compare with.  Then: failed after a success,
    // failed-other after a failure, canceled and scheduled say nothing,
    // succeeded after the last failure, again, and failed-dependency.
    assert_eq!(got, [-1, 1, 3, -1, -1, 0, 2, 1].map(Value::from));
    // The same in listings.
    let (_, v) = get(&db, Path::new("/"), "/api/latestbuilds?nr=1&jobset=hello");
    assert_eq!(
        (&v[0]["id"], &v[0]["weather"]),
        (&builds[7].into(), &1.into())
    );
    // Another system is another job.
    db.connection()
        .execute(
            "UPDATE Derivations SET system = 'aarch64-linux'
             WHERE evaluation = (SELECT evaluation FROM Builds WHERE id = ?1)",
            [builds[7]],
        )
        .unwrap();
    assert_eq!(weather(builds[7]), -1);
}

#[test]
fn weather_walks_the_job_name_index() {
    use crate::db::read::previous_finished_build;
    let (db, _) = fixture();
    let plan = crate::db::query_plan(
        db.connection(),
        previous_finished_build(),
        rusqlite::params!["ok", 5, "x86_64-linux", "hello"],
    );
    // Each arm's build by its derivation row's rowid (migration 25).
    for fresh in ["", "_fresh"] {
        assert!(
            plan.contains(&format!(
                "SEARCH d USING INDEX Derivations_job_name{fresh} (job_name=? AND evaluation<?); \
                 SEARCH b USING INTEGER PRIMARY KEY (rowid=?)"
            )),
            "{plan}"
        );
    }
    assert!(
        !crate::db::sorts_beyond_arms(&plan) && !crate::db::scans_a_table(&plan),
        "{plan}"
    );
    // The same job as another name of a build: its own index, then by id.
    let plan = crate::db::query_plan(
        db.connection(),
        crate::db::read::PREVIOUS_FINISHED_BUILD_OF_ALIAS,
        rusqlite::params!["ok", 5, "x86_64-linux", "hello"],
    );
    assert!(
        plan.starts_with("SEARCH a USING INDEX JobAliases_job_name (job_name=? AND evaluation<?)")
            && plan.contains("SEARCH b USING INTEGER PRIMARY KEY (rowid=?)")
            && !plan.contains("TEMP B-TREE")
            && !plan.contains("SCAN"),
        "{plan}"
    );
}

#[test]
fn statuses_outside_today_range_are_mapped_into_it() {
    assert_eq!(
        [-9, -3, -2, -1, 0, 1, 2, 3, 4, 5, 7, 11]
            .map(|c| crate::db::BuildStatus::of_column(c).code()),
        [-2, -2, -2, -1, 0, 1, 2, 3, 4, 3, 3, 3]
    );
    let (db, root) = fixture();
    set_status(&db, 2, 7, 300);
    let (_, b) = get(&db, &root, "/build/2");
    assert_eq!((&b["buildstatus"], &b["finished"]), (&3.into(), &1.into()));
    let (_, v) = get(&db, &root, "/api/jobs?evaluation=1&names=bad");
    assert_eq!(v[0]["status"], 3);
}

#[test]
fn one_evaluation_and_evaluations_of_one_specification() {
    let (mut db, root) = fixture();
    let (code, v) = get(&db, &root, "/api/evaluation?id=1");
    assert_eq!(code, 200);
    assert_eq!(
        v,
        json!({"id": 1, "specification": "hello", "status": 0, "error": null,
               "in-progress": 0, "timestamp": 100, "checkouttime": 100, "evaltime": 0,
               "checkouts": [{"commit": "abc123", "channel": "hello", "input": "hello",
                              "directory": null}]})
    );
    assert_eq!(
        get(&db, &root, "/api/evaluation?id=9"),
        (404, json!({"error": "Evaluation with ID 9 doesn't exist."}))
    );
    for bad in ["/api/evaluation", "/api/evaluation?id=x"] {
        let (code, v) = get(&db, &root, bad);
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].as_str().unwrap().contains("id"), "{bad}");
    }
    // One running, one failed with its reason.
    let running = db.begin_evaluation("other", "fff", 400).unwrap();
    let failed = db.begin_evaluation("hello", "eee", 500).unwrap();
    db.fail_evaluation(
        "hello",
        failed,
        "eee",
        "evaluator: no such file",
        &Default::default(),
        510,
    )
    .unwrap();
    let (_, v) = get(&db, &root, "/api/evaluations?nr=10&spec=hello");
    assert_eq!(ids(&v), [failed, EvalId(1)]);
    assert_eq!(
        (
            &v[0]["status"],
            &v[0]["error"],
            &v[0]["in-progress"],
            &v[0]["evaltime"]
        ),
        (
            &1.into(),
            &"evaluator: no such file".into(),
            &0.into(),
            &510.into()
        )
    );
    let (_, v) = get(&db, &root, &format!("/api/evaluation?id={running}"));
    assert_eq!(
        (
            &v["status"],
            &v["in-progress"],
            &v["evaltime"],
            &v["timestamp"]
        ),
        (&(-1).into(), &1.into(), &0.into(), &400.into())
    );
    assert_eq!(
        ids(&get(&db, &root, "/api/evaluations?nr=1&spec=other").1),
        [running]
    );
    assert_eq!(
        ids(&get(&db, &root, "/api/evaluations?nr=10&spec=none").1),
        Vec::<EvalId>::new()
    );
    assert_eq!(
        ids(&get(&db, &root, "/api/evaluations?nr=10").1),
        [failed, running, EvalId(2), EvalId(1)]
    );
}

#[test]
fn jobs_of_an_evaluation() {
    let (mut db, root) = fixture();
    let (code, v) = get(&db, &root, "/api/jobs?evaluation=1");
    assert_eq!(code, 200);
    assert_eq!(
        v,
        json!([{"name": "ok", "build": 1, "status": 0},
               {"name": "bad", "build": 2, "status": 1},
               {"name": "wip", "build": 3, "status": -1},
               {"name": "waiting", "build": 4, "status": -2}])
    );
    let names = |t: &str| -> Vec<String> {
        let (code, v) = get(&db, &root, t);
        assert_eq!(code, 200, "{t}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("/api/jobs?evaluation=1&names=waiting,ok,none"),
        ["ok", "waiting"]
    );
    assert_eq!(names("/api/jobs?evaluation=2&names=ok"), ["ok"]);
    assert_eq!(names("/api/jobs?evaluation=1&system=x86_64-linux").len(), 4);
    assert!(names("/api/jobs?evaluation=1&system=aarch64-linux").is_empty());
    assert!(names("/api/jobs?evaluation=1&names=ok&system=aarch64-linux").is_empty());
    assert!(names("/api/jobs?evaluation=9").is_empty());
    let many = (0..51).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    for bad in [
        "/api/jobs",
        "/api/jobs?evaluation=x",
        &format!("/api/jobs?evaluation=1&names={many}"),
    ] {
        let (code, v) = get(&db, &root, bad);
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string());
    }
    // More than a page: every job once, in registration order.
    let jobs: Vec<JobRecord> = (0..2 * JOBS_PAGE + 7)
        .map(|i| job(&format!("j{i}")))
        .collect();
    let eval = db.register_evaluation("other", "big", &jobs, 1).unwrap();
    let mut pager = Pager::for_request(&request(&format!("/api/jobs?evaluation={eval}"), "GET"))
        .unwrap()
        .unwrap();
    let mut pages = 1;
    let response = loop {
        match pager.step(&db) {
            Some(r) => break r,
            None => pages += 1,
        }
    };
    assert_eq!(pages, 3);
    let v: Value = serde_json::from_slice(&response.body).unwrap();
    let got: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..2 * JOBS_PAGE + 7).map(|i| format!("j{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn jobs_walk_indexes() {
    use crate::db::read::jobs_sql;
    let (db, _) = fixture();
    let conn = db.connection();
    let all = crate::db::query_plan(
        conn,
        &jobs_sql(false),
        rusqlite::params![1, None::<String>, 0, 10, None::<String>],
    );
    assert!(
        all.contains("SEARCH d USING INDEX Derivations_evaluation (evaluation=? AND rowid>?)"),
        "{all}"
    );
    let named = crate::db::query_plan(
        conn,
        &jobs_sql(true),
        rusqlite::params![1, None::<String>, 0, 10, "ok"],
    );
    assert!(
        named.contains("Derivations_job_name (job_name=? AND evaluation=?"),
        "{named}"
    );
    assert!(all.contains("JobAliases_build (build=?)"), "{all}");
    assert!(
        named.contains("SEARCH a USING PRIMARY KEY (evaluation=? AND job_name=?)"),
        "{named}"
    );
    // A job's build is its derivation row's rowid (migration 25).
    for plan in [&all, &named] {
        assert!(
            plan.contains("SEARCH b USING INTEGER PRIMARY KEY (rowid=?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}

#[test]
fn a_build_by_derivation() {
    let (mut db, root) = fixture();
    let drv = job("ok").derivation;
    let name = drv.strip_prefix("/gnu/store/").unwrap();
    let (code, b) = get(&db, &root, &format!("/build/{name}"));
    assert_eq!(
        (code, &b["id"], &b["derivation"]),
        (200, &1.into(), &drv.as_str().into())
    );
    // The latest build of it, once a later evaluation has it too.
    db.register_evaluation("hello", "later", &[job("ok")], 900)
        .unwrap();
    assert_eq!(get(&db, &root, &format!("/build/{name}")).1["id"], 6);
    let missing = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-none.drv";
    assert_eq!(
        get(&db, &root, &format!("/build/{missing}")),
        (
            404,
            json!({"error": format!("No build of derivation /gnu/store/{missing}.")})
        )
    );
    assert_eq!(get(&db, &root, "/build/x.drv").0, 404);
}

#[test]
fn an_output_and_the_build_that_made_it() {
    let (db, root) = fixture();
    let out = &job("ok").outputs[1].1;
    let item = out.strip_prefix("/gnu/store/").unwrap();
    let (code, v) = get(&db, &root, &format!("/output/{item}"));
    assert_eq!(code, 200);
    assert_eq!(
        (&v["name"], &v["derivation"]),
        (&"doc".into(), &job("ok").derivation.as_str().into())
    );
    assert_eq!(
        (&v["build"]["id"], &v["build"]["buildstatus"]),
        (&1.into(), &0.into())
    );
    let none = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-none";
    assert_eq!(
        get(&db, &root, &format!("/output/{none}")),
        (
            404,
            json!({"error": format!("No build made /gnu/store/{none}.")})
        )
    );
    let plan = crate::db::query_plan(db.connection(), crate::db::read::output_sql(), [out]);
    assert!(
        plan.contains("SEARCH o USING COVERING INDEX Outputs_path (path=?)")
            && plan.contains("SEARCH o USING INDEX Outputs_path_fresh (<expr>=?)"),
        "{plan}"
    );
    let plan = crate::db::query_plan(
        db.connection(),
        crate::db::read::build_of_derivation(),
        [&job("ok").derivation],
    );
    assert!(
        plan.contains("Builds_derivation (derivation=?)")
            && plan.contains("Builds_derivation_fresh (<expr>=?)")
            && !crate::db::sorts_beyond_arms(&plan),
        "{plan}"
    );
}

#[test]
fn search_latest_redirects_to_the_newest_match() {
    let (db, root) = fixture();
    let go = |t: &str| {
        let r = respond(&db, &request(t, "GET"));
        let location = r
            .headers
            .iter()
            .find(|(k, _)| *k == "Location")
            .map(|(_, v)| v.clone());
        (r.status, location)
    };
    let found = |id: i64| (302, Some(format!("/build/{id}/details")));
    assert_eq!(go("/search/latest?query=ok"), found(5));
    assert_eq!(go("/search/latest?query=spec:hello%20ok"), found(1));
    assert_eq!(
        go("/search/latest?query=spec%3Ahello%20status%3Afailed"),
        found(2)
    );
    assert_eq!(
        go("/search/latest?query=status:pending%20system:x86_64-linux%20wa%20it"),
        found(4)
    );
    assert_eq!(go("/search/latest?query=spec:hello"), found(4));
    assert_eq!(go("/search/latest?query=spec:other%20bad").0, 404);
    assert_eq!(go("/search/latest?query=system:mips%20ok").0, 404);
    // No build has products yet.
    let (code, v) = get(&db, &root, "/search/latest/archive?query=ok");
    assert_eq!(
        (code, v["error"].as_str().unwrap()),
        (404, "Build 5 has no build product of type archive.")
    );
    for bad in [
        "/search/latest",
        "/search/latest?query=",
        "/search/latest?query=status:maybe",
        "/search/latest?query=a%20b%20c%20d%20e%20f%20g%20h%20i",
    ] {
        let (code, v) = get(&db, &root, bad);
        assert_eq!(code, 400, "{bad}");
        assert!(
            v["error"].as_str().unwrap().starts_with("Parameter query"),
            "{bad}"
        );
    }
}

#[test]
fn double_slashes_of_guix_1_2_reach_the_same_routes() {
    let (db, root) = fixture();
    for (a, b) in [
        ("//api/evaluations?nr=5", "/api/evaluations?nr=5"),
        ("//api/latestbuilds?nr=5", "/api/latestbuilds?nr=5"),
        ("//api/queue?nr=5", "/api/queue?nr=5"),
    ] {
        let (code, v) = get(&db, &root, a);
        assert_eq!(code, 200, "{a}");
        assert_eq!(v, get(&db, &root, b).1, "{a}");
    }
}

/// A database written by the 2018 original: its rows are served by
/// today's routes, with its unknown times as 0 and weather computed
/// across the upgrade.
#[test]
fn a_2018_database_serves_todays_routes() {
    let path = crate::db::database_2018(
        "api2018",
        "INSERT INTO Specifications VALUES
               ('guix', 'https://git.savannah.gnu.org/git/guix.git', '.', 'build-aux/cuirass/gnu-system.scm',
                'cuirass-jobs', '((subset . \"hello\"))', 'master', NULL, NULL, 1);
             INSERT INTO Evaluations (specification, revision) VALUES ('guix', 'abc123');
             INSERT INTO Derivations VALUES ('/gnu/store/aaa-hello-2.10.drv', 1, 'hello', 'x86_64-linux', 'hello-2.10');
             INSERT INTO Builds VALUES (1, '/gnu/store/aaa-hello-2.10.drv', 1, '', 0, 100, 110, 120);
             INSERT INTO Outputs VALUES (1, 'out', '/gnu/store/bbb-hello-2.10');",
    );
    let mut db = Db::open(&path).unwrap();
    let root = Path::new("/nonexistent");
    let (code, e) = get(&db, root, "/api/evaluation?id=1");
    assert_eq!(code, 200);
    assert_eq!(
        e,
        json!({"id": 1, "specification": "guix", "status": 0, "error": null,
               "in-progress": 0, "timestamp": 0, "checkouttime": 0, "evaltime": 0,
               "checkouts": [{"commit": "abc123", "channel": "guix", "input": "guix",
                              "directory": null}]})
    );
    let (_, b) = get(&db, root, "/build/aaa-hello-2.10.drv");
    assert_eq!(
        (&b["id"], &b["jobset"], &b["weather"], &b["timestamp"]),
        (&1.into(), &"guix".into(), &(-1).into(), &120.into())
    );
    assert_eq!(get(&db, root, "/output/bbb-hello-2.10").1["build"]["id"], 1);
    assert_eq!(
        ids(&get(&db, root, "/api/latestbuilds?nr=5&jobset=guix").1),
        [1]
    );
    assert_eq!(
        get(&db, root, "/api/jobs?evaluation=1").1,
        json!([{"name": "hello", "build": 1, "status": 0}])
    );
    // A new evaluation's build of the same job compares with the old one.
    let mut hello = job_in("hello", "new");
    hello.nix_name = "hello-2.11".into();
    db.register_evaluation("guix", "def456", &[hello.clone()], 200)
        .unwrap();
    db.build_finished(&hello.derivation, crate::db::status::FAILED, None, 300)
        .unwrap();
    let (_, b) = get(&db, root, "/api/latestbuilds?nr=1");
    assert_eq!((&b[0]["id"], &b[0]["weather"]), (&2.into(), &1.into()));
    let (_, h) = get(&db, root, "/api/jobs/history?spec=guix&names=hello&nr=5");
    let evals: Vec<i64> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["evaluation"].as_i64().unwrap())
        .collect();
    assert_eq!(evals, [2, 1]);
    drop(db);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

use super::*;
use crate::db::JobRecord;
use crate::http::{Parsed, parse_request};
use crate::spec::Specification;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

pub(super) fn spec(name: &str, branch: Option<&str>) -> Specification {
    Specification {
        branch: branch.map(Into::into),
        arguments: "((nonce . \"x\"))".into(),
        ..Specification::new(name, &format!("file:///srv/{name}.git"), "ci.scm", "jobs")
    }
}

pub(super) fn job(name: &str) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{name:a<32}-{name}.drv"),
        system: "x86_64-linux".into(),
        nix_name: format!("{name}-1.0"),
        outputs: vec![
            ("out".into(), format!("/gnu/store/{name:b<32}-{name}")),
            ("doc".into(), format!("/gnu/store/{name:c<32}-{name}-doc")),
        ],
        ..JobRecord::default()
    }
}

/// A database with two specifications: `hello` (evaluation 1: ok
/// succeeded at 200 with a log, bad failed at 300, wip started, waiting
/// scheduled) and `other` (evaluation 2: its own `ok`, scheduled).
pub(super) fn fixture() -> (Db, PathBuf) {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("hello", Some("master")), spec("other", None)])
        .unwrap();
    let jobs: Vec<JobRecord> = ["ok", "bad", "wip", "waiting"]
        .iter()
        .map(|n| job(n))
        .collect();
    db.register_evaluation("hello", "abc123", &jobs, 100)
        .unwrap();
    let mut other = job("ok2");
    other.job_name = "ok".into();
    db.register_evaluation("other", "def456", &[other], 150)
        .unwrap();
    let root = std::env::temp_dir().join(format!(
        "cuirass-api-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let dir = root.join("ab");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("cdef-ok.drv.bz2");
    let mut enc = bzip2::write::BzEncoder::new(
        std::fs::File::create(&log).unwrap(),
        bzip2::Compression::default(),
    );
    enc.write_all(b"building ok\nfailing? no\n").unwrap();
    enc.finish().unwrap();
    let ok = &jobs[0].derivation;
    db.build_started(ok, log.to_str().unwrap(), 150).unwrap();
    db.build_finished(ok, crate::db::status::SUCCEEDED, None, 200)
        .unwrap();
    db.build_finished(
        &jobs[1].derivation,
        crate::db::status::FAILED,
        Some("/etc/passwd"),
        300,
    )
    .unwrap();
    db.build_started(&jobs[2].derivation, "", 250).unwrap();
    (db, root)
}

pub(super) fn request(target: &str, method: &str) -> Request {
    let text = format!("{method} {target} HTTP/1.1\r\n\r\n");
    match parse_request(text.as_bytes()) {
        Ok(Parsed::Complete(req, _)) => req,
        other => panic!("{target}: {other:?}"),
    }
}

pub(super) fn get(db: &Db, _root: &Path, target: &str) -> (u16, Value) {
    let r = respond(db, &request(target, "GET"));
    assert_eq!(r.content_type, JSON, "{target}");
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

pub(super) fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn specifications_and_jobsets() {
    let (db, root) = fixture();
    for path in ["/jobsets", "/specifications"] {
        let (code, v) = get(&db, &root, path);
        assert_eq!(code, 200);
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["hello", "other"]);
        assert_eq!(v[0]["branch"], "master");
        assert_eq!(v[1]["branch"], Value::Null);
        assert_eq!(v[0]["load-path"], ".");
        assert_eq!(v[0]["no-compile?"], true);
    }
}

#[test]
fn a_build_is_a_hydra_object() {
    let (mut db, root) = fixture();
    // Its `out` is kept from the garbage collector; its `doc` no longer.
    db.add_gc_roots(
        &[crate::db::gcroots::RootRow {
            item: job("ok").outputs[0].1.clone(),
            expires: Some(10_000),
        }],
        "/gnu/store/r-cuirass-gc-roots",
    )
    .unwrap();
    let (code, b) = get(&db, &root, "/build/1");
    assert_eq!(code, 200);
    let expect = serde_json::json!({
        "id": 1, "evaluation": 1, "project": "hello", "jobset": "hello", "job": "ok",
        "timestamp": 200, "starttime": 150, "stoptime": 200,
        "derivation": job("ok").derivation,
        "buildoutputs": {
            "doc": {"path": job("ok").outputs[1].1, "available": false},
            "out": {"path": job("ok").outputs[0].1, "available": true}
        },
        "system": "x86_64-linux", "nixname": "ok-1.0", "buildstatus": 0,
        "weather": -1, "busy": 0, "priority": 0, "finished": 1, "buildproducts": [],
        "releasename": null, "buildinputs_builds": null,
        "timeout": null, "maxsilent": null, "errormsg": null,
        "worker": null
    });
    assert_eq!(b, expect);
    // Unfinished: the creation time, busy while started.
    let (_, wip) = get(&db, &root, "/build/3");
    assert_eq!(
        (
            &wip["timestamp"],
            &wip["busy"],
            &wip["finished"],
            &wip["buildstatus"]
        ),
        (
            &Value::from(100),
            &Value::from(1),
            &Value::from(0),
            &Value::from(-1)
        )
    );
    let (_, waiting) = get(&db, &root, "/build/4");
    assert_eq!(
        (&waiting["busy"], &waiting["finished"]),
        (&Value::from(0), &Value::from(0))
    );
    let (_, other) = get(&db, &root, "/build/5");
    assert_eq!(
        (&other["project"], &other["jobset"], &other["evaluation"]),
        (
            &Value::from("other"),
            &Value::from("other"),
            &Value::from(2)
        )
    );
}

#[test]
fn missing_and_bad_build_ids() {
    let (db, root) = fixture();
    assert_eq!(
        get(&db, &root, "/build/99"),
        (
            404,
            serde_json::json!({"error": "Build with ID 99 doesn't exist."})
        )
    );
    for bad in [
        "/build/x",
        "/build/-1",
        "/build/0",
        "/build/99999999999999999999",
        "/build/+1",
    ] {
        assert_eq!(get(&db, &root, bad).0, 400, "{bad}");
    }
}

#[test]
fn latest_builds_and_filters() {
    let (db, root) = fixture();
    let q = |t: &str| {
        let (code, v) = get(&db, &root, t);
        assert_eq!(code, 200, "{t}: {v}");
        ids(&v)
    };
    assert_eq!(q("/api/latestbuilds?nr=10"), [2, 1]);
    assert_eq!(q("/api/latestbuilds?nr=1"), [2]);
    assert_eq!(q("/api/latestbuilds?nr=0"), Vec::<i64>::new());
    assert_eq!(q("/api/latestbuilds?nr=10&job=ok"), [1]);
    assert_eq!(
        q("/api/latestbuilds?nr=10&project=hello&jobset=master"),
        [2, 1]
    );
    assert_eq!(
        q("/api/latestbuilds?nr=10&project=other"),
        Vec::<i64>::new()
    );
    assert_eq!(q("/api/latestbuilds?nr=10&jobset=nope"), Vec::<i64>::new());
    assert_eq!(
        q("/api/latestbuilds?nr=10&system=x86_64-linux&evaluation=1"),
        [2, 1]
    );
    assert_eq!(q("/api/latestbuilds?nr=10&evaluation=2"), Vec::<i64>::new());
    assert_eq!(q("/api/latestbuilds?nr=10&status=0"), [1]);
    assert_eq!(q("/api/latestbuilds?nr=10&status=failed"), [2]);
    assert_eq!(q("/api/latestbuilds?nr=10&status=succeeded"), [1]);
    // Percent-encoded values, and an injection attempt that is just a value.
    assert_eq!(q("/api/latestbuilds?nr=10&project=hel%6co"), [2, 1]);
    assert_eq!(
        q("/api/latestbuilds?nr=10&job=ok%27%20OR%201=1%20--"),
        Vec::<i64>::new()
    );
    // More than a route gives is refused, naming the parameter and the
    // limit, however large (tester's finding: it was cut silently).
    for (target, max) in [
        ("/api/latestbuilds?nr=1001", 1000),
        ("/api/latestbuilds?nr=99999999999999999999", 1000),
        ("/api/queue?nr=4294967296", 1000),
        ("/api/evaluations?nr=1001", 1000),
        ("/api/jobs/history?spec=hello&names=ok&nr=101", 100),
    ] {
        let (code, v) = get(&db, &root, target);
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{target}: {v}");
        assert!(
            msg.starts_with(&format!("Parameter nr: at most {max} ")),
            "{msg}"
        );
    }
    assert_eq!(q("/api/latestbuilds?nr=1000"), [2, 1]);
    let (code, _) = get(&db, &root, "/api/jobs/history?spec=hello&names=ok&nr=100");
    assert_eq!(code, 200);
    for bad in [
        "/api/latestbuilds",
        "/api/latestbuilds?nr=",
        "/api/latestbuilds?nr=ten",
        "/api/latestbuilds?nr=-1",
        "/api/latestbuilds?nr=10&evaluation=x",
        "/api/latestbuilds?nr=10&status=maybe",
    ] {
        let (code, v) = get(&db, &root, bad);
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string(), "{bad}");
    }
}

/// A `+` in a name parameter is a plus, whether the client sends it bare
/// (as Guix's `(guix ci)` does) or as `%2B`; a space is `%20`.
#[test]
fn names_with_plus_are_found_written_bare_or_as_2b() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("libsigc++", Some("master"))])
        .unwrap();
    let mut gtk = job("gtk");
    gtk.job_name = "gtk+-3.24.x86_64-linux".into();
    let mut spaced = job("spaced");
    spaced.job_name = "a b".into();
    db.register_evaluation("libsigc++", "abc", &[gtk.clone(), spaced.clone()], 100)
        .unwrap();
    for j in [&gtk, &spaced] {
        db.build_finished(&j.derivation, crate::db::status::SUCCEEDED, None, 200)
            .unwrap();
    }
    let root = std::env::temp_dir();
    let names = |t: &str| {
        let (code, v) = get(&db, &root, t);
        assert_eq!(code, 200, "{t}: {v}");
        let names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["job"].as_str().unwrap().to_string())
            .collect();
        names
    };
    for job in ["gtk+-3.24.x86_64-linux", "gtk%2B-3.24.x86_64-linux"] {
        for project in ["libsigc++", "libsigc%2B%2B", "libsigc+%2b"] {
            let t = format!("/api/latestbuilds?nr=10&job={job}&project={project}");
            assert_eq!(names(&t), ["gtk+-3.24.x86_64-linux"], "{t}");
        }
        let t = format!("/api/jobs/history?nr=5&spec=libsigc++&names={job},a%20b");
        let (code, v) = get(&db, &root, &t);
        assert_eq!(code, 200, "{t}: {v}");
        let found = v.to_string();
        assert!(found.contains("\"gtk+-3.24.x86_64-linux\""), "{t}: {found}");
        assert!(found.contains("\"status\":0"), "{t}: {found}");
    }
    assert_eq!(names("/api/latestbuilds?nr=10&job=a%20b"), ["a b"]);
    assert!(names("/api/latestbuilds?nr=10&job=gtk%20-3.24.x86_64-linux").is_empty());
}

#[test]
fn the_queue_puts_started_builds_first() {
    let (db, root) = fixture();
    let (code, v) = get(&db, &root, "/api/queue?nr=10");
    assert_eq!(code, 200);
    assert_eq!(ids(&v), [3, 4, 5]);
    assert_eq!(ids(&get(&db, &root, "/api/queue?nr=2").1), [3, 4]);
    assert_eq!(get(&db, &root, "/api/queue").0, 400);
}

/// `/api/queue` takes `/api/latestbuilds`' filters: the builds that
/// match, in dispatch order, each with its place in the whole queue.
#[test]
fn the_queue_filtered_keeps_dispatch_order_and_whole_queue_positions() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("hello", Some("master")), spec("other", None)])
        .unwrap();
    // `other` goes first (priority 1, against the default 9).
    db.connection()
        .execute(
            "UPDATE Specifications SET priority = 1 WHERE repo_name = 'other'",
            [],
        )
        .unwrap();
    let jobs = |prefix: &str, n: usize| -> Vec<JobRecord> {
        (0..n)
            .map(|i| {
                let mut j = job(&format!("{prefix}{i}"));
                j.system = ["x86_64-linux", "i686-linux"][i % 2].into();
                j.priority = (i % 3) as i64;
                j
            })
            .collect()
    };
    db.register_evaluation("hello", "abc", &jobs("j", 80), 100)
        .unwrap();
    db.register_evaluation("other", "def", &jobs("k", 40), 100)
        .unwrap();
    db.connection()
        .execute("UPDATE Builds SET status = -1 WHERE id % 11 = 0", [])
        .unwrap();
    let (_, all) = get(&db, Path::new("/"), "/api/queue?nr=1000");
    let all = all.as_array().unwrap().clone();
    assert_eq!(all.len(), 120);
    let j7 = all.iter().find(|b| b["job"] == "j7").unwrap()["derivation"]
        .as_str()
        .unwrap()
        .to_string();
    type Keep<'a> = &'a dyn Fn(&Value) -> bool;
    let filters: [(&str, Keep); 6] = [
        ("jobset=hello", &|b| b["jobset"] == "hello"),
        ("system=i686-linux", &|b| b["system"] == "i686-linux"),
        ("jobset=other&system=x86_64-linux", &|b| {
            b["jobset"] == "other" && b["system"] == "x86_64-linux"
        }),
        ("evaluation=2", &|b| b["evaluation"] == 2),
        ("job=j7", &|b| b["job"] == "j7"),
        (&format!("derivation={j7}"), &|b| b["job"] == "j7"),
    ];
    for (query, keep) in filters {
        let expect: Vec<&Value> = all.iter().filter(|b| keep(b)).collect();
        assert!(!expect.is_empty(), "{query}");
        // Pages of 50 (`PAGE`): positions carry over from one to the next.
        let (code, got) = get(&db, Path::new("/"), &format!("/api/queue?nr=1000&{query}"));
        assert_eq!(code, 200, "{query}");
        let got = got.as_array().unwrap();
        assert_eq!(
            got.iter().map(|b| &b["id"]).collect::<Vec<_>>(),
            expect.iter().map(|b| &b["id"]).collect::<Vec<_>>(),
            "{query}"
        );
        for (g, e) in got.iter().zip(&expect) {
            assert_eq!(g["waiting"], e["waiting"], "{query}: build {}", g["id"]);
        }
    }
    // Positions are the whole queue's: `other`'s first scheduled build
    // comes right after the started ones.
    let started = all.iter().filter(|b| b["buildstatus"] == -1).count() as i64;
    let (_, other) = get(&db, Path::new("/"), "/api/queue?nr=100&jobset=other");
    let first = other
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["waiting"]["reason"] == "queued")
        .unwrap();
    assert_eq!(first["waiting"]["position"], started + 1);
    assert_eq!(
        get(&db, Path::new("/"), "/api/queue?nr=5&evaluation=x").0,
        400
    );
}

#[test]
fn evaluations_newest_first() {
    let (db, root) = fixture();
    let (code, v) = get(&db, &root, "/api/evaluations?nr=10");
    assert_eq!(code, 200);
    assert_eq!(
        v,
        serde_json::json!([
            {"id": 2, "specification": "other", "status": 0, "error": null,
             "in-progress": 0, "timestamp": 150, "checkouttime": 150, "evaltime": 0,
             "checkouts": [{"commit": "def456", "channel": "other", "input": "other",
                            "directory": null}]},
            {"id": 1, "specification": "hello", "status": 0, "error": null,
             "in-progress": 0, "timestamp": 100, "checkouttime": 100, "evaltime": 0,
             "checkouts": [{"commit": "abc123", "channel": "hello", "input": "hello",
                            "directory": null}]}
        ])
    );
    assert_eq!(ids(&get(&db, &root, "/api/evaluations?nr=1").1), [2]);
    assert_eq!(get(&db, &root, "/api/evaluations?nr=x").0, 400);
}

#[test]
fn an_evaluation_still_running_is_in_progress() {
    let (mut db, root) = fixture();
    let eval = db.begin_evaluation("hello", "fedcba", 50).unwrap();
    let (_, v) = get(&db, &root, "/api/evaluations?nr=1");
    assert_eq!(v[0]["id"], eval);
    assert_eq!(v[0]["in-progress"], 1);
    db.complete_evaluation("hello", eval, "fedcba", 60).unwrap();
    assert_eq!(
        get(&db, &root, "/api/evaluations?nr=1").1[0]["in-progress"],
        0
    );
}

#[test]
fn unknown_paths_and_methods() {
    let (db, root) = fixture();
    for path in [
        "/",
        "/nope",
        "/build",
        "/build/1/log",
        "/api",
        "/api/latestbuilds/x",
    ] {
        let (code, v) = get(&db, &root, path);
        assert_eq!(code, 404, "{path}");
        assert!(v["error"].is_string());
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = respond(&db, &request("/jobsets", method));
        assert_eq!(r.status, 405, "{method}");
        assert!(r.headers.contains(&("Allow", "GET, HEAD".into())));
    }
    // HEAD answers like GET; the server leaves out the body.
    let r = respond(&db, &request("/jobsets", "HEAD"));
    assert_eq!(r.status, 200);
}

#[test]
fn latest_builds_walk_an_index_even_with_statistics() {
    use crate::db::read::{LatestPlan, latest_builds_sql};
    let (db, _) = fixture();
    let conn = db.connection();
    // Many builds of few evaluations, analyzed: the statistics that once
    // led the planner to sort every finished build.
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO Derivations (derivation, evaluation, job_name, system, nix_name)
           SELECT 'drv' || i, 1 + i % 2, 'job' || (i % 50), 'x', 'n' FROM n;
         INSERT INTO Builds (derivation, evaluation, log, status, timestamp, starttime, stoptime)
           SELECT derivation, evaluation, '', rowid % 3, rowid, rowid, rowid
           FROM Derivations WHERE derivation LIKE 'drv%';
         ANALYZE;",
    )
    .unwrap();
    // The plan the filter gets, or the walk when it would get the one
    // through a small specification's evaluations (checked below).
    let plan = |filter: &BuildFilter| -> String {
        let chosen = match db.latest_plan(filter).unwrap() {
            LatestPlan::BySpecification => LatestPlan::Walk,
            p => p,
        };
        crate::db::read::with_latest_builds_params(filter, 10, |p| {
            crate::db::query_plan(conn, &latest_builds_sql(filter, chosen), p)
        })
    };
    for filter in [
        BuildFilter::default(),
        BuildFilter {
            specification: Some("hello".into()),
            ..Default::default()
        },
        BuildFilter {
            branch: Some("master".into()),
            ..Default::default()
        },
        BuildFilter {
            status: Some((1, 9)),
            system: Some("x".into()),
            ..Default::default()
        },
        // A later page starts where the previous one ended.
        BuildFilter {
            after: Some((1000, BuildId(42))),
            ..Default::default()
        },
    ] {
        // A page's bounds (after the previous one, down to the walk's
        // floor) are a range of the index, not a filter checked to its end.
        let p = plan(&filter);
        assert!(
            p.starts_with("SEARCH b USING INDEX Builds_finished (stoptime>? AND stoptime<?)"),
            "{filter:?}: {p}"
        );
        assert!(!p.contains("TEMP B-TREE"), "{filter:?}: {p}");
    }
    let p = plan(&BuildFilter {
        job: Some("job7".into()),
        ..Default::default()
    });
    assert!(p.contains("Derivations_job_name"), "{p}");
    let p = plan(&BuildFilter {
        evaluation: Some(EvalId(2)),
        ..Default::default()
    });
    assert!(p.contains("Builds_evaluation"), "{p}");
    // The statistics of the benchmark's 1,000,000 builds over 100
    // evaluations, under which SQLite 3.54 would rather skip-scan
    // Builds_evaluation and sort every finished build.
    conn.execute_batch(
        "DELETE FROM sqlite_stat1;
         INSERT INTO sqlite_stat1 VALUES
           ('Builds', 'Builds_evaluation', '1000000 10000 2005'),
           ('Builds', 'Builds_finished', '982014 2 1'),
           ('Builds', 'Builds_queue', '17986 8993 11 1'),
           ('Builds', 'Builds_status_stoptime', '1000000 142858 2');
         ANALYZE sqlite_schema;",
    )
    .unwrap();
    let p = plan(&BuildFilter::default());
    assert!(
        p.starts_with("SEARCH b USING INDEX Builds_finished (stoptime>? AND stoptime<?)")
            && !p.contains("TEMP B-TREE"),
        "{p}"
    );
    let none = None::<String>;
    let queue = crate::db::query_plan(
        conn,
        &crate::db::read::queued_builds_sql(&Default::default()),
        rusqlite::params![10, -1, 5, 7, none, none, none, None::<i64>, none],
    );
    assert!(
        queue.contains("Builds_queue") && !queue.contains("TEMP B-TREE"),
        "{queue}"
    );
    // A specification's queue walks it too, in its order.
    let spec = crate::db::read::QueueFilter {
        specification: Some("hello".into()),
        ..Default::default()
    };
    let queue = crate::db::query_plan(
        conn,
        &crate::db::read::queued_builds_sql(&spec),
        rusqlite::params![10, -1, 5, 7, "hello", none, none, None::<i64>, none],
    );
    assert!(
        queue.contains("Builds_queue") && !queue.contains("TEMP B-TREE"),
        "{queue}"
    );
    // One job's builds, under any of its names, are reached by id.
    let plan_of_job =
        |sql: &str, params: &[&dyn rusqlite::ToSql]| crate::db::query_plan(conn, sql, params);
    let job = Some("job7".to_string());
    for p in [
        plan(&BuildFilter {
            job: job.clone(),
            ..Default::default()
        }),
        plan_of_job(
            &crate::db::read::queued_builds_sql(&crate::db::read::QueueFilter {
                job: job.clone(),
                ..Default::default()
            }),
            rusqlite::params![
                10,
                None::<i64>,
                None::<i64>,
                None::<i64>,
                None::<String>,
                job,
                None::<String>,
                None::<i64>,
                None::<String>
            ],
        ),
    ] {
        assert!(
            p.contains("Derivations_job_name (job_name=?)")
                && p.contains("JobAliases_job_name (job_name=?)")
                && p.contains("SEARCH b USING INTEGER PRIMARY KEY (rowid=?)")
                && !p.contains("SCAN b")
                && !p.contains("SCAN d"),
            "{p}"
        );
    }
}

/// Listings longer than a page come out the same, in the same order, as
/// one query would give, ties on the ordering columns included.
#[test]
fn listings_answered_page_by_page_match_the_whole_query() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("hello", Some("master"))])
        .unwrap();
    let jobs: Vec<JobRecord> = (0..4 * PAGE + 57).map(|i| job(&format!("j{i}"))).collect();
    db.register_evaluation("hello", "abc", &jobs, 100).unwrap();
    // Finish two thirds, with many sharing a stop time; start a few.
    db.connection()
        .execute_batch(
            "UPDATE Builds SET status = id % 3, starttime = 10, stoptime = 1000 + id % 7
               WHERE id % 3 <> 2;
             UPDATE Builds SET status = -1, starttime = 5 WHERE id % 9 = 2;",
        )
        .unwrap();
    let expect = |sql: &str| -> Vec<i64> {
        let mut stmt = db.connection().prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let finished =
        expect("SELECT id FROM Builds WHERE status >= 0 ORDER BY stoptime DESC, id DESC");
    let queued =
        expect("SELECT id FROM Builds WHERE status < 0 ORDER BY status DESC, timestamp, id");
    assert!(finished.len() as u32 > PAGE && queued.len() as u32 > PAGE);
    for (target, all) in [
        ("/api/latestbuilds?nr=1000", &finished),
        ("/api/queue?nr=1000", &queued),
    ] {
        let mut pager = Pager::for_request(&request(target, "GET"))
            .unwrap()
            .unwrap();
        let mut pages = 1;
        let response = loop {
            match pager.step(&db) {
                Some(r) => break r,
                None => pages += 1,
            }
        };
        assert!(pages >= 2, "{target} took {pages} page(s)");
        let v: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(&ids(&v), all, "{target}");
    }
    // A limit within the pages, and one that is a whole number of them.
    let (_, v) = get(
        &db,
        Path::new("/"),
        &format!("/api/latestbuilds?nr={}", PAGE + 3),
    );
    assert_eq!(ids(&v), finished[..PAGE as usize + 3]);
    let (_, v) = get(&db, Path::new("/"), &format!("/api/queue?nr={PAGE}"));
    assert_eq!(ids(&v), queued[..PAGE as usize]);
}

#[test]
fn a_build_killed_for_a_limit_shows_the_limits_and_the_reason() {
    let (mut db, root) = fixture();
    let mut today = job("today");
    today.limits = crate::build::Limits {
        max_silent_time: Some(2),
        timeout: Some(72000),
    };
    today.priority = 5;
    db.register_evaluation("hello", "c2", &[today.clone()], 400)
        .unwrap();
    db.apply_build_updates(
        &[crate::build::Update::Finished {
            derivation: today.derivation,
            status: status::FAILED,
            log: None,
            reason: Some("timed out after 2 seconds of silence".into()),
        }],
        410,
    )
    .unwrap();
    let (code, b) = get(&db, &root, "/build/6");
    assert_eq!(code, 200);
    assert_eq!(
        (&b["job"], &b["buildstatus"], &b["priority"]),
        (&json!("today"), &json!(1), &json!(5))
    );
    assert_eq!((&b["maxsilent"], &b["timeout"]), (&json!(2), &json!(72000)));
    assert_eq!(b["errormsg"], "timed out after 2 seconds of silence");
}

/// A specification with few finished builds, or none (a deleted or new
/// one's name), is listed through its evaluations: the walk down
/// `Builds_finished` would pass every other build first.  Both plans
/// list the same builds in the same order.
#[test]
fn a_small_specifications_builds_are_read_through_its_evaluations() {
    use crate::db::read::{FEW_FINISHED, LatestPlan, latest_builds_sql};
    let (mut db, _) = fixture();
    db.add_specifications(&[spec("empty", None)]).unwrap();
    let filter = |spec: &str| BuildFilter {
        specification: Some(spec.into()),
        ..Default::default()
    };
    for name in ["hello", "empty", "no-such-spec"] {
        assert_eq!(
            db.latest_plan(&filter(name)).unwrap(),
            LatestPlan::BySpecification,
            "{name}"
        );
    }
    let branch = BuildFilter {
        branch: Some("master".into()),
        ..Default::default()
    };
    assert_eq!(
        db.latest_plan(&branch).unwrap(),
        LatestPlan::BySpecification
    );
    assert_eq!(
        db.latest_plan(&BuildFilter::default()).unwrap(),
        LatestPlan::Walk
    );
    let conn = db.connection();
    let listed = |filter: &BuildFilter, plan: LatestPlan| -> Vec<i64> {
        crate::db::read::with_latest_builds_params(filter, 100, |p| {
            let mut stmt = conn.prepare(&latest_builds_sql(filter, plan)).unwrap();
            stmt.query_map(p, |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<Vec<i64>>>()
                .unwrap()
        })
    };
    for f in [
        filter("hello"),
        filter("other"),
        filter("empty"),
        branch.clone(),
    ] {
        let walk = listed(&f, LatestPlan::Walk);
        assert_eq!(listed(&f, LatestPlan::BySpecification), walk, "{f:?}");
    }
    assert_eq!(listed(&filter("hello"), LatestPlan::Walk).len(), 2);
    assert!(listed(&filter("empty"), LatestPlan::BySpecification).is_empty());
    let p = crate::db::read::with_latest_builds_params(&filter("hello"), 10, |p| {
        crate::db::query_plan(
            conn,
            &latest_builds_sql(&filter("hello"), LatestPlan::BySpecification),
            p,
        )
    });
    assert!(
        p.contains("SEARCH b USING INDEX Builds_evaluation (evaluation=? AND status>?)"),
        "{p}"
    );
    // Past the threshold, the walk again.
    conn.execute(
        "UPDATE BuildCounts SET count = ?1 WHERE evaluation = 1 AND status = 0",
        [FEW_FINISHED],
    )
    .unwrap();
    assert_eq!(db.latest_plan(&filter("hello")).unwrap(), LatestPlan::Walk);
}

/// A filter that few builds pass walks at most `WALK_BUDGET` entries of
/// `Builds_finished` per page: a listing of nothing, or of one old
/// build, comes in several bounded pages, and says the same as the
/// whole walk.
#[test]
fn a_filter_few_builds_pass_walks_a_bounded_stretch_per_page() {
    use crate::db::read::WALK_BUDGET;
    let (db, _) = fixture();
    db.connection()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO Derivations (derivation, evaluation, job_name, system, nix_name)
           SELECT 'drv' || i, 1 + i % 2, 'job' || (i % 50),
               CASE WHEN i = 7 THEN 'rare-linux' ELSE 'x86_64-linux' END, 'n' FROM n;
             INSERT INTO Builds (derivation, evaluation, log, status, timestamp, starttime, stoptime)
               SELECT derivation, evaluation, '', rowid % 3, rowid, rowid, 1000 + rowid
               FROM Derivations WHERE derivation LIKE 'drv%';",
        )
        .unwrap();
    let rare_id: i64 = db
        .connection()
        .query_row("SELECT id FROM Builds WHERE derivation = 'drv7'", [], |r| {
            r.get(0)
        })
        .unwrap();
    for (system, expected) in [("rare-linux", vec![rare_id]), ("none-linux", vec![])] {
        let mut filter = BuildFilter {
            system: Some(system.into()),
            ..Default::default()
        };
        let (mut pages, mut found) = (0, Vec::new());
        loop {
            let page = db.latest_builds_page(&filter, 10).unwrap();
            pages += 1;
            found.extend(page.builds.iter().map(|b| b.id.0));
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        assert_eq!(found, expected, "{system}");
        let finished: i64 = db
            .connection()
            .query_row("SELECT count(*) FROM Builds WHERE status >= 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(pages, finished / WALK_BUDGET + 1, "{system}: {pages} pages");
        // The whole listing, as the API answers it.
        let r = respond(
            &db,
            &request(&format!("/api/latestbuilds?nr=10&system={system}"), "GET"),
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let ids: Vec<i64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, expected, "{system}");
    }
    // Unfiltered, a page is full at once.
    let page = db.latest_builds_page(&BuildFilter::default(), 10).unwrap();
    assert_eq!(page.builds.len(), 10);
    assert_eq!(page.next, page.builds.last().map(|b| (b.stoptime, b.id)));
}

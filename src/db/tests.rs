use super::*;

fn spec(name: &str) -> Specification {
    Specification {
        arguments: "((nonce . \"x\"))".into(),
        ..Specification::new(name, &format!("file:///srv/{name}.git"), "ci.scm", "jobs")
    }
}

fn job(name: &str) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{name:a<32}-{name}.drv"),
        system: "x86_64-linux".into(),
        nix_name: name.into(),
        outputs: vec![("out".into(), format!("/gnu/store/{name:b<32}-{name}"))],
        ..JobRecord::default()
    }
}

fn count(db: &Db, sql: &str) -> i64 {
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn migrations_are_idempotent() {
    let dir = std::env::temp_dir().join(format!("cuirass-db-{}", std::process::id()));
    let path = dir.join("twice.db");
    let _ = std::fs::remove_file(&path);
    drop(Db::open(&path).unwrap());
    let db = Db::open(&path).unwrap();
    assert_eq!(db.user_version().unwrap(), schema_version());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn specifications_are_upserted_by_name() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a"), spec("b")]).unwrap();
    let mut changed = spec("a");
    changed.url = "https://example.org/a.git".into();
    changed.no_compile = false;
    db.add_specifications(&[changed.clone()]).unwrap();
    let specs = db.specifications().unwrap();
    assert_eq!(specs, vec![changed, spec("b")]);
}

/// Record specs and 2018 specs live side by side; a record comes back
/// whole, its priority and activity in their own columns; checkouts and
/// products go with their evaluation when it is rolled back.
#[test]
fn record_specs_round_trip_beside_2018_ones() {
    let mut db = Db::open_in_memory().unwrap();
    let text = r#"(list (specification (name "r") (build '(channels a)) (priority 4)
                   (is-active? #f) (period 60)
                   (build-outputs (list (build-output (job "^a") (type "t"))))
                   (channels (list (channel (name 'a) (url "file:///a") (commit "c"))))))"#;
    let crate::spec::Parsed::Specs(records) = crate::spec::read_spec_text("t.scm", text).unwrap()
    else {
        panic!("not data")
    };
    db.add_specifications(&[spec("a"), records[0].clone()])
        .unwrap();
    assert_eq!(
        db.specifications().unwrap(),
        vec![spec("a"), records[0].clone()]
    );
    let row: (Option<i64>, i64) = db
        .connection()
        .query_row(
            "SELECT priority, is_active FROM Specifications WHERE repo_name = 'r'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(row, (Some(4), 0));
    let eval = db.begin_evaluation("r", "c", 1).unwrap();
    let checkout = crate::fetch::Checkout {
        channel: "a".into(),
        commit: "c".into(),
        directory: "/cache/r/a".into(),
    };
    db.add_checkouts(eval, &[checkout]).unwrap();
    assert_eq!(db.checkouts(eval).unwrap()[0].directory, "/cache/r/a");
    db.abandon_evaluation(eval).unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Checkouts"), 0);
}

#[test]
fn evaluation_registers_every_job_in_one_go() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let jobs = vec![job("one"), job("two"), job("one")];
    let eval = db.register_evaluation("a", "c0ffee", &jobs, 1000).unwrap();
    assert_eq!(db.stamp("a").unwrap().as_deref(), Some("c0ffee"));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Derivations"), 2);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM Builds WHERE status = -2"),
        2
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Outputs"), 2);
    let pending = db.dispatch_page(None, 100).unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        pending
            .iter()
            .all(|p| p.evaluation == eval && p.specification == "a")
    );
}

#[test]
fn build_times_are_always_set_when_finished() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    db.register_evaluation("a", "c1", &[job("one"), job("two")], 10)
        .unwrap();
    let one = job("one").derivation;
    let two = job("two").derivation;
    db.build_started(&one, "/var/log/guix/drvs/x.bz2", 20)
        .unwrap();
    db.finish_builds(
        &[
            (one.clone(), status::SUCCEEDED, None),
            (two.clone(), status::FAILED_DEPENDENCY, None),
        ],
        30,
    )
    .unwrap();
    let rows: Vec<(String, i64, i64, i64, String)> = db
        .connection()
        .prepare("SELECT derivation, status, starttime, stoptime, log FROM Builds ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            (one, 0, 20, 30, "/var/log/guix/drvs/x.bz2".into()),
            (two, 2, 30, 30, String::new())
        ]
    );
    // A final status is never overwritten by a late event.
    assert_eq!(
        db.build_finished(&job("one").derivation, crate::db::status::FAILED, None, 40)
            .unwrap(),
        0
    );
}

#[test]
fn started_builds_are_rescheduled_on_restart() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    db.register_evaluation("a", "c1", &[job("one")], 10)
        .unwrap();
    db.build_started(&job("one").derivation, "log", 20).unwrap();
    assert_eq!(db.reset_started_builds().unwrap(), 1);
    assert_eq!(count(&db, "SELECT status FROM Builds"), status::SCHEDULED);
}

#[test]
fn failed_evaluation_moves_the_stamp_and_keeps_the_reason() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let eval = db.begin_evaluation("a", "bad", 5).unwrap();
    db.fail_evaluation(
        "a",
        eval,
        "bad",
        "evaluator exited with status 1",
        &Default::default(),
        6,
    )
    .unwrap();
    assert_eq!(db.stamp("a").unwrap().as_deref(), Some("bad"));
    assert_eq!(
        count(&db, "SELECT status FROM Evaluations"),
        eval_status::FAILED
    );
}

#[test]
fn a_2018_database_is_upgraded_in_place() {
    let path = database_2018(
        "db2018",
        "INSERT INTO Specifications VALUES
               ('guix', 'https://git.savannah.gnu.org/git/guix.git', '.', 'build-aux/cuirass/gnu-system.scm',
                'cuirass-jobs', '((subset . \"hello\"))', 'master', NULL, NULL, 1);
             INSERT INTO Stamps VALUES ('guix', 'abc123');
             INSERT INTO Evaluations (specification, revision) VALUES ('guix', 'abc123');
             INSERT INTO Derivations VALUES ('/gnu/store/aaa-hello-2.10.drv', 1, 'hello-2.10.x86_64-linux', 'x86_64-linux', 'hello-2.10');
             INSERT INTO Builds VALUES (1, '/gnu/store/aaa-hello-2.10.drv', 1, '/var/log/guix/drvs/aa/a.bz2', 0, 100, 110, 120);
             INSERT INTO Outputs VALUES (1, 'out', '/gnu/store/bbb-hello-2.10');",
    );
    let mut db = Db::open(&path).unwrap();
    assert_eq!(db.user_version().unwrap(), schema_version());
    let specs = db.specifications().unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].proc_name, "cuirass-jobs");
    assert_eq!(specs[0].arguments, "((subset . \"hello\"))");
    assert!(specs[0].no_compile);
    assert_eq!(db.stamp("guix").unwrap().as_deref(), Some("abc123"));
    let (status, stop, eval_status): (i64, i64, i64) = db
        .connection()
        .query_row(
            "SELECT b.status, b.stoptime, e.status FROM Builds b JOIN Evaluations e ON e.id = b.evaluation",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (status, stop, eval_status),
        (0, 120, eval_status::SUCCEEDED)
    );
    assert_eq!(
        db.outputs_of_derivation("/gnu/store/aaa-hello-2.10.drv")
            .unwrap(),
        vec!["/gnu/store/bbb-hello-2.10".to_string()]
    );
    // The duration histogram was filled from the old finished build (10 s).
    let h = db.metrics(&[]).unwrap().build_duration;
    assert_eq!((h.count, h.sum), (1, 10.0));
    // Its weather was not kept; the background backfill keeps it (its
    // job's first build: unknown), then has nothing left.
    let weather = |db: &Db| -> Option<i64> {
        db.connection()
            .query_row("SELECT weather FROM Builds WHERE id = 1", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(weather(&db), None);
    assert_eq!(db.backfill_weathers(25).unwrap(), 0);
    assert_eq!(weather(&db), Some(crate::db::read::weather::UNKNOWN));
    assert_eq!(db.backfill_weathers(25).unwrap(), 0);
    // New evaluations go on from the old ids.
    let eval = db
        .register_evaluation("guix", "def456", &[job("new")], 200)
        .unwrap();
    assert_eq!(eval, 2);
    let ok: String = db
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

fn job_with(name: &str, drv_tag: &str) -> JobRecord {
    let mut j = job(&format!("{name}{drv_tag}"));
    j.job_name = name.into();
    j
}

#[test]
fn a_completed_evaluation_cancels_the_scheduled_builds_it_supersedes() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a"), spec("b")]).unwrap();
    // Evaluation 1: jobs x, y (scheduled), z (already started).
    let e1 = db.begin_evaluation("a", "c1", 1).unwrap();
    db.add_jobs(
        "a",
        e1,
        &[job_with("x", "1"), job_with("y", "1"), job_with("z", "1")],
        1,
    )
    .unwrap();
    db.complete_evaluation("a", e1, "c1", 1).unwrap();
    assert_eq!(db.supersede_all(&Default::default(), 1).unwrap(), 0);
    db.build_started(&job_with("z", "1").derivation, "log", 2)
        .unwrap();
    // Another spec's build of a job with the same name is not touched.
    let other = db
        .register_evaluation("b", "c9", &[job_with("x", "b")], 1)
        .unwrap();
    // Evaluation 2: x changed, y unchanged (same derivation), z changed.
    let e2 = db.begin_evaluation("a", "c2", 3).unwrap();
    let added = db
        .add_jobs(
            "a",
            e2,
            &[job_with("x", "2"), job_with("y", "1"), job_with("z", "2")],
            3,
        )
        .unwrap();
    assert_eq!(added.len(), 3);
    db.complete_evaluation("a", e2, "c2", 4).unwrap();
    assert_eq!(db.supersede_all(&Default::default(), 4).unwrap(), 1);
    let status_of = |eval: EvalId, drv: &str| -> i64 {
        db.connection()
            .query_row(
                "SELECT status FROM Builds WHERE evaluation = ?1 AND derivation = ?2",
                params![eval, drv],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        status_of(e1, &job_with("x", "1").derivation),
        status::CANCELED
    );
    assert_eq!(
        status_of(e1, &job_with("y", "1").derivation),
        status::SCHEDULED
    );
    assert_eq!(
        status_of(e1, &job_with("z", "1").derivation),
        status::STARTED
    );
    assert_eq!(
        status_of(other, &job_with("x", "b").derivation),
        status::SCHEDULED
    );
    assert_eq!(db.stamp("a").unwrap().as_deref(), Some("c2"));
}

#[test]
fn interrupted_evaluations_are_rolled_back_and_failed_ones_cancel_their_builds() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let e1 = db.begin_evaluation("a", "c1", 1).unwrap();
    db.add_jobs("a", e1, &[job("one"), job("two")], 1).unwrap();
    db.build_started(&job("one").derivation, "log", 2).unwrap();
    db.fail_evaluation(
        "a",
        e1,
        "c1",
        "evaluator killed by signal 9",
        &Default::default(),
        3,
    )
    .unwrap();
    assert_eq!(
        count(&db, "SELECT status FROM Evaluations WHERE id = 1"),
        eval_status::FAILED
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM Builds WHERE status = 4"),
        1,
        "the scheduled build is canceled, the started one goes on"
    );
    let e2 = db.begin_evaluation("a", "c2", 4).unwrap();
    db.add_jobs("a", e2, &[job("three")], 4).unwrap();
    assert_eq!(db.roll_back_interrupted_evaluations().unwrap(), 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Evaluations"), 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Derivations"), 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Outputs"), 2);
    assert_eq!(db.stamp("a").unwrap().as_deref(), Some("c1"));
}

/// Issue 6: an evaluation whose outcome could not be recorded (disk full)
/// stayed in progress forever while the same commit was evaluated again.
#[test]
fn an_evaluation_left_in_progress_is_replaced_by_the_next_one_of_its_spec() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a"), spec("b")]).unwrap();
    let lost = db.begin_evaluation("a", "c1", 1).unwrap();
    db.add_jobs("a", lost, &[job("one")], 1).unwrap();
    // Another spec's evaluation in progress is none of a's business.
    let other = db.begin_evaluation("b", "c9", 1).unwrap();
    let again = db.begin_evaluation("a", "c1", 2).unwrap();
    assert_ne!(again, lost);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM Evaluations WHERE status = -1"),
        2
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM Evaluations WHERE id = {lost}")
        ),
        0
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM Evaluations WHERE id = {other}")
        ),
        1
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Outputs"), 0);
}

#[test]
fn the_duration_histogram_migration_uses_the_same_bounds_as_the_code() {
    let migration = MIGRATIONS[4];
    for (k, b) in BUILD_DURATION_BOUNDS.iter().enumerate() {
        assert!(
            migration.contains(&format!("WHEN v <= {b} THEN {k} ")),
            "bound {b}"
        );
    }
    assert!(migration.contains(&format!("ELSE {} END", BUILD_DURATION_BOUNDS.len())));
    assert_eq!(duration_bucket(0), 0);
    assert_eq!(duration_bucket(60), 4);
    assert_eq!(duration_bucket(61), 5);
    assert_eq!(duration_bucket(1_000_000), BUILD_DURATION_BOUNDS.len());
}

#[test]
fn the_duration_histogram_follows_finished_builds() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    db.register_evaluation("a", "c1", &[job("one"), job("two"), job("three")], 1)
        .unwrap();
    db.build_started(&job("one").derivation, "log", 10).unwrap();
    db.apply_build_updates(
        &[crate::build::Update::Finished {
            derivation: job("one").derivation,
            status: status::SUCCEEDED,
            log: None,
            reason: None,
        }],
        70,
    )
    .unwrap();
    db.build_finished(&job("two").derivation, status::FAILED_DEPENDENCY, None, 80)
        .unwrap();
    let m = db.metrics(&[]).unwrap();
    assert_eq!(m.build_duration.count, 2);
    assert_eq!(m.build_duration.sum, 60.0);
    let at = |le: f64| {
        m.build_duration
            .buckets
            .iter()
            .find(|(b, _)| *b == le)
            .unwrap()
            .1
    };
    assert_eq!((at(1.0), at(30.0), at(60.0), at(86400.0)), (1, 1, 2, 2));
    // A final status is not counted twice.
    db.build_finished(&job("one").derivation, status::FAILED, None, 90)
        .unwrap();
    assert_eq!(db.metrics(&[]).unwrap().build_duration.count, 2);
}

/// Every trace line the daemon prints looks up a derivation's pending
/// builds; a plan through Builds_queue would walk the whole queue.  They
/// are found in both parts of the derivation index (migration 22), each
/// by id, and sorted (one or two builds).
#[test]
fn status_changes_find_builds_through_the_derivation_index() {
    let db = Db::open_in_memory().unwrap();
    assert_eq!(
        query_plan(
            db.connection(),
            PENDING_BUILDS_OF_DERIVATION,
            ["/gnu/store/x.drv"]
        ),
        "SEARCH Builds USING INTEGER PRIMARY KEY (rowid=?); LIST SUBQUERY 4; COMPOUND QUERY; \
         LEFT-MOST SUBQUERY; SEARCH Builds USING COVERING INDEX Builds_derivation (derivation=?); \
         UNION ALL; SEARCH Builds USING INDEX Builds_derivation_fresh (<expr>=?); \
         USE TEMP B-TREE FOR ORDER BY"
    );
}

#[test]
fn a_jobs_limits_priority_inputs_and_failure_reason_are_kept() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let limits = Limits {
        max_silent_time: Some(2),
        timeout: Some(72000),
    };
    let mut today = job("today");
    today.limits = limits;
    today.priority = 5;
    today.inputs = vec![job("dep").derivation, job("dep2").derivation];
    let eval = db.begin_evaluation("a", "c1", 1).unwrap();
    let added = db
        .add_jobs("a", eval, &[today.clone(), job("old")], 2)
        .unwrap();
    assert_eq!(
        added.iter().map(|p| p.limits).collect::<Vec<_>>(),
        [limits, Limits::default()]
    );
    // Job priority 5 goes after the other job's default, 0.
    let pending = db.dispatch_page(None, 100).unwrap();
    assert_eq!(pending, vec![added[1].clone(), added[0].clone()]);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Inputs WHERE build = 1"), 2);
    let row: (i64, Option<i64>, Option<i64>) = db
        .connection()
        .query_row(
            "SELECT priority, timeout, maxsilent FROM Builds WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(row, (5, Some(72000), Some(2)));
    db.apply_build_updates(
        &[crate::build::Update::Finished {
            derivation: today.derivation.clone(),
            status: status::FAILED,
            log: None,
            reason: Some("timed out after 2 seconds of silence".into()),
        }],
        10,
    )
    .unwrap();
    let reason: Option<String> = db
        .connection()
        .query_row("SELECT errormsg FROM Builds WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        reason.as_deref(),
        Some("timed out after 2 seconds of silence")
    );
    // A rolled-back evaluation takes its inputs along (foreign keys on).
    db.abandon_evaluation(eval).unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Inputs"), 0);
}

#[test]
fn a_database_of_schema_7_gains_the_job_columns() {
    let dir = std::env::temp_dir().join(format!("cuirass-db7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cuirass.db");
    let _ = std::fs::remove_file(&path);
    {
        let old = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..7] {
            old.execute_batch(sql).unwrap();
        }
        old.pragma_update(None, "user_version", 7).unwrap();
        old.execute_batch(
            "INSERT INTO Specifications VALUES ('a', 'file:///a', '.', 'ci.scm', 'jobs', '()', 'master', NULL, NULL, 1);
             INSERT INTO Evaluations (specification, revision) VALUES ('a', 'c1');
             INSERT INTO Derivations VALUES ('/gnu/store/aaa-x.drv', 1, 'x', 'x86_64-linux', 'x');
             INSERT INTO Builds (derivation, evaluation, log, status) VALUES ('/gnu/store/aaa-x.drv', 1, '', -2);",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.user_version().unwrap(), schema_version());
    let pending = db.dispatch_page(None, 100).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].limits, Limits::default());
    let priority: i64 = db
        .connection()
        .query_row("SELECT priority FROM Builds", [], |r| r.get(0))
        .unwrap();
    assert_eq!(priority, 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// A write held back by a busy loop turn keeps the times the daemon's
/// events were read at: a build killed at its 2-second limit is not
/// recorded as having run 1 second.
#[test]
fn statuses_are_written_with_the_times_they_were_read_at() {
    use crate::records::Update;
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let j = job("silent");
    db.register_evaluation("a", "c1", std::slice::from_ref(&j), 1)
        .unwrap();
    let updates = [
        Update::Started {
            derivation: j.derivation.clone(),
            log: "log".into(),
        },
        Update::Finished {
            derivation: j.derivation.clone(),
            status: status::FAILED,
            log: None,
            reason: Some("timed out after 2 seconds of silence".into()),
        },
    ];
    let times = [100, 102];
    db.record_statuses_at(&[], &updates[..1], &|i| times[i], 101)
        .unwrap();
    db.record_statuses_at(&[], &updates[1..], &|i| times[1 + i], 105)
        .unwrap();
    assert_eq!(
        count(&db, "SELECT starttime FROM Builds"),
        100,
        "read at 100, written at 101"
    );
    assert_eq!(count(&db, "SELECT stoptime FROM Builds"), 102);
}

#[test]
fn statements_are_not_compiled_again_for_each_bound_value() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let jobs: Vec<JobRecord> = (0..50).map(|i| job(&format!("j{i}"))).collect();
    db.register_evaluation("a", "c1", &jobs, 10).unwrap();
    // As on a database someone ran ANALYZE on (the benchmarks do).
    db.connection().execute_batch("ANALYZE").unwrap();
    for id in 1..=10 {
        db.build(BuildId(id)).unwrap();
        db.products(BuildId(id)).unwrap();
    }
    let stmt = db
        .connection()
        .prepare_cached(
            "SELECT id, build, type, file_size, path FROM BuildProducts WHERE build = ?1 ORDER BY id",
        )
        .unwrap();
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 10);
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
}

/// A database file of its own (for a second connection to it), with spec
/// "a" and one evaluation of `jobs`: (its directory, its path, it).
fn file_db_with_jobs(tag: &str, jobs: &[&str]) -> (std::path::PathBuf, std::path::PathBuf, Db) {
    let dir = std::env::temp_dir().join(format!("cuirass-db{tag}-{}", std::process::id()));
    let path = dir.join(format!("{tag}.db"));
    let _ = std::fs::remove_file(&path);
    let mut db = Db::open(&path).unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let jobs: Vec<JobRecord> = jobs.iter().map(|j| job(j)).collect();
    db.register_evaluation("a", "c1", &jobs, 1000).unwrap();
    (dir, path, db)
}

#[test]
fn a_position_follows_every_write_to_the_queue_of_this_and_other_connections() {
    use crate::db::queue::Waiting;
    let (dir, path, db) = file_db_with_jobs("head", &["x", "y", "z"]);
    let position = |db: &Db, name: &str| {
        let id: i64 = db
            .connection()
            .query_row(
                "SELECT id FROM Builds WHERE derivation LIKE '%-' || ?1 || '.drv'",
                [name],
                |r| r.get(0),
            )
            .unwrap();
        let b = db.build(BuildId(id)).unwrap().unwrap();
        match db.waiting(b.id, b.status, b.rank, "a").unwrap() {
            Some(Waiting::Queued { position }) => position,
            w => panic!("{name}: {w:?}"),
        }
    };
    assert_eq!(position(&db, "z"), 3);
    // Asked again with nothing changed: the same, from the kept head.
    assert_eq!(position(&db, "z"), 3);
    assert_eq!(position(&db, "y"), 2);
    // This connection cancels x.
    db.connection()
        .execute(
            "UPDATE Builds SET status = 4 WHERE derivation LIKE '%-x.drv'",
            [],
        )
        .unwrap();
    assert_eq!(position(&db, "z"), 2);
    // Another connection (the sqlite3 shell, a command-line tool) moves
    // z to the front.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "UPDATE Builds SET queue_rank = queue_rank - 100 WHERE derivation LIKE '%-z.drv'",
            [],
        )
        .unwrap();
    assert_eq!(position(&db, "z"), 1);
    assert_eq!(position(&db, "y"), 2);
    // Inside a write transaction that is then rolled back, the head read
    // there does not outlive it.
    db.connection().execute_batch("BEGIN").unwrap();
    db.connection()
        .execute(
            "UPDATE Builds SET status = -1 WHERE derivation LIKE '%-y.drv'",
            [],
        )
        .unwrap();
    assert_eq!(position(&db, "z"), 2, "y started, within the transaction");
    db.connection().execute_batch("ROLLBACK").unwrap();
    assert_eq!(position(&db, "z"), 1);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reads_of_a_turn_share_a_snapshot_and_a_write_ends_it() {
    let (dir, path, mut db) = file_db_with_jobs("reads", &["x", "y"]);
    let scheduled = |db: &Db| count(db, "SELECT COUNT(*) FROM Builds WHERE status = -2");
    let other = rusqlite::Connection::open(&path).unwrap();
    db.begin_reads();
    assert_eq!(scheduled(&db), 2);
    other
        .execute("UPDATE Builds SET status = 4 WHERE id = 1", [])
        .unwrap();
    assert_eq!(scheduled(&db), 2, "one snapshot until the reads end");
    db.end_reads();
    assert_eq!(scheduled(&db), 1);
    // A write transaction ends the reads rather than fail within them,
    // and what it wrote stays.
    db.begin_reads();
    assert_eq!(scheduled(&db), 1);
    db.cancel_build(BuildId(2), 2000).unwrap();
    assert!(db.connection().is_autocommit());
    assert_eq!(scheduled(&db), 0);
    db.end_reads();
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(scheduled(&db), 0);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

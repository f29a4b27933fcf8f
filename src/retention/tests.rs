//! The retention against an in-memory database and a clock that is a
//! number: what goes, what stays, and chunks of bounded size.

use super::*;
use crate::db::{JobRecord, status};
use crate::records::EvalId;
use crate::spec::Specification;

const DAY: i64 = 86_400;

fn job(name: &str, inputs: usize) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{name:a<32}-{name}.drv"),
        system: "x86_64-linux".into(),
        nix_name: name.into(),
        outputs: vec![
            ("out".into(), format!("/gnu/store/{name:b<32}-{name}")),
            ("doc".into(), format!("/gnu/store/{name:c<32}-{name}-doc")),
        ],
        inputs: (0..inputs)
            .map(|i| format!("/gnu/store/{i:d<32}-in{i}.drv"))
            .collect(),
        ..JobRecord::default()
    }
}

fn db_with_specs(names: &[&str]) -> Db {
    let mut db = Db::open_in_memory().unwrap();
    let specs: Vec<Specification> = names
        .iter()
        .map(|n| Specification::new(n, &format!("file:///{n}.git"), "ci.scm", "jobs"))
        .collect();
    db.add_specifications(&specs).unwrap();
    db
}

/// An evaluation of `spec` made at `at` whose builds all succeeded, with
/// a checkout, an attempt and a product on its first build.
fn evaluation(db: &mut Db, spec: &str, at: i64, jobs: usize) -> crate::db::EvalId {
    let jobs: Vec<JobRecord> = (0..jobs)
        .map(|i| job(&format!("{spec}{at}j{i}"), 3))
        .collect();
    let eval = db
        .register_evaluation(spec, &format!("c{at}"), &jobs, at)
        .unwrap();
    let c = db.connection();
    c.execute(
        "UPDATE Builds SET status = 0, starttime = ?2, stoptime = ?2 WHERE evaluation = ?1",
        [eval, EvalId(at)],
    )
    .unwrap();
    c.execute(
        "INSERT INTO Checkouts (evaluation, channel, revision, directory) VALUES (?1, 'ch', 'r', '/d')",
        [eval],
    )
    .unwrap();
    c.execute(
        "INSERT INTO BuildAttempts (build, attempt, status, starttime, stoptime, log)
         SELECT MIN(id), 1, 1, 0, 0, '' FROM Builds WHERE evaluation = ?1",
        [eval],
    )
    .unwrap();
    c.execute(
        "INSERT INTO BuildProducts (build, type, file_size, path)
         SELECT MIN(id), 't', 1, '/gnu/store/x' FROM Builds WHERE evaluation = ?1",
        [eval],
    )
    .unwrap();
    eval
}

fn evaluations(db: &Db) -> Vec<EvalId> {
    let mut stmt = db
        .connection()
        .prepare("SELECT id FROM Evaluations ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn count(db: &Db, sql: &str) -> i64 {
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Steps until the retention rests; every chunk's outcome.
fn run(r: &mut Retention, db: &mut Db, now: i64) -> Vec<Deleted> {
    let mut all = Vec::new();
    while r.busy(now) {
        all.extend(r.step(db, now));
    }
    all
}

fn assert_sound(db: &Db) {
    let check: String = db
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM pragma_foreign_key_check"),
        0
    );
}

#[test]
fn old_evaluations_go_and_the_latest_the_successful_and_the_pending_stay() {
    let mut db = db_with_specs(&["a", "b", "c"]);
    let now = 100 * DAY;
    let old = now - 40 * DAY;
    let a1 = evaluation(&mut db, "a", old, 2);
    let a2 = evaluation(&mut db, "a", old + 1, 2);
    let a3 = evaluation(&mut db, "a", now - DAY, 2);
    // b: the latest successful one is old and the latest failed.
    let b1 = evaluation(&mut db, "b", old, 1);
    let b2 = evaluation(&mut db, "b", old + 1, 1);
    let b3 = db.begin_evaluation("b", "c3", old + 2).unwrap();
    db.fail_evaluation("b", b3, "c3", "broken", &Default::default(), old + 2)
        .unwrap();
    // c: an old one with a build pending again, and one in progress.
    let c1 = evaluation(&mut db, "c", old, 2);
    db.connection()
        .execute(
            "UPDATE Builds SET status = -2 WHERE id = (SELECT MAX(id) FROM Builds WHERE evaluation = ?1)",
            [c1],
        )
        .unwrap();
    let c2 = evaluation(&mut db, "c", old + 1, 1);
    let c3 = db.begin_evaluation("c", "c9", old + 3).unwrap();

    let mut r = Retention::new(30 * DAY as u64, now);
    let deleted = run(&mut r, &mut db, now);
    assert_eq!(evaluations(&db), [a3, b2, b3, c1, c2, c3]);
    let _ = (a1, a2, b1);
    let builds: usize = deleted.iter().map(|d| d.builds.len()).sum();
    assert_eq!(builds, 5, "a1, a2 and b1's builds");
    let outputs: usize = deleted.iter().map(|d| d.outputs.len()).sum();
    assert_eq!(outputs, 10, "two outputs each");
    assert!(
        deleted
            .iter()
            .flat_map(|d| &d.builds)
            .any(|b| b.attempts == [1]),
        "an attempt's log goes too"
    );
    // Nothing is left of them in any table.
    for table in ["Builds", "Derivations", "Checkouts"] {
        let sql = format!(
            "SELECT COUNT(*) FROM {table} WHERE evaluation NOT IN (SELECT id FROM Evaluations)"
        );
        assert_eq!(count(&db, &sql), 0, "{table}");
    }
    for table in ["Outputs", "Inputs", "BuildAttempts", "BuildProducts"] {
        let sql =
            format!("SELECT COUNT(*) FROM {table} WHERE build NOT IN (SELECT id FROM Builds)");
        assert_eq!(count(&db, &sql), 0, "{table}");
    }
    // c1 keeps its finished build too: evaluations go whole.
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM Builds WHERE evaluation = {c1}")
        ),
        2
    );
    assert_sound(&db);
    assert!(!r.busy(now), "rests until the next look");
    assert!(r.busy(now + MAX_CHECK_EVERY));
}

#[test]
fn a_large_evaluation_goes_in_chunks_of_bounded_size() {
    let mut db = db_with_specs(&["a"]);
    let now = 10 * DAY;
    let old = evaluation(&mut db, "a", DAY, 300);
    evaluation(&mut db, "a", now, 1);
    let rows_before = count(&db, "SELECT COUNT(*) FROM Outputs")
        + count(&db, "SELECT COUNT(*) FROM Inputs")
        + count(&db, "SELECT COUNT(*) FROM Builds")
        + count(&db, "SELECT COUNT(*) FROM Derivations");
    let mut r = Retention::new(DAY as u64, now);
    let mut chunks = 0;
    let mut builds = 0;
    let changes = |db: &Db| db.connection().total_changes();
    while r.busy(now) {
        let before = changes(&db);
        let deleted = r.step(&mut db, now);
        let rows = (changes(&db) - before) as usize;
        // One build's rows past the budget at most (1 + 2 + 3 + attempt,
        // product, and its derivation row, migration 25), and the
        // triggers' changes for each build: `BuildCounts`, and the job
        // name its derivation row may take with it (`JobNames` and its
        // trigram index's row): a build has 6 rows or more, so half as
        // many again at most.  Rows of no build go after, three changes
        // a row at most.
        let builds_phase = deleted.as_ref().is_some_and(|d| !d.builds.is_empty());
        let bound = match builds_phase {
            true => ROW_BUDGET * 3 / 2 + 8,
            false => ROW_BUDGET * 3 + 8,
        };
        assert!(rows <= bound, "{rows} rows in one chunk");
        if let Some(d) = deleted {
            chunks += 1;
            builds += d.builds.len();
        }
        // Between chunks, what is left still holds together.
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM pragma_foreign_key_check"),
            0
        );
    }
    assert_eq!(builds, 300);
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(!evaluations(&db).contains(&old));
    assert!(rows_before > 2000);
    assert_sound(&db);
}

#[test]
fn an_evaluation_whose_build_is_restarted_midway_is_kept_with_it() {
    let mut db = db_with_specs(&["a"]);
    let now = 10 * DAY;
    let old = evaluation(&mut db, "a", DAY, 300);
    evaluation(&mut db, "a", now, 1);
    let mut r = Retention::new(DAY as u64, now);
    assert!(r.step(&mut db, now).is_some());
    db.connection()
        .execute(
            "UPDATE Builds SET status = ?2 WHERE id = (SELECT MAX(id) FROM Builds WHERE evaluation = ?1)",
            [old, EvalId(status::SCHEDULED.code())],
        )
        .unwrap();
    run(&mut r, &mut db, now);
    assert!(evaluations(&db).contains(&old));
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM Builds WHERE evaluation = {old}")
        ),
        1,
        "only its pending build is left"
    );
    assert_sound(&db);
}

#[test]
fn young_and_lone_evaluations_are_left_alone() {
    let mut db = db_with_specs(&["a", "b"]);
    let now = 10 * DAY;
    evaluation(&mut db, "a", now - 10, 1);
    evaluation(&mut db, "a", now - 5, 1);
    let lone = evaluation(&mut db, "b", 0, 1);
    let before = evaluations(&db);
    let mut r = Retention::new(60, now);
    assert!(run(&mut r, &mut db, now).is_empty());
    assert_eq!(evaluations(&db), before);
    // Once old enough, the older of a's two goes; b's only one stays.
    let deleted = run(&mut r, &mut db, now + 60);
    assert_eq!(deleted.iter().map(|d| d.builds.len()).sum::<usize>(), 1);
    assert_eq!(evaluations(&db).len(), 2);
    assert!(evaluations(&db).contains(&lone));
}

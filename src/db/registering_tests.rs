//! Registration in batches: the derivations kept in memory between
//! them (`registering`) and the foreign keys left unchecked in them.

use super::alias_tests::{job, spec};
use super::*;

fn count(db: &Db, sql: &str) -> i64 {
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn foreign_keys_on(db: &Db) -> bool {
    db.connection()
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap()
}

/// A job whose derivation a batch registered before the process
/// restarted, or before a batch that failed, is still another name of
/// that build: the set is read again from the database when it is not
/// this evaluation's, and a failed batch's derivations are not taken
/// for registered ones.
#[test]
fn aliases_are_found_across_a_restart_and_a_failed_batch() {
    let dir = std::env::temp_dir().join(format!("cuirass-registering-{}", std::process::id()));
    let path = dir.join("r.db");
    let _ = std::fs::remove_file(&path);
    let mut db = Db::open(&path).unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let eval = db.begin_evaluation("a", "c1", 10).unwrap();
    db.add_jobs("a", eval, &[job("alpha", "pkg"), job("gamma", "other")], 10)
        .unwrap();
    drop(db);

    let mut db = Db::open(&path).unwrap();
    let added = db
        .add_jobs("a", eval, &[job("beta", "pkg"), job("delta", "new")], 10)
        .unwrap();
    assert_eq!(
        added.len(),
        1,
        "beta is alpha's build after a restart: {added:?}"
    );

    // "beta" again: its alias row exists, so the whole batch fails,
    // "fresh" with it.
    let failed = db.add_jobs(
        "a",
        eval,
        &[job("epsilon", "fresh"), job("beta", "other")],
        10,
    );
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        foreign_keys_on(&db),
        "foreign keys are checked again after a failed batch"
    );
    let added = db
        .add_jobs("a", eval, &[job("zeta", "fresh"), job("eta", "new")], 10)
        .unwrap();
    assert_eq!(
        added.len(),
        1,
        "zeta is a new build (its derivation rolled back), eta delta's: {added:?}"
    );
    db.complete_evaluation("a", eval, "c1", 10).unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 4);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM JobAliases"), 2);
    assert_eq!(
        count(&db, "SELECT COUNT(DISTINCT derivation) FROM Builds"),
        4,
        "one build a derivation"
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The registration's set, handed to superseding when the evaluation
/// closes, cancels what reading the set from the database would: a
/// job whose derivation changed is superseded, one the new evaluation
/// has under another name only is not.
#[test]
fn superseding_from_the_registrations_set_cancels_what_it_should() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let old = db.begin_evaluation("a", "c1", 10).unwrap();
    db.add_jobs(
        "a",
        old,
        &[job("x", "x1"), job("y", "y1"), job("z", "z1")],
        10,
    )
    .unwrap();
    db.complete_evaluation("a", old, "c1", 10).unwrap();
    db.supersede_all(&Default::default(), 10).unwrap();
    let new = db.begin_evaluation("a", "c2", 20).unwrap();
    // x changed; y's derivation is now job w's; z is the same.
    db.add_jobs("a", new, &[job("x", "x2")], 20).unwrap();
    db.add_jobs("a", new, &[job("w", "y1"), job("z", "z1")], 20)
        .unwrap();
    db.complete_evaluation("a", new, "c2", 20).unwrap();
    assert_eq!(db.supersede_all(&Default::default(), 20).unwrap(), 1);
    assert_eq!(canceled_jobs(&db), vec![("a".into(), "x".into())]);
}

/// A batch is registered with foreign keys unchecked, so it refuses an
/// evaluation that is not open, and leaves them checked after.
#[test]
fn a_batch_needs_an_open_evaluation_and_leaves_foreign_keys_checked() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let missing = db.add_jobs("a", EvalId(42), &[job("x", "x1")], 10);
    assert!(
        missing
            .as_ref()
            .is_err_and(|e| e.0.contains("evaluation 42")),
        "{missing:?}"
    );
    let eval = db.begin_evaluation("a", "c1", 10).unwrap();
    db.add_jobs("a", eval, &[job("x", "x1"), job("y", "x1")], 10)
        .unwrap();
    assert!(foreign_keys_on(&db));
    db.complete_evaluation("a", eval, "c1", 10).unwrap();
    let closed = db.add_jobs("a", eval, &[job("z", "z1")], 10);
    assert!(closed.is_err(), "{closed:?}");
    assert!(foreign_keys_on(&db));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 1);
    let violations = db
        .connection()
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |_| Ok(()))
        .unwrap()
        .count();
    assert_eq!(violations, 0, "every row a batch wrote has its parent");
}

fn canceled_jobs(db: &Db) -> Vec<(String, String)> {
    db.connection()
        .prepare(
            "SELECT e.specification, d.job_name FROM Builds b
             JOIN Derivations d ON d.rowid = b.id JOIN Evaluations e ON e.id = b.evaluation
             WHERE b.status = ?1 ORDER BY b.id",
        )
        .unwrap()
        .query_map([status::CANCELED], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap()
}

/// Two specifications registering side by side, batch after batch, as
/// the loop runs their evaluators: each finds its aliases in its own
/// earlier batches, and superseding cancels each one's changed job,
/// though the second closes while the first's superseding waits.
#[test]
fn evaluations_registered_side_by_side_keep_their_own_derivations() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a"), spec("b")]).unwrap();
    for s in ["a", "b"] {
        let old = db.begin_evaluation(s, "c1", 10).unwrap();
        db.add_jobs(
            s,
            old,
            &[job("x", &format!("{s}x1")), job("y", &format!("{s}y1"))],
            10,
        )
        .unwrap();
        db.complete_evaluation(s, old, "c1", 10).unwrap();
    }
    db.supersede_all(&Default::default(), 10).unwrap();
    let ea = db.begin_evaluation("a", "c2", 20).unwrap();
    let eb = db.begin_evaluation("b", "c2", 20).unwrap();
    let mut new_builds = 0;
    new_builds += db.add_jobs("a", ea, &[job("x", "ax2")], 20).unwrap().len();
    new_builds += db.add_jobs("b", eb, &[job("x", "bx2")], 20).unwrap().len();
    new_builds += db
        .add_jobs("a", ea, &[job("x-too", "ax2"), job("y", "ay1")], 20)
        .unwrap()
        .len();
    new_builds += db
        .add_jobs("b", eb, &[job("x-too", "bx2"), job("y", "by1")], 20)
        .unwrap()
        .len();
    assert_eq!(new_builds, 4, "x-too is x's build in each");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM JobAliases"), 2);
    db.complete_evaluation("a", ea, "c2", 20).unwrap();
    db.complete_evaluation("b", eb, "c2", 20).unwrap();
    assert_eq!(db.supersede_all(&Default::default(), 20).unwrap(), 2);
    assert_eq!(
        canceled_jobs(&db),
        vec![("a".into(), "x".into()), ("b".into(), "x".into())]
    );
}

/// A derivation of a batch that failed is not the evaluation's: the
/// older build of it is superseded when its job changed.
#[test]
fn a_failed_batchs_derivations_do_not_keep_older_builds_from_being_superseded() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let old = db.begin_evaluation("a", "c1", 10).unwrap();
    db.add_jobs("a", old, &[job("q", "fresh"), job("r", "r1")], 10)
        .unwrap();
    db.complete_evaluation("a", old, "c1", 10).unwrap();
    db.supersede_all(&Default::default(), 10).unwrap();
    let new = db.begin_evaluation("a", "c2", 20).unwrap();
    db.add_jobs("a", new, &[job("s", "s1"), job("s-too", "s1")], 20)
        .unwrap();
    // "s-too" again: the batch fails, "fresh" with it.
    let failed = db.add_jobs("a", new, &[job("p", "fresh"), job("s-too", "s1")], 20);
    assert!(failed.is_err(), "{failed:?}");
    db.add_jobs("a", new, &[job("q", "q2"), job("r", "r1")], 20)
        .unwrap();
    db.complete_evaluation("a", new, "c2", 20).unwrap();
    assert_eq!(db.supersede_all(&Default::default(), 20).unwrap(), 1);
    assert_eq!(canceled_jobs(&db), vec![("a".into(), "q".into())]);
}

//! Superseding a page per turn (`db::supersede`): the same builds are
//! canceled whatever the page size, the position survives between pages
//! (and so a restart), and the page's query seeks.

use super::alias_tests::{job, spec};
use super::*;

fn statuses(db: &Db) -> Vec<(i64, BuildStatus)> {
    let mut stmt = db
        .connection()
        .prepare("SELECT id, status FROM Builds ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(std::result::Result::unwrap)
        .collect()
}

/// Three evaluations of spec "a" (jobs j0..j9, then half of them
/// changed, then the other half changed and j9 under an alias), one of
/// spec "b"; the last of "a" is closed but nothing superseded yet.
fn history(db: &mut Db) -> EvalId {
    db.add_specifications(&[spec("a"), spec("b")]).unwrap();
    let mut eval = EvalId(0);
    for round in 1..=3 {
        let jobs: Vec<JobRecord> = (0..10)
            .map(|i| {
                // The round that last changed job i.
                let last = match (round, i < 5) {
                    (1, _) | (2, false) => 1,
                    (_, true) => 2,
                    (3, false) => 3,
                    _ => unreachable!(),
                };
                job(&format!("j{i}"), &format!("j{i}r{last}"))
            })
            .chain((round == 3).then(|| job("j9-alias", "j9r3")))
            .collect();
        let commit = format!("c{round}");
        eval = db.begin_evaluation("a", &commit, round).unwrap();
        db.add_jobs("a", eval, &jobs, round).unwrap();
        db.complete_evaluation("a", eval, &commit, round).unwrap();
        if round == 1 {
            // Spec "b" has a job j0 too, never superseded by "a".
            db.register_evaluation("b", "b1", &[job("j0", "b-j0")], 1)
                .unwrap();
        }
        if round < 3 {
            db.supersede_all(&Default::default(), round).unwrap();
        }
    }
    eval
}

#[test]
fn a_page_at_a_time_cancels_what_all_at_once_does() {
    let mut once = Db::open_in_memory().unwrap();
    let third = history(&mut once);
    let canceled = once.supersede_all(&Default::default(), 9).unwrap();
    // Round 2 canceled j0..j4 of round 1; round 3 cancels j5..j9 of
    // rounds 1 and 2 (j9 has a second name, an alias, in round 3), and
    // none of round 2's j0..j4, which round 3 has as they were.
    assert_eq!(canceled, 10);
    let mut paged = Db::open_in_memory().unwrap();
    assert_eq!(history(&mut paged), third);
    let mut pages = 0;
    let mut total = 0;
    while let Some(p) = paged.supersede(&Default::default(), 9, 1).unwrap() {
        pages += 1;
        total += p.canceled;
        assert!(p.canceled <= 1, "a page of one build cancels one at most");
        assert_eq!(p.canceled_in_all, total);
        assert_eq!(p.evaluation, third);
        assert_eq!(p.specification, "a");
        if !p.done {
            // The position is in the database, where a restart finds it.
            assert!(!paged.superseding_evaluations().unwrap().is_empty());
        }
    }
    assert_eq!(total, 10);
    assert!(pages >= 10, "{pages} pages");
    assert!(paged.superseding_evaluations().unwrap().is_empty());
    assert_eq!(statuses(&paged), statuses(&once));
    assert_eq!(
        once.connection()
            .query_row(
                "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
                 WHERE e.specification = 'b' AND b.status = ?1",
                [status::SCHEDULED],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        1,
        "another spec's job of the same name is left alone"
    );
}

#[test]
fn builds_in_flight_are_spared_and_the_pages_go_on_after_them() {
    let mut db = Db::open_in_memory().unwrap();
    history(&mut db);
    let flying: HashSet<String> = [job("", "j5r1").derivation].into_iter().collect();
    let mut canceled = 0;
    while let Some(p) = db.supersede(&flying, 9, 2).unwrap() {
        canceled += p.canceled;
    }
    // j5r1 is in rounds 1 and 2 alike: both builds are spared.
    assert_eq!(canceled, 8);
    let statuses_of = |drv: &str| -> (BuildStatus, BuildStatus) {
        db.connection()
            .query_row(
                "SELECT MIN(status), MAX(status) FROM Builds WHERE derivation = ?1",
                [job("", drv).derivation],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let scheduled = (status::SCHEDULED, status::SCHEDULED);
    assert_eq!(statuses_of("j5r1"), scheduled);
    assert_eq!(statuses_of("j6r1"), (status::CANCELED, status::CANCELED));
    assert_eq!(statuses_of("j6r3"), scheduled);
}

#[test]
fn a_deleted_evaluation_stops_superseding() {
    let mut db = Db::open_in_memory().unwrap();
    let third = history(&mut db);
    db.supersede(&Default::default(), 9, 1).unwrap();
    assert!(!db.superseding_evaluations().unwrap().is_empty());
    db.abandon_evaluation(third).unwrap();
    assert!(db.superseding_evaluations().unwrap().is_empty());
    assert_eq!(db.supersede(&Default::default(), 9, 1).unwrap(), None);
}

#[test]
fn the_page_query_seeks_by_evaluation_and_looks_up_names() {
    let db = Db::open_in_memory().unwrap();
    let plan = query_plan(
        db.connection(),
        super::supersede::PAGE_SQL,
        params![1, 0, -2, 10],
    );
    assert!(!plan.split("; ").any(scans_a_table), "{plan}");
    assert!(
        plan.contains("Builds_evaluation (evaluation=? AND status=?"),
        "{plan}"
    );
    assert!(!sorts_beyond_arms(&plan), "{plan}");
    // The old build's name by its derivation row's rowid (migration
    // 25), the new evaluation's by its indexes.
    let plan = query_plan(
        db.connection(),
        &super::supersede::named_sql(),
        params![1, 2],
    );
    assert!(!plan.split("; ").any(scans_a_table), "{plan}");
    assert!(
        plan.contains("SEARCH old USING INTEGER PRIMARY KEY (rowid=?)")
            && plan.contains("Derivations_job_name_fresh (job_name=? AND evaluation=?)"),
        "{plan}"
    );
    // Each build canceled by its id.
    let plan = query_plan(
        db.connection(),
        crate::db::CANCEL_SQL,
        params!["[1, 2]", 4, 9, -2],
    );
    assert!(
        plan.contains("SEARCH Builds USING INTEGER PRIMARY KEY (rowid=?)")
            && !plan.contains("SCAN Builds"),
        "{plan}"
    );
}

#[test]
fn a_derivation_the_new_evaluation_has_under_another_name_is_not_superseded() {
    // Jobs renamed between evaluations keep their build: the
    // derivation set answers before the names are looked at.
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    db.register_evaluation("a", "c1", &[job("x", "x1"), job("y", "y1")], 1)
        .unwrap();
    let second = db.begin_evaluation("a", "c2", 2).unwrap();
    db.add_jobs("a", second, &[job("x", "y1"), job("y", "y2")], 2)
        .unwrap();
    db.complete_evaluation("a", second, "c2", 2).unwrap();
    // One build a page: the set is kept between pages.
    let mut canceled = 0;
    while let Some(p) = db.supersede(&Default::default(), 3, 1).unwrap() {
        canceled += p.canceled;
    }
    assert_eq!(canceled, 1, "x1 only: y1 is still wanted, as x");
    let status_of = |drv: &str| -> BuildStatus {
        db.connection()
            .query_row(
                "SELECT status FROM Builds WHERE derivation = ?1 ORDER BY id LIMIT 1",
                [job("", drv).derivation],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(status_of("x1"), status::CANCELED);
    assert_eq!(status_of("y1"), status::SCHEDULED);
}

#[test]
fn older_evaluations_builds_of_the_spec_wait_while_a_newer_one_supersedes() {
    let mut db = Db::open_in_memory().unwrap();
    let third = history(&mut db);
    let pending = db.superseding_evaluations().unwrap();
    assert_eq!(pending, [("a".to_string(), third)]);
    let held = |spec, eval| super::supersede::may_be_superseded(&pending, spec, EvalId(eval));
    assert!(held("a", 1) && held("a", third.0 - 1));
    assert!(!held("a", third.0), "its own builds start");
    assert!(!held("b", 2), "another spec's builds start");
    db.supersede_all(&Default::default(), 9).unwrap();
    assert!(db.superseding_evaluations().unwrap().is_empty());
}

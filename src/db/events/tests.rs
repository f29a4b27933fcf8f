//! Weather kept as builds finish, weather changes and failed evaluations
//! as events, their queue, and the counts of `/metrics`.

use super::*;
use crate::db::read::weather;
use crate::db::{JobRecord, status};
use crate::spec::Specification;

fn spec(name: &str) -> Specification {
    Specification::new(name, &format!("file:///srv/{name}.git"), "ci.scm", "jobs")
}

/// Job `name` with a derivation of its own per `variant`.
fn job(name: &str, variant: &str) -> JobRecord {
    let base = format!("{name}{variant}");
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{base:a<32}-{base}.drv"),
        system: "x86_64-linux".into(),
        nix_name: name.into(),
        ..JobRecord::default()
    }
}

fn kept(db: &Db, drv: &str) -> Vec<Option<i64>> {
    let mut stmt = db
        .connection()
        .prepare("SELECT weather FROM Builds WHERE derivation = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([drv], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn kinds(db: &Db) -> Vec<(String, Option<String>, Option<i64>)> {
    let mut events = db.latest_events(100).unwrap();
    events.reverse();
    events
        .into_iter()
        .map(|e| (e.kind, e.job_name, e.weather))
        .collect()
}

/// Evaluation k of spec `a` has job `j` with status `statuses[k]`; its
/// derivations differ when the variant does.
fn history(db: &mut Db, runs: &[(&str, i64)]) -> Vec<String> {
    let mut drvs = Vec::new();
    for (k, (variant, st)) in runs.iter().enumerate() {
        let j = job("j", variant);
        db.register_evaluation("a", &format!("c{k}"), std::slice::from_ref(&j), 1)
            .unwrap();
        db.build_finished(
            &j.derivation,
            crate::db::BuildStatus::of_column(*st),
            None,
            10 + k as i64,
        )
        .unwrap();
        drvs.push(j.derivation);
    }
    drvs
}

#[test]
fn weather_is_kept_when_a_build_finishes_and_changes_are_events() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let drvs = history(
        &mut db,
        &[
            ("ok", status::SUCCEEDED.code()),
            ("bad", status::FAILED.code()),
            ("bad2", status::FAILED_DEPENDENCY.code()),
            ("ok", status::SUCCEEDED.code()),
            ("ok", status::SUCCEEDED.code()),
            ("x", status::CANCELED.code()),
        ],
    );
    let mut distinct = drvs.clone();
    distinct.dedup_by(|a, b| a == b);
    distinct.remove(3);
    let w: Vec<Option<i64>> = distinct.iter().flat_map(|d| kept(&db, d)).collect();
    assert_eq!(distinct.len(), 4, "ok, bad, bad2, x");
    // "ok" has three builds (evaluations 1, 4 and 5).
    assert_eq!(
        w,
        [
            Some(weather::UNKNOWN),
            Some(weather::NEW_SUCCESS),
            Some(weather::STILL_SUCCEEDING),
            Some(weather::NEW_FAILURE),
            Some(weather::STILL_FAILING),
            None,
        ]
    );
    let j = Some("j".to_string());
    assert_eq!(
        kinds(&db),
        [
            (
                kind::NEW_FAILURE.into(),
                j.clone(),
                Some(weather::NEW_FAILURE)
            ),
            (kind::FIXED.into(), j, Some(weather::NEW_SUCCESS)),
        ]
    );
    let e = &db.latest_events(1).unwrap()[0];
    assert_eq!(
        (
            e.evaluation,
            e.revision.as_str(),
            e.status.map(|s| s.code()),
            e.timestamp
        ),
        (EvalId(4), "c3", Some(0), 13)
    );
    assert_eq!(e.derivation.as_deref(), Some(drvs[0].as_str()));
    // Counted by spec and weather; canceled says nothing.
    assert_eq!(
        db.weather_counts().unwrap(),
        [
            ("a".to_string(), weather::UNKNOWN, 1),
            ("a".into(), weather::NEW_SUCCESS, 1),
            ("a".into(), weather::NEW_FAILURE, 1),
            ("a".into(), weather::STILL_SUCCEEDING, 1),
            ("a".into(), weather::STILL_FAILING, 1),
        ]
    );
    // The API serves the kept weather.
    let build = db.latest_builds(&Default::default(), 1).unwrap();
    assert_eq!((build[0].weather, build[0].weather_kept), (-1, false));
    let id: i64 = db
        .connection()
        .query_row("SELECT MAX(id) FROM Builds WHERE status = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    let b = db.build(BuildId(id)).unwrap().unwrap();
    assert_eq!(
        (b.weather, b.weather_kept),
        (weather::STILL_SUCCEEDING, true)
    );
}

#[test]
fn a_derivation_pending_in_two_evaluations_compares_the_later_with_the_earlier() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    history(&mut db, &[("old", status::FAILED.code())]);
    let j = job("j", "same");
    db.register_evaluation("a", "c1", std::slice::from_ref(&j), 1)
        .unwrap();
    db.register_evaluation("a", "c2", std::slice::from_ref(&j), 1)
        .unwrap();
    db.finish_builds(&[(j.derivation.clone(), status::SUCCEEDED, None)], 20)
        .unwrap();
    assert_eq!(
        kept(&db, &j.derivation),
        [Some(weather::NEW_SUCCESS), Some(weather::STILL_SUCCEEDING)]
    );
    assert_eq!(kinds(&db).len(), 1);
}

#[test]
fn a_restarted_build_loses_its_weather_until_it_finishes_again() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let drvs = history(&mut db, &[("ok", 0), ("bad", 1)]);
    let id: i64 = db
        .connection()
        .query_row(
            "SELECT id FROM Builds WHERE derivation = ?1",
            [&drvs[1]],
            |r| r.get(0),
        )
        .unwrap();
    db.restart_build(BuildId(id)).unwrap();
    assert_eq!(kept(&db, &drvs[1]), [None]);
    let filter = crate::db::dashboard::EvalBuildFilter {
        weather: Some(weather::NEW_FAILURE),
        ..Default::default()
    };
    assert_eq!(
        db.evaluation_builds(EvalId(2), &filter, 10, 0).unwrap().1,
        0
    );
    db.build_finished(&drvs[1], status::SUCCEEDED, None, 30)
        .unwrap();
    assert_eq!(kept(&db, &drvs[1]), [Some(weather::STILL_SUCCEEDING)]);
}

#[test]
fn the_newly_failed_filter_and_count_find_new_failures_only() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let (ok, bad, worse) = (job("ok", "1"), job("bad", "1"), job("worse", "1"));
    db.register_evaluation("a", "c1", &[ok.clone(), bad.clone(), worse.clone()], 1)
        .unwrap();
    for j in [&ok, &bad, &worse] {
        db.build_finished(&j.derivation, crate::db::status::SUCCEEDED, None, 2)
            .unwrap();
    }
    let (ok2, bad2, worse2) = (job("ok", "2"), job("bad", "2"), job("worse", "2"));
    let eval = db
        .register_evaluation("a", "c2", &[ok2.clone(), bad2.clone(), worse2.clone()], 3)
        .unwrap();
    db.build_finished(&ok2.derivation, crate::db::status::SUCCEEDED, None, 4)
        .unwrap();
    db.build_finished(&bad2.derivation, crate::db::status::FAILED, None, 4)
        .unwrap();
    db.build_finished(&worse2.derivation, crate::db::status::FAILED_OTHER, None, 4)
        .unwrap();
    assert_eq!(db.evaluation_new_failures(eval).unwrap(), 2);
    let filter = crate::db::dashboard::EvalBuildFilter {
        status: Some((1, 3)),
        weather: Some(weather::NEW_FAILURE),
        job: Some("wor".into()),
    };
    let (builds, total) = db.evaluation_builds(eval, &filter, 10, 0).unwrap();
    assert_eq!(total, 1);
    assert_eq!(builds[0].job_name, "worse");
}

#[test]
fn events_are_queued_only_while_notifying_and_their_attempts_recorded() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let eval = db.begin_evaluation("a", "c1", 5).unwrap();
    db.fail_evaluation(
        "a",
        eval,
        "c1",
        "no such file: ci.scm",
        &Default::default(),
        6,
    )
    .unwrap();
    db.set_notifying(true);
    let eval = db.begin_evaluation("a", "c2", 7).unwrap();
    db.fail_evaluation("a", eval, "c2", "again", &Default::default(), 8)
        .unwrap();
    let events = db.latest_events(10).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.error.as_deref(), e.delivery))
            .collect::<Vec<_>>(),
        [
            (kind::EVALUATION_FAILED, Some("again"), delivery::QUEUED),
            (
                kind::EVALUATION_FAILED,
                Some("no such file: ci.scm"),
                delivery::NONE
            ),
        ]
    );
    let second = events[0].id;
    assert_eq!(db.queued_events(0, 10).unwrap(), [(second, 0)]);
    assert_eq!(db.queued_events(second, 10).unwrap(), []);
    db.event_attempted(second, 1, Some("exited with status 1"), false)
        .unwrap();
    assert_eq!(db.queued_events(0, 10).unwrap(), [(second, 1)]);
    db.event_attempted(second, 2, None, false).unwrap();
    assert_eq!(db.queued_events(0, 10).unwrap(), []);
    assert_eq!(
        db.event_counts().unwrap(),
        [(delivery::SENT, 1), (delivery::NONE, 1)]
    );
    // The spec's record is read with the event (a 2018 spec has none).
    assert_eq!(db.event(second).unwrap().unwrap().record, None);
}

#[test]
fn an_evaluation_rolled_back_takes_its_events_with_it() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    history(&mut db, &[("ok", 0)]);
    let eval = db.begin_evaluation("a", "c9", 5).unwrap();
    let bad = job("j", "bad");
    db.add_jobs("a", eval, std::slice::from_ref(&bad), 5)
        .unwrap();
    db.build_finished(&bad.derivation, crate::db::status::FAILED, None, 6)
        .unwrap();
    assert_eq!(kinds(&db).len(), 1);
    db.abandon_evaluation(eval).unwrap();
    assert_eq!(kinds(&db).len(), 0);
}

#[test]
fn a_finishing_builds_job_and_previous_build_are_index_lookups() {
    let db = Db::open_in_memory().unwrap();
    let plan = crate::db::query_plan(db.connection(), JOB_OF_BUILD, params![3]);
    assert!(
        plan.starts_with("SEARCH d USING INTEGER PRIMARY KEY (rowid=?)"),
        "{plan}"
    );
    assert!(!plan.contains("SCAN"), "{plan}");
    let plan = crate::db::query_plan(
        db.connection(),
        crate::db::read::previous_finished_build(),
        params!["j", 3, "x86_64-linux", "a"],
    );
    assert!(
        plan.contains("SEARCH d USING INDEX Derivations_job_name (job_name=? AND evaluation<?)"),
        "{plan}"
    );
    assert!(!crate::db::scans_a_table(&plan), "{plan}");
}

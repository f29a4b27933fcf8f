//! Issue 14: two job names, one derivation.  The build is registered
//! once, under its first name, with the other in `JobAliases`; every
//! query by job name finds it under both.

use super::read::{BuildFilter, JobFilter, SearchQuery, weather};
use super::*;
use crate::db::dashboard::EvalBuildFilter;

pub(super) fn spec(name: &str) -> Specification {
    Specification::new(name, &format!("file:///srv/{name}.git"), "ci.scm", "jobs")
}

/// Job `name` whose derivation is tagged `drv`: jobs of one tag share it.
pub(super) fn job(name: &str, drv: &str) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{drv:a<32}-{drv}.drv"),
        system: "x86_64-linux".into(),
        nix_name: drv.into(),
        outputs: vec![("out".into(), format!("/gnu/store/{drv:b<32}-{drv}"))],
        ..JobRecord::default()
    }
}

fn count(db: &Db, sql: &str) -> i64 {
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Evaluation of `jobs` in spec "a", each chunk in its own transaction,
/// completed.
fn evaluate(db: &mut Db, commit: &str, chunks: &[&[JobRecord]], now: i64) -> EvalId {
    let eval = db.begin_evaluation("a", commit, now).unwrap();
    for chunk in chunks {
        db.add_jobs("a", eval, chunk, now).unwrap();
    }
    db.complete_evaluation("a", eval, commit, now).unwrap();
    db.supersede_all(&Default::default(), now).unwrap();
    eval
}

fn names(builds: &[read::BuildView]) -> Vec<(BuildId, String, Vec<String>)> {
    builds
        .iter()
        .map(|b| (b.id, b.job_name.clone(), b.other_names.clone()))
        .collect()
}

#[test]
fn two_job_names_one_derivation_one_build_found_under_both_names() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    // alpha and beta arrive in separate chunks (transactions).
    let e = evaluate(
        &mut db,
        "c1",
        &[
            &[job("alpha", "pkg"), job("gamma", "other")],
            &[job("beta", "pkg")],
        ],
        10,
    );
    assert_eq!(db.evaluation_size(e).unwrap(), (3, 2));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 2);
    // The 2018 tables are as the 2018 readers expect: one row per build.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM Builds b JOIN Derivations d
             ON d.derivation = b.derivation AND d.evaluation = b.evaluation"
        ),
        2
    );
    let pkg: BuildId = db
        .connection()
        .query_row(
            "SELECT build FROM JobAliases WHERE job_name = 'beta'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let by = |job: &str| BuildFilter {
        job: Some(job.into()),
        ..Default::default()
    };
    // Pending: the queue finds it under either name.
    for (job, others) in [("alpha", "beta"), ("beta", "alpha")] {
        let filter = crate::db::read::QueueFilter {
            job: Some(job.into()),
            ..Default::default()
        };
        let (q, _) = db
            .queued_builds(&filter, 10, None, Default::default())
            .unwrap();
        assert_eq!(names(&q), vec![(pkg, job.into(), vec![others.into()])]);
    }
    let delta = crate::db::read::QueueFilter {
        job: Some("delta".into()),
        ..Default::default()
    };
    let (q, _) = db
        .queued_builds(&delta, 10, None, Default::default())
        .unwrap();
    assert_eq!(q, vec![]);
    db.build_finished(&job("x", "pkg").derivation, status::SUCCEEDED, None, 20)
        .unwrap();
    for (job, others) in [("alpha", "beta"), ("beta", "alpha")] {
        let l = db.latest_builds(&by(job), 10).unwrap();
        assert_eq!(names(&l), vec![(pkg, job.into(), vec![others.into()])]);
        assert_eq!(l[0].status, status::SUCCEEDED);
    }
    // The build's own page names it first as alpha.
    let b = db.build(pkg).unwrap().unwrap();
    assert_eq!(
        (b.job_name.as_str(), b.other_names.clone()),
        ("alpha", vec!["beta".into()])
    );
    // /api/jobs: every name, with the same build and status.
    let jobs = |asked: Option<&[&str]>| -> Vec<(String, BuildId, crate::db::BuildStatus)> {
        let filter = JobFilter {
            evaluation: e,
            names: asked.map(|n| n.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        db.jobs(&filter, 100)
            .unwrap()
            .into_iter()
            .map(|j| (j.name, j.build, j.status))
            .collect()
    };
    let all = jobs(None);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.contains(&("alpha".into(), pkg, crate::db::status::SUCCEEDED))
            && all.contains(&("beta".into(), pkg, crate::db::status::SUCCEEDED))
    );
    assert_eq!(
        jobs(Some(&["beta"])),
        vec![("beta".into(), pkg, crate::db::status::SUCCEEDED)]
    );
    assert_eq!(jobs(Some(&["beta", "beta", "alpha"])).len(), 2);
    // A page boundary keeps a build's names together.
    let first = db
        .jobs(
            &JobFilter {
                evaluation: e,
                ..Default::default()
            },
            1,
        )
        .unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    // /api/jobs/history.
    let history = db.jobs_history("a", &["beta".into()], 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].1[0].build, history[0].1[0].status),
        (pkg, crate::db::status::SUCCEEDED)
    );
    // Searches show the name they matched.
    let found = db
        .search_latest(&SearchQuery {
            words: vec!["BET".into()],
            ..Default::default()
        })
        .unwrap()
        .unwrap();
    assert_eq!((found.id, found.job_name.as_str()), (pkg, "beta"));
    let search = db.search_builds("bet", 10).unwrap();
    assert_eq!(
        names(&search.builds),
        vec![(pkg, "beta".into(), vec!["alpha".into()])]
    );
    let (page, total) = db
        .evaluation_builds(
            e,
            &EvalBuildFilter {
                job: Some("eta".into()),
                status: None,
                weather: None,
            },
            10,
            0,
        )
        .unwrap();
    assert_eq!(
        (names(&page), total),
        (vec![(pkg, "beta".into(), vec!["alpha".into()])], 1)
    );
    // Rolled back with its evaluation (foreign keys are on).
    let tx = db.conn.transaction().unwrap();
    Db::delete_evaluation(&tx, e).unwrap();
    tx.commit().unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM JobAliases"), 0);
}

#[test]
fn weather_and_superseding_follow_a_job_under_any_of_its_names() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    // 1: beta is another name of alpha's build, which succeeds.
    evaluate(
        &mut db,
        "c1",
        &[&[job("alpha", "p1"), job("beta", "p1")]],
        1,
    );
    db.build_finished(&job("", "p1").derivation, status::SUCCEEDED, None, 2)
        .unwrap();
    // 2: beta has its own derivation, which fails: beta's weather
    // compares with its build as another name.
    evaluate(
        &mut db,
        "c2",
        &[&[job("alpha", "p1"), job("beta", "p2")]],
        3,
    );
    db.build_finished(&job("", "p2").derivation, status::FAILED, None, 4)
        .unwrap();
    let latest = |db: &Db, job: &str| {
        let filter = BuildFilter {
            job: Some(job.into()),
            ..Default::default()
        };
        db.latest_builds(&filter, 1).unwrap().remove(0)
    };
    assert_eq!(latest(&db, "beta").weather, weather::NEW_FAILURE);
    // 3: beta is again another name, of a build that succeeds: compared
    // with its own build of evaluation 2.
    evaluate(
        &mut db,
        "c3",
        &[&[job("alpha", "p3"), job("beta", "p3")]],
        5,
    );
    db.build_finished(&job("", "p3").derivation, status::SUCCEEDED, None, 6)
        .unwrap();
    assert_eq!(latest(&db, "beta").weather, weather::NEW_SUCCESS);
    assert_eq!(latest(&db, "alpha").weather, weather::STILL_SUCCEEDING);
    // 4 supersedes the scheduled build of 4's predecessor whose other
    // name (gamma) now has another derivation.
    evaluate(
        &mut db,
        "c4",
        &[&[job("delta", "p4"), job("gamma", "p4")]],
        7,
    );
    evaluate(&mut db, "c5", &[&[job("gamma", "p5")]], 8);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT status FROM Builds WHERE derivation = '{}'",
                job("", "p4").derivation
            )
        ),
        status::CANCELED
    );
}

#[test]
fn builds_in_flight_keep_their_real_result_when_an_evaluation_fails_or_supersedes() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let flying: HashSet<String> = [job("", "one").derivation].into_iter().collect();
    let e = db.begin_evaluation("a", "c1", 1).unwrap();
    db.add_jobs("a", e, &[job("one", "one"), job("two", "two")], 1)
        .unwrap();
    db.fail_evaluation("a", e, "c1", "evaluator killed", &flying, 2)
        .unwrap();
    let status_of = |db: &Db, drv: &str| {
        count(
            db,
            &format!(
                "SELECT status FROM Builds WHERE derivation = '{}'",
                job("", drv).derivation
            ),
        )
    };
    assert_eq!(status_of(&db, "two"), status::CANCELED);
    assert_eq!(status_of(&db, "one"), status::SCHEDULED);
    db.build_finished(&job("", "one").derivation, status::SUCCEEDED, None, 3)
        .unwrap();
    assert_eq!(status_of(&db, "one"), status::SUCCEEDED);
    // Superseding spares the build in flight too.
    let e2 = db.begin_evaluation("a", "c2", 4).unwrap();
    db.add_jobs("a", e2, &[job("x", "x1"), job("y", "y1")], 4)
        .unwrap();
    db.complete_evaluation("a", e2, "c2", 4).unwrap();
    db.supersede_all(&Default::default(), 4).unwrap();
    let e3 = db.begin_evaluation("a", "c3", 5).unwrap();
    db.add_jobs("a", e3, &[job("x", "x2"), job("y", "y2")], 5)
        .unwrap();
    let flying: HashSet<String> = [job("", "x1").derivation].into_iter().collect();
    db.complete_evaluation("a", e3, "c3", 6).unwrap();
    assert_eq!(db.supersede_all(&flying, 6).unwrap(), 1);
    assert_eq!(status_of(&db, "x1"), status::SCHEDULED);
    assert_eq!(status_of(&db, "y1"), status::CANCELED);
}

#[test]
fn the_alias_migration_keeps_an_older_database_and_its_builds() {
    // Find the migration by what it makes, whatever its number.
    let k = MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE IF NOT EXISTS JobAliases"))
        .unwrap();
    let conn = Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    for sql in &MIGRATIONS[..k] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", k as i64).unwrap();
    conn.execute_batch(
        "INSERT INTO Specifications (repo_name, url, load_path, file, proc, arguments)
           VALUES ('a', 'u', '.', 'f', 'p', '()');
         INSERT INTO Evaluations (specification, revision) VALUES ('a', 'c');
         INSERT INTO Derivations VALUES ('/gnu/store/x.drv', 1, 'alpha', 's', 'n');
         INSERT INTO Builds (derivation, evaluation, log, status) VALUES ('/gnu/store/x.drv', 1, '', 0);",
    )
    .unwrap();
    let mut db = Db::setup(conn).unwrap();
    assert_eq!(db.user_version().unwrap(), MIGRATIONS.len());
    assert_eq!(db.evaluation_size(EvalId(1)).unwrap(), (1, 1));
    let e = db.begin_evaluation("a", "d", 2).unwrap();
    db.add_jobs("a", e, &[job("alpha", "q"), job("beta", "q")], 2)
        .unwrap();
    assert_eq!(db.evaluation_size(e).unwrap(), (2, 1));
}

/// A job whose derivation an earlier batch of its evaluation has, when
/// that batch's builds have moved to the large indexes in between
/// (`Db::merge_fresh` interleaves with a slow registration): still one
/// build, the job another name of it.
#[test]
fn an_alias_is_found_after_the_earlier_batch_moved_to_the_large_indexes() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let eval = db.begin_evaluation("a", "c1", 10).unwrap();
    db.add_jobs("a", eval, &[job("alpha", "pkg"), job("gamma", "other")], 10)
        .unwrap();
    assert_eq!(db.merge_fresh(10).unwrap(), 2);
    assert_eq!(db.fresh_builds().unwrap(), 0, "the first batch moved");
    let added = db
        .add_jobs("a", eval, &[job("beta", "pkg"), job("delta", "new")], 10)
        .unwrap();
    assert_eq!(added.len(), 1, "beta is alpha's build: {added:?}");
    db.complete_evaluation("a", eval, "c1", 10).unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 3);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Derivations"), 3);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM JobAliases WHERE job_name = 'beta'"
        ),
        1
    );
    // Every derivation row is its build's.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM Derivations d JOIN Builds b ON b.id = d.rowid
             WHERE b.derivation = d.derivation AND b.evaluation = d.evaluation"
        ),
        3
    );
}

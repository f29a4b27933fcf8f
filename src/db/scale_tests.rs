//! The tables of the `BuildCounts`/`JobNames` migration kept in step, the searches over every build,
//! and the plans of the queries that must not walk ten million builds.

use super::dashboard::EvalBuildFilter;
use super::search::NAME_LOOKUPS;
use super::*;

fn job(name: &str, drv_tag: &str) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{drv_tag:a<32}-{name}.drv"),
        system: if name.ends_with("-arm") {
            "aarch64-linux".into()
        } else {
            "x86_64-linux".into()
        },
        nix_name: name.into(),
        ..JobRecord::default()
    }
}

fn spec(name: &str) -> Specification {
    Specification::new(name, &format!("file:///srv/{name}.git"), "ci.scm", "jobs")
}

/// BuildCounts as a fresh count of the builds would give it, without
/// the rows that went down to zero.
fn counts_agree(db: &Db) {
    let rows = |sql: &str| -> Vec<(i64, i64, i64)> {
        let mut stmt = db.connection().prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert_eq!(
        rows("SELECT evaluation, status, count FROM BuildCounts WHERE count > 0 ORDER BY 1, 2"),
        rows("SELECT evaluation, status, COUNT(*) FROM Builds GROUP BY 1, 2 ORDER BY 1, 2")
    );
}

#[test]
fn build_counts_follow_inserts_status_changes_and_deletes() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("s")]).unwrap();
    let jobs: Vec<JobRecord> = (0..30).map(|i| job(&format!("j{i}"), "x")).collect();
    let e1 = db.register_evaluation("s", "c1", &jobs, 10).unwrap();
    counts_agree(&db);
    db.connection()
        .execute_batch(
            "UPDATE Builds SET status = id % 5, stoptime = 20 WHERE id % 3 = 0;
             UPDATE Builds SET status = -1 WHERE id % 3 = 1;",
        )
        .unwrap();
    counts_agree(&db);
    let e2 = db.begin_evaluation("s", "c2", 30).unwrap();
    db.add_jobs("s", e2, &jobs[..7], 30).unwrap();
    counts_agree(&db);
    db.abandon_evaluation(e2).unwrap();
    counts_agree(&db);
    let c = db.evaluation_counts(e1).unwrap();
    assert_eq!(c.total(), 30);
    let m = db.metrics(&[1.0]).unwrap();
    assert_eq!(m.builds.iter().map(|(_, n)| n).sum::<i64>(), 30);
    assert_eq!(m.queue_length, c.pending);
    assert!(m.builds.iter().all(|&(_, n)| n > 0), "{:?}", m.builds);
}

#[test]
fn a_2018_database_gains_its_counts_and_job_names() {
    // Rows as the original wrote them, at the schema before the one
    // migration that adds BuildCounts (found by its SQL, so that the
    // test survives renumbering), then that migration and the rest.
    let mine = MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE IF NOT EXISTS BuildCounts"))
        .unwrap();
    let conn = Connection::open_in_memory().unwrap();
    for sql in &MIGRATIONS[..mine] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", mine as i64)
        .unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO Evaluations (id, specification, revision) VALUES (1, 's', 'c');
         INSERT INTO Derivations VALUES ('/gnu/store/a-hello.drv', 1, 'hello', 'x', 'hello');
         INSERT INTO Derivations VALUES ('/gnu/store/a-sed.drv', 1, 'sed', 'x', 'sed');
         INSERT INTO Builds (derivation, evaluation, log, status)
           VALUES ('/gnu/store/a-hello.drv', 1, '', 0), ('/gnu/store/a-sed.drv', 1, '', 1);",
    )
    .unwrap();
    let db = Db::setup(conn).unwrap();
    assert_eq!(db.user_version().unwrap(), schema_version());
    counts_agree(&db);
    assert_eq!(db.job_names_matching("ell", 10).unwrap(), ["hello"]);
    assert_eq!(db.job_names_matching("e", 10).unwrap().len(), 2);
}

/// The names `JobNames` holds, sorted, and checks that they are exactly
/// the names of the derivations, that the trigram index agrees with
/// them once every name is indexed, and that their search finds them.
fn names_agree(db: &mut Db) -> Vec<String> {
    while db.index_job_names(2).unwrap() == 2 {}
    let col = |sql: &str| -> Vec<String> {
        let mut stmt = db.connection().prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let names = col("SELECT name FROM JobNames ORDER BY name");
    assert_eq!(
        names,
        col("SELECT DISTINCT job_name FROM Derivations ORDER BY 1")
    );
    db.connection()
        .execute_batch("INSERT INTO JobNamesText (JobNamesText) VALUES ('integrity-check')")
        .unwrap();
    for n in &names {
        assert!(db.job_names_matching(n, 100).unwrap().contains(n), "{n}");
    }
    names
}

#[test]
fn counts_and_names_follow_the_operators_actions() {
    let mut db = history(3, &["hello".into(), "sed".into()]);
    // Spec t (evaluation 3) alone has `t-only`.
    let e4 = db
        .register_evaluation("t", "c4", &[job("t-only", "t"), job("sed", "t")], 4)
        .unwrap();
    db.connection()
        .execute_batch(
            "UPDATE Builds SET status = 1 WHERE evaluation = 1;
             UPDATE Builds SET status = 0 WHERE evaluation = 2;",
        )
        .unwrap();
    counts_agree(&db);
    db.restart_build(BuildId(1)).unwrap();
    counts_agree(&db);
    db.restart_failed_builds(EvalId(1)).unwrap();
    counts_agree(&db);
    db.cancel_build(BuildId(1), 50).unwrap();
    counts_agree(&db);
    db.cancel_evaluation(e4, 50).unwrap();
    counts_agree(&db);
    assert_eq!(names_agree(&mut db), ["hello", "sed", "t-only"]);
    let before: i64 = db
        .connection()
        .query_row("SELECT id FROM JobNames WHERE name = 't-only'", [], |r| {
            r.get(0)
        })
        .unwrap();
    db.delete_specification("t").unwrap();
    while db.spec_deletion_chunk(1000).unwrap().is_some() {}
    counts_agree(&db);
    let left: i64 = db
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM BuildCounts WHERE evaluation NOT IN (SELECT id FROM Evaluations)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(names_agree(&mut db), ["hello", "sed"]);
    assert!(db.job_names_matching("t-only", 10).unwrap().is_empty());
    // The name again, under a new id: found before the loop indexes it
    // (the unindexed tail), then through the index.
    db.register_evaluation("s", "c5", &[job("t-only", "u")], 5)
        .unwrap();
    assert_eq!(db.job_names_matching("T-ONL", 10).unwrap(), ["t-only"]);
    assert_eq!(found(&db, "t-only", 10).len(), 1);
    assert_eq!(names_agree(&mut db), ["hello", "sed", "t-only"]);
    let after: i64 = db
        .connection()
        .query_row("SELECT id FROM JobNames WHERE name = 't-only'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(after > before);
}

#[test]
fn new_names_are_found_before_and_after_the_loop_indexes_them() {
    let mut db = history(1, &["hello".into()]);
    assert_eq!(db.index_job_names(10).unwrap(), 0);
    let jobs: Vec<JobRecord> = (0..5).map(|i| job(&format!("new-{i}"), "n")).collect();
    db.register_evaluation("s", "c2", &jobs, 2).unwrap();
    let indexed = |db: &Db| -> i64 {
        db.connection()
            .query_row(
                "SELECT COUNT(*) FROM JobNamesText WHERE JobNamesText MATCH 'new'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(indexed(&db), 0);
    assert_eq!(db.job_names_matching("new-", 10).unwrap().len(), 5);
    assert_eq!(found(&db, "new-3", 10).len(), 1);
    // A page at a time, the index and the tail never both give a name.
    assert_eq!(db.index_job_names(2).unwrap(), 2);
    assert_eq!(indexed(&db), 2);
    assert_eq!(db.job_names_matching("new-", 10).unwrap().len(), 5);
    assert_eq!(db.job_names_matching("new-", 3).unwrap().len(), 3);
    assert_eq!(db.index_job_names(2).unwrap(), 2);
    assert_eq!(db.index_job_names(2).unwrap(), 1);
    assert_eq!(db.index_job_names(2).unwrap(), 0);
    assert_eq!(indexed(&db), 5);
    assert_eq!(names_agree(&mut db).len(), 6);
}

/// A database of `evals` evaluations of the same `names` jobs, every
/// name indexed.
fn history(evals: usize, names: &[String]) -> Db {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("s"), spec("t")]).unwrap();
    for e in 0..evals {
        let jobs: Vec<JobRecord> = names.iter().map(|n| job(n, &format!("e{e}"))).collect();
        let s = if e % 3 == 2 { "t" } else { "s" };
        db.register_evaluation(s, &format!("c{e}"), &jobs, e as i64)
            .unwrap();
    }
    db.connection()
        .execute_batch("UPDATE Builds SET status = id % 2, stoptime = id")
        .unwrap();
    // Every name indexed, as the loop leaves them between evaluations.
    while db.index_job_names(1000).unwrap() == 1000 {}
    db
}

/// What a search must find: builds whose job name contains `needle`,
/// newest evaluation first, newest build first, read from every build.
fn expected(db: &Db, needle: &str, limit: usize) -> Vec<i64> {
    let mut stmt = db
        .connection()
        .prepare(
            "SELECT b.id FROM Builds b JOIN Derivations d
               ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             WHERE instr(lower(d.job_name), lower(?1)) > 0
             ORDER BY b.evaluation DESC, b.id DESC LIMIT ?2",
        )
        .unwrap();
    stmt.query_map(rusqlite::params![needle, limit as i64], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn found(db: &Db, needle: &str, limit: u32) -> Vec<i64> {
    let s = db.search_builds(needle, limit).unwrap();
    assert!(!s.stopped_early);
    s.builds.iter().map(|b| b.id.0).collect()
}

#[test]
fn search_finds_jobs_in_every_evaluation_by_either_way() {
    // Past NAME_LOOKUPS names, the search walks evaluations instead.
    let mut names: Vec<String> = (0..NAME_LOOKUPS + 40).map(|i| format!("pkg{i}")).collect();
    names.push("Hello-World".into());
    names.push("only-old".into());
    let mut db = history(4, &names);
    // A job of the oldest evaluation only, and one of the newest only.
    db.register_evaluation("s", "c9", &[job("fresh-arm", "n")], 9)
        .unwrap();
    db.connection()
        .execute_batch(
            "DELETE FROM Outputs; DELETE FROM Builds WHERE evaluation > 1 AND derivation LIKE '%only-old%';
             DELETE FROM Derivations WHERE evaluation > 1 AND job_name = 'only-old';",
        )
        .unwrap();
    for (needle, limit) in [
        ("only-old", 10),
        ("hello-w", 10),
        ("fresh", 3),
        ("pkg1", 10),  // a few hundred names: a lookup per name
        ("pkg", 100),  // every name: the walk over evaluations
        ("pkg", 5000), // more than the newest evaluation holds
        ("g9", 50),    // under three characters: the names scanned
        ("zzz", 10),
        ("\"", 10),
    ] {
        assert_eq!(
            found(&db, needle, limit),
            expected(&db, needle, limit as usize),
            "{needle}"
        );
    }
    assert!(found(&db, "pkg", 100).len() == 100);
}

#[test]
fn search_latest_finds_the_newest_match_in_any_evaluation() {
    use super::read::SearchQuery;
    let names: Vec<String> = ["hello", "hello-arm", "sed"].map(String::from).into();
    let db = history(5, &names);
    let latest = |q: SearchQuery| {
        db.search_latest(&q)
            .unwrap()
            .map(|b| (b.id.0, b.evaluation.0))
    };
    let q = |words: &[&str]| SearchQuery {
        words: words.iter().map(|w| w.to_string()).collect(),
        ..SearchQuery::default()
    };
    assert_eq!(latest(q(&["hello"])), Some((14, 5)));
    assert_eq!(latest(q(&["hel", "x"])), None);
    assert_eq!(latest(q(&["hel", "arm"])), Some((14, 5)));
    let spec_s = SearchQuery {
        specification: Some("s".into()),
        system: Some("x86_64-linux".into()),
        status: Some((1, 1)),
        ..q(&["hello"])
    };
    // Evaluation 5 (ids 13-15) belongs to spec s; 3 (ids 7-9) to t.
    assert_eq!(latest(spec_s), Some((13, 5)));
}

#[test]
fn an_evaluation_page_filters_by_job_through_the_names() {
    let names: Vec<String> = ["hello", "hello-arm", "sed", "grep"]
        .map(String::from)
        .into();
    let db = history(3, &names);
    let page = |job: Option<&str>, status: Option<(i64, i64)>, limit, offset| {
        let filter = EvalBuildFilter {
            status,
            job: job.map(String::from),
            weather: None,
        };
        let (builds, total) = db
            .evaluation_builds(EvalId(2), &filter, limit, offset)
            .unwrap();
        (builds.iter().map(|b| b.id.0).collect::<Vec<_>>(), total)
    };
    assert_eq!(page(None, None, 10, 0), (vec![5, 6, 7, 8], 4));
    assert_eq!(page(None, None, 2, 1), (vec![6, 7], 4));
    assert_eq!(page(Some("HELLO"), None, 10, 0), (vec![5, 6], 2));
    assert_eq!(page(Some("e"), Some((1, 1)), 10, 0), (vec![5, 7], 2));
    assert_eq!(page(Some("e"), None, 1, 1), (vec![6], 4));
    // By status, then id: the order of Builds_evaluation.
    assert_eq!(page(None, Some((0, 1)), 10, 0), (vec![6, 8, 5, 7], 4));
}

/// `sqlite_stat1` of the benchmark's 10,000,000 builds over 130
/// evaluations of 75,000 jobs, as ANALYZE wrote it.
const TEN_MILLION_STATS: &str = "ANALYZE; DELETE FROM sqlite_stat1;
     INSERT INTO sqlite_stat1 VALUES
       ('Builds', 'Builds_evaluation', '9750000 75000 15047'),
       ('Builds', 'Builds_finished', '9650148 5 1'),
       ('Builds', 'Builds_queue', '99852 49926 83 1'),
       ('Builds', 'Builds_derivation', '9750000 4 1'),
       ('Derivations', 'Derivations_job_name', '9750000 130 1'),
       ('Derivations', 'Derivations_evaluation', '9750000 75000'),
       ('Outputs', 'Outputs_path', '12750400 1'),
       ('Outputs', 'Outputs', '12750400 2 1'),
       ('BuildCounts', 'BuildCounts', '648 5 1'),
       ('JobNames', 'sqlite_autoindex_JobNames_1', '75000 1');
     ANALYZE sqlite_schema;";

#[test]
fn searches_and_evaluation_pages_walk_indexes_with_ten_million_builds() {
    let db = history(2, &["a".into(), "b".into()]);
    let conn = db.connection();
    conn.execute_batch(TEN_MILLION_STATS).unwrap();
    let plan = |sql: &str, n: usize| {
        let params: Vec<Option<i64>> = vec![Some(1); n];
        query_plan(conn, sql, rusqlite::params_from_iter(params))
    };
    let sorted = |p: &str| p.contains("TEMP B-TREE");
    let p = plan(search::derivations_of_name(false), 3);
    assert_eq!(
        p,
        "SEARCH d USING COVERING INDEX Derivations_job_name (job_name=? AND evaluation>?)"
    );
    let p = plan(search::derivations_of_name(true), 3);
    assert!(
        p.contains(
            "SEARCH d USING COVERING INDEX Derivations_job_name (job_name=? AND evaluation>?)"
        ) && p.contains(
            "SEARCH d USING COVERING INDEX Derivations_job_name_fresh (job_name=? AND evaluation>?)"
        ) && !sorts_beyond_arms(&p),
        "{p}"
    );
    let p = plan(search::filtered_derivations_of_name(false), 7);
    assert!(
        p.starts_with("SEARCH d USING INDEX Derivations_job_name (") && !sorted(&p),
        "{p}"
    );
    let p = plan(search::filtered_derivations_of_name(true), 7);
    assert!(
        p.contains("SEARCH d USING INDEX Derivations_job_name (")
            && p.contains("SEARCH d USING INDEX Derivations_job_name_fresh (")
            && !sorts_beyond_arms(&p),
        "{p}"
    );
    let p = plan(search::build_of_derivation_row(), 1);
    assert!(
        p.starts_with(
            "SEARCH d USING INTEGER PRIMARY KEY (rowid=?); \
             SEARCH b USING INTEGER PRIMARY KEY (rowid=?)"
        ),
        "{p}"
    );
    let p = plan(search::JOBS_OF_EVALUATION, 1);
    assert!(p.contains("Derivations_evaluation") && !sorted(&p), "{p}");
    let p = plan(search::build_of_job(), 4);
    assert!(
        p.contains("Builds_derivation (derivation=? AND evaluation=?)"),
        "{p}"
    );
    let p = plan(
        "SELECT name FROM JobNamesText WHERE JobNamesText MATCH ?1",
        1,
    );
    assert!(p.contains("VIRTUAL TABLE INDEX"), "{p}");
    let p = plan(search::UNINDEXED_NAMES_LIKE, 2);
    assert!(
        p.starts_with("SEARCH JobNames USING INTEGER PRIMARY KEY (rowid>?)") && !sorted(&p),
        "{p}"
    );
    for (sql, n) in [
        (dashboard::eval_page_sql(false), 5),
        (dashboard::eval_page_sql(true), 5),
    ] {
        let p = plan(&sql, n);
        assert!(!sorted(&p) && !p.contains("SCAN"), "{sql}: {p}");
    }
    let p = plan(
        "SELECT status, count FROM BuildCounts WHERE evaluation = ?1",
        1,
    );
    assert!(p.starts_with("SEARCH BuildCounts USING PRIMARY KEY"), "{p}");
    // A build's outputs: the rows are in the key's leaf (migration 20),
    // and a store item's build is in `Outputs_path` alone.
    let p = plan(&read::outputs_of_build_sql(), 1);
    assert!(
        p.starts_with("SEARCH o USING PRIMARY KEY (build=?)") && !sorted(&p),
        "{p}"
    );
    let p = plan(read::output_sql(), 1);
    assert!(
        p.contains("SEARCH o USING COVERING INDEX Outputs_path (path=?)")
            && p.contains("SEARCH o USING INDEX Outputs_path_fresh (<expr>=?)")
            && !scans_a_table(&p),
        "{p}"
    );
    let p = plan(dashboard::NEW_FAILURES_OF_EVALUATION, 1);
    assert_eq!(
        p,
        "SEARCH Builds USING COVERING INDEX Builds_new_failures (evaluation=? AND status>? AND status<?)"
    );
}

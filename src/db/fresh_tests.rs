//! Registration's fresh index entries and their move to the large
//! indexes (migration 22): every lookup answers the same before, during
//! and after the move, and writes by derivation reach builds in both.

use super::dashboard::EvalBuildFilter;
use super::read::{BuildFilter, JobFilter};
use super::*;

fn spec(name: &str) -> Specification {
    Specification {
        arguments: "((nonce . \"x\"))".into(),
        ..Specification::new(name, &format!("file:///srv/{name}.git"), "ci.scm", "jobs")
    }
}

/// Job `name` whose derivation is tagged `tag`, with an output and an
/// input (the derivation of job `input`, same tag).
fn job(name: &str, tag: &str, input: &str) -> JobRecord {
    let drv = |n: &str| format!("/gnu/store/{:a<32}-{n}.drv", format!("{n}{tag}"));
    JobRecord {
        job_name: name.into(),
        derivation: drv(name),
        system: "x86_64-linux".into(),
        nix_name: name.into(),
        outputs: vec![(
            "out".into(),
            format!("/gnu/store/{:b<32}-{name}", format!("{name}{tag}")),
        )],
        inputs: vec![drv(input)],
        ..JobRecord::default()
    }
}

fn count(db: &Db, sql: &str) -> i64 {
    db.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// What the lookups by derivation, job name and store item answer, as
/// text to compare.
fn answers(db: &Db, jobs: &[JobRecord], evals: &[EvalId]) -> Vec<String> {
    let mut out = Vec::new();
    for j in jobs {
        out.push(format!(
            "{:?}",
            db.build_of_derivation(&j.derivation).unwrap().map(|b| b.id)
        ));
        out.push(format!(
            "{:?}",
            db.outputs_of_derivation(&j.derivation).unwrap()
        ));
        let output = db.output(&j.outputs[0].1).unwrap();
        out.push(format!("{:?}", output.map(|o| (o.name, o.build.id))));
        let filter = BuildFilter {
            derivation: Some(j.derivation.clone()),
            ..Default::default()
        };
        let ids: Vec<_> = db
            .latest_builds(&filter, 10)
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        out.push(format!("{ids:?}"));
        let history = db
            .jobs_history("a", std::slice::from_ref(&j.job_name), 10)
            .unwrap();
        let history: Vec<_> = history
            .iter()
            .map(|(e, js)| {
                (
                    e.id,
                    js.iter().map(|j| (j.build, j.status)).collect::<Vec<_>>(),
                )
            })
            .collect();
        out.push(format!("{history:?}"));
        out.push(format!(
            "{:?}",
            db.derivation_pending(&j.derivation).unwrap()
        ));
    }
    for &eval in evals {
        let filter = JobFilter {
            evaluation: eval,
            names: None,
            system: None,
            after: None,
        };
        let all: Vec<_> = db
            .jobs(&filter, 100)
            .unwrap()
            .iter()
            .map(|j| (j.key, j.build))
            .collect();
        out.push(format!("{all:?}"));
        for j in jobs {
            let filter = JobFilter {
                names: Some(vec![j.job_name.clone()]),
                ..filter.clone()
            };
            let named: Vec<_> = db
                .jobs(&filter, 100)
                .unwrap()
                .iter()
                .map(|j| (j.key, j.build))
                .collect();
            out.push(format!("{named:?}"));
        }
        let (page, total) = db
            .evaluation_builds(eval, &EvalBuildFilter::default(), 100, 0)
            .unwrap();
        let page: Vec<_> = page.iter().map(|b| b.id).collect();
        out.push(format!("{page:?} {total}"));
    }
    let found: Vec<_> = db
        .search_builds("x", 100)
        .unwrap()
        .builds
        .iter()
        .map(|b| b.id)
        .collect();
    out.push(format!("{found:?}"));
    out
}

#[test]
fn lookups_answer_the_same_before_during_and_after_the_move() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let first = [
        job("x1", "-1", "x3"),
        job("x2", "-1", "x1"),
        job("x3", "-1", "x2"),
    ];
    // The next commit changes x2 only: x1 and x3 are built again under
    // the same derivation.
    let second = [
        job("x1", "-1", "x3"),
        job("x2", "-2", "x1"),
        job("x3", "-1", "x2"),
    ];
    let e1 = db.register_evaluation("a", "c1", &first, 1).unwrap();
    let e2 = db.register_evaluation("a", "c2", &second, 2).unwrap();
    let jobs: Vec<JobRecord> = first.iter().chain(&second[1..2]).cloned().collect();
    assert_eq!(db.fresh_builds().unwrap(), 6);
    for table in ["Derivations", "Outputs", "Inputs"] {
        assert_eq!(
            count(
                &db,
                &format!("SELECT COUNT(*) FROM {table} WHERE fresh = 0")
            ),
            0
        );
    }
    let before = answers(&db, &jobs, &[e1, e2]);
    assert!(before.iter().any(|a| a.contains("Some(")), "{before:?}");
    // A page of 3 builds: the first evaluation's move, the second's
    // stay fresh.
    assert_eq!(db.merge_fresh(3).unwrap(), 3);
    assert_eq!(db.fresh_builds().unwrap(), 3);
    assert_eq!(answers(&db, &jobs, &[e1, e2]), before);
    // A derivation built in both evaluations finishes in both, one
    // build moved and one fresh.
    let x1 = &first[0].derivation;
    let both: i64 = db
        .connection()
        .query_row(
            "SELECT COUNT(DISTINCT fresh) FROM Builds WHERE derivation = ?1",
            [x1],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(both, 2);
    assert_eq!(
        db.build_finished(x1, status::SUCCEEDED, None, 5).unwrap(),
        2
    );
    let after_finish = answers(&db, &jobs, &[e1, e2]);
    assert_ne!(after_finish, before);
    assert_eq!(db.merge_fresh(2).unwrap(), 2);
    assert_eq!(db.merge_fresh(2).unwrap(), 1);
    assert_eq!(db.merge_fresh(2).unwrap(), 0);
    assert_eq!(db.fresh_builds().unwrap(), 0);
    for table in ["Derivations", "Outputs", "Inputs", "Builds"] {
        assert_eq!(
            count(
                &db,
                &format!("SELECT COUNT(*) FROM {table} WHERE fresh = 1")
            ),
            0
        );
    }
    assert_eq!(answers(&db, &jobs, &[e1, e2]), after_finish);
    // Every entry is in a large index now, none in a fresh one.
    for (index, table, n) in [
        ("Builds_derivation", "Builds", 6),
        ("Derivations_job_name", "Derivations", 6),
        ("Outputs_path", "Outputs", 6),
        ("Inputs_derivation", "Inputs", 6),
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} INDEXED BY {index} WHERE fresh = 0");
        assert_eq!(count(&db, &sql), n, "{index}");
        let sql = format!("SELECT COUNT(*) FROM {table} INDEXED BY {index}_fresh WHERE fresh = 1");
        assert_eq!(count(&db, &sql), 0, "{index}_fresh");
    }
    // A new evaluation's rows are fresh again, above the mark.
    let third = [job("x1", "-3", "x3")];
    db.register_evaluation("a", "c3", &third, 3).unwrap();
    assert_eq!(db.fresh_builds().unwrap(), 1);
    assert_eq!(db.merge_fresh(4).unwrap(), 1);
    assert_eq!(db.fresh_builds().unwrap(), 0);
}

#[test]
fn a_deleted_job_names_last_derivation_takes_the_name_from_either_index() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let e1 = db
        .register_evaluation("a", "c1", &[job("old", "-1", "old")], 1)
        .unwrap();
    db.merge_fresh(10).unwrap();
    let e2 = db
        .register_evaluation("a", "c2", &[job("old", "-2", "old")], 2)
        .unwrap();
    let names = |db: &Db| count(db, "SELECT COUNT(*) FROM JobNames WHERE name = 'old'");
    // The moved row goes; the fresh one keeps the name.
    db.abandon_evaluation(e1).unwrap();
    assert_eq!(names(&db), 1);
    db.abandon_evaluation(e2).unwrap();
    assert_eq!(names(&db), 0);
}

/// Foreign keys hold after the migrations; Builds' key to Derivations
/// became one to Evaluations (migration 25): a build and its derivation
/// row share an id instead.
#[test]
fn foreign_keys_hold_after_the_migrations() {
    let db = Db::open_in_memory().unwrap();
    for sql in [
        "INSERT INTO Outputs (build, name, path) VALUES (7, 'out', '/gnu/store/x')",
        "INSERT INTO Derivations (rowid, derivation, evaluation, job_name, system, nix_name)
         VALUES (7, '/gnu/store/x.drv', 99, 'j', 's', 'n')",
        "INSERT INTO Builds (derivation, evaluation, log, status) VALUES ('x', 99, '', -2)",
    ] {
        let err = db.connection().execute(sql, []).unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{sql}: {err}");
    }
    let keys: Vec<String> = db
        .connection()
        .prepare("SELECT \"table\" FROM pragma_foreign_key_list('Builds')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    assert_eq!(keys, ["Evaluations"]);
}

/// The move's update of derivation rows seeks each one by its key, and a
/// lookup by input derivation reads both parts of its index: neither
/// may read a whole evaluation's rows or every input.
#[test]
fn the_move_and_the_input_lookups_seek() {
    let db = Db::open_in_memory().unwrap();
    let plan = query_plan(
        db.connection(),
        super::fresh::MERGE_DERIVATIONS,
        params![0, 100],
    );
    assert!(
        plan.contains("SEARCH Derivations USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
        "{plan}"
    );
    assert!(!scans_a_table(&plan), "{plan}");
    let plan = query_plan(
        db.connection(),
        super::queue::SCHEDULED_DEPENDENTS,
        ["/gnu/store/x.drv"],
    );
    assert!(
        plan.contains("Inputs_derivation (derivation=?)")
            && plan.contains("Inputs_derivation_fresh (<expr>=?)")
            && !scans_a_table(&plan),
        "{plan}"
    );
}

/// Every lookup by store item seeks both parts of its index: the fresh
/// part is keyed by an expression (migration 24), which SQLite uses only
/// when the query gives that expression in a form it matches.
#[test]
fn lookups_by_store_item_seek_the_fresh_expression_indexes() {
    let db = Db::open_in_memory().unwrap();
    let inputs = (
        "Inputs_derivation (derivation=?)",
        "Inputs_derivation_fresh (<expr>=?)",
    );
    let outputs = ("Outputs_path (path=?)", "Outputs_path_fresh (<expr>=?)");
    for (sql, (large, fresh), n) in [
        (super::queue::SCHEDULED_DEPENDENTS, inputs, 1),
        (super::queue::RESCHEDULE_DEPENDENTS, inputs, 1),
        (super::admin::DEPENDENTS_WITH_STATUS, inputs, 2),
        (super::gcroots::OUTPUT_LAST_SUCCESS, outputs, 1),
        (super::read::output_sql(), outputs, 1),
        (
            super::read::build_of_derivation(),
            (
                "Builds_derivation (derivation=?)",
                "Builds_derivation_fresh (<expr>=?)",
            ),
            1,
        ),
        (
            super::search::build_of_job(),
            (
                "Builds_derivation (derivation=? AND evaluation=?)",
                "Builds_derivation_fresh (<expr>=? AND evaluation=?)",
            ),
            4,
        ),
    ] {
        let values: [&dyn rusqlite::ToSql; 4] = [&"/gnu/store/x.drv", &1i64, &0i64, &3i64];
        let plan = query_plan(db.connection(), sql, &values[..n]);
        assert!(
            plan.contains(large) && plan.contains(fresh) && !scans_a_table(&plan),
            "{sql}: {plan}"
        );
    }
}

/// Migration 25 on a 2018 database: each derivation row takes its
/// build's id as rowid, whatever order the rows were written in; a row
/// of no build keeps a place of its own; the keys check.
#[test]
fn a_2018_databases_derivation_rows_take_their_builds_ids() {
    // Rows in another order than their builds, and one of no build.
    let path = database_2018(
        "m25",
        "INSERT INTO Specifications VALUES
               ('guix', 'https://example.org/guix.git', '.', 'ci.scm', 'jobs', '()', 'master',
                NULL, NULL, 0);
             INSERT INTO Evaluations (specification, revision) VALUES ('guix', 'a'), ('guix', 'b');
             INSERT INTO Derivations VALUES
               ('/gnu/store/ccc-z.drv', 2, 'z', 'x86_64-linux', 'z-1'),
               ('/gnu/store/aaa-x.drv', 1, 'x', 'x86_64-linux', 'x-1'),
               ('/gnu/store/ddd-lost.drv', 1, 'lost', 'x86_64-linux', 'lost-1'),
               ('/gnu/store/bbb-y.drv', 1, 'y', 'aarch64-linux', 'y-1');
             INSERT INTO Builds VALUES
               (5, '/gnu/store/aaa-x.drv', 1, '', 0, 1, 2, 3),
               (9, '/gnu/store/bbb-y.drv', 1, '', 1, 1, 2, 3),
               (12, '/gnu/store/ccc-z.drv', 2, '', -2, 1, 0, 0);",
    );
    let db = Db::open(&path).unwrap();
    let rows: Vec<(i64, String, i64, String)> = db
        .connection()
        .prepare("SELECT rowid, derivation, evaluation, job_name FROM Derivations ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    let row =
        |id: i64, drv: &str, eval: i64, name: &str| (id, drv.to_string(), eval, name.to_string());
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows[0].0 < 0, "the row of no build: {rows:?}");
    assert_eq!(
        (&rows[0].1[..], &rows[0].3[..]),
        ("/gnu/store/ddd-lost.drv", "lost")
    );
    assert_eq!(
        rows[1..],
        [
            row(5, "/gnu/store/aaa-x.drv", 1, "x"),
            row(9, "/gnu/store/bbb-y.drv", 1, "y"),
            row(12, "/gnu/store/ccc-z.drv", 2, "z"),
        ]
    );
    let build = db.build(BuildId(9)).unwrap().unwrap();
    assert_eq!(
        (&build.job_name[..], &build.system[..]),
        ("y", "aarch64-linux")
    );
    let violations: i64 = db
        .connection()
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(violations, 0);
    let parent: String = db
        .connection()
        .query_row(
            "SELECT \"table\" FROM pragma_foreign_key_list('Builds')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(parent, "Evaluations");
    let check: String = db
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Inputs (migration 26: a rowid table, no key) are each registered
/// once however often a job lists them, found by build and, fresh or
/// moved, by derivation; the fresh index's entries hold no derivation.
#[test]
fn inputs_are_registered_once_and_found_by_derivation() {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[spec("a")]).unwrap();
    let mut j = job("app", "1", "lib");
    j.inputs = vec![
        j.inputs[0].clone(),
        "/gnu/store/x-y.drv".into(),
        j.inputs[0].clone(),
    ];
    let lib = j.inputs[0].clone();
    db.register_evaluation("a", "c1", &[j], 1).unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Inputs WHERE build = 1"), 2);
    let dependents = |db: &Db| -> bool {
        db.connection()
            .query_row(super::queue::SCHEDULED_DEPENDENTS, [&lib], |r| r.get(0))
            .unwrap()
    };
    assert!(dependents(&db), "found in the fresh index");
    while db.merge_fresh(10).unwrap() == 10 {}
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Inputs WHERE fresh = 1"), 0);
    assert!(dependents(&db), "found in the large index");
    let columns: i64 = count(
        &db,
        "SELECT COUNT(*) FROM pragma_index_xinfo('Inputs_derivation_fresh') WHERE key = 0",
    );
    assert_eq!(columns, 1, "the rowid alone after the key");
}

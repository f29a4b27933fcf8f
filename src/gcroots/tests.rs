//! The planner against an in-memory database and a clock that is a
//! number: which roots are made, kept, expired and released, in chunks.

use super::*;
use crate::db::{JobRecord, status};
use crate::spec::Specification;

const TTL: u64 = 100;

fn drv(name: &str) -> String {
    format!("/gnu/store/{name:a<32}-{name}.drv")
}

fn out(name: &str) -> String {
    format!("/gnu/store/{name:b<32}-{name}")
}

fn job(name: &str) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: drv(name),
        system: "x86_64-linux".into(),
        nix_name: name.into(),
        outputs: vec![("out".into(), out(name))],
        ..JobRecord::default()
    }
}

fn db_with_spec() -> Db {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[Specification::new("s", "file:///s.git", "ci.scm", "jobs")])
        .unwrap();
    db
}

fn evaluate(db: &mut Db, commit: &str, names: &[&str], now: i64) -> crate::db::EvalId {
    let jobs: Vec<JobRecord> = names.iter().map(|n| job(n)).collect();
    db.register_evaluation("s", commit, &jobs, now).unwrap()
}

fn finish(db: &mut Db, p: &mut Planner, name: &str, st: i64, now: i64) {
    db.build_finished(&drv(name), crate::db::BuildStatus::of_column(st), None, now)
        .unwrap();
    p.finished(&drv(name), st == status::SUCCEEDED);
}

fn planner(now: i64) -> Planner {
    Planner::new(PathBuf::from("/var/cache/cuirass/gcroots"), TTL, now)
}

/// What one step asked: the roots to make and the items whose symlinks go.
#[derive(Debug, Default, PartialEq)]
struct Asked {
    make: Vec<RootRow>,
    remove: Vec<String>,
}

fn drain(p: &mut Planner, asked: &mut Asked) {
    while let Some(c) = p.poll_command() {
        match c {
            Command::Make(roots) => asked.make.extend(roots),
            Command::Remove(items) => asked.remove.extend(items),
        }
    }
}

/// One step; a chunk to make is made with every item valid.
fn step(p: &mut Planner, db: &mut Db, now: i64) -> Asked {
    let mut asked = Asked::default();
    p.step(db, now);
    drain(p, &mut asked);
    if !asked.make.is_empty() {
        let items: Vec<String> = asked.make.iter().map(|r| r.item.clone()).collect();
        p.made(db, &items, now);
        drain(p, &mut asked);
    }
    asked
}

/// Steps until the planner has nothing more to do now.
fn settle(p: &mut Planner, db: &mut Db, now: i64) -> Asked {
    let mut all = Asked::default();
    loop {
        let a = step(p, db, now);
        all.make.extend(a.make);
        all.remove.extend(a.remove);
        if !p.has_work() {
            return all;
        }
    }
}

fn items(roots: &[RootRow]) -> Vec<&str> {
    let mut v: Vec<&str> = roots.iter().map(|r| r.item.as_str()).collect();
    v.sort();
    v
}

fn rows(db: &Db) -> Vec<(String, Option<i64>)> {
    let mut stmt = db
        .connection()
        .prepare("SELECT item, expires FROM GcRoots ORDER BY item")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn a_pending_drv_is_kept_until_its_build_ends_and_a_success_keeps_its_outputs() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    let asked = settle(&mut p, &mut db, 1000);
    assert_eq!(items(&asked.make), [drv("a"), drv("b")]);
    assert!(asked.make.iter().all(|r| r.expires.is_none()));
    assert!(asked.remove.is_empty());
    assert_eq!(rows(&db), [(drv("a"), None), (drv("b"), None)]);

    finish(&mut db, &mut p, "a", status::SUCCEEDED.code(), 1010);
    let asked = settle(&mut p, &mut db, 1010);
    assert_eq!(asked.remove, [drv("a")]);
    assert_eq!(
        asked.make,
        [RootRow {
            item: out("a"),
            expires: Some(1010 + TTL as i64)
        }]
    );
    finish(&mut db, &mut p, "b", status::CANCELED.code(), 1011);
    let asked = settle(&mut p, &mut db, 1011);
    assert_eq!((asked.remove, asked.make), (vec![drv("b")], vec![]));
    assert_eq!(rows(&db), [(out("a"), Some(1110))]);

    // The API says the output is there while its root is.
    let id: i64 = db
        .connection()
        .query_row(
            "SELECT id FROM Builds WHERE derivation = ?1",
            [drv("a")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        db.build(BuildId(id)).unwrap().unwrap().kept_until,
        [Some(1110)]
    );
}

#[test]
fn a_drv_stays_while_another_evaluation_has_it_pending() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    let first = evaluate(&mut db, "c1", &["a"], 1000);
    evaluate(&mut db, "c2", &["a"], 1001);
    assert_eq!(
        settle(&mut p, &mut db, 1001).make.len(),
        1,
        "one root per item"
    );
    db.connection()
        .execute(
            "UPDATE Builds SET status = 4 WHERE evaluation = ?1",
            [first],
        )
        .unwrap();
    p.finished(&drv("a"), false);
    assert_eq!(settle(&mut p, &mut db, 1002), Asked::default());
    assert_eq!(rows(&db), [(drv("a"), None)]);
}

#[test]
fn an_output_expires_after_the_ttl_from_its_latest_success() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a"], 1000);
    finish(&mut db, &mut p, "a", status::SUCCEEDED.code(), 1000);
    settle(&mut p, &mut db, 1000);
    assert_eq!(rows(&db), [(out("a"), Some(1100))]);
    // The same derivation again, built (settled) later: the root is
    // extended in place, with nothing to make.
    evaluate(&mut db, "c2", &["a"], 1050);
    settle(&mut p, &mut db, 1050);
    finish(&mut db, &mut p, "a", status::SUCCEEDED.code(), 1060);
    let asked = settle(&mut p, &mut db, 1060);
    assert_eq!((asked.make, asked.remove), (vec![], vec![drv("a")]));
    assert_eq!(rows(&db), [(out("a"), Some(1160))]);
    assert_eq!(settle(&mut p, &mut db, 1159), Asked::default());
    let asked = settle(&mut p, &mut db, 1160);
    assert_eq!(asked.remove, [out("a")]);
    assert_eq!(rows(&db), []);
    let id: i64 = db
        .connection()
        .query_row("SELECT MAX(id) FROM Builds", [], |r| r.get(0))
        .unwrap();
    assert_eq!(db.build(BuildId(id)).unwrap().unwrap().kept_until, [None]);
}

#[test]
fn at_start_up_recent_successes_get_roots_and_older_ones_do_not() {
    let mut db = db_with_spec();
    let mut earlier = planner(0);
    evaluate(&mut db, "c1", &["old", "recent", "failed"], 500);
    finish(&mut db, &mut earlier, "old", status::SUCCEEDED.code(), 800);
    finish(
        &mut db,
        &mut earlier,
        "recent",
        status::SUCCEEDED.code(),
        950,
    );
    finish(&mut db, &mut earlier, "failed", status::FAILED.code(), 960);
    // A new process, 1000 s in: the ttl covers successes after 900.
    let mut p = planner(1000);
    let asked = settle(&mut p, &mut db, 1000);
    assert_eq!(
        asked.make,
        [RootRow {
            item: out("recent"),
            expires: Some(1050)
        }]
    );
}

#[test]
fn chunks_are_bounded_and_one_is_in_flight_at_a_time() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    let names: Vec<String> = (0..450).map(|i| format!("j{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    evaluate(&mut db, "c1", &names, 1000);
    p.step(&mut db, 1000);
    let Some(Command::Make(first)) = p.poll_command() else {
        panic!("no chunk")
    };
    assert_eq!(first.len(), MAKE_CHUNK);
    // Nothing more until the daemon has answered.
    p.step(&mut db, 1000);
    assert_eq!(p.poll_command(), None);
    assert!(p.busy() && !p.has_work());
    let valid: Vec<String> = first.iter().map(|r| r.item.clone()).collect();
    p.made(&mut db, &valid, 1000);
    let sizes: Vec<usize> = std::iter::from_fn(|| {
        let a = step(&mut p, &mut db, 1000);
        (!a.make.is_empty()).then_some(a.make.len())
    })
    .collect();
    let mut expected = vec![MAKE_CHUNK; (450 - MAKE_CHUNK) / MAKE_CHUNK];
    expected.push((450 - MAKE_CHUNK) % MAKE_CHUNK);
    assert_eq!(sizes, expected);
    assert_eq!(rows(&db).len(), 450);
    assert!(!p.busy());
}

#[test]
fn items_the_daemon_does_not_have_get_no_row_and_their_symlinks_go() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "gone"], 1000);
    p.step(&mut db, 1000);
    assert!(matches!(p.poll_command(), Some(Command::Make(r)) if r.len() == 2));
    p.made(&mut db, &[drv("a")], 1000);
    assert_eq!(p.poll_command(), Some(Command::Remove(vec![drv("gone")])));
    assert_eq!(rows(&db), [(drv("a"), None)]);
}

#[test]
fn a_chunk_the_daemon_refused_is_retried_later_and_its_symlinks_go() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a"], 1000);
    p.step(&mut db, 1000);
    assert!(matches!(p.poll_command(), Some(Command::Make(_))));
    p.failed("cannot reach guix-daemon", 1000);
    assert_eq!(p.poll_command(), Some(Command::Remove(vec![drv("a")])));
    assert!(!p.busy(), "a one-shot run does not wait for the retry");
    assert_eq!(
        step(&mut p, &mut db, 1000 + RETRY_AFTER - 1),
        Asked::default()
    );
    let asked = step(&mut p, &mut db, 1000 + RETRY_AFTER);
    assert_eq!(items(&asked.make), [drv("a")]);
    assert_eq!(rows(&db).len(), 1);
}

#[test]
fn the_sweep_releases_what_no_hook_told_of() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    settle(&mut p, &mut db, 1000);
    // A newer evaluation cancels `a` in SQL, which no hook reports.
    db.connection()
        .execute(
            "UPDATE Builds SET status = 4 WHERE derivation = ?1",
            [drv("a")],
        )
        .unwrap();
    assert_eq!(settle(&mut p, &mut db, 1001), Asked::default());
    let asked = settle(&mut p, &mut db, 1000 + SWEEP_EVERY);
    assert_eq!(asked.remove, [drv("a")]);
    assert_eq!(rows(&db), [(drv("b"), None)]);
}

#[test]
fn restarts_are_rescanned_and_deleted_builds_release_their_outputs() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    finish(&mut db, &mut p, "a", status::SUCCEEDED.code(), 1000);
    finish(&mut db, &mut p, "b", status::FAILED.code(), 1000);
    settle(&mut p, &mut db, 1000);
    assert_eq!(rows(&db), [(out("a"), Some(1100))]);
    // A restart: `b` is pending again, behind the walk's cursor.
    db.connection()
        .execute(
            "UPDATE Builds SET status = -2 WHERE derivation = ?1",
            [drv("b")],
        )
        .unwrap();
    assert_eq!(settle(&mut p, &mut db, 1001), Asked::default());
    p.rescan(1001);
    let asked = settle(&mut p, &mut db, 1001);
    assert_eq!(
        (items(&asked.make), asked.remove),
        (vec![drv("b").as_str()], vec![])
    );
    // `a`'s rows deleted (the retention's work): its output's root goes.
    db.connection()
        .execute_batch("DELETE FROM Outputs WHERE build = 1; DELETE FROM Builds WHERE id = 1;")
        .unwrap();
    p.recheck([out("a")]);
    let asked = settle(&mut p, &mut db, 1002);
    assert_eq!(asked.remove, [out("a")]);
    assert_eq!(rows(&db), [(drv("b"), None)]);
}

#[test]
fn a_shorter_ttl_after_a_restart_takes_effect_at_the_first_sweep() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a"], 1000);
    finish(&mut db, &mut p, "a", status::SUCCEEDED.code(), 1000);
    settle(&mut p, &mut db, 1000);
    let mut p = Planner::new(PathBuf::from("/r"), 10, 1020);
    let asked = settle(&mut p, &mut db, 1020);
    assert_eq!(asked.remove, [out("a")]);
}

#[test]
fn symlinks_no_root_accounts_for_are_stale() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    settle(&mut p, &mut db, 1000);
    evaluate(&mut db, "c2", &["c"], 1001);
    p.step(&mut db, 1001);
    assert!(matches!(p.poll_command(), Some(Command::Make(_))));
    let name = |item: &str| item.rsplit('/').next().unwrap().to_string();
    let links = vec![
        (name(&drv("a")), drv("a")),
        // In flight: made, not yet recorded.
        (name(&drv("c")), drv("c")),
        // Left by an earlier run.
        (name(&drv("z")), drv("z")),
        // A root's item under another name.
        ("other".to_string(), drv("b")),
    ];
    assert_eq!(
        p.stale_links(&db, &links),
        [name(&drv("z")), "other".to_string()]
    );
}

#[test]
fn links_are_named_after_store_items_only() {
    let p = planner(0);
    assert_eq!(
        p.link_of("/gnu/store/abc-hello"),
        Some(PathBuf::from("/var/cache/cuirass/gcroots/abc-hello"))
    );
    for bad in [
        "hello",
        "/gnu/store/",
        "/gnu/store/..",
        "/gnu/store/.",
        "/x\0y/a\0b",
    ] {
        assert_eq!(p.link_of(bad), None, "{bad:?}");
    }
}

#[test]
fn a_failing_database_pauses_the_planner_instead_of_spinning() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a"], 1000);
    db.connection().execute_batch("DROP TABLE GcRoots").unwrap();
    p.step(&mut db, 1000);
    assert_eq!(p.poll_command(), None);
    assert!(!p.has_work() && !p.busy(), "a one-shot run is not held");
    db.connection()
        .execute_batch("CREATE TABLE GcRoots (item TEXT PRIMARY KEY, expires INTEGER) WITHOUT ROWID; CREATE INDEX GcRoots_expires ON GcRoots (expires) WHERE expires IS NOT NULL;")
        .unwrap();
    assert_eq!(
        step(&mut p, &mut db, 1000 + RETRY_AFTER - 1),
        Asked::default()
    );
    let asked = settle(&mut p, &mut db, 1000 + RETRY_AFTER);
    assert_eq!(items(&asked.make), [drv("a")]);
}

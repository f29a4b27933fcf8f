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

fn finish(db: &mut Db, p: &mut Planner, name: &str, st: crate::db::BuildStatus, now: i64) {
    db.build_finished(&drv(name), st, None, now).unwrap();
    p.finished(&drv(name), st == status::SUCCEEDED);
}

/// A planner that makes each chunk at once (as at the end of a one-shot
/// run); `lingering` tests the wait.
fn planner(now: i64) -> Planner {
    let mut p = Planner::new(PathBuf::from("/var/cache/cuirass/gcroots"), TTL, now);
    p.flush();
    p
}

/// The root file of a chunk of these items, named after them.
fn file_of(items: &[String]) -> String {
    let names: Vec<&str> = items
        .iter()
        .map(|i| i.rsplit('-').next().unwrap())
        .collect();
    format!("/gnu/store/{}-cuirass-gc-roots", names.join("+"))
}

/// What steps asked: the roots to make and the root files whose symlinks
/// go.
#[derive(Debug, Default, PartialEq)]
struct Asked {
    make: Vec<RootRow>,
    remove: Vec<String>,
}

fn drain(p: &mut Planner, asked: &mut Asked) {
    while let Some(c) = p.poll_command() {
        match c {
            Command::Make(roots) => asked.make.extend(roots),
            Command::Remove(files) => asked.remove.extend(files),
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
        p.made(db, Some(&file_of(&items)), &items, now);
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

/// The root file that holds `item`'s row.
fn held_by(db: &Db, item: &str) -> Option<String> {
    db.connection()
        .query_row("SELECT root FROM GcRoots WHERE item = ?1", [item], |r| {
            r.get(0)
        })
        .ok()
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
    let drvs = file_of(&[drv("a"), drv("b")]);
    assert_eq!(held_by(&db, &drv("a")), Some(drvs.clone()), "one file");
    assert_eq!(held_by(&db, &drv("b")), Some(drvs.clone()));

    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1010);
    let asked = settle(&mut p, &mut db, 1010);
    assert_eq!(held_by(&db, &drv("a")), None, "released");
    assert!(asked.remove.is_empty(), "the file still holds b's .drv");
    assert_eq!(
        asked.make,
        [RootRow {
            item: out("a"),
            expires: Some(1010 + TTL as i64)
        }]
    );
    finish(&mut db, &mut p, "b", status::CANCELED, 1011);
    let asked = settle(&mut p, &mut db, 1011);
    assert_eq!((asked.remove, asked.make), (vec![drvs], vec![]));
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
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1000);
    settle(&mut p, &mut db, 1000);
    assert_eq!(rows(&db), [(out("a"), Some(1100))]);
    // The same derivation again, built (settled) later: the root is
    // extended in place, with nothing to make.
    evaluate(&mut db, "c2", &["a"], 1050);
    settle(&mut p, &mut db, 1050);
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1060);
    let asked = settle(&mut p, &mut db, 1060);
    assert_eq!(
        (asked.make, asked.remove),
        (vec![], vec![file_of(&[drv("a")])])
    );
    assert_eq!(rows(&db), [(out("a"), Some(1160))]);
    assert_eq!(settle(&mut p, &mut db, 1159), Asked::default());
    let asked = settle(&mut p, &mut db, 1160);
    assert_eq!(asked.remove, [file_of(&[out("a")])]);
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
    finish(&mut db, &mut earlier, "old", status::SUCCEEDED, 800);
    finish(&mut db, &mut earlier, "recent", status::SUCCEEDED, 950);
    finish(&mut db, &mut earlier, "failed", status::FAILED, 960);
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
fn chunks_gather_up_to_group_max_while_one_is_in_flight() {
    let mut db = db_with_spec();
    let mut p = Planner::new(PathBuf::from("/r"), TTL, 1000);
    let names: Vec<String> = (0..2500).map(|i| format!("j{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    evaluate(&mut db, "c1", &names, 1000);
    // A page of the walk per step; the chunk is full at the second.
    p.step(&mut db, 1000);
    assert_eq!(p.poll_command(), None);
    assert!(p.has_work());
    p.step(&mut db, 1000);
    let Some(Command::Make(first)) = p.poll_command() else {
        panic!("no chunk")
    };
    assert_eq!(first.len(), GROUP_MAX);
    // The next one gathers meanwhile, and waits for the daemon's answer.
    p.step(&mut db, 1000);
    p.step(&mut db, 1000);
    assert_eq!(p.poll_command(), None);
    assert!(p.busy() && !p.has_work());
    let valid: Vec<String> = first.iter().map(|r| r.item.clone()).collect();
    p.made(
        &mut db,
        Some("/gnu/store/f1-cuirass-gc-roots"),
        &valid,
        1000,
    );
    let mut sizes = Vec::new();
    for now in [1000, 1000, 1000, 1000 + LINGER - 1, 1000 + LINGER] {
        let a = step(&mut p, &mut db, now);
        if !a.make.is_empty() {
            sizes.push((now, a.make.len()));
        }
    }
    // The last 500 waited LINGER seconds for company.
    assert_eq!(sizes, [(1000, GROUP_MAX), (1000 + LINGER, 500)]);
    assert_eq!(rows(&db).len(), 2500);
    assert!(!p.busy());
}

#[test]
fn drvs_and_outputs_gather_apart_for_a_while() {
    let mut db = db_with_spec();
    let mut p = Planner::new(PathBuf::from("/r"), TTL, 1000);
    evaluate(&mut db, "c1", &["a", "b", "c"], 1000);
    assert_eq!(step(&mut p, &mut db, 1000), Asked::default());
    assert!(p.busy() && !p.has_work(), "a one-shot run waits");
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1001);
    assert_eq!(step(&mut p, &mut db, 1001), Asked::default());
    let asked = step(&mut p, &mut db, 1000 + LINGER);
    assert_eq!(items(&asked.make), [drv("a"), drv("b"), drv("c")]);
    // `a` ended while its root was gathering: no row.
    assert_eq!(rows(&db), [(drv("b"), None), (drv("c"), None)]);
    finish(&mut db, &mut p, "b", status::SUCCEEDED, 1002);
    let asked = step(&mut p, &mut db, 1001 + LINGER);
    assert_eq!(items(&asked.make), [out("a"), out("b")]);
    assert_eq!(held_by(&db, &out("a")), held_by(&db, &out("b")));
    // A one-shot run with nothing else left does not wait.
    finish(&mut db, &mut p, "c", status::SUCCEEDED, 1004);
    p.flush();
    assert!(p.has_work());
    let asked = settle(&mut p, &mut db, 1004);
    assert_eq!(items(&asked.make), [out("c")]);
    assert_eq!(asked.remove, [file_of(&[drv("a"), drv("b"), drv("c")])]);
}

#[test]
fn a_file_goes_with_its_last_row_and_an_item_wanted_again_gets_another() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1000);
    db.build_finished(&drv("b"), status::SUCCEEDED, None, 1001)
        .unwrap();
    p.finished(&drv("b"), true);
    settle(&mut p, &mut db, 1001);
    let both = file_of(&[out("a"), out("b")]);
    assert_eq!(held_by(&db, &out("a")), Some(both.clone()));
    // `a`'s ttl has passed: its row goes (the API no longer says it is
    // kept), the file stays for `b`.
    let asked = settle(&mut p, &mut db, 1100);
    assert_eq!(asked, Asked::default());
    assert_eq!(rows(&db), [(out("b"), Some(1101))]);
    // Built again: a new chunk, not the old file.
    evaluate(&mut db, "c2", &["a"], 1100);
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1100);
    settle(&mut p, &mut db, 1100);
    assert_eq!(held_by(&db, &out("a")), Some(file_of(&[out("a")])));
    let asked = settle(&mut p, &mut db, 1101);
    assert_eq!(asked.remove, [both]);
    assert_eq!(rows(&db), [(out("a"), Some(1200))]);
}

#[test]
fn items_the_daemon_does_not_have_get_no_row_and_a_file_holding_nothing_goes() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "gone"], 1000);
    p.step(&mut db, 1000);
    assert!(matches!(p.poll_command(), Some(Command::Make(r)) if r.len() == 2));
    p.made(&mut db, Some("/gnu/store/f-x"), &[drv("a")], 1000);
    assert_eq!(p.poll_command(), None);
    assert_eq!(rows(&db), [(drv("a"), None)]);
    assert_eq!(held_by(&db, &drv("a")).as_deref(), Some("/gnu/store/f-x"));
    // None valid: the daemon made no file.
    evaluate(&mut db, "c2", &["gone2"], 1001);
    p.step(&mut db, 1001);
    assert!(matches!(p.poll_command(), Some(Command::Make(r)) if r.len() == 1));
    p.made(&mut db, None, &[], 1001);
    assert_eq!((p.poll_command(), rows(&db).len()), (None, 1));
    // Valid, but no longer wanted (the build ended meanwhile): the file
    // holds nothing, its symlink goes.
    evaluate(&mut db, "c3", &["ended"], 1002);
    p.step(&mut db, 1002);
    assert!(matches!(p.poll_command(), Some(Command::Make(_))));
    db.build_finished(&drv("ended"), status::FAILED, None, 1002)
        .unwrap();
    p.made(&mut db, Some("/gnu/store/f-y"), &[drv("ended")], 1002);
    assert_eq!(
        p.poll_command(),
        Some(Command::Remove(vec!["/gnu/store/f-y".into()]))
    );
    assert_eq!(rows(&db), [(drv("a"), None)]);
}

#[test]
fn a_chunk_the_daemon_refused_is_retried_later_and_its_symlink_goes() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a"], 1000);
    p.step(&mut db, 1000);
    assert!(matches!(p.poll_command(), Some(Command::Make(_))));
    p.failed(
        "the daemon closed the connection",
        Some("/gnu/store/f-x"),
        1000,
    );
    assert_eq!(
        p.poll_command(),
        Some(Command::Remove(vec!["/gnu/store/f-x".into()])),
        "its symlink may have been made"
    );
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
    assert!(asked.remove.is_empty(), "the file still holds b's .drv");
    assert_eq!(rows(&db), [(drv("b"), None)]);
}

#[test]
fn restarts_are_rescanned_and_deleted_builds_release_their_outputs() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1000);
    finish(&mut db, &mut p, "b", status::FAILED, 1000);
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
    assert_eq!(asked.remove, [file_of(&[out("a")])]);
    assert_eq!(rows(&db), [(drv("b"), None)]);
}

#[test]
fn a_shorter_ttl_after_a_restart_takes_effect_at_the_first_sweep() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a"], 1000);
    finish(&mut db, &mut p, "a", status::SUCCEEDED, 1000);
    settle(&mut p, &mut db, 1000);
    let mut p = Planner::new(PathBuf::from("/r"), 10, 1020);
    let asked = settle(&mut p, &mut db, 1020);
    assert_eq!(asked.remove, [file_of(&[out("a")])]);
}

#[test]
fn symlinks_no_row_is_held_by_are_stale() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    evaluate(&mut db, "c1", &["a", "b"], 1000);
    settle(&mut p, &mut db, 1000);
    let held = file_of(&[drv("a"), drv("b")]);
    let making = "/gnu/store/m-cuirass-gc-roots";
    let name = |item: &str| item.rsplit('/').next().unwrap().to_string();
    let links = vec![
        (name(&held), held.clone()),
        // In flight: made, its rows not yet written.
        (name(making), making.to_string()),
        // Left by an earlier run.
        (name(&drv("z")), drv("z")),
        // A held file under another name.
        ("other".to_string(), held),
    ];
    assert_eq!(
        p.stale_links(&db, &links, Some(making)),
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
fn items_not_directly_in_the_store_get_no_root_and_hold_up_nothing() {
    let mut db = db_with_spec();
    let mut p = planner(1000);
    let mut odd = job("odd");
    odd.outputs = vec![
        ("out".into(), "/tmp/odd".into()),
        ("doc".into(), format!("{}/doc", out("odd"))),
        ("lib".into(), out("odd")),
    ];
    db.register_evaluation("s", "c1", &[odd], 1000).unwrap();
    finish(&mut db, &mut p, "odd", status::SUCCEEDED, 1000);
    let asked = settle(&mut p, &mut db, 1000);
    assert_eq!(items(&asked.make), [out("odd")]);
    assert_eq!(rows(&db), [(out("odd"), Some(1100))]);
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
        .execute_batch(
            "CREATE TABLE GcRoots (item TEXT PRIMARY KEY, expires INTEGER, root TEXT NOT NULL)
               WITHOUT ROWID;
             CREATE INDEX GcRoots_expires ON GcRoots (expires) WHERE expires IS NOT NULL;
             CREATE INDEX GcRoots_root ON GcRoots (root);",
        )
        .unwrap();
    assert_eq!(
        step(&mut p, &mut db, 1000 + RETRY_AFTER - 1),
        Asked::default()
    );
    let asked = settle(&mut p, &mut db, 1000 + RETRY_AFTER);
    assert_eq!(items(&asked.make), [drv("a")]);
}

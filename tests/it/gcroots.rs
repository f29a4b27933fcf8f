//! GC roots and retention against the real guix-daemon (Guix 1.5.0):
//! `guix gc --delete` of this test's own store items (never a whole
//! collection: other tests share the store) must refuse what cuirass
//! keeps and succeed once cuirass lets go.

use crate::support::*;
use rusqlite::{Connection, OptionalExtension};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// `guix gc --delete PATHS…` inside the root, as an operator would.
fn gc_delete(setup: &Setup, paths: &[&str]) -> Output {
    let out = setup
        .guix
        .command("guix")
        .args(["gc", "--delete"])
        .args(paths)
        .output()
        .unwrap();
    eprintln!(
        "guix gc --delete {paths:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_refused(setup: &Setup, path: &str) {
    let out = gc_delete(setup, &[path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("still alive"),
        "guix gc deleted {path}, which cuirass keeps: {stderr}"
    );
    assert!(setup.host_path(path).exists(), "{path} is gone");
}

fn assert_deleted(setup: &Setup, path: &str) {
    let out = gc_delete(setup, &[path]);
    assert!(out.status.success(), "guix gc kept {path}");
    assert!(!setup.host_path(path).exists(), "{path} is still there");
}

fn roots_dir(setup: &Setup) -> PathBuf {
    setup.cache.join("gcroots")
}

/// The store file whose references hold `item`, from its row.
fn root_file(conn: &Connection, item: &str) -> Option<String> {
    conn.query_row("SELECT root FROM GcRoots WHERE item = ?1", [item], |r| {
        r.get(0)
    })
    .optional()
    .unwrap_or(None)
}

/// Whether the symlink of root file `file` is there (its target is a
/// path inside the root, so it dangles from the host).
fn file_linked(setup: &Setup, file: &str) -> bool {
    let link = roots_dir(setup).join(file.rsplit('/').next().unwrap());
    std::fs::read_link(link).is_ok_and(|t| t.to_str() == Some(file))
}

/// Whether `item` has a row and the symlink of its root file is there.
fn linked(setup: &Setup, conn: &Connection, item: &str) -> bool {
    root_file(conn, item).is_some_and(|f| file_linked(setup, &f))
}

fn rooted(conn: &Connection, item: &str) -> bool {
    root_file(conn, item).is_some()
}

/// What the daemon says `file` refers to.
fn references(setup: &Setup, file: &str) -> Vec<String> {
    let out = setup
        .guix
        .command("guix")
        .args(["gc", "--references", file])
        .output()
        .unwrap();
    assert!(out.status.success(), "guix gc --references {file}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn db(setup: &Setup) -> Connection {
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// (build id, derivation, status) of job `job` in the spec's only
/// evaluation.
fn build_of(conn: &Connection, job: &str) -> Option<(i64, String, i64)> {
    conn.query_row(
        "SELECT b.id, b.derivation, b.status FROM Builds b JOIN Derivations d
           ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         WHERE d.job_name = ?1",
        [job],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
    .unwrap_or(None)
}

fn output_of(conn: &Connection, build: i64) -> String {
    conn.query_row(
        "SELECT path FROM Outputs WHERE build = ?1 AND name = 'out'",
        [build],
        |r| r.get(0),
    )
    .unwrap()
}

/// A queued build's `.drv` survives `guix gc --delete` until the build
/// ends; a succeeded build's output survives it until the ttl has
/// passed, and the API stops saying it is available then.
#[test]
fn a_queued_drv_and_a_fresh_output_survive_guix_gc_until_released() {
    require_daemon();
    let setup = Setup::new("gcroots");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/gcroots-jobs.scm")]);
    let name = format!("gcroots-{nonce}");
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            &name,
            &repo.url(),
            "ci.scm",
            "gcroots-jobs",
            &format!("(nonce . \"{nonce}\") (seconds . \"15\")")
        )
    ));
    let running = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--interval",
            "100000",
            "--ttl",
            "10s",
            // One build at a time, so that `queued` waits behind `slow`.
            "--max-builds",
            "1",
        ],
        &[],
    );
    let port = running.port();
    let conn = db(&setup);

    // `slow` builds; `queued` waits its turn, its `.drv` rooted.
    let mut queued = None;
    wait_until(
        Duration::from_secs(120),
        "queued's root while slow builds",
        || {
            queued = build_of(&conn, "queued");
            let slow = build_of(&conn, "slow");
            matches!((&queued, slow), (Some((_, drv, -2)), Some((_, _, -1))) if rooted(&conn, drv))
        },
    );
    let (queued_id, queued_drv, _) = queued.unwrap();
    assert!(linked(&setup, &conn, &queued_drv));
    // One file holds the evaluation's .drvs.
    let drvs_file = root_file(&conn, &queued_drv).unwrap();
    assert!(references(&setup, &drvs_file).contains(&queued_drv));
    assert_refused(&setup, &queued_drv);
    assert_eq!(build_of(&conn, "queued").unwrap().2, -2, "still queued");

    // `slow` succeeded: its output is rooted until 10 s after.
    let mut slow = None;
    wait_until(Duration::from_secs(120), "slow's output rooted", || {
        slow = build_of(&conn, "slow").filter(|s| s.2 == 0);
        slow.as_ref()
            .is_some_and(|s| rooted(&conn, &output_of(&conn, s.0)))
    });
    let (slow_id, slow_drv, _) = slow.unwrap();
    let slow_out = output_of(&conn, slow_id);
    let out_file = root_file(&conn, &slow_out).unwrap();
    assert_ne!(out_file, drvs_file, ".drvs and outputs go apart");
    assert!(file_linked(&setup, &out_file));
    assert!(references(&setup, &out_file).contains(&slow_out));
    assert_refused(&setup, &slow_out);
    let (_, b) = get_json(port, &format!("/build/{slow_id}"));
    assert_eq!(b["buildoutputs"]["out"]["path"], slow_out.as_str());
    assert_eq!(b["buildoutputs"]["out"]["available"], true, "{b}");
    assert!(
        !rooted(&conn, &slow_drv),
        "a finished build's .drv is let go"
    );

    // `queued` failed: its `.drv` is let go, and guix gc may take it.
    wait_until(Duration::from_secs(60), "queued's root released", || {
        build_of(&conn, "queued").is_some_and(|q| q.2 == 1) && !rooted(&conn, &queued_drv)
    });
    assert!(
        !file_linked(&setup, &drvs_file),
        "its file's symlink is gone with the last .drv held"
    );
    // The daemon's worker held it as a temporary root while the build
    // slot's connection stayed open; cuirass closes an idle one after 2 s.
    wait_until(
        Duration::from_secs(20),
        "guix gc to take queued's .drv",
        || gc_delete(&setup, &[&queued_drv]).status.success(),
    );
    assert!(!setup.host_path(&queued_drv).exists());
    let (_, q) = get_json(port, &format!("/build/{queued_id}"));
    assert_eq!(q["buildoutputs"]["out"]["available"], false);

    // The ttl has passed: the output is no longer claimed, and goes.
    wait_until(
        Duration::from_secs(60),
        "slow's output root to expire",
        || !rooted(&conn, &slow_out),
    );
    assert!(!file_linked(&setup, &out_file));
    let (_, b) = get_json(port, &format!("/build/{slow_id}"));
    assert_eq!(b["buildoutputs"]["out"]["available"], false, "{b}");
    let (code, _, body) = get_raw(port, &format!("/build/{slow_id}/details"));
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("guix gc may have deleted it"));
    assert_deleted(&setup, &slow_out);
    let log = running.log_text();
    assert!(!log.contains("GC root(s) not made"), "{log}");
    drop(running);
    assert_sound(&setup.db);
}

/// One evaluation of `spec` (a 2018 spec of keyword-jobs.scm with
/// `nonce`) at the repository's current commit; its id.
fn evaluate(setup: &Setup, spec: &str, repo: &Repo, nonce: &str) -> i64 {
    one_shot_of(setup, spec, repo, "cuirass-jobs", nonce);
    let conn = db(setup);
    conn.query_row(
        "SELECT MAX(id) FROM Evaluations WHERE specification = ?1",
        [spec],
        |r| r.get(0),
    )
    .unwrap()
}

fn rows_of(conn: &Connection, eval: i64) -> i64 {
    let q = |sql: &str| -> i64 { conn.query_row(sql, [eval], |r| r.get(0)).unwrap() };
    let of_builds = |table: &str| {
        q(&format!(
            "SELECT COUNT(*) FROM {table} WHERE build IN (SELECT id FROM Builds WHERE evaluation = ?1)"
        ))
    };
    q("SELECT COUNT(*) FROM Evaluations WHERE id = ?1")
        + q("SELECT COUNT(*) FROM Builds WHERE evaluation = ?1")
        + q("SELECT COUNT(*) FROM Derivations WHERE evaluation = ?1")
        + q("SELECT COUNT(*) FROM Checkouts WHERE evaluation = ?1")
        + of_builds("Outputs")
        + of_builds("Inputs")
        + of_builds("BuildAttempts")
        + of_builds("BuildProducts")
}

/// Succeeded outputs of an evaluation's builds.
fn outputs_of(conn: &Connection, eval: i64) -> Vec<String> {
    query_rows::<String>(
        conn,
        &format!(
            "SELECT o.path FROM Outputs o JOIN Builds b ON b.id = o.build
             WHERE b.evaluation = {eval} AND b.status = 0 ORDER BY o.path"
        ),
    )
    .into_iter()
    .map(|mut r| r.remove(0))
    .collect()
}

fn build_ids(conn: &Connection, eval: i64) -> Vec<i64> {
    query_rows::<i64>(
        conn,
        &format!("SELECT id FROM Builds WHERE evaluation = {eval} ORDER BY id"),
    )
    .into_iter()
    .map(|mut r| r.remove(0))
    .collect()
}

/// `--retention` deletes an old evaluation with every row, log copy and
/// GC root of it, and keeps each spec's latest evaluation and an old one
/// with a pending build.
#[test]
fn retention_deletes_old_evaluations_and_nothing_else() {
    require_daemon();
    let setup = Setup::new("retention");
    // One repository each: a one-shot run polls every spec, and an
    // unchanged commit makes no evaluation.
    let jobs = [("ci.scm", "jobs/keyword-jobs.scm")];
    let repo_s = Repo::named(setup.tmp.path(), "s", &jobs);
    let repo_t = Repo::named(setup.tmp.path(), "t", &jobs);
    let s = format!("ret-s-{}", nonce());
    let t = format!("ret-t-{}", nonce());
    let old = evaluate(&setup, &s, &repo_s, &nonce());
    repo_s.commit("second");
    let latest = evaluate(&setup, &s, &repo_s, &nonce());
    let t_old = evaluate(&setup, &t, &repo_t, &nonce());
    repo_t.commit("second");
    let t_latest = evaluate(&setup, &t, &repo_t, &nonce());
    let evals: Vec<i64> = query_rows::<i64>(&db(&setup), "SELECT id FROM Evaluations ORDER BY id")
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect();
    assert_eq!(evals, [old, latest, t_old, t_latest]);

    let conn = db(&setup);
    let logs = setup.tmp.path().join("build-logs");
    let old_builds = build_ids(&conn, old);
    let old_outputs = outputs_of(&conn, old);
    let latest_outputs = outputs_of(&conn, latest);
    assert_eq!(old_outputs.len(), 3, "ok-1, ok-2 and dep-on-ok");
    for out in old_outputs.iter().chain(&latest_outputs) {
        assert!(rooted(&conn, out), "one-shot roots {out}");
        assert!(linked(&setup, &conn, out));
    }
    let old_files: Vec<String> = old_outputs
        .iter()
        .filter_map(|o| root_file(&conn, o))
        .collect();
    let copies = |ids: &[i64]| {
        ids.iter()
            .filter(|id| logs.join(format!("{id}.log.gz")).exists())
            .count()
    };
    assert!(copies(&old_builds) >= 3, "the old builds' logs were copied");
    // An earlier run and a product of an old build, with its log copy.
    let first = old_builds[0];
    conn.execute_batch(&format!(
        "INSERT INTO BuildAttempts (build, attempt, status, starttime, stoptime, log)
           VALUES ({first}, 1, 1, 1, 2, '');
         INSERT INTO BuildProducts (build, type, file_size, path)
           VALUES ({first}, 'file', 1, '/gnu/store/x');"
    ))
    .unwrap();
    let attempt_log = logs.join(format!("{first}.attempt-1.log.gz"));
    std::fs::write(&attempt_log, b"").unwrap();
    // t's old evaluation has a build pending again; t is inactive, so
    // nothing builds it.
    let pending: i64 = conn
        .query_row(
            "SELECT MIN(id) FROM Builds WHERE evaluation = ?1",
            [t_old],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE Builds SET status = -2, starttime = 0, stoptime = 0 WHERE id = ?1",
        [pending],
    )
    .unwrap();
    conn.execute(
        "UPDATE Specifications SET is_active = 0 WHERE repo_name = ?1",
        [&t],
    )
    .unwrap();
    let kept: Vec<(i64, i64)> = [latest, t_old, t_latest]
        .iter()
        .map(|&e| (e, rows_of(&conn, e)))
        .collect();
    assert!(rows_of(&conn, old) > 20);

    std::thread::sleep(Duration::from_secs(2));
    let running = Running::start(&setup, &["--interval", "100000", "--retention", "1s"], &[]);
    wait_until(
        Duration::from_secs(60),
        "the old evaluation deleted",
        || rows_of(&conn, old) == 0 && old_outputs.iter().all(|o| !rooted(&conn, o)),
    );
    // Its log copies, its attempt's, and its roots' symlinks are gone.
    assert_eq!(copies(&old_builds), 0);
    assert!(!attempt_log.exists());
    for file in &old_files {
        assert!(!file_linked(&setup, file), "{file}'s symlink");
    }
    // Nothing else: the latest evaluations, the pending one, their roots.
    let now: Vec<(i64, i64)> = kept.iter().map(|&(e, _)| (e, rows_of(&conn, e))).collect();
    assert_eq!(now, kept);
    assert!(
        copies(&build_ids(&conn, latest)) >= 3,
        "the latest builds' logs stay"
    );
    for out in &latest_outputs {
        assert!(linked(&setup, &conn, out), "{out}");
    }
    let log = running.log_text();
    assert!(
        log.contains(&format!("evaluation {old} deleted")),
        "the deletion is logged: {log}"
    );
    drop(running);
    assert_sound(&setup.db);
    // The daemon agrees: the old outputs may go, the latest may not.
    assert_deleted(&setup, &old_outputs[0]);
    assert_refused(&setup, &latest_outputs[0]);
}

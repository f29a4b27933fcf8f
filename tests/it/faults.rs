//! Faults outside cuirass: a database that cannot be created or written,
//! a full disk, an unusable cache directory, a git remote that vanishes or
//! rewrites its history, and no guix-daemon at start-up.  Each ends with
//! the database checked and a following good commit processed, against
//! the real daemon.

use crate::daemon::PrivateDaemon;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finished builds of completed evaluations of `commit` (of any spec:
/// two repositories with the same files have the same commits).
fn finished_builds_at(setup: &Setup, commit: &str) -> i64 {
    finished_builds_of(setup, "%", commit)
}

fn finished_builds_of(setup: &Setup, spec: &str, commit: &str) -> i64 {
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
         WHERE e.revision = ?1 AND e.specification LIKE ?2 AND e.status = 0
           AND b.status >= 0",
        [commit, spec],
        |r| r.get(0),
    )
    .unwrap_or(-1)
}

fn head(repo: &Repo) -> String {
    git(&repo.dir, &["rev-parse", "HEAD"])
}

fn keyword_spec(setup: &Setup, name: &str, repo: &Repo) -> PathBuf {
    setup.write_spec(&spec_text(
        name,
        &repo.url(),
        "ci.scm",
        "cuirass-jobs",
        &nonce(),
    ))
}

#[test]
fn a_database_path_that_cannot_be_created_is_a_clear_error() {
    let setup = Setup::new("dbpath");
    let file = setup.tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let db = file.join("sub").join("cuirass.db");
    let out = Command::new(env!("CARGO_BIN_EXE_cuirass"))
        .args(["--one-shot", "--database"])
        .arg(&db)
        .arg("--cache-directory")
        .arg(&setup.cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create"), "{stderr}");
    assert!(stderr.contains("a-file/sub"), "{stderr}");
}

/// `chmod` does not stop root, so the file is made immutable with
/// `chattr +i`, which does; the test is skipped where chattr is refused
/// (tmpfs, some overlay file systems).
#[test]
fn a_read_only_database_is_a_clear_error_and_the_commit_is_processed_later() {
    require_daemon();
    let setup = Setup::new("dbro");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = keyword_spec(&setup, "ro", &repo);
    assert!(
        setup
            .one_shot(&["-S", spec.to_str().unwrap()])
            .status
            .success()
    );
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&setup.db)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: chattr +i is not available here");
        return;
    }
    std::fs::write(repo.dir.join("NEWS"), "second\n").unwrap();
    let second = repo.commit("second");
    let out = setup.one_shot(&[]);
    assert!(chattr("-i"), "chattr -i");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("readonly") || stderr.contains("read-only"),
        "{stderr}"
    );
    assert_sound(&setup.db);
    assert!(setup.one_shot(&[]).status.success());
    assert_eq!(finished_builds_at(&setup, &second), 5);
    assert_sound(&setup.db);
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }

    /// Writes a file until the disk is full, then frees `room` bytes.
    fn fill(&self, room: u64) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(room)).unwrap();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk is simulated with a real one: the database lives on a small
/// tmpfs that the test fills up (mounting needs root; skipped otherwise).
#[test]
fn a_full_disk_is_logged_and_the_commit_is_evaluated_once_there_is_room() {
    require_daemon();
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut setup = Setup::new("diskfull");
    let Some(disk) = SmallDisk::mount(&setup.tmp.path().join("small"), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    setup.db = disk.0.join("cuirass.db");
    // The repository appears only once the disk is full, so that the
    // evaluation is what hits the full disk.
    let url = format!("file://{}", setup.tmp.path().join("repo").display());
    let nonce = nonce();
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "disk",
            &url,
            "ci.scm",
            "sleepy-jobs",
            &format!("(nonce . \"{nonce}\") (seconds . \"0\") (count . 150)")
        )
    ));
    let mut cuirass = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "2"],
        &[],
    );
    wait_until(Duration::from_secs(30), "a failed fetch", || {
        cuirass.log_text().contains("fetch failed")
    });
    // Room for the evaluation to begin, not for its 150 jobs: the disk
    // fills up half-way through registering them.
    let filler = disk.fill(48 * 1024);
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    wait_until(Duration::from_secs(60), "the full-disk error", || {
        cuirass.log_text().contains("database or disk is full")
    });
    assert!(cuirass.child.try_wait().unwrap().is_none(), "cuirass died");
    std::fs::remove_file(filler).unwrap();
    let commit = head(&repo);
    wait_until(Duration::from_secs(120), "the commit's builds", || {
        finished_builds_at(&setup, &commit) == 150
    });
    cuirass.signal(libc::SIGTERM);
    assert!(cuirass.wait_for_exit(Duration::from_secs(5)).is_some());
    assert_sound(&setup.db);
    let conn = setup.db();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Evaluations"), 1);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Builds"), 150);
}

/// Builds that finish while another process holds the database's write
/// lock past the busy timeout (as a full disk also refuses writes):
/// their status changes are kept and written once the lock is gone;
/// none stays pending.
#[test]
fn status_changes_that_cannot_be_written_are_kept_and_written_later() {
    require_daemon();
    let setup = Setup::new("locked-status");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/sleepy-jobs.scm")]);
    let nonce = nonce();
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "locked",
            &repo.url(),
            "ci.scm",
            "sleepy-jobs",
            &format!("(nonce . \"{nonce}\") (seconds . \"2\") (count . 4)")
        )
    ));
    let mut cuirass = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "60"],
        &[],
    );
    wait_until(Duration::from_secs(60), "a build started", || {
        cuirass.log_text().contains("builds: started")
    });
    let lock = setup.db();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    wait_until(Duration::from_secs(60), "a status change kept", || {
        cuirass.log_text().contains("kept, to be written again")
    });
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    assert!(cuirass.child.try_wait().unwrap().is_none(), "cuirass died");
    let commit = head(&repo);
    wait_until(Duration::from_secs(60), "the builds recorded", || {
        finished_builds_at(&setup, &commit) == 4
    });
    cuirass.signal(libc::SIGTERM);
    assert!(cuirass.wait_for_exit(Duration::from_secs(5)).is_some());
    assert_sound(&setup.db);
    assert_eq!(count(&setup.db(), "SELECT COUNT(*) FROM Builds"), 4);
}

#[test]
fn an_unusable_cache_directory_fails_that_spec_only() {
    require_daemon();
    let setup = Setup::new("cachedir");
    let tmp = setup.tmp.path();
    let a = Repo::named(tmp, "a", &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let b = Repo::named(tmp, "b", &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let nonce = nonce();
    let args = format!("(nonce . \"{nonce}\")");
    let spec = setup.write_spec(&format!(
        "(list {}\n{})\n",
        spec_entry("a", &a.url(), "ci.scm", "cuirass-jobs", &args),
        spec_entry("b", &b.url(), "ci.scm", "cuirass-jobs", &args)
    ));
    // A file where a's checkout directory should be: even root cannot
    // create a directory there.
    std::fs::create_dir_all(&setup.cache).unwrap();
    std::fs::write(setup.cache.join("a"), "in the way").unwrap();
    // One-shot fails naming the spec whose work could not be done, after
    // doing the other's.
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec=\"a\" fetch failed"), "{stderr}");
    assert!(
        stderr.contains("cuirass: spec \"a\": fetch failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&setup.cache.join("a").display().to_string()),
        "{stderr}"
    );
    assert_eq!(finished_builds_of(&setup, "b", &head(&b)), 5);
    assert_eq!(
        count(
            &setup.db(),
            "SELECT COUNT(*) FROM Evaluations WHERE specification = 'a'"
        ),
        0
    );
    assert_sound(&setup.db);
    std::fs::remove_file(setup.cache.join("a")).unwrap();
    assert!(setup.one_shot(&[]).status.success());
    assert_eq!(finished_builds_of(&setup, "a", &head(&a)), 5);
    assert_sound(&setup.db);
}

#[test]
fn a_vanished_remote_is_retried_and_a_rewritten_history_is_followed() {
    require_daemon();
    let setup = Setup::new("remote");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = keyword_spec(&setup, "rm", &repo);
    let first = head(&repo);
    let mut cuirass = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "1"],
        &[],
    );
    wait_until(Duration::from_secs(60), "the first commit's builds", || {
        finished_builds_at(&setup, &first) == 5
    });
    let gone = setup.tmp.path().join("repo.gone");
    std::fs::rename(&repo.dir, &gone).unwrap();
    wait_until(Duration::from_secs(20), "a failed fetch", || {
        cuirass.log_text().contains("spec=\"rm\" fetch failed")
    });
    assert!(cuirass.child.try_wait().unwrap().is_none(), "cuirass died");
    std::fs::rename(&gone, &repo.dir).unwrap();
    // Rewrite history: the first commit is replaced by another one, which
    // does not descend from what cuirass fetched before.
    std::fs::write(repo.dir.join("NEWS"), "rewritten\n").unwrap();
    git(&repo.dir, &["add", "-A"]);
    git(&repo.dir, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let rewritten = head(&repo);
    assert_ne!(rewritten, first);
    wait_until(
        Duration::from_secs(60),
        "the rewritten commit's builds",
        || finished_builds_at(&setup, &rewritten) == 5,
    );
    cuirass.signal(libc::SIGTERM);
    assert!(cuirass.wait_for_exit(Duration::from_secs(5)).is_some());
    assert_sound(&setup.db);
}

#[test]
fn without_a_daemon_at_start_daemon_mode_waits_and_then_builds() {
    require_daemon();
    if !is_root() {
        eprintln!("skipped: starting a private guix-daemon needs root");
        return;
    }
    let setup = Setup::new("nodaemon-wait");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = keyword_spec(&setup, "wait", &repo);
    let socket = setup.tmp.path().join("later.sock");
    let socket_str = socket.to_str().unwrap().to_string();
    let mut cuirass = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "1"],
        &[("GUIX_DAEMON_SOCKET", &socket_str)],
    );
    wait_until(Duration::from_secs(20), "a postponed evaluation", || {
        cuirass.log_text().contains("postponed")
    });
    assert!(cuirass.log_text().contains("will keep retrying"));
    assert!(cuirass.child.try_wait().unwrap().is_none(), "cuirass died");
    let _daemon = PrivateDaemon::start(setup.guix, &socket);
    let commit = head(&repo);
    wait_until(Duration::from_secs(90), "the builds", || {
        finished_builds_at(&setup, &commit) == 5
    });
    cuirass.signal(libc::SIGTERM);
    assert!(cuirass.wait_for_exit(Duration::from_secs(5)).is_some());
    assert_sound(&setup.db);
    assert_eq!(count(&setup.db(), "SELECT COUNT(*) FROM Evaluations"), 1);
}

//! Refs that vanish or move upstream: a spec's branch, tag or commit gone
//! is an error naming it at each poll, with no new evaluation, and the
//! spec recovers by itself when the ref comes back or is renamed (even
//! `a` → `a/b`, which collides with a stale cached `a`).  No build is
//! involved: the evaluator is a script printing no job, and the daemon a
//! socket that is never answered (cuirass only checks that it connects).

use crate::support::*;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A spec file, one entry per `(name, ref line)`, e.g.
/// `("a", r#"(#:branch . "feature")"#)`.
fn write_specs(setup: &Setup, repo: &Repo, specs: &[(&str, &str)]) -> PathBuf {
    let entries: Vec<String> = specs
        .iter()
        .map(|(name, ref_line)| {
            spec_entry(name, &repo.url(), "ci.scm", "jobs", "")
                .replace(r#"(#:branch . "master")"#, ref_line)
        })
        .collect();
    setup.write_spec(&format!("(list {})\n", entries.join("\n")))
}

/// What cuirass needs besides the repository: an evaluator that finds no
/// job, and a socket to stand for guix-daemon.
struct NoBuilds {
    evaluator: String,
    socket: PathBuf,
    _listener: UnixListener,
}

impl NoBuilds {
    fn new(setup: &Setup) -> NoBuilds {
        let socket = setup.tmp.path().join("daemon.sock");
        NoBuilds {
            evaluator: fake_evaluator(setup.tmp.path(), "no-jobs", "echo '(done 0)'"),
            _listener: UnixListener::bind(&socket).unwrap(),
            socket,
        }
    }

    fn command(&self, setup: &Setup) -> Command {
        let mut cmd = setup.command();
        cmd.args(["--evaluator", &self.evaluator])
            .env("GUIX_DAEMON_SOCKET", &self.socket);
        cmd
    }

    /// A one-shot run: whether it succeeded (a fetch that could not be
    /// done fails it), and its log.
    fn one_shot(&self, setup: &Setup, extra: &[&str]) -> (bool, String) {
        let out = self
            .command(setup)
            .arg("--one-shot")
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("cuirass --one-shot {extra:?}: {}\n{stderr}", out.status);
        (out.status.success(), stderr)
    }
}

/// The commits evaluated for `spec`, oldest first (none while the
/// database is not there yet).
fn evaluated(setup: &Setup, spec: &str) -> Vec<String> {
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let Ok(mut stmt) = conn.prepare(
        "SELECT revision FROM Evaluations WHERE specification = ?1 AND status = 0 ORDER BY id",
    ) else {
        return Vec::new();
    };
    stmt.query_map([spec], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_deleted_branch_is_an_error_at_each_poll_until_it_comes_back() {
    let setup = Setup::new("branch-gone");
    let repo = Repo::new(setup.tmp.path(), &[]);
    let first = repo.commit("first");
    git(&repo.dir, &["branch", "feature"]);
    let spec = write_specs(&setup, &repo, &[("gone", r#"(#:branch . "feature")"#)]);
    let no_builds = NoBuilds::new(&setup);
    let socket = no_builds.socket.to_str().unwrap();
    let cuirass = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--interval",
            "1",
            "--evaluator",
            &no_builds.evaluator,
        ],
        &[("GUIX_DAEMON_SOCKET", socket)],
    );
    wait_until(Duration::from_secs(20), "the first evaluation", || {
        evaluated(&setup, "gone") == [first.as_str()]
    });
    git(&repo.dir, &["branch", "-D", "feature"]);
    // A new commit elsewhere must not be taken for the branch's.
    repo.commit("on master");
    wait_until(Duration::from_secs(20), "three failed polls", || {
        cuirass
            .log_text()
            .matches("has no branch 'feature'")
            .count()
            >= 3
    });
    assert_eq!(evaluated(&setup, "gone"), [first.as_str()]);
    let back = repo.commit("back");
    git(&repo.dir, &["branch", "feature"]);
    wait_until(Duration::from_secs(20), "the branch's new commit", || {
        evaluated(&setup, "gone") == [first.as_str(), back.as_str()]
    });
    drop(cuirass);
    assert_sound(&setup.db);
}

#[test]
fn a_branch_renamed_to_a_subdirectory_is_followed_and_a_sibling_spec_is_undisturbed() {
    let setup = Setup::new("branch-moved");
    let repo = Repo::new(setup.tmp.path(), &[]);
    let first = repo.commit("first");
    git(&repo.dir, &["branch", "feature"]);
    git(&repo.dir, &["branch", "other"]);
    let no_builds = NoBuilds::new(&setup);
    let specs = [
        ("moved", r#"(#:branch . "feature")"#),
        ("sibling", r#"(#:branch . "other")"#),
    ];
    let spec = write_specs(&setup, &repo, &specs);
    assert!(
        no_builds
            .one_shot(&setup, &["-S", spec.to_str().unwrap()])
            .0
    );
    assert_eq!(evaluated(&setup, "moved"), [first.as_str()]);

    git(&repo.dir, &["branch", "-m", "feature", "feature/x"]);
    git(&repo.dir, &["checkout", "-q", "other"]);
    let other = repo.commit("on other");
    // One-shot fails, naming the spec whose ref is gone; the sibling runs.
    let (ok, stderr) = no_builds.one_shot(&setup, &[]);
    assert!(!ok);
    assert!(stderr.contains("has no branch 'feature'"), "{stderr}");
    assert_eq!(evaluated(&setup, "moved"), [first.as_str()]);
    assert_eq!(evaluated(&setup, "sibling"), [first.clone(), other.clone()]);

    git(&repo.dir, &["checkout", "-q", "feature/x"]);
    let renamed = repo.commit("on feature/x");
    let specs = [
        ("moved", r#"(#:branch . "feature/x")"#),
        ("sibling", r#"(#:branch . "other")"#),
    ];
    let spec = write_specs(&setup, &repo, &specs);
    let (ok, stderr) = no_builds.one_shot(&setup, &["-S", spec.to_str().unwrap()]);
    assert!(ok && !stderr.contains("fetch failed"), "{stderr}");
    assert_eq!(evaluated(&setup, "moved"), [first, renamed]);
    assert_eq!(evaluated(&setup, "sibling").len(), 2);
    assert_sound(&setup.db);
}

#[test]
fn a_deleted_tag_and_an_unreachable_commit_are_errors_until_they_come_back() {
    let setup = Setup::new("tag-gone");
    let repo = Repo::new(setup.tmp.path(), &[]);
    let first = repo.commit("first");
    git(&repo.dir, &["tag", "v1"]);
    let no_builds = NoBuilds::new(&setup);
    let pin = format!(r#"(#:commit . "{first}")"#);
    let spec = write_specs(
        &setup,
        &repo,
        &[("tag", r#"(#:tag . "v1")"#), ("pin", pin.as_str())],
    );
    assert!(
        no_builds
            .one_shot(&setup, &["-S", spec.to_str().unwrap()])
            .0
    );
    assert_eq!(evaluated(&setup, "tag"), [first.as_str()]);
    assert_eq!(evaluated(&setup, "pin"), [first.as_str()]);

    // History rewritten: nothing upstream has `first` any more.
    git(&repo.dir, &["tag", "-d", "v1"]);
    git(
        &repo.dir,
        &[
            "commit",
            "-q",
            "--amend",
            "--allow-empty",
            "-m",
            "rewritten",
        ],
    );
    let rewritten = git(&repo.dir, &["rev-parse", "HEAD"]);
    let (ok, stderr) = no_builds.one_shot(&setup, &[]);
    assert!(!ok);
    assert!(stderr.contains("has no tag 'v1'"), "{stderr}");
    assert!(
        stderr.contains(&format!("has no commit '{first}' any more")),
        "{stderr}"
    );
    assert_eq!(evaluated(&setup, "tag"), [first.as_str()]);

    git(&repo.dir, &["tag", "v1"]);
    git(&repo.dir, &["branch", "old", &first]);
    let (ok, stderr) = no_builds.one_shot(&setup, &[]);
    assert!(ok && !stderr.contains("fetch failed"), "{stderr}");
    assert_eq!(evaluated(&setup, "tag"), [first.clone(), rewritten]);
    assert_eq!(evaluated(&setup, "pin"), [first]);
    assert_sound(&setup.db);
}

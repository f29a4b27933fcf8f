//! Git checkouts with git2.  libgit2 blocks, so the event loop never calls
//! this directly: it runs `cuirass internal-fetch …` as a child process
//! (see [`child_args`]) and reads the commit from its standard output.

use git2::{FetchOptions, Oid, Repository};
use std::path::Path;

/// What to check out, from the specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Branch(String),
    Tag(String),
    Commit(String),
}

impl Target {
    pub fn of(spec: &crate::spec::Specification) -> Target {
        if let Some(c) = &spec.commit {
            Target::Commit(c.clone())
        } else if let Some(t) = &spec.tag {
            Target::Tag(t.clone())
        } else {
            Target::Branch(spec.branch.clone().unwrap_or_else(|| "master".into()))
        }
    }

    fn kind_and_value(&self) -> (&'static str, &str) {
        match self {
            Target::Branch(b) => ("branch", b),
            Target::Tag(t) => ("tag", t),
            Target::Commit(c) => ("commit", c),
        }
    }
}

pub const SUBCOMMAND: &str = "internal-fetch";

/// Arguments for the fetch child: `cuirass internal-fetch URL DIR KIND VALUE`.
pub fn child_args(url: &str, dir: &Path, target: &Target) -> Vec<String> {
    let (kind, value) = target.kind_and_value();
    vec![
        SUBCOMMAND.into(),
        url.into(),
        dir.to_string_lossy().into_owned(),
        kind.into(),
        value.into(),
    ]
}

/// Entry point of the fetch child; prints `commit SHA` on success.
pub fn child_main(args: &[String]) -> i32 {
    let target = match args {
        [_, _, _, kind, value] => match kind.as_str() {
            "branch" => Target::Branch(value.clone()),
            "tag" => Target::Tag(value.clone()),
            "commit" => Target::Commit(value.clone()),
            _ => {
                eprintln!("internal-fetch: unknown target kind '{kind}'");
                return 2;
            }
        },
        _ => {
            eprintln!("usage: cuirass internal-fetch URL DIR branch|tag|commit VALUE");
            return 2;
        }
    };
    match fetch(&args[1], Path::new(&args[2]), &target) {
        Ok(oid) => {
            println!("commit {oid}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Reads the commit the fetch child printed.
pub fn parse_child_output(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let sha = l.strip_prefix("commit ")?.trim();
        (sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_string())
    })
}

fn open_or_init(url: &str, dir: &Path) -> Result<Repository, String> {
    let ctx = |e: git2::Error| format!("{}: {}", dir.display(), e.message());
    let repo = match Repository::open(dir) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            Repository::init(dir).map_err(ctx)?
        }
    };
    let same_url = repo
        .find_remote("origin")
        .ok()
        .map(|r| r.url().is_ok_and(|u| u == url));
    match same_url {
        Some(true) => {}
        Some(false) => repo.remote_set_url("origin", url).map_err(ctx)?,
        None => {
            repo.remote("origin", url).map_err(ctx)?;
        }
    }
    Ok(repo)
}

/// Takes the cache `dir`'s own lock (`DIR.fetch-lock`, an flock the
/// kernel drops when its holder dies), then removes git's `*.lock` files
/// in it: whoever made them died holding them (a fetch child killed with
/// cuirass, `kill -9`), and libgit2 would refuse every later fetch
/// ("failed to lock file … for writing") until someone deleted them by
/// hand.  Two processes sharing a cache wait for each other here.
fn lock_cache(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.with_extension("fetch-lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    remove_stale_locks(&dir.join(".git"));
    Ok(file)
}

/// Removes every `*.lock` file under `dir` (git's lock files: `index.lock`,
/// `HEAD.lock`, `packed-refs.lock`, `refs/…/NAME.lock`, `config.lock`).
fn remove_stale_locks(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // Objects hold no locks and are many: not walked.
        if kind.is_dir() && entry.file_name() != "objects" {
            remove_stale_locks(&path);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
            eprintln!("removing a stale git lock {}", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Fetches `target` from `url` into the repository at `dir` and checks it
/// out (detached), returning the commit.  The cache must answer as a fresh
/// clone would: refs gone upstream are pruned before anything is fetched,
/// so that a deleted branch or tag is an error rather than a stale commit
/// used forever, and a ref renamed `a` → `a/b` does not collide with the
/// stale `a`.  Refspecs are forced so that a rewritten history (a
/// force-push) simply moves to the new tip.
pub fn fetch(url: &str, dir: &Path, target: &Target) -> Result<Oid, String> {
    let _lock = lock_cache(dir)?;
    let repo = open_or_init(url, dir)?;
    let mut remote = repo
        .find_remote("origin")
        .map_err(|e| format!("{url}: {}", e.message()))?;
    let fetching = |e: git2::Error| format!("fetching {url}: {}", e.message());
    // One connection: the fetch below reuses it.
    remote.connect(git2::Direction::Fetch).map_err(fetching)?;
    let advertised: Vec<(String, Oid)> = remote
        .list()
        .map_err(fetching)?
        .iter()
        .map(|h| (h.name().to_string(), h.oid()))
        .collect();
    prune(&repo, &advertised)
        .map_err(|e| format!("{}: pruning: {}", dir.display(), e.message()))?;
    let upstream = |name: &str| advertised.iter().any(|(n, _)| n == name);
    let refspecs: Vec<String> = match target {
        Target::Branch(b) if !upstream(&format!("refs/heads/{b}")) => {
            return Err(format!(
                "{url} has no branch '{b}' (deleted or renamed upstream?)"
            ));
        }
        Target::Tag(t) if !upstream(&format!("refs/tags/{t}")) => {
            return Err(format!("{url} has no tag '{t}' (deleted upstream?)"));
        }
        Target::Branch(b) => vec![format!("+refs/heads/{b}:refs/remotes/origin/{b}")],
        Target::Tag(t) => vec![format!("+refs/tags/{t}:refs/tags/{t}")],
        Target::Commit(_) => vec![
            "+refs/heads/*:refs/remotes/origin/*".into(),
            "+refs/tags/*:refs/tags/*".into(),
        ],
    };
    let mut opts = FetchOptions::new();
    opts.download_tags(git2::AutotagOption::None);
    remote
        .fetch(&refspecs, Some(&mut opts), None)
        .map_err(fetching)?;
    let oid = match target {
        Target::Branch(b) => repo
            .refname_to_id(&format!("refs/remotes/origin/{b}"))
            .map_err(|_| format!("{url}: no branch '{b}'"))?,
        Target::Tag(t) => repo
            .revparse_single(&format!("refs/tags/{t}"))
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id())
            .map_err(|_| format!("{url}: no tag '{t}'"))?,
        Target::Commit(c) => {
            let oid = repo
                .revparse_single(c)
                .and_then(|o| o.peel_to_commit())
                .map(|c| c.id())
                .map_err(|_| format!("{url} has no commit '{c}'"))?;
            // Objects outlive the refs that brought them into the cache:
            // a commit no upstream ref reaches any more (a rewritten
            // history) is one a fresh clone would not have.
            if !reachable(&repo, &advertised, oid) {
                return Err(format!(
                    "{url} has no commit '{c}' any more: no branch or tag reaches it (history rewritten upstream?)"
                ));
            }
            oid
        }
    };
    let commit = repo
        .find_commit(oid)
        .map_err(|e| format!("{url}: {}", e.message()))?;
    // Forced checkout restores tracked files but leaves untracked ones
    // (build products of a previous `make`) so compilation stays incremental.
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force();
    repo.checkout_tree(commit.as_object(), Some(&mut checkout))
        .map_err(|e| format!("checking out {oid}: {}", e.message()))?;
    repo.set_head_detached(oid)
        .map_err(|e| format!("checking out {oid}: {}", e.message()))?;
    Ok(oid)
}

/// Deletes the cache's remote-tracking branches and tags that `origin`
/// no longer advertises.
fn prune(repo: &Repository, advertised: &[(String, Oid)]) -> Result<(), git2::Error> {
    let mut stale = Vec::new();
    for reference in repo.references()? {
        let reference = reference?;
        let Ok(name) = reference.name() else {
            continue;
        };
        let upstream = if let Some(branch) = name.strip_prefix("refs/remotes/origin/") {
            format!("refs/heads/{branch}")
        } else if name.starts_with("refs/tags/") {
            name.to_string()
        } else {
            continue;
        };
        if !advertised.iter().any(|(n, _)| *n == upstream) {
            stale.push(name.to_string());
        }
    }
    for name in stale {
        // The parent logs the child's standard error line by line.
        eprintln!("pruned {name}: gone upstream");
        repo.find_reference(&name)?.delete()?;
    }
    Ok(())
}

/// Whether `commit` is an advertised ref's commit or one of its ancestors.
/// Branches are tried first: a pinned commit is usually on one.
fn reachable(repo: &Repository, advertised: &[(String, Oid)], commit: Oid) -> bool {
    let tips = |prefix: &'static str| {
        advertised
            .iter()
            .filter(move |(n, _)| n.starts_with(prefix))
            .filter_map(|(_, oid)| repo.find_object(*oid, None).ok()?.peel_to_commit().ok())
            .map(|c| c.id())
    };
    tips("refs/heads/")
        .chain(tips("refs/tags/"))
        .any(|tip| tip == commit || repo.graph_descendant_of(tip, commit).unwrap_or(false))
}

mod channels;
pub use channels::{
    CHANNELS_SUBCOMMAND, Checkout, Outcome, channels_child_args, channels_child_main,
    parse_channels_output,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {:?}", out);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn commit_file(repo: &Path, name: &str, text: &str) -> String {
        std::fs::write(repo.join(name), text).unwrap();
        git(repo, &["add", name]);
        git(repo, &["commit", "-q", "-m", name]);
        git(repo, &["rev-parse", "HEAD"])
    }

    #[test]
    fn fetches_branches_tags_commits_and_force_pushes() {
        let base = std::env::temp_dir().join(format!("cuirass-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let upstream = base.join("up");
        std::fs::create_dir_all(&upstream).unwrap();
        git(&upstream, &["init", "-q", "-b", "main"]);
        let first = commit_file(&upstream, "a", "1");
        git(&upstream, &["tag", "v1"]);
        let second = commit_file(&upstream, "a", "2");
        let url = format!("file://{}", upstream.display());
        let work = base.join("cache/spec");

        let oid = fetch(&url, &work, &Target::Branch("main".into())).unwrap();
        assert_eq!(oid.to_string(), second);
        assert_eq!(std::fs::read_to_string(work.join("a")).unwrap(), "2");

        let oid = fetch(&url, &work, &Target::Tag("v1".into())).unwrap();
        assert_eq!(oid.to_string(), first);
        assert_eq!(std::fs::read_to_string(work.join("a")).unwrap(), "1");

        let oid = fetch(&url, &work, &Target::Commit(second.clone())).unwrap();
        assert_eq!(oid.to_string(), second);

        git(&upstream, &["reset", "-q", "--hard", &first]);
        let rewritten = commit_file(&upstream, "b", "3");
        let oid = fetch(&url, &work, &Target::Branch("main".into())).unwrap();
        assert_eq!(oid.to_string(), rewritten);
        assert!(work.join("b").exists());

        let err = fetch(&url, &work, &Target::Branch("nope".into())).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let err = fetch(
            "file:///nonexistent/repo",
            &base.join("c2"),
            &Target::Branch("x".into()),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/repo"), "{err}");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Each kind of ref a spec can name, gone upstream then back: an error
    /// naming it while it is gone, never the cached commit; renames
    /// `a` → `a/b` → `a` work without touching the cache by hand.
    #[test]
    fn refs_gone_upstream_are_errors_until_they_come_back() {
        let base = std::env::temp_dir().join(format!("cuirass-refs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let upstream = base.join("up");
        std::fs::create_dir_all(&upstream).unwrap();
        git(&upstream, &["init", "-q", "-b", "main"]);
        let first = commit_file(&upstream, "a", "1");
        git(&upstream, &["branch", "feature"]);
        git(&upstream, &["tag", "-a", "-m", "v1", "v1"]);
        let url = format!("file://{}", upstream.display());
        let work = base.join("cache/spec");
        let branch = |b: &str| fetch(&url, &work, &Target::Branch(b.into()));

        assert_eq!(branch("feature").unwrap().to_string(), first);
        git(&upstream, &["branch", "-D", "feature"]);
        let err = branch("feature").unwrap_err();
        assert!(err.contains("no branch 'feature'"), "{err}");
        assert!(branch("feature").is_err(), "the stale ref came back");
        git(&upstream, &["branch", "feature/x"]);
        assert_eq!(branch("feature/x").unwrap().to_string(), first);
        git(&upstream, &["branch", "-D", "feature/x"]);
        let second = commit_file(&upstream, "a", "2");
        git(&upstream, &["branch", "feature"]);
        assert_eq!(branch("feature").unwrap().to_string(), second);

        let tag = |t: &str| fetch(&url, &work, &Target::Tag(t.into()));
        assert_eq!(tag("v1").unwrap().to_string(), first);
        git(&upstream, &["tag", "-d", "v1"]);
        let err = tag("v1").unwrap_err();
        assert!(err.contains("no tag 'v1'"), "{err}");
        git(&upstream, &["tag", "v1/rc"]);
        assert_eq!(tag("v1/rc").unwrap().to_string(), second);
        git(&upstream, &["tag", "-d", "v1/rc"]);
        git(&upstream, &["tag", "v1"]);
        assert_eq!(tag("v1").unwrap().to_string(), second);

        let commit = |c: &str| fetch(&url, &work, &Target::Commit(c.into()));
        assert_eq!(commit(&second).unwrap().to_string(), second);
        // Rewrite history so that nothing upstream reaches `second`.
        git(&upstream, &["tag", "-d", "v1"]);
        git(&upstream, &["checkout", "-q", "main"]);
        git(&upstream, &["reset", "-q", "--hard", &first]);
        git(&upstream, &["branch", "-f", "feature", &first]);
        commit_file(&upstream, "b", "3");
        let err = commit(&second).unwrap_err();
        assert!(err.contains(&second) && err.contains("any more"), "{err}");
        git(&upstream, &["branch", "keep", &second]);
        assert_eq!(commit(&second).unwrap().to_string(), second);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_lock_left_by_a_killed_fetch_does_not_wedge_the_cache() {
        let tmp = std::env::temp_dir().join(format!("cuirass-fetch-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let upstream = tmp.join("upstream");
        std::fs::create_dir_all(&upstream).unwrap();
        git(&upstream, &["init", "-q", "-b", "master"]);
        let first = commit_file(&upstream, "a", "1");
        let url = format!("file://{}", upstream.display());
        let cache = tmp.join("cache/spec");
        let master = Target::Branch("master".into());
        assert_eq!(fetch(&url, &cache, &master).unwrap().to_string(), first);
        // A fetch killed while it moved the ref leaves git's lock file.
        let stale = cache.join(".git/refs/remotes/origin/master.lock");
        std::fs::write(&stale, "").unwrap();
        let second = commit_file(&upstream, "a", "2");
        assert_eq!(fetch(&url, &cache, &master).unwrap().to_string(), second);
        assert!(!stale.exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn child_output_is_checked() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse_child_output(&format!("commit {sha}\n")),
            Some(sha.into())
        );
        assert_eq!(parse_child_output("commit xyz\n"), None);
        assert_eq!(parse_child_output(""), None);
    }
}

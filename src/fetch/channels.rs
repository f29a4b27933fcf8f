//! The channels of a `specification` record, fetched by one child:
//! `cuirass internal-fetch-channels SPEC-DIR [NAME URL KIND VALUE
//! INTRO-COMMIT INTRO-SIGNER]...` checks each channel out into
//! `SPEC-DIR/NAME` (as [`super::fetch`] does for a 2018 spec) and, for a
//! channel with an introduction, authenticates the commit with Guix's own
//! `guix git authenticate`.  It prints one line per channel, fields
//! separated by tabs (reasons are one line):
//!
//! - `channel NAME COMMIT DIR`: checked out (and authenticated);
//! - `failed NAME REASON`: could not be fetched;
//! - `unauthenticated NAME COMMIT DIR REASON`: fetched, but
//!   `guix git authenticate` refused the commit.

use super::{Target, fetch};
use crate::spec::Channel;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const CHANNELS_SUBCOMMAND: &str = "internal-fetch-channels";

/// One channel's commit in one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub channel: String,
    pub commit: String,
    /// The checkout's absolute directory.
    pub directory: PathBuf,
}

/// What the child says of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Fetched(Checkout),
    Failed { channel: String, reason: String },
    Unauthenticated { checkout: Checkout, reason: String },
}

fn target_of(c: &Channel) -> Target {
    match &c.commit {
        Some(commit) => Target::Commit(commit.clone()),
        None => Target::Branch(c.branch.clone()),
    }
}

/// The arguments of the child for `channels`, each checked out under
/// `spec_dir`.
pub fn channels_child_args(spec_dir: &Path, channels: &[Channel]) -> Vec<String> {
    let mut args = vec![
        CHANNELS_SUBCOMMAND.to_string(),
        spec_dir.to_string_lossy().into_owned(),
    ];
    for c in channels {
        let target = target_of(c);
        let (kind, value) = target.kind_and_value();
        let (intro_commit, signer) = c
            .introduction
            .as_ref()
            .map_or(("-", "-"), |i| (i.commit.as_str(), i.signer.as_str()));
        args.extend([&c.name, &c.url, kind, value, intro_commit, signer].map(|s| s.to_string()));
    }
    args
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Entry point of the child.  Exits 0 when every channel was fetched
/// (authenticated or not), 1 otherwise; the lines say which.
pub fn channels_child_main(args: &[String]) -> i32 {
    let [_, spec_dir, rest @ ..] = args else {
        eprintln!(
            "usage: cuirass {CHANNELS_SUBCOMMAND} SPEC-DIR [NAME URL KIND VALUE INTRO SIGNER]..."
        );
        return 2;
    };
    if rest.is_empty() || rest.len() % 6 != 0 {
        eprintln!("{CHANNELS_SUBCOMMAND}: channels come as 6 arguments each");
        return 2;
    }
    let mut status = 0;
    for c in rest.chunks(6) {
        let [name, url, kind, value, intro, signer] = c else {
            unreachable!("chunks of 6")
        };
        let target = match kind.as_str() {
            "branch" => Target::Branch(value.clone()),
            _ => Target::Commit(value.clone()),
        };
        let dir = Path::new(spec_dir).join(name);
        let oid = match fetch(url, &dir, &target) {
            Ok(oid) => oid.to_string(),
            Err(e) => {
                println!("failed\t{name}\t{}", one_line(&e));
                status = 1;
                continue;
            }
        };
        let dir_text = dir.to_string_lossy();
        let refused = (intro != "-")
            .then(|| authenticate(url, &dir, &oid, intro, signer).err())
            .flatten();
        match refused {
            None => println!("channel\t{name}\t{oid}\t{dir_text}"),
            Some(why) => println!(
                "unauthenticated\t{name}\t{oid}\t{dir_text}\t{}",
                one_line(&why)
            ),
        }
    }
    status
}

/// `guix git authenticate` from the introduction to `commit`, with the
/// keyring branch fetched from the channel.
fn authenticate(
    url: &str,
    dir: &Path,
    commit: &str,
    intro: &str,
    signer: &str,
) -> Result<(), String> {
    fetch_keyring(url, dir)?;
    let out = Command::new("guix")
        .args(["git", "authenticate", "--keyring=origin/keyring"])
        .arg(format!("--repository={}", dir.display()))
        .arg(format!("--end={commit}"))
        .args([intro, signer])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run guix git authenticate: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(format!(
        "guix git authenticate failed ({}): {}",
        out.status,
        last.unwrap_or("no message")
    ))
}

fn fetch_keyring(url: &str, dir: &Path) -> Result<(), String> {
    let repo = git2::Repository::open(dir).map_err(|e| e.message().to_string())?;
    let mut remote = repo
        .find_remote("origin")
        .map_err(|e| format!("{url}: {}", e.message()))?;
    remote
        .fetch(
            &["+refs/heads/keyring:refs/remotes/origin/keyring"],
            None,
            None,
        )
        .map_err(|e| format!("fetching the keyring branch of {url}: {}", e.message()))
}

/// The child's lines, in order; lines it cannot read are skipped.
pub fn parse_channels_output(stdout: &str) -> Vec<Outcome> {
    let checkout = |name: &str, commit: &str, dir: &str| Checkout {
        channel: name.into(),
        commit: commit.into(),
        directory: dir.into(),
    };
    stdout
        .lines()
        .filter_map(|l| match l.split('\t').collect::<Vec<_>>().as_slice() {
            ["channel", name, commit, dir] => Some(Outcome::Fetched(checkout(name, commit, dir))),
            ["failed", name, reason] => Some(Outcome::Failed {
                channel: name.to_string(),
                reason: reason.to_string(),
            }),
            ["unauthenticated", name, commit, dir, reason] => Some(Outcome::Unauthenticated {
                checkout: checkout(name, commit, dir),
                reason: reason.to_string(),
            }),
            _ => None,
        })
        .collect()
}

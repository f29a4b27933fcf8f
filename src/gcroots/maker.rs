//! One chunk's root made over a daemon connection, without I/O: the
//! requests in order, and what their replies mean.
//!
//! A chunk of store items gets one root: a store text file whose
//! references are the items (add-text-to-store, op 8), and a symlink
//! `DIR/BASENAME` to that file registered as an indirect root (op 12).
//! The collector keeps what a root refers to, so one symlink holds the
//! whole chunk: creating a symlink took 0.7 ms on a loaded ext4 (its
//! inode allocator skips recently freed inodes), and one per item was
//! most of cuirass's CPU per build.
//!
//! Three exchanges, each waiting for the previous one's replies:
//!
//! 1. `query-valid-paths` of the items: the daemon refuses a text file
//!    that refers to an invalid path, and an item may have been
//!    collected already;
//! 2. `add-text-to-store` of the valid ones, which replies the file's
//!    path (the daemon holds it as a temporary root of this connection
//!    meanwhile, so the connection must close after the chunk: the file
//!    would otherwise outlive its symlink);
//! 3. after the loop made the symlink: `add-indirect-root`,
//!    `sync-with-gc` (a collection that began before the root has
//!    ended), and `query-valid-paths` again, so an item collected by
//!    that collection gets no row.

use crate::wire::{Reply, Request};
use std::path::{Path, PathBuf};

/// The name of the root files in the store: `/gnu/store/HASH-cuirass-gc-roots`.
pub const FILE_NAME: &str = "cuirass-gc-roots";

/// What the loop does next for the chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Replies are still due.
    Wait,
    /// Send these requests.
    Send(Vec<Request>),
    /// Make the symlink `link` to `file`, then send `then`.
    Link {
        link: PathBuf,
        file: String,
        then: Vec<Request>,
    },
    /// The chunk is done: `valid` items are held by `file`; `file` is
    /// None when no item was valid (nothing was made).
    Done {
        file: Option<String>,
        valid: Vec<String>,
    },
    /// A reply that makes no sense; the chunk fails.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Valid,
    Text,
    Root,
}

/// One chunk being made; see the module docs.
#[derive(Debug)]
pub struct Maker {
    dir: PathBuf,
    phase: Phase,
    /// Replies due in this phase.
    due: usize,
    valid: Vec<String>,
    file: Option<String>,
}

/// The text of a root file: what it is, then the items, one a line.
pub fn text(items: &[String]) -> String {
    let mut t =
        String::from("GC roots held by cuirass: the items below are kept while this file is.\n");
    for item in items {
        t.push_str(item);
        t.push('\n');
    }
    t
}

impl Maker {
    /// A chunk of `items` rooted from `dir`; the requests to send first.
    pub fn new(dir: &Path, items: Vec<String>) -> (Maker, Vec<Request>) {
        let maker = Maker {
            dir: dir.to_path_buf(),
            phase: Phase::Valid,
            due: 1,
            valid: Vec::new(),
            file: None,
        };
        (maker, vec![Request::QueryValidPaths(items)])
    }

    /// The root file, once the daemon has named it: its symlink may
    /// exist, and must go if the chunk fails.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The next reply of this connection.
    pub fn reply(&mut self, reply: Reply) -> Next {
        self.due = self.due.saturating_sub(1);
        match (self.phase, reply) {
            (Phase::Valid, Reply::Strings(valid)) => {
                if valid.is_empty() {
                    return Next::Done { file: None, valid };
                }
                let request = Request::AddTextToStore {
                    name: FILE_NAME.into(),
                    text: text(&valid),
                    references: valid.clone(),
                };
                self.valid = valid;
                self.phase = Phase::Text;
                self.due = 1;
                Next::Send(vec![request])
            }
            (Phase::Text, Reply::Path(file)) => {
                let Some(link) = super::base_name(&file).map(|n| self.dir.join(n)) else {
                    return Next::Failed(format!("the daemon named the root file {file:?}"));
                };
                let Some(link_text) = link.to_str().map(String::from) else {
                    return Next::Failed(format!("{} is not UTF-8", link.display()));
                };
                let mut check = self.valid.clone();
                check.push(file.clone());
                self.file = Some(file.clone());
                self.phase = Phase::Root;
                self.due = 3;
                Next::Link {
                    link,
                    file,
                    then: vec![
                        Request::AddIndirectRoot(link_text),
                        Request::SyncWithGc,
                        Request::QueryValidPaths(check),
                    ],
                }
            }
            (Phase::Root, Reply::Strings(mut valid)) if self.due == 0 => {
                let file = self.file.clone().unwrap_or_default();
                let Some(at) = valid.iter().position(|p| *p == file) else {
                    return Next::Failed(format!("the root file {file} is not valid"));
                };
                valid.remove(at);
                Next::Done {
                    file: Some(file),
                    valid,
                }
            }
            (Phase::Root, Reply::Unit) if self.due > 0 => Next::Wait,
            (phase, reply) => Next::Failed(format!("unexpected reply {reply:?} at {phase:?}")),
        }
    }
}

#[cfg(test)]
mod tests;

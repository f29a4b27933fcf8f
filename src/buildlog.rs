//! Build logs: where a build's log is, how it is decoded, served and kept.
//!
//! guix-daemon keeps one log per derivation, under
//! `/var/log/guix/drvs/XX/REST.drv.gz` (Guix 1.5.0), `.drv.bz2` (1.2.0)
//! or without a suffix (`--log-compression=none`), and rewrites it when
//! the derivation is built again.  So when a build finishes, cuirass keeps
//! its own copy, `DIR/ID.log.gz` or `DIR/ID.log.bz2` under
//! `--log-directory`, beside a plain `DIR/ID.tail` holding its last lines
//! ([`copy::Copier`]); a build's log is its copy when there is one, else
//! the daemon's file ([`Places::source`]).
//!
//! Nothing here holds a whole log: `/build/ID/log/raw` is streamed a
//! bounded chunk per loop turn ([`serve::LogStream`]), decoded on the fly
//! ([`decode::Decoder`], a sans-I/O codec), and the details page's tail
//! comes from the `.tail` file, the end of a plain file, or a bounded
//! decoding of the start of a compressed one ([`tail_text`]).

pub mod copy;
pub mod decode;
pub mod live;
pub mod serve;
mod tail;

pub use decode::{Compression, Decoder};
pub use tail::Tail;

use crate::db::BuildId;
use crate::db::read::BuildView;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// Where guix-daemon writes build logs; no other daemon file is served.
pub const DAEMON_LOG_ROOT: &str = "/var/log/guix/drvs";
/// Lines of a log's tail on the details page and in `.tail` files.
pub const TAIL_LINES: usize = 50;
/// Bytes of text kept for a tail: the details page's 50 lines, unless
/// they are longer than this.
pub const TAIL_BYTES: usize = 16 * 1024;
/// Text decoded for the tail of a compressed log that has no `.tail`
/// file yet (a build still running, or one finished before its copy):
/// beyond this the page says so rather than hold the loop.
pub const TAIL_SCAN: usize = 8 << 20;

/// [`tail_text`]'s error for a build without a log.
pub const NO_LOG: &str = "No log.";

/// The two places logs are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    /// guix-daemon's log directory ([`DAEMON_LOG_ROOT`]).
    pub daemon: PathBuf,
    /// cuirass's per-build copies (`--log-directory`).
    pub copies: PathBuf,
}

/// A log file to read, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub compression: Compression,
    /// The daemon's file of a build still running: it grows, and its
    /// compressed stream may stop mid-way without being corrupt.
    pub live: bool,
}

impl Places {
    pub fn new(daemon: impl Into<PathBuf>, copies: impl Into<PathBuf>) -> Places {
        Places {
            daemon: daemon.into(),
            copies: copies.into(),
        }
    }

    /// The copy of build `id`'s log, when one was made.
    pub fn copy_of(&self, id: BuildId) -> Option<Source> {
        [Compression::Gzip, Compression::Bzip2]
            .into_iter()
            .map(|c| Source {
                path: self.copy_path(id, c),
                compression: c,
                live: false,
            })
            .find(|s| s.path.is_file())
    }

    pub fn copy_path(&self, id: BuildId, c: Compression) -> PathBuf {
        self.copies.join(format!("{id}.log{}", c.suffix()))
    }

    /// The copy of the log of build `id`'s earlier run `attempt`.
    pub fn attempt_path(&self, id: BuildId, attempt: i64, c: Compression) -> PathBuf {
        self.copies
            .join(format!("{id}.attempt-{attempt}.log{}", c.suffix()))
    }

    /// The copy of an earlier run's log, if one was kept.
    pub fn attempt_copy(&self, id: BuildId, attempt: i64) -> Option<Source> {
        [Compression::Gzip, Compression::Bzip2]
            .into_iter()
            .map(|c| Source {
                path: self.attempt_path(id, attempt, c),
                compression: c,
                live: false,
            })
            .find(|s| s.path.is_file())
    }

    pub fn tail_path(&self, id: BuildId) -> PathBuf {
        self.copies.join(format!("{id}.tail"))
    }

    /// The live log of a running `derivation` ([`live`]):
    /// `COPIES/live/NAME.drv.log`; None for a name that is not a store
    /// derivation's.
    pub fn live_path(&self, derivation: &str) -> Option<PathBuf> {
        let base = derivation.strip_prefix("/gnu/store/")?;
        (!base.is_empty() && !base.contains('/') && !base.starts_with('.'))
            .then(|| self.live_dir().join(format!("{base}.log")))
    }

    /// Where live logs are written: `COPIES/live`.
    pub fn live_dir(&self) -> PathBuf {
        self.copies.join("live")
    }

    /// The live log of build `b` while it runs and cuirass writes one.
    pub fn live_of(&self, b: &BuildView) -> Option<Source> {
        if b.status != crate::db::status::STARTED {
            return None;
        }
        let path = self.live_path(&b.derivation)?;
        path.is_file().then_some(Source {
            path,
            compression: Compression::Plain,
            live: true,
        })
    }

    /// Build `b`'s log: its copy, else while it runs the live file
    /// cuirass writes, else the file the database names if it
    /// is under the daemon's log directory (even a database written by
    /// someone else names no other file), else None.
    pub fn source(&self, b: &BuildView) -> Option<Source> {
        if let Some(copy) = self.copy_of(b.id) {
            return Some(copy);
        }
        if let Some(live) = self.live_of(b) {
            return Some(live);
        }
        let path = Path::new(&b.log);
        let inside = !b.log.is_empty()
            && path.starts_with(&self.daemon)
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::RootDir));
        inside.then(|| Source {
            path: path.to_path_buf(),
            compression: Compression::of_path(&b.log),
            live: !crate::db::status::is_final(b.status),
        })
    }

    /// The daemon's log of a derivation built earlier, whatever its
    /// compression, if it kept one.
    pub fn daemon_log_of(&self, derivation: &str) -> Option<String> {
        let base = derivation.strip_prefix("/gnu/store/")?;
        if base.len() < 3 || base.contains('/') {
            return None;
        }
        let stem = self.daemon.join(&base[..2]).join(&base[2..]);
        [".gz", ".bz2", ""]
            .iter()
            .map(|suffix| format!("{}{suffix}", stem.display()))
            .find(|p| Path::new(p).is_file())
    }
}

/// The last `lines` lines of build `b`'s log, as bytes, read in bounded
/// time and memory: the `.tail` file of its copy; else the end of a plain
/// log (one seek); else a compressed log decoded up to [`TAIL_SCAN`]
/// bytes of text.  Errors are sentences for the page, naming the file.
pub fn tail_text(places: &Places, b: &BuildView, lines: usize) -> Result<Vec<u8>, String> {
    let tail_file = places.tail_path(b.id);
    if places.copy_of(b.id).is_some()
        && let Ok(text) = std::fs::read(&tail_file)
    {
        return Ok(text);
    }
    let source = places.source(b).ok_or(NO_LOG)?;
    let name = source.path.display();
    let mut file = std::fs::File::open(&source.path).map_err(|e| format!("{name}: {e}"))?;
    let mut tail = Tail::new(TAIL_BYTES);
    let mut buf = vec![0u8; 64 * 1024];
    if source.compression == Compression::Plain {
        let len = file.metadata().map_err(|e| format!("{name}: {e}"))?.len();
        let from = len.saturating_sub(TAIL_BYTES as u64 * 2);
        file.seek(SeekFrom::Start(from))
            .map_err(|e| format!("{name}: {e}"))?;
        let mut text = Vec::new();
        file.take(TAIL_BYTES as u64 * 2)
            .read_to_end(&mut text)
            .map_err(|e| format!("{name}: {e}"))?;
        // Text of TAIL_BYTES or more counts as cut, so that a partial
        // first line is left out.
        tail.push(&text);
        return Ok(tail.lines(lines).to_vec());
    }
    let mut decoder = Decoder::new(source.compression);
    let mut text = Vec::new();
    let mut decoded = 0;
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{name}: {e}"))?;
        if n == 0 {
            break;
        }
        let mut used = 0;
        while used < n {
            text.clear();
            used += decoder
                .decode(&buf[used..n], &mut text, 256 * 1024)
                .map_err(|e| format!("{name}: {e}"))?;
            decoded += text.len();
            tail.push(&text);
            if decoded > TAIL_SCAN {
                return Err(format!(
                    "The log is too long for its tail to be shown before the build's copy is made \
                     (over {} MiB of text); see the full log.",
                    TAIL_SCAN >> 20
                ));
            }
        }
    }
    if !source.live {
        decoder.finish().map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(tail.lines(lines).to_vec())
}

#[cfg(test)]
mod tests;

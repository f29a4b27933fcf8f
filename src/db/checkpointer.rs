//! SQLite's WAL checkpoints, in a child process.
//!
//! A commit that takes the write-ahead log past `wal_autocheckpoint`
//! pages copies them into the database file and syncs both, in the
//! committing connection: the loop's thread, for as long as that takes
//! (turns of 0.1–0.9 s on a 10,000,000-build database, about a third of
//! a 75,000-job registration).  The child runs passive checkpoints
//! instead, which never block the writer or readers, every
//! [`EVERY`], so that the loop's own connection, which still
//! checkpoints past its [`allowance`], seldom has anything left to
//! copy when its writes come between quiet turns.

use rusqlite::Connection;
use std::time::Duration;

/// The child's first argument (`cuirass checkpoint-child DATABASE
/// PARENT_PID`); not an option users see.
pub const SUBCOMMAND: &str = "checkpoint-child";

/// How often the child checkpoints.
pub const EVERY: Duration = Duration::from_millis(250);

/// Pages of log past which the loop's connection checkpoints itself
/// (`wal_autocheckpoint`), for `free` bytes free on the database's file
/// system and pages of `page_size` bytes: an eighth of the free space,
/// from [`MIN_PAGES`] to [`MAX_PAGES`] pages (figures for 4 KiB pages).
///
/// The log starts over from its beginning only once a checkpoint has
/// caught up with the writer, which a writer busy every turn (a
/// registration) rarely lets the child do; past the allowance the
/// loop's commits copy what the child has not yet, in the loop's turn.
/// SQLite's 1,000 pages there cost a 75,000-job registration about
/// 0.4 s on a 10,000,000-build database (1.54 s of batches against
/// 1.15 with 4,096), so a disk with room gets more; not more than
/// that, as the loop's checkpoint then has more to copy when it comes
/// (moving index entries after: turns of 100 ms at 4,096 pages,
/// 144–164 ms at 8,192, 540 ms at 65,536).  A fixed larger allowance
/// wedged a small disk: a log grown into the last free space leaves no
/// room for the checkpoint that would empty it, and every write fails
/// from then on (`faults::a_full_disk_is_logged_…`, an 8 MiB tmpfs).
/// An eighth of the free space leaves room for the copy.  Below 3.2 MiB
/// free the floor is more than that: a checkpoint every few commits,
/// where a log of a page per commit could not hold a batch anyway.
pub fn allowance(free: u64, page_size: u64) -> i64 {
    ((free / 8 / page_size.max(512)) as i64).clamp(MIN_PAGES, MAX_PAGES)
}

/// The allowance on a disk with under 3.2 MiB free.
pub const MIN_PAGES: i64 = 100;
/// The allowance on a disk with 128 MiB free or more (a 16 MiB log).
pub const MAX_PAGES: i64 = 4_096;
/// The allowance where the free space cannot be told (an in-memory
/// database, `statvfs` failing): SQLite's default.
pub const UNKNOWN_PAGES: i64 = 1_000;

/// Bytes available to unprivileged writers on the file system that
/// holds `path`; `None` when `statvfs(3)` fails.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

impl super::Db {
    /// The checkpoint allowance ([`allowance`]) for the free space where
    /// the database file is; [`UNKNOWN_PAGES`] for an in-memory
    /// database or a file system that cannot tell.
    pub fn checkpoint_allowance(&self) -> super::Result<i64> {
        let free = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .and_then(|p| free_bytes(std::path::Path::new(p)));
        let Some(free) = free else {
            return Ok(UNKNOWN_PAGES);
        };
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(allowance(free, page_size as u64))
    }

    /// Sets the connection's checkpoint allowance, in pages of log.
    pub fn set_checkpoint_allowance(&self, pages: i64) -> super::Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    /// Both: what the loop does at start and every second.
    pub fn fit_checkpoints_to_disk(&self) -> super::Result<i64> {
        let pages = self.checkpoint_allowance()?;
        self.set_checkpoint_allowance(pages)?;
        Ok(pages)
    }
}

/// The child: checkpoints the database at `args[1]` until its parent,
/// process `args[2]`, is gone; returns its exit code (1 when the
/// database cannot be opened or a checkpoint fails, which the loop logs
/// and recovers from; 2 for bad arguments).  The parent's pid is given,
/// not read at start: a parent that died before the child asked for
/// its death signal would otherwise leave the child watching init.
pub fn child_main(args: &[String]) -> i32 {
    let (Some(path), Some(parent)) = (args.get(1), args.get(2).and_then(|p| p.parse().ok())) else {
        eprintln!("cuirass {SUBCOMMAND}: usage: cuirass {SUBCOMMAND} DATABASE PARENT_PID");
        return 2;
    };
    let parent: libc::pid_t = parent;
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cuirass {SUBCOMMAND}: {path}: {e}");
            return 1;
        }
    };
    loop {
        // A passive checkpoint copies what no reader still needs and
        // returns; it never waits for a lock.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        if let Err(e) = done {
            eprintln!("cuirass {SUBCOMMAND}: {path}: {e}");
            return 1;
        }
        std::thread::sleep(EVERY);
        // SAFETY: getppid(2) has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_is_an_eighth_of_the_free_space_within_bounds() {
        assert_eq!(allowance(0, 4096), MIN_PAGES);
        assert_eq!(allowance(8 << 20, 4096), 256);
        assert_eq!(allowance(64 << 20, 4096), 2_048);
        assert_eq!(allowance(64 << 20, 65536), 128);
        assert_eq!(allowance(1 << 40, 4096), MAX_PAGES);
    }

    #[test]
    fn the_connection_gets_the_allowance_of_its_disk() {
        let dir = std::env::temp_dir().join(format!("cuirass-ckpt-{}", std::process::id()));
        let db = super::super::Db::open(&dir.join("c.db")).unwrap();
        // Other writers may change the free space meanwhile.
        let before = allowance(free_bytes(&dir).unwrap(), 4096);
        let pages = db.fit_checkpoints_to_disk().unwrap();
        let after = allowance(free_bytes(&dir).unwrap(), 4096);
        let set: i64 = db
            .connection()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(set, pages);
        assert!(before.min(after) <= pages && pages <= before.max(after));
        let _ = std::fs::remove_dir_all(&dir);
        let mem = super::super::Db::open_in_memory().unwrap();
        assert_eq!(mem.fit_checkpoints_to_disk().unwrap(), UNKNOWN_PAGES);
    }
}

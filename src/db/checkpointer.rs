//! SQLite's WAL checkpoints, in a child process.
//!
//! A commit that takes the write-ahead log past `wal_autocheckpoint`
//! pages copies them into the database file and syncs both, in the
//! committing connection: the loop's thread, for as long as that takes
//! (turns of 0.1–0.9 s on a 10,000,000-build database, about a third of
//! a 75,000-job registration).  The child runs passive checkpoints
//! instead, which never block the writer or readers, every
//! [`EVERY`], so that the loop's own connection, which still
//! checkpoints past [`FALLBACK_PAGES`], seldom has anything left to
//! copy when its writes come between quiet turns.

use rusqlite::Connection;
use std::time::Duration;

/// The child's first argument (`cuirass checkpoint-child DATABASE
/// PARENT_PID`); not an option users see.
pub const SUBCOMMAND: &str = "checkpoint-child";

/// How often the child checkpoints.
pub const EVERY: Duration = Duration::from_millis(250);

/// Pages of log (4 KiB each) past which the loop's connection
/// checkpoints itself: SQLite's default (`wal_autocheckpoint`), left
/// as it is.  The log
/// starts over from its beginning only once a checkpoint has caught up
/// with the writer, which a writer busy every turn (a registration)
/// rarely lets the child do; past this size the loop's commits copy
/// what the child has not yet.  A larger allowance made registrations
/// faster (16 MiB: 4.1–4.8 s on 10M against 5.4–6 s) but wedged a small
/// disk: a log grown into the last free space leaves no room for the
/// checkpoint that would empty it, and every write fails from then on
/// (`faults::a_full_disk_is_logged_…`, an 8 MiB tmpfs).
pub const FALLBACK_PAGES: i64 = 1_000;

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

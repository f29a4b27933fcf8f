//! SQLite's WAL checkpoints, in a child process.
//!
//! A commit that takes the write-ahead log past `wal_autocheckpoint`
//! pages copies them into the database file and syncs both, in the
//! committing connection: the loop's thread, for as long as that takes
//! (turns of 0.1–0.9 s on a 10,000,000-build database, about a third of
//! a 75,000-job registration).  The child runs passive checkpoints
//! instead, which never block the writer or readers, every
//! [`EVERY`]; the loop's own connection checkpoints only past
//! [`FALLBACK_PAGES`], should the child lag or be gone.

use rusqlite::Connection;
use std::time::Duration;

/// The child's first argument (`cuirass checkpoint-child DATABASE
/// PARENT_PID`); not an option users see.
pub const SUBCOMMAND: &str = "checkpoint-child";

/// How often the child checkpoints.
pub const EVERY: Duration = Duration::from_millis(250);

/// Pages of log (4 KiB each, 16 MiB) past which the loop's connection
/// checkpoints itself, as it did every 1,000 pages without the child.
/// The log restarts from its beginning only once a checkpoint has
/// caught up with the writer, which a writer busy every turn (moving a
/// registration's index entries) rarely lets the child do; past this
/// size the loop's commits then copy what the child has not yet, a
/// commit at a time.  Measured on 10M (`registration-10m`): at 64 MiB
/// those turns took 200–280 ms, at 16 MiB at most 141 ms; without the
/// child a registration takes 5.4–6 s instead of 4.1–4.8.
pub const FALLBACK_PAGES: i64 = 4_096;

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

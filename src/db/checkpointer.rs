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

/// The child's first argument (`cuirass checkpoint-child DATABASE`);
/// not an option users see.
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
/// those turns took 200–280 ms, at 16 MiB at most 120 ms; without the
/// child a registration takes 5.4–6 s instead of 3–4.
pub const FALLBACK_PAGES: i64 = 4_096;

/// The child: checkpoints the database at `args[1]` until its parent is
/// gone; returns its exit code (1 when the database cannot be opened
/// or a checkpoint fails, which the loop logs and recovers from).
pub fn child_main(args: &[String]) -> i32 {
    let Some(path) = args.get(1) else {
        eprintln!("cuirass {SUBCOMMAND}: which database?");
        return 2;
    };
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cuirass {SUBCOMMAND}: {path}: {e}");
            return 1;
        }
    };
    // SAFETY: getppid(2) has no preconditions.
    let parent = unsafe { libc::getppid() };
    loop {
        // A passive checkpoint copies what no reader still needs and
        // returns; it never waits for a lock.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        if let Err(e) = done {
            eprintln!("cuirass {SUBCOMMAND}: {path}: {e}");
            return 1;
        }
        std::thread::sleep(EVERY);
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            return 0;
        }
    }
}

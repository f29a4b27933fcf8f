//! The build machines, as the builds they ran tell them: `/machines` and
//! `/api/machines`.

use super::{Db, Result};

/// One machine's builds, from the `worker` column (migration 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `localhost` (the daemon's own machine) or the build machine's name
    /// in the daemon's `machines.scm`, as `@ build-remote` gave it.
    pub name: String,
    /// Builds it is running now.
    pub running: i64,
    /// Builds it finished since `since` (Unix seconds), failures included.
    pub done: i64,
    /// Of those, builds that failed (any status above 0).
    pub failed: i64,
    /// The latest start or stop time of its builds (Unix seconds).
    pub last_seen: i64,
}

impl Db {
    /// The machines that are running builds or finished some since
    /// `since` (Unix seconds), by name.  A machine idle since then is not
    /// listed: reading every build ever would not be bounded.
    pub fn machines(&self, since: i64) -> Result<Vec<Machine>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT worker, sum(running), sum(done), sum(failed), max(seen) FROM (
               SELECT worker, 0 AS running, 1 AS done, status > 0 AS failed, stoptime AS seen
                 FROM Builds INDEXED BY Builds_worker
                 WHERE worker IS NOT NULL AND stoptime >= ?1
               UNION ALL
               SELECT worker, 1, 0, 0, starttime FROM Builds
                 WHERE status = -1 AND worker IS NOT NULL)
             GROUP BY worker ORDER BY worker",
        )?;
        let rows = stmt.query_map([since], |r| {
            Ok(Machine {
                name: r.get(0)?,
                running: r.get(1)?,
                done: r.get(2)?,
                failed: r.get(3)?,
                last_seen: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

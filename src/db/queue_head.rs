//! The head of the queue, read once and kept until the database
//! changes: what a pending build's position ([`Db::waiting`]) is counted
//! against.
//!
//! Counting a position walks the queue ahead of the build, up to
//! [`POSITION_LIMIT`] builds, each joined to its evaluation and
//! specification (whether it is active): about 5 ms at the back of a long
//! queue.  `/build/ID` of a pending build did that walk every time, and
//! with 100,000 pending builds it held the server to 7,700 requests a
//! second.  The head kept here answers a position with a binary search.
//!
//! It stays valid while the database does not change: this connection's
//! [`rusqlite::Connection::total_changes`] (every row it wrote, committed
//! or rolled back) and `PRAGMA data_version` (commits by other
//! connections: the command-line tools, the `sqlite3` shell) are both as
//! they were when it was read.  A busy farm writes statuses every few
//! seconds, so the head is read again about that often.  A reader that
//! asks after a write of a transaction still open is not served from it,
//! since that transaction may roll back; a read transaction sees one
//! snapshot, whose `data_version` stays as it began.

use super::queue::POSITION_LIMIT;
use super::{Db, Result};
use crate::records::BuildId;

/// The started builds and the first scheduled ones, as of `version`.
#[derive(Debug)]
pub(super) struct QueueHead {
    /// (`total_changes`, `data_version`) when read.
    version: (u64, i64),
    /// Builds handed to the daemon: each counts for every position.
    started: i64,
    /// (rank, id) of the first `POSITION_LIMIT + 1` scheduled builds of
    /// active specifications, in queue order (`Builds_queue`).
    scheduled: Vec<(i64, i64)>,
}

impl QueueHead {
    /// Builds that count before (rank, id): the started ones and the
    /// scheduled ones ahead of it, the latter at most `POSITION_LIMIT + 1`.
    fn ahead_of(&self, rank: i64, id: BuildId) -> i64 {
        self.started + self.scheduled.partition_point(|&k| k < (rank, id.0)) as i64
    }
}

impl Db {
    /// The started builds plus the scheduled builds of active
    /// specifications before (rank, id) in queue order, the latter
    /// counted up to `POSITION_LIMIT + 1`.
    pub(super) fn builds_ahead(&self, rank: i64, id: BuildId) -> Result<i64> {
        let state = self.conn.transaction_state(None::<&str>)?;
        if state == rusqlite::TransactionState::Write {
            return Ok(self.read_queue_head((0, 0))?.ahead_of(rank, id));
        }
        let version = self.version()?;
        let mut cached = self.queue_head.borrow_mut();
        if cached.as_ref().is_none_or(|h| h.version != version) {
            *cached = Some(self.read_queue_head(version)?);
        }
        Ok(cached.as_ref().map_or(0, |h| h.ahead_of(rank, id)))
    }

    /// Drops the kept head (its 160 KiB), as when the daemon is idle.
    pub(super) fn forget_queue_head(&self) {
        *self.queue_head.borrow_mut() = None;
    }

    fn version(&self) -> Result<(u64, i64)> {
        let data_version = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        Ok((self.conn.total_changes(), data_version))
    }

    /// The head as it is now, marked as read at `version`.
    fn read_queue_head(&self, version: (u64, i64)) -> Result<QueueHead> {
        let started = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM Builds INDEXED BY Builds_queue
                 WHERE status < 0 AND status = -1",
            )?
            .query_row([], |r| r.get(0))?;
        // The join order is pinned so that the walk down the queue drives
        // it and stops at the limit.
        let scheduled = self
            .conn
            .prepare_cached(
                "SELECT b.queue_rank, b.id FROM Builds b INDEXED BY Builds_queue
                 CROSS JOIN Evaluations e ON e.id = b.evaluation
                 CROSS JOIN Specifications s ON s.repo_name = e.specification
                 WHERE b.status < 0 AND b.status = -2 AND s.is_active != 0
                 ORDER BY b.status DESC, b.queue_rank, b.id
                 LIMIT ?1",
            )?
            .query_map([POSITION_LIMIT + 1], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(QueueHead {
            version,
            started,
            scheduled,
        })
    }
}

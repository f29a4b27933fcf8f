//! The reads of one loop turn in one read transaction.
//!
//! Each statement run outside a transaction takes and drops SQLite's
//! locks on its own: eight `fcntl` calls for a `/build/ID`, 42 % of the
//! daemon's system calls when 50 clients ask at once.  The loop answers
//! a turn's HTTP requests inside one read transaction
//! ([`Db::begin_reads`] .. [`Db::end_reads`]), so that they share one
//! snapshot and one set of locks.
//!
//! Writes never happen inside it: every write transaction
//! ([`Db::write`]) ends it first, and the loop ends it before anything
//! other than an HTTP request.  A turn is short, so the snapshot never
//! holds back a checkpoint for long.

use super::{Db, Result};
use rusqlite::Transaction;

impl Db {
    /// Starts sharing one read transaction between the coming reads, if
    /// no transaction is open; does nothing if it cannot (it is only a
    /// saving: each statement then locks on its own).
    pub fn begin_reads(&self) {
        if self.reading.get() || !self.conn.is_autocommit() {
            return;
        }
        match self.conn.execute_batch("BEGIN DEFERRED") {
            Ok(()) => self.reading.set(true),
            Err(e) => log::debug!(target: crate::logging::DB, "read transaction not begun: {e}"),
        }
    }

    /// Ends the read transaction [`Db::begin_reads`] began, if any.
    pub fn end_reads(&self) {
        if !self.reading.replace(false) || self.conn.is_autocommit() {
            return;
        }
        // A read transaction has nothing to lose: if COMMIT fails,
        // ROLLBACK still releases the snapshot and the locks.
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            log::warn!(target: crate::logging::DB, "read transaction: {e}; rolled back");
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                // Every write transaction would now fail to begin, and
                // say so.
                log::error!(target: crate::logging::DB, "read transaction left open: {e}");
            }
        }
    }

    /// A write transaction, after the read transaction if one is open.
    pub(super) fn write(&mut self) -> Result<Transaction<'_>> {
        self.end_reads();
        if self.foreign_keys_off {
            self.foreign_keys_on()?;
        }
        Ok(self.conn.transaction()?)
    }
}

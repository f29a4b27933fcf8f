//! What today's specifications add to the database: each evaluation's
//! checkouts (one per channel) and build products.

use super::{Db, EvalId, Result};
use crate::fetch::Checkout;
use rusqlite::params;

/// One checkout of an evaluation, as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutView {
    pub channel: String,
    pub commit: String,
    pub directory: String,
}

impl Db {
    /// Records the checkouts an evaluation was made from.
    pub fn add_checkouts(&mut self, eval: EvalId, checkouts: &[Checkout]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO Checkouts (evaluation, channel, revision, directory)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for c in checkouts {
                stmt.execute(params![
                    eval,
                    c.channel,
                    c.commit,
                    c.directory.to_string_lossy()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// An evaluation's checkouts in channel order of its spec (rowid-less
    /// table: by name); empty for evaluations made before migration 10.
    pub fn checkouts(&self, eval: EvalId) -> Result<Vec<CheckoutView>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT channel, revision, directory FROM Checkouts WHERE evaluation = ?1
             ORDER BY channel",
        )?;
        let rows = stmt.query_map([eval], |r| {
            Ok(CheckoutView {
                channel: r.get(0)?,
                commit: r.get(1)?,
                directory: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

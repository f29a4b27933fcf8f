//! The queries behind the GC roots (`crate::gcroots`): which store items
//! builds want kept, and the `GcRoots` rows of the roots that exist.

use super::{BuildId, Db, Result};
use rusqlite::{OptionalExtension, params};

/// One row of `GcRoots`: a store item and when its root may go (Unix
/// seconds), `None` for a `.drv` held while a build of it is pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRow {
    pub item: String,
    pub expires: Option<i64>,
}

/// The latest stop time of a succeeded build with an output at ?1: one
/// arm per part of `Outputs_path`, named (the fresh part is keyed by an
/// expression, migration 24, which SQLite's OR plan does not use).
pub(crate) const OUTPUT_LAST_SUCCESS: &str = "SELECT MAX(stoptime) FROM
       (SELECT b.stoptime FROM Outputs o INDEXED BY Outputs_path
        CROSS JOIN Builds b ON b.id = o.build
        WHERE o.path = ?1 AND o.fresh = 0 AND b.status = 0
        UNION ALL
        SELECT b.stoptime FROM Outputs o INDEXED BY Outputs_path_fresh
        CROSS JOIN Builds b ON b.id = o.build
        WHERE substr(o.path, 12, 8) = substr(CAST(?1 AS TEXT), 12, 8)
          AND o.path = CAST(?1 AS TEXT)
          AND o.fresh = 1 AND b.status = 0)";

impl Db {
    /// Up to `limit` builds above `after`, by id: (id, derivation,
    /// pending).  A walk over new builds reads only the rows past its
    /// cursor, pending or not, so each call costs at most `limit` rows.
    pub fn builds_after(
        &self,
        after: BuildId,
        limit: usize,
    ) -> Result<Vec<(BuildId, String, bool)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, derivation, status < 0 FROM Builds WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The lowest id of a pending build (scheduled or started).
    pub fn first_pending_build(&self) -> Result<Option<BuildId>> {
        // Literal statuses, so that the partial Builds_queue index serves.
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(id) FROM Builds WHERE status < 0")?
            .query_row([], |r| r.get(0))?)
    }

    /// The highest build id, 0 for none.
    pub fn max_build_id(&self) -> Result<BuildId> {
        Ok(self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM Builds")?
            .query_row([], |r| r.get(0))?)
    }

    /// Outputs of succeeded builds that stopped in `(after, until]`, in
    /// (stop time, build id) order, at most `limit` builds: (stop time,
    /// build id, output paths).  Walks `Builds_finished`.
    pub fn succeeded_outputs_page(
        &self,
        after: (i64, BuildId),
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, BuildId, Vec<String>)>> {
        let mut builds = self.conn.prepare_cached(
            "SELECT stoptime, id, status FROM Builds INDEXED BY Builds_finished
             WHERE status >= 0 AND (stoptime > ?1 OR (stoptime = ?1 AND id > ?2))
               AND stoptime <= ?3
             ORDER BY stoptime, id LIMIT ?4",
        )?;
        let page = builds
            .query_map(params![after.0, after.1, until, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, BuildId>(1)?,
                    r.get::<_, super::BuildStatus>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut outputs = self
            .conn
            .prepare_cached("SELECT path FROM Outputs WHERE build = ?1")?;
        let mut out = Vec::with_capacity(page.len());
        for (stop, id, st) in page {
            let paths = match st == super::status::SUCCEEDED {
                true => outputs
                    .query_map([id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
                false => Vec::new(),
            };
            out.push((stop, id, paths));
        }
        Ok(out)
    }

    /// The outputs of `derivation`'s succeeded builds, each with the
    /// latest stop time of a succeeded build that has it.
    pub fn succeeded_outputs_of(&self, derivation: &str) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT o.path, MAX(b.stoptime) FROM Builds b JOIN Outputs o ON o.build = b.id WHERE ",
            super::fresh::builds_of_derivation_sql!("b.id", "?1"),
            " AND b.status = 0 GROUP BY o.path ORDER BY o.path"
        ))?;
        let rows = stmt.query_map([derivation], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether a build of `derivation` is pending: its `.drv` must stay.
    pub fn derivation_pending(&self, derivation: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "SELECT EXISTS (SELECT 1 FROM Builds WHERE ",
                super::fresh::builds_of_derivation_sql!("id", "?1"),
                " AND status < 0)"
            ))?
            .query_row([derivation], |r| r.get(0))?)
    }

    /// The latest stop time of a succeeded build with an output at
    /// `path`, None when no such build is left.
    pub fn output_last_success(&self, path: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(OUTPUT_LAST_SUCCESS)?
            .query_row([path], |r| r.get(0))?)
    }

    /// The row of `item`, if cuirass holds a root for it.
    pub fn gc_root(&self, item: &str) -> Result<Option<RootRow>> {
        Ok(self
            .conn
            .prepare_cached("SELECT item, expires FROM GcRoots WHERE item = ?1")?
            .query_row([item], |r| {
                Ok(RootRow {
                    item: r.get(0)?,
                    expires: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// Records roots just made, held by the store file `root`, in one
    /// transaction.  An item that has a row already keeps its root file
    /// (so that file still goes with its last row) and the later expiry.
    pub fn add_gc_roots(&mut self, roots: &[RootRow], root: &str) -> Result<()> {
        let tx = self.write()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO GcRoots (item, expires, root) VALUES (?1, ?2, ?3)
                 ON CONFLICT (item) DO UPDATE SET expires = CASE
                   WHEN expires IS NULL OR excluded.expires IS NULL THEN NULL
                   ELSE MAX(expires, excluded.expires) END",
            )?;
            for r in roots {
                stmt.execute(params![r.item, r.expires, root])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether some row is held by the store file `root`: its symlink
    /// must stay.
    pub fn gc_root_file_held(&self, root: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM GcRoots WHERE root = ?1)")?
            .query_row([root], |r| r.get(0))?)
    }

    /// Sets the expiry of an output's root that exists.
    pub fn set_gc_root_expiry(&mut self, item: &str, expires: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE GcRoots SET expires = ?2 WHERE item = ?1")?
            .execute(params![item, expires])?;
        Ok(())
    }

    /// Forgets these items' rows, in one transaction; returns the root
    /// files that no row is held by any more, whose symlinks must go.
    pub fn remove_gc_roots(&mut self, items: &[String]) -> Result<Vec<String>> {
        let tx = self.write()?;
        let mut emptied = Vec::new();
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM GcRoots WHERE item = ?1 RETURNING root")?;
            let mut roots = std::collections::BTreeSet::new();
            for item in items {
                if let Some(root) = delete
                    .query_row([item], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    roots.insert(root);
                }
            }
            let mut held =
                tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM GcRoots WHERE root = ?1)")?;
            for root in roots {
                if !held.query_row([&root], |r| r.get::<_, bool>(0))? {
                    emptied.push(root);
                }
            }
        }
        tx.commit()?;
        Ok(emptied)
    }

    /// Up to `limit` rows after `after`, by item (a sweep's page).
    pub fn gc_roots_page(&self, after: &str, limit: usize) -> Result<Vec<RootRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT item, expires FROM GcRoots WHERE item > ?1 ORDER BY item LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok(RootRow {
                item: r.get(0)?,
                expires: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Up to `limit` output roots whose expiry is at or before `now`.
    pub fn gc_roots_expired(&self, now: i64, limit: usize) -> Result<Vec<RootRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT item, expires FROM GcRoots INDEXED BY GcRoots_expires
             WHERE expires IS NOT NULL AND expires <= ?1 ORDER BY expires LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit as i64], |r| {
            Ok(RootRow {
                item: r.get(0)?,
                expires: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

//! Canceling the builds a new evaluation supersedes, a page per loop
//! turn (migration 23).  A ci.guix evaluation supersedes some 24,000 of
//! 100,000 pending builds; looking at them all and canceling in the
//! turn that closes the evaluation took 0.65–0.9 s on a
//! 10,000,000-build database, where the loop warns at 0.2 s.  So closing
//! an evaluation records it in `Superseding`, and the loop goes through
//! the scheduled builds of the specification's older evaluations, one
//! evaluation after the other in id order and each in build id order,
//! [`SUPERSEDE_PAGE`] builds a turn.  The position is kept in the row,
//! written in the transaction that cancels, so a restart goes on where
//! the last turn ended.

use super::fresh::sql_once;
use super::*;

/// Builds looked at in one loop turn: each costs a few seeks (about 4
/// µs) and, if superseded, a cancel (about 11 µs) on a 10,000,000-build
/// database, so a page is some 10–30 ms.
pub const SUPERSEDE_PAGE: usize = 2000;

/// The page of scheduled builds of evaluation ?1 above id ?4 (?3 is the
/// scheduled status, ?5 the page size), each with whether evaluation ?2
/// supersedes it: ?2 has none of the build's derivation, and has a job
/// of one of its names.  ?2's derivations are looked for in the fresh
/// index, and in the large one only when ?6 says some of its builds
/// have moved there ([`Db::merge_fresh`]), as a seek there reads a leaf
/// of 10,000,000 entries.  A `CASE`, as SQLite computes both sides of
/// an `AND` in a result column: the names of the four builds in five
/// whose derivation the new evaluation has too were looked up for
/// nothing (0.55 s for 75,000 builds on the 10M database, 0.14 s this
/// way).  A build's own names: its derivation row, by rowid (migration
/// 25), and its other names.
pub(crate) fn page_sql() -> String {
    format!(
        "WITH page AS (SELECT id, evaluation, derivation FROM Builds INDEXED BY Builds_evaluation
                       WHERE evaluation = ?1 AND status = ?3 AND id > ?4
                       ORDER BY id LIMIT ?5)
         SELECT id, derivation,
                CASE WHEN EXISTS (SELECT 1 FROM Builds n INDEXED BY Builds_derivation_fresh
                                  WHERE substr(n.derivation, 12, 8) = substr(page.derivation, 12, 8)
                                    AND n.derivation = page.derivation AND n.evaluation = ?2
                                    AND n.fresh = 1)
                THEN 0
                WHEN CASE WHEN ?6 THEN EXISTS (SELECT 1 FROM Builds n INDEXED BY Builds_derivation
                                              WHERE n.derivation = page.derivation
                                                AND n.evaluation = ?2 AND n.fresh = 0)
                     END
                THEN 0
                ELSE EXISTS (SELECT 1 FROM Derivations old
                             WHERE old.rowid = page.id AND {})
                     OR EXISTS (SELECT 1 FROM JobAliases old
                                WHERE old.build = page.id AND {})
                END
         FROM page ORDER BY id",
        new_name("old.job_name"),
        new_name("old.job_name")
    )
}

/// Whether a build of `spec`'s evaluation `eval` may yet be canceled by
/// one of `superseding` (from [`Db::superseding_evaluations`]): a newer
/// evaluation of its spec still goes through the older ones' builds.
pub fn may_be_superseded(superseding: &[(String, EvalId)], spec: &str, eval: EvalId) -> bool {
    superseding
        .iter()
        .any(|(s, newer)| s == spec && eval.0 < newer.0)
}

/// What a page of superseding did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The superseding evaluation and its specification.
    pub evaluation: EvalId,
    pub specification: String,
    /// Builds it canceled, this page and in all so far.
    pub canceled: usize,
    pub canceled_in_all: usize,
    /// Whether every older evaluation has been gone through.
    pub done: bool,
}

impl Db {
    /// Goes through the next `page` scheduled builds that the oldest
    /// evaluation in `Superseding` may supersede, cancels those it does
    /// (except those of `in_flight` derivations, handed to the daemon
    /// already, which end with their real result), and moves its position
    /// on, in one transaction.  `None` when no evaluation is waiting.
    pub fn supersede(
        &mut self,
        in_flight: &HashSet<String>,
        now: i64,
        page: usize,
    ) -> Result<Option<Superseded>> {
        let tx = self.write()?;
        let row = tx
            .prepare_cached(
                "SELECT s.evaluation, e.specification, s.older, s.after, s.canceled
                 FROM Superseding s JOIN Evaluations e ON e.id = s.evaluation
                 ORDER BY s.evaluation LIMIT 1",
            )?
            .query_row([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        let Some((eval, spec, mut older, mut after, canceled_before)) = row else {
            return Ok(None);
        };
        let mut candidates = tx.prepare_cached(sql_once!(page_sql()))?;
        let mut next_older = tx.prepare_cached(
            "SELECT MIN(id) FROM Evaluations
             WHERE specification = ?1 AND id > ?2 AND id < ?3",
        )?;
        let merged = super::fresh::some_moved(&tx, EvalId(eval))?;
        let mut looked = 0;
        let mut canceled = 0;
        let mut done = false;
        // `older` 0, or `after` at the end: the next older evaluation.
        while looked < page {
            if older == 0 || after == i64::MAX {
                match next_older
                    .query_row(params![spec, older, eval], |r| r.get::<_, Option<i64>>(0))?
                {
                    Some(id) => (older, after) = (id, 0),
                    None => {
                        done = true;
                        break;
                    }
                }
                // A seek per evaluation, counted so that a page of
                // evaluations without pending builds stays bounded too.
                looked += 1;
            }
            let limit = page.saturating_sub(looked).max(1);
            let rows: Vec<(BuildId, String, bool)> = candidates
                .query_map(
                    params![older, eval, status::SCHEDULED, after, limit as i64, merged],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<std::result::Result<_, _>>()?;
            looked += rows.len();
            after = match rows.last() {
                Some((id, _, _)) if rows.len() == limit => id.0,
                _ => i64::MAX,
            };
            let superseded: Vec<(BuildId, String)> = rows
                .into_iter()
                .filter(|(_, _, superseded)| *superseded)
                .map(|(id, drv, _)| (id, drv))
                .collect();
            canceled += Db::cancel_scheduled(&tx, &superseded, in_flight, now)?;
        }
        drop((candidates, next_older));
        if done {
            tx.prepare_cached("DELETE FROM Superseding WHERE evaluation = ?1")?
                .execute([eval])?;
        } else {
            tx.prepare_cached(
                "UPDATE Superseding SET older = ?2, after = ?3, canceled = canceled + ?4
                 WHERE evaluation = ?1",
            )?
            .execute(params![eval, older, after, canceled as i64])?;
        }
        tx.commit()?;
        Ok(Some(Superseded {
            evaluation: EvalId(eval),
            specification: spec,
            canceled,
            canceled_in_all: canceled_before as usize + canceled,
            done,
        }))
    }

    /// The evaluations whose superseded builds are still to be canceled,
    /// with their specs, oldest first.
    pub fn superseding_evaluations(&self) -> Result<Vec<(String, EvalId)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.specification, s.evaluation
             FROM Superseding s JOIN Evaluations e ON e.id = s.evaluation
             ORDER BY s.evaluation",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Every page of [`Db::supersede`] until no evaluation waits; returns
    /// how many builds were canceled.  For tests and tools: the loop goes
    /// a page per turn.
    pub fn supersede_all(&mut self, in_flight: &HashSet<String>, now: i64) -> Result<usize> {
        let mut canceled = 0;
        while let Some(page) = self.supersede(in_flight, now, SUPERSEDE_PAGE)? {
            canceled += page.canceled;
        }
        Ok(canceled)
    }
}

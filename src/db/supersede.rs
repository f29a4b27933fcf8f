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

/// Builds looked at in one loop turn: each costs a binary search in
/// `DerivationSet`, the one in five not found there a few seeks, and
/// if superseded a cancel (about 5 µs) on a 10,000,000-build database,
/// so a page is some 10–45 ms.
pub const SUPERSEDE_PAGE: usize = 2000;

/// The page of scheduled builds of evaluation ?1 above id ?2 (?3 is
/// the scheduled status, ?4 the page size), with their derivations: a
/// range of `Builds_evaluation` and the rows it points to, which are
/// near one another (an evaluation's builds have consecutive ids).
pub(crate) const PAGE_SQL: &str = "SELECT id, derivation FROM Builds INDEXED BY Builds_evaluation
     WHERE evaluation = ?1 AND status = ?3 AND id > ?2
     ORDER BY id LIMIT ?4";

/// Whether evaluation ?2 has a job of one of build ?1's names: its
/// derivation row's (by rowid, migration 25) or its other names'.  A
/// `CASE`, as SQLite computes both sides of an `OR` in a result column.
pub(crate) fn named_sql() -> String {
    format!(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM Derivations old WHERE old.rowid = ?1 AND {})
                THEN 1
                ELSE EXISTS (SELECT 1 FROM JobAliases old WHERE old.build = ?1 AND {})
                END",
        new_name("old.job_name"),
        new_name("old.job_name")
    )
}

/// The superseding evaluation's derivations, as sorted 64-bit hashes
/// (0.6 MB for 75,000 builds), read once when its superseding starts.
/// Four in five of the builds looked at have a derivation the new
/// evaluation has too: a binary search here answers for them, where a
/// seek in `Builds_derivation_fresh` (or, once its entries moved, in
/// the 10,000,000-entry `Builds_derivation`) cost 0.26 s for 100,000
/// builds on the 10M database.  Two derivations with one hash would
/// leave a superseded build scheduled, to be built as if its job had
/// not changed; never the other way round.
#[derive(Debug)]
pub(crate) struct DerivationSet {
    evaluation: EvalId,
    hashes: Vec<u64>,
}

impl DerivationSet {
    pub(super) fn hash(derivation: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the set lives in this process only.
        let mut h = std::hash::DefaultHasher::new();
        derivation.hash(&mut h);
        h.finish()
    }

    /// Evaluation `eval`'s derivations, from its builds.
    fn of(tx: &Transaction, eval: EvalId) -> Result<DerivationSet> {
        Ok(DerivationSet::from_hashes(
            eval,
            DerivationSet::hashes_of(tx, eval)?,
        ))
    }

    /// The hashes of evaluation `eval`'s builds' derivations, in any
    /// collection.
    pub(super) fn hashes_of<C: FromIterator<u64>>(tx: &Transaction, eval: EvalId) -> Result<C> {
        Ok(tx
            .prepare_cached(
                "SELECT derivation FROM Builds INDEXED BY Builds_evaluation
                 WHERE evaluation = ?1",
            )?
            .query_map([eval], |r| Ok(DerivationSet::hash(r.get_ref(0)?.as_str()?)))?
            .collect::<std::result::Result<_, _>>()?)
    }

    /// The set of `hashes` (of [`DerivationSet::hash`]), which must be
    /// every derivation of `eval`'s builds.
    pub(super) fn from_hashes(eval: EvalId, mut hashes: Vec<u64>) -> DerivationSet {
        hashes.sort_unstable();
        hashes.dedup();
        DerivationSet {
            evaluation: eval,
            hashes,
        }
    }

    fn contains(&self, derivation: &str) -> bool {
        self.hashes
            .binary_search(&DerivationSet::hash(derivation))
            .is_ok()
    }
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
        let cached = self.superseding_derivations.take();
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
        // Evaluation ids are never reused (AUTOINCREMENT), so a set
        // kept from the last turn is this evaluation's if its id is.
        let set = match cached {
            Some(set) if set.evaluation.0 == eval => set,
            _ => DerivationSet::of(&tx, EvalId(eval))?,
        };
        let mut candidates = tx.prepare_cached(PAGE_SQL)?;
        let mut named = tx.prepare_cached(sql_once!(named_sql()))?;
        let mut next_older = tx.prepare_cached(
            "SELECT MIN(id) FROM Evaluations
             WHERE specification = ?1 AND id > ?2 AND id < ?3",
        )?;
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
            let rows: Vec<(BuildId, String)> = candidates
                .query_map(
                    params![older, after, status::SCHEDULED, limit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<std::result::Result<_, _>>()?;
            looked += rows.len();
            after = match rows.last() {
                Some((id, _)) if rows.len() == limit => id.0,
                _ => i64::MAX,
            };
            // Superseded: the new evaluation has none of the build's
            // derivation, and has a job of one of its names.
            let mut superseded = Vec::new();
            for (id, drv) in rows {
                if !set.contains(&drv) && named.query_row(params![id, eval], |r| r.get(0))? {
                    superseded.push((id, drv));
                }
            }
            canceled += Db::cancel_scheduled(&tx, &superseded, in_flight, now)?;
        }
        drop((candidates, named, next_older));
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
        if !done {
            self.superseding_derivations = Some(set);
        }
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

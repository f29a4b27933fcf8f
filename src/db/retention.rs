//! The queries behind `--retention` (`crate::retention`): which
//! evaluation may go, and its rows deleted a bounded chunk at a time.

use super::{BuildId, Db, EvalId, Result, eval_status};
use rusqlite::{OptionalExtension, params};

/// An evaluation the retention may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: EvalId,
    pub specification: String,
    /// When it was made (Unix seconds; 0 for evaluations recorded before
    /// cuirass kept the time).
    pub timestamp: i64,
    pub builds: i64,
}

/// A build deleted, and the files of its logs that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedBuild {
    pub id: BuildId,
    /// Its earlier runs (`BuildAttempts`), each with a log copy.
    pub attempts: Vec<i64>,
}

/// How a chunk left the evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkEnd {
    /// Rows remain: call again.
    More,
    /// The evaluation and all its rows are gone.
    Deleted,
    /// Its remaining builds are pending again (an operator restarted
    /// them meanwhile): it stays, with those builds.
    Kept,
}

/// A chunk of a deleted specification's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecChunk {
    /// The tombstone's name ([`super::admin::tombstone`]).
    pub tombstone: String,
    /// The evaluation the chunk was of; `None` when the chunk deleted
    /// the tombstone, the history's last row.
    pub evaluation: Option<EvalId>,
    pub chunk: Chunk,
}

/// What one chunk deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub builds: Vec<DeletedBuild>,
    /// The output paths of those builds (their GC roots are looked at).
    pub outputs: Vec<String>,
    /// Rows deleted, over every table.
    pub rows: usize,
    pub end: ChunkEnd,
}

impl Db {
    /// The oldest evaluation made before `cutoff` that may go: finished,
    /// neither its specification's latest nor its latest successful
    /// one, and without a pending build.
    pub fn retention_candidate(&self, cutoff: i64) -> Result<Option<Candidate>> {
        let found: Option<(EvalId, String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT e.id, e.specification, e.timestamp FROM Evaluations e
                 WHERE e.timestamp < ?1 AND e.status != ?2
                   AND e.id < (SELECT MAX(l.id) FROM Evaluations l
                               WHERE l.specification = e.specification)
                   AND e.id IS NOT (SELECT MAX(s.id) FROM Evaluations s
                                    WHERE s.specification = e.specification AND s.status = ?3)
                   AND NOT EXISTS (SELECT 1 FROM Builds b
                                   WHERE b.evaluation = e.id AND b.status < 0)
                 ORDER BY e.id LIMIT 1",
            )?
            .query_row(
                params![cutoff, eval_status::IN_PROGRESS, eval_status::SUCCEEDED],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((id, specification, timestamp)) = found else {
            return Ok(None);
        };
        let builds = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM Builds WHERE evaluation = ?1")?
            .query_row([id], |r| r.get(0))?;
        Ok(Some(Candidate {
            id,
            specification,
            timestamp,
            builds,
        }))
    }

    /// Deletes about `budget` rows of evaluation `eval`, in one
    /// transaction: its finished builds first, each with its outputs,
    /// inputs, attempts and products, then its derivations, then its
    /// checkouts and itself.  A pending build is never deleted.
    pub fn delete_evaluation_chunk(&mut self, eval: EvalId, budget: usize) -> Result<Chunk> {
        self.delete_chunk(eval, budget, false)
    }

    /// Deletes about `budget` rows of a deleted specification's history
    /// ([`Db::delete_specification`]): of the oldest evaluation of a
    /// tombstone, pending builds too (none is dispatched: a tombstone
    /// has no live cycle); the tombstone goes after its last evaluation.
    /// `None` when no deletion is under way.
    pub fn spec_deletion_chunk(&mut self, budget: usize) -> Result<Option<SpecChunk>> {
        let found: Option<(String, Option<EvalId>)> = self
            .conn
            .prepare_cached(
                "SELECT s.repo_name,
                        (SELECT MIN(e.id) FROM Evaluations e WHERE e.specification = s.repo_name)
                 FROM Specifications s WHERE s.deleting = 1 LIMIT 1",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((tomb, eval)) = found else {
            return Ok(None);
        };
        let Some(eval) = eval else {
            let tx = self.write()?;
            tx.execute("DELETE FROM Specifications WHERE repo_name = ?1", [&tomb])?;
            tx.commit()?;
            return Ok(Some(SpecChunk {
                tombstone: tomb,
                evaluation: None,
                chunk: Chunk {
                    builds: Vec::new(),
                    outputs: Vec::new(),
                    rows: 1,
                    end: ChunkEnd::Deleted,
                },
            }));
        };
        let chunk = self.delete_chunk(eval, budget, true)?;
        Ok(Some(SpecChunk {
            tombstone: tomb,
            evaluation: Some(eval),
            chunk,
        }))
    }

    fn delete_chunk(&mut self, eval: EvalId, budget: usize, pending: bool) -> Result<Chunk> {
        let tx = self.write()?;
        let mut chunk = Chunk {
            builds: Vec::new(),
            outputs: Vec::new(),
            rows: 0,
            end: ChunkEnd::More,
        };
        let ids: Vec<BuildId> = tx
            .prepare_cached(
                "SELECT id FROM Builds WHERE evaluation = ?1 AND (status >= 0 OR ?3)
                 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![eval, budget as i64, pending], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if ids.is_empty() {
            let pending: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM Builds WHERE evaluation = ?1)")?
                .query_row([eval], |r| r.get(0))?;
            if pending {
                chunk.end = ChunkEnd::Kept;
            } else {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM Derivations WHERE rowid IN
                           (SELECT rowid FROM Derivations WHERE evaluation = ?1 LIMIT ?2)",
                    )?
                    .execute(params![eval, budget as i64])?;
                chunk.rows += n;
                if n < budget {
                    chunk.rows += tx
                        .prepare_cached("DELETE FROM Checkouts WHERE evaluation = ?1")?
                        .execute([eval])?;
                    // Its notification events go with it (a queued one
                    // too: it speaks of builds that are gone).
                    chunk.rows += tx
                        .prepare_cached("DELETE FROM Events WHERE evaluation = ?1")?
                        .execute([eval])?;
                    chunk.rows += tx
                        .prepare_cached("DELETE FROM Evaluations WHERE id = ?1")?
                        .execute([eval])?;
                    chunk.end = ChunkEnd::Deleted;
                }
            }
        }
        for id in ids {
            if chunk.rows >= budget {
                break;
            }
            let outputs = tx
                .prepare_cached("SELECT path FROM Outputs WHERE build = ?1")?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let attempts = tx
                .prepare_cached("SELECT attempt FROM BuildAttempts WHERE build = ?1")?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            for sql in [
                "DELETE FROM Outputs WHERE build = ?1",
                "DELETE FROM Inputs WHERE build = ?1",
                "DELETE FROM BuildAttempts WHERE build = ?1",
                "DELETE FROM BuildProducts WHERE build = ?1",
                "DELETE FROM JobAliases WHERE build = ?1",
                // Its derivation row (migration 25) with it: a 2018
                // database's Builds may give a deleted id again.
                "DELETE FROM Derivations WHERE rowid = ?1",
                "DELETE FROM Builds WHERE id = ?1",
            ] {
                chunk.rows += tx.prepare_cached(sql)?.execute([id])?;
            }
            chunk.outputs.extend(outputs);
            chunk.builds.push(DeletedBuild { id, attempts });
        }
        tx.commit()?;
        Ok(chunk)
    }
}

//! `--retention`: evaluations older than a given age are deleted with
//! their builds, a bounded chunk per loop turn, without I/O.
//!
//! An evaluation goes when it was made more than the retention ago, is
//! finished, is neither its specification's latest nor its latest
//! successful evaluation, and has no pending build.  Its rows go in
//! chunks of about [`ROW_BUDGET`] rows, one transaction each (builds
//! with their outputs, inputs, attempts and products, then derivations,
//! then checkouts and the evaluation), so the database stays consistent
//! between turns and after a crash; an evaluation half deleted is still
//! old, and is finished at the next look.  Each chunk returns the builds
//! whose log copies the loop removes, and the output paths whose GC
//! roots are looked at again.

use crate::db::retention::{ChunkEnd, DeletedBuild};
use crate::db::{Db, EvalId};
use crate::logging::RETENTION;

/// Rows deleted per chunk, at most about: one loop turn's work.  On the
/// 1,000,000-build database a row costs 40–70 µs (random index pages),
/// so a chunk takes about 5 ms (`cuirass-bench spec-deletion`): 1,000
/// rows made requests wait 40 ms for no gain in total time, 30 rows
/// took 40 % longer in all for a median wait of 1.3 ms instead of 3.
pub const ROW_BUDGET: usize = 100;
/// A progress line every this many chunks of one evaluation.
const PROGRESS_EVERY: u64 = 100;
/// The longest wait between two looks for old evaluations, in seconds.
pub const MAX_CHECK_EVERY: i64 = 60;

/// What a chunk deleted that the loop must follow up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    pub builds: Vec<DeletedBuild>,
    pub outputs: Vec<String>,
}

/// The evaluation being deleted.
#[derive(Debug)]
struct Progress {
    eval: EvalId,
    spec: String,
    builds: i64,
    deleted: u64,
    rows: u64,
    chunks: u64,
}

#[derive(Debug)]
pub struct Retention {
    /// Seconds an evaluation is kept.
    max_age: i64,
    /// Seconds between two looks when nothing was found.
    every: i64,
    next_check: i64,
    current: Option<Progress>,
}

impl Retention {
    /// `max_age` in seconds (at least 1); the first look is at `now`.
    pub fn new(max_age: u64, now: i64) -> Retention {
        let max_age = max_age.clamp(1, i64::MAX as u64 / 2) as i64;
        Retention {
            max_age,
            every: (max_age / 2).clamp(1, MAX_CHECK_EVERY),
            next_check: now,
            current: None,
        }
    }

    /// An evaluation is being deleted, or a look is due.
    pub fn busy(&self, now: i64) -> bool {
        self.current.is_some() || now >= self.next_check
    }

    /// One chunk, or a look for the next evaluation to delete.  None
    /// when nothing was deleted.
    pub fn step(&mut self, db: &mut Db, now: i64) -> Option<Deleted> {
        if self.current.is_none() {
            if now < self.next_check {
                return None;
            }
            match db.retention_candidate(now - self.max_age) {
                Ok(Some(c)) => {
                    let age = match c.timestamp {
                        0 => "of unknown age".to_string(),
                        t => format!("{} s old", now - t),
                    };
                    log::info!(target: RETENTION,
                        "spec={:?} evaluation {} ({age}, {} build(s)) is being deleted",
                        c.specification, c.id, c.builds
                    );
                    self.current = Some(Progress {
                        eval: c.id,
                        spec: c.specification,
                        builds: c.builds,
                        deleted: 0,
                        rows: 0,
                        chunks: 0,
                    });
                }
                Ok(None) => {
                    self.next_check = now + self.every;
                    return None;
                }
                Err(e) => {
                    log::error!(target: RETENTION, "{e}");
                    self.next_check = now + self.every;
                    return None;
                }
            }
        }
        let p = self.current.as_mut()?;
        let chunk = match db.delete_evaluation_chunk(p.eval, ROW_BUDGET) {
            Ok(chunk) => chunk,
            Err(e) => {
                log::error!(target: RETENTION, "spec={:?} evaluation {}: {e}", p.spec, p.eval);
                self.current = None;
                self.next_check = now + self.every;
                return None;
            }
        };
        p.deleted += chunk.builds.len() as u64;
        p.rows += chunk.rows as u64;
        p.chunks += 1;
        match chunk.end {
            ChunkEnd::More => {
                if p.chunks % PROGRESS_EVERY == 0 {
                    log::info!(target: RETENTION,
                        "spec={:?} evaluation {}: {} of {} build(s) deleted ({} rows)",
                        p.spec, p.eval, p.deleted, p.builds, p.rows
                    );
                }
            }
            ChunkEnd::Deleted => {
                log::info!(target: RETENTION,
                    "spec={:?} evaluation {} deleted: {} build(s), {} rows",
                    p.spec, p.eval, p.deleted, p.rows
                );
                self.current = None;
                // The next may be due at once.
                self.next_check = now;
            }
            ChunkEnd::Kept => {
                log::info!(target: RETENTION,
                    "spec={:?} evaluation {} kept: builds of it are pending again ({} build(s) deleted)",
                    p.spec, p.eval, p.deleted
                );
                self.current = None;
                self.next_check = now;
            }
        }
        Some(Deleted {
            builds: chunk.builds,
            outputs: chunk.outputs,
        })
    }
}

#[cfg(test)]
mod tests;

//! The build queue: its order, and why a pending build waits.
//!
//! A scheduled build's place is its `queue_rank` (its spec's priority ×
//! 10 plus its job's, 0 first; today's Cuirass, `build-priority`), then
//! its id (age).  Builds wait for their inputs: a build whose input
//! derivation has a pending build of its own is dispatched after it, and
//! one whose input's latest build failed is failed-dependency without
//! reaching the daemon.

use super::read::BuildView;
use super::{BuildId, BuildStatus, Db, EvalId, PendingBuild, Result, status};
use crate::build::Limits;
use rusqlite::{OptionalExtension, Transaction, params};

/// The priority of a spec that gives none (and of every 2018 spec).
pub const DEFAULT_SPEC_PRIORITY: i64 = 9;

/// The priority of the spec of evaluation `eval`, 0–9: its
/// `Specifications.priority` (today's spec records), else
/// [`DEFAULT_SPEC_PRIORITY`].
pub(super) fn spec_priority_of_evaluation(tx: &Transaction, eval: EvalId) -> Result<i64> {
    let priority: Option<Option<i64>> = tx
        .prepare_cached(
            "SELECT s.priority FROM Evaluations e
             JOIN Specifications s ON s.repo_name = e.specification WHERE e.id = ?1",
        )?
        .query_row([eval], |r| r.get(0))
        .optional()?;
    Ok(priority
        .flatten()
        .unwrap_or(DEFAULT_SPEC_PRIORITY)
        .clamp(0, 9))
}

/// Whether a scheduled build may be handed to the daemon now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// No longer scheduled (started, finished or deleted since read).
    Gone,
    /// An input's latest build is pending: this one goes after it.
    Waiting {
        input: BuildId,
    },
    /// An input's latest build failed: this one cannot be built.
    InputFailed {
        input: BuildId,
    },
    Ready,
}

/// Where a pending build stands, for its JSON and its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Handed to the daemon.
    Started,
    /// `position` builds (1-based, started ones included) start before
    /// it or with it, in queue order.
    Queued { position: i64 },
    /// Its input's build `input` (status `status`) must succeed first.
    Dependency { input: BuildId, status: BuildStatus },
    /// More than [`POSITION_LIMIT`] builds are ahead: its position is
    /// `position` or later.
    QueuedBeyond { position: i64 },
    /// Its specification is not polled any more: nothing dispatches it.
    Inactive,
}

/// Scheduled builds of active specs strictly between (rank ?1, id ?2)
/// and (rank ?3, id ?4) in queue order, at most about ?5: three ranges of
/// `Builds_queue` (the rest of rank ?1, the ranks between, the start of
/// rank ?3), since SQLite seeks a row-value range `(rank, id) > (…)` on
/// its first column only, and would walk a whole rank's builds; the join
/// order is pinned so that the walk drives it.
fn scheduled_between_sql() -> String {
    let part = |range: &str| {
        format!(
            "(SELECT COUNT(*) FROM
              (SELECT 1 FROM Builds b INDEXED BY Builds_queue
               CROSS JOIN Evaluations e ON e.id = b.evaluation
               CROSS JOIN Specifications s ON s.repo_name = e.specification
               WHERE b.status < 0 AND b.status = -2 AND {range} AND s.is_active != 0
               LIMIT ?5))"
        )
    };
    format!(
        "SELECT {} + {} + {}",
        part(
            "b.queue_rank = ?1 AND b.id > ?2
             AND b.id < CASE WHEN ?1 < ?3 THEN 9223372036854775807 ELSE ?4 END"
        ),
        part("b.queue_rank > ?1 AND b.queue_rank < ?3"),
        part("b.queue_rank = ?3 AND ?1 < ?3 AND b.id < ?4"),
    )
}

/// How far a listing of the queue, answered a page at a time, has
/// counted positions; the default at its first page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Builds that count for positions (started ones, scheduled ones of
    /// active specs) up to the last one listed.
    pub ahead: i64,
    /// A filtered listing's last scheduled build counted, (rank, id):
    /// the builds after it, up to the next one listed, are counted then.
    pub last: Option<(i64, BuildId)>,
    /// A filtered listing has counted every started build.
    pub started: bool,
}

/// A single build's position is counted up to this many builds ahead, so
/// that a request for a build at the back of a huge queue stays short
/// (counting 100,000 takes 0.1 s).
pub const POSITION_LIMIT: i64 = 10_000;

/// The builds that list derivation ?1 as an input: a seek in each part
/// of `Inputs_derivation` (migrations 22 and 24), named, as SQLite's OR
/// plan misses the fresh part's expression key.
macro_rules! builds_with_input_sql {
    () => {
        "SELECT build FROM Inputs INDEXED BY Inputs_derivation
         WHERE derivation = CAST(?1 AS TEXT) AND fresh = 0
         UNION ALL
         SELECT build FROM Inputs INDEXED BY Inputs_derivation_fresh
         WHERE substr(derivation, 12, 8) = substr(CAST(?1 AS TEXT), 12, 8)
           AND derivation = CAST(?1 AS TEXT) AND fresh = 1"
    };
}

/// Whether a scheduled build lists derivation ?1 as an input, then each
/// build by id.
pub(crate) const SCHEDULED_DEPENDENTS: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM Builds b WHERE b.status = -2 AND b.id IN (",
    builds_with_input_sql!(),
    "))"
);

/// Schedules again the failed-dependency builds that list derivation ?1
/// as an input.
pub(crate) const RESCHEDULE_DEPENDENTS: &str = concat!(
    "UPDATE Builds SET status = -2, starttime = 0, stoptime = 0, errormsg = NULL
     WHERE status = 2 AND id IN (",
    builds_with_input_sql!(),
    ")"
);

/// The latest build of each input derivation of build `?1`: (id, status).
/// Parameters go through `CAST`: SQLite re-prepares a statement at each
/// call when a bound value might change its plan (partial indexes).
const INPUT_BUILDS: &str = concat!(
    "SELECT b.id, b.status FROM Inputs i
     JOIN Builds b ON b.id = (SELECT max(id) FROM Builds WHERE ",
    super::fresh::builds_of_derivation_sql!("id", "i.derivation"),
    ") WHERE i.build = CAST(?1 AS INTEGER)"
);

impl Db {
    /// Up to `limit` scheduled builds of every spec after `after` (a
    /// previous page's last `(rank, id)`), in dispatch order: one page of
    /// the queue, down `Builds_queue` (keyset pagination, so every page
    /// costs the same, however long the queue).
    pub fn dispatch_page(
        &self,
        after: Option<(i64, BuildId)>,
        limit: usize,
    ) -> Result<Vec<PendingBuild>> {
        let (rank, id) = after.unwrap_or((i64::MIN, BuildId(0)));
        // Literal statuses: the partial index's WHERE must be provable.
        let mut stmt = self.conn.prepare_cached(
            "SELECT b.id, b.derivation, b.evaluation, e.specification, b.maxsilent, b.timeout,
                    b.queue_rank
             FROM Builds b INDEXED BY Builds_queue JOIN Evaluations e ON e.id = b.evaluation
             WHERE b.status < 0 AND b.status = -2 AND (b.queue_rank, b.id) > (?1, ?2)
             ORDER BY b.status DESC, b.queue_rank, b.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![rank, id, limit as i64], |r| {
            Ok(PendingBuild {
                id: r.get(0)?,
                derivation: r.get(1)?,
                evaluation: r.get(2)?,
                specification: r.get(3)?,
                limits: Limits {
                    max_silent_time: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                    timeout: r.get::<_, Option<i64>>(5)?.map(|t| t as u64),
                },
                rank: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Whether build `id` may be dispatched now; see [`Readiness`].
    pub fn readiness(&self, id: BuildId) -> Result<Readiness> {
        let own: Option<BuildStatus> = self
            .conn
            .prepare_cached("SELECT status FROM Builds WHERE id = CAST(?1 AS INTEGER)")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        if own != Some(status::SCHEDULED) {
            return Ok(Readiness::Gone);
        }
        Ok(match self.blocking_input(id)? {
            Some((input, st)) if !st.is_final() => Readiness::Waiting { input },
            Some((input, _)) => Readiness::InputFailed { input },
            None => Readiness::Ready,
        })
    }

    /// The input build that keeps build `id` from starting: a pending one
    /// first, else a failed one (failed, failed-dependency, failed-other);
    /// (id, status).
    fn blocking_input(&self, id: BuildId) -> Result<Option<(BuildId, BuildStatus)>> {
        let inputs = self
            .conn
            .prepare_cached(INPUT_BUILDS)?
            .query_map([id], |r| {
                Ok((r.get::<_, BuildId>(0)?, r.get::<_, BuildStatus>(1)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let failed = |s: BuildStatus| {
            matches!(
                s,
                status::FAILED | status::FAILED_DEPENDENCY | status::FAILED_OTHER
            )
        };
        Ok(inputs
            .iter()
            .find(|(_, s)| !s.is_final())
            .or_else(|| inputs.iter().find(|(_, s)| failed(*s)))
            .copied())
    }

    /// Build `id` was handed to the daemon: it is listed as started (the
    /// daemon's `build-started` sets the real start time); a lost
    /// connection puts it back with [`Db::reschedule`].  Written with the
    /// statuses of a loop turn ([`Db::record_statuses`]).
    pub(super) fn mark_dispatched(tx: &Transaction, id: BuildId, now: i64) -> Result<usize> {
        Ok(tx
            .prepare_cached(
                "UPDATE Builds SET status = -1, starttime = ?2
                 WHERE id = CAST(?1 AS INTEGER) AND status = -2",
            )?
            .execute(params![id, now])?)
    }

    /// Whether a scheduled build lists `derivation` as an input: once it
    /// is built, such a build may start (or was just scheduled again).
    pub fn has_scheduled_dependents(&self, derivation: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(SCHEDULED_DEPENDENTS)?
            .query_row([derivation], |r| r.get(0))?)
    }

    /// `derivation` was built: builds that were failed-dependency and list
    /// it as an input are scheduled again (a restarted input, or a newer
    /// evaluation that built it); one still missing another input is
    /// failed again when its turn comes.  Returns how many.
    pub(super) fn reschedule_dependents(tx: &Transaction, derivation: &str) -> Result<usize> {
        Ok(tx
            .prepare_cached(RESCHEDULE_DEPENDENTS)?
            .execute([derivation])?)
    }

    /// Whether `spec` is polled: it exists, and is not marked inactive
    /// (`Specifications.is_active` = 0).
    pub fn spec_is_active(&self, spec: &str) -> Result<bool> {
        Ok(self.specification_active(spec)?.unwrap_or(false))
    }

    /// Where pending build `id` (status `st`, rank `rank`, of `spec`)
    /// stands.  Its position counts the started builds and the scheduled
    /// ones of active specs ahead of it in queue order (counted up to
    /// [`POSITION_LIMIT`], in the head of the queue kept until the
    /// database changes: `queue_head`); builds ahead
    /// that wait for an input are counted too, so it is the latest place
    /// it can start at.
    pub fn waiting(
        &self,
        id: BuildId,
        st: BuildStatus,
        rank: i64,
        spec: &str,
    ) -> Result<Option<Waiting>> {
        self.waiting_with(id, st, spec, || Ok(self.builds_ahead(rank, id)? + 1))
            .map(|w| match w {
                Some(Waiting::Queued { position }) if position > POSITION_LIMIT + 1 => {
                    Some(Waiting::QueuedBeyond { position })
                }
                w => w,
            })
    }

    /// [`Db::waiting`] with the position given by `position` when it is
    /// asked for.
    fn waiting_with(
        &self,
        id: BuildId,
        st: BuildStatus,
        spec: &str,
        position: impl FnOnce() -> Result<i64>,
    ) -> Result<Option<Waiting>> {
        if status::is_final(st) {
            return Ok(None);
        }
        if st == status::STARTED {
            return Ok(Some(Waiting::Started));
        }
        if !self.spec_is_active(spec)? {
            return Ok(Some(Waiting::Inactive));
        }
        if let Some((input, status)) = self.blocking_input(id)? {
            return Ok(Some(Waiting::Dependency { input, status }));
        }
        Ok(Some(Waiting::Queued {
            position: position()?,
        }))
    }

    /// Fills in the `waiting` of a page of the whole queue (in its
    /// order), which follows `counted.ahead` builds that count for
    /// positions; returns the count after this page.  A page costs
    /// O(page), not O(position).
    pub(super) fn fill_waiting(
        &self,
        builds: &mut [BuildView],
        counted: Counted,
    ) -> Result<Counted> {
        let mut ahead = counted.ahead;
        // A page holds few specs: each is looked up once.
        let mut active = std::collections::HashMap::new();
        for b in builds {
            let spec_active = match active.get(&b.specification) {
                Some(&a) => a,
                None => {
                    let a = self.spec_is_active(&b.specification)?;
                    active.insert(b.specification.clone(), a);
                    a
                }
            };
            b.waiting = match (b.status, spec_active) {
                (st, _) if status::is_final(st) => None,
                (status::STARTED, _) => Some(Waiting::Started),
                (_, false) => Some(Waiting::Inactive),
                _ => Some(match self.blocking_input(b.id)? {
                    Some((input, status)) => Waiting::Dependency { input, status },
                    None => Waiting::Queued {
                        position: ahead + 1,
                    },
                }),
            };
            if b.status == status::STARTED || spec_active {
                ahead += 1;
            }
        }
        Ok(Counted { ahead, ..counted })
    }

    /// [`Db::fill_waiting`] for a filtered listing, whose builds are not
    /// consecutive in the queue: the builds between two listed ones are
    /// counted (an index range walk, so a page costs O(the queue it
    /// spans), stopped past [`POSITION_LIMIT`]), and every started build
    /// counts, listed or not.
    pub(super) fn fill_waiting_filtered(
        &self,
        builds: &mut [BuildView],
        mut counted: Counted,
    ) -> Result<Counted> {
        for b in builds {
            if status::is_final(b.status) {
                b.waiting = None;
                continue;
            }
            if b.status == status::STARTED {
                b.waiting = Some(Waiting::Started);
                continue;
            }
            if !counted.started {
                counted.ahead = self
                    .conn
                    .prepare_cached(
                        "SELECT COUNT(*) FROM Builds INDEXED BY Builds_queue
                         WHERE status < 0 AND status = -1",
                    )?
                    .query_row([], |r| r.get(0))?;
                counted.started = true;
            }
            if counted.ahead <= POSITION_LIMIT {
                let (rank, id) = counted.last.unwrap_or((i64::MIN, BuildId(0)));
                counted.ahead += self
                    .conn
                    .prepare_cached(&scheduled_between_sql())?
                    .query_row(
                        params![rank, id, b.rank, b.id, POSITION_LIMIT + 1 - counted.ahead],
                        |r| r.get::<_, i64>(0),
                    )?;
            }
            let active = self.spec_is_active(&b.specification)?;
            b.waiting = Some(match (active, self.blocking_input(b.id)?) {
                (false, _) => Waiting::Inactive,
                (true, Some((input, status))) => Waiting::Dependency { input, status },
                (true, None) if counted.ahead > POSITION_LIMIT => Waiting::QueuedBeyond {
                    position: counted.ahead + 1,
                },
                (true, None) => Waiting::Queued {
                    position: counted.ahead + 1,
                },
            });
            if active {
                counted.ahead += 1;
                counted.last = Some((b.rank, b.id));
            }
        }
        Ok(counted)
    }
}

//! Build statuses as the daemon reports them, and what is kept as
//! builds finish: the build-duration histogram, each build's weather and
//! its counts, and the events of weather changes.

use super::events::{self, Weathers};
use super::fresh::builds_of_derivation_sql;
use super::{BuildId, BuildStatus, Db, EvalId, Result, status};
use rusqlite::{OptionalExtension, Transaction, params};

/// The unfinished builds of one derivation, looked up for each status
/// change the daemon reports, oldest evaluation first (the index's own
/// order): a derivation pending in two evaluations finishes in both at
/// once, and the later one's weather compares with the earlier one's.
pub(super) const PENDING_BUILDS_OF_DERIVATION: &str = concat!(
    "SELECT id, starttime, evaluation FROM Builds WHERE ",
    builds_of_derivation_sql!("id", "?1"),
    " AND status < 0 ORDER BY evaluation, id"
);

/// Builds of one derivation that finished with a log, which each of them
/// keeps a copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub derivation: String,
    pub builds: Vec<BuildId>,
    /// The daemon's log file.
    pub log: String,
}

/// Upper bounds of the build-duration histogram's buckets, in seconds:
/// from a trivial derivation to a day-long toolchain build.
pub const BUILD_DURATION_BOUNDS: &[i64] =
    &[1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400];

/// Build durations gathered in one transaction: (count, sum) per bucket.
#[derive(Debug)]
struct Durations {
    buckets: [(i64, f64); BUILD_DURATION_BOUNDS.len() + 1],
}

impl Default for Durations {
    fn default() -> Durations {
        Durations {
            buckets: [(0, 0.0); BUILD_DURATION_BOUNDS.len() + 1],
        }
    }
}

/// What one transaction's finished builds add up to, written once at
/// its end ([`Db::add_tally`]).
#[derive(Debug, Default)]
struct Tally {
    durations: Durations,
    weathers: Weathers,
    /// How new events start ([`events::delivery`]).
    delivery: i64,
}

impl Durations {
    fn add(&mut self, secs: i64) {
        let b = &mut self.buckets[duration_bucket(secs)];
        b.0 += 1;
        b.1 += secs as f64;
    }
}

/// The bucket of a build that took `secs`: the first bound it fits, or
/// one past the last.
pub fn duration_bucket(secs: i64) -> usize {
    BUILD_DURATION_BOUNDS
        .iter()
        .position(|&b| secs <= b)
        .unwrap_or(BUILD_DURATION_BOUNDS.len())
}

impl Db {
    pub fn build_started(&mut self, derivation: &str, log: &str, now: i64) -> Result<usize> {
        Ok(self
            .conn
            .prepare_cached(concat!(
                "UPDATE Builds SET status = ?2, starttime = ?3, log = ?4 WHERE ",
                builds_of_derivation_sql!("id", "?1"),
                " AND status < 0"
            ))?
            .execute(params![derivation, status::STARTED, now, log])?)
    }

    /// Gives every unfinished build of `derivation` its final status.  A
    /// build never seen starting gets `now` as its start time too, so
    /// finished builds always have both times.
    pub fn build_finished(
        &mut self,
        derivation: &str,
        final_status: BuildStatus,
        log: Option<&str>,
        now: i64,
    ) -> Result<usize> {
        debug_assert!(status::is_final(final_status));
        let mut tally = self.tally();
        let tx = self.write()?;
        let changed = Db::finish(
            &tx,
            derivation,
            final_status,
            (log, None, None),
            now,
            &mut tally,
        )?;
        Db::add_tally(&tx, &tally)?;
        tx.commit()?;
        Ok(changed.len())
    }

    /// Applies many build updates in one transaction (a batch's outcome).
    pub fn finish_builds(
        &mut self,
        updates: &[(String, BuildStatus, Option<String>)],
        now: i64,
    ) -> Result<()> {
        let mut tally = self.tally();
        let tx = self.write()?;
        for (drv, st, log) in updates {
            let details = (log.as_deref(), None, None);
            Db::finish(&tx, drv, *st, details, now, &mut tally)?;
        }
        Db::add_tally(&tx, &tally)?;
        tx.commit()?;
        Ok(())
    }

    fn tally(&self) -> Tally {
        Tally {
            delivery: events::delivery::initial(self.notifying),
            ..Tally::default()
        }
    }

    /// Every build reaches a final status with a start time here, so this
    /// is where the duration histogram is fed and the weather computed
    /// (once: it is kept); `tally` collects one entry per build, written
    /// by [`Db::add_tally`] once per transaction rather than once per
    /// build.  A weather change is an event, in the same transaction.  `(log, reason, worker)`:
    /// the log file, if known now, the daemon's reason for a failure, and
    /// the machine it ran on unless one was recorded already.
    fn finish(
        tx: &Transaction,
        drv: &str,
        st: BuildStatus,
        (log, reason, worker): (Option<&str>, Option<&str>, Option<&str>),
        now: i64,
        tally: &mut Tally,
    ) -> Result<Vec<BuildId>> {
        // A SELECT then an UPDATE by row id: RETURNING would build and
        // drop an ephemeral table per statement, the costliest part of it.
        let mut pending = tx.prepare_cached(PENDING_BUILDS_OF_DERIVATION)?;
        let mut update = tx.prepare_cached(
            "UPDATE Builds SET status = ?2, stoptime = ?3, starttime = ?4,
               log = coalesce(?5, log), errormsg = ?6, worker = coalesce(worker, ?7),
               weather = ?8
             WHERE id = ?1",
        )?;
        // Collected before any is changed, so that the updates cannot move
        // rows under the SELECT's cursor.
        let builds = pending
            .query_map(params![drv], |r| {
                Ok((
                    r.get::<_, BuildId>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, EvalId>(2)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for &(id, started, eval) in &builds {
            let started = if started == 0 { now } else { started };
            let weather = Db::weather_on_finish(tx, (id, drv, eval, st), now, tally)?;
            update.execute(params![id, st, now, started, log, reason, worker, weather])?;
            tally.durations.add(now - started);
        }
        if st == status::SUCCEEDED && !builds.is_empty() {
            Db::reschedule_dependents(tx, drv)?;
        }
        Ok(builds.into_iter().map(|(id, ..)| id).collect())
    }

    /// The weather of build `id` (of `drv` in evaluation `eval`) finishing
    /// in status `st`, counted, and its event if it is a change; `None`
    /// for a status that says nothing about its job (canceled).
    fn weather_on_finish(
        tx: &Transaction,
        (id, drv, eval, st): (BuildId, &str, EvalId, BuildStatus),
        now: i64,
        tally: &mut Tally,
    ) -> Result<Option<i64>> {
        use super::read::weather;
        if !weather::counts(st) {
            return Ok(None);
        }
        let Some(job) = Db::job_of(tx, id, eval)? else {
            return Ok(None);
        };
        let w = weather::of(st, job.previous);
        *tally
            .weathers
            .entry((job.specification.clone(), w))
            .or_default() += 1;
        if let Some(kind) = events::kind::of_weather(w) {
            let event = events::NewEvent {
                kind,
                specification: &job.specification,
                evaluation: eval,
                revision: &job.revision,
                build: Some(events::EventBuild {
                    id,
                    job_name: &job.job_name,
                    derivation: drv,
                    status: st,
                    weather: w,
                }),
                error: None,
            };
            Db::insert_event(tx, &event, now, tally.delivery)?;
        }
        Ok(Some(w))
    }

    fn add_tally(tx: &Transaction, tally: &Tally) -> Result<()> {
        Db::add_durations(tx, &tally.durations)?;
        Db::add_weathers(tx, &tally.weathers)
    }

    fn add_durations(tx: &Transaction, durations: &Durations) -> Result<()> {
        let mut bump = tx.prepare_cached(
            "INSERT INTO BuildDurations (bucket, count, sum) VALUES (?1, ?2, ?3)
             ON CONFLICT (bucket) DO UPDATE
               SET count = count + excluded.count, sum = sum + excluded.sum",
        )?;
        for (bucket, &(count, sum)) in durations.buckets.iter().enumerate() {
            if count > 0 {
                bump.execute(params![bucket as i64, count, sum])?;
            }
        }
        Ok(())
    }

    /// Records what the daemon said in one read, in one transaction.  A
    /// build that started and finished within the same read is written
    /// once, with both times.  Returns the builds finished with a log:
    /// the IDs of each derivation's builds, and that log.
    pub fn apply_build_updates(
        &mut self,
        updates: &[crate::records::Update],
        now: i64,
    ) -> Result<Vec<(Vec<BuildId>, String)>> {
        Ok(self
            .record_statuses(&[], updates, now)?
            .into_iter()
            .map(|l| (l.builds, l.log))
            .collect())
    }

    /// Writes what the loop gathered since its last write, in one
    /// transaction: builds handed to the daemon (`dispatched`: listed as
    /// started from now, unless no longer scheduled), then the daemon's
    /// `updates`, as [`Db::apply_build_updates`] does.  Returns the
    /// builds finished with a log.
    pub fn record_statuses(
        &mut self,
        dispatched: &[BuildId],
        updates: &[crate::records::Update],
        now: i64,
    ) -> Result<Vec<Logged>> {
        self.record_statuses_at(dispatched, updates, &|_| now, now)
    }

    /// [`Db::record_statuses`] with each update's own time: `time_of(i)`
    /// is when `updates[i]` was read from the daemon (Unix seconds), so
    /// that a write held back by a busy loop turn does not shorten or
    /// lengthen a build's recorded run.
    pub fn record_statuses_at(
        &mut self,
        dispatched: &[BuildId],
        updates: &[crate::records::Update],
        time_of: &dyn Fn(usize) -> i64,
        now: i64,
    ) -> Result<Vec<Logged>> {
        use crate::records::Update;
        let mut logged = Vec::new();
        if updates.is_empty() && dispatched.is_empty() {
            return Ok(logged);
        }
        let finished_here: std::collections::HashSet<&str> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Finished { derivation, .. } => Some(derivation.as_str()),
                Update::Started { .. } | Update::Remote { .. } => None,
            })
            .collect();
        let started_here: std::collections::HashSet<&str> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Started { derivation, .. } => Some(derivation.as_str()),
                _ => None,
            })
            .collect();
        let mut tally = self.tally();
        let tx = self.write()?;
        for &id in dispatched {
            Db::mark_dispatched(&tx, id, now)?;
        }
        for (i, u) in updates.iter().enumerate() {
            let at = time_of(i);
            match u {
                Update::Started { derivation, log } => {
                    if !finished_here.contains(derivation.as_str()) {
                        // Local until `@ build-remote` says otherwise.
                        tx.prepare_cached(concat!(
                            "UPDATE Builds SET status = ?2, starttime = ?3, log = ?4,
                                                   worker = ?5 WHERE ",
                            builds_of_derivation_sql!("id", "?1"),
                            " AND status < 0"
                        ))?
                        .execute(params![
                            derivation,
                            status::STARTED,
                            at,
                            log,
                            crate::build::LOCALHOST
                        ])?;
                    }
                }
                Update::Remote { derivation, host } => {
                    tx.prepare_cached(concat!(
                        "UPDATE Builds SET worker = ?2 WHERE ",
                        builds_of_derivation_sql!("id", "?1"),
                        " AND status < 0"
                    ))?
                    .execute(params![derivation, host])?;
                }
                Update::Finished {
                    derivation,
                    status,
                    log,
                    reason,
                } => {
                    // Started and finished within this read: its start
                    // was not written, nor its machine.
                    let worker = started_here
                        .contains(derivation.as_str())
                        .then_some(crate::build::LOCALHOST);
                    let ids = Db::finish(
                        &tx,
                        derivation,
                        *status,
                        (log.as_deref(), reason.as_deref(), worker),
                        at,
                        &mut tally,
                    )?;
                    if let Some(log) = log.as_ref().filter(|_| !ids.is_empty()) {
                        logged.push(Logged {
                            derivation: derivation.clone(),
                            builds: ids,
                            log: log.clone(),
                        });
                    }
                }
            }
        }
        Db::add_tally(&tx, &tally)?;
        tx.commit()?;
        Ok(logged)
    }

    /// Build `id` is failed-dependency because build `input` failed; it
    /// never reached the daemon, so it has no log, and took no time (a
    /// zero in the duration histogram, like every finished build).
    pub fn fail_dependency(&mut self, id: BuildId, input: BuildId, now: i64) -> Result<usize> {
        let tx = self.write()?;
        let changed = tx
            .prepare_cached(
                "UPDATE Builds SET status = ?2, starttime = ?3, stoptime = ?3,
                   errormsg = 'dependency build ' || ?4 || ' failed'
                 WHERE id = ?1 AND status = -2",
            )?
            .execute(params![id, status::FAILED_DEPENDENCY, now, input])?;
        let mut durations = Durations::default();
        if changed > 0 {
            durations.add(0);
        }
        Db::add_durations(&tx, &durations)?;
        tx.commit()?;
        Ok(changed)
    }

    /// Build `id`'s status, None for no such build.
    pub fn build_status(&self, id: BuildId) -> Result<Option<BuildStatus>> {
        Ok(self
            .conn
            .prepare_cached("SELECT status FROM Builds WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// At start-up, builds left `started` by a previous process go back to
    /// `scheduled`: the daemon forgot them when our connection closed.
    pub fn reset_started_builds(&mut self) -> Result<usize> {
        // Literal statuses, so that SQLite may use the partial Builds_queue
        // index (its WHERE must be provable from the query's).
        Ok(self.conn.execute(
            "UPDATE Builds SET status = -2, starttime = 0 WHERE status = -1",
            [],
        )?)
    }

    /// Puts builds of these derivations that were `started` back to
    /// `scheduled` (their daemon connection was lost).
    pub fn reschedule(&mut self, derivations: &[String]) -> Result<usize> {
        let tx = self.write()?;
        let mut changed = 0;
        {
            let mut stmt = tx.prepare_cached(concat!(
                "UPDATE Builds SET status = ?2, starttime = 0 WHERE ",
                builds_of_derivation_sql!("id", "?1"),
                " AND status = ?3"
            ))?;
            for drv in derivations {
                changed += stmt.execute(params![drv, status::SCHEDULED, status::STARTED])?;
            }
        }
        tx.commit()?;
        Ok(changed)
    }
}

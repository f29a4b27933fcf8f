//! Build statuses as the daemon reports them, and the build-duration
//! histogram fed as builds finish.

use super::{BuildId, Db, Result, status};
use rusqlite::{OptionalExtension, Transaction, params};

/// The unfinished builds of one derivation, looked up for each status
/// change the daemon reports.
pub(super) const PENDING_BUILDS_OF_DERIVATION: &str =
    "SELECT id, starttime FROM Builds WHERE derivation = ?1 AND status < 0";

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
            .prepare_cached(
                "UPDATE Builds SET status = ?2, starttime = ?3, log = ?4
                 WHERE derivation = ?1 AND status < 0",
            )?
            .execute(params![derivation, status::STARTED, now, log])?)
    }

    /// Gives every unfinished build of `derivation` its final status.  A
    /// build never seen starting gets `now` as its start time too, so
    /// finished builds always have both times.
    pub fn build_finished(
        &mut self,
        derivation: &str,
        final_status: i64,
        log: Option<&str>,
        now: i64,
    ) -> Result<usize> {
        debug_assert!(status::is_final(final_status));
        let tx = self.conn.transaction()?;
        let mut durations = Durations::default();
        let changed = Db::finish(
            &tx,
            derivation,
            final_status,
            (log, None, None),
            now,
            &mut durations,
        )?;
        Db::add_durations(&tx, &durations)?;
        tx.commit()?;
        Ok(changed.len())
    }

    /// Applies many build updates in one transaction (a batch's outcome).
    pub fn finish_builds(
        &mut self,
        updates: &[(String, i64, Option<String>)],
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let mut durations = Durations::default();
        for (drv, st, log) in updates {
            let details = (log.as_deref(), None, None);
            Db::finish(&tx, drv, *st, details, now, &mut durations)?;
        }
        Db::add_durations(&tx, &durations)?;
        tx.commit()?;
        Ok(())
    }

    /// Every build reaches a final status with a start time here, so this
    /// is where the duration histogram is fed; `durations` collects one
    /// entry per build, written by [`Db::add_durations`] once per
    /// transaction rather than once per build.  `(log, reason, worker)`:
    /// the log file, if known now, the daemon's reason for a failure, and
    /// the machine it ran on unless one was recorded already.
    fn finish(
        tx: &Transaction,
        drv: &str,
        st: i64,
        (log, reason, worker): (Option<&str>, Option<&str>, Option<&str>),
        now: i64,
        durations: &mut Durations,
    ) -> Result<Vec<BuildId>> {
        // A SELECT then an UPDATE by row id: RETURNING would build and
        // drop an ephemeral table per statement, the costliest part of it.
        let mut pending = tx.prepare_cached(PENDING_BUILDS_OF_DERIVATION)?;
        let mut update = tx.prepare_cached(
            "UPDATE Builds SET status = ?2, stoptime = ?3, starttime = ?4,
               log = coalesce(?5, log), errormsg = ?6, worker = coalesce(worker, ?7)
             WHERE id = ?1",
        )?;
        // Collected before any is changed, so that the updates cannot move
        // rows under the SELECT's cursor.
        let builds = pending
            .query_map(params![drv], |r| {
                Ok((r.get::<_, BuildId>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for &(id, started) in &builds {
            let started = if started == 0 { now } else { started };
            update.execute(params![id, st, now, started, log, reason, worker])?;
            durations.add(now - started);
        }
        Ok(builds.into_iter().map(|(id, _)| id).collect())
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
        use crate::records::Update;
        let mut logged = Vec::new();
        if updates.is_empty() {
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
        let mut durations = Durations::default();
        let tx = self.conn.transaction()?;
        for u in updates {
            match u {
                Update::Started { derivation, log } => {
                    if !finished_here.contains(derivation.as_str()) {
                        // Local until `@ build-remote` says otherwise.
                        tx.prepare_cached(
                            "UPDATE Builds SET status = ?2, starttime = ?3, log = ?4, worker = ?5
                             WHERE derivation = ?1 AND status < 0",
                        )?
                        .execute(params![
                            derivation,
                            status::STARTED,
                            now,
                            log,
                            crate::build::LOCALHOST
                        ])?;
                    }
                }
                Update::Remote { derivation, host } => {
                    tx.prepare_cached(
                        "UPDATE Builds SET worker = ?2 WHERE derivation = ?1 AND status < 0",
                    )?
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
                        now,
                        &mut durations,
                    )?;
                    if let Some(log) = log.as_ref().filter(|_| !ids.is_empty()) {
                        logged.push((ids, log.clone()));
                    }
                }
            }
        }
        Db::add_durations(&tx, &durations)?;
        tx.commit()?;
        Ok(logged)
    }

    /// Build `id`'s status, None for no such build.
    pub fn build_status(&self, id: BuildId) -> Result<Option<i64>> {
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
        let tx = self.conn.transaction()?;
        let mut changed = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE Builds SET status = ?2, starttime = 0 WHERE derivation = ?1 AND status = ?3",
            )?;
            for drv in derivations {
                changed += stmt.execute(params![drv, status::SCHEDULED, status::STARTED])?;
            }
        }
        tx.commit()?;
        Ok(changed)
    }
}

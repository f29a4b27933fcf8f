//! Events: a job's weather changing (a new failure, a fix) and a failed
//! evaluation, recorded in the transaction that finishes the build or the
//! evaluation.  They are what the notification command hears of (their
//! delivery is a queue in the same table, so none is lost over a
//! restart) and what `/events/rss` lists.  Also the weather counts of
//! `/metrics`.

use super::{BuildId, BuildStatus, Db, EvalId, Result};
use rusqlite::{OptionalExtension, Row, Transaction, params};
use std::collections::BTreeMap;

/// Weathers counted in one transaction: (specification, weather) → builds.
pub(super) type Weathers = BTreeMap<(String, i64), i64>;

/// What an event is about, as `Events.kind` and the event JSON spell it.
pub mod kind {
    use crate::db::read::weather;

    /// A job's build failed after its previous one succeeded.
    pub const NEW_FAILURE: &str = "new-failure";
    /// A job's build succeeded after its previous one failed.
    pub const FIXED: &str = "fixed";
    /// An evaluation failed (`Evaluations.error` says why).
    pub const EVALUATION_FAILED: &str = "evaluation-failed";

    /// The event a weather makes, if it is a change.
    pub fn of_weather(w: i64) -> Option<&'static str> {
        match w {
            weather::NEW_FAILURE => Some(NEW_FAILURE),
            weather::NEW_SUCCESS => Some(FIXED),
            _ => None,
        }
    }
}

/// Where an event's delivery to the notification command stands.
pub mod delivery {
    /// Waiting for its first attempt or a retry.
    pub const QUEUED: i64 = 0;
    pub const SENT: i64 = 1;
    /// Every attempt failed; the event stays listed.
    pub const GAVE_UP: i64 = 2;
    /// Recorded while no notification command was configured.
    pub const NONE: i64 = 3;

    /// How a new event starts.
    pub fn initial(notifying: bool) -> i64 {
        if notifying { QUEUED } else { NONE }
    }

    /// The name `/metrics` gives a delivery state.
    pub fn name(d: i64) -> &'static str {
        match d {
            QUEUED => "queued",
            SENT => "sent",
            GAVE_UP => "gave-up",
            _ => "none",
        }
    }
}

/// An event to record.
#[derive(Debug)]
pub(super) struct NewEvent<'a> {
    pub kind: &'static str,
    pub specification: &'a str,
    pub evaluation: EvalId,
    pub revision: &'a str,
    /// For a weather change: the build, its job and derivation, its
    /// status and weather.
    pub build: Option<EventBuild<'a>>,
    pub error: Option<&'a str>,
}

#[derive(Debug)]
pub(super) struct EventBuild<'a> {
    pub id: BuildId,
    pub job_name: &'a str,
    pub derivation: &'a str,
    pub status: BuildStatus,
    pub weather: i64,
}

/// A recorded event, as notifications and the feed show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub id: i64,
    /// Unix seconds.
    pub timestamp: i64,
    /// One of [`kind`].
    pub kind: String,
    pub specification: String,
    pub evaluation: EvalId,
    /// The evaluated commit.
    pub revision: String,
    pub build: Option<BuildId>,
    pub job_name: Option<String>,
    pub derivation: Option<String>,
    pub status: Option<BuildStatus>,
    pub weather: Option<i64>,
    /// A failed evaluation's reason.
    pub error: Option<String>,
    /// One of [`delivery`], and the attempts made so far.
    pub delivery: i64,
    pub attempts: u32,
    /// The specification's record (`Specifications.record`), where its
    /// `notifications` are; `None` for a 2018 alist or a deleted spec.
    pub record: Option<String>,
}

/// A build's job and what its weather compares with.
pub(super) struct JobOfBuild {
    pub job_name: String,
    pub specification: String,
    pub revision: String,
    /// The status of the job's previous finished build in its
    /// specification, under the name as a first or another name
    /// (`read::previous_status`).
    pub previous: Option<BuildStatus>,
}

/// The job of build ?1 (its derivation row's rowid, migration 25): its name, system,
/// specification and commit.  The parameters are cast so that SQLite
/// 3.54 does not re-prepare the statement for each new value (see
/// `read::bound_id`): bare, they made the trace-replay benchmark 2.5 times
/// slower.
/// Not for a build of a deleted specification (its tombstone's, see
/// `Db::delete_specification`): its weather would be counted and
/// notified under the tombstone's name, which outlives it on /metrics.
const JOB_OF_BUILD: &str = "SELECT d.job_name, d.system, e.specification, e.revision
     FROM Derivations d CROSS JOIN Evaluations e ON e.id = d.evaluation
     WHERE d.rowid = CAST(?1 AS INTEGER)
       AND NOT EXISTS (SELECT 1 FROM Specifications s
                       WHERE s.repo_name = e.specification AND s.deleting = 1)";

const EVENT_COLUMNS: &str = "SELECT v.id, v.timestamp, v.kind, v.specification, v.evaluation,
       v.revision, v.build, v.job_name, v.derivation, v.status, v.weather, v.error,
       v.delivery, v.attempts, s.record
     FROM Events v LEFT JOIN Specifications s ON s.repo_name = v.specification";

fn event_row(r: &Row) -> rusqlite::Result<EventView> {
    Ok(EventView {
        id: r.get(0)?,
        timestamp: r.get(1)?,
        kind: r.get(2)?,
        specification: r.get(3)?,
        evaluation: r.get(4)?,
        revision: r.get(5)?,
        build: r.get(6)?,
        job_name: r.get(7)?,
        derivation: r.get(8)?,
        status: r.get(9)?,
        weather: r.get(10)?,
        error: r.get(11)?,
        delivery: r.get(12)?,
        attempts: r.get(13)?,
        record: r.get(14)?,
    })
}

impl Db {
    /// Whether events recorded from now on are queued for the
    /// notification command (`--notify-command`), or only listed.
    pub fn set_notifying(&mut self, on: bool) {
        self.notifying = on;
    }

    pub(super) fn job_of(
        tx: &Transaction,
        id: BuildId,
        eval: EvalId,
    ) -> Result<Option<JobOfBuild>> {
        let job = tx
            .prepare_cached(JOB_OF_BUILD)?
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let Some((job_name, system, specification, revision)) = job else {
            return Ok(None);
        };
        let previous = super::read::previous_status(
            &mut tx.prepare_cached(super::read::previous_finished_build())?,
            &mut tx.prepare_cached(super::read::PREVIOUS_FINISHED_BUILD_OF_ALIAS)?,
            (&job_name, eval, &system),
            &specification,
        )?;
        Ok(Some(JobOfBuild {
            job_name,
            specification,
            revision,
            previous,
        }))
    }

    pub(super) fn insert_event(
        tx: &Transaction,
        e: &NewEvent,
        now: i64,
        delivery: i64,
    ) -> Result<()> {
        let b = e.build.as_ref();
        tx.prepare_cached(
            "INSERT INTO Events (timestamp, kind, specification, evaluation, revision, build,
                                 job_name, derivation, status, weather, error, delivery)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            now,
            e.kind,
            e.specification,
            e.evaluation,
            e.revision,
            b.map(|b| b.id),
            b.map(|b| b.job_name),
            b.map(|b| b.derivation),
            b.map(|b| b.status),
            b.map(|b| b.weather),
            e.error,
            delivery
        ])?;
        Ok(())
    }

    pub(super) fn add_weathers(tx: &Transaction, weathers: &Weathers) -> Result<()> {
        let mut bump = tx.prepare_cached(
            "INSERT INTO WeatherCounts (specification, weather, count) VALUES (?1, ?2, ?3)
             ON CONFLICT (specification, weather) DO UPDATE SET count = count + excluded.count",
        )?;
        for ((spec, w), n) in weathers {
            bump.execute(params![spec, w, n])?;
        }
        Ok(())
    }

    /// Up to `limit` events queued for the notification command whose id
    /// is above `after`, oldest first, each with the attempts made: a
    /// walk of the partial index `Events_queued`.
    pub fn queued_events(&self, after: i64, limit: usize) -> Result<Vec<(i64, u32)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, attempts FROM Events INDEXED BY Events_queued
             WHERE delivery = 0 AND id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn event(&self, id: i64) -> Result<Option<EventView>> {
        Ok(self
            .conn
            .prepare_cached(&format!("{EVENT_COLUMNS} WHERE v.id = ?1"))?
            .query_row([id], event_row)
            .optional()?)
    }

    /// The `limit` newest events, newest first.
    pub fn latest_events(&self, limit: u32) -> Result<Vec<EventView>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{EVENT_COLUMNS} ORDER BY v.id DESC LIMIT ?1"))?;
        let rows = stmt.query_map([limit], event_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records an attempt to deliver event `id`: sent, or failed with
    /// `error` (then given up if `gave_up`, else still queued).
    pub fn event_attempted(
        &mut self,
        id: i64,
        attempts: u32,
        error: Option<&str>,
        gave_up: bool,
    ) -> Result<()> {
        let state = match (error, gave_up) {
            (None, _) => delivery::SENT,
            (Some(_), true) => delivery::GAVE_UP,
            (Some(_), false) => delivery::QUEUED,
        };
        self.conn
            .prepare_cached(
                "UPDATE Events SET delivery = ?2, attempts = ?3, last_error = ?4 WHERE id = ?1",
            )?
            .execute(params![id, state, attempts, error])?;
        Ok(())
    }

    /// Finished builds by specification and weather since migration 14:
    /// (specification, weather, builds), a read of a small table.
    pub fn weather_counts(&self) -> Result<Vec<(String, i64, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT specification, weather, count FROM WeatherCounts
             ORDER BY specification, weather",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Events by delivery state: (state, events).  Events are rare (weather
    /// changes and failed evaluations), so this reads the whole table.
    pub fn event_counts(&self) -> Result<Vec<(i64, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT delivery, COUNT(*) FROM Events GROUP BY delivery ORDER BY delivery",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests;

//! The read queries behind the HTTP API.  Each is bounded by a limit and
//! walks an index (migration 3), so a route stays fast on a database with
//! millions of builds.

use super::{BuildId, Db, EvalId, Result};
use rusqlite::{OptionalExtension, Row, params};

/// A build joined with its derivation, evaluation and specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildView {
    pub id: BuildId,
    pub evaluation: EvalId,
    pub specification: String,
    pub branch: Option<String>,
    pub job_name: String,
    pub system: String,
    pub nix_name: String,
    pub derivation: String,
    pub log: String,
    pub status: i64,
    pub timestamp: i64,
    pub starttime: i64,
    pub stoptime: i64,
    /// (output name, store path), by name.
    pub outputs: Vec<(String, String)>,
    /// Its job's priority, and limits in seconds (`None`: the daemon's).
    pub priority: i64,
    pub timeout: Option<i64>,
    pub max_silent_time: Option<i64>,
    /// The daemon's reason for a failure: `timed out after 3 seconds`.
    pub errormsg: Option<String>,
    /// The machine that ran it: `localhost` or a build machine's name.
    pub worker: Option<String>,
}

/// Filters of `/api/latestbuilds`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFilter {
    pub specification: Option<String>,
    pub branch: Option<String>,
    pub job: Option<String>,
    pub system: Option<String>,
    pub evaluation: Option<EvalId>,
    /// Inclusive range of statuses.
    pub status: Option<(i64, i64)>,
    /// Only builds after this (stop time, id) in the listing's order: the
    /// next page of a listing answered a page at a time.
    pub after: Option<(i64, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationView {
    pub id: EvalId,
    pub specification: String,
    pub revision: String,
    /// Whether the evaluator is still registering its jobs.
    pub in_progress: bool,
}

pub(super) const BUILD_COLUMNS: &str =
    "SELECT b.id, b.evaluation, e.specification, s.branch, d.job_name,
        d.system, d.nix_name, b.derivation, b.log, b.status, b.timestamp, b.starttime, b.stoptime,
        b.priority, b.timeout, b.maxsilent, b.errormsg, b.worker";

/// The joins from `builds` (Builds as `b`, perhaps with an index named)
/// to its derivation, evaluation and specification.  `CROSS JOIN` pins
/// Builds as the outer table: SQLite's planner otherwise starts from
/// Evaluations, sorts every finished build and takes seconds on a million
/// builds, where walking the stop-time index takes a millisecond.
pub(super) fn build_joins(builds: &str, join: &str) -> String {
    format!(
        "FROM {builds}
         {join} Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
         {join} Evaluations e ON e.id = b.evaluation
         LEFT JOIN Specifications s ON s.repo_name = e.specification"
    )
}

/// The unselective walks name their index: on a million builds over 100
/// evaluations, `ANALYZE` statistics make the planner prefer a skip-scan
/// of `Builds_evaluation` plus a sort of every finished build (3 s, where
/// the walk takes a millisecond).  Migration 3 creates both indexes, and
/// each query's WHERE clause implies its partial index's condition.
const FINISHED_WALK: &str = "Builds b INDEXED BY Builds_finished";
const QUEUE_WALK: &str = "Builds b INDEXED BY Builds_queue";

pub(super) fn build_row(r: &Row) -> rusqlite::Result<BuildView> {
    Ok(BuildView {
        id: r.get(0)?,
        evaluation: r.get(1)?,
        specification: r.get(2)?,
        branch: r.get(3)?,
        job_name: r.get(4)?,
        system: r.get(5)?,
        nix_name: r.get(6)?,
        derivation: r.get(7)?,
        log: r.get(8)?,
        status: r.get(9)?,
        timestamp: r.get(10)?,
        starttime: r.get(11)?,
        stoptime: r.get(12)?,
        outputs: Vec::new(),
        priority: r.get(13)?,
        timeout: r.get(14)?,
        max_silent_time: r.get(15)?,
        errormsg: r.get(16)?,
        worker: r.get(17)?,
    })
}

/// The SQL of [`Db::latest_builds`], which depends on which filters are set.
pub(crate) fn latest_builds_sql(filter: &BuildFilter) -> String {
    // A job or an evaluation names few builds: their indexes should
    // drive the query, so those filters are plain equalities and the
    // planner is free.  Otherwise the walk down the partial index
    // Builds_finished (`b.status >= 0` verbatim) stops after `limit`
    // matches; the other filters are checked along it, the status one
    // with `+` so that it does not tempt the planner away.
    let selective = filter.job.is_some() || filter.evaluation.is_some();
    let job = match filter.job {
        Some(_) => "d.job_name = ?3",
        None => "?3 IS NULL",
    };
    let evaluation = match filter.evaluation {
        Some(_) => "b.evaluation = ?5",
        None => "?5 IS NULL",
    };
    format!(
        "{BUILD_COLUMNS} {}
         WHERE b.status >= 0
           AND (?1 IS NULL OR e.specification = ?1)
           AND (?2 IS NULL OR e.specification IN
                  (SELECT repo_name FROM Specifications WHERE branch = ?2))
           AND {job}
           AND (?4 IS NULL OR d.system = ?4)
           AND {evaluation}
           AND (?6 IS NULL OR +b.status BETWEEN ?6 AND ?7)
           AND (?9 IS NULL OR (b.stoptime, b.id) < (?9, ?10))
         ORDER BY b.stoptime DESC, b.id DESC
         LIMIT ?8",
        if selective {
            build_joins("Builds b", "JOIN")
        } else {
            build_joins(FINISHED_WALK, "CROSS JOIN")
        }
    )
}

/// Calls `f` with the parameters of [`latest_builds_sql`], in its order.
pub(crate) fn with_latest_builds_params<T>(
    filter: &BuildFilter,
    limit: u32,
    f: impl FnOnce(&[&dyn rusqlite::ToSql]) -> T,
) -> T {
    let (lo, hi) = filter.status.unzip();
    let (after_stop, after_id) = filter.after.unzip();
    f(params![
        filter.specification,
        filter.branch,
        filter.job,
        filter.system,
        filter.evaluation,
        lo,
        hi,
        limit,
        after_stop,
        after_id
    ])
}

/// Parameter `n`, an integer ID compared for equality.  Written as a
/// CAST because SQLite 3.54 re-prepares (parses and plans again) a
/// statement at every new value bound to a bare `?n` that it could use
/// for constant propagation, here `b.id = ?1` beside the joins and
/// `build = ?1 ... ORDER BY name`: three quarters of the cost of a
/// `/build/ID` request, which the cast removes (STMTSTATUS_REPREPARE
/// goes from one per call to none).
fn bound_id(n: u8) -> String {
    format!("CAST(?{n} AS INTEGER)")
}

/// The SQL of [`Db::queued_builds`].
pub(crate) fn queued_builds_sql() -> String {
    format!(
        "{BUILD_COLUMNS} {}
         WHERE b.status < 0
           AND (?2 IS NULL OR (-b.status, b.timestamp, b.id) > (-?2, ?3, ?4))
         ORDER BY b.status DESC, b.timestamp, b.id
         LIMIT ?1",
        build_joins(QUEUE_WALK, "CROSS JOIN")
    )
}

impl Db {
    pub fn build(&self, id: BuildId) -> Result<Option<BuildView>> {
        let sql = format!(
            "{BUILD_COLUMNS} {} WHERE b.id = {}",
            build_joins("Builds b", "JOIN"),
            bound_id(1)
        );
        let build = self
            .conn
            .prepare_cached(&sql)?
            .query_row([id], build_row)
            .optional()?;
        match build {
            Some(b) => Ok(self.with_outputs(vec![b])?.pop()),
            None => Ok(None),
        }
    }

    /// Finished builds, most recently finished first.
    pub fn latest_builds(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<BuildView>> {
        let mut stmt = self.conn.prepare_cached(&latest_builds_sql(filter))?;
        let builds = with_latest_builds_params(filter, limit, |p| {
            stmt.query_map(p, build_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        self.with_outputs(builds)
    }

    /// Unfinished builds: started ones first, then by submission time;
    /// `after` is the (status, timestamp, id) of the last one of a
    /// previous page.
    pub fn queued_builds(
        &self,
        limit: u32,
        after: Option<(i64, i64, i64)>,
    ) -> Result<Vec<BuildView>> {
        let (st, ts, id) = match after {
            Some((st, ts, id)) => (Some(st), Some(ts), Some(id)),
            None => (None, None, None),
        };
        let builds = self
            .conn
            .prepare_cached(&queued_builds_sql())?
            .query_map(params![limit, st, ts, id], build_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.with_outputs(builds)
    }

    /// The latest evaluations, newest first.
    pub fn latest_evaluations(&self, limit: u32) -> Result<Vec<EvaluationView>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, specification, revision, status FROM Evaluations
                 ORDER BY id DESC LIMIT ?1",
            )?
            .query_map([limit], |r| {
                Ok(EvaluationView {
                    id: r.get(0)?,
                    specification: r.get(1)?,
                    revision: r.get(2)?,
                    in_progress: r.get::<_, i64>(3)? == crate::db::eval_status::IN_PROGRESS,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn with_outputs(&self, mut builds: Vec<BuildView>) -> Result<Vec<BuildView>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT name, path FROM Outputs WHERE build = {} ORDER BY name",
            bound_id(1)
        ))?;
        for b in &mut builds {
            b.outputs = stmt
                .query_map([b.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(builds)
    }
}

//! The read queries behind the HTTP API.  Each is bounded by a limit and
//! walks an index (migration 3), so a route stays fast on a database with
//! millions of builds.

use super::dashboard::SEARCH_WINDOW;
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
    /// One of [`weather`]: how this build compares with the job's
    /// previous finished build in the same specification.
    pub weather: i64,
    /// Files registered by its spec's `build-outputs`.
    pub products: Vec<super::channels::ProductView>,
}

/// A finished build compared with its job's previous one (the values of
/// today's Cuirass, `build-weather`).
pub mod weather {
    use crate::db::status;

    /// Not finished, canceled, or no earlier build to compare with.
    pub const UNKNOWN: i64 = -1;
    pub const NEW_SUCCESS: i64 = 0;
    pub const NEW_FAILURE: i64 = 1;
    pub const STILL_SUCCEEDING: i64 = 2;
    pub const STILL_FAILING: i64 = 3;

    /// Whether a build in this status counts as a success or a failure:
    /// pending and canceled builds say nothing about the job.
    pub fn counts(st: i64) -> bool {
        (status::SUCCEEDED..status::CANCELED).contains(&st)
    }

    /// The weather of a build in status `current` whose job's previous
    /// finished build (succeeded or failed) had status `previous`.
    pub fn of(current: i64, previous: Option<i64>) -> i64 {
        let succeeded = |st| st == status::SUCCEEDED;
        match previous {
            Some(prev) if counts(current) => match (succeeded(prev), succeeded(current)) {
                (true, true) => STILL_SUCCEEDING,
                (true, false) => NEW_FAILURE,
                (false, true) => NEW_SUCCESS,
                (false, false) => STILL_FAILING,
            },
            _ => UNKNOWN,
        }
    }
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
    /// A `.drv` file name.
    pub derivation: Option<String>,
    /// Only builds after this (stop time, id) in the listing's order: the
    /// next page of a listing answered a page at a time.
    pub after: Option<(i64, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationView {
    pub id: EvalId,
    pub specification: String,
    pub revision: String,
    /// One of [`super::eval_status`].
    pub status: i64,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When it began and when it ended (Unix seconds; 0: unknown, as in a
    /// database written by the 2018 original, or not ended yet).
    pub timestamp: i64,
    pub evaltime: i64,
    /// One per channel (migration 10); empty for older evaluations.
    pub checkouts: Vec<super::channels::CheckoutView>,
}

impl EvaluationView {
    /// Whether the evaluator is still registering its jobs.
    pub fn in_progress(&self) -> bool {
        self.status == super::eval_status::IN_PROGRESS
    }
}

/// One job of an evaluation, as `/api/jobs` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// Where a listing answered a page at a time goes on from.
    pub key: i64,
    pub name: String,
    pub build: BuildId,
    pub status: i64,
}

/// Which jobs of an evaluation `/api/jobs` lists; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub evaluation: EvalId,
    pub names: Option<Vec<String>>,
    pub system: Option<String>,
    /// Only jobs after this [`JobView::key`].
    pub after: Option<i64>,
}

/// What `/search/latest` looks for: every part set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub specification: Option<String>,
    pub system: Option<String>,
    /// Inclusive range of statuses.
    pub status: Option<(i64, i64)>,
    /// Substrings of the job name.
    pub words: Vec<String>,
}

/// A store item and the build that made it (`/output/ITEM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputView {
    /// The output's name, e.g. `out`.
    pub name: String,
    pub derivation: String,
    pub build: BuildView,
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
        weather: weather::UNKNOWN,
        products: Vec::new(),
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
    let selective =
        filter.job.is_some() || filter.evaluation.is_some() || filter.derivation.is_some();
    let job = match filter.job {
        Some(_) => "d.job_name = ?3",
        None => "?3 IS NULL",
    };
    let evaluation = match filter.evaluation {
        Some(_) => "b.evaluation = ?5",
        None => "?5 IS NULL",
    };
    let derivation = match filter.derivation {
        Some(_) => "b.derivation = ?11",
        None => "?11 IS NULL",
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
           AND {derivation}
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
        after_id,
        filter.derivation
    ])
}

/// The latest build of a derivation: `Builds_derivation` (derivation,
/// evaluation) walked backwards, no sort.
pub(crate) const BUILD_OF_DERIVATION: &str = "SELECT id FROM Builds WHERE derivation = ?1
     ORDER BY evaluation DESC, id DESC LIMIT 1";

/// The build that made store item ?1: through `Outputs_path`, sorting
/// only that item's builds.
pub(crate) const OUTPUT: &str = "SELECT o.name, o.build FROM Outputs o
     JOIN Builds b ON b.id = o.build
     WHERE o.path = ?1 ORDER BY b.status = 0 DESC, o.build DESC LIMIT 1";

/// The status of the previous finished build (succeeded or failed) of
/// job ?1 for system ?3 in specification ?4, before evaluation ?2: a walk
/// down `Derivations_job_name` (job name, evaluation) from that
/// evaluation, which meets only evaluations that had a job of that name.
/// Both indexes are named and the join order pinned: on the benchmark's
/// million builds, SQLite 3.54 would rather walk every earlier evaluation
/// and sort (1.4 ms a lookup instead of 0.02), and `Builds_evaluation`
/// (evaluation, status) matches the status range too and would read every
/// finished build of each evaluation.
pub(crate) const PREVIOUS_FINISHED_BUILD: &str =
    "SELECT b.status FROM Derivations d INDEXED BY Derivations_job_name
     CROSS JOIN Builds b INDEXED BY Builds_derivation
       ON b.derivation = d.derivation AND b.evaluation = d.evaluation
     CROSS JOIN Evaluations e ON e.id = d.evaluation
     WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation < CAST(?2 AS INTEGER)
       AND d.system = CAST(?3 AS TEXT) AND e.specification = CAST(?4 AS TEXT)
       AND b.status BETWEEN 0 AND 3
     ORDER BY d.evaluation DESC LIMIT 1";

/// The SQL of [`Db::jobs`]: evaluation ?1, system ?2, after key ?3, at
/// most ?4; the jobs named ?5 only (through `Derivations_job_name`) or
/// every job (through `Derivations_evaluation`, in rowid order).  Each
/// finds its build in `Builds_derivation` (derivation, evaluation).
pub(crate) fn jobs_sql(by_name: bool) -> String {
    format!(
        "SELECT d.rowid, d.job_name, b.id, b.status FROM Derivations d
         JOIN Builds b ON b.derivation = d.derivation AND b.evaluation = d.evaluation
         WHERE d.evaluation = ?1 AND {} AND (?2 IS NULL OR d.system = ?2)
           AND d.rowid > ?3
         ORDER BY d.rowid LIMIT ?4",
        if by_name {
            "d.job_name = ?5"
        } else {
            "?5 IS NULL"
        }
    )
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
            Some(b) => Ok(self.complete(vec![b])?.pop()),
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
        self.complete(builds)
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
        self.complete(builds)
    }

    /// The latest evaluations, newest first, of one specification or of
    /// all; each walks `Evaluations_specification` or the primary key.
    pub fn latest_evaluations(
        &self,
        limit: u32,
        spec: Option<&str>,
    ) -> Result<Vec<EvaluationView>> {
        let sql = match spec {
            Some(_) => format!("{EVAL_COLUMNS} WHERE specification = ?2 ORDER BY id DESC LIMIT ?1"),
            None => format!("{EVAL_COLUMNS} WHERE ?2 IS NULL ORDER BY id DESC LIMIT ?1"),
        };
        let mut rows = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![limit, spec], eval_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for e in &mut rows {
            e.checkouts = self.checkouts(e.id)?;
        }
        Ok(rows)
    }

    pub fn evaluation_view(&self, id: EvalId) -> Result<Option<EvaluationView>> {
        let mut e = self
            .conn
            .prepare_cached(&format!("{EVAL_COLUMNS} WHERE id = {}", bound_id(1)))?
            .query_row([id], eval_row)
            .optional()?;
        if let Some(e) = e.as_mut() {
            e.checkouts = self.checkouts(e.id)?;
        }
        Ok(e)
    }

    /// The latest build of a derivation (`/build/NAME.drv`), down
    /// `Builds_derivation` (derivation, evaluation).
    pub fn build_of_derivation(&self, derivation: &str) -> Result<Option<BuildView>> {
        let id: Option<BuildId> = self
            .conn
            .prepare_cached(BUILD_OF_DERIVATION)?
            .query_row([derivation], |r| r.get(0))
            .optional()?;
        match id {
            Some(id) => self.build(id),
            None => Ok(None),
        }
    }

    /// The build that made a store item (`/output/ITEM`, `/log/ITEM`):
    /// among the builds of its derivation, a succeeded one first, then the
    /// latest.  Through `Outputs_path`; the sort is over that item's
    /// builds only, one per evaluation that had its derivation.
    pub fn output(&self, path: &str) -> Result<Option<OutputView>> {
        let found: Option<(String, BuildId)> = self
            .conn
            .prepare_cached(OUTPUT)?
            .query_row([path], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((name, id)) = found else {
            return Ok(None);
        };
        Ok(self.build(id)?.map(|build| OutputView {
            name,
            derivation: build.derivation.clone(),
            build,
        }))
    }

    /// Jobs of one evaluation, in the order they were registered, at
    /// most `limit` after `filter.after`; with names, those jobs only
    /// (one `Derivations_job_name` lookup each).  Each finds its build by
    /// (derivation, evaluation) in `Builds_derivation`.
    pub fn jobs(&self, filter: &JobFilter, limit: u32) -> Result<Vec<JobView>> {
        let row = |r: &Row| {
            Ok(JobView {
                key: r.get(0)?,
                name: r.get(1)?,
                build: r.get(2)?,
                status: r.get(3)?,
            })
        };
        let Some(names) = &filter.names else {
            return Ok(self
                .conn
                .prepare_cached(&jobs_sql(false))?
                .query_map(
                    params![
                        filter.evaluation,
                        filter.system,
                        filter.after.unwrap_or(i64::MIN),
                        limit,
                        None::<String>
                    ],
                    row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?);
        };
        // One lookup per name, then the same order and continuation as
        // the walk over the whole evaluation.
        let mut stmt = self.conn.prepare_cached(&jobs_sql(true))?;
        let after = filter.after.unwrap_or(i64::MIN);
        let mut jobs = Vec::new();
        for name in names {
            let rows = stmt.query_map(
                params![filter.evaluation, filter.system, after, limit, name],
                row,
            )?;
            for job in rows {
                jobs.push(job?);
            }
        }
        jobs.sort_by_key(|j| j.key);
        jobs.dedup_by_key(|j| j.key);
        jobs.truncate(limit as usize);
        Ok(jobs)
    }

    /// The specification's last `nr` evaluations, newest first, each with
    /// those of the named jobs it has; an evaluation with none of them is
    /// left out.  Each name walks `Derivations_job_name` from the oldest
    /// of those evaluations on.
    pub fn jobs_history(
        &self,
        spec: &str,
        names: &[String],
        nr: u32,
    ) -> Result<Vec<(EvaluationView, Vec<JobView>)>> {
        let evals = self.latest_evaluations(nr, Some(spec))?;
        let Some(oldest) = evals.last().map(|e| e.id) else {
            return Ok(Vec::new());
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.evaluation, d.rowid, b.id, b.status FROM Derivations d
             JOIN Builds b ON b.derivation = d.derivation AND b.evaluation = d.evaluation
             WHERE d.job_name = ?1 AND d.evaluation >= ?2",
        )?;
        let mut jobs: Vec<Vec<JobView>> = vec![Vec::new(); evals.len()];
        for name in names {
            let rows = stmt.query_map(params![name, oldest], |r| {
                let job = JobView {
                    key: r.get(1)?,
                    name: name.clone(),
                    build: r.get(2)?,
                    status: r.get(3)?,
                };
                Ok((r.get::<_, EvalId>(0)?, job))
            })?;
            for row in rows {
                let (eval, job) = row?;
                // Other specifications' evaluations have jobs of the same
                // name in that range too.
                if let Some(k) = evals.iter().position(|e| e.id == eval) {
                    jobs[k].push(job);
                }
            }
        }
        Ok(evals
            .into_iter()
            .zip(jobs)
            .filter(|(_, jobs)| !jobs.is_empty())
            .collect())
    }

    /// The newest build (by id) that matches `query`, among the
    /// [`SEARCH_WINDOW`] most recent builds, so that a query matching
    /// nothing stays quick in the loop's thread.  Queries with words go
    /// through the job names instead ([`Db::search_latest`]).
    pub(super) fn search_latest_window(&self, query: &SearchQuery) -> Result<Option<BuildView>> {
        let mut sql = format!(
            "{BUILD_COLUMNS} {}
             WHERE b.id > (SELECT COALESCE(MAX(id), 0) FROM Builds) - ?1
               AND (?2 IS NULL OR e.specification = ?2)
               AND (?3 IS NULL OR d.system = ?3)
               AND (?4 IS NULL OR b.status BETWEEN ?4 AND ?5)",
            build_joins("Builds b", "CROSS JOIN")
        );
        for k in 0..query.words.len() {
            sql.push_str(&format!(" AND d.job_name LIKE ?{} ESCAPE '\\'", k + 6));
        }
        sql.push_str(" ORDER BY b.id DESC LIMIT 1");
        let (lo, hi) = query.status.unzip();
        let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![
            Box::new(SEARCH_WINDOW),
            Box::new(query.specification.clone()),
            Box::new(query.system.clone()),
            Box::new(lo),
            Box::new(hi),
        ];
        for w in &query.words {
            values.push(Box::new(super::dashboard::like_substring(w)));
        }
        let build = self
            .conn
            .prepare_cached(&sql)?
            .query_row(rusqlite::params_from_iter(values), build_row)
            .optional()?;
        Ok(self.complete(build.into_iter().collect())?.pop())
    }

    /// Fills in each build's outputs and weather.
    fn complete(&self, mut builds: Vec<BuildView>) -> Result<Vec<BuildView>> {
        let mut outputs = self.conn.prepare_cached(&format!(
            "SELECT name, path FROM Outputs WHERE build = {} ORDER BY name",
            bound_id(1)
        ))?;
        let mut previous = self.conn.prepare_cached(PREVIOUS_FINISHED_BUILD)?;
        for b in &mut builds {
            b.outputs = outputs
                .query_map([b.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if b.status == super::status::SUCCEEDED {
                b.products = self.products(b.id)?;
            }
            if weather::counts(b.status) {
                let prev: Option<i64> = previous
                    .query_row(
                        params![b.job_name, b.evaluation, b.system, b.specification],
                        |r| r.get(0),
                    )
                    .optional()?;
                b.weather = weather::of(b.status, prev);
            }
        }
        Ok(builds)
    }
}

pub(super) const EVAL_COLUMNS: &str =
    "SELECT id, specification, revision, status, error, timestamp, evaltime FROM Evaluations";

pub(super) fn eval_row(r: &Row) -> rusqlite::Result<EvaluationView> {
    Ok(EvaluationView {
        id: r.get(0)?,
        specification: r.get(1)?,
        revision: r.get(2)?,
        status: r.get(3)?,
        error: r.get(4)?,
        timestamp: r.get(5)?,
        evaltime: r.get(6)?,
        checkouts: Vec::new(),
    })
}

//! The read queries behind the HTTP API.  Each is bounded by a limit and
//! walks an index (migration 3), so a route stays fast on a database with
//! millions of builds.

use super::dashboard::SEARCH_WINDOW;
use super::queue::Counted;
use super::{BuildId, BuildStatus, Db, EvalId, Result};
use rusqlite::{OptionalExtension, Row, params};

/// A build joined with its derivation, evaluation and specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildView {
    pub id: BuildId,
    pub evaluation: EvalId,
    pub specification: String,
    pub branch: Option<String>,
    /// The job name it is shown under: the first registered, or the one a
    /// query asked for when the build has several.
    pub job_name: String,
    /// Its other job names in its evaluation: jobs whose derivation is
    /// the same (`JobAliases`, migration 13), built once.
    pub other_names: Vec<String>,
    pub system: String,
    pub nix_name: String,
    pub derivation: String,
    pub log: String,
    pub status: BuildStatus,
    pub timestamp: i64,
    pub starttime: i64,
    pub stoptime: i64,
    /// (output name, store path), by name.
    pub outputs: Vec<(String, String)>,
    /// For each of `outputs`, until when cuirass's GC root keeps it from
    /// `guix gc` (Unix seconds); None when no root holds it (not built,
    /// or its root expired: it may be gone).
    pub kept_until: Vec<Option<i64>>,
    /// Its job's priority, and limits in seconds (`None`: the daemon's).
    pub priority: i64,
    pub timeout: Option<i64>,
    pub max_silent_time: Option<i64>,
    /// The daemon's reason for a failure: `timed out after 3 seconds`.
    pub errormsg: Option<String>,
    /// The machine that ran it: `localhost` or a build machine's name.
    pub worker: Option<String>,
    /// Its class in the queue: spec priority × 10 + job priority.
    pub rank: i64,
    /// Where it stands while pending: filled by single-build reads and
    /// by [`Db::queued_builds`]; None in other listings.
    pub waiting: Option<super::queue::Waiting>,
    /// One of [`weather`]: how this build compares with the job's
    /// previous finished build in the same specification.
    pub weather: i64,
    /// Whether `weather` is the one kept when the build finished (else it
    /// finished before weathers were kept, and the reader computes it).
    pub weather_kept: bool,
    /// Files registered by its spec's `build-outputs`.
    pub products: Vec<super::channels::ProductView>,
}

/// A finished build compared with its job's previous one (the values of
/// today's Cuirass, `build-weather`).
pub mod weather {
    use crate::db::{BuildStatus, status};

    /// Not finished, canceled, or no earlier build to compare with.
    pub const UNKNOWN: i64 = -1;
    pub const NEW_SUCCESS: i64 = 0;
    pub const NEW_FAILURE: i64 = 1;
    pub const STILL_SUCCEEDING: i64 = 2;
    pub const STILL_FAILING: i64 = 3;

    /// How pages, `/metrics` and events name a weather.
    pub fn name(w: i64) -> &'static str {
        match w {
            NEW_SUCCESS => "new-success",
            NEW_FAILURE => "new-failure",
            STILL_SUCCEEDING => "still-succeeding",
            STILL_FAILING => "still-failing",
            _ => "unknown",
        }
    }

    /// Whether a build in this status counts as a success or a failure:
    /// pending and canceled builds say nothing about the job.
    pub fn counts(st: BuildStatus) -> bool {
        st.is_final() && st != status::CANCELED
    }

    /// The weather of a build in status `current` whose job's previous
    /// finished build (succeeded or failed) had status `previous`.
    pub fn of(current: BuildStatus, previous: Option<BuildStatus>) -> i64 {
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
    pub after: Option<(i64, BuildId)>,
    /// Only builds at or before this (stop time, id) in the listing's
    /// order: where a filtered walk's budget ends ([`WALK_BUDGET`]).
    pub floor: Option<(i64, BuildId)>,
}

/// Index entries a filtered walk down `Builds_finished` passes in one
/// call, at most: a filter that few builds pass (a system or a status
/// that none has) would otherwise read every finished build in one
/// loop turn (3.6 s on 1,000,000 builds).  A page then ends at that
/// point, perhaps with fewer builds than asked for or none, and the
/// next goes on from it ([`Db::latest_builds_page`]).  About 10 ms.
pub const WALK_BUDGET: i64 = 500;

/// A page of [`Db::latest_builds_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestPage {
    pub builds: Vec<BuildView>,
    /// Where the next page starts (its `after`); `None` when the listing
    /// is complete.
    pub next: Option<(i64, BuildId)>,
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
    pub status: BuildStatus,
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
        b.priority, b.timeout, b.maxsilent, b.errormsg, b.worker, b.weather, b.queue_rank";

/// The joins from `builds` (Builds as `b`, perhaps with an index named)
/// to its derivation, evaluation and specification.  `CROSS JOIN` pins
/// Builds as the outer table: SQLite's planner otherwise starts from
/// Evaluations, sorts every finished build and takes seconds on a million
/// builds, where walking the stop-time index takes a millisecond.
pub(super) fn build_joins(builds: &str, join: &str) -> String {
    format!(
        "FROM {builds}
         {join} Derivations d ON d.rowid = b.id
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
        other_names: Vec::new(),
        system: r.get(5)?,
        nix_name: r.get(6)?,
        derivation: r.get(7)?,
        log: r.get(8)?,
        status: r.get(9)?,
        timestamp: r.get(10)?,
        starttime: r.get(11)?,
        stoptime: r.get(12)?,
        outputs: Vec::new(),
        kept_until: Vec::new(),
        weather: r.get::<_, Option<i64>>(18)?.unwrap_or(weather::UNKNOWN),
        weather_kept: r.get::<_, Option<i64>>(18)?.is_some(),
        products: Vec::new(),
        priority: r.get(13)?,
        timeout: r.get(14)?,
        max_silent_time: r.get(15)?,
        errormsg: r.get(16)?,
        worker: r.get(17)?,
        rank: r.get(19)?,
        waiting: None,
    })
}

/// A specification (or branch) filter whose specifications have at most
/// this many finished builds reads them through their evaluations
/// (`Builds_evaluation`) and sorts them: the walk down `Builds_finished`
/// would pass every other build to find few or none (3–7 s on 1,000,000
/// builds for a deleted or new specification's name, all of it one loop
/// turn).  Sorting this many takes about 20 ms.
pub const FEW_FINISHED: i64 = 20_000;

/// How [`latest_builds_sql`] reaches the builds it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LatestPlan {
    /// Down `Builds_finished`, newest first, checking the filters.
    Walk,
    /// Through the index of a selective filter (job, evaluation,
    /// derivation), the planner's choice.
    Selective,
    /// Through the evaluations of the specifications named, then sorted
    /// (see [`FEW_FINISHED`]).
    BySpecification,
}

/// The SQL of [`Db::latest_builds`], which depends on which filters are
/// set and on `plan` (see [`Db::latest_plan`]).
pub(crate) fn latest_builds_sql(filter: &BuildFilter, plan: LatestPlan) -> String {
    // A job or an evaluation names few builds: their indexes should
    // drive the query, so those filters are plain equalities and the
    // planner is free.  Otherwise the walk down the partial index
    // Builds_finished (`b.status >= 0` verbatim) stops after `limit`
    // matches; the other filters are checked along it, the status one
    // with `+` so that it does not tempt the planner away.
    let job = match filter.job {
        Some(_) => format!("b.id IN ({})", builds_named(3)),
        None => "?3 IS NULL".into(),
    };
    let evaluation = match filter.evaluation {
        Some(_) => "b.evaluation = ?5",
        None => "?5 IS NULL",
    };
    let derivation = match filter.derivation {
        Some(_) => crate::db::fresh::builds_of_derivation_sql!("b.id", "?11"),
        None => "?11 IS NULL",
    };
    let by_spec = match plan {
        LatestPlan::BySpecification => {
            "AND b.evaluation IN (SELECT id FROM Evaluations
                 WHERE (?1 IS NULL OR specification = ?1)
                   AND (?2 IS NULL OR specification IN
                          (SELECT repo_name FROM Specifications WHERE branch = ?2)))"
        }
        _ => "",
    };
    // The walk's bounds are a range of its index (a page starts after
    // the previous one and ends at most `WALK_BUDGET` entries down): an
    // `?9 IS NULL OR` form would be a filter checked at each entry, past
    // the floor to the index's end.
    let bounds = match plan {
        LatestPlan::Walk => {
            "(b.stoptime, b.id) < (coalesce(?9, 9223372036854775807),
                                  coalesce(?10, 9223372036854775807))
             AND (b.stoptime, b.id) >= (coalesce(?12, -9223372036854775808),
                                        coalesce(?13, -9223372036854775808))"
        }
        _ => {
            "(?9 IS NULL OR (b.stoptime, b.id) < (?9, ?10))
             AND (?12 IS NULL OR (b.stoptime, b.id) >= (?12, ?13))"
        }
    };
    format!(
        "{BUILD_COLUMNS} {}
         WHERE b.status >= 0 {by_spec}
           AND (?1 IS NULL OR e.specification = ?1)
           AND (?2 IS NULL OR e.specification IN
                  (SELECT repo_name FROM Specifications WHERE branch = ?2))
           AND {job}
           AND (?4 IS NULL OR d.system = ?4)
           AND {evaluation}
           AND {derivation}
           AND (?6 IS NULL OR +b.status BETWEEN ?6 AND ?7)
           AND {bounds}
         ORDER BY b.stoptime DESC, b.id DESC
         LIMIT ?8",
        match plan {
            LatestPlan::Selective => build_joins("Builds b", "JOIN"),
            LatestPlan::BySpecification =>
                build_joins("Builds b INDEXED BY Builds_evaluation", "CROSS JOIN"),
            LatestPlan::Walk => build_joins(FINISHED_WALK, "CROSS JOIN"),
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
    let (floor_stop, floor_id) = filter.floor.unzip();
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
        filter.derivation,
        floor_stop,
        floor_id
    ])
}

/// The builds of the job named by parameter `n`, under any of its names:
/// as the first (`Derivations_job_name`, then the build by id) and as
/// another name of a build (`JobAliases_job_name`).  A job has few
/// builds, so a query whose rows are these reaches `Builds` by id.
pub(crate) fn builds_named(n: u8) -> String {
    format!(
        "{} UNION ALL SELECT build FROM JobAliases WHERE job_name = ?{n}",
        crate::db::fresh::both_arms(
            &format!(
                "SELECT nb.id FROM Derivations nd INDEXED BY Derivations_job_name{{_fresh}}
                 CROSS JOIN Builds nb ON nb.id = nd.rowid
                 WHERE nd.job_name = ?{n} AND nd.fresh = {{fresh}}"
            ),
            "",
            ""
        )
    )
}

/// Whether the job names of build `b` match the LIKE pattern of parameter
/// `n`: its first name, or another (the subquery is read once per query,
/// `JobAliases` being small: only jobs that share a derivation).  With
/// `eval`, one evaluation's other names only (the key's prefix).
pub(crate) fn names_like(n: u8, eval: Option<u8>) -> String {
    let eval = eval
        .map(|e| format!("evaluation = ?{e} AND "))
        .unwrap_or_default();
    format!(
        "(d.job_name LIKE ?{n} ESCAPE '\\'
          OR b.id IN (SELECT build FROM JobAliases WHERE {eval}job_name LIKE ?{n} ESCAPE '\\'))"
    )
}

/// Whether `name` contains `word` as SQL's LIKE finds it (ASCII letters
/// in either case): the name a search shows of a build that has several.
pub(crate) fn contains_like(name: &str, word: &str) -> bool {
    let (name, word) = (name.as_bytes(), word.as_bytes());
    word.is_empty()
        || name
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
}

/// The latest build of a derivation: `Builds_derivation` (derivation,
/// evaluation) and its fresh part, each walked backwards.
pub(crate) fn build_of_derivation() -> &'static str {
    super::fresh::sql_once!({
        crate::db::fresh::both_arms(
            "SELECT id, evaluation FROM Builds INDEXED BY Builds_derivation{_fresh}
         WHERE derivation = CAST(?1 AS TEXT)
           AND substr(derivation, 12, 8) = substr(CAST(?1 AS TEXT), 12, 8) AND fresh = {fresh}",
            "ORDER BY evaluation DESC, id DESC LIMIT 1",
            "ORDER BY 2 DESC, 1 DESC LIMIT 1",
        )
    })
}

/// The build that made store item ?1: (output name, build, whether it
/// succeeded), through `Outputs_path` and `Outputs_path_fresh` alone,
/// sorting only that item's builds.
pub(crate) fn output_sql() -> &'static str {
    super::fresh::sql_once!({
        crate::db::fresh::both_arms(
            "SELECT o.name, o.build, b.status = 0 AS succeeded
         FROM Outputs o INDEXED BY Outputs_path{_fresh}
         CROSS JOIN Builds b ON b.id = o.build
         WHERE o.path = CAST(?1 AS TEXT)
           AND substr(o.path, 12, 8) = substr(CAST(?1 AS TEXT), 12, 8) AND o.fresh = {fresh}",
            "",
            "ORDER BY 3 DESC, 2 DESC LIMIT 1",
        )
    })
}

/// The status of the previous finished build (succeeded or failed) of
/// job ?1 for system ?3 in specification ?4, before evaluation ?2: a walk
/// down `Derivations_job_name` (job name, evaluation) from that
/// evaluation, which meets only evaluations that had a job of that name.
/// Both indexes are named and the join order pinned: on the benchmark's
/// million builds, SQLite 3.54 would rather walk every earlier evaluation
/// and sort (1.4 ms a lookup instead of 0.02), and `Builds_evaluation`
/// (evaluation, status) matches the status range too and would read every
/// finished build of each evaluation.  One walk in the large indexes,
/// one in the fresh ones ([`crate::db::fresh::both_arms`]); the later
/// answer wins.
pub(crate) fn previous_finished_build() -> &'static str {
    super::fresh::sql_once!({
        crate::db::fresh::both_arms(
        "SELECT d.evaluation, b.status FROM Derivations d INDEXED BY Derivations_job_name{_fresh}
         CROSS JOIN Builds b ON b.id = d.rowid
         CROSS JOIN Evaluations e ON e.id = d.evaluation
         WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation < CAST(?2 AS INTEGER)
           AND d.fresh = {fresh}
           AND d.system = CAST(?3 AS TEXT) AND e.specification = CAST(?4 AS TEXT)
           AND b.status BETWEEN 0 AND 3",
        "ORDER BY d.evaluation DESC LIMIT 1",
        "ORDER BY 1 DESC LIMIT 1",
    )
    })
}

/// The same among the builds that had job ?1 as another name
/// (`JobAliases_job_name`, then each build by id); the later of the two
/// answers is the previous build.
pub(crate) const PREVIOUS_FINISHED_BUILD_OF_ALIAS: &str =
    "SELECT a.evaluation, b.status FROM JobAliases a INDEXED BY JobAliases_job_name
     CROSS JOIN Builds b ON b.id = a.build
     CROSS JOIN Derivations d ON d.rowid = b.id
     CROSS JOIN Evaluations e ON e.id = a.evaluation
     WHERE a.job_name = CAST(?1 AS TEXT) AND a.evaluation < CAST(?2 AS INTEGER)
       AND d.system = CAST(?3 AS TEXT) AND e.specification = CAST(?4 AS TEXT)
       AND b.status BETWEEN 0 AND 3
     ORDER BY a.evaluation DESC LIMIT 1";

/// The status of the latest finished build of `job` (name, evaluation,
/// system) before that evaluation in specification `spec`, under the name
/// as a first name or as another name of a build (`JobAliases`), from the
/// prepared [`previous_finished_build`] and
/// [`PREVIOUS_FINISHED_BUILD_OF_ALIAS`]; `None` for a job's first build.
pub(crate) fn previous_status(
    first: &mut rusqlite::CachedStatement,
    alias: &mut rusqlite::CachedStatement,
    (name, eval, system): (&str, EvalId, &str),
    spec: &str,
) -> Result<Option<BuildStatus>> {
    let p = params![name, eval, system, spec];
    let row = |r: &Row| Ok((r.get::<_, EvalId>(0)?, r.get::<_, BuildStatus>(1)?));
    let first = first.query_row(p, row).optional()?;
    let other = alias.query_row(p, row).optional()?;
    Ok(first
        .into_iter()
        .chain(other)
        .max_by_key(|(e, _)| *e)
        .map(|(_, st)| st))
}

/// The SQL of [`Db::jobs`]: evaluation ?1, system ?2, after key ?3, at
/// most ?4 derivations; the jobs named ?5 only (through
/// `Derivations_job_name`, and `JobAliases`' key for another name of a
/// build) or every job (through `Derivations_evaluation`, in rowid order,
/// each with its build's other names through `JobAliases_build`).  Each
/// finds its build by id, its rowid (migration 25).  Rows
/// are (key, name, build, status, other name or NULL); a job's key is its
/// derivation's rowid, which another name of its build shares.
pub(crate) fn jobs_sql(by_name: bool) -> String {
    if by_name {
        let first = crate::db::fresh::both_arms(
            "SELECT d.rowid, d.job_name, b.id, b.status, NULL
             FROM Derivations d INDEXED BY Derivations_job_name{_fresh}
             CROSS JOIN Builds b ON b.id = d.rowid
             WHERE d.evaluation = ?1 AND d.job_name = ?5 AND d.fresh = {fresh}
               AND (?2 IS NULL OR d.system = ?2) AND d.rowid > ?3",
            "",
            "",
        );
        return first
            + " UNION ALL
                SELECT * FROM (
                SELECT d.rowid, NULL, b.id, b.status, a.job_name FROM JobAliases a
                JOIN Builds b ON b.id = a.build
                JOIN Derivations d ON d.rowid = b.id
                WHERE a.evaluation = ?1 AND a.job_name = ?5 AND (?2 IS NULL OR d.system = ?2)
                  AND d.rowid > ?3)";
    }
    "SELECT j.key, j.name, j.build, j.status, a.job_name FROM
       (SELECT d.rowid AS key, d.job_name AS name, b.id AS build, b.status AS status
        FROM Derivations d INDEXED BY Derivations_evaluation
        CROSS JOIN Builds b ON b.id = d.rowid
        WHERE d.evaluation = ?1 AND ?5 IS NULL AND (?2 IS NULL OR d.system = ?2)
          AND d.rowid > ?3
        ORDER BY d.rowid LIMIT ?4) j
     LEFT JOIN JobAliases a INDEXED BY JobAliases_build ON a.build = j.build"
        .to_string()
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

/// The SQL of a build's outputs (?1: the build), each with when its GC
/// root may go (NULL: none held): one leaf of `Outputs`' key, in name
/// order (migration 20), and one of `GcRoots`.
pub(crate) fn outputs_of_build_sql() -> String {
    format!(
        "SELECT o.name, o.path, r.expires FROM Outputs o
           LEFT JOIN GcRoots r ON r.item = o.path
         WHERE o.build = {} ORDER BY o.name",
        bound_id(1)
    )
}

/// Which pending builds `/api/queue` lists: all of them, or those of one
/// specification, job, system, evaluation or derivation (as
/// `/api/latestbuilds` filters), always in dispatch order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    pub specification: Option<String>,
    pub job: Option<String>,
    pub system: Option<String>,
    pub evaluation: Option<EvalId>,
    /// A `.drv` file name.
    pub derivation: Option<String>,
}

impl QueueFilter {
    pub fn is_empty(&self) -> bool {
        *self == QueueFilter::default()
    }
}

/// The SQL of [`Db::queued_builds`].  A job, an evaluation or a
/// derivation names few builds: their indexes drive the query, which
/// sorts them.  Otherwise the walk down `Builds_queue` checks the filters
/// along the way, in dispatch order.
pub(crate) fn queued_builds_sql(filter: &QueueFilter) -> String {
    let selective =
        filter.job.is_some() || filter.evaluation.is_some() || filter.derivation.is_some();
    format!(
        "{BUILD_COLUMNS} {}
         WHERE b.status < 0
           AND (?2 IS NULL OR (-b.status, b.queue_rank, b.id) > (-?2, ?3, ?4))
           AND (?5 IS NULL OR e.specification = ?5)
           AND {}
           AND (?7 IS NULL OR d.system = ?7)
           AND {}
           AND {}
         ORDER BY b.status DESC, b.queue_rank, b.id
         LIMIT ?1",
        match selective {
            true => build_joins("Builds b", "JOIN"),
            false => build_joins(QUEUE_WALK, "CROSS JOIN"),
        },
        match filter.job {
            // Under any of its names.
            Some(_) => format!("b.id IN ({})", builds_named(6)),
            None => "?6 IS NULL".into(),
        },
        match filter.evaluation {
            Some(_) => "b.evaluation = ?8",
            None => "?8 IS NULL",
        },
        match filter.derivation {
            Some(_) => crate::db::fresh::builds_of_derivation_sql!("b.id", "?9"),
            None => "?9 IS NULL",
        },
    )
}

/// Which of a build's names it is shown under: the one `job` asks for.
fn shown_name(job: Option<&str>) -> impl Fn(&str) -> bool + '_ {
    move |name| job == Some(name)
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
            Some(b) => {
                let mut b = self.complete(vec![b], &|_| false)?.pop();
                if let Some(b) = b.as_mut() {
                    b.waiting = self.waiting(b.id, b.status, b.rank, &b.specification)?;
                }
                Ok(b)
            }
            None => Ok(None),
        }
    }

    /// Finished builds, most recently finished first.
    pub fn latest_builds(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<BuildView>> {
        let mut filter = filter.clone();
        let mut builds = Vec::new();
        while builds.len() < limit as usize {
            let page = self.latest_builds_page(&filter, limit - builds.len() as u32)?;
            builds.extend(page.builds);
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        Ok(builds)
    }

    /// Up to `limit` finished builds after `filter.after`, most recently
    /// finished first.  A walk down `Builds_finished` with a filter on
    /// it passes at most [`WALK_BUDGET`] index entries, so that a page
    /// is one bounded chunk of a loop turn's work: it may hold fewer
    /// builds than asked for, and `next` says where the next starts.
    pub fn latest_builds_page(&self, filter: &BuildFilter, limit: u32) -> Result<LatestPage> {
        let plan = self.latest_plan(filter)?;
        let checked = filter.specification.is_some()
            || filter.branch.is_some()
            || filter.system.is_some()
            || filter.status.is_some();
        let mut filter = filter.clone();
        filter.floor = match plan == LatestPlan::Walk && checked {
            true => self.walk_floor(filter.after)?,
            false => None,
        };
        let sql = latest_builds_sql(&filter, plan);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let builds = with_latest_builds_params(&filter, limit, |p| {
            stmt.query_map(p, build_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let builds = self.complete(builds, &shown_name(filter.job.as_deref()))?;
        let next = match builds.len() as u32 == limit {
            true => builds.last().map(|b| (b.stoptime, b.id)),
            // Every entry down to the floor was looked at.
            false => filter.floor,
        };
        Ok(LatestPage { builds, next })
    }

    /// The last entry of `Builds_finished` that a walk from `after` may
    /// pass ([`WALK_BUDGET`]); `None` when the walk reaches the end
    /// first.  Reads the index alone.
    fn walk_floor(&self, after: Option<(i64, BuildId)>) -> Result<Option<(i64, BuildId)>> {
        let (stop, id) = after.unzip();
        Ok(self
            .conn
            .prepare_cached(
                "SELECT stoptime, id FROM Builds INDEXED BY Builds_finished
                 WHERE status >= 0 AND (?1 IS NULL OR (stoptime, id) < (?1, ?2))
                 ORDER BY stoptime DESC, id DESC LIMIT 1 OFFSET ?3",
            )?
            .query_row(params![stop, id, WALK_BUDGET - 1], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// How [`Db::latest_builds`] reaches the builds `filter` lets
    /// through: a specification or branch filter counts its finished
    /// builds first (`BuildCounts`, a row per evaluation and status).
    pub(crate) fn latest_plan(&self, filter: &BuildFilter) -> Result<LatestPlan> {
        if filter.job.is_some() || filter.evaluation.is_some() || filter.derivation.is_some() {
            return Ok(LatestPlan::Selective);
        }
        if filter.specification.is_none() && filter.branch.is_none() {
            return Ok(LatestPlan::Walk);
        }
        let finished: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(c.count), 0) FROM Evaluations e
                 JOIN BuildCounts c ON c.evaluation = e.id AND c.status >= 0
                 WHERE (?1 IS NULL OR e.specification = ?1)
                   AND (?2 IS NULL OR e.specification IN
                          (SELECT repo_name FROM Specifications WHERE branch = ?2))",
            )?
            .query_row(params![filter.specification, filter.branch], |r| r.get(0))?;
        Ok(match finished <= FEW_FINISHED {
            true => LatestPlan::BySpecification,
            false => LatestPlan::Walk,
        })
    }

    /// Unfinished builds that `filter` lets through: started ones first,
    /// then in dispatch order (rank, then id), under the name asked for, each with where it stands
    /// in the whole queue; `after` is the (status, rank, id) of the last
    /// one of a previous page and `counted` what the previous call
    /// returned (the default at first).
    pub fn queued_builds(
        &self,
        filter: &QueueFilter,
        limit: u32,
        after: Option<(i64, i64, BuildId)>,
        counted: Counted,
    ) -> Result<(Vec<BuildView>, Counted)> {
        let (st, ts, id) = match after {
            Some((st, ts, id)) => (Some(st), Some(ts), Some(id)),
            None => (None, None, None),
        };
        let builds = self
            .conn
            .prepare_cached(&queued_builds_sql(filter))?
            .query_map(
                params![
                    limit,
                    st,
                    ts,
                    id,
                    filter.specification,
                    filter.job,
                    filter.system,
                    filter.evaluation,
                    filter.derivation
                ],
                build_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut builds = self.complete(builds, &shown_name(filter.job.as_deref()))?;
        let counted = match filter.is_empty() {
            true => self.fill_waiting(&mut builds, counted)?,
            false => self.fill_waiting_filtered(&mut builds, counted)?,
        };
        Ok((builds, counted))
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
            .prepare_cached(build_of_derivation())?
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
            .prepare_cached(output_sql())?
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
    /// most `limit` derivations after `filter.after`, each under every
    /// name (jobs sharing a derivation share its build and key); with
    /// names, those jobs only (one lookup of each name).  Each finds its
    /// build by id, its derivation row's rowid (migration 25).
    pub fn jobs(&self, filter: &JobFilter, limit: u32) -> Result<Vec<JobView>> {
        let after = filter.after.unwrap_or(i64::MIN);
        let mut jobs = Vec::new();
        let mut add = |r: &Row| -> rusqlite::Result<()> {
            let (key, build, status) = (r.get(0)?, r.get(2)?, r.get(3)?);
            for name in [r.get::<_, Option<String>>(1)?, r.get(4)?]
                .into_iter()
                .flatten()
            {
                jobs.push(JobView {
                    key,
                    name,
                    build,
                    status,
                });
            }
            Ok(())
        };
        match &filter.names {
            None => {
                let mut stmt = self.conn.prepare_cached(&jobs_sql(false))?;
                let p = params![
                    filter.evaluation,
                    filter.system,
                    after,
                    limit,
                    None::<String>
                ];
                let mut rows = stmt.query(p)?;
                while let Some(r) = rows.next()? {
                    add(r)?;
                }
            }
            Some(names) => {
                let mut stmt = self.conn.prepare_cached(&jobs_sql(true))?;
                for name in names {
                    let p = params![filter.evaluation, filter.system, after, limit, name];
                    let mut rows = stmt.query(p)?;
                    while let Some(r) = rows.next()? {
                        add(r)?;
                    }
                }
            }
        }
        // The same order and continuation whichever way they were found;
        // the walk repeats a job for each other name of its build, and a
        // request may repeat a name.
        jobs.sort_by(|a, b| (a.key, &a.name).cmp(&(b.key, &b.name)));
        jobs.dedup_by(|a, b| (a.key, &a.name) == (b.key, &b.name));
        if filter.names.is_some() {
            jobs.truncate(limit as usize);
        }
        Ok(jobs)
    }

    /// The specification's last `nr` evaluations, newest first, each with
    /// those of the named jobs it has; an evaluation with none of them is
    /// left out.  Each name walks `Derivations_job_name` and
    /// `JobAliases_job_name` from the oldest of those evaluations on.
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
        // A name's builds as the first name of each, then as another.
        let first = crate::db::fresh::both_arms(
            "SELECT d.evaluation, d.rowid, b.id, b.status
             FROM Derivations d INDEXED BY Derivations_job_name{_fresh}
             CROSS JOIN Builds b ON b.id = d.rowid
             WHERE d.job_name = ?1 AND d.evaluation >= ?2 AND d.fresh = {fresh}",
            "",
            "",
        );
        let mut stmt = self.conn.prepare_cached(&format!(
            "{first}
             UNION ALL
             SELECT a.evaluation, a.build, b.id, b.status FROM JobAliases a
             JOIN Builds b ON b.id = a.build
             WHERE a.job_name = ?1 AND a.evaluation >= ?2"
        ))?;
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
            sql.push_str(&format!(" AND {}", names_like(k as u8 + 6, None)));
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
        let words = |name: &str| query.words.iter().all(|w| contains_like(name, w));
        Ok(self.complete(build.into_iter().collect(), &words)?.pop())
    }

    /// Gives each build its other names, shown under the first of its
    /// names that `shown` takes (else its first name).  One lookup in
    /// `JobAliases_build` each, which finds nothing for most builds.
    pub(super) fn name_builds(
        &self,
        builds: &mut [BuildView],
        shown: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        let mut others = self.conn.prepare_cached(&format!(
            "SELECT job_name FROM JobAliases WHERE build = {} ORDER BY job_name",
            bound_id(1)
        ))?;
        for b in builds {
            let mut names: Vec<String> = others
                .query_map([b.id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if names.is_empty() {
                continue;
            }
            names.insert(0, std::mem::take(&mut b.job_name));
            let k = names.iter().position(|n| shown(n)).unwrap_or(0);
            b.job_name = names.remove(k);
            b.other_names = names;
            // The weather kept when it finished is its first name's; under
            // another name it is computed for that name.
            b.weather_kept &= k == 0;
        }
        Ok(())
    }

    /// Fills in each build's names (see [`Db::name_builds`]), outputs and
    /// weather, the latter for the name it is shown under.
    fn complete(
        &self,
        mut builds: Vec<BuildView>,
        shown: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<BuildView>> {
        self.name_builds(&mut builds, shown)?;
        let mut outputs = self.conn.prepare_cached(&outputs_of_build_sql())?;
        // Only for builds whose weather was not kept: each statement
        // looked up in the cache is a hash of its text.
        let mut weather_statements = None;
        for b in &mut builds {
            let rows = outputs
                .query_map([b.id], |r| {
                    Ok(((r.get(0)?, r.get(1)?), r.get::<_, Option<i64>>(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (b.outputs, b.kept_until) = rows.into_iter().unzip();
            if b.status == super::status::SUCCEEDED {
                b.products = self.products(b.id)?;
            }
            // Kept when the build finished; computed for builds that
            // finished before weathers were kept (migration 14).
            if !weather::counts(b.status) {
                b.weather = weather::UNKNOWN;
            } else if !b.weather_kept {
                let job = (b.job_name.as_str(), b.evaluation, b.system.as_str());
                let (previous, previous_alias) = match &mut weather_statements {
                    Some(s) => s,
                    None => weather_statements.insert((
                        self.conn.prepare_cached(previous_finished_build())?,
                        self.conn.prepare_cached(PREVIOUS_FINISHED_BUILD_OF_ALIAS)?,
                    )),
                };
                let prev = previous_status(previous, previous_alias, job, &b.specification)?;
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

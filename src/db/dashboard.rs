//! The read queries behind the dashboard pages, the badge, `/metrics` and
//! the job history.  Like those of `read.rs`, each walks an index and is
//! bounded by a limit, except where a comment gives the cost.

use super::read::{
    BUILD_COLUMNS, BuildView, EVAL_COLUMNS, build_joins, build_row, contains_like, names_like,
};
use super::search::NAME_LOOKUPS;
use super::{BuildStatus, Db, EvalId, Result, eval_status, status};
use rusqlite::{OptionalExtension, Row, params};

/// The SQL of [`Db::evaluation_new_failures`]: evaluation ?1.
pub(crate) const NEW_FAILURES_OF_EVALUATION: &str =
    "SELECT COUNT(*) FROM Builds INDEXED BY Builds_new_failures
     WHERE evaluation = ?1 AND weather = 1 AND status BETWEEN 1 AND 3";

/// An evaluation's builds, counted by what an operator asks first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub succeeded: i64,
    /// Failed, failed-dependency and failed-other.
    pub failed: i64,
    /// Scheduled or started.
    pub pending: i64,
    pub canceled: i64,
}

impl Counts {
    fn add(&mut self, st: BuildStatus, n: i64) {
        match st {
            status::SUCCEEDED => self.succeeded += n,
            status::CANCELED => self.canceled += n,
            s if !s.is_final() => self.pending += n,
            _ => self.failed += n,
        }
    }

    pub fn total(&self) -> i64 {
        self.succeeded + self.failed + self.pending + self.canceled
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSummary {
    pub id: EvalId,
    pub specification: String,
    pub revision: String,
    /// One of [`eval_status`].
    pub status: i64,
    pub error: Option<String>,
    /// When the evaluation began, and when it ended (0: unknown).
    pub timestamp: i64,
    pub evaltime: i64,
    pub counts: Counts,
}

impl EvalSummary {
    pub fn in_progress(&self) -> bool {
        self.status == eval_status::IN_PROGRESS
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecSummary {
    pub name: String,
    pub branch: Option<String>,
    pub latest: Option<EvalSummary>,
}

/// Builds of one evaluation, as the evaluation page filters them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalBuildFilter {
    /// Inclusive range of statuses.
    pub status: Option<(i64, i64)>,
    /// A substring of the job name, matched literally.
    pub job: Option<String>,
    /// One of [`super::read::weather`]: builds whose kept weather it is.
    pub weather: Option<i64>,
}

/// A histogram in Prometheus's shape: for each upper bound, how many
/// values are at most it; then the count and sum of all values.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, i64)>,
    pub count: i64,
    pub sum: f64,
}

/// Everything `/metrics` reads from the database.
#[derive(Debug, Clone, PartialEq)]
pub struct DbMetrics {
    /// (status, builds), every status present.
    pub builds: Vec<(i64, i64)>,
    pub queue_length: i64,
    /// (evaluation status, evaluations).
    pub evaluations: Vec<(i64, i64)>,
    pub build_duration: Histogram,
    pub evaluation_duration: Histogram,
    pub size_bytes: i64,
    /// (specification, weather, finished builds), from `WeatherCounts`.
    pub weathers: Vec<(String, i64, i64)>,
    /// (delivery state, events), from `Events`.
    pub events: Vec<(i64, i64)>,
}

/// A SQL LIKE pattern matching `needle` anywhere, with its own `%`, `_`
/// and `\` taken literally (the queries say `ESCAPE '\'`).
pub fn like_substring(needle: &str) -> String {
    let mut out = String::from("%");
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// [`EVAL_COLUMNS`] read as the API reads them, counts to be filled.
fn eval_row(r: &Row) -> rusqlite::Result<EvalSummary> {
    let e = super::read::eval_row(r)?;
    Ok(EvalSummary {
        id: e.id,
        specification: e.specification,
        revision: e.revision,
        status: e.status,
        error: e.error,
        timestamp: e.timestamp,
        evaltime: e.evaltime,
        counts: Counts::default(),
    })
}

/// How many of the most recent builds `/search/latest` looks at when
/// its query names no job, only a specification, system or status.
pub const SEARCH_WINDOW: i64 = 50_000;

/// The joins from an evaluation's derivations, walked in the order they
/// were registered (`Derivations_evaluation`, rowid order), to their
/// builds, evaluation and specification.
const DERIVATION_JOINS: &str = "FROM Derivations d INDEXED BY Derivations_evaluation
     CROSS JOIN Builds b ON b.id = d.rowid
     CROSS JOIN Evaluations e ON e.id = d.evaluation
     LEFT JOIN Specifications s ON s.repo_name = e.specification";

/// The SQL of a page of an evaluation's builds (evaluation ?1, status
/// range ?2–?3, ?4 builds after ?5): unfiltered, its derivations in
/// registration order; by status, down `Builds_evaluation` (evaluation,
/// status) in that index's order.
pub(crate) fn eval_page_sql(by_status: bool) -> String {
    match by_status {
        false => format!(
            "{BUILD_COLUMNS} {} WHERE d.evaluation = ?1 AND ?2 IS NULL
             ORDER BY d.rowid LIMIT ?4 OFFSET ?5",
            DERIVATION_JOINS
        ),
        true => format!(
            "{BUILD_COLUMNS} {} WHERE b.evaluation = ?1 AND b.status BETWEEN ?2 AND ?3
             ORDER BY b.status, b.id LIMIT ?4 OFFSET ?5",
            build_joins("Builds b INDEXED BY Builds_evaluation", "CROSS JOIN")
        ),
    }
}

/// Prometheus buckets count everything up to their bound; `per_bucket`
/// has one more entry than `bounds`, for what is above the last.
fn cumulative(bounds: impl Iterator<Item = f64>, per_bucket: &[i64], sum: f64) -> Histogram {
    let mut total = 0;
    let buckets = bounds
        .zip(per_bucket)
        .map(|(b, n)| {
            total += n;
            (b, total)
        })
        .collect();
    Histogram {
        buckets,
        count: per_bucket.iter().sum(),
        sum,
    }
}

impl Db {
    /// Counts one evaluation's builds by status, as `BuildCounts` keeps
    /// them (migration 10): a few rows, where counting walked the
    /// evaluation's 75,000 builds.
    pub fn evaluation_counts(&self, eval: EvalId) -> Result<Counts> {
        let mut counts = Counts::default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, count FROM BuildCounts WHERE evaluation = ?1")?;
        let mut rows = stmt.query([eval])?;
        while let Some(r) = rows.next()? {
            counts.add(r.get(0)?, r.get(1)?);
        }
        Ok(counts)
    }

    /// How many of an evaluation's builds are new failures, through the
    /// partial index `Builds_new_failures` (a restarted build keeps its
    /// weather until it finishes again, hence the status).
    pub fn evaluation_new_failures(&self, eval: EvalId) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(NEW_FAILURES_OF_EVALUATION)?
            .query_row([eval], |r| r.get(0))?)
    }

    fn with_counts(&self, mut evals: Vec<EvalSummary>) -> Result<Vec<EvalSummary>> {
        for e in &mut evals {
            e.counts = self.evaluation_counts(e.id)?;
        }
        Ok(evals)
    }

    pub fn evaluation(&self, id: EvalId) -> Result<Option<EvalSummary>> {
        let e = self
            .conn
            .prepare_cached(&format!("{EVAL_COLUMNS} WHERE id = ?1"))?
            .query_row([id], eval_row)
            .optional()?;
        Ok(self.with_counts(e.into_iter().collect())?.pop())
    }

    /// A specification's evaluations, newest first, from `offset`.
    pub fn spec_evaluations(
        &self,
        spec: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<EvalSummary>> {
        let evals = self
            .conn
            .prepare_cached(&format!(
                "{EVAL_COLUMNS} WHERE specification = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3"
            ))?
            .query_map(params![spec, limit, offset as i64], eval_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.with_counts(evals)
    }

    /// Every specification with its latest evaluation, by name.
    pub fn spec_summaries(&self) -> Result<Vec<SpecSummary>> {
        let specs: Vec<(String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT repo_name, branch FROM Specifications WHERE deleting = 0 ORDER BY repo_name")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        specs
            .into_iter()
            .map(|(name, branch)| {
                let latest = self.spec_evaluations(&name, 1, 0)?.pop();
                Ok(SpecSummary {
                    name,
                    branch,
                    latest,
                })
            })
            .collect()
    }

    pub fn specification_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM Specifications WHERE repo_name = ?1 AND deleting = 0")?
            .query_row([name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn eval_builds_where(filter: &EvalBuildFilter) -> String {
        // `+b.status` keeps the planner on (evaluation, status) for the
        // evaluation alone, which is the selective part.
        format!(
            "{} WHERE b.evaluation = ?1
               AND (?2 IS NULL OR +b.status BETWEEN ?2 AND ?3)
               AND {} AND (?5 IS NULL OR b.weather = ?5)",
            build_joins("Builds b", "JOIN"),
            match filter.job {
                Some(_) => names_like(4, Some(1)),
                None => "?4 IS NULL".into(),
            }
        )
    }

    /// One page of an evaluation's builds and how many match in all.
    /// Unfiltered, in the order they were registered (their ids'); with a
    /// status filter, by status then id, the order of `Builds_evaluation`
    /// (evaluation, status), so no page sorts the evaluation's 75,000
    /// builds.  Totals come from `BuildCounts`.  A job filter goes through
    /// the job names ([`Db::job_names_matching`]): a seek per matching
    /// name, or, past [`NAME_LOOKUPS`] names, a walk of the evaluation
    /// that counts every match.  The weather filter, and a job filter in
    /// an evaluation where jobs share a derivation (`JobAliases`), walk
    /// the evaluation the same way.
    pub fn evaluation_builds(
        &self,
        eval: EvalId,
        filter: &EvalBuildFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<BuildView>, i64)> {
        let (lo, hi) = filter.status.unzip();
        if filter.weather.is_some() {
            return self.evaluation_builds_like(eval, filter, limit, offset);
        }
        if let Some(job) = &filter.job {
            let names = self.job_names_matching(job, NAME_LOOKUPS + 1)?;
            if names.len() <= NAME_LOOKUPS && !self.has_job_aliases(eval)? {
                let ids = self.evaluation_jobs_named(eval, &names, filter.status)?;
                let page: Vec<_> = ids
                    .iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .copied()
                    .collect();
                return Ok((self.builds_by_id(&page)?, ids.len() as i64));
            }
            return self.evaluation_builds_like(eval, filter, limit, offset);
        }
        let sql = eval_page_sql(filter.status.is_some());
        let builds = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![eval, lo, hi, limit, offset as i64], build_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let total = self
            .conn
            .prepare_cached(
                "SELECT TOTAL(count) FROM BuildCounts WHERE evaluation = ?1
                 AND (?2 IS NULL OR status BETWEEN ?2 AND ?3)",
            )?
            .query_row(params![eval, lo, hi], |r| r.get::<_, f64>(0))?;
        Ok((builds, total as i64))
    }

    /// Whether two jobs of evaluation `eval` share a derivation.
    fn has_job_aliases(&self, eval: EvalId) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM JobAliases WHERE evaluation = ?1)")?
            .query_row([eval], |r| r.get(0))?)
    }

    /// The job filter over a whole evaluation, for a substring that
    /// matches more than [`NAME_LOOKUPS`] job names: a walk of its
    /// builds, each joined with its derivation, counted in full.
    fn evaluation_builds_like(
        &self,
        eval: EvalId,
        filter: &EvalBuildFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<BuildView>, i64)> {
        let (lo, hi) = filter.status.unzip();
        let pattern = filter.job.as_deref().map(like_substring);
        let clause = Db::eval_builds_where(filter);
        let mut builds = self
            .conn
            .prepare_cached(&format!(
                "{BUILD_COLUMNS} {clause} ORDER BY b.id LIMIT ?6 OFFSET ?7"
            ))?
            .query_map(
                params![eval, lo, hi, pattern, filter.weather, limit, offset as i64],
                build_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let needle = filter.job.as_deref().unwrap_or_default();
        self.name_builds(&mut builds, &|name| contains_like(name, needle))?;
        let total = self
            .conn
            .prepare_cached(&format!("SELECT COUNT(*) {clause}"))?
            .query_row(params![eval, lo, hi, pattern, filter.weather], |r| r.get(0))?;
        Ok((builds, total))
    }

    /// What `/metrics` shows.  Build counts come from `BuildCounts`
    /// (counting every build took half a second on ten million), build
    /// durations from the histogram kept as builds finish
    /// (`BuildDurations`); the rest reads small tables.
    pub fn metrics(&self, eval_buckets: &[f64]) -> Result<DbMetrics> {
        let builds: Vec<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT status, SUM(count) AS n FROM BuildCounts GROUP BY status
                 HAVING n > 0 ORDER BY status",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let queue_length = builds
            .iter()
            .filter(|(st, _)| *st < 0)
            .map(|(_, n)| n)
            .sum();
        let evaluations: Vec<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT status, COUNT(*) FROM Evaluations GROUP BY status ORDER BY status",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let build_duration = self.build_durations()?;
        let evaluation_duration = self.histogram(
            "SELECT evaltime - timestamp AS v FROM Evaluations WHERE evaltime > 0 AND timestamp > 0",
            eval_buckets,
        )?;
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(DbMetrics {
            builds,
            queue_length,
            evaluations,
            build_duration,
            evaluation_duration,
            size_bytes: pages * page_size,
            weathers: self.weather_counts()?,
            events: self.event_counts()?,
        })
    }

    /// The build-duration histogram, cumulative, as Prometheus wants it.
    fn build_durations(&self) -> Result<Histogram> {
        let bounds = super::BUILD_DURATION_BOUNDS;
        let mut per_bucket = vec![0i64; bounds.len() + 1];
        let mut sum = 0.0;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bucket, count, sum FROM BuildDurations")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let k = r.get::<_, i64>(0)?.clamp(0, bounds.len() as i64) as usize;
            per_bucket[k] += r.get::<_, i64>(1)?;
            sum += r.get::<_, f64>(2)?;
        }
        Ok(cumulative(
            bounds.iter().map(|&b| b as f64),
            &per_bucket,
            sum,
        ))
    }

    /// One pass over `values` (a query of one numeric column `v`): each
    /// row is given its bucket by one CASE and counted by GROUP BY, which
    /// costs a third of comparing every row with every bound.
    fn histogram(&self, values: &str, bounds: &[f64]) -> Result<Histogram> {
        let mut case = String::from("CASE WHEN 0 THEN 0");
        for (k, b) in bounds.iter().enumerate() {
            case.push_str(&format!(" WHEN v <= {b:?} THEN {k}"));
        }
        case.push_str(&format!(" ELSE {} END", bounds.len()));
        let sql = format!("SELECT {case} AS k, COUNT(*), TOTAL(v) FROM ({values}) GROUP BY k");
        let mut per_bucket = vec![0i64; bounds.len() + 1];
        let mut sum = 0.0;
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let k: usize = r.get::<_, i64>(0)? as usize;
            per_bucket[k.min(bounds.len())] += r.get::<_, i64>(1)?;
            sum += r.get::<_, f64>(2)?;
        }
        Ok(cumulative(bounds.iter().copied(), &per_bucket, sum))
    }
}

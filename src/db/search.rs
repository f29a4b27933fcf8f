//! Searches over job names across every build ever recorded: `/search`,
//! `/search/latest` and the job filter of an evaluation's page.
//!
//! A substring of a job name is first looked up among the distinct job
//! names (`JobNames`, trigram-indexed by `JobNamesText`, migration 10):
//! 75,000 on ci.guix, against 10,000,000 builds.  The builds of the names
//! found are then reached one of two ways, whichever reads less:
//! - few names: each name's builds down `Derivations_job_name` (job name,
//!   evaluation), newest evaluation first, stopping at the evaluations the
//!   answer no longer needs;
//! - many names: evaluations newest first, each one's jobs checked against
//!   the names, stopping once enough builds are found.  Many matching
//!   names make matches dense, so few jobs are read.

use super::read::{BUILD_COLUMNS, BuildView, SearchQuery, build_joins, build_row};
use super::{BuildId, Db, EvalId, Result};
use rusqlite::{OptionalExtension, params};
use std::collections::HashSet;

/// Up to this many matching names, each name's builds are looked up (a
/// seek each, about 10 µs); beyond, evaluations are walked.  On 75,000
/// names and 100 results the two cost the same near 900 names.
pub const NAME_LOOKUPS: usize = 1_000;

/// The most jobs the walk over evaluations reads for one search: four of
/// ci.guix's evaluations.  Past it the answer is what was found, and the
/// search says it stopped early.
pub const WALK_BUDGET: usize = 300_000;

/// The builds a search found, and whether it stopped before looking at
/// every build.
#[derive(Debug, Default)]
pub struct Search {
    /// Newest evaluation first, then newest build first.
    pub builds: Vec<BuildView>,
    pub stopped_early: bool,
}

/// Filters besides the job name (`None`: any).
#[derive(Debug, Clone, Copy, Default)]
struct Filters<'a> {
    specification: Option<&'a str>,
    system: Option<&'a str>,
    status: Option<(i64, i64)>,
}

/// An FTS5 phrase matching `needle` as a substring, case-insensitively.
fn phrase(needle: &str) -> String {
    format!("\"{}\"", needle.replace('"', "\"\""))
}

/// One name's builds in evaluations from ?2 on, newest first: a walk
/// down `Derivations_job_name` from the newest evaluation, each step a
/// seek in `Builds_derivation`.  The indexes are named and the join
/// order pinned for the reasons given at `read::PREVIOUS_FINISHED_BUILD`.
pub(crate) const BUILDS_OF_NAME: &str =
    "SELECT d.evaluation, b.id FROM Derivations d INDEXED BY Derivations_job_name
     CROSS JOIN Builds b INDEXED BY Builds_derivation
       ON b.derivation = d.derivation AND b.evaluation = d.evaluation
     CROSS JOIN Evaluations e ON e.id = d.evaluation
     WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation >= CAST(?2 AS INTEGER)
       AND (?3 IS NULL OR e.specification = ?3) AND (?4 IS NULL OR d.system = ?4)
       AND (?5 IS NULL OR b.status BETWEEN ?5 AND ?6)
     ORDER BY d.evaluation DESC LIMIT ?7";

/// One evaluation's job names and derivation rows, through
/// `Derivations_evaluation`: the walk over evaluations.
pub(crate) const JOBS_OF_EVALUATION: &str =
    "SELECT d.job_name, d.derivation, d.system FROM Derivations d INDEXED BY Derivations_evaluation
     WHERE d.evaluation = CAST(?1 AS INTEGER)";

/// The build of (derivation ?1, evaluation ?2) if its status is in range.
pub(crate) const BUILD_OF_JOB: &str = "SELECT b.id FROM Builds b INDEXED BY Builds_derivation
     WHERE b.derivation = CAST(?1 AS TEXT) AND b.evaluation = CAST(?2 AS INTEGER)
       AND (?3 IS NULL OR b.status BETWEEN ?3 AND ?4)";

impl Db {
    /// The distinct job names containing `needle` (case-insensitive):
    /// through the trigram index for three characters or more, else a
    /// scan of the names (75,000 on ci.guix, a few milliseconds).
    pub fn job_names_matching(&self, needle: &str) -> Result<Vec<String>> {
        let (sql, arg) = if needle.chars().count() >= 3 {
            (
                "SELECT name FROM JobNamesText WHERE JobNamesText MATCH ?1",
                phrase(needle),
            )
        } else {
            (
                "SELECT name FROM JobNames WHERE name LIKE ?1 ESCAPE '\\'",
                super::dashboard::like_substring(needle),
            )
        };
        let names = self
            .conn
            .prepare_cached(sql)?
            .query_map([arg], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    /// The names containing every one of `words`.
    fn names_with_all(&self, words: &[String]) -> Result<Vec<String>> {
        let mut names: Option<Vec<String>> = None;
        for w in words {
            let found = self.job_names_matching(w)?;
            names = Some(match names {
                None => found,
                Some(prev) => {
                    let found: HashSet<String> = found.into_iter().collect();
                    prev.into_iter().filter(|n| found.contains(n)).collect()
                }
            });
        }
        Ok(names.unwrap_or_default())
    }

    /// Builds whose job name contains `needle`, newest first, at most
    /// `limit`, over every build ever recorded.
    pub fn search_builds(&self, needle: &str, limit: u32) -> Result<Search> {
        let names = self.job_names_matching(needle)?;
        let (ids, stopped_early) = self.builds_of_names(&names, Filters::default(), limit)?;
        Ok(Search {
            builds: self.builds_by_id(&ids)?,
            stopped_early,
        })
    }

    /// The newest build matching `query`, its words searched over every
    /// build (a query of filters only walks the latest builds: see
    /// [`Db::search_latest_window`]).
    pub fn search_latest(&self, query: &SearchQuery) -> Result<Option<BuildView>> {
        if query.words.is_empty() {
            return self.search_latest_window(query);
        }
        let names = self.names_with_all(&query.words)?;
        let filters = Filters {
            specification: query.specification.as_deref(),
            system: query.system.as_deref(),
            status: query.status,
        };
        let (ids, _) = self.builds_of_names(&names, filters, 1)?;
        match ids.first() {
            Some(&id) => self.build(id),
            None => Ok(None),
        }
    }

    /// The ids of up to `limit` builds of jobs named `names` passing
    /// `f`, newest evaluation first, and whether the walk stopped early.
    fn builds_of_names(
        &self,
        names: &[String],
        f: Filters,
        limit: u32,
    ) -> Result<(Vec<BuildId>, bool)> {
        if names.is_empty() || limit == 0 {
            return Ok((Vec::new(), false));
        }
        if names.len() <= NAME_LOOKUPS {
            return Ok((self.lookup_names(names, f, limit)?, false));
        }
        self.walk_evaluations(names, f, limit)
    }

    fn lookup_names(&self, names: &[String], f: Filters, limit: u32) -> Result<Vec<BuildId>> {
        let (lo, hi) = f.status.unzip();
        let mut stmt = self.conn.prepare_cached(BUILDS_OF_NAME)?;
        // (evaluation, build), best first; once `limit` are found, a name
        // need only be looked at from the last one's evaluation on.
        let mut found: Vec<(EvalId, BuildId)> = Vec::new();
        let mut since: EvalId = i64::MIN;
        for name in names {
            let rows = stmt.query_map(
                params![name, since, f.specification, f.system, lo, hi, limit],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for row in rows {
                found.push(row?);
            }
            if found.len() >= limit as usize {
                found.sort_unstable_by(|a, b| b.cmp(a));
                found.truncate(limit as usize);
                since = found.last().map_or(since, |l| l.0);
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.truncate(limit as usize);
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    fn walk_evaluations(
        &self,
        names: &[String],
        f: Filters,
        limit: u32,
    ) -> Result<(Vec<BuildId>, bool)> {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let (lo, hi) = f.status.unzip();
        let evals: Vec<EvalId> = self
            .conn
            .prepare_cached(
                "SELECT id FROM Evaluations WHERE (?1 IS NULL OR specification = ?1)
                 ORDER BY id DESC",
            )?
            .query_map([f.specification], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut jobs = self.conn.prepare_cached(JOBS_OF_EVALUATION)?;
        let mut build = self.conn.prepare_cached(BUILD_OF_JOB)?;
        let mut ids = Vec::new();
        let mut read = 0;
        for eval in evals {
            if read >= WALK_BUDGET {
                return Ok((ids, true));
            }
            let mut in_eval = Vec::new();
            let mut rows = jobs.query([eval])?;
            while let Some(r) = rows.next()? {
                read += 1;
                let text = |k| r.get_ref(k)?.as_str().map_err(rusqlite::Error::from);
                let (name, system) = (text(0)?, text(2)?);
                if !wanted.contains(name) || f.system.is_some_and(|s| s != system) {
                    continue;
                }
                let drv = text(1)?;
                if let Some(id) = build
                    .query_row(params![drv, eval, lo, hi], |r| r.get::<_, BuildId>(0))
                    .optional()?
                {
                    in_eval.push(id);
                }
            }
            in_eval.sort_unstable_by(|a, b| b.cmp(a));
            ids.extend(in_eval);
            if ids.len() >= limit as usize {
                ids.truncate(limit as usize);
                return Ok((ids, false));
            }
        }
        Ok((ids, false))
    }

    /// Builds by id, in the order given (without outputs and weather).
    pub(super) fn builds_by_id(&self, ids: &[BuildId]) -> Result<Vec<BuildView>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{BUILD_COLUMNS} {} WHERE b.id = CAST(?1 AS INTEGER)",
            build_joins("Builds b", "JOIN")
        ))?;
        let mut builds = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(b) = stmt.query_row([id], build_row).optional()? {
                builds.push(b);
            }
        }
        Ok(builds)
    }

    /// The builds of one evaluation whose job is one of `names` (at most
    /// [`NAME_LOOKUPS`] of them, a seek each) and whose status is in
    /// `status`: (id, status), by id.
    pub(super) fn evaluation_jobs_named(
        &self,
        eval: EvalId,
        names: &[String],
        status: Option<(i64, i64)>,
    ) -> Result<Vec<BuildId>> {
        let (lo, hi) = status.unzip();
        let mut stmt = self.conn.prepare_cached(
            "SELECT b.id FROM Derivations d INDEXED BY Derivations_job_name
             CROSS JOIN Builds b INDEXED BY Builds_derivation
               ON b.derivation = d.derivation AND b.evaluation = d.evaluation
             WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation = CAST(?2 AS INTEGER)
               AND (?3 IS NULL OR b.status BETWEEN ?3 AND ?4)",
        )?;
        let mut ids = Vec::new();
        for name in names {
            let rows = stmt.query_map(params![name, eval, lo, hi], |r| r.get(0))?;
            for id in rows {
                ids.push(id?);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

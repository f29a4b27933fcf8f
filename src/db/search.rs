//! Searches over job names across every build ever recorded: `/search`,
//! `/search/latest` and the job filter of an evaluation's page.
//!
//! A substring of a job name is first looked up among the distinct job
//! names (`JobNames`, trigram-indexed by `JobNamesText`, see migration
//! 13): 75,000 on ci.guix, against 10,000,000 builds.  The builds of the names
//! found are then reached one of two ways, whichever reads less:
//! - few names: each name's builds down `Derivations_job_name` (job name,
//!   evaluation), newest evaluation first, stopping at the evaluations the
//!   answer no longer needs;
//! - many names (more than [`NAME_LOOKUPS`]; they are not all fetched):
//!   evaluations newest first, each one's jobs newest first, each name
//!   checked against the words, stopping once enough builds are found.
//!   Many matching names make matches dense, so few jobs are read.

use super::fresh::both_arms;
use super::read::{BUILD_COLUMNS, BuildView, SearchQuery, build_joins, build_row};
use super::{BuildId, Db, EvalId, Result};
use rusqlite::{OptionalExtension, params};

/// Up to this many matching names, each name's builds are looked up (a
/// seek each, about 10 µs); beyond, evaluations are walked.  On 75,000
/// names and 100 results the two cost the same near 900 names.
pub const NAME_LOOKUPS: usize = 1_000;

/// The most jobs the walk over evaluations reads for one search: four of
/// ci.guix's evaluations.  Past it the answer is what was found, and the
/// search says it stopped early.
pub const WALK_BUDGET: usize = 300_000;

/// How many new job names the loop adds to the trigram index per turn:
/// a few milliseconds (2–4 µs a name in one statement; 50,000 new names
/// take 0.1–0.2 s in all).
pub const NAME_INDEX_PAGE: usize = 500;

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

/// One name's derivations in evaluations from ?2 on, newest first, at
/// most ?3: (evaluation, derivation rowid) read from
/// `Derivations_job_name` (job name, evaluation) alone, an index-only
/// walk from the newest evaluation.  A derivation's rowid orders an
/// evaluation's jobs as their builds' ids do: both are given as the jobs
/// are registered.
pub(crate) fn derivations_of_name(fresh: bool) -> &'static str {
    const ARM: &str =
        "SELECT d.evaluation, d.rowid FROM Derivations d INDEXED BY Derivations_job_name{_fresh}
         WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation >= CAST(?2 AS INTEGER)
           AND d.fresh = {fresh}";
    match fresh {
        true => super::fresh::sql_once!(name_walk(ARM, true)),
        false => super::fresh::sql_once!(name_walk(ARM, false)),
    }
}

/// The same with the filters of `/search/latest` (specification ?4,
/// system ?5, statuses ?6–?7), each step a seek in `Builds_derivation`.
/// The indexes are named and the join order pinned for the reasons
/// given at `read::previous_finished_build`.
pub(crate) fn filtered_derivations_of_name(fresh: bool) -> &'static str {
    const ARM: &str =
        "SELECT d.evaluation, d.rowid FROM Derivations d INDEXED BY Derivations_job_name{_fresh}
         CROSS JOIN Builds b ON b.id = d.rowid
         CROSS JOIN Evaluations e ON e.id = d.evaluation
         WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation >= CAST(?2 AS INTEGER)
           AND d.fresh = {fresh}
           AND (?4 IS NULL OR e.specification = ?4) AND (?5 IS NULL OR d.system = ?5)
           AND (?6 IS NULL OR b.status BETWEEN ?6 AND ?7)";
    match fresh {
        true => super::fresh::sql_once!(name_walk(ARM, true)),
        false => super::fresh::sql_once!(name_walk(ARM, false)),
    }
}

/// A walk of one name's entries newest first: in both indexes while
/// some build is `fresh`, in the large one alone otherwise.
fn name_walk(arm: &str, fresh: bool) -> String {
    let inner = "ORDER BY d.evaluation DESC LIMIT ?3";
    match fresh {
        true => both_arms(arm, inner, "ORDER BY 1 DESC LIMIT ?3"),
        false => super::fresh::large_arm(arm, inner),
    }
}

/// The builds that had ?1 as another name (`JobAliases`, jobs sharing
/// a derivation), with the filters of [`filtered_derivations_of_name`]:
/// (evaluation, build id), newest first.
pub(crate) const ALIASES_OF_NAME: &str =
    "SELECT a.evaluation, a.build FROM JobAliases a INDEXED BY JobAliases_job_name
     CROSS JOIN Builds b ON b.id = a.build
     CROSS JOIN Derivations d ON d.rowid = b.id
     CROSS JOIN Evaluations e ON e.id = a.evaluation
     WHERE a.job_name = CAST(?1 AS TEXT) AND a.evaluation >= CAST(?2 AS INTEGER)
       AND (?4 IS NULL OR e.specification = ?4) AND (?5 IS NULL OR d.system = ?5)
       AND (?6 IS NULL OR b.status BETWEEN ?6 AND ?7)
     ORDER BY a.evaluation DESC LIMIT ?3";

/// The names not in the trigram index yet that are LIKE ?1, at most ?2:
/// a walk of `JobNames` from the index's mark (the names of the
/// evaluations registered since the loop last indexed, none in between).
pub(crate) const UNINDEXED_NAMES_LIKE: &str = "SELECT name FROM JobNames
     WHERE id > (SELECT upto FROM JobNamesIndexed) AND name LIKE ?1 ESCAPE '\\'
     ORDER BY id LIMIT ?2";

/// The build of the derivation row ?1, as a listing shows it: the
/// row's rowid is its build's id (migration 25).
pub(crate) fn build_of_derivation_row() -> &'static str {
    super::fresh::sql_once!({
        format!(
            "{BUILD_COLUMNS} FROM Derivations d
         CROSS JOIN Builds b ON b.id = d.rowid
         CROSS JOIN Evaluations e ON e.id = b.evaluation
         LEFT JOIN Specifications s ON s.repo_name = e.specification
         WHERE d.rowid = CAST(?1 AS INTEGER)"
        )
    })
}

/// One evaluation's jobs, newest first, through `Derivations_evaluation`
/// walked backwards: the walk over evaluations.
pub(crate) const JOBS_OF_EVALUATION: &str =
    "SELECT d.job_name, d.derivation, d.system FROM Derivations d INDEXED BY Derivations_evaluation
     WHERE d.evaluation = CAST(?1 AS INTEGER) ORDER BY d.rowid DESC";

/// The build of (derivation ?1, evaluation ?2) if its status is in range.
pub(crate) fn build_of_job() -> &'static str {
    super::fresh::sql_once!({
        both_arms(
            "SELECT id FROM Builds INDEXED BY Builds_derivation{_fresh}
         WHERE derivation = CAST(?1 AS TEXT) AND evaluation = CAST(?2 AS INTEGER)
           AND substr(derivation, 12, 8) = substr(CAST(?1 AS TEXT), 12, 8)
           AND fresh = {fresh} AND (?3 IS NULL OR status BETWEEN ?3 AND ?4)",
            "",
            "",
        )
    })
}

/// Whether `name` contains `word`, ignoring case as the trigram index does
/// (for the ASCII of job names).
fn contains(name: &str, word: &str) -> bool {
    let (name, word) = (name.as_bytes(), word.as_bytes());
    word.is_empty()
        || name
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
}

/// How the builds of a search are found.
enum Plan {
    /// These names, each looked up.
    Names(Vec<String>),
    /// Too many names: every job tested against the words.
    Walk,
}

impl Db {
    /// The distinct job names containing `needle` (case-insensitive), at
    /// most `limit`: through the trigram index for three characters or
    /// more, else a scan of the names (75,000 on ci.guix, a few
    /// milliseconds when few match).  Names registered since the last
    /// [`Db::index_job_names`] are not in the index yet: they are scanned
    /// too, so a name is found the moment its registration commits.
    pub fn job_names_matching(&self, needle: &str, limit: usize) -> Result<Vec<String>> {
        let like = super::dashboard::like_substring(needle);
        if needle.chars().count() < 3 {
            return self.names_where(
                "SELECT name FROM JobNames WHERE name LIKE ?1 ESCAPE '\\' LIMIT ?2",
                &like,
                limit,
            );
        }
        let mut names = self.names_where(
            "SELECT name FROM JobNamesText WHERE JobNamesText MATCH ?1 LIMIT ?2",
            &phrase(needle),
            limit,
        )?;
        if names.len() < limit {
            names.extend(self.names_where(UNINDEXED_NAMES_LIKE, &like, limit - names.len())?);
        }
        Ok(names)
    }

    fn names_where(&self, sql: &str, arg: &str, limit: usize) -> Result<Vec<String>> {
        let names = self
            .conn
            .prepare_cached(sql)?
            .query_map(params![arg, limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    /// Adds up to `page` names registered since the last call to the
    /// trigram index, in one transaction; returns how many.  The loop
    /// calls it once a turn, with [`NAME_INDEX_PAGE`], and comes back at
    /// once while it returns a full page.
    pub fn index_job_names(&mut self, page: usize) -> Result<usize> {
        let tx = self.write()?;
        let upto: i64 = tx
            .prepare_cached("SELECT upto FROM JobNamesIndexed")?
            .query_row([], |r| r.get(0))?;
        let last: Option<i64> = tx
            .prepare_cached(
                "SELECT MAX(id) FROM (SELECT id FROM JobNames WHERE id > ?1 ORDER BY id LIMIT ?2)",
            )?
            .query_row(params![upto, page as i64], |r| r.get(0))?;
        let Some(last) = last else {
            return Ok(0);
        };
        let added = tx
            .prepare_cached(
                "INSERT INTO JobNamesText (rowid, name)
                 SELECT id, name FROM JobNames WHERE id > ?1 AND id <= ?2",
            )?
            .execute(params![upto, last])?;
        tx.prepare_cached("UPDATE JobNamesIndexed SET upto = ?1")?
            .execute([last])?;
        tx.commit()?;
        Ok(added)
    }

    /// The names containing every one of `words`, when the rarest word
    /// has at most [`NAME_LOOKUPS`] of them.
    fn plan(&self, words: &[String]) -> Result<Plan> {
        let mut rarest: Option<Vec<String>> = None;
        for w in words {
            let names = self.job_names_matching(w, NAME_LOOKUPS + 1)?;
            if rarest.as_ref().is_none_or(|r| names.len() < r.len()) {
                rarest = Some(names);
            }
        }
        Ok(match rarest {
            Some(names) if names.len() <= NAME_LOOKUPS => Plan::Names(
                names
                    .into_iter()
                    .filter(|n| words.iter().all(|w| contains(n, w)))
                    .collect(),
            ),
            Some(_) => Plan::Walk,
            None => Plan::Names(Vec::new()),
        })
    }

    /// Builds whose job name contains `needle`, newest first, at most
    /// `limit`, over every build ever recorded.
    pub fn search_builds(&self, needle: &str, limit: u32) -> Result<Search> {
        let words = [needle.to_string()];
        let (mut builds, stopped_early) =
            self.builds_matching(&words, Filters::default(), limit)?;
        self.name_builds(&mut builds, &|name| contains(name, needle))?;
        Ok(Search {
            builds,
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
        let filters = Filters {
            specification: query.specification.as_deref(),
            system: query.system.as_deref(),
            status: query.status,
        };
        let (found, _) = self.builds_matching(&query.words, filters, 1)?;
        let Some(id) = found.first().map(|b| b.id) else {
            return Ok(None);
        };
        let mut build = self.build(id)?;
        // Shown under the name that matched, when it is another name.
        if let Some(b) = build.as_mut() {
            let matches = |n: &str| query.words.iter().all(|w| contains(n, w));
            if !matches(&b.job_name)
                && let Some(k) = b.other_names.iter().position(|n| matches(n))
            {
                std::mem::swap(&mut b.job_name, &mut b.other_names[k]);
                b.other_names.sort();
            }
        }
        Ok(build)
    }

    /// Up to `limit` builds whose job name contains every one of `words`
    /// and that pass `f`, newest evaluation first (without outputs and
    /// weather), and whether the walk stopped early.
    fn builds_matching(
        &self,
        words: &[String],
        f: Filters,
        limit: u32,
    ) -> Result<(Vec<BuildView>, bool)> {
        if limit == 0 {
            return Ok((Vec::new(), false));
        }
        match self.plan(words)? {
            Plan::Names(names) => Ok((self.lookup_names(&names, f, limit)?, false)),
            Plan::Walk => {
                let (ids, stopped_early) = self.walk_evaluations(words, f, limit)?;
                Ok((self.builds_by_id(&ids)?, stopped_early))
            }
        }
    }

    fn lookup_names(&self, names: &[String], f: Filters, limit: u32) -> Result<Vec<BuildView>> {
        let filtered = f.specification.is_some() || f.system.is_some() || f.status.is_some();
        let (lo, hi) = f.status.unzip();
        let fresh = self.any_fresh()?;
        let mut stmt = self.conn.prepare_cached(match filtered {
            true => filtered_derivations_of_name(fresh),
            false => derivations_of_name(fresh),
        })?;
        // (evaluation, derivation row), best first; once `limit` are
        // found, a name need only be looked at from the last one's
        // evaluation on.
        let mut found: Vec<(EvalId, i64)> = Vec::new();
        let mut since = EvalId(i64::MIN);
        for name in names {
            fn pair(r: &rusqlite::Row) -> rusqlite::Result<(EvalId, i64)> {
                Ok((r.get(0)?, r.get(1)?))
            }
            let rows = match filtered {
                true => stmt.query_map(
                    params![name, since, limit, f.specification, f.system, lo, hi],
                    pair,
                )?,
                false => stmt.query_map(params![name, since, limit], pair)?,
            };
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
        let mut build = self.conn.prepare_cached(build_of_derivation_row())?;
        let mut hits: Vec<BuildView> = Vec::with_capacity(found.len());
        for (_, row) in found {
            if let Some(b) = build.query_row([row], build_row).optional()? {
                hits.push(b);
            }
        }
        // The same names as other names of builds (few: only jobs that
        // share a derivation have them).
        let mut aliases = self.conn.prepare_cached(ALIASES_OF_NAME)?;
        let mut aliased: Vec<(EvalId, BuildId)> = Vec::new();
        for name in names {
            let rows = aliases.query_map(
                params![name, i64::MIN, limit, f.specification, f.system, lo, hi],
                |r| Ok((r.get::<_, EvalId>(0)?, r.get::<_, BuildId>(1)?)),
            )?;
            for row in rows {
                aliased.push(row?);
            }
        }
        if !aliased.is_empty() {
            aliased.sort_unstable_by(|a, b| b.cmp(a));
            aliased.dedup_by_key(|h| h.1);
            aliased.truncate(limit as usize);
            let ids: Vec<BuildId> = aliased.into_iter().map(|(_, id)| id).collect();
            hits.extend(self.builds_by_id(&ids)?);
        }
        hits.sort_unstable_by_key(|b| std::cmp::Reverse((b.evaluation, b.id)));
        hits.dedup_by_key(|b| b.id);
        hits.truncate(limit as usize);
        Ok(hits)
    }

    fn walk_evaluations(
        &self,
        words: &[String],
        f: Filters,
        limit: u32,
    ) -> Result<(Vec<BuildId>, bool)> {
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
        let mut build = self.conn.prepare_cached(build_of_job())?;
        let mut ids = Vec::new();
        let mut read = 0;
        for eval in evals {
            let mut rows = jobs.query([eval])?;
            while let Some(r) = rows.next()? {
                if read >= WALK_BUDGET {
                    return Ok((ids, true));
                }
                read += 1;
                let text = |k| r.get_ref(k)?.as_str().map_err(rusqlite::Error::from);
                let (name, system) = (text(0)?, text(2)?);
                if !words.iter().all(|w| contains(name, w)) || f.system.is_some_and(|s| s != system)
                {
                    continue;
                }
                if let Some(id) = build
                    .query_row(params![text(1)?, eval, lo, hi], |r| r.get::<_, BuildId>(0))
                    .optional()?
                {
                    ids.push(id);
                    if ids.len() >= limit as usize {
                        return Ok((ids, false));
                    }
                }
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
    /// `status`: their ids, in increasing order.
    pub(super) fn evaluation_jobs_named(
        &self,
        eval: EvalId,
        names: &[String],
        status: Option<(i64, i64)>,
    ) -> Result<Vec<BuildId>> {
        let (lo, hi) = status.unzip();
        let mut stmt = self.conn.prepare_cached(&both_arms(
            "SELECT b.id FROM Derivations d INDEXED BY Derivations_job_name{_fresh}
             CROSS JOIN Builds b ON b.id = d.rowid
             WHERE d.job_name = CAST(?1 AS TEXT) AND d.evaluation = CAST(?2 AS INTEGER)
               AND d.fresh = {fresh} AND (?3 IS NULL OR b.status BETWEEN ?3 AND ?4)",
            "",
            "",
        ))?;
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

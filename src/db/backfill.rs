//! The weather of builds that finished before weathers were kept
//! (migration 14), computed once in the background rather than at every
//! read: on ci.guix's ten million builds, computing it as read doubled
//! what `/api/latestbuilds` and `/search` cost (two index walks of the
//! job's history per build shown).
//!
//! `WeatherBackfill.below` (migration 19) is the lowest build id done:
//! every build at or above it has its weather kept, or needs none yet
//! (pending builds get theirs when they finish).  The loop computes a
//! page of [`BACKFILL_PAGE`] builds per turn, newest first, so the builds
//! listings show first are done first, and a restart goes on where the
//! last run stopped.

use super::read::{
    PREVIOUS_FINISHED_BUILD_OF_ALIAS, previous_finished_build, previous_status, weather,
};
use super::{BuildId, BuildStatus, Db, EvalId, Result};
use rusqlite::params;

/// Builds looked at per call: at most this many weathers, each two
/// index walks (about 20 µs on ten million builds, pages read from the
/// OS), so that a turn stays near half a millisecond.
pub const BACKFILL_PAGE: i64 = 25;

impl Db {
    /// Computes and keeps the weather of the finished builds among the
    /// `page` builds (rows, whatever gaps their ids have) below
    /// `WeatherBackfill.below`, and moves the mark down to the lowest of
    /// them, in one transaction.  Returns the mark, below which builds
    /// may be left (0: done).  Weathers are not added to
    /// `WeatherCounts`, which counts builds as they finish.
    pub fn backfill_weathers(&mut self, page: i64) -> Result<i64> {
        let tx = self.write()?;
        let below: i64 = tx
            .prepare_cached("SELECT below FROM WeatherBackfill")?
            .query_row([], |r| r.get(0))?;
        if below <= 1 {
            return Ok(0);
        }
        // The page's rows by id, down the table's key: ids deleted by
        // retention, or never used, cost nothing.
        let (lowest, rows): (Option<i64>, i64) = tx
            .prepare_cached(
                "SELECT MIN(id), COUNT(*) FROM
                   (SELECT id FROM Builds WHERE id < ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .query_row(params![below, page], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let from = match lowest {
            Some(lowest) if rows == page => lowest,
            // The last page: nothing is left below it.
            _ => 1,
        };
        let builds: Vec<(BuildId, BuildStatus, EvalId, String, String, String)> = tx
            .prepare_cached(
                "SELECT b.id, b.status, b.evaluation, d.job_name, d.system, e.specification
                 FROM Builds b
                 CROSS JOIN Derivations d ON d.rowid = b.id
                 CROSS JOIN Evaluations e ON e.id = b.evaluation
                 WHERE b.id >= ?1 AND b.id < ?2 AND b.weather IS NULL AND b.status BETWEEN 0 AND 3",
            )?
            .query_map(params![from, below], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        {
            let mut previous = tx.prepare_cached(previous_finished_build())?;
            let mut previous_alias = tx.prepare_cached(PREVIOUS_FINISHED_BUILD_OF_ALIAS)?;
            let mut keep = tx.prepare_cached(
                "UPDATE Builds SET weather = ?2 WHERE id = ?1 AND weather IS NULL",
            )?;
            for (id, st, eval, name, system, spec) in &builds {
                let job = (name.as_str(), *eval, system.as_str());
                let prev = previous_status(&mut previous, &mut previous_alias, job, spec)?;
                keep.execute(params![id, weather::of(*st, prev)])?;
            }
        }
        tx.prepare_cached("UPDATE WeatherBackfill SET below = ?1")?
            .execute([from])?;
        tx.commit()?;
        Ok(if from <= 1 { 0 } else { from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{JobRecord, status};
    use crate::spec::Specification;

    fn job(name: &str, drv: &str) -> JobRecord {
        JobRecord {
            job_name: name.into(),
            derivation: format!("/gnu/store/{drv:a<32}-{name}.drv"),
            system: "x86_64-linux".into(),
            nix_name: name.into(),
            ..JobRecord::default()
        }
    }

    #[test]
    fn weathers_not_kept_are_computed_newest_first_and_then_read_as_kept() {
        let mut db = Db::open_in_memory().unwrap();
        let spec = Specification::new("a", "file:///x.git", "ci.scm", "jobs");
        db.add_specifications(&[spec]).unwrap();
        // Four evaluations of job "j": succeeded, failed, failed,
        // succeeded; "k" only in the last.
        let outcomes = [
            status::SUCCEEDED,
            status::FAILED,
            status::FAILED,
            status::SUCCEEDED,
        ];
        for (i, st) in outcomes.iter().enumerate() {
            let mut jobs = vec![job("j", &format!("j{i}"))];
            if i == 3 {
                jobs.push(job("k", "k3"));
            }
            db.register_evaluation("a", &format!("c{i}"), &jobs, i as i64)
                .unwrap();
            let mut done = vec![(jobs[0].derivation.clone(), *st, None)];
            if i == 3 {
                done.push((jobs[1].derivation.clone(), status::FAILED, None));
            }
            db.finish_builds(&done, 10 + i as i64).unwrap();
        }
        // As a database upgraded from before migration 14 has them.
        let conn = db.connection();
        conn.execute_batch(
            "UPDATE Builds SET weather = NULL;
             UPDATE WeatherBackfill SET below = (SELECT MAX(id) + 1 FROM Builds);",
        )
        .unwrap();
        let weathers = |db: &Db| -> Vec<Option<i64>> {
            let mut stmt = db
                .connection()
                .prepare("SELECT weather FROM Builds ORDER BY id")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let shown: Vec<i64> = (1..=5)
            .map(|id| db.build(BuildId(id)).unwrap().unwrap().weather)
            .collect();
        // Newest first: two builds (k's and j's last) per call; the mark
        // goes down to the lowest done.
        assert_eq!(db.backfill_weathers(2).unwrap(), 4);
        assert_eq!(
            weathers(&db),
            [
                None,
                None,
                None,
                Some(weather::NEW_SUCCESS),
                Some(weather::UNKNOWN)
            ]
        );
        assert_eq!(db.backfill_weathers(2).unwrap(), 2);
        assert_eq!(db.backfill_weathers(2).unwrap(), 0);
        assert_eq!(db.backfill_weathers(2).unwrap(), 0);
        let kept = [
            weather::UNKNOWN,
            weather::NEW_FAILURE,
            weather::STILL_FAILING,
            weather::NEW_SUCCESS,
            weather::UNKNOWN,
        ];
        assert_eq!(weathers(&db), kept.map(Some));
        // What was computed at read is what is kept now.
        assert_eq!(shown, kept);
        let read: Vec<i64> = (1..=5)
            .map(|id| db.build(BuildId(id)).unwrap().unwrap().weather)
            .collect();
        assert_eq!(read, kept);
        // Not counted as finishing now.
        let counted: i64 = db
            .connection()
            .query_row("SELECT SUM(count) FROM WeatherCounts", [], |r| r.get(0))
            .unwrap();
        let at_finish: i64 = 5;
        assert_eq!(counted, at_finish);
    }

    #[test]
    fn gaps_in_build_ids_cost_nothing() {
        let mut db = Db::open_in_memory().unwrap();
        let spec = Specification::new("a", "file:///x.git", "ci.scm", "jobs");
        db.add_specifications(&[spec]).unwrap();
        let jobs = [job("j", "j1"), job("k", "k1")];
        db.register_evaluation("a", "c1", &jobs, 1).unwrap();
        let done: Vec<_> = jobs
            .iter()
            .map(|j| (j.derivation.clone(), status::SUCCEEDED, None))
            .collect();
        db.finish_builds(&done, 2).unwrap();
        // Build 2 becomes build 1,000,000,000,000, as after a long life
        // and retention; neither has its weather.
        db.connection()
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 UPDATE Builds SET id = 1000000000000 WHERE id = 2;
                 UPDATE Outputs SET build = 1000000000000 WHERE build = 2;
                 UPDATE Derivations SET rowid = 1000000000000 WHERE rowid = 2;
                 PRAGMA foreign_keys = ON;
                 UPDATE Builds SET weather = NULL;
                 UPDATE WeatherBackfill SET below = 1000000000001;",
            )
            .unwrap();
        // One call for both, whatever lies between their ids.
        assert_eq!(db.backfill_weathers(25).unwrap(), 0);
        let nulls: i64 = db
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM Builds WHERE weather IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(nulls, 0);
    }
}

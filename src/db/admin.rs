//! The operators' actions on the database, each in one transaction:
//! restarting builds (with the builds that failed because of them, and
//! their earlier attempts kept), canceling scheduled builds, and
//! specifications activated, deactivated and deleted.

use super::{BuildId, BuildStatus, Db, Error, EvalId, Transaction, params, status};
use rusqlite::OptionalExtension;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Why an action was refused.
#[derive(Debug)]
pub enum ActionError {
    /// No such build, evaluation or specification (HTTP 404).
    NotFound(String),
    /// The target is not in a state the action applies to (HTTP 409).
    Conflict(String),
    Db(Error),
}

impl From<rusqlite::Error> for ActionError {
    fn from(e: rusqlite::Error) -> ActionError {
        ActionError::Db(e.into())
    }
}

impl From<Error> for ActionError {
    fn from(e: Error) -> ActionError {
        ActionError::Db(e)
    }
}

pub type ActionResult<T> = std::result::Result<T, ActionError>;

/// A build scheduled again by a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    pub build: BuildId,
    /// The number its previous run got in `BuildAttempts` (1 for the
    /// first run).
    pub attempt: i64,
    pub specification: String,
}

/// An earlier run of a build, as `BuildAttempts` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: i64,
    pub status: BuildStatus,
    pub starttime: i64,
    pub stoptime: i64,
    pub log: String,
    pub errormsg: Option<String>,
}

/// What a cancel changed: the builds, and whose queue to read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canceled {
    pub builds: Vec<BuildId>,
    pub specification: String,
}

/// The builds with status ?2 that list build ?1's derivation as an
/// input, through both parts of `Inputs_derivation` (the fresh one keyed
/// by the start of the hash, migration 24: its arm of the OR names it).
pub(crate) const DEPENDENTS_WITH_STATUS: &str = "SELECT b.id FROM Builds d
       JOIN Inputs i ON i.derivation = d.derivation
         AND (i.fresh = 0
              OR (i.fresh = 1 AND substr(i.derivation, 12, 8) = substr(d.derivation, 12, 8)))
       JOIN Builds b ON b.id = i.build
     WHERE d.id = ?1 AND b.status = ?2 ORDER BY b.id";

impl Db {
    /// Schedules build `id` again, with every build that failed-dependency
    /// because of it, directly or through another such build (found by
    /// their `Inputs`), in dependency order: a build comes after the
    /// builds it depends on.  Each one's finished run is kept in
    /// `BuildAttempts`.  Errors: NotFound, Conflict for a build not
    /// finished.
    pub fn restart_build(&mut self, id: BuildId) -> ActionResult<Vec<Restarted>> {
        let tx = self.write()?;
        let st: Option<BuildStatus> = tx
            .prepare_cached("SELECT status FROM Builds WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        match st {
            None => return Err(ActionError::NotFound(format!("Build {id} not found."))),
            Some(st) if !status::is_final(st) => {
                return Err(ActionError::Conflict(format!(
                    "Build {id} is not finished."
                )));
            }
            Some(_) => {}
        }
        let mut set = vec![id];
        let mut queue = VecDeque::from([id]);
        let mut dependents = tx.prepare_cached(DEPENDENTS_WITH_STATUS)?;
        while let Some(b) = queue.pop_front() {
            let found = dependents
                .query_map(params![b, status::FAILED_DEPENDENCY], |r| r.get(0))?
                .collect::<Result<Vec<BuildId>, _>>()?;
            for d in found {
                if !set.contains(&d) {
                    set.push(d);
                    queue.push_back(d);
                }
            }
        }
        drop(dependents);
        let restarted = Db::reschedule_in_order(&tx, &set)?;
        tx.commit()?;
        Ok(restarted)
    }

    /// Schedules again an evaluation's failed builds (failed,
    /// failed-dependency, failed-other), in dependency order.  Errors:
    /// NotFound.
    pub fn restart_failed_builds(&mut self, eval: EvalId) -> ActionResult<Vec<Restarted>> {
        let tx = self.write()?;
        Db::evaluation_spec(&tx, eval)?;
        let set = tx
            .prepare_cached(
                "SELECT id FROM Builds WHERE evaluation = ?1 AND status IN (?2, ?3, ?4)
                 ORDER BY id",
            )?
            .query_map(
                params![
                    eval,
                    status::FAILED,
                    status::FAILED_DEPENDENCY,
                    status::FAILED_OTHER
                ],
                |r| r.get(0),
            )?
            .collect::<Result<Vec<BuildId>, _>>()?;
        let restarted = Db::reschedule_in_order(&tx, &set)?;
        tx.commit()?;
        Ok(restarted)
    }

    /// `set` sorted so that a build comes after those of `set` whose
    /// derivation it takes as input (Kahn's algorithm; ties by id), then
    /// each one's run moved to `BuildAttempts` and the build scheduled,
    /// with submission times one second apart in that order so that
    /// listings of the queue show the order too.
    fn reschedule_in_order(tx: &Transaction, set: &[BuildId]) -> ActionResult<Vec<Restarted>> {
        let mut info = tx.prepare_cached(
            "SELECT b.derivation, e.specification, b.status, b.starttime, b.stoptime, b.log,
                    b.errormsg, b.timestamp
             FROM Builds b JOIN Evaluations e ON e.id = b.evaluation WHERE b.id = ?1",
        )?;
        let mut inputs = tx.prepare_cached("SELECT derivation FROM Inputs WHERE build = ?1")?;
        let mut rows = BTreeMap::new();
        let mut by_drv: HashMap<String, Vec<BuildId>> = HashMap::new();
        for &id in set {
            let row = info.query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    Attempt {
                        attempt: 0,
                        status: r.get(2)?,
                        starttime: r.get(3)?,
                        stoptime: r.get(4)?,
                        log: r.get(5)?,
                        errormsg: r.get(6)?,
                    },
                    r.get::<_, i64>(7)?,
                ))
            })?;
            by_drv.entry(row.0.clone()).or_default().push(id);
            rows.insert(id, row);
        }
        // Edges within the set: input build -> dependent build.
        let mut waiting: BTreeMap<BuildId, usize> = set.iter().map(|&b| (b, 0)).collect();
        let mut edges: HashMap<BuildId, Vec<BuildId>> = HashMap::new();
        for &id in set {
            let drvs = inputs
                .query_map([id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for drv in drvs {
                for &input in by_drv.get(&drv).into_iter().flatten() {
                    if input != id {
                        edges.entry(input).or_default().push(id);
                        *waiting.get_mut(&id).unwrap() += 1;
                    }
                }
            }
        }
        let mut ready: BTreeSet<BuildId> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(b, _)| *b)
            .collect();
        let mut order = Vec::with_capacity(set.len());
        while let Some(b) = ready.pop_first() {
            order.push(b);
            for d in edges.get(&b).into_iter().flatten() {
                let n = waiting.get_mut(d).unwrap();
                *n -= 1;
                if *n == 0 {
                    ready.insert(*d);
                }
            }
        }
        // A cycle cannot come from real derivations; kept in id order.
        for &b in set {
            if !order.contains(&b) {
                order.push(b);
            }
        }
        let base = order.iter().map(|b| rows[b].3).max().unwrap_or(0);
        let mut keep = tx.prepare_cached(
            "INSERT INTO BuildAttempts (build, attempt, status, starttime, stoptime, log, errormsg)
             VALUES (?1, (SELECT coalesce(max(attempt), 0) + 1 FROM BuildAttempts WHERE build = ?1),
                     ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut number =
            tx.prepare_cached("SELECT max(attempt) FROM BuildAttempts WHERE build = ?1")?;
        let mut schedule = tx.prepare_cached(
            "UPDATE Builds SET status = ?2, starttime = 0, stoptime = 0, log = '',
               errormsg = NULL, weather = NULL, timestamp = ?3
             WHERE id = ?1",
        )?;
        let mut out = Vec::with_capacity(order.len());
        for (i, b) in order.iter().enumerate() {
            let (_, spec, run, _) = &rows[b];
            keep.execute(params![
                b,
                run.status,
                run.starttime,
                run.stoptime,
                run.log,
                run.errormsg
            ])?;
            let attempt: i64 = number.query_row([b], |r| r.get(0))?;
            schedule.execute(params![b, status::SCHEDULED, base + i as i64])?;
            out.push(Restarted {
                build: *b,
                attempt,
                specification: spec.clone(),
            });
        }
        Ok(out)
    }

    /// A build's earlier runs, oldest first.
    pub fn build_attempts(&self, id: BuildId) -> super::Result<Vec<Attempt>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT attempt, status, starttime, stoptime, log, errormsg
             FROM BuildAttempts WHERE build = ?1 ORDER BY attempt",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(Attempt {
                attempt: r.get(0)?,
                status: r.get(1)?,
                starttime: r.get(2)?,
                stoptime: r.get(3)?,
                log: r.get(4)?,
                errormsg: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Cancels build `id`, which must be scheduled (one handed to the
    /// daemon goes on).  Errors: NotFound, Conflict.
    pub fn cancel_build(&mut self, id: BuildId, now: i64) -> ActionResult<Canceled> {
        let tx = self.write()?;
        let row: Option<(BuildStatus, String)> = tx
            .prepare_cached(
                "SELECT b.status, e.specification FROM Builds b
                 JOIN Evaluations e ON e.id = b.evaluation WHERE b.id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (st, spec) =
            row.ok_or_else(|| ActionError::NotFound(format!("Build {id} not found.")))?;
        if st != status::SCHEDULED {
            return Err(ActionError::Conflict(format!(
                "Build {id} is not scheduled (status {st})."
            )));
        }
        tx.prepare_cached("UPDATE Builds SET status = ?2, stoptime = ?3 WHERE id = ?1")?
            .execute(params![id, status::CANCELED, now])?;
        tx.commit()?;
        Ok(Canceled {
            builds: vec![id],
            specification: spec,
        })
    }

    /// Cancels the scheduled builds of evaluation `eval`.  Errors: NotFound.
    pub fn cancel_evaluation(&mut self, eval: EvalId, now: i64) -> ActionResult<Canceled> {
        let tx = self.write()?;
        let spec = Db::evaluation_spec(&tx, eval)?;
        let builds = tx
            .prepare_cached("SELECT id FROM Builds WHERE evaluation = ?1 AND status = ?2")?
            .query_map(params![eval, status::SCHEDULED], |r| r.get(0))?
            .collect::<Result<Vec<BuildId>, _>>()?;
        tx.prepare_cached(
            "UPDATE Builds SET status = ?2, stoptime = ?3 WHERE evaluation = ?1 AND status = ?4",
        )?
        .execute(params![eval, status::CANCELED, now, status::SCHEDULED])?;
        tx.commit()?;
        Ok(Canceled {
            builds,
            specification: spec,
        })
    }

    /// The specification and commit of evaluation `eval`.  Errors: NotFound.
    pub fn evaluation_commit(&self, eval: EvalId) -> ActionResult<(String, String)> {
        self.conn
            .prepare_cached("SELECT specification, revision FROM Evaluations WHERE id = ?1")?
            .query_row([eval], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| ActionError::NotFound(format!("Evaluation {eval} not found.")))
    }

    fn evaluation_spec(tx: &Transaction, eval: EvalId) -> ActionResult<String> {
        tx.prepare_cached("SELECT specification FROM Evaluations WHERE id = ?1")?
            .query_row([eval], |r| r.get(0))
            .optional()?
            .ok_or_else(|| ActionError::NotFound(format!("Evaluation {eval} not found.")))
    }

    /// Whether specification `name` is polled; None when there is none.
    pub fn specification_active(&self, name: &str) -> super::Result<Option<bool>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT is_active FROM Specifications WHERE repo_name = ?1 AND deleting = 0",
            )?
            .query_row([name], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|a| a != 0))
    }

    /// The names of the specifications not polled.
    pub fn inactive_specifications(&self) -> super::Result<BTreeSet<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT repo_name FROM Specifications WHERE is_active = 0 AND deleting = 0",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks specification `name` polled or not; its history stays.
    /// Errors: NotFound.
    pub fn set_specification_active(&mut self, name: &str, active: bool) -> ActionResult<()> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE Specifications SET is_active = ?2 WHERE repo_name = ?1 AND deleting = 0",
            )?
            .execute(params![name, active as i64])?;
        match changed {
            0 => Err(ActionError::NotFound(format!(
                "Specification {name:?} not found."
            ))),
            _ => Ok(()),
        }
    }

    /// Deletes specification `name`: its row and stamp go at once, and
    /// its evaluations move to its tombstone ([`tombstone`], migration
    /// 21), whose rows the loop deletes a chunk per turn
    /// ([`Db::spec_deletion_chunk`]).  The name is free again at once;
    /// the builds stay readable until their chunk goes, and none is
    /// dispatched (the tombstone has no live cycle).  Returns how many
    /// builds are to go.  Errors: NotFound.
    pub fn delete_specification(&mut self, name: &str) -> ActionResult<i64> {
        let tx = self.write()?;
        let exists: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM Specifications WHERE repo_name = ?1 AND deleting = 0")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(ActionError::NotFound(format!(
                "Specification {name:?} not found."
            )));
        }
        let builds: i64 = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(c.count), 0) FROM Evaluations e
                 JOIN BuildCounts c ON c.evaluation = e.id WHERE e.specification = ?1",
            )?
            .query_row([name], |r| r.get(0))?;
        let tomb = tombstone(name);
        // A tombstone left by an earlier deletion of the name, still
        // under way, takes these evaluations too; a live specification
        // of that name (a 2018 database may hold names with a '/') is
        // not one.
        let made = tx
            .prepare_cached(
                "INSERT INTO Specifications (repo_name, url, load_path, file, proc, arguments,
                                             is_active, deleting)
                 SELECT ?2, url, load_path, file, proc, arguments, 0, 1
                 FROM Specifications WHERE repo_name = ?1
                 ON CONFLICT (repo_name) DO UPDATE SET is_active = 0 WHERE deleting = 1",
            )?
            .execute(params![name, tomb])?;
        if made == 0 {
            return Err(ActionError::Conflict(format!(
                "Specification {name:?} cannot be deleted: its history would be kept \
                 under {tomb:?}, the name of another specification."
            )));
        }
        tx.prepare_cached("UPDATE Evaluations SET specification = ?2 WHERE specification = ?1")?
            .execute(params![name, tomb])?;
        tx.execute("DELETE FROM Stamps WHERE specification = ?1", [name])?;
        tx.execute("DELETE FROM Specifications WHERE repo_name = ?1", [name])?;
        tx.commit()?;
        Ok(builds)
    }

    /// Records who did what, and how it went.
    pub fn log_action(
        &mut self,
        who: &str,
        action: &str,
        target: &str,
        outcome: &str,
        now: i64,
    ) -> super::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO AdminLog (timestamp, who, action, target, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![now, who, action, target, outcome])?;
        Ok(())
    }
}

/// The name a deleted specification's history is kept under until the
/// loop has deleted it: `NAME/(deleted)`, which no polled specification
/// can have (`spec::check_name` refuses a '/').
pub fn tombstone(name: &str) -> String {
    format!("{name}{TOMBSTONE_SUFFIX}")
}

pub const TOMBSTONE_SUFFIX: &str = "/(deleted)";

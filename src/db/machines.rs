//! The build machines, as the builds they ran tell them: `/machines` and
//! `/api/machines`.

use super::{Db, Result};

/// One machine's builds, from the `worker` column (migration 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `localhost` (the daemon's own machine) or the build machine's name
    /// in the daemon's `machines.scm`, as `@ build-remote` gave it.
    pub name: String,
    /// Builds it is running now.
    pub running: i64,
    /// Builds it finished since `since` (Unix seconds), failures included.
    pub done: i64,
    /// Of those, builds that failed (any status above 0).
    pub failed: i64,
    /// The latest start or stop time of its builds (Unix seconds).
    pub last_seen: i64,
}

impl Db {
    /// The machines that are running builds or finished some since
    /// `since` (Unix seconds), by name.  A machine idle since then is not
    /// listed: reading every build ever would not be bounded.
    pub fn machines(&self, since: i64) -> Result<Vec<Machine>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT worker, sum(running), sum(done), sum(failed), max(seen) FROM (
               SELECT worker, 0 AS running, 1 AS done, status > 0 AS failed, stoptime AS seen
                 FROM Builds INDEXED BY Builds_worker
                 WHERE worker IS NOT NULL AND stoptime >= ?1
               UNION ALL
               SELECT worker, 1, 0, 0, starttime FROM Builds
                 WHERE status = -1 AND worker IS NOT NULL)
             GROUP BY worker ORDER BY worker",
        )?;
        let rows = stmt.query_map([since], |r| {
            Ok(Machine {
                name: r.get(0)?,
                running: r.get(1)?,
                done: r.get(2)?,
                failed: r.get(3)?,
                last_seen: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Update;
    use crate::db::JobRecord;
    use crate::db::status;
    use crate::spec::Specification;

    fn drv(name: &str) -> String {
        format!("/gnu/store/{name:a<32}-{name}.drv")
    }

    fn db_with(names: &[&str]) -> Db {
        let mut db = Db::open_in_memory().unwrap();
        let spec = Specification::new("a", "file:///srv/a.git", "ci.scm", "jobs");
        db.add_specifications(&[spec]).unwrap();
        let jobs: Vec<JobRecord> = names
            .iter()
            .map(|n| JobRecord {
                job_name: n.to_string(),
                derivation: drv(n),
                system: "x86_64-linux".into(),
                nix_name: n.to_string(),
                ..JobRecord::default()
            })
            .collect();
        db.register_evaluation("a", "c0ffee", &jobs, 1).unwrap();
        db
    }

    fn started(name: &str) -> Update {
        Update::Started {
            derivation: drv(name),
            log: String::new(),
        }
    }

    fn remote(name: &str, host: &str) -> Update {
        Update::Remote {
            derivation: drv(name),
            host: host.into(),
        }
    }

    fn finished(name: &str, st: crate::db::BuildStatus) -> Update {
        Update::Finished {
            derivation: drv(name),
            status: st,
            log: None,
            reason: None,
        }
    }

    fn workers(db: &Db) -> Vec<(String, Option<String>)> {
        let mut stmt = db
            .connection()
            .prepare("SELECT d.job_name, b.worker FROM Builds b JOIN Derivations d ON d.rowid = b.id ORDER BY b.id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn each_build_records_the_machine_that_ran_it() {
        let mut db = db_with(&["local", "remote", "quick", "quick-remote", "never"]);
        db.apply_build_updates(&[started("local"), started("remote")], 10)
            .unwrap();
        // Started and finished in one read: written once, machine included.
        db.apply_build_updates(
            &[
                remote("remote", "10.231.1.2"),
                started("quick"),
                finished("quick", status::SUCCEEDED),
                started("quick-remote"),
                remote("quick-remote", "m2"),
                finished("quick-remote", status::FAILED),
            ],
            20,
        )
        .unwrap();
        db.apply_build_updates(&[finished("remote", status::SUCCEEDED)], 30)
            .unwrap();
        let w = |s: &str| Some(s.to_string());
        assert_eq!(
            workers(&db),
            [
                ("local".into(), w("localhost")),
                ("remote".into(), w("10.231.1.2")),
                ("quick".into(), w("localhost")),
                ("quick-remote".into(), w("m2")),
                ("never".into(), None),
            ]
        );
        let m = db.machines(15).unwrap();
        let row = |name: &str, running, done, failed, last_seen| Machine {
            name: name.into(),
            running,
            done,
            failed,
            last_seen,
        };
        assert_eq!(
            m,
            [
                row("10.231.1.2", 0, 1, 0, 30),
                row("localhost", 1, 1, 0, 20),
                row("m2", 0, 1, 1, 20),
            ]
        );
        // Builds finished before the window are not counted.
        assert_eq!(db.machines(25).unwrap().len(), 2);
    }
}

//! What today's specifications add to the database: each evaluation's
//! checkouts (one per channel) and build products.

use super::{Db, EvalId, Result};
use crate::fetch::Checkout;
use crate::records::BuildId;
use rusqlite::params;

/// One checkout of an evaluation, as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutView {
    pub channel: String,
    pub commit: String,
    pub directory: String,
}

impl Db {
    /// Records the checkouts an evaluation was made from.
    pub fn add_checkouts(&mut self, eval: EvalId, checkouts: &[Checkout]) -> Result<()> {
        let tx = self.write()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO Checkouts (evaluation, channel, revision, directory)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for c in checkouts {
                stmt.execute(params![
                    eval,
                    c.channel,
                    c.commit,
                    c.directory.to_string_lossy()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// An evaluation's checkouts in channel order of its spec (rowid-less
    /// table: by name); empty for evaluations made before migration 10.
    pub fn checkouts(&self, eval: EvalId) -> Result<Vec<CheckoutView>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT channel, revision, directory FROM Checkouts WHERE evaluation = ?1
             ORDER BY channel",
        )?;
        let rows = stmt.query_map([eval], |r| {
            Ok(CheckoutView {
                channel: r.get(0)?,
                commit: r.get(1)?,
                directory: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

/// A build product: a file of a succeeded build that its spec's
/// `build-outputs` names, downloadable at `/download/ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    pub id: i64,
    pub build: BuildId,
    pub kind: String,
    /// Bytes, when registered.
    pub file_size: i64,
    /// A store file name.
    pub path: String,
}

impl Db {
    /// Registers the products of the succeeded builds of `derivations` in
    /// `spec` (builds that have none yet): for each of `outputs` whose
    /// `job` matches one of the build's job names and whose output the build has,
    /// the file `OUTPUT/PATH` if `file_size` finds it.  Returns how many.
    pub fn register_products(
        &mut self,
        spec: &str,
        derivations: &[String],
        outputs: &[crate::spec::BuildOutput],
        file_size: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<usize> {
        let patterns: Vec<_> = outputs
            .iter()
            .filter_map(|o| Some((regex::Regex::new(&o.job).ok()?, o)))
            .collect();
        let tx = self.write()?;
        let mut added = 0;
        {
            let mut select = tx.prepare_cached(concat!(
                "SELECT b.id, d.job_name, o.name, o.path
                 FROM Builds b
                 JOIN Derivations d ON d.rowid = b.id
                 JOIN Evaluations e ON e.id = b.evaluation
                 JOIN Outputs o ON o.build = b.id
                 WHERE ",
                super::fresh::builds_of_derivation_sql!("b.id", "?1"),
                " AND e.specification = ?2 AND b.status = 0
                   AND NOT EXISTS (SELECT 1 FROM BuildProducts p WHERE p.build = b.id)"
            ))?;
            let mut others =
                tx.prepare_cached("SELECT job_name FROM JobAliases WHERE build = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO BuildProducts (build, type, file_size, path) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for drv in derivations {
                let rows: Vec<(i64, String, String, String)> = select
                    .query_map(params![drv, spec], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<std::result::Result<_, _>>()?;
                for (build, job, output, path) in rows {
                    let mut names: Vec<String> = others
                        .query_map([build], |r| r.get(0))?
                        .collect::<std::result::Result<_, _>>()?;
                    names.push(job);
                    for (re, o) in &patterns {
                        if o.output != output || !names.iter().any(|n| re.is_match(n)) {
                            continue;
                        }
                        let file = match o.path.as_str() {
                            "" => path.clone(),
                            p => format!("{path}/{p}"),
                        };
                        if let Some(size) = file_size(&file) {
                            insert.execute(params![build, o.kind, size as i64, file])?;
                            added += 1;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(added)
    }

    /// A build's products, by id.
    pub fn products(&self, build: BuildId) -> Result<Vec<ProductView>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, build, type, file_size, path FROM BuildProducts WHERE build = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([build], product_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn product(&self, id: i64) -> Result<Option<ProductView>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, build, type, file_size, path FROM BuildProducts WHERE id = ?1",
            )?
            .query_row([id], product_row)
            .optional()?)
    }
}

fn product_row(r: &rusqlite::Row) -> rusqlite::Result<ProductView> {
    Ok(ProductView {
        id: r.get(0)?,
        build: r.get(1)?,
        kind: r.get(2)?,
        file_size: r.get(3)?,
        path: r.get(4)?,
    })
}

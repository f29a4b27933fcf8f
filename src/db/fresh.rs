//! Moving registration's index entries to the large indexes (migration
//! 22).  A registered build, its derivation row, outputs and inputs are
//! fresh: their entries by derivation, job name and store item are in
//! small `_fresh` partial indexes, which a new evaluation's jobs fill in
//! any order at little cost.  The loop moves them, a page of builds per
//! turn in id order, into the large indexes, where each entry costs a
//! random leaf; queries look in both meanwhile.

use super::*;

/// `COLUMN IN (...)`, the ids of the builds of derivation `DRV` (SQL
/// expressions), a seek in each index; a literal, for `concat!`.
macro_rules! builds_of_derivation_sql {
    ($column:literal, $drv:literal) => {
        concat!(
            $column,
            " IN (SELECT * FROM (SELECT id FROM Builds INDEXED BY Builds_derivation
                                 WHERE derivation = ",
            $drv,
            " AND fresh = 0)
                  UNION ALL
                  SELECT * FROM (SELECT id FROM Builds INDEXED BY Builds_derivation_fresh
                                 WHERE substr(derivation, 12, 8) = substr(CAST(",
            $drv,
            " AS TEXT), 12, 8) AND derivation = CAST(",
            $drv,
            " AS TEXT) AND fresh = 1))"
        )
    };
}
pub(crate) use builds_of_derivation_sql;

/// The text of a statement built at run time, built once: statements are
/// found in SQLite's statement cache by their text at every use, and
/// building a [`both_arms`] union each time (a few microseconds of
/// allocation and replacing) cost `/build/ID` a tenth of its throughput.
macro_rules! sql_once {
    ($sql:expr) => {{
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| $sql);
        SQL.as_str()
    }};
}
pub(crate) use sql_once;

/// Builds whose entries move in one loop turn: each costs a leaf of
/// three to five large indexes (about 0.3 ms on a 10,000,000-build
/// database whose pages are not cached), so a page is some 30 ms.
pub const MERGE_PAGE: usize = 100;

/// The derivation rows of the fresh builds with ids in (?1, ?2]: their
/// rowids (migration 25).
pub(crate) const MERGE_DERIVATIONS: &str = "UPDATE Derivations SET fresh = 0
     WHERE rowid > ?1 AND rowid <= ?2 AND fresh = 1";

impl Db {
    /// Moves the index entries of the `page` lowest fresh builds (and of
    /// their derivation rows, outputs and inputs) to the large indexes, in
    /// one transaction; returns how many builds it looked at, fewer than
    /// `page` once none is left.  Every build above `FreshBuilds.above`
    /// is one that registration may have written fresh: identifiers only
    /// grow (AUTOINCREMENT), so the mark never passes an unmoved build.
    /// (A 2018 database's Builds has no AUTOINCREMENT: an id above the
    /// mark deleted may be given again, below it, and that build's
    /// entries then stay in the fresh indexes, where every lookup still
    /// finds them.)
    pub fn merge_fresh(&mut self, page: usize) -> Result<usize> {
        let tx = self.write()?;
        let above: i64 = tx
            .prepare_cached("SELECT above FROM FreshBuilds")?
            .query_row([], |r| r.get(0))?;
        let (last, count): (Option<i64>, i64) = tx
            .prepare_cached(
                "SELECT MAX(id), COUNT(*) FROM
                   (SELECT id FROM Builds WHERE id > ?1 ORDER BY id LIMIT ?2)",
            )?
            .query_row(params![above, page as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let Some(last) = last else {
            return Ok(0);
        };
        // The derivation rows first: they are found through the builds
        // still marked.
        tx.prepare_cached(MERGE_DERIVATIONS)?
            .execute(params![above, last])?;
        for sql in [
            "UPDATE Outputs SET fresh = 0 WHERE build > ?1 AND build <= ?2 AND fresh = 1",
            "UPDATE Inputs SET fresh = 0 WHERE build > ?1 AND build <= ?2 AND fresh = 1",
            "UPDATE Builds SET fresh = 0 WHERE id > ?1 AND id <= ?2 AND fresh = 1",
        ] {
            tx.prepare_cached(sql)?.execute(params![above, last])?;
        }
        tx.prepare_cached("UPDATE FreshBuilds SET above = ?1")?
            .execute([last])?;
        tx.commit()?;
        Ok(count as usize)
    }

    /// Whether some build has fresh index entries: the first entry of
    /// the small index, a seek (not the mark, which only a registration's
    /// ids growing keep right).
    pub fn any_fresh(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM Builds INDEXED BY Builds_derivation_fresh
                                WHERE fresh = 1)",
            )?
            .query_row([], |r| r.get(0))?)
    }

    /// How many builds still have fresh index entries (for the tests and
    /// the benchmarks).
    pub fn fresh_builds(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM Builds WHERE fresh = 1")?
            .query_row([], |r| r.get(0))?;
        Ok(n as usize)
    }
}

/// Whether some of evaluation `eval`'s builds have left the fresh
/// indexes ([`Db::merge_fresh`]): its first derivation row, whose rowid
/// is its build's id (migration 25), at or below the mark; a seek.
pub(crate) fn some_moved(tx: &Transaction, eval: EvalId) -> Result<bool> {
    Ok(tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM Derivations INDEXED BY Derivations_evaluation
                            WHERE evaluation = ?1 AND rowid <= (SELECT above FROM FreshBuilds))",
        )?
        .query_row([eval], |r| r.get(0))?)
}

/// A query through indexes that migration 22 split, with the indexes
/// named: `arm` (a SELECT) once over the large indexes and once over the
/// fresh ones, each with its own `inner` ORDER BY and LIMIT, then the
/// union with `outer`'s.  In `arm`, `{fresh}` stands for the flag (0,
/// then 1) and `{_fresh}` for the suffix of the fresh indexes' names.
/// Both arms may use the flag of a derivation row for its build's: they
/// are fresh together, as registration writes them and
/// [`Db::merge_fresh`] moves them.
pub(crate) fn both_arms(arm: &str, inner: &str, outer: &str) -> String {
    let one = |flag: &str, suffix: &str| {
        let sql = arm.replace("{fresh}", flag).replace("{_fresh}", suffix);
        format!("SELECT * FROM ({sql} {inner})")
    };
    format!("{} UNION ALL {} {outer}", one("0", ""), one("1", "_fresh"))
}

/// `arm` over the large indexes alone, for when no build is fresh
/// ([`Db::any_fresh`]): a union costs two co-routines and a sort of
/// their results at each run, which a search running one statement per
/// job name (up to 555 on ci.guix) pays for every name.
pub(crate) fn large_arm(arm: &str, inner: &str) -> String {
    format!(
        "{} {inner}",
        arm.replace("{fresh}", "0").replace("{_fresh}", "")
    )
}

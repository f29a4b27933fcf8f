//! The API benchmarks' databases, generated once with plain SQL straight
//! into the 2018 tables and cached: 1,000,000 builds over 100 evaluations,
//! and the farm's shape, 10,000,000 builds over 130 evaluations of 75,000
//! jobs.  The original Cuirass's queries are timed beside ours on them.

use crate::common::*;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The shape of a generated database.
pub struct Shape {
    /// The cache directory's name: change it whenever the generated rows
    /// change, since the cached file is keyed by it.
    pub version: &'static str,
    pub evaluations: i64,
    pub jobs_per_evaluation: i64,
    pub systems: &'static [&'static str],
    /// The share (percent) of finished builds in the last evaluations,
    /// newest first; older ones are all finished.
    pub done_share: &'static [u64],
    /// How many jobs of the second-to-last evaluation are started.
    pub started: i64,
    /// Whether the original's queries are timed beside ours (minutes on
    /// ten million builds).
    pub compare: bool,
}

impl Shape {
    pub fn builds(&self) -> i64 {
        self.evaluations * self.jobs_per_evaluation
    }
}

/// The 1,000,000-build database of the earlier benchmarks (18,000 queued).
pub const ONE_MILLION: Shape = Shape {
    version: "api-v1",
    evaluations: 100,
    jobs_per_evaluation: 10_000,
    systems: &["x86_64-linux", "i686-linux", "aarch64-linux"],
    done_share: &[0, 40, 80],
    started: 2,
    compare: true,
};

/// ci.guix.gnu.org's shape: 130 evaluations of 15,000 packages for 5
/// systems, the last evaluation queued entirely and a third of the one
/// before (100,000 pending, 20 of them started).
pub const TEN_MILLION: Shape = Shape {
    version: "scale-v1",
    evaluations: 130,
    jobs_per_evaluation: 75_000,
    systems: &[
        "x86_64-linux",
        "i686-linux",
        "aarch64-linux",
        "armhf-linux",
        "powerpc64le-linux",
    ],
    done_share: &[0, 67],
    started: 20,
    compare: false,
};

const SPECS: [(&str, &str); 2] = [
    ("guix-master", "master"),
    ("guix-core-updates", "core-updates"),
];
/// One evaluation every six hours, ending in 2018.
const FIRST_EVALUATION: i64 = 1_500_000_000;
const EVALUATION_EVERY: i64 = 6 * 3600;

/// Columns named: the 2018 table and later schemas (which add columns
/// with defaults) take the same rows.
fn insert_specifications(conn: &Connection) -> rusqlite::Result<()> {
    for (name, branch) in SPECS {
        conn.execute(
            "INSERT OR IGNORE INTO Specifications (repo_name, url, load_path, file, proc,
               arguments, branch, tag, revision, no_compile_p)
               VALUES (?1, 'https://git.savannah.gnu.org/git/guix.git',
               '.', 'build-aux/cuirass/gnu-system.scm', 'cuirass-jobs',
               '((subset . \"all\"))', ?2, NULL, NULL, 1)",
            params![name, branch],
        )?;
    }
    Ok(())
}

/// Puts the specifications back into the database at `path` once the
/// daemon has started without them (see [`side_by_side`]): the pages
/// that list them read the table at each request, while the daemon,
/// which read it at start-up, stays idle.
pub fn restore_specifications(path: &Path) -> Result<(), String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    insert_specifications(&conn).map_err(|e| e.to_string())
}

/// splitmix64: reproducible without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A store hash: 32 characters of Nix's base-32 alphabet.
fn store_hash(rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    (0..32)
        .map(|_| ALPHABET[rng.below(32) as usize] as char)
        .collect()
}

/// The status of a build of evaluation `eval`: older evaluations are
/// done (mostly succeeded, Hydra-like failure rates); the last ones are
/// still being built (`Shape::done_share`).
fn build_status(shape: &Shape, rng: &mut Rng, eval: i64, job: i64) -> i64 {
    let age = (shape.evaluations - eval) as usize;
    let done_share = shape.done_share.get(age).copied().unwrap_or(100);
    if rng.below(100) >= done_share {
        return if eval == shape.evaluations - 1 && job < shape.started {
            -1
        } else {
            -2
        };
    }
    match rng.below(100) {
        0..88 => 0,
        88..93 => 1,
        93..97 => 2,
        97 => 3,
        _ => 4,
    }
}

fn outputs_of(package: i64) -> &'static [&'static str] {
    match package % 13 {
        0 => &["out", "doc"],
        1 => &["out", "debug"],
        2 => &["out", "lib", "static"],
        _ => &["out"],
    }
}

/// Writes `shape`'s rows into the 2018 tables of a new file at `path`.
fn generate_original(shape: &Shape, path: &Path) -> Result<(), String> {
    let e = |e: rusqlite::Error| format!("generating {}: {e}", path.display());
    let mut conn = Connection::open(path).map_err(e)?;
    // Derivations' primary key is inserted in random order (store hashes):
    // a page cache of 3 GiB keeps that index in memory while it grows.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -3000000;",
    )
    .map_err(e)?;
    // The 2018 tables without an index: letting `Db::open` index them
    // afterwards is much faster than keeping indexes up to date row by row.
    conn.execute_batch(cuirass::db::ORIGINAL_TABLES)
        .map_err(e)?;
    let tx = conn.transaction().map_err(e)?;
    let mut rng = Rng(42);
    insert_specifications(&tx).map_err(e)?;
    // Each job's derivation changes in about a fifth of the evaluations,
    // as packages are updated; the rest is the same derivation again.
    let mut drvs: Vec<String> = (0..shape.jobs_per_evaluation)
        .map(|_| store_hash(&mut rng))
        .collect();
    {
        let mut eval_stmt = tx
            .prepare("INSERT INTO Evaluations (id, specification, revision) VALUES (?1, ?2, ?3)")
            .map_err(e)?;
        let mut drv_stmt = tx
            .prepare("INSERT INTO Derivations VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(e)?;
        let mut build_stmt = tx
            .prepare(
                "INSERT INTO Builds (id, derivation, evaluation, log, status, timestamp, starttime, stoptime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(e)?;
        let mut out_stmt = tx
            .prepare("INSERT INTO Outputs VALUES (?1, ?2, ?3)")
            .map_err(e)?;
        let mut id = 0i64;
        let systems = shape.systems.len() as i64;
        for eval in 1..=shape.evaluations {
            let spec = SPECS[(eval % 4 == 0) as usize].0;
            let revision: String = (0..40)
                .map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap())
                .collect();
            eval_stmt
                .execute(params![eval, spec, revision])
                .map_err(e)?;
            if eval % 10 == 0 {
                eprintln!("  … evaluation {eval} of {}", shape.evaluations);
            }
            let created = FIRST_EVALUATION + eval * EVALUATION_EVERY;
            for job in 0..shape.jobs_per_evaluation {
                id += 1;
                let package = job / systems;
                let system = shape.systems[(job % systems) as usize];
                if rng.below(5) == 0 {
                    drvs[job as usize] = store_hash(&mut rng);
                }
                let version = format!("{}.{}", 1 + package % 9, eval / 7);
                let pkg = format!("package-{package}");
                let nix_name = format!("{pkg}-{version}");
                let hash = &drvs[job as usize];
                let derivation = format!("/gnu/store/{hash}-{nix_name}.drv");
                drv_stmt
                    .execute(params![
                        derivation,
                        eval,
                        format!("{pkg}.{system}"),
                        system,
                        nix_name
                    ])
                    .map_err(e)?;
                let status = build_status(shape, &mut rng, eval, job);
                let timestamp = created + rng.below(600) as i64;
                let (log, start, stop) = match status {
                    -2 => (String::new(), 0, 0),
                    -1 => (String::new(), timestamp + 3600, 0),
                    4 => (String::new(), 0, timestamp + rng.below(4 * 3600) as i64),
                    _ => {
                        let start = timestamp + rng.below(4 * 3600) as i64;
                        // Most builds take seconds to minutes, a few hours.
                        let scale = 1 << rng.below(14);
                        let took = 5 + rng.below(scale) as i64;
                        let log = format!(
                            "/var/log/guix/drvs/{}/{}-{nix_name}.drv.bz2",
                            &hash[..2],
                            &hash[2..]
                        );
                        (log, start, start + took)
                    }
                };
                build_stmt
                    .execute(params![
                        id, derivation, eval, log, status, timestamp, start, stop
                    ])
                    .map_err(e)?;
                let out_hash = store_hash(&mut rng);
                for name in outputs_of(package) {
                    let path = match *name {
                        "out" => format!("/gnu/store/{out_hash}-{nix_name}"),
                        n => format!("/gnu/store/{out_hash}-{nix_name}-{n}"),
                    };
                    out_stmt.execute(params![id, name, path]).map_err(e)?;
                }
            }
            if eval == shape.evaluations {
                tx.execute(
                    "INSERT INTO Stamps VALUES (?1, ?2)",
                    params![spec, revision],
                )
                .map_err(e)?;
            }
        }
    }
    tx.commit().map_err(e)?;
    Ok(())
}

/// Migrates the 2018 database at `path` as cuirass itself opens it (every
/// migration, its indexes, WAL), then gathers the planner's statistics.
/// Returns the seconds `Db::open` took: the upgrade in place.
///
/// Then computes the weathers of its finished builds as the daemon's
/// loop would in the background after such an upgrade
/// (`db::backfill`), so that runs measure the database as it is once
/// that is done; returns the seconds that took too.
fn migrate(path: &Path) -> Result<(f64, f64), String> {
    let e = |e: rusqlite::Error| format!("migrating {}: {e}", path.display());
    let start = Instant::now();
    let mut db = cuirass::db::Db::open(path).map_err(|e| e.to_string())?;
    let upgrade = secs(start.elapsed());
    let start = Instant::now();
    while db.backfill_weathers(10_000).map_err(|e| e.to_string())? > 0 {}
    let backfill = secs(start.elapsed());
    db.connection()
        .execute_batch("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")
        .map_err(e)?;
    Ok((upgrade, backfill))
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", from.display()));
    }
    std::fs::rename(from, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// The cache directory of `shape`.
pub fn cache_dir(shape: &Shape) -> PathBuf {
    PathBuf::from("/var/tmp/cuirass-bench").join(shape.version)
}

/// The cached 2018 database of `shape` (`original.db`), generated on
/// first use.
pub fn original(shape: &Shape) -> Result<PathBuf, String> {
    let dir = cache_dir(shape);
    let path = dir.join("original.db");
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!("original.db.{}", std::process::id()));
    eprintln!(
        "  generating {} builds into {}…",
        shape.builds(),
        path.display()
    );
    let start = Instant::now();
    let made = generate_original(shape, &tmp);
    if made.is_err() {
        remove_db(&tmp);
    }
    made?;
    rename(&tmp, &path)?;
    eprintln!("  generated in {:.0} s", start.elapsed().as_secs_f64());
    Ok(path)
}

/// The name of this schema's files in the cache: branches that each
/// append a migration share the cache directory, and the schema
/// version alone would mix their databases up.
fn schema_key() -> String {
    format!("{:016x}", cuirass::db::schema_fingerprint())
}

/// The cached database of `shape` migrated to this schema and analyzed
/// (`builds-SCHEMA.db`), made on first use from a copy of [`original`];
/// the time its upgrade took is kept beside it (`upgrade-SCHEMA.s`).
pub fn template(shape: &Shape) -> Result<PathBuf, String> {
    let dir = cache_dir(shape);
    let path = dir.join(format!("builds-{}.db", schema_key()));
    if path.exists() {
        return Ok(path);
    }
    let original = original(shape)?;
    let tmp = dir.join(format!("builds.db.{}", std::process::id()));
    let start = Instant::now();
    let made = (|| {
        std::fs::copy(&original, &tmp)
            .map_err(|e| format!("copying {}: {e}", original.display()))?;
        eprintln!("  migrating {}…", tmp.display());
        migrate(&tmp)
    })();
    match made {
        Ok((upgrade, backfill)) => {
            let note = dir.join(format!("upgrade-{}.s", schema_key()));
            std::fs::write(&note, format!("{upgrade:.1} {backfill:.1}\n"))
                .map_err(|e| format!("{}: {e}", note.display()))?;
        }
        Err(e) => {
            remove_db(&tmp);
            return Err(e);
        }
    }
    rename(&tmp, &path)?;
    eprintln!("  made in {:.0} s", start.elapsed().as_secs_f64());
    Ok(path)
}

/// The upgrade in place of `shape`'s 2018 database, timed when its
/// cache was made, and the weathers computed after it.
pub fn upgrade_figures(shape: &Shape) -> Result<Vec<Figure>, String> {
    let note = cache_dir(shape).join(format!("upgrade-{}.s", schema_key()));
    let text = std::fs::read_to_string(&note).map_err(|e| format!("{}: {e}", note.display()))?;
    let secs: Vec<f64> = text
        .split_whitespace()
        .map(|t| {
            t.parse()
                .map_err(|_| format!("{}: not a number", note.display()))
        })
        .collect::<Result<_, _>>()?;
    let [upgrade, backfill] = secs[..] else {
        return Err(format!("{}: two numbers expected", note.display()));
    };
    Ok(vec![
        Figure::new(
            &format!(
                "upgrade in place of the 2018 database of {} builds (every migration, Db::open)",
                shape.builds()
            ),
            upgrade,
            "s",
            None,
        ),
        Figure::new(
            "then the weathers of its finished builds, computed in the background (in-process here, 10,000 ids a call)",
            backfill,
            "s",
            None,
        ),
    ])
}

/// The original's `db-build-request`: one statement compiled per call,
/// and then one more per build for its outputs (`db-get-outputs`).
const ORIGINAL_BUILDS: &str = "SELECT Builds.id, Builds.timestamp, Builds.starttime,
  Builds.stoptime, Builds.log, Builds.status, Builds.derivation, Derivations.job_name,
  Derivations.system, Derivations.nix_name, Specifications.repo_name, Specifications.branch
FROM Builds
INNER JOIN Derivations ON Builds.derivation = Derivations.derivation
  AND Builds.evaluation = Derivations.evaluation
INNER JOIN Evaluations ON Derivations.evaluation = Evaluations.id
INNER JOIN Specifications ON Evaluations.specification = Specifications.repo_name";

fn original_query(conn: &Connection, clauses: &str) -> rusqlite::Result<usize> {
    let sql = format!("{ORIGINAL_BUILDS} {clauses}");
    let mut stmt = conn.prepare(&sql)?;
    let ids: Vec<i64> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut outputs = 0;
    for id in &ids {
        let mut o = conn.prepare("SELECT name, path FROM Outputs WHERE build = ?1")?;
        outputs += o
            .query_map([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .count();
    }
    Ok(ids.len() + outputs)
}

const LATEST_ORIGINAL: &str = "WHERE Builds.status >= 0 ORDER BY Builds.stoptime DESC LIMIT 100";
const QUEUE_ORIGINAL: &str =
    "WHERE Builds.status < 0 ORDER BY Builds.status DESC, Builds.timestamp DESC LIMIT 100";
const MIGRATION_3_INDEXES: [&str; 3] = ["Builds_finished", "Builds_queue", "Derivations_job_name"];

/// Median seconds of `f` over `runs` calls.
fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T, String>) -> Result<f64, String> {
    let mut xs = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        xs.push(secs(t.elapsed()));
    }
    Ok(median(xs))
}

/// Our queries beside the original's, on `path` (the per-run copy,
/// before the daemon opens it): ours, then the original's with every
/// index, then the original's without migration 3's indexes, dropped
/// inside a transaction that is rolled back.  (Ours names those indexes,
/// so it cannot run without them.)
pub fn side_by_side(path: &Path) -> Result<Vec<Figure>, String> {
    let db = cuirass::db::Db::open(path).map_err(|e| e.to_string())?;
    let figures = compare(&db)?;
    keep_idle(&db)?;
    Ok(figures)
}

/// Only makes the daemon idle (see [`side_by_side`]): on ten million
/// builds the original's queries take minutes.
pub fn without_comparison(path: &Path) -> Result<Vec<Figure>, String> {
    let db = cuirass::db::Db::open(path).map_err(|e| e.to_string())?;
    keep_idle(&db)?;
    Ok(Vec::new())
}

fn compare(db: &cuirass::db::Db) -> Result<Vec<Figure>, String> {
    let s = |e: rusqlite::Error| e.to_string();
    let d = |e: cuirass::db::Error| e.to_string();
    let filter = cuirass::db::read::BuildFilter::default();
    let ours_latest = time(50, || db.latest_builds(&filter, 100).map_err(d))?;
    let ours_queue = time(50, || {
        db.queued_builds(&Default::default(), 100, None, Default::default())
            .map_err(d)
    })?;
    let conn = db.connection();
    // The original joins a build to its derivation row by the 2018 key
    // (derivation, evaluation), which migration 25 dropped (ours joins
    // by rowid): made again for it, in a transaction rolled back.
    conn.execute_batch(
        "BEGIN; CREATE INDEX Derivations_2018_key ON Derivations (derivation, evaluation);",
    )
    .map_err(s)?;
    let measured = (|| -> Result<_, String> {
        let orig = (
            time(10, || original_query(conn, LATEST_ORIGINAL).map_err(s))?,
            time(10, || original_query(conn, QUEUE_ORIGINAL).map_err(s))?,
        );
        for index in MIGRATION_3_INDEXES {
            conn.execute_batch(&format!("DROP INDEX {index}"))
                .map_err(s)?;
        }
        let bare = (
            time(3, || original_query(conn, LATEST_ORIGINAL).map_err(s))?,
            time(3, || original_query(conn, QUEUE_ORIGINAL).map_err(s))?,
        );
        Ok((orig, bare))
    })();
    conn.execute_batch("ROLLBACK").map_err(s)?;
    let ((orig_latest, orig_queue), (bare_latest, bare_queue)) = measured?;
    let ms = |x: f64| format!("{:.2} ms", x * 1e3);
    let figure = |name: &str, ours: f64, orig: f64, bare: f64| {
        Figure::new(name, orig / ours, "×", None).note(format!(
            "in-process medians: ours {}; the original's SQL, compiled per call, and a \
             statement per build for its outputs: {} with our indexes and the 2018 key, {} ({:.0}× ours) \
             without migration 3's",
            ms(ours),
            ms(orig),
            ms(bare),
            bare / ours
        ))
    };
    Ok(vec![
        figure(
            "latestbuilds nr=100 SQL: original approach / ours",
            ours_latest,
            orig_latest,
            bare_latest,
        ),
        figure(
            "queue nr=100 SQL: original approach / ours",
            ours_queue,
            orig_queue,
            bare_queue,
        ),
    ])
}

/// Keeps the daemon idle: with no specification it neither fetches nor
/// cancels the generated pending builds (their .drv files do not
/// exist).  Builds keep their project; `jobset` becomes null.
fn keep_idle(db: &cuirass::db::Db) -> Result<(), String> {
    db.connection()
        .execute_batch(
            "PRAGMA foreign_keys = OFF; DELETE FROM Stamps; DELETE FROM Specifications;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

//! Registration at ci.guix's scale: one evaluation of 75,000 jobs added
//! to the 10,000,000-build database the way the daemon adds them (a
//! chunk per read of the evaluator's output, then the evaluation closed
//! and the builds it supersedes canceled), in a child process so that
//! its peak memory is its own.

use crate::api_db::{self, TEN_MILLION};
use crate::common::*;
use cuirass::db::fresh::MERGE_PAGE;
use cuirass::db::search::NAME_INDEX_PAGE;
use cuirass::db::supersede::SUPERSEDE_PAGE;
use cuirass::db::{Db, JobRecord};
use std::process::Command;
use std::time::Instant;

/// The child's mode, set in its environment by [`run`].
pub const CHILD_ENV: &str = "CUIRASS_BENCH_REGISTER";
/// How many input derivations each job lists, in the child's
/// environment (none when unset).
const INPUTS_ENV: &str = "CUIRASS_BENCH_INPUTS";
/// The file of the jobs to register, in the child's environment
/// ([`write_jobs`]).
const JOBS_ENV: &str = "CUIRASS_BENCH_JOBS";
/// Set (to anything) in the child's environment for a write-ahead log
/// that starts empty instead of at its working size ([`warm_log`]).
const COLD_LOG_ENV: &str = "CUIRASS_BENCH_COLD_LOG";
/// Pages [`warm_log`] writes: a fifth more than the largest the log
/// grows to in a registration (20 MB, some 4,900 frames, watched on the
/// 10M database), so that none of its frames extends the file.
const WARM_LOG_PAGES: usize = 6_000;
/// Input derivations a job lists in the second run: a `.drv`'s direct
/// inputs (its builder's tools and its package inputs) are tens for
/// most Guix packages; the 10M database's jobs have none.
const INPUTS: usize = 10;
/// Jobs per `add_jobs` call: what the loop registers in one turn
/// while the evaluator prints faster than it is read.
const CHUNK: usize = cuirass::job::REGISTER_BATCH;
const SPEC: &str = "guix-master";

/// Writes the next evaluation's jobs to `out`, a line each (`JOB_NAME
/// DERIVATION SYSTEM NIX_NAME`, tab-separated): the newest evaluation's
/// of the database at `db`, again, a fifth of them with a new
/// derivation (packages updated since), as the next commit would give.
/// Done before the child starts, so that the child, like the daemon,
/// reads its jobs from elsewhere than the database: read from it in the
/// child, they brought into its page cache the rows superseding reads.
fn write_jobs(db: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let sql = |e: rusqlite::Error| format!("reading the jobs of {}: {e}", db.display());
    let conn = rusqlite::Connection::open(db).map_err(sql)?;
    let mut stmt = conn
        .prepare(
            "SELECT job_name, derivation, system, nix_name FROM Derivations
             WHERE evaluation = (SELECT MAX(id) FROM Evaluations) ORDER BY rowid",
        )
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let mut rng = api_db::Rng(7);
    while let Some(row) = rows.next().map_err(sql)? {
        let get = |i| row.get::<_, String>(i).map_err(sql);
        let (job_name, mut derivation, system, nix_name) = (get(0)?, get(1)?, get(2)?, get(3)?);
        if rng.below(5) == 0 {
            // Another hash of the same length: /gnu/store/ is 11 bytes.
            let hash: String = (0..32)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            derivation.replace_range(11..43, &hash);
        }
        writeln!(file, "{job_name}\t{derivation}\t{system}\t{nix_name}")
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    file.flush().map_err(|e| format!("{}: {e}", out.display()))
}

/// The next `CHUNK` jobs of `lines` (of [`write_jobs`]), read as the
/// evaluator prints them, so that the process holds one chunk.  Each
/// job lists `inputs` input derivations: those of the jobs just before
/// it, as packages of one evaluation are one another's inputs.
fn read_jobs(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    inputs: usize,
) -> Result<Vec<JobRecord>, String> {
    let mut jobs = Vec::with_capacity(CHUNK);
    for line in lines.take(CHUNK) {
        let line = line.map_err(|e| format!("jobs file: {e}"))?;
        let mut fields = line.split('\t').map(str::to_string);
        let mut field = || {
            fields
                .next()
                .ok_or(format!("jobs file: short line {line:?}"))
        };
        let (job_name, derivation, system, nix_name) = (field()?, field()?, field()?, field()?);
        let out = format!("/gnu/store/{}-{nix_name}", &derivation[11..43]);
        jobs.push(JobRecord {
            job_name,
            derivation,
            system,
            nix_name,
            outputs: vec![("out".into(), out)],
            ..JobRecord::default()
        });
    }
    for i in 0..jobs.len() {
        let before = (1..=inputs.min(jobs.len() - 1)).map(|k| (i + jobs.len() - k) % jobs.len());
        jobs[i].inputs = before.map(|j| jobs[j].derivation.clone()).collect();
    }
    Ok(jobs)
}

/// Grows the write-ahead log to its working size and checkpoints it,
/// so that the next write starts it over: a running daemon's log keeps
/// the largest size earlier writes gave it (registrations, index
/// moves; there is no `journal_size_limit`), where a fresh copy of the
/// template has none.  A file's new blocks are zeroed by the kernel as
/// frames first reach them: 0.09 s of a registration's batches on
/// ext4, which only the first large write after the database is opened
/// pays (the figure of a run with [`COLD_LOG_ENV`]).  The pages are
/// those of a table made and dropped, left free in the file as
/// migrations leave gigabytes.
fn warm_log(db: &Db) -> Result<(), String> {
    let sql = |e: rusqlite::Error| format!("warming the log: {e}");
    db.connection()
        .execute_batch(&format!(
            "CREATE TABLE BenchLog (page BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {WARM_LOG_PAGES})
             INSERT INTO BenchLog SELECT zeroblob(4000) FROM n;
             DROP TABLE BenchLog;"
        ))
        .map_err(sql)?;
    // RESTART, not TRUNCATE: the file keeps its size.
    let (busy, log, done): (i64, i64, i64) = db
        .connection()
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(sql)?;
    if busy != 0 || log != done {
        return Err(format!(
            "warming the log: checkpoint copied {done} of {log} frames (busy {busy})"
        ));
    }
    Ok(())
}

/// The child: registers the evaluation into the database at `path`,
/// then indexes its new job names and moves its builds' index entries
/// to the large indexes as the loop would, and prints `SECONDS
/// REGISTER_SECONDS VMHWM_KIB JOBS CANCELED CPU_SECONDS INDEX_SECONDS
/// NAMES LONGEST_CHUNK_SECONDS CLOSE_SECONDS MERGE_SECONDS
/// LONGEST_MERGE_SECONDS SUPERSEDE_SECONDS LONGEST_SUPERSEDE_SECONDS
/// READ_SECONDS`; SECONDS covers the chunks, the closing and the
/// superseding pages, REGISTER_SECONDS the chunks, both without
/// READ_SECONDS, the time this process took to make the chunks' jobs
/// (reading them from the file of [`JOBS_ENV`], where the daemon
/// parses the evaluator's output in turns of its own).  The log has its working
/// size first ([`warm_log`]) unless [`COLD_LOG_ENV`] is set.
pub fn child(path: &str) -> Result<(), String> {
    let e = |e: cuirass::db::Error| e.to_string();
    let mut db = Db::open(std::path::Path::new(path)).map_err(e)?;
    // Checkpoints in a child, as the loop has them.
    let mut checkpointer =
        std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .arg(cuirass::db::checkpointer::SUBCOMMAND)
            .arg(path)
            .arg(std::process::id().to_string())
            .spawn()
            .map_err(|e| format!("checkpointer: {e}"))?;
    // The loop sets its checkpoint allowance at start and every second.
    db.fit_checkpoints_to_disk().map_err(e)?;
    if std::env::var_os(COLD_LOG_ENV).is_none() {
        warm_log(&db)?;
    }

    let inputs: usize = std::env::var(INPUTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let jobs_file = std::env::var_os(JOBS_ENV).ok_or(format!("{JOBS_ENV} is not set"))?;
    let jobs_file = std::fs::File::open(&jobs_file)
        .map_err(|e| format!("{}: {e}", std::path::Path::new(&jobs_file).display()))?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(jobs_file));
    let start = Instant::now();
    let cpu = proc_cpu(std::process::id()).unwrap_or(f64::NAN);
    let eval = db
        .begin_evaluation(SPEC, "next", 2_000_000_000)
        .map_err(e)?;
    // The loop keeps only the count: the dispatcher reads the queue from
    // the database a page at a time.
    let mut queued = 0;
    // The longest `add_jobs`: the longest loop turn registration makes.
    let mut longest = 0.0f64;
    let mut reading = 0.0f64;
    loop {
        let read = Instant::now();
        let chunk = read_jobs(&mut lines, inputs)?;
        reading += secs(read.elapsed());
        if chunk.is_empty() {
            break;
        }
        let added = Instant::now();
        queued += db
            .add_jobs(SPEC, eval, &chunk, 2_000_000_000)
            .map_err(e)?
            .len();
        longest = longest.max(secs(added.elapsed()));
    }
    let registered = secs(start.elapsed()) - reading;
    let closing = Instant::now();
    db.complete_evaluation(SPEC, eval, "next", 2_000_000_000)
        .map_err(e)?;
    let close = secs(closing.elapsed());
    // The builds it supersedes, canceled a page per loop turn.
    let superseding = Instant::now();
    let (mut canceled, mut longest_supersede) = (0, 0.0f64);
    loop {
        let page = Instant::now();
        let done = db
            .supersede(&Default::default(), 2_000_000_000, SUPERSEDE_PAGE)
            .map_err(e)?;
        longest_supersede = longest_supersede.max(secs(page.elapsed()));
        match done {
            Some(p) => canceled += p.canceled,
            None => break,
        }
    }
    let superseded = secs(superseding.elapsed());
    let total = secs(start.elapsed()) - reading;
    let cpu = proc_cpu(std::process::id()).unwrap_or(f64::NAN) - cpu;
    let indexing = Instant::now();
    let mut names = 0;
    loop {
        let n = db.index_job_names(NAME_INDEX_PAGE).map_err(e)?;
        names += n;
        if n < NAME_INDEX_PAGE {
            break;
        }
    }
    let indexed = secs(indexing.elapsed());
    let merging = Instant::now();
    let mut longest_merge = 0.0f64;
    loop {
        let page = Instant::now();
        let n = db.merge_fresh(MERGE_PAGE).map_err(e)?;
        longest_merge = longest_merge.max(secs(page.elapsed()));
        if n < MERGE_PAGE {
            break;
        }
    }
    let merged = secs(merging.elapsed());
    let _ = checkpointer.kill();
    let _ = checkpointer.wait();
    let hwm = proc_status_kib(std::process::id(), "VmHWM").unwrap_or(-1);
    println!(
        "{total} {registered} {hwm} {queued} {canceled} {cpu} {indexed} {names} {longest} \
         {close} {merged} {longest_merge} {superseded} {longest_supersede} {reading}"
    );
    Ok(())
}

/// Registers into a fresh copy of `template` in a child whose jobs list
/// `inputs` input derivations each, its log empty at first if `cold`;
/// the child's 15 figures.
fn register_once(
    template: &std::path::Path,
    inputs: usize,
    cold: bool,
) -> Result<Vec<f64>, String> {
    let tmp = TempDir::new("register-10m");
    let db = tmp.path().join("cuirass.db");
    std::fs::copy(template, &db).map_err(|e| format!("copying {}: {e}", template.display()))?;
    let jobs = tmp.path().join("jobs");
    write_jobs(&db, &jobs)?;
    // Written out before the clock starts: otherwise the first chunk or
    // checkpoint waits for the kernel to write back gigabytes of the copy
    // (a first chunk of 0.9 s, where the others take under 50 ms).
    std::fs::File::open(&db)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", db.display()))?;
    // Read once through: a page the copy wrote and nothing read since
    // costs some 36 µs at its first read on this VM, against 10 µs
    // once read (random 4 KiB `pread`s of the 10M copy), and a running
    // daemon's database has been read.  Superseding reads some 5,000
    // such pages: 0.40–0.52 s without this, 0.33–0.34 s with it.
    std::fs::File::open(&db)
        .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()))
        .map_err(|e| format!("reading {}: {e}", db.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe);
    child
        .env(CHILD_ENV, &db)
        .env(INPUTS_ENV, inputs.to_string())
        .env(JOBS_ENV, &jobs);
    if cold {
        child.env(COLD_LOG_ENV, "1");
    }
    let out = child.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    if !out.status.success() || f.len() != 15 {
        return Err(format!(
            "registration child failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(f)
}

pub fn run() -> Result<Vec<Figure>, String> {
    let template = api_db::template(&TEN_MILLION)?;
    let f = register_once(&template, 0, false)?;
    let cold = register_once(&template, 0, true)?;
    // Again with inputs: each is an `Inputs` row and an entry in
    // `Inputs_derivation_fresh`, which real jobs have and the 10M
    // database's do not.
    let g = register_once(&template, INPUTS, false)?;
    let note = format!(
        "the log at its working size; {} jobs in batches of {CHUNK} ({:.2} s; the benchmark's own \
         reading of each batch's jobs from a file apart: {:.2} s), the evaluation closed, then {} \
         superseded builds canceled ({:.2} s); {:.2} s CPU, the reading included; then its {} new job names \
         indexed for search in {:.2} s",
        f[3], f[1], f[14], f[4], f[12], f[5], f[7], f[6]
    );
    Ok(vec![
        Figure::new(
            "registration of a 75,000-job evaluation into the 10,000,000-build database",
            f[0],
            "s",
            Some(Target::AtMost(1.0)),
        )
        .note(note),
        Figure::new(
            &format!("— the longest batch of {CHUNK} jobs (one loop turn's registration)"),
            f[8] * 1e3,
            "ms",
            Some(Target::AtMost(200.0)),
        )
        .note("the loop warns of a turn over 200 ms; HTTP requests wait that long"),
        Figure::new(
            "— closing the evaluation (`complete_evaluation`): one loop turn",
            f[9] * 1e3,
            "ms",
            Some(Target::AtMost(200.0)),
        ),
        Figure::new(
            &format!(
                "— the longest turn canceling superseded builds ({SUPERSEDE_PAGE} looked at per turn)"
            ),
            f[13] * 1e3,
            "ms",
            Some(Target::AtMost(200.0)),
        ),
        Figure::new(
            &format!(
                "— then its builds' index entries moved to the large indexes, {MERGE_PAGE} builds per loop turn"
            ),
            f[10],
            "s",
            None,
        )
        .note(format!("longest turn {:.1} ms", f[11] * 1e3)),
        Figure::new(
            "— peak RSS (VmHWM) of the registering process",
            f[2] / 1024.0,
            "MiB",
            Some(Target::AtMost(32.0)),
        ),
        Figure::new(
            "— the same, the first large write since the database was opened (its log grows from empty)",
            cold[0],
            "s",
            None,
        )
        .note(format!(
            "batches {:.2} s, the longest {:.1} ms; superseding {:.2} s",
            cold[1],
            cold[8] * 1e3,
            cold[12]
        )),
        Figure::new(
            &format!("— the same with {INPUTS} input derivations a job"),
            g[0],
            "s",
            None,
        )
        .note(format!(
            "batches {:.2} s, the longest {:.1} ms; superseding {:.2} s; peak RSS {:.1} MiB",
            g[1],
            g[8] * 1e3,
            g[12],
            g[2] / 1024.0
        )),
    ])
}

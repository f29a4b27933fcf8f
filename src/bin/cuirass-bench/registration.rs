//! Registration: 50,000 evaluator lines turned into database rows, as the
//! event loop does it, and beside it the original's way of writing them;
//! then the memory of a whole one-shot run of 5,000 jobs.

use crate::common::*;
use cuirass::db::JobRecord;
use cuirass::db::search::NAME_INDEX_PAGE;
use cuirass::job::{self, Line};
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const ONE_SHOT_JOBS: usize = 5_000;
/// The original's per-row commits take minutes for 50,000 jobs; past this
/// much time the rest is extrapolated from the rows written so far.
const ORIGINAL_TIME_BOX: Duration = Duration::from_secs(20);

/// Parsing, `.drv` reading and record building: the per-line work the
/// event loop does while the evaluator runs.
fn records(lines: &[&str]) -> Result<Vec<JobRecord>, String> {
    let mut jobs = Vec::with_capacity(lines.len());
    for line in lines {
        match job::parse_line(line.as_bytes())? {
            Line::Job {
                name,
                derivation,
                limits,
                priority,
            } => {
                let bytes = std::fs::read(&derivation).map_err(|e| format!("{derivation}: {e}"))?;
                jobs.push(job::job_record(
                    &name,
                    &derivation,
                    limits,
                    priority,
                    &bytes,
                )?);
            }
            Line::JobError { .. } | Line::Done(_) => {}
        }
    }
    Ok(jobs)
}

pub fn run() -> Result<Vec<Figure>, String> {
    let path = cached_jobs()?;
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.lines().collect();
    let mut parse_times = Vec::new();
    let mut insert_times = Vec::new();
    let mut totals = Vec::new();
    let mut insert_cpu = Vec::new();
    let mut index_times = Vec::new();
    let mut index_page_max: f64 = 0.0;
    let mut jobs = Vec::new();
    let me = std::process::id();
    for _ in 0..RUNS {
        let tmp = TempDir::new("registration");
        let mut db = open_db(&tmp.path().join("cuirass.db"), "file:///nowhere")?;
        let start = Instant::now();
        jobs = records(&lines)?;
        let parsed = start.elapsed();
        let cpu = proc_cpu(me).unwrap_or(f64::NAN);
        db.register_evaluation(SPEC, "0123abcd", &jobs, 1)
            .map_err(|e| e.to_string())?;
        let total = start.elapsed();
        insert_cpu.push(proc_cpu(me).unwrap_or(f64::NAN) - cpu);
        parse_times.push(secs(parsed));
        insert_times.push(secs(total - parsed));
        totals.push(secs(total));
        // What the loop then does, a page per turn: the new names into
        // the search index.
        let indexing = Instant::now();
        loop {
            let page = Instant::now();
            let n = db
                .index_job_names(NAME_INDEX_PAGE)
                .map_err(|e| e.to_string())?;
            index_page_max = index_page_max.max(secs(page.elapsed()));
            if n < NAME_INDEX_PAGE {
                break;
            }
        }
        index_times.push(secs(indexing.elapsed()));
    }
    let total = median(totals);
    let (original, extrapolated) = original_inserts(&jobs)?;
    let insert = median(insert_times);
    let mut figures = vec![
        Figure::new(
            "registration of 50,000 jobs (parse + .drv + insert)",
            total,
            "s",
            Some(Target::AtMost(1.0)),
        )
        .note(format!(
            "median of {RUNS}; parse + read .drv {:.3} s, register_evaluation {insert:.3} s \
             ({:.2} s CPU); .drv files in the page cache",
            median(parse_times),
            median(insert_cpu)
        )),
        Figure::new(
            "— then the 50,000 new names into the search index, a page per loop turn",
            median(index_times),
            "s",
            None,
        )
        .note(format!(
            "{NAME_INDEX_PAGE} names a page, the longest page {:.0} ms",
            index_page_max * 1000.0
        )),
        Figure::new(
            "original approach: one auto-committed INSERT per row, same rows",
            original,
            "s",
            None,
        )
        .note(format!(
            "{:.0}x register_evaluation's time{}",
            original / insert,
            if extrapolated {
                format!(
                    " (extrapolated from the rows written in {} s)",
                    ORIGINAL_TIME_BOX.as_secs()
                )
            } else {
                String::new()
            }
        )),
    ];
    figures.push(one_shot_rss(&text)?);
    Ok(figures)
}

/// The rows of [`Db::register_evaluation`] written as Cuirass 2018 wrote
/// them: its default connection (rollback journal, synchronous FULL), a
/// statement compiled per row, and a commit per row.  Returns seconds for
/// all of them, and whether that figure is extrapolated.
fn original_inserts(jobs: &[JobRecord]) -> Result<(f64, bool), String> {
    let tmp = TempDir::new("original");
    let conn =
        rusqlite::Connection::open(tmp.path().join("cuirass.db")).map_err(|e| e.to_string())?;
    let sql = |e: rusqlite::Error| e.to_string();
    conn.execute_batch(include_str!("../../../fixtures/schema-2018.sql"))
        .map_err(sql)?;
    conn.execute(
        "INSERT INTO Specifications (repo_name, url, load_path, file, proc, arguments)
         VALUES ('bench', 'file:///nowhere', '.', 'jobs.scm', 'jobs', '()')",
        [],
    )
    .map_err(sql)?;
    conn.execute(
        "INSERT INTO Evaluations (specification, revision) VALUES ('bench', '0123abcd')",
        [],
    )
    .map_err(sql)?;
    let eval = conn.last_insert_rowid();
    let rows_total: usize = jobs.iter().map(|j| 2 + j.outputs.len()).sum();
    let mut rows = 0;
    let start = Instant::now();
    for job in jobs {
        conn.execute(
            "INSERT INTO Derivations (derivation, evaluation, job_name, system, nix_name)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![job.derivation, eval, job.job_name, job.system, job.nix_name],
        )
        .map_err(sql)?;
        conn.execute(
            "INSERT INTO Builds (derivation, evaluation, log, status, timestamp, starttime, stoptime)
             VALUES (?1, ?2, '', -2, 1, 0, 0)",
            rusqlite::params![job.derivation, eval],
        )
        .map_err(sql)?;
        let build = conn.last_insert_rowid();
        for (name, path) in &job.outputs {
            conn.execute(
                "INSERT INTO Outputs (build, name, path) VALUES (?1, ?2, ?3)",
                rusqlite::params![build, name, path],
            )
            .map_err(sql)?;
        }
        rows += 2 + job.outputs.len();
        if start.elapsed() > ORIGINAL_TIME_BOX {
            let per_row = secs(start.elapsed()) / rows as f64;
            return Ok((per_row * rows_total as f64, rows < rows_total));
        }
    }
    Ok((secs(start.elapsed()), false))
}

/// Peak memory of a real `cuirass --one-shot` over 5,000 jobs whose
/// outputs are already valid, so the daemon answers at once and the run
/// is cuirass's own reading, registering and batching.
fn one_shot_rss(all_jobs: &str) -> Result<Figure, String> {
    let cuirass = cuirass_binary()?;
    let tmp = TempDir::new("rss-jobs");
    let jobs_file = tmp.path().join("jobs.out");
    std::fs::write(&jobs_file, first_jobs(all_jobs, ONE_SHOT_JOBS)).map_err(|e| e.to_string())?;
    let setup = OneShotSetup::new("rss", &jobs_file)?;
    let log =
        std::fs::File::create(setup.tmp.path().join("cuirass.log")).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = setup
        .command(&cuirass)
        .arg("--one-shot")
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    // VmHWM is the process's own peak; ru_maxrss would also cover the
    // fetch child and the stand-in evaluator.
    let pid = child.id();
    let mut hwm = 0;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if let Some(k) = proc_status_kib(pid, "VmHWM:") {
            hwm = hwm.max(k);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let status = child.wait().map_err(|e| e.to_string())?;
    let conn = rusqlite::Connection::open(&setup.db).map_err(|e| e.to_string())?;
    let succeeded: i64 = conn
        .query_row("SELECT COUNT(*) FROM Builds WHERE status = 0", [], |r| {
            r.get(0)
        })
        .map_err(|e| e.to_string())?;
    if !status.success() || succeeded != ONE_SHOT_JOBS as i64 {
        let log = std::fs::read_to_string(setup.tmp.path().join("cuirass.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        return Err(format!(
            "one-shot run: {status}, {succeeded} builds succeeded; log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(Figure::new(
        "peak RSS of cuirass --one-shot, 5,000 jobs",
        hwm as f64 / 1024.0,
        "MiB",
        Some(Target::AtMost(32.0)),
    )
    .note(format!(
        "VmHWM sampled every 5 ms; outputs built beforehand; run took {:.1} s",
        secs(elapsed)
    )))
}

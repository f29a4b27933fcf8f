//! Streaming: registration overlaps evaluation.  A stand-in evaluator
//! prints one job, pauses, then prints the rest; the figure is the time
//! from that first job being printed to its build being submitted to the
//! daemon, while the evaluator is still running.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RUNS: usize = 5;
const JOBS: usize = 200;
/// How long the stand-in pauses after the first job.
const PAUSE_SECS: u64 = 2;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One run: milliseconds from the first job printed to its submission.
fn first_job_to_submission(all_jobs: &str, cuirass: &std::path::Path) -> Result<f64, String> {
    let tmp = TempDir::new("stream-jobs");
    let jobs_file = tmp.path().join("jobs.out");
    // Outputs built beforehand: the daemon answers at once, so the run
    // stays short; submission is what is timed, not the build.
    std::fs::write(&jobs_file, first_jobs(all_jobs, JOBS)).map_err(|e| e.to_string())?;
    let setup = OneShotSetup::new("stream", &jobs_file)?;
    let stamp = setup.tmp.path().join("first-job-printed");
    let script = setup.tmp.path().join("evaluator.sh");
    std::fs::write(
        &script,
        format!(
            "date +%s%N > '{stamp}'\nhead -n 1 '{jobs}'\nsleep {PAUSE_SECS}\ntail -n +2 '{jobs}'\n",
            stamp = stamp.display(),
            jobs = jobs_file.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut child = setup
        .command(cuirass)
        .arg("--one-shot")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut submitted_at = None;
    let mut evaluation_done_at = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if submitted_at.is_none() && line.contains(" submitted in slot ") {
            submitted_at = Some(now_ns());
        }
        if evaluation_done_at.is_none() && line.contains(" done: ") {
            evaluation_done_at = Some(now_ns());
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("one-shot run failed: {status}"));
    }
    let printed: u128 = std::fs::read_to_string(&stamp)
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("stamp: {e}"))?;
    let submitted = submitted_at.ok_or("the first job was never submitted on its own")?;
    let done = evaluation_done_at.ok_or("the evaluation never finished")?;
    if submitted >= done {
        return Err("the first build was submitted after the evaluation ended".into());
    }
    Ok((submitted.saturating_sub(printed)) as f64 / 1e6)
}

pub fn run() -> Result<Vec<Figure>, String> {
    let cuirass = cuirass_binary()?;
    let all = std::fs::read_to_string(cached_jobs()?).map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for _ in 0..RUNS {
        times.push(first_job_to_submission(&all, &cuirass)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(vec![
        Figure::new(
            "streaming: first job printed → its build submitted",
            median(times),
            "ms",
            None,
        )
        .note(format!(
            "median of {RUNS}; the evaluator pauses {PAUSE_SECS} s after the first of {JOBS} jobs, and the build is submitted before it ends"
        )),
    ])
}

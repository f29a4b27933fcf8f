//! Restart: how long `cuirass` takes to be ready again over a database
//! with 100,000 (or 1,000,000) pending builds whose derivations exist.

use crate::common::*;
use cuirass::db::{Db, JobRecord, status};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RUNS: usize = 3;
/// Evaluations of the 50,000 cached jobs, every build pending: 100,000
/// builds, or 1,000,000 for `restart-1m`.
const EVALUATIONS: usize = 2;
const EVALUATIONS_1M: usize = 20;
/// Builds a previous process left `started`, which recovery reschedules.
const INTERRUPTED: usize = 200;
const GIVE_UP: Duration = Duration::from_secs(60);

/// What "ready" means: the first answer to `/api/queue?nr=1`, as a
/// client would see it.  `CUIRASS_BENCH_READY=log` selects the measure
/// used before cuirass served HTTP, the first log line of start-up
/// recovery or of a state transition, for comparison with old figures.
#[derive(Clone, Copy)]
enum Ready {
    LogLine,
    Http,
}

impl Ready {
    fn from_env() -> Ready {
        match std::env::var("CUIRASS_BENCH_READY").as_deref() {
            Ok("log") => Ready::LogLine,
            _ => Ready::Http,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Ready::LogLine => "first recovery or state-transition log line",
            Ready::Http => "first answer to /api/queue?nr=1",
        }
    }
}

fn is_ready_line(line: &str) -> bool {
    line.contains("recovery:") || line.contains("=>")
}

fn http_answers(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = "GET /api/queue?nr=1 HTTP/1.0\r\nHost: localhost\r\n\r\n";
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.")
        && answer.contains(" 200 ")
}

/// A database as a previous cuirass would leave it: the 50,000 jobs in
/// each of two evaluations, every build pending, a few interrupted, and
/// the stamp at the repository's commit so that no evaluation is due.
fn make_template(
    path: &Path,
    jobs: &[JobRecord],
    commit: &str,
    evaluations: usize,
) -> Result<(), String> {
    // OneShotSetup has added the specification.
    let mut db = Db::open(path).map_err(|e| e.to_string())?;
    let e = |e: cuirass::db::Error| e.to_string();
    for _ in 0..evaluations {
        db.register_evaluation(SPEC, commit, jobs, 1).map_err(e)?;
    }
    db.connection()
        .execute(
            "UPDATE Builds SET status = ?1, starttime = 1 WHERE id <= ?2",
            rusqlite::params![status::STARTED, INTERRUPTED as i64],
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub fn run() -> Result<Vec<Figure>, String> {
    run_with(EVALUATIONS)
}

pub fn run_1m() -> Result<Vec<Figure>, String> {
    run_with(EVALUATIONS_1M)
}

fn run_with(evaluations: usize) -> Result<Vec<Figure>, String> {
    let cuirass = cuirass_binary()?;
    let text = std::fs::read_to_string(cached_jobs()?).map_err(|e| e.to_string())?;
    let mut jobs = Vec::new();
    for line in text.lines() {
        if let cuirass::job::Line::Job {
            name,
            derivation,
            limits,
            priority,
        } = cuirass::job::parse_line(line.as_bytes())?
        {
            let bytes = std::fs::read(&derivation).map_err(|e| e.to_string())?;
            jobs.push(cuirass::job::job_record(
                &name,
                &derivation,
                limits,
                priority,
                &bytes,
            )?);
        }
    }
    // The evaluator is never run: the stamp says the commit is done.
    let setup = OneShotSetup::new("restart", Path::new("/dev/null"))?;
    make_template(&setup.db, &jobs, &setup.commit, evaluations)?;
    let template = setup.tmp.path().join("template.db");
    std::fs::copy(&setup.db, &template).map_err(|e| e.to_string())?;
    let ready = Ready::from_env();
    let mut to_ready = Vec::new();
    let mut to_queue = Vec::new();
    for _ in 0..RUNS {
        std::fs::copy(&template, &setup.db).map_err(|e| e.to_string())?;
        let (r, q) = one_start(&cuirass, &setup, ready)?;
        to_ready.push(r);
        to_queue.push(q);
    }
    Ok(vec![
        Figure::new(
            &format!(
                "restart with {} pending builds: time to ready",
                evaluations * jobs.len()
            ),
            median(to_ready),
            "s",
            Some(Target::AtMost(3.0)),
        )
        .note(format!(
            "median of {RUNS}; ready = {}; the queue of pending builds was loaded after {:.2} s",
            ready.describe(),
            median(to_queue)
        )),
    ])
}

/// Starts the daemon once; returns seconds to ready and to the log line
/// saying how many builds are pending (the queue loaded from the database).
fn one_start(cuirass: &Path, setup: &OneShotSetup, ready: Ready) -> Result<(f64, f64), String> {
    let mut cmd = setup.command(cuirass);
    cmd.args(["--interval", "86400"]).stderr(Stdio::piped());
    // A port free now, so that runs beside other daemons do not collide.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    cmd.args(["--listen", "127.0.0.1", "--port", &port.to_string()]);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut ready_at = None;
    let mut queue_at = None;
    let mut log = Vec::new();
    // The queue's log line is waited for a few seconds past readiness at
    // most: the loop that loads the queue a page at a time may not print it.
    let mut deadline = GIVE_UP;
    while (ready_at.is_none() || queue_at.is_none()) && start.elapsed() < deadline {
        if let Some(r) = ready_at {
            deadline = deadline.min(r - start + Duration::from_secs(3));
        }
        if matches!(ready, Ready::Http) && ready_at.is_none() && http_answers(port) {
            ready_at = Some(Instant::now());
        }
        match rx.recv_timeout(Duration::from_millis(2)) {
            Ok((at, line)) => {
                if matches!(ready, Ready::LogLine) && ready_at.is_none() && is_ready_line(&line) {
                    ready_at = Some(at);
                }
                // The count of builds loaded from the database, as the
                // loop has worded it over time.
                if queue_at.is_none()
                    && (line.contains("build(s) pending") || line.contains("build(s) to submit"))
                {
                    queue_at = Some(at);
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    terminate(&mut child);
    let _ = reader.join();
    match (ready_at, queue_at) {
        (Some(r), q) => Ok((secs(r - start), q.map_or(f64::NAN, |q| secs(q - start)))),
        _ => Err(format!(
            "cuirass was not ready within {} s; its log:\n{}",
            GIVE_UP.as_secs(),
            log.join("\n")
        )),
    }
}

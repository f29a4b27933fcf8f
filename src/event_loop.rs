//! The single-threaded mio loop: the only driver of work.  It owns the
//! children (fetch, compile, evaluator), the daemon connections and the
//! signal pipe, moves their bytes to the layers above, and advances each
//! specification's [`State`] when something finishes.

use crate::build::{self, Batch, Item, Update};
use crate::child::{self, Proc};
use crate::cli::Config;
use crate::db::{self, Db, JobRecord, status};
use crate::drv::Derivation;
use crate::fetch;
use crate::http_server::HttpServer;
use crate::job;
use crate::logging::{self, shown};
use crate::scheduler::{Backoff, SpecRun, State};
use crate::signals::SignalPipe;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

mod building;
mod steps;

const SIGNAL: Token = Token(0);
const HTTP_LISTENER: Token = Token(1);
/// HTTP connections take tokens from here up, far above the specs'.
const HTTP_CONN_BASE: usize = 1 << 20;
const SPEC_TOKEN_BASE: usize = 16;
const TOKENS_PER_SPEC: usize = 4;
const CHILD_STDOUT: usize = 0;
const CHILD_STDERR: usize = 1;
const DAEMON: usize = 2;

/// A loop turn longer than this is logged: something blocked.
const SLOW_TURN: Duration = Duration::from_millis(200);
/// The loop wakes at least this often to look for exited children.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// In one-shot mode, give up on an unreachable daemon after this many tries.
const ONE_SHOT_DAEMON_TRIES: u32 = 5;

fn spec_token(index: usize, which: usize) -> Token {
    Token(SPEC_TOKEN_BASE + index * TOKENS_PER_SPEC + which)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fetch,
    Compile,
    Evaluate,
}

impl Step {
    /// The log target of the step's lines and of its child's.
    fn target(self) -> &'static str {
        match self {
            Step::Fetch => logging::FETCH,
            Step::Compile => logging::COMPILE,
            Step::Evaluate => logging::EVALUATION,
        }
    }
}

/// A daemon connection carrying one batch.
struct Conn {
    stream: UnixStream,
    batch: Batch,
    wants_write: bool,
}

/// The transient work of one specification, beside its [`SpecRun`].
#[derive(Default)]
struct Work {
    proc: Option<(Step, Proc, Instant)>,
    fetch_stdout: String,
    commit: Option<String>,
    /// Jobs read since the last flush to the database.
    jobs: Vec<JobRecord>,
    /// The evaluation being registered, while the evaluator runs.
    evaluation: Option<db::EvalId>,
    jobs_registered: usize,
    /// The evaluator's output so far, checked as a whole.
    tally: job::Tally,
    eval_error: Option<String>,
    /// The failure was ours (the database refused the jobs), not the
    /// commit's: the evaluation is rolled back, not recorded as failed.
    eval_retry: bool,
    conn: Option<Conn>,
    queue: VecDeque<db::PendingBuild>,
    /// Derivations already handed to the daemon this cycle: builds of the
    /// same derivation in several evaluations are settled together.
    submitted: std::collections::HashSet<String>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

pub struct EventLoop {
    config: Config,
    db: Db,
    poll: Poll,
    signals: SignalPipe,
    specs: Vec<SpecRun>,
    work: Vec<Work>,
    evaluator_script: PathBuf,
    stopping: bool,
    exit_error: Option<String>,
    next_status_log: Instant,
    http: Option<HttpServer>,
}

/// Ends cuirass with an error message (one-shot) or is logged (daemon).
pub type Fatal = String;

impl EventLoop {
    pub fn new(config: Config, db: Db) -> Result<EventLoop, Fatal> {
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let signals = SignalPipe::install(poll.registry(), SIGNAL)
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let evaluator_script = write_evaluator_script(&config)?;
        let now = Instant::now();
        let specs: Vec<SpecRun> = db
            .specifications()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| usable_name(&s.name))
            .map(|s| SpecRun::new(s, now))
            .collect();
        let work = specs.iter().map(|_| Work::default()).collect();
        let http = match config.one_shot {
            true => None,
            false => Some(HttpServer::bind(
                &config.listen,
                config.port,
                poll.registry(),
                HTTP_LISTENER,
                HTTP_CONN_BASE,
            )?),
        };
        Ok(EventLoop {
            config,
            db,
            poll,
            signals,
            specs,
            work,
            evaluator_script,
            stopping: false,
            exit_error: None,
            next_status_log: now + STATUS_EVERY,
            http,
        })
    }

    /// Runs until one-shot work is done or a signal asks to stop.
    pub fn run(mut self) -> Result<(), Fatal> {
        self.recover()?;
        if self.specs.is_empty() {
            log::warn!("no specifications in the database (add some with -S)");
        }
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.advance(now);
            if self.stopping || (self.config.one_shot && self.one_shot_finished()) {
                break;
            }
            let timeout = self.next_wakeup(now).saturating_duration_since(now);
            match self.poll.poll(&mut events, Some(timeout.min(MAX_SLEEP))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("event loop: {e}")),
            }
            let turn = Instant::now();
            for event in events.iter() {
                self.dispatch_event(event);
            }
            let took = turn.elapsed();
            if took > SLOW_TURN {
                log::warn!("slow loop turn: {} ms", took.as_millis());
            }
        }
        self.shutdown();
        match self.exit_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Start-up recovery, as the original did: evaluations interrupted
    /// half-way are rolled back (their commit is evaluated again), and
    /// builds left `started` by a previous process are scheduled again
    /// (the daemon forgot them when our connection closed).
    fn recover(&mut self) -> Result<(), Fatal> {
        // These are the first writes: a read-only database fails here, and
        // the message should name it.
        let db = self.config.database.display().to_string();
        let rolled_back = self
            .db
            .roll_back_interrupted_evaluations()
            .map_err(|e| format!("{db}: {e}"))?;
        if rolled_back > 0 {
            log::info!("recovery: {rolled_back} interrupted evaluation(s) rolled back");
        }
        let reset = self
            .db
            .reset_started_builds()
            .map_err(|e| format!("{db}: {e}"))?;
        if reset > 0 {
            log::info!("recovery: {reset} interrupted build(s) rescheduled");
        }
        Ok(())
    }

    fn one_shot_finished(&self) -> bool {
        self.specs
            .iter()
            .all(|s| s.cycles >= 1 && s.state() == State::Idle)
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut next = now + MAX_SLEEP;
        for (run, work) in self.specs.iter().zip(&self.work) {
            if run.state() == State::Idle && !(self.config.one_shot && run.cycles >= 1) {
                next = next.min(run.next_poll);
            }
            if let Some((_, proc, deadline)) = &work.proc {
                // A killed child's exit arrives as SIGCHLD.
                if !proc.killed {
                    next = next.min(*deadline);
                }
                if proc.wants_read() != (false, false) {
                    return now;
                }
            }
            if let Some(at) = work.retry_at {
                next = next.min(at);
            }
        }
        if let Some(at) = self.http.as_ref().and_then(HttpServer::poll_at) {
            next = next.min(at);
        }
        next.max(now)
    }

    /// HTTP events carry their readiness to the server; the rest go by token.
    fn dispatch_event(&mut self, event: &mio::event::Event) {
        if let Some(http) = self.http.as_mut().filter(|h| h.owns(event.token())) {
            http.handle(self.poll.registry(), event, &self.db, Instant::now());
            return;
        }
        self.dispatch(event.token());
    }

    fn dispatch(&mut self, token: Token) {
        if token == SIGNAL {
            for sig in self.signals.drain() {
                self.on_signal(sig);
            }
            return;
        }
        let Some(offset) = token.0.checked_sub(SPEC_TOKEN_BASE) else {
            return;
        };
        let (index, which) = (offset / TOKENS_PER_SPEC, offset % TOKENS_PER_SPEC);
        if index >= self.specs.len() {
            return;
        }
        match which {
            CHILD_STDOUT => self.child_stdout(index),
            CHILD_STDERR => {
                let label = self.label(index);
                if let Some((step, proc, _)) = self.work[index].proc.as_mut() {
                    proc.read_stderr(self.poll.registry(), step.target(), &label);
                }
            }
            DAEMON => self.daemon_io(index),
            _ => {}
        }
    }

    /// What prefixes the lines of the spec's child process.
    fn label(&self, index: usize) -> String {
        let step = match &self.work[index].proc {
            Some((Step::Fetch, ..)) => "fetch",
            Some((Step::Compile, ..)) => "compile",
            Some((Step::Evaluate, ..)) => "evaluator",
            None => "child",
        };
        format!("spec={} {step}", shown(&self.specs[index].spec.name))
    }

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGINT | libc::SIGTERM => {
                log::info!("signal {sig}: stopping");
                self.stopping = true;
            }
            libc::SIGHUP => self.reload_specifications(),
            // Exits are noticed by `advance`, which looks at every child.
            _ => {}
        }
    }

    fn reload_specifications(&mut self) {
        let Some(path) = self.config.specifications.clone() else {
            log::info!("SIGHUP: no -S file to re-read");
            return;
        };
        let specs = match crate::spec::read_spec_file(&path, &self.config.evaluator) {
            Ok(specs) => specs,
            Err(e) => {
                log::error!(target: logging::SPEC, "SIGHUP: {e} (keeping the current specifications)");
                return;
            }
        };
        if let Err(e) = self.db.add_specifications(&specs) {
            log::error!(target: logging::SPEC, "SIGHUP: {e}");
            return;
        }
        let now = Instant::now();
        for spec in specs {
            match self.specs.iter_mut().find(|r| r.spec.name == spec.name) {
                // Takes effect at the next cycle: the running one goes on.
                Some(run) => run.spec = spec,
                None => {
                    log::info!(target: logging::SPEC, "spec={} added", shown(&spec.name));
                    self.specs.push(SpecRun::new(spec, now));
                    self.work.push(Work::default());
                }
            }
        }
    }

    /// Starts whatever is due and settles whatever finished.
    fn advance(&mut self, now: Instant) {
        if let Some(http) = self.http.as_mut() {
            http.tick(self.poll.registry(), &self.db, now);
        }
        for index in 0..self.specs.len() {
            self.read_leftovers(index);
            self.reap_child(index, now);
            if self.stopping {
                continue;
            }
            let run = &self.specs[index];
            let fresh_cycle = !(self.config.one_shot && run.cycles >= 1);
            match run.state() {
                State::Idle if fresh_cycle && run.poll_due(now) => self.start_fetch(index, now),
                State::Building => self.continue_building(index, now),
                // Jobs registered so far build while the evaluator runs.
                State::Evaluating if self.settle_finished_batch(index) => {
                    self.submit_next_batch(index, now)
                }
                _ => {}
            }
        }
        if now >= self.next_status_log {
            self.next_status_log = now + STATUS_EVERY;
            self.log_status();
        }
    }

    /// Reads again from pipes whose last read stopped at the cap.
    fn read_leftovers(&mut self, index: usize) {
        let Some((_, proc, _)) = self.work[index].proc.as_ref() else {
            return;
        };
        let (stdout, stderr) = proc.wants_read();
        if stdout {
            self.child_stdout(index);
        }
        if stderr {
            self.dispatch(spec_token(index, CHILD_STDERR));
        }
    }

    fn log_status(&self) {
        let mut by_state = std::collections::BTreeMap::new();
        for run in &self.specs {
            *by_state.entry(format!("{:?}", run.state())).or_insert(0) += 1;
        }
        let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let queued: usize = self.work.iter().map(|w| w.queue.len()).sum();
        let running: usize = self
            .work
            .iter()
            .filter_map(|w| w.conn.as_ref())
            .map(|c| c.batch.running())
            .sum();
        let today = self.db.evaluations_since(unix_now() - 86_400).unwrap_or(0);
        log::info!(
            "status: specs {} ({}), builds queued {queued}, running {running}, evaluations in 24h {today}",
            self.specs.len(),
            states.join(", ")
        );
    }

    fn spawn(&mut self, index: usize, step: Step, cmd: Command, timeout_secs: u64) -> bool {
        let registry = self.poll.registry();
        match child::spawn(
            cmd,
            registry,
            spec_token(index, CHILD_STDOUT),
            spec_token(index, CHILD_STDERR),
        ) {
            Ok(proc) => {
                let deadline = Instant::now() + Duration::from_secs(timeout_secs);
                self.work[index].proc = Some((step, proc, deadline));
                true
            }
            Err(e) => {
                log::error!(
                    target: step.target(),
                    "spec={} cannot start {step:?}: {e}",
                    shown(&self.specs[index].spec.name)
                );
                false
            }
        }
    }

    fn checkout_dir(&self, index: usize) -> PathBuf {
        self.config.cache_dir.join(&self.specs[index].spec.name)
    }

    fn end_cycle(&mut self, index: usize) {
        self.specs[index].cycle_done();
    }

    /// Stops children, drops daemon connections (the daemon then stops
    /// their builds), and puts in-flight builds back to `scheduled`.
    fn shutdown(&mut self) {
        for work in &mut self.work {
            if let Some((_, proc, _)) = work.proc.as_mut() {
                proc.kill();
                let _ = proc.child.wait();
            }
            work.proc = None;
            work.conn = None;
        }
        match self.db.reset_started_builds() {
            Ok(n) if n > 0 => log::info!("{n} in-flight build(s) rescheduled for next time"),
            Ok(_) => {}
            Err(e) => log::error!("{e}"),
        }
    }
}

/// Spec files refuse such names, but a database written by the original
/// or an earlier version may hold one: its history stays served, but it
/// is not polled, since its name would be a cache directory.
fn usable_name(name: &str) -> bool {
    match crate::spec::check_name(name) {
        Ok(()) => true,
        Err(why) => {
            let name = shown(name);
            log::error!(target: logging::SPEC, "spec={name} not polled: invalid name: {why}");
            false
        }
    }
}

/// The single argument of the evaluator script, an alist it `read`s.
pub fn evaluator_arguments(
    checkout: &std::path::Path,
    load_path: &[PathBuf],
    file: &std::path::Path,
    proc_name: &str,
    arguments: &str,
) -> String {
    use crate::sexp::{Datum, Kind, Pos};
    let datum = |kind| {
        Datum {
            pos: Pos { line: 1, column: 1 },
            kind,
        }
        .to_string()
    };
    let s = |p: &std::path::Path| datum(Kind::Str(p.to_string_lossy().into_owned()));
    let dirs: Vec<String> = load_path.iter().map(|p| s(p)).collect();
    format!(
        "((checkout . {}) (load-path {}) (file . {}) (proc . {}) (arguments . {}))",
        s(checkout),
        dirs.join(" "),
        s(file),
        datum(Kind::Symbol(proc_name.to_string())),
        arguments
    )
}

fn write_evaluator_script(config: &Config) -> Result<PathBuf, Fatal> {
    let dir = config.cache_dir.join(".cuirass");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the cache directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("evaluate-{}.scm", std::process::id()));
    std::fs::write(&path, EVALUATOR_SCRIPT)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

pub const EVALUATOR_SCRIPT: &str = include_str!("evaluate.scm");

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
use crate::job;
use crate::scheduler::{Backoff, SpecRun, State};
use crate::signals::SignalPipe;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const SIGNAL: Token = Token(0);
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
    jobs: Vec<JobRecord>,
    done_line: Option<u64>,
    eval_error: Option<String>,
    conn: Option<Conn>,
    queue: VecDeque<db::PendingBuild>,
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
            .map(|s| SpecRun::new(s, now))
            .collect();
        let work = specs.iter().map(|_| Work::default()).collect();
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
                self.dispatch(event.token(), event.is_writable());
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

    /// Start-up recovery, as the original did: builds left `started` by a
    /// previous process are scheduled again (the daemon forgot them).
    fn recover(&mut self) -> Result<(), Fatal> {
        let reset = self.db.reset_started_builds().map_err(|e| e.to_string())?;
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
            if let Some((_, _, deadline)) = &work.proc {
                next = next.min(*deadline);
            }
            if let Some(at) = work.retry_at {
                next = next.min(at);
            }
        }
        next.max(now)
    }

    fn dispatch(&mut self, token: Token, writable: bool) {
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
                if let Some((_, proc, _)) = self.work[index].proc.as_mut() {
                    proc.read_stderr(self.poll.registry(), &label);
                }
            }
            DAEMON => self.daemon_io(index, writable),
            _ => {}
        }
    }

    fn label(&self, index: usize) -> String {
        let step = match &self.work[index].proc {
            Some((Step::Fetch, ..)) => "fetch",
            Some((Step::Compile, ..)) => "compile",
            Some((Step::Evaluate, ..)) => "evaluator",
            None => "builds",
        };
        format!("spec={} {step}", self.specs[index].spec.name)
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
                log::error!("SIGHUP: {e} (keeping the current specifications)");
                return;
            }
        };
        if let Err(e) = self.db.add_specifications(&specs) {
            log::error!("SIGHUP: {e}");
            return;
        }
        let now = Instant::now();
        for spec in specs {
            match self.specs.iter_mut().find(|r| r.spec.name == spec.name) {
                // Takes effect at the next cycle: the running one goes on.
                Some(run) => run.spec = spec,
                None => {
                    log::info!("spec={} added", spec.name);
                    self.specs.push(SpecRun::new(spec, now));
                    self.work.push(Work::default());
                }
            }
        }
    }

    /// Starts whatever is due and settles whatever finished.
    fn advance(&mut self, now: Instant) {
        for index in 0..self.specs.len() {
            self.reap_child(index, now);
            if self.stopping {
                continue;
            }
            let run = &self.specs[index];
            let fresh_cycle = !(self.config.one_shot && run.cycles >= 1);
            match run.state() {
                State::Idle if fresh_cycle && run.poll_due(now) => self.start_fetch(index, now),
                State::Building => self.continue_building(index, now),
                _ => {}
            }
        }
        if now >= self.next_status_log {
            self.next_status_log = now + STATUS_EVERY;
            self.log_status();
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
                log::error!("spec={} cannot start {step:?}: {e}", self.specs[index].spec.name);
                false
            }
        }
    }

    fn checkout_dir(&self, index: usize) -> PathBuf {
        self.config.cache_dir.join(&self.specs[index].spec.name)
    }

    fn start_fetch(&mut self, index: usize, now: Instant) {
        let spec = &self.specs[index].spec;
        let target = fetch::Target::of(spec);
        let dir = self.checkout_dir(index);
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                log::error!("cannot find the cuirass executable: {e}");
                return;
            }
        };
        let mut cmd = Command::new(exe);
        cmd.args(fetch::child_args(&spec.url, &dir, &target));
        let work = &mut self.work[index];
        work.fetch_stdout.clear();
        work.commit = None;
        self.specs[index].set_state(State::Fetching);
        if !self.spawn(index, Step::Fetch, cmd, self.config.fetch_timeout_secs) {
            self.end_cycle(index, now);
        }
    }

    fn child_stdout(&mut self, index: usize) {
        let Some((step, proc, _)) = self.work[index].proc.as_mut() else {
            return;
        };
        let step = *step;
        let mut lines: Vec<Vec<u8>> = Vec::new();
        proc.read_stdout(self.poll.registry(), |l| lines.push(l.to_vec()));
        match step {
            Step::Fetch => {
                for l in lines {
                    let work = &mut self.work[index];
                    work.fetch_stdout.push_str(&String::from_utf8_lossy(&l));
                    work.fetch_stdout.push('\n');
                }
            }
            Step::Compile => {
                let label = self.label(index);
                for l in lines {
                    log::info!("{label}: {}", String::from_utf8_lossy(&l));
                }
            }
            Step::Evaluate => {
                for l in lines {
                    self.evaluator_line(index, &l);
                }
            }
        }
    }

    /// One line of evaluator output; the first bad one fails the evaluation.
    fn evaluator_line(&mut self, index: usize, line: &[u8]) {
        let name = self.specs[index].spec.name.clone();
        let work = &mut self.work[index];
        if work.eval_error.is_some() || line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = job::parse_line(line).and_then(|l| match l {
            job::Line::Job {
                name: job_name,
                derivation,
            } => {
                let bytes = std::fs::read(&derivation)
                    .map_err(|e| format!("job {job_name}: cannot read {derivation}: {e}"))?;
                work.jobs.push(job::job_record(&job_name, &derivation, &bytes)?);
                Ok(())
            }
            job::Line::JobError {
                name: job_name,
                message,
            } => {
                log::warn!("spec={name} job {job_name} failed to evaluate: {message}");
                Ok(())
            }
            job::Line::Done(n) => {
                work.done_line = Some(n);
                Ok(())
            }
        });
        if let Err(e) = parsed {
            log::error!("spec={name} bad evaluator output: {e}");
            work.eval_error = Some(format!("bad evaluator output: {e}"));
            if let Some((_, proc, _)) = work.proc.as_mut() {
                proc.kill();
            }
        }
    }

    /// Notices a finished or timed-out child and moves its spec on.
    fn reap_child(&mut self, index: usize, now: Instant) {
        let Some((step, proc, deadline)) = self.work[index].proc.as_mut() else {
            return;
        };
        let step = *step;
        let timed_out = now >= *deadline && proc.poll_exit().is_none();
        if timed_out {
            log::error!("spec={} {step:?} timed out; killing it", self.specs[index].spec.name);
            proc.kill();
            if step == Step::Evaluate {
                let secs = self.config.evaluation_timeout_secs;
                self.work[index].eval_error = Some(format!("evaluation timed out after {secs} s"));
            }
        }
        let Some((_, proc, _)) = self.work[index].proc.as_mut() else {
            return;
        };
        // Read what is left before deciding: the last lines may be there.
        if !proc.pipes_closed() {
            if timed_out {
                // A killed child's pipes close promptly; wait for EOF.
                return;
            }
            return;
        }
        let Some(exit) = proc.poll_exit() else {
            return;
        };
        let (_, proc, _) = self.work[index].proc.take().unwrap();
        let ok = exit.success();
        match step {
            Step::Fetch => self.fetch_done(index, ok, &proc, now),
            Step::Compile => {
                if ok {
                    self.start_evaluation(index, now);
                } else {
                    log::error!(
                        "spec={} compilation failed: {}",
                        self.specs[index].spec.name,
                        proc.failure_reason()
                    );
                    self.end_cycle(index, now);
                }
            }
            Step::Evaluate => self.evaluation_done(index, ok, &proc, now),
        }
    }

    fn fetch_done(&mut self, index: usize, ok: bool, proc: &Proc, now: Instant) {
        let name = self.specs[index].spec.name.clone();
        let commit = if ok {
            fetch::parse_child_output(&self.work[index].fetch_stdout)
        } else {
            None
        };
        let Some(commit) = commit else {
            log::error!("spec={name} fetch failed: {}", proc.failure_reason());
            self.end_cycle(index, now);
            return;
        };
        let stamp = match self.db.stamp(&name) {
            Ok(s) => s,
            Err(e) => {
                log::error!("spec={name} {e}");
                self.end_cycle(index, now);
                return;
            }
        };
        if stamp.as_deref() == Some(commit.as_str()) {
            log::info!("spec={name} commit {commit} already evaluated");
            self.start_building(index);
            return;
        }
        log::info!("spec={name} new commit {commit}");
        self.work[index].commit = Some(commit);
        if self.specs[index].spec.no_compile {
            self.start_evaluation(index, now);
        } else {
            self.start_compile(index, now);
        }
    }

    fn start_compile(&mut self, index: usize, now: Instant) {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "set -e; [ -f configure ] || ./bootstrap; \
                 [ -f Makefile ] || ./configure --localstatedir=/var; make -j {jobs}"
            ))
            .current_dir(self.checkout_dir(index));
        self.specs[index].set_state(State::Compiling);
        if !self.spawn(index, Step::Compile, cmd, self.config.fetch_timeout_secs) {
            self.end_cycle(index, now);
        }
    }

    fn start_evaluation(&mut self, index: usize, now: Instant) {
        let spec = &self.specs[index].spec;
        let checkout = self.checkout_dir(index);
        let mut load_path = vec![checkout.join(&spec.load_path)];
        load_path.extend(self.config.load_path.iter().cloned());
        let args = evaluator_arguments(
            &checkout,
            &load_path,
            &checkout.join(&spec.file),
            &spec.proc_name,
            &spec.arguments,
        );
        let mut cmd = Command::new(&self.config.evaluator[0]);
        cmd.args(&self.config.evaluator[1..])
            .arg(&self.evaluator_script)
            .arg(args)
            .current_dir(&checkout)
            .env("GUIX_DAEMON_SOCKET", &self.config.daemon_socket);
        let work = &mut self.work[index];
        work.jobs.clear();
        work.done_line = None;
        work.eval_error = None;
        self.specs[index].set_state(State::Evaluating);
        if !self.spawn(index, Step::Evaluate, cmd, self.config.evaluation_timeout_secs) {
            let commit = self.work[index].commit.clone().unwrap_or_default();
            let name = self.specs[index].spec.name.clone();
            let _ = self
                .db
                .record_failed_evaluation(&name, &commit, "cannot start the evaluator", unix_now());
            self.end_cycle(index, now);
        }
    }

    fn evaluation_done(&mut self, index: usize, ok: bool, proc: &Proc, now: Instant) {
        let name = self.specs[index].spec.name.clone();
        let work = &mut self.work[index];
        let commit = work.commit.clone().unwrap_or_default();
        let error = work.eval_error.take().or_else(|| {
            if !ok {
                Some(format!("evaluator {}", proc.failure_reason()))
            } else if work.done_line.is_none() {
                Some("evaluator output ended without (done N)".into())
            } else {
                None
            }
        });
        let jobs = std::mem::take(&mut work.jobs);
        let result = match &error {
            Some(e) => {
                log::error!("spec={name} evaluation of {commit} failed: {e}");
                self.db.record_failed_evaluation(&name, &commit, e, unix_now())
            }
            None => self.db.register_evaluation(&name, &commit, &jobs, unix_now()),
        };
        match result {
            Ok(eval) if error.is_none() => {
                log::info!("spec={name} evaluation {eval} of {commit}: {} jobs registered", jobs.len())
            }
            Ok(_) => {}
            Err(e) => {
                // The commit stays unstamped, so the next poll tries again.
                log::error!("spec={name} cannot record the evaluation: {e}");
                self.end_cycle(index, now);
                return;
            }
        }
        self.start_building(index);
    }

    fn start_building(&mut self, index: usize) {
        let name = self.specs[index].spec.name.clone();
        match self.db.pending_builds(Some(&name)) {
            Ok(pending) => {
                log::info!("spec={name} {} build(s) pending", pending.len());
                self.work[index].queue = pending.into();
            }
            Err(e) => log::error!("spec={name} {e}"),
        }
        self.specs[index].set_state(State::Building);
    }

    /// Called every turn while Building: submits the next batch when the
    /// previous one is done, and ends the cycle when the queue is empty.
    fn continue_building(&mut self, index: usize, now: Instant) {
        let work = &mut self.work[index];
        if let Some(conn) = &work.conn {
            if !conn.batch.is_done() {
                return;
            }
            let conn = work.conn.take().unwrap();
            work.backoff.succeeded();
            self.finish_batch(index, conn);
            if self.specs[index].poll_due(now) && !self.config.one_shot {
                // Let a new commit in between two batches.
                self.work[index].queue.clear();
                self.start_fetch(index, now);
                return;
            }
        }
        let work = &mut self.work[index];
        if work.retry_at.is_some_and(|at| now < at) {
            return;
        }
        work.retry_at = None;
        if work.queue.is_empty() {
            self.end_cycle(index, now);
            return;
        }
        let items = self.next_items(index);
        if items.is_empty() {
            return;
        }
        self.open_batch(index, items, now);
    }

    /// Takes up to BATCH_SIZE builds off the queue, cancelling those whose
    /// derivation is gone from the store (collected since evaluation).
    fn next_items(&mut self, index: usize) -> Vec<Item> {
        let mut items = Vec::new();
        let mut canceled = Vec::new();
        while items.len() < build::BATCH_SIZE {
            let Some(pending) = self.work[index].queue.pop_front() else {
                break;
            };
            if items.iter().any(|i: &Item| i.derivation == pending.derivation) {
                continue;
            }
            match std::fs::read(&pending.derivation)
                .ok()
                .and_then(|bytes| Derivation::parse(&bytes).ok())
            {
                Some(drv) => items.push(Item {
                    outputs: drv.outputs.iter().map(|o| o.path.clone()).collect(),
                    inputs: drv.input_drvs.iter().map(|(d, _)| d.clone()).collect(),
                    derivation: pending.derivation,
                }),
                None => canceled.push((pending.derivation, status::CANCELED, None)),
            }
        }
        if !canceled.is_empty() {
            log::warn!(
                "spec={} {} build(s) canceled: derivation no longer in the store",
                self.specs[index].spec.name,
                canceled.len()
            );
            if let Err(e) = self.db.finish_builds(&canceled, unix_now()) {
                log::error!("{e}");
            }
        }
        items
    }

    fn open_batch(&mut self, index: usize, items: Vec<Item>, now: Instant) {
        let name = self.specs[index].spec.name.clone();
        let count = items.len();
        let mut stream = match UnixStream::connect(&self.config.daemon_socket) {
            Ok(s) => s,
            Err(e) => {
                self.daemon_unreachable(index, items, now, &e.to_string());
                return;
            }
        };
        let batch = Batch::new(
            items,
            build::build_options(self.config.use_substitutes, self.config.fallback),
        );
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            spec_token(index, DAEMON),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("spec={name} cannot watch the daemon socket: {e}");
            return;
        }
        let remaining = self.work[index].queue.len();
        log::info!("spec={name} batch of {count} derivation(s) submitted, {remaining} more queued");
        self.work[index].conn = Some(Conn {
            stream,
            batch,
            wants_write: true,
        });
    }

    fn daemon_unreachable(&mut self, index: usize, items: Vec<Item>, now: Instant, why: &str) {
        let name = self.specs[index].spec.name.clone();
        let socket = self.config.daemon_socket.display().to_string();
        let work = &mut self.work[index];
        let delay = work.backoff.failed();
        log::error!(
            "spec={name} cannot reach guix-daemon at {socket}: {why}; retrying in {} s",
            delay.as_secs()
        );
        if self.config.one_shot && work.backoff.failures() >= ONE_SHOT_DAEMON_TRIES {
            self.exit_error = Some(format!("cannot reach guix-daemon at {socket}: {why}"));
            self.stopping = true;
        }
        // Put the builds back at the front, in their order.
        for item in items.into_iter().rev() {
            if let Ok(mut pending) = self.db.pending_builds(Some(&name)) {
                if let Some(p) = pending.iter().position(|p| p.derivation == item.derivation) {
                    work.queue.push_front(pending.swap_remove(p));
                }
            }
        }
        work.retry_at = Some(now + delay);
    }

    fn daemon_io(&mut self, index: usize, writable: bool) {
        let label = self.label(index);
        let Some(conn) = self.work[index].conn.as_mut() else {
            return;
        };
        let mut failure = None;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    if !conn.batch.is_done() {
                        failure = Some("the daemon closed the connection".to_string());
                    }
                    break;
                }
                Ok(n) => {
                    if let Err(e) = conn.batch.receive(&buf[..n], &label) {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let _ = writable;
        if failure.is_none() {
            failure = flush(conn, self.poll.registry(), spec_token(index, DAEMON)).err();
        }
        let updates = conn.batch.take_updates();
        self.apply_updates(index, updates);
        if let Some(why) = failure {
            self.batch_lost(index, &why);
        }
    }

    fn apply_updates(&mut self, index: usize, updates: Vec<Update>) {
        if updates.is_empty() {
            return;
        }
        let now = unix_now();
        let mut finished = Vec::new();
        for u in updates {
            match u {
                Update::Started { derivation, log } => {
                    if let Err(e) = self.db.build_started(&derivation, &log, now) {
                        log::error!("spec={} {e}", self.specs[index].spec.name);
                    }
                }
                Update::Finished {
                    derivation,
                    status,
                    log,
                } => {
                    let log = log.or_else(|| existing_log_file(&derivation));
                    finished.push((derivation, status, log));
                }
            }
        }
        if !finished.is_empty()
            && let Err(e) = self.db.finish_builds(&finished, now)
        {
            log::error!("spec={} {e}", self.specs[index].spec.name);
        }
    }

    fn finish_batch(&mut self, index: usize, mut conn: Conn) {
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let updates = conn.batch.take_updates();
        self.apply_updates(index, updates);
        log::info!(
            "spec={} batch of {} done{}",
            self.specs[index].spec.name,
            conn.batch.len(),
            conn.batch
                .daemon_error()
                .map(|e| format!(" ({})", e.trim_end()))
                .unwrap_or_default()
        );
    }

    /// The daemon went away mid-batch: its builds go back to the queue and
    /// the batch is submitted again after a delay.
    fn batch_lost(&mut self, index: usize, why: &str) {
        let name = self.specs[index].spec.name.clone();
        let Some(mut conn) = self.work[index].conn.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let drvs: Vec<String> = conn.batch.derivations().map(String::from).collect();
        if let Err(e) = self.db.reschedule(&drvs) {
            log::error!("spec={name} {e}");
        }
        let work = &mut self.work[index];
        let delay = work.backoff.failed();
        log::error!(
            "spec={name} lost the daemon during a batch of {}: {why}; resubmitting in {} s",
            drvs.len(),
            delay.as_secs()
        );
        if self.config.one_shot && work.backoff.failures() >= ONE_SHOT_DAEMON_TRIES {
            self.exit_error = Some(format!("lost guix-daemon repeatedly: {why}"));
            self.stopping = true;
        }
        match self.db.pending_builds(Some(&name)) {
            Ok(pending) => work.queue = pending.into(),
            Err(e) => log::error!("spec={name} {e}"),
        }
        work.retry_at = Some(Instant::now() + delay);
    }

    fn end_cycle(&mut self, index: usize, now: Instant) {
        let interval = Duration::from_secs(self.config.interval_secs);
        self.specs[index].cycle_done(now, interval);
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

/// Writes what the client has queued; asks for WRITABLE only while bytes
/// remain, so an idle connection does not wake the loop.
fn flush(conn: &mut Conn, registry: &mio::Registry, token: Token) -> Result<(), String> {
    loop {
        let out = conn.batch.client.pending_output();
        if out.is_empty() {
            break;
        }
        match conn.stream.write(out) {
            Ok(n) => conn.batch.client.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    let wants_write = !conn.batch.client.pending_output().is_empty();
    if wants_write != conn.wants_write {
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry
            .reregister(&mut conn.stream, token, interest)
            .map_err(|e| e.to_string())?;
        conn.wants_write = wants_write;
    }
    Ok(())
}

/// The daemon's log of a derivation built earlier, if it kept one.
fn existing_log_file(derivation: &str) -> Option<String> {
    let base = derivation.strip_prefix("/gnu/store/")?;
    if base.len() < 3 {
        return None;
    }
    let path = format!("/var/log/guix/drvs/{}/{}.bz2", &base[..2], &base[2..]);
    std::path::Path::new(&path).exists().then_some(path)
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
    let datum = |kind| Datum {
        pos: Pos { line: 1, column: 1 },
        kind,
    }
    .to_string();
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

//! One specification's cycle, as a sans-I/O state machine.
//!
//! A specification runs two tracks side by side:
//!
//! - the **evaluation track**, [`State`]: Idle → Fetching → (Compiling →)
//!   Evaluating → Idle, one round per poll.  Every transition is one arm of
//!   the `match (state, input)` in [`Cycle::handle`] and goes through
//!   [`Cycle::set_state`], which logs it with the input that caused it;
//! - the **building track**, [`Building`]: the spec's pending builds, loaded
//!   a page at a time, handed to the daemon in batches.  It runs whatever
//!   the evaluation track does, so a poll that falls due during a long
//!   build fetches and evaluates the new commit at once (its jobs join the
//!   queue, and builds it supersedes are canceled).
//!
//! The machine is given inputs ([`Input`]: a child exited, the evaluator
//! printed lines, a batch ended, time passed, stop) with `now`, and answers
//! with commands ([`Command`]: spawn a child, kill it, open or close a
//! batch) for the event loop to carry out, and with [`Cycle::poll_at`], the
//! next time it must be woken.  It writes the database directly (an
//! in-memory one in unit tests); the only other things it touches are the
//! `.drv` files it reads and the daemon probe, both given by the loop in
//! [`Env`].

use crate::build::{self, Item, Limits};
use crate::db::{BuildId, Db, EvalId, JobRecord, PendingBuild, status};
use crate::drv::Derivation;
use crate::fetch;
use crate::job;
use crate::logging::{BUILDING, COMPILE, EVALUATION, FETCH};
use crate::spec::Specification;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

/// Pending builds are read from the database this many at a time, so a
/// queue of 100,000 never stalls the loop.
pub const PAGE: usize = 1000;
/// In one-shot mode, give up on an unreachable daemon after this many tries.
pub const ONE_SHOT_DAEMON_TRIES: u32 = 5;

/// How a cycle runs; fixed for a spec's lifetime.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds between two polls, from the start of one to the next.
    pub interval: Duration,
    pub fetch_timeout: Duration,
    /// `./bootstrap && ./configure && make` gets the fetch timeout too.
    pub compile_timeout: Duration,
    pub evaluation_timeout: Duration,
    /// Evaluate and build once, then finish.
    pub one_shot: bool,
    /// The spec's checkout, `CACHE/NAME`.
    pub checkout: PathBuf,
    /// `-L` directories, after the spec's own load path.
    pub load_path: Vec<PathBuf>,
}

/// What the machine needs from the world besides the database.
pub struct Env<'a> {
    pub now: Instant,
    /// Unix seconds, for the database's times.
    pub unix_now: i64,
    pub db: &'a mut Db,
    /// Reads a `.drv` file.
    pub read_drv: &'a dyn Fn(&str) -> std::io::Result<Vec<u8>>,
    /// Whether guix-daemon accepts connections; the reason when not.
    pub daemon: &'a dyn Fn() -> Result<(), String>,
}

/// Everything that can happen to a cycle.
#[derive(Debug)]
pub enum Input {
    /// Time passed: a poll, a child's deadline or a retry may be due.
    Tick,
    /// The fetch child exited; `stdout` is all it printed, `reason` says
    /// how it failed.
    FetchExited {
        ok: bool,
        stdout: String,
        reason: String,
    },
    CompileExited {
        ok: bool,
        reason: String,
    },
    /// Lines the evaluator printed, as read in one go: registered in one
    /// transaction.
    EvaluatorLines(Vec<Vec<u8>>),
    /// The evaluator printed a line over this many bytes (it was dropped).
    EvaluatorLineTooLong(usize),
    /// The evaluator ended: how (`exited with status 1: LAST STDERR
    /// LINE`), and its own first `evaluate: error:` line, if it printed one.
    EvaluatorExited {
        ok: bool,
        reason: String,
        error_line: Option<String>,
    },
    /// The child of the current step could not be started.
    SpawnFailed(String),
    /// The batch in flight ended; its statuses are recorded.
    BatchDone {
        daemon_error: Option<String>,
    },
    /// The daemon could not be reached, or went away mid-batch.
    BatchLost(String),
    /// SIGTERM or SIGINT.
    Stop,
}

impl Input {
    /// How the transition log names the input.
    fn name(&self) -> &'static str {
        match self {
            Input::Tick => "poll due",
            Input::FetchExited { ok: true, .. } => "fetch done",
            Input::FetchExited { ok: false, .. } => "fetch failed",
            Input::CompileExited { ok: true, .. } => "compile done",
            Input::CompileExited { ok: false, .. } => "compile failed",
            Input::EvaluatorLines(_) | Input::EvaluatorLineTooLong(_) => "evaluator output",
            Input::EvaluatorExited { .. } => "evaluator exited",
            Input::SpawnFailed(_) => "cannot start a child",
            Input::BatchDone { .. } => "batch done",
            Input::BatchLost(_) => "daemon lost",
            Input::Stop => "stop",
        }
    }
}

/// What the event loop must do for the cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run `cuirass internal-fetch` into the checkout.
    SpawnFetch(fetch::Target),
    /// `./bootstrap`, `./configure`, `make` in the checkout.
    SpawnCompile,
    /// The evaluator, with its single argument (see src/evaluate.scm).
    SpawnEvaluator { arguments: String },
    /// Kill the running child; its exit still arrives as an input.
    KillChild,
    /// Connect to the daemon and build these, all of one limit class.
    OpenBatch(Vec<Item>, Limits),
    /// Drop the batch's connection: the daemon stops its builds.
    CloseBatch,
}

/// An evaluation being registered while the evaluator runs.
#[derive(Debug)]
pub struct Evaluation {
    pub id: EvalId,
    pub commit: String,
    deadline: Instant,
    killed: bool,
    /// The output so far, checked as a whole.
    tally: job::Tally,
    /// Jobs read since the last flush to the database.
    jobs: Vec<JobRecord>,
    registered: usize,
    /// The first reason the evaluation failed.
    error: Option<String>,
    /// The failure was ours (the database refused the jobs), not the
    /// commit's: roll back and evaluate the commit again next poll.
    retry: bool,
}

/// The evaluation track.  Each state owns what it needs.
#[derive(Debug)]
pub enum State {
    /// Waiting for the next poll.
    Idle,
    /// The fetch child updates the checkout.
    Fetching { deadline: Instant, killed: bool },
    /// `./bootstrap`, `./configure`, `make` for `commit`.
    Compiling {
        commit: String,
        deadline: Instant,
        killed: bool,
    },
    /// The evaluator prints the jobs of the evaluation.
    Evaluating(Box<Evaluation>),
    /// Stopped for good.
    Stopped,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Fetching { .. } => "Fetching",
            State::Compiling { .. } => "Compiling",
            State::Evaluating(_) => "Evaluating",
            State::Stopped => "Stopped",
        }
    }
}

/// Doubling reconnection delays, capped.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(60);

    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let secs = 1u64 << self.failures.min(6).saturating_sub(1);
        Duration::from_secs(secs).min(Backoff::MAX)
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The building track: pending builds and the batch in flight.
#[derive(Debug, Default)]
pub struct Building {
    queue: VecDeque<PendingBuild>,
    /// Keyset position of the next page to load; None once all are read.
    next_page: Option<BuildId>,
    /// Derivations of the batch in flight: never handed over twice.
    in_flight: HashSet<String>,
    batch_open: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Building {
    /// Nothing queued, nothing to load, nothing in flight or waiting.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.next_page.is_none()
            && !self.batch_open
            && self.retry_at.is_none()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn batch_open(&self) -> bool {
        self.batch_open
    }
}

pub struct Cycle {
    pub spec: Specification,
    settings: Settings,
    state: State,
    next_poll: Instant,
    /// Completed rounds of the evaluation track (one-shot stops after one).
    rounds: u32,
    building: Building,
    commands: VecDeque<Command>,
    /// Why a one-shot run could not do this spec's work (not the commit's
    /// fault: an unreachable remote, a missing branch, no daemon).
    failure: Option<String>,
}

impl Cycle {
    /// A cycle polls at once; builds left pending by earlier runs are
    /// loaded at the first turn.
    pub fn new(spec: Specification, settings: Settings, now: Instant) -> Cycle {
        Cycle {
            spec,
            settings,
            state: State::Idle,
            next_poll: now,
            rounds: 0,
            building: Building {
                next_page: Some(0),
                ..Building::default()
            },
            commands: VecDeque::new(),
            failure: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn building(&self) -> &Building {
        &self.building
    }

    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The next command for the loop, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Takes effect at the next round; the running one goes on.
    pub fn replace_spec(&mut self, spec: Specification) {
        self.spec = spec;
    }

    /// One-shot work is done: one round, and nothing left to build.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Stopped)
            || (self.rounds >= 1 && matches!(self.state, State::Idle) && self.building.is_idle())
    }

    fn polls(&self) -> bool {
        !(self.settings.one_shot && self.rounds >= 1)
    }

    /// When the machine must next be given [`Input::Tick`], if ever.
    pub fn poll_at(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        match &self.state {
            State::Idle if self.polls() => consider(self.next_poll),
            State::Fetching {
                deadline,
                killed: false,
            }
            | State::Compiling {
                deadline,
                killed: false,
                ..
            } => consider(*deadline),
            State::Evaluating(e) if !e.killed => consider(e.deadline),
            _ => {}
        }
        if let Some(t) = self.building.retry_at {
            consider(t);
        }
        at
    }

    /// The one place where the evaluation track changes state.
    fn set_state(&mut self, from: &'static str, to: State, cause: &Input) {
        if from != to.name() {
            log::info!(
                "spec={:?} {from}=>{} ({})",
                self.spec.name,
                to.name(),
                cause.name()
            );
        }
        self.state = to;
    }

    /// Feeds one input; commands come out of [`Cycle::poll_command`].
    pub fn handle(&mut self, input: Input, env: &mut Env) {
        let from = self.state.name();
        let state = std::mem::replace(&mut self.state, State::Stopped);
        let next = match (state, &input) {
            // Stopped is final: late exits and batch ends change nothing.
            (State::Stopped, _) => State::Stopped,

            // Stopping: kill the child, roll back an evaluation half
            // registered (its commit is evaluated again next time), drop
            // the batch (its builds go back to scheduled).
            (state, Input::Stop) => {
                self.stop(state, env);
                State::Stopped
            }

            // The poll timer: fetch, whatever the building track is doing.
            (State::Idle, Input::Tick) if self.polls() && env.now >= self.next_poll => {
                self.next_poll = env.now + self.settings.interval;
                self.commands
                    .push_back(Command::SpawnFetch(fetch::Target::of(&self.spec)));
                State::Fetching {
                    deadline: env.now + self.settings.fetch_timeout,
                    killed: false,
                }
            }

            // A child past its deadline is killed; its exit ends the step.
            (
                State::Fetching {
                    deadline,
                    killed: false,
                },
                Input::Tick,
            ) if env.now >= deadline => {
                log::error!(target: FETCH, "spec={:?} fetch timed out; killing it", self.spec.name);
                self.commands.push_back(Command::KillChild);
                State::Fetching {
                    deadline,
                    killed: true,
                }
            }
            (
                State::Compiling {
                    commit,
                    deadline,
                    killed: false,
                },
                Input::Tick,
            ) if env.now >= deadline => {
                log::error!(
                    target: COMPILE,
                    "spec={:?} compilation timed out; killing it",
                    self.spec.name
                );
                self.commands.push_back(Command::KillChild);
                State::Compiling {
                    commit,
                    deadline,
                    killed: true,
                }
            }
            (State::Evaluating(mut e), Input::Tick) if !e.killed && env.now >= e.deadline => {
                let secs = self.settings.evaluation_timeout.as_secs();
                self.fail_evaluation(&mut e, format!("evaluation timed out after {secs} s"));
                State::Evaluating(e)
            }

            // The fetch printed a commit: new ones are compiled or
            // evaluated, a known one ends the round.
            (State::Fetching { .. }, Input::FetchExited { ok, stdout, reason }) => {
                let commit = ok.then(|| fetch::parse_child_output(stdout)).flatten();
                match commit {
                    None => {
                        // Not the commit's fault: one-shot says so at exit.
                        let why = format!("fetch failed: {reason}");
                        log::error!(target: FETCH, "spec={:?} {why}", self.spec.name);
                        if self.settings.one_shot {
                            self.failure = Some(why);
                        }
                        self.end_round()
                    }
                    Some(commit) => self.new_commit(commit, env),
                }
            }

            // Compiled: evaluate.  A failed compilation ends the round; the
            // commit is tried again at the next poll (no stamp moved).
            (State::Compiling { commit, .. }, Input::CompileExited { ok: true, .. }) => {
                self.begin_evaluation(commit, env)
            }
            (State::Compiling { .. }, Input::CompileExited { ok: false, reason }) => {
                log::error!(target: COMPILE, "spec={:?} compilation failed: {reason}", self.spec.name);
                self.end_round()
            }

            // Evaluator output: check each line, register its jobs in one
            // transaction, and queue their builds at once (builds start
            // while the evaluator still runs).
            (State::Evaluating(mut e), Input::EvaluatorLines(lines)) => {
                for line in lines {
                    self.evaluator_line(&mut e, line, env);
                }
                self.flush_jobs(&mut e, env);
                State::Evaluating(e)
            }
            (State::Evaluating(mut e), Input::EvaluatorLineTooLong(n)) => {
                self.fail_evaluation(
                    &mut e,
                    format!("bad evaluator output: a line is over {n} bytes"),
                );
                State::Evaluating(e)
            }

            // The evaluator ended: record the outcome, reload the queue
            // (superseded builds are gone from it), end the round.
            (
                State::Evaluating(mut e),
                Input::EvaluatorExited {
                    ok,
                    reason,
                    error_line,
                },
            ) => {
                self.flush_jobs(&mut e, env);
                if e.error.is_none() {
                    if !ok {
                        // Its own one-line message says why, not a
                        // backtrace frame.
                        e.error = Some(job::evaluation_error(
                            error_line
                                .as_deref()
                                .unwrap_or(&format!("evaluator {reason}")),
                        ));
                    } else if let Err(err) = e.tally.finish() {
                        e.error = Some(format!("bad evaluator output: {err}"));
                    }
                }
                self.close_evaluation(*e, env);
                self.end_round()
            }

            // A child that cannot be started ends its step like a failure.
            (State::Evaluating(mut e), Input::SpawnFailed(why)) => {
                e.error = Some(format!("cannot start the evaluator: {why}"));
                self.close_evaluation(*e, env);
                self.end_round()
            }
            (State::Fetching { .. } | State::Compiling { .. }, Input::SpawnFailed(why)) => {
                log::error!("spec={:?} {why}", self.spec.name);
                if self.settings.one_shot {
                    self.failure = Some(why.clone());
                }
                self.end_round()
            }

            // The building track runs beside every state of the other.
            (state, Input::BatchDone { daemon_error }) => {
                self.batch_done(daemon_error.as_deref());
                state
            }
            (state, Input::BatchLost(why)) => {
                self.batch_lost(why, env);
                state
            }

            // Anything else changes nothing: a Tick with nothing due, or a
            // late input of a step already left.
            (state, _) => state,
        };
        self.set_state(from, next, &input);
        if !matches!(self.state, State::Stopped) {
            self.fill_batch(env);
        }
    }

    fn end_round(&mut self) -> State {
        self.rounds += 1;
        State::Idle
    }

    fn new_commit(&mut self, commit: String, env: &mut Env) -> State {
        let name = &self.spec.name;
        match env.db.stamp(name) {
            Err(e) => {
                log::error!(target: FETCH, "spec={name:?} {e}");
                self.end_round()
            }
            Ok(Some(stamp)) if stamp == commit => {
                log::info!(target: FETCH, "spec={name:?} commit {commit} already evaluated");
                self.end_round()
            }
            Ok(_) => {
                log::info!(target: FETCH, "spec={name:?} new commit {commit}");
                if self.spec.no_compile {
                    self.begin_evaluation(commit, env)
                } else {
                    self.commands.push_back(Command::SpawnCompile);
                    State::Compiling {
                        commit,
                        deadline: env.now + self.settings.compile_timeout,
                        killed: false,
                    }
                }
            }
        }
    }

    /// The evaluator needs the daemon: without it every evaluation would
    /// fail and its commit be marked done.  Postponed instead, with no
    /// stamp, so the next poll tries the same commit again.
    fn begin_evaluation(&mut self, commit: String, env: &mut Env) -> State {
        let name = self.spec.name.clone();
        if let Err(e) = (env.daemon)() {
            let why = format!("evaluation of {commit} postponed: {e}");
            log::error!(target: EVALUATION, "spec={name:?} {why}");
            if self.settings.one_shot {
                self.failure = Some(why);
            }
            return self.end_round();
        }
        let id = match env.db.begin_evaluation(&name, &commit, env.unix_now) {
            Ok(id) => id,
            Err(e) => {
                // Nothing recorded, no stamp: the next poll tries again.
                log::error!(target: EVALUATION, "spec={name:?} cannot start an evaluation: {e}");
                return self.end_round();
            }
        };
        log::info!(target: EVALUATION, "spec={name:?} evaluation {id} of {commit} started");
        self.commands.push_back(Command::SpawnEvaluator {
            arguments: self.evaluator_arguments(),
        });
        State::Evaluating(Box::new(Evaluation {
            id,
            commit,
            deadline: env.now + self.settings.evaluation_timeout,
            killed: false,
            tally: job::Tally::default(),
            jobs: Vec::new(),
            registered: 0,
            error: None,
            retry: false,
        }))
    }

    fn evaluator_arguments(&self) -> String {
        let checkout = &self.settings.checkout;
        let mut load_path = vec![checkout.join(&self.spec.load_path)];
        load_path.extend(self.settings.load_path.iter().cloned());
        evaluator_arguments(
            checkout,
            &load_path,
            &checkout.join(&self.spec.file),
            &self.spec.proc_name,
            &self.spec.arguments,
        )
    }

    /// One line of evaluator output; the first bad one fails the evaluation.
    fn evaluator_line(&mut self, e: &mut Evaluation, line: &[u8], env: &mut Env) {
        if e.error.is_some() || line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = job::parse_line(line).and_then(|l| {
            e.tally.accept(&l)?;
            match l {
                job::Line::Job {
                    name,
                    derivation,
                    limits,
                    priority,
                } => {
                    let bytes = (env.read_drv)(&derivation).map_err(|err| {
                        format!("job {name:?}: cannot read {derivation:?}: {err}")
                    })?;
                    e.jobs.push(job::job_record(
                        &name,
                        &derivation,
                        limits,
                        priority,
                        &bytes,
                    )?);
                }
                job::Line::JobError { name, message } => log::warn!(target: EVALUATION,
                    "spec={:?} job {name:?} failed to evaluate: {message:?}",
                    self.spec.name
                ),
                job::Line::Done(_) => {}
            }
            Ok(())
        });
        if let Err(err) = parsed {
            self.fail_evaluation(e, format!("bad evaluator output: {err}"));
        }
    }

    /// The first reason is the one kept; the evaluator is killed since
    /// nothing more it says is used.
    fn fail_evaluation(&mut self, e: &mut Evaluation, reason: String) {
        if e.error.is_some() {
            return;
        }
        log::error!(target: EVALUATION, "spec={:?} evaluation {}: {reason}", self.spec.name, e.id);
        e.error = Some(reason);
        if !e.killed {
            e.killed = true;
            self.commands.push_back(Command::KillChild);
        }
    }

    /// Registers the jobs read so far and queues their builds.
    fn flush_jobs(&mut self, e: &mut Evaluation, env: &mut Env) {
        let jobs = std::mem::take(&mut e.jobs);
        if jobs.is_empty() || e.error.is_some() {
            return;
        }
        match env.db.add_jobs(&self.spec.name, e.id, &jobs, env.unix_now) {
            Ok(added) => {
                e.registered += jobs.len();
                log::debug!(target: EVALUATION,
                    "spec={:?} evaluation {}: {} jobs registered so far",
                    self.spec.name,
                    e.id,
                    e.registered
                );
                self.building.queue.extend(added);
            }
            Err(err) => {
                self.fail_evaluation(e, format!("cannot register jobs: {err}"));
                e.retry = true;
            }
        }
    }

    /// Records the outcome; then the queue is read again from the start.
    fn close_evaluation(&mut self, e: Evaluation, env: &mut Env) {
        let name = self.spec.name.clone();
        let Evaluation {
            id, commit, error, ..
        } = e;
        let result = match (error, e.retry) {
            // A full disk or a read-only file says nothing about the
            // commit: forget the evaluation and keep the stamp, so the next
            // poll evaluates the commit again.  Should this fail too, the
            // next `begin_evaluation` rolls it back.
            (Some(error), true) => {
                log::error!(target: EVALUATION,
                    "spec={name:?} evaluation {id} of {commit} abandoned, to be retried: {error}"
                );
                env.db.abandon_evaluation(id)
            }
            (Some(error), false) => {
                log::error!(target: EVALUATION, "spec={name:?} evaluation {id} of {commit} failed: {error}");
                env.db
                    .fail_evaluation(&name, id, &commit, &error, env.unix_now)
            }
            (None, _) => env
                .db
                .complete_evaluation(&name, id, &commit, env.unix_now)
                .map(|canceled| {
                    let superseded = match canceled {
                        0 => String::new(),
                        n => format!(", {n} superseded build(s) canceled"),
                    };
                    log::info!(target: EVALUATION,
                        "spec={name:?} evaluation {id} of {commit} done: {} jobs{superseded}",
                        e.registered
                    );
                }),
        };
        if let Err(err) = result {
            // The stamp did not move, so the next poll evaluates again.
            log::error!(target: EVALUATION, "spec={name:?} cannot record evaluation {id}: {err}");
        }
        self.reload_queue();
    }

    fn stop(&mut self, state: State, env: &mut Env) {
        match state {
            State::Fetching { .. } | State::Compiling { .. } => {
                self.commands.push_back(Command::KillChild)
            }
            State::Evaluating(e) => {
                self.commands.push_back(Command::KillChild);
                if let Err(err) = env.db.abandon_evaluation(e.id) {
                    // Rolled back at the next start instead.
                    log::error!(target: EVALUATION, "spec={:?} evaluation {}: {err}", self.spec.name, e.id);
                }
            }
            State::Idle | State::Stopped => {}
        }
        if self.building.batch_open {
            self.building.batch_open = false;
            self.commands.push_back(Command::CloseBatch);
        }
    }

    fn reload_queue(&mut self) {
        self.building.queue.clear();
        self.building.next_page = Some(0);
    }

    fn batch_done(&mut self, daemon_error: Option<&str>) {
        let b = &mut self.building;
        b.batch_open = false;
        b.in_flight.clear();
        b.backoff.succeeded();
        log::info!(target: BUILDING,
            "spec={:?} batch done{}",
            self.spec.name,
            daemon_error
                .map(|e| format!(" ({})", e.trim_end()))
                .unwrap_or_default()
        );
    }

    /// Something went wrong with the daemon: the lost batch's builds are
    /// pending again (the loop rescheduled them), the queue is read again
    /// in order, and batches resume after a growing delay.  One-shot runs
    /// give up after a few tries.
    fn batch_lost(&mut self, why: &str, env: &mut Env) {
        let b = &mut self.building;
        b.batch_open = false;
        b.in_flight.clear();
        let delay = b.backoff.failed();
        b.retry_at = Some(env.now + delay);
        log::error!(target: BUILDING,
            "spec={:?} {why}; retrying in {} s",
            self.spec.name,
            delay.as_secs()
        );
        if self.settings.one_shot && b.backoff.failures() >= ONE_SHOT_DAEMON_TRIES {
            self.failure = Some(why.to_string());
        }
        self.reload_queue();
    }

    /// Opens the next batch when none is in flight: up to
    /// [`build::BATCH_SIZE`] builds of the limit class of the oldest
    /// pending one (the daemon takes limits per connection), a page read
    /// from the database whenever the queue runs dry.
    fn fill_batch(&mut self, env: &mut Env) {
        let name = self.spec.name.clone();
        let b = &mut self.building;
        if b.batch_open || self.failure.is_some() {
            return;
        }
        match b.retry_at {
            Some(at) if env.now < at => return,
            Some(_) => b.retry_at = None,
            None => {}
        }
        let mut items = Vec::new();
        let mut limits = Limits::default();
        let mut canceled = Vec::new();
        while items.is_empty() {
            if b.queue.is_empty() {
                let Some(after) = b.next_page else { break };
                match env.db.pending_builds_page(&name, after, PAGE) {
                    Ok(page) => {
                        b.next_page = (page.len() == PAGE).then(|| page.last().unwrap().id);
                        b.queue.extend(page);
                    }
                    Err(e) => {
                        log::error!(target: BUILDING, "spec={name:?} {e}");
                        break;
                    }
                }
                if b.queue.is_empty() {
                    break;
                }
            }
            let taken = build::take_batch(&mut b.queue, build::BATCH_SIZE);
            limits = taken.first().map(|p| p.limits).unwrap_or_default();
            for pending in taken {
                if b.in_flight.contains(&pending.derivation) {
                    continue;
                }
                // A derivation collected since evaluation cannot be built.
                match (env.read_drv)(&pending.derivation)
                    .ok()
                    .and_then(|bytes| Derivation::parse(&bytes).ok())
                {
                    Some(drv) => {
                        b.in_flight.insert(pending.derivation.clone());
                        items.push(Item {
                            outputs: drv.outputs.iter().map(|o| o.path.clone()).collect(),
                            inputs: drv.input_drvs.iter().map(|(d, _)| d.clone()).collect(),
                            derivation: pending.derivation,
                        });
                    }
                    None => canceled.push((pending.derivation, status::CANCELED, None)),
                }
            }
        }
        if !canceled.is_empty() {
            log::warn!(target: BUILDING,
                "spec={name:?} {} build(s) canceled: derivation no longer in the store",
                canceled.len()
            );
            if let Err(e) = env.db.finish_builds(&canceled, env.unix_now) {
                log::error!(target: BUILDING, "spec={name:?} {e}");
            }
        }
        if !items.is_empty() {
            log::info!(target: BUILDING,
                "spec={name:?} batch of {} derivation(s) to submit ({}), {} more queued",
                items.len(),
                build::describe_limits(limits),
                b.queue.len()
            );
            b.batch_open = true;
            self.commands.push_back(Command::OpenBatch(items, limits));
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

//! One specification's cycle, as a sans-I/O state machine.
//!
//! Its states, [`State`]: Idle → Fetching → (Compiling →) Evaluating →
//! Idle, one round per poll.  Every transition is one arm of the
//! `match (state, input)` in [`Cycle::handle`] and goes through
//! [`Cycle::set_state`], which logs it with the input that caused it.
//!
//! Builds are not the cycle's: every spec's builds form one queue, which
//! `queue::Dispatcher` hands to the daemon in priority order.  The cycle
//! says when it added or canceled builds ([`Command::QueueChanged`]); a
//! poll that falls due during a long build fetches and evaluates at once.
//!
//! The machine is given inputs ([`Input`]: a child exited, the evaluator
//! printed lines, time passed, stop) with `now`, and answers with commands
//! ([`Command`]: spawn a child, kill it, the queue changed) for the event
//! loop to carry out, and with [`Cycle::poll_at`], the
//! next time it must be woken.  It writes the database directly (an
//! in-memory one in unit tests); the only other things it touches are the
//! `.drv` files it reads and the daemon probe, both given by the loop in
//! [`Env`].

use crate::db::{Db, EvalId, JobRecord};
use crate::fetch;
use crate::job;
use crate::logging::{COMPILE, EVALUATION, FETCH};
use crate::spec::Specification;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

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
    /// The job file of record specs (src/build-types.scm, written out).
    pub build_types: PathBuf,
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
    /// The size of a file (a build product), if it is there.
    pub file_size: &'a dyn Fn(&str) -> Option<u64>,
    /// Derivations the queue has handed to guix-daemon and that have not
    /// ended: an evaluation's failure or a newer commit leaves their
    /// builds to end with their real result.
    pub in_flight: &'a std::collections::HashSet<String>,
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
    /// Lines the evaluator printed, as read in one go; `more`: the read
    /// stopped at its cap with bytes left (the evaluator prints faster
    /// than the loop reads), so their jobs may wait for a batch (see
    /// [`job::REGISTER_BATCH`]).
    EvaluatorLines {
        lines: Vec<Vec<u8>>,
        more: bool,
    },
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
    /// An operator, the hook or a webhook asks for an evaluation now;
    /// with a commit, of that commit, even if it was evaluated already
    /// (an evaluation retried).  A round under way ends first.
    Trigger {
        commit: Option<String>,
    },
    /// Builds of this spec ended (the dispatcher's requests for these
    /// derivations); their statuses are recorded.
    BuildsDone(Vec<String>),
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
            Input::EvaluatorLines { .. } | Input::EvaluatorLineTooLong(_) => "evaluator output",
            Input::EvaluatorExited { .. } => "evaluator exited",
            Input::SpawnFailed(_) => "cannot start a child",
            Input::Trigger { .. } => "triggered",
            Input::BuildsDone(_) => "builds done",
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
    /// With `time_machine`, the Guix of those channels (the text of a
    /// channels file) runs it, through `guix time-machine`.
    SpawnEvaluator {
        arguments: String,
        time_machine: Option<String>,
    },
    /// Kill the running child; its exit still arrives as an input.
    KillChild,
    /// Builds were added or canceled: the queue must be read again.
    QueueChanged,
}

/// An evaluation being registered while the evaluator runs.
#[derive(Debug)]
pub struct Evaluation {
    pub id: EvalId,
    /// The stamp it moves: the commit, or for a record spec the commits
    /// of its channels, in order, separated by spaces.
    pub commit: String,
    deadline: Instant,
    killed: bool,
    /// The output so far, checked as a whole.
    tally: job::Tally,
    /// Jobs read since the last flush to the database.
    jobs: Vec<JobRecord>,
    /// When the first of `jobs` was read.
    waiting_since: Option<Instant>,
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
    /// The fetch child updates the checkout; `again` is a commit to
    /// evaluate even if it was evaluated already.
    Fetching {
        deadline: Instant,
        killed: bool,
        again: Option<String>,
    },
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

pub struct Cycle {
    pub spec: Specification,
    settings: Settings,
    state: State,
    next_poll: Instant,
    /// Completed rounds of the evaluation track (one-shot stops after one).
    rounds: u32,
    commands: VecDeque<Command>,
    /// Why a one-shot run could not do this spec's work (not the commit's
    /// fault: an unreachable remote, a missing branch, no daemon).
    failure: Option<String>,
    /// A trigger that came during a round: done when the round ends.
    /// `Some(None)`: the latest commit; `Some(Some(c))`: commit c again.
    triggered: Option<Option<String>>,
}

impl Cycle {
    /// A cycle polls at once.
    pub fn new(spec: Specification, settings: Settings, now: Instant) -> Cycle {
        Cycle {
            spec,
            settings,
            state: State::Idle,
            next_poll: now,
            rounds: 0,
            commands: VecDeque::new(),
            failure: None,
            triggered: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
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

    /// One-shot evaluation is done: one round (the queue's builds are
    /// the dispatcher's).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Stopped)
            || (matches!(self.state, State::Idle) && (self.rounds >= 1 || !self.spec.is_active()))
    }

    /// An inactive spec is never polled; switched back on, its next
    /// poll, already due, comes at once.
    fn polls(&self) -> bool {
        !(self.settings.one_shot && self.rounds >= 1) && self.spec.is_active()
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
                ..
            }
            | State::Compiling {
                deadline,
                killed: false,
                ..
            } => consider(*deadline),
            State::Evaluating(e) if !e.killed => {
                consider(e.deadline);
                if let Some(since) = e.waiting_since {
                    consider(since + job::REGISTER_WAIT);
                }
            }
            _ => {}
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
            // registered (its commit is evaluated again next time).
            (state, Input::Stop) => {
                self.stop(state, env);
                State::Stopped
            }

            // The poll timer: fetch, whatever the queue is building.
            // A period not yet over since the last evaluation (one made
            // before a restart too) holds the poll until it is.
            (State::Idle, Input::Tick)
                if self.polls() && env.now >= self.next_poll && self.period_left(env).is_some() =>
            {
                self.next_poll = env.now + self.period_left(env).unwrap_or_default();
                State::Idle
            }
            (State::Idle, Input::Tick) if self.polls() && env.now >= self.next_poll => {
                self.fetch(None, env)
            }

            // A trigger: fetch now (the commit asked for, if any), or
            // once the round under way ends.
            (State::Idle, Input::Trigger { commit }) => self.fetch(commit.clone(), env),
            (state, Input::Trigger { commit }) => {
                self.triggered = Some(commit.clone());
                state
            }
            (State::Idle, Input::Tick) if self.triggered.is_some() => {
                let commit = self.triggered.take().flatten();
                self.fetch(commit, env)
            }

            // A child past its deadline is killed; its exit ends the step.
            (
                State::Fetching {
                    deadline,
                    killed: false,
                    again,
                },
                Input::Tick,
            ) if env.now >= deadline => {
                log::error!(target: FETCH, "spec={:?} fetch timed out; killing it", self.spec.name);
                self.commands.push_back(Command::KillChild);
                State::Fetching {
                    deadline,
                    killed: true,
                    again,
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

            // A record spec's fetch printed one line per channel.
            (State::Fetching { .. }, Input::FetchExited { stdout, reason, .. })
                if self.spec.record.is_some() =>
            {
                self.channels_fetched(stdout, reason, env)
            }

            // The fetch printed a commit: new ones are compiled or
            // evaluated, a known one ends the round.
            (State::Fetching { again, .. }, Input::FetchExited { ok, stdout, reason }) => {
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
                    Some(commit) => {
                        let again = again.as_deref() == Some(commit.as_str());
                        self.new_commit(commit, again, env)
                    }
                }
            }

            // Compiled: evaluate.  A failed compilation ends the round; the
            // commit is tried again at the next poll (no stamp moved).
            (State::Compiling { commit, .. }, Input::CompileExited { ok: true, .. }) => {
                let checkouts = self.own_checkout(&commit);
                self.begin_evaluation(commit, checkouts, env)
            }
            (State::Compiling { .. }, Input::CompileExited { ok: false, reason }) => {
                log::error!(target: COMPILE, "spec={:?} compilation failed: {reason}", self.spec.name);
                self.end_round()
            }

            // Evaluator output: check each line, and register the jobs
            // read so far once the evaluator has no more to say for now,
            // or in batches while it prints faster than that; their builds
            // are queued at once (builds start while the evaluator still
            // runs).
            (State::Evaluating(mut e), Input::EvaluatorLines { lines, more }) => {
                for line in lines {
                    self.evaluator_line(&mut e, line, env);
                }
                if !more || e.flush_due(env.now) {
                    self.flush_jobs(&mut e, env);
                }
                State::Evaluating(e)
            }
            (State::Evaluating(mut e), Input::Tick) if e.flush_due(env.now) => {
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

            // Builds end whatever the cycle is doing.
            (state, Input::BuildsDone(drvs)) => {
                self.register_products(drvs, env);
                state
            }

            // Anything else changes nothing: a Tick with nothing due, or a
            // late input of a step already left.
            (state, _) => state,
        };
        self.set_state(from, next, &input);
    }

    /// Starts a round: fetches the spec's branch (or tag, or commit), or
    /// `again`, a commit to evaluate whether or not it was already.
    fn fetch(&mut self, again: Option<String>, env: &mut Env) -> State {
        self.next_poll = env.now + self.settings.interval;
        let target = match &again {
            Some(commit) => fetch::Target::Commit(commit.clone()),
            None => fetch::Target::of(&self.spec),
        };
        self.commands.push_back(Command::SpawnFetch(target));
        State::Fetching {
            deadline: env.now + self.settings.fetch_timeout,
            killed: false,
            again,
        }
    }

    fn end_round(&mut self) -> State {
        self.rounds += 1;
        State::Idle
    }

    /// Stopping: the dispatcher drops the builds in flight.
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
    }
}

mod channels;
mod evaluation;

pub use evaluation::evaluator_arguments;

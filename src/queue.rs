//! The global build queue's dispatcher, a sans-I/O state machine.
//!
//! Every spec's scheduled builds form one queue, ordered by rank (spec
//! priority × 10 + job priority, 0 first) then age (id): see `db::queue`.
//! The dispatcher keeps up to `slots` builds in flight, **one derivation
//! per build request**: guix-daemon starts the derivations of one request
//! in an order of its own (a set sorted by store file name, not the order
//! sent), while each request runs in its own daemon process and starts
//! its build at once.  So builds start exactly in queue order, and
//! `/api/queue` can say which comes next.
//!
//! A build whose input derivation has a pending build of its own is
//! skipped until that one is done (the daemon would otherwise build the
//! input out of turn, inside this request); a build whose input's latest
//! build failed is made failed-dependency without reaching the daemon.
//!
//! The queue is read a page at a time from a keyset cursor, at most
//! [`SCAN_PER_TURN`] rows per turn, whatever its length; builds added,
//! or a build finished while others were skipped as waiting for an
//! input, send the cursor back to the front.

use crate::build::{Item, Limits};
use crate::db::queue::Readiness;
use crate::db::{BuildId, Db, PendingBuild, status};
use crate::drv::Derivation;
use crate::logging::BUILDING;
use crate::records::{BuildStatus, Update};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

/// Scheduled builds read from the database at a time.
pub const PAGE: usize = 1000;
/// Queue rows looked at in one loop turn at most: a queue of 100,000
/// builds waiting on inputs never stalls the loop.
pub const SCAN_PER_TURN: usize = PAGE;

/// In one-shot mode, give up on an unreachable daemon after this many tries.
pub const ONE_SHOT_DAEMON_TRIES: u32 = 5;

/// A build whose connection stalled this many times fails (failed-other)
/// rather than being tried again: see [`stall_limit`].
pub const STALLS_BEFORE_FAILING: u32 = 2;

/// A limit the daemon applies when the job gave none, for the stall
/// limit's sake only (guix-daemon's own default is none): Guix's
/// packages default to an hour of silence, and ci.guix.gnu.org's jobs
/// to 20 hours.
const ASSUMED_MAX_SILENT_TIME: u64 = 3600;
const ASSUMED_TIMEOUT: u64 = 72_000;

/// How long a build request's connection may stay silent before the
/// dispatcher gives up on it: the build's timeout (the daemon may wait
/// that long for a lock held by another build of the derivation, or for
/// a build machine the hook postponed it for), its silence limit, and a
/// minute for the answer.  Beyond this the daemon's worker is taken as
/// wedged, and only closing the connection frees the slot.  CI once saw
/// a connection silent for minutes after a build machine was unplugged,
/// most likely the worker waiting on its hook's answer (a read no daemon
/// timer covers) while `guix offload` waited on that machine.
pub fn stall_limit(limits: Limits) -> Duration {
    let timeout = limits.timeout.unwrap_or(ASSUMED_TIMEOUT);
    let silence = limits.max_silent_time.unwrap_or(ASSUMED_MAX_SILENT_TIME);
    Duration::from_secs(timeout.saturating_add(silence).saturating_add(60))
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

/// What the dispatcher needs from the world besides the database.
pub struct Env<'a> {
    pub now: Instant,
    /// Unix seconds, for the database's times.
    pub unix_now: i64,
    pub db: &'a mut Db,
    /// Reads a `.drv` file.
    pub read_drv: &'a dyn Fn(&str) -> std::io::Result<Vec<u8>>,
    /// Whether builds of a spec's evaluation may start: the spec is
    /// polled, and no newer evaluation of it is still canceling the builds
    /// it supersedes (see [`crate::db::supersede`]); others wait.
    pub may_start: &'a dyn Fn(&str, crate::db::EvalId) -> bool,
}

#[derive(Debug)]
pub enum Input {
    /// Time passed: a retry may be due, or the scan may go on.
    Tick,
    /// Builds were added or canceled: read the queue from the front.
    Changed,
    /// The build in `slot` is done; its status is recorded.
    Done {
        slot: usize,
        daemon_error: Option<String>,
    },
    /// The daemon could not be reached for `slot`'s build, or went away:
    /// the build is scheduled again, after a growing delay.
    Lost {
        slot: usize,
        why: String,
    },
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Build `item` with `limits` on `slot`'s daemon connection; the
    /// loop records `build` as started with its turn's other statuses
    /// ([`Db::record_statuses`]).
    Open {
        slot: usize,
        build: BuildId,
        spec: String,
        item: Item,
        limits: Limits,
    },
    /// Drop `slot`'s connection: the daemon stops the build.
    Close { slot: usize },
}

#[derive(Debug)]
pub struct Dispatcher {
    /// The build in flight in each slot.
    slots: Vec<Option<PendingBuild>>,
    page: VecDeque<PendingBuild>,
    /// `(rank, id)` of the last row read; None: from the front.
    cursor: Option<(i64, BuildId)>,
    /// The whole queue was read since the last restart.
    exhausted: bool,
    /// The scan made builds failed-dependency: their dependents, skipped
    /// earlier in it, must be looked at again.
    failed_in_scan: bool,
    /// Rows remain that this turn had no budget for: wake at once.
    more: bool,
    /// The scan passed over builds waiting for an input: a build ending
    /// may let them go, so the next one reads from the front again.
    skipped_waiting: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    one_shot: bool,
    failure: Option<String>,
    stopped: bool,
    commands: VecDeque<Command>,
    /// When each slot's connection last brought bytes, or its request
    /// was sent: see [`stall_limit`].
    heard: Vec<Instant>,
    /// Builds whose connection stalled, and how many times.
    stalls: HashMap<BuildId, u32>,
}

impl Dispatcher {
    pub fn new(slots: usize, one_shot: bool) -> Dispatcher {
        Dispatcher {
            slots: vec![None; slots.max(1)],
            page: VecDeque::new(),
            cursor: None,
            exhausted: false,
            failed_in_scan: false,
            more: false,
            skipped_waiting: false,
            retry_at: None,
            backoff: Backoff::default(),
            one_shot,
            failure: None,
            stopped: false,
            commands: VecDeque::new(),
            heard: vec![Instant::now(); slots.max(1)],
            stalls: HashMap::new(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The build in flight in `slot`.
    pub fn in_flight(&self, slot: usize) -> Option<&PendingBuild> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The derivations of the builds in flight.
    pub fn in_flight_derivations(&self) -> std::collections::HashSet<String> {
        self.slots
            .iter()
            .flatten()
            .map(|b| b.derivation.clone())
            .collect()
    }

    pub fn running(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Why a one-shot run gave up building (the daemon stayed away).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Nothing in flight, nothing left to look at, no retry waiting.
    pub fn is_idle(&self) -> bool {
        self.running() == 0
            && self.page.is_empty()
            && self.exhausted
            && self.retry_at.is_none()
            && !self.more
    }

    /// `slot`'s connection brought bytes at `now`: it is not stalled.
    pub fn heard(&mut self, slot: usize, now: Instant) {
        if let Some(heard) = self.heard.get_mut(slot) {
            *heard = now;
        }
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When the dispatcher must next be given [`Input::Tick`], if ever.
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        if self.more {
            return Some(now);
        }
        let stalls = self
            .slots
            .iter()
            .zip(&self.heard)
            .filter_map(|(b, heard)| Some(*heard + stall_limit(b.as_ref()?.limits)));
        stalls.chain(self.retry_at).min()
    }

    /// Feeds one input; commands come out of [`Dispatcher::poll_command`].
    pub fn handle(&mut self, input: Input, env: &mut Env) {
        if !self.stopped {
            self.give_up_stalled(env);
        }
        match input {
            Input::Tick => {}
            Input::Changed => self.restart(),
            Input::Done { slot, daemon_error } => {
                let done = self.slots.get_mut(slot).and_then(Option::take);
                if let Some(b) = &done {
                    self.stalls.remove(&b.id);
                }
                let dependents = done.as_ref().is_some_and(|b| {
                    env.db
                        .has_scheduled_dependents(&b.derivation)
                        .unwrap_or(true)
                });
                if let Some(b) = done {
                    log::info!(target: BUILDING,
                        "build {} of spec={:?} done{}",
                        b.id,
                        b.specification,
                        daemon_error
                            .map(|e| format!(" ({})", e.trim_end()))
                            .unwrap_or_default()
                    );
                }
                self.backoff.succeeded();
                // Otherwise nothing before the cursor can start now (no
                // build skipped, none that needs this one): the
                // scan goes on where it was (1,000 builds in a row then
                // cost one page read, not one each).
                if self.skipped_waiting || dependents {
                    self.restart();
                }
            }
            Input::Lost { slot, why } => {
                if let Some(b) = self.slots.get_mut(slot).and_then(Option::take)
                    && let Err(e) = env.db.reschedule(&[b.derivation])
                {
                    log::error!(target: BUILDING, "{e}");
                }
                let delay = self.backoff.failed();
                self.retry_at = Some(env.now + delay);
                log::error!(target: BUILDING, "{why}; retrying in {} s", delay.as_secs());
                if self.one_shot && self.backoff.failures() >= ONE_SHOT_DAEMON_TRIES {
                    self.failure = Some(why);
                }
                self.restart();
            }
            Input::Stop => {
                for (slot, b) in self.slots.iter_mut().enumerate() {
                    if b.take().is_some() {
                        self.commands.push_back(Command::Close { slot });
                    }
                }
                self.stopped = true;
            }
        }
        if !self.stopped {
            self.fill(env);
        }
    }

    fn restart(&mut self) {
        self.page.clear();
        self.cursor = None;
        self.exhausted = false;
        self.failed_in_scan = false;
        self.skipped_waiting = false;
    }

    /// Hands the next ready builds to free slots, in queue order.
    fn fill(&mut self, env: &mut Env) {
        self.more = false;
        if self.failure.is_some() {
            return;
        }
        match self.retry_at {
            Some(at) if env.now < at => return,
            Some(_) => self.retry_at = None,
            None => {}
        }
        let mut budget = SCAN_PER_TURN;
        while let Some(slot) = self.slots.iter().position(Option::is_none) {
            let Some((build, item)) = self.next_ready(env, &mut budget) else {
                break;
            };
            let limits = build.limits;
            self.commands.push_back(Command::Open {
                slot,
                build: build.id,
                spec: build.specification.clone(),
                item,
                limits,
            });
            self.slots[slot] = Some(build);
            self.heard[slot] = env.now;
        }
    }

    /// Closes the connections silent beyond their [`stall_limit`]: the
    /// build is scheduled again, or fails once it stalled
    /// [`STALLS_BEFORE_FAILING`] times.
    fn give_up_stalled(&mut self, env: &mut Env) {
        for slot in 0..self.slots.len() {
            let Some(limits) = self.slots[slot].as_ref().map(|b| b.limits) else {
                continue;
            };
            let limit = stall_limit(limits);
            if env.now < self.heard[slot] + limit {
                continue;
            }
            let b = self.slots[slot].take().expect("checked above");
            self.commands.push_back(Command::Close { slot });
            let stalls = self.stalls.entry(b.id).or_insert(0);
            *stalls += 1;
            let why = format!(
                "no word from guix-daemon for {} s ({})",
                limit.as_secs(),
                crate::build::describe_limits(limits)
            );
            if *stalls < STALLS_BEFORE_FAILING {
                log::warn!(target: BUILDING,
                    "build {} of spec={:?} in slot {slot}: {why}; connection closed, build scheduled again",
                    b.id,
                    b.specification
                );
                // Now, not at the loop's close: the scan that follows
                // must find it.
                if let Err(e) = env.db.reschedule(std::slice::from_ref(&b.derivation)) {
                    log::error!(target: BUILDING, "{e}");
                }
            } else {
                let reason = format!("{why}, {stalls} times: its daemon connection was closed");
                log::error!(target: BUILDING,
                    "build {} of spec={:?} in slot {slot} failed: {reason}",
                    b.id,
                    b.specification
                );
                self.stalls.remove(&b.id);
                // Written before the loop's close, which then finds it
                // no longer started and leaves it failed.
                let failed = Update::Finished {
                    derivation: b.derivation.clone(),
                    status: BuildStatus::FailedOther,
                    log: None,
                    reason: Some(reason),
                };
                if let Err(e) = env.db.record_statuses(&[], &[failed], env.unix_now) {
                    log::error!(target: BUILDING, "{e}");
                }
            }
            self.restart();
        }
    }

    /// The next build in queue order that may start, spending `budget`
    /// rows; sets `more` when the budget ran out first.
    fn next_ready(&mut self, env: &mut Env, budget: &mut usize) -> Option<(PendingBuild, Item)> {
        loop {
            if self.page.is_empty() {
                if self.exhausted && self.failed_in_scan {
                    // Dependents of builds failed in this scan were
                    // skipped as waiting: one more pass fails them too.
                    self.restart();
                }
                if self.exhausted {
                    return None;
                }
                if *budget == 0 {
                    self.more = true;
                    return None;
                }
                match env.db.dispatch_page(self.cursor, PAGE) {
                    Ok(page) => {
                        self.exhausted = page.len() < PAGE;
                        if let Some(last) = page.last() {
                            self.cursor = Some((last.rank, last.id));
                        }
                        self.page.extend(page);
                    }
                    Err(e) => {
                        log::error!(target: BUILDING, "{e}");
                        return None;
                    }
                }
                continue;
            }
            if *budget == 0 {
                self.more = true;
                return None;
            }
            *budget -= 1;
            let pending = self.page.pop_front()?;
            if let Some(ready) = self.consider(pending, env) {
                return Some(ready);
            }
        }
    }

    /// Whether `pending` starts now; records it as failed-dependency or
    /// canceled when it never can.
    fn consider(&mut self, pending: PendingBuild, env: &mut Env) -> Option<(PendingBuild, Item)> {
        let busy = self
            .slots
            .iter()
            .flatten()
            .any(|b| b.derivation == pending.derivation);
        if busy || !(env.may_start)(&pending.specification, pending.evaluation) {
            return None;
        }
        match env.db.readiness(pending.id) {
            Ok(Readiness::Ready) => {}
            Ok(Readiness::Gone) => return None,
            Ok(Readiness::Waiting { .. }) => {
                self.skipped_waiting = true;
                return None;
            }
            Ok(Readiness::InputFailed { input }) => {
                log::info!(target: BUILDING,
                    "build {} of spec={:?} failed-dependency: input build {input} failed",
                    pending.id,
                    pending.specification
                );
                if let Err(e) = env.db.fail_dependency(pending.id, input, env.unix_now) {
                    log::error!(target: BUILDING, "{e}");
                }
                self.failed_in_scan = true;
                return None;
            }
            Err(e) => {
                log::error!(target: BUILDING, "{e}");
                return None;
            }
        }
        // A derivation collected since evaluation cannot be built.
        let drv = (env.read_drv)(&pending.derivation)
            .ok()
            .and_then(|bytes| Derivation::parse(&bytes).ok());
        let Some(drv) = drv else {
            log::warn!(target: BUILDING,
                "build {} of spec={:?} canceled: {:?} no longer in the store",
                pending.id,
                pending.specification,
                pending.derivation
            );
            let canceled = [(pending.derivation.clone(), status::CANCELED, None)];
            if let Err(e) = env.db.finish_builds(&canceled, env.unix_now) {
                log::error!(target: BUILDING, "{e}");
            }
            return None;
        };
        let item = Item {
            outputs: drv.outputs.iter().map(|o| o.path.clone()).collect(),
            inputs: drv.input_drvs.iter().map(|(d, _)| d.clone()).collect(),
            derivation: pending.derivation.clone(),
        };
        Some((pending, item))
    }
}

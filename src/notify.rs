//! The notifier: which queued event goes to the notification command
//! when, as a sans-I/O machine.  It takes `now` and inputs (events found
//! queued in the database, a command's exit) and returns [`Command`]s
//! (look for events, run the command for an event, kill it, record an
//! attempt); the loop carries them out (`event_loop::notify`).
//!
//! Policy: events go in id order, at most `max_running` commands at once;
//! a command running longer than `timeout` is killed and the attempt
//! failed; a failed attempt is retried after `retry`, doubled at each
//! attempt up to [`MAX_BACKOFF`], and the event is given up after
//! `max_attempts`.  The queue lives in the database (`Events.delivery`),
//! so a restart loses nothing: what was queued is read again, its
//! attempts counted, and retried at once.

use crate::db::events::{EventView, kind};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often the database is asked for new events.
pub const FETCH_EVERY: Duration = Duration::from_secs(1);
/// Attempts at one event before it is given up (with `--notify-retry`
/// 30: over about 3 hours).
pub const MAX_ATTEMPTS: u32 = 10;
/// The most events held in memory; the rest wait in the database.
pub const MAX_HELD: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A command running longer is killed.
    pub timeout: Duration,
    /// Commands running at once, at most (at least 1).
    pub max_running: usize,
    /// The wait after a first failed attempt.
    pub retry: Duration,
    /// Attempts before an event is given up.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// Events queued in the database, ids above the last fetch's, oldest
    /// first: (id, attempts already made).
    Fetched(Vec<(i64, u32)>),
    /// The command for event `id` ended (`ok`: exit status 0), or could
    /// not be started (`ok` false, `reason` says why).
    Exited { id: i64, ok: bool, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read up to `limit` queued events with an id above `after`, and
    /// answer with [`Input::Fetched`].
    Fetch { after: i64, limit: usize },
    /// Run the notification command for event `id`.
    Spawn(i64),
    /// Kill the command of event `id` (its exit still comes as an input).
    Kill(i64),
    /// Record an attempt at event `id`: `error` None means delivered;
    /// `gave_up` means no retry follows.
    Record {
        id: i64,
        attempts: u32,
        error: Option<String>,
        gave_up: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    attempts: u32,
    due: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    attempts: u32,
    deadline: Instant,
    killed: bool,
}

#[derive(Debug)]
pub struct Notifier {
    settings: Settings,
    waiting: BTreeMap<i64, Waiting>,
    running: BTreeMap<i64, Running>,
    /// The highest id fetched: the next fetch starts after it.
    seen: i64,
    next_fetch: Instant,
    /// A fetch was asked for and its answer has not come.
    fetching: bool,
    commands: VecDeque<Command>,
}

impl Notifier {
    pub fn new(settings: Settings, now: Instant) -> Notifier {
        Notifier {
            settings: Settings {
                max_running: settings.max_running.max(1),
                max_attempts: settings.max_attempts.max(1),
                ..settings
            },
            waiting: BTreeMap::new(),
            running: BTreeMap::new(),
            seen: 0,
            next_fetch: now,
            fetching: false,
            commands: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Tick => {}
            Input::Fetched(events) => {
                self.fetching = false;
                for (id, attempts) in events {
                    self.seen = self.seen.max(id);
                    if !self.running.contains_key(&id) {
                        self.waiting.insert(id, Waiting { attempts, due: now });
                    }
                }
            }
            Input::Exited { id, ok, reason } => self.exited(id, ok, reason, now),
        }
        self.step(now);
    }

    fn exited(&mut self, id: i64, ok: bool, reason: String, now: Instant) {
        let Some(run) = self.running.remove(&id) else {
            return;
        };
        let attempts = run.attempts + 1;
        if ok && !run.killed {
            self.commands.push_back(Command::Record {
                id,
                attempts,
                error: None,
                gave_up: false,
            });
            return;
        }
        let error = match run.killed {
            true => format!("timed out after {} s", self.settings.timeout.as_secs()),
            false => reason,
        };
        let gave_up = attempts >= self.settings.max_attempts;
        if !gave_up {
            let due = now + self.backoff(attempts);
            self.waiting.insert(id, Waiting { attempts, due });
        }
        self.commands.push_back(Command::Record {
            id,
            attempts,
            error: Some(error),
            gave_up,
        });
    }

    /// The wait after `attempts` failed attempts: `retry`, doubled at
    /// each further one, at most [`MAX_BACKOFF`].
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.settings
            .retry
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }

    fn step(&mut self, now: Instant) {
        for (&id, run) in self.running.iter_mut() {
            if !run.killed && now >= run.deadline {
                run.killed = true;
                self.commands.push_back(Command::Kill(id));
            }
        }
        while self.running.len() < self.settings.max_running {
            let Some((&id, _)) = self.waiting.iter().find(|(_, w)| w.due <= now) else {
                break;
            };
            let w = self.waiting.remove(&id).unwrap();
            self.running.insert(
                id,
                Running {
                    attempts: w.attempts,
                    deadline: now + self.settings.timeout,
                    killed: false,
                },
            );
            self.commands.push_back(Command::Spawn(id));
        }
        if !self.fetching && now >= self.next_fetch && self.waiting.len() < MAX_HELD {
            self.fetching = true;
            self.next_fetch = now + FETCH_EVERY;
            self.commands.push_back(Command::Fetch {
                after: self.seen,
                limit: MAX_HELD - self.waiting.len(),
            });
        }
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When the machine next needs a [`Input::Tick`].
    pub fn poll_at(&self) -> Instant {
        let mut at = self.next_fetch;
        for w in self.waiting.values() {
            at = at.min(w.due);
        }
        for r in self.running.values().filter(|r| !r.killed) {
            at = at.min(r.deadline);
        }
        at
    }

    /// Nothing running and no first attempt waiting: what a one-shot run
    /// waits for before it exits (retries are left to the next run).
    pub fn settled(&self) -> bool {
        self.running.is_empty() && !self.fetching && self.waiting.values().all(|w| w.attempts > 0)
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Asks for a fetch at the next step, whatever the timer says (a
    /// one-shot run's work is done and its last events are in).
    pub fn fetch_soon(&mut self, now: Instant) {
        self.next_fetch = self.next_fetch.min(now);
    }
}

/// The page an event is about: its build's, or its evaluation's.
pub fn page_path(e: &EventView) -> String {
    match e.build {
        Some(b) => format!("/build/{b}/details"),
        None => format!("/eval/{}", e.evaluation),
    }
}

/// One line saying what happened, for a mail's subject or a feed entry's
/// title: `hello: job "test" newly failed (build 42)`.  Names from the
/// database are quoted with escapes, so the line stays one line.
pub fn summary(e: &EventView) -> String {
    let job = e.job_name.as_deref().unwrap_or("?");
    let build = e.build.map_or(0, |b| b.0);
    let what = match e.kind.as_str() {
        kind::NEW_FAILURE => format!("job {job:?} newly failed (build {build})"),
        kind::FIXED => format!("job {job:?} fixed (build {build})"),
        kind::EVALUATION_FAILED => format!("evaluation {} failed", e.evaluation),
        other => format!("{other:?} (evaluation {})", e.evaluation),
    };
    format!("{:?}: {what}", e.specification)
}

#[cfg(test)]
mod tests;

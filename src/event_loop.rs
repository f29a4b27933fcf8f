//! The single-threaded mio loop: the only driver of work.  It keeps the
//! tokens, buffers, children, daemon connections, signals and the clock;
//! it turns readiness into [`Input`]s for each specification's
//! [`Cycle`] and for the build queue's [`Dispatcher`], and carries out the
//! commands that come back.  No policy lives here: what a cycle does next
//! is decided in `cycle`, which build starts next in `queue`.

use crate::build::{self, Batch, Limits};
use crate::buildlog::{self, copy::Copier, live::LiveLogs};
use crate::child::{self, Proc};
use crate::cli::Config;
use crate::cycle::{Command, Cycle, Env, Input, Settings, State};
use crate::db::Db;
use crate::http_server::HttpServer;
use crate::logging;
use crate::queue::{self, Dispatcher};
use crate::signals::SignalPipe;
use mio::net::UnixStream;
use mio::{Events, Poll, Token};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

mod admin;
mod checkpoints;
mod children;
mod daemon;
mod notify;
mod reload;
mod roots;
mod upkeep;

const SIGNAL: Token = Token(0);
const HTTP_LISTENER: Token = Token(1);
const RELOAD_STDOUT: Token = Token(2);
const RELOAD_STDERR: Token = Token(3);
/// The daemon connection that registers GC roots.
const ROOTS_DAEMON: Token = Token(4);
/// HTTP connections take tokens from here up, far above the specs'.
const HTTP_CONN_BASE: usize = 1 << 20;
/// The dispatcher's daemon connections, one per slot, below HTTP's.
const DAEMON_TOKEN_BASE: usize = 1 << 19;
const SPEC_TOKEN_BASE: usize = 16;
const TOKENS_PER_SPEC: usize = 4;

/// A loop turn longer than this is logged, naming its slowest part.
const SLOW_TURN: Duration = Duration::from_millis(200);
/// The loop wakes at least this often to look for exited children.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// How often the loop looks for job names to index when it has none in
/// hand: a look costs a few statements, too many for every turn of a
/// server answering thousands of requests a second.
const NAME_INDEX_EVERY: Duration = Duration::from_secs(1);

/// What a readiness event is about: the closed set the loop handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Signal,
    Http,
    ReloadStdout,
    ReloadStderr,
    Roots,
    ChildStdout(usize),
    ChildStderr(usize),
    Daemon(usize),
    /// A notification command's pipes, by its place.
    NotifyStdout(usize),
    NotifyStderr(usize),
    Unknown,
}

impl Event {
    fn of(token: Token, http: Option<&HttpServer>) -> Event {
        if http.is_some_and(|h| h.owns(token)) {
            return Event::Http;
        }
        match token {
            SIGNAL => return Event::Signal,
            RELOAD_STDOUT => return Event::ReloadStdout,
            RELOAD_STDERR => return Event::ReloadStderr,
            ROOTS_DAEMON => return Event::Roots,
            _ => {}
        }
        if let Some(slot) = token.0.checked_sub(DAEMON_TOKEN_BASE) {
            return match token.0 < HTTP_CONN_BASE {
                true => Event::Daemon(slot),
                false => Event::Unknown,
            };
        }
        if let Some(offset) = token.0.checked_sub(notify::NOTIFY_TOKEN_BASE) {
            return match offset % 2 {
                0 => Event::NotifyStdout(offset / 2),
                _ => Event::NotifyStderr(offset / 2),
            };
        }
        let Some(offset) = token.0.checked_sub(SPEC_TOKEN_BASE) else {
            return Event::Unknown;
        };
        let index = offset / TOKENS_PER_SPEC;
        match offset % TOKENS_PER_SPEC {
            0 => Event::ChildStdout(index),
            1 => Event::ChildStderr(index),
            _ => Event::Unknown,
        }
    }

    fn token(self) -> Token {
        let spec =
            |index: usize, which: usize| Token(SPEC_TOKEN_BASE + index * TOKENS_PER_SPEC + which);
        match self {
            Event::ChildStdout(i) => spec(i, 0),
            Event::ChildStderr(i) => spec(i, 1),
            Event::Daemon(slot) => Token(DAEMON_TOKEN_BASE + slot),
            Event::Signal => SIGNAL,
            Event::ReloadStdout => RELOAD_STDOUT,
            Event::ReloadStderr => RELOAD_STDERR,
            Event::NotifyStdout(p) => Token(notify::NOTIFY_TOKEN_BASE + 2 * p),
            Event::NotifyStderr(p) => Token(notify::NOTIFY_TOKEN_BASE + 2 * p + 1),
            Event::Roots => ROOTS_DAEMON,
            Event::Http | Event::Unknown => Token(usize::MAX),
        }
    }

    /// How the slow-turn warning names it.
    fn describe(self, slots: &[Slot]) -> String {
        let spec = |i: usize| {
            slots
                .get(i)
                .map_or("?".into(), |s| format!("{:?}", s.cycle.spec.name))
        };
        match self {
            Event::Signal => "signals".into(),
            Event::Http => "an HTTP connection".into(),
            Event::ReloadStdout | Event::ReloadStderr => "re-reading the specifications".into(),
            Event::Roots => "the GC roots' daemon connection".into(),
            Event::ChildStdout(i) | Event::ChildStderr(i) => {
                format!("spec={} child output", spec(i))
            }
            Event::Daemon(slot) => format!("build slot {slot}'s daemon connection"),
            Event::NotifyStdout(_) | Event::NotifyStderr(_) => "a notification command".into(),
            Event::Unknown => "an unknown token".into(),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Which child a spec runs; the cycle's state says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fetch,
    Compile,
    Evaluate,
}

impl Step {
    fn label(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::Compile => "compile",
            Step::Evaluate => "evaluator",
        }
    }

    /// The log target of the child's lines.
    fn target(self) -> &'static str {
        match self {
            Step::Fetch => logging::FETCH,
            Step::Compile => logging::COMPILE,
            Step::Evaluate => logging::EVALUATION,
        }
    }
}

/// A spec's running child and what it printed that the cycle needs whole.
struct Running {
    step: Step,
    proc: Proc,
    /// The fetch child's stdout (one line: the commit).
    stdout: String,
}

/// A slot's daemon connection.  It stays open from one build request to
/// the next of the same limit class, so that the handshake, set-options
/// and the daemon's worker process (a fork per connection) are paid once
/// per connection, not per build.
struct Conn {
    stream: UnixStream,
    /// The request in flight, or the connection waiting for the next.
    work: Work,
    /// The limits its set-options carried: a build of another class
    /// needs a new connection (an absent limit is the daemon's own, which
    /// only a fresh worker has).
    limits: Limits,
    /// Requests it carried; see [`REQUESTS_PER_CONNECTION`].
    requests: usize,
    /// The daemon closed it: it carries no more requests.
    eof: bool,
    wants_write: bool,
    /// The turn's read cap stopped reading before `WouldBlock`: mio will
    /// not tell again, so the next turn reads on.
    more: bool,
    /// When its last request ended, while it waits for the next; closed
    /// after [`IDLE_CONNECTION`].
    idle_since: Option<Instant>,
}

enum Work {
    Building(Box<Batch>),
    Idle(crate::wire::Client),
}

impl Work {
    fn client(&self) -> &crate::wire::Client {
        match self {
            Work::Building(b) => &b.client,
            Work::Idle(c) => c,
        }
    }

    fn client_mut(&mut self) -> &mut crate::wire::Client {
        match self {
            Work::Building(b) => &mut b.client,
            Work::Idle(c) => c,
        }
    }

    fn batch(&self) -> Option<&Batch> {
        match self {
            Work::Building(b) => Some(b),
            Work::Idle(_) => None,
        }
    }
}

/// Build requests one connection carries at most.  guix-daemon's worker
/// keeps the outputs it built as temporary GC roots until its connection
/// closes: a fresh connection now and then lets `guix gc` collect them
/// (a batch of 200 builds held them as long).
const REQUESTS_PER_CONNECTION: usize = 200;

/// How long a slot's connection waits for its next request before it is
/// closed, for the same reason: the daemon's temporary roots on what the
/// last builds used and made go with it, so that `guix gc` may collect a
/// failed build's `.drv` once cuirass's own root on it is gone.
const IDLE_CONNECTION: Duration = Duration::from_secs(2);

/// After this long without an event the loop hands SQLite's page cache
/// (up to 16 MiB, filled by start-up's scans or a burst of requests) and
/// the allocator's free pages back to the system: an idle cuirass stays
/// small, a busy one keeps its cache.
const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Status changes wait this long at most before they are written, so that
/// a turn's (or a few turns') changes go in one transaction; a request's
/// end, a lost connection and an HTTP request write them at once.
const WRITE_DELAY: Duration = Duration::from_millis(50);
/// How long status changes that could not be written wait before the
/// next try: long enough not to fill the log with the same error.
const WRITE_RETRY: Duration = Duration::from_secs(1);

impl Unwritten {
    /// When the gathered status changes are to be written, if any are.
    fn due(&self) -> Option<Instant> {
        let since = self.since?;
        Some((since + WRITE_DELAY).max(self.retry_at.unwrap_or(since)))
    }
}

/// Status changes not yet written: see [`WRITE_DELAY`].
#[derive(Default)]
struct Unwritten {
    /// Builds handed to the daemon.
    dispatched: Vec<crate::db::BuildId>,
    updates: Vec<build::Update>,
    /// When each of `updates` was read (Unix seconds): the times written.
    read_at: Vec<i64>,
    since: Option<Instant>,
    /// After a write that failed (a full disk), not again before this:
    /// the changes are kept, and retried, rather than lost.
    retry_at: Option<Instant>,
    /// Logs of finished builds, copied once their request has ended:
    /// guix-daemon reports a build killed at its timeout before it has
    /// finished writing (and compressing) its log.
    copies: Vec<crate::db::Logged>,
}

/// One specification: its machine and the I/O the loop keeps for it.
struct Slot {
    cycle: Cycle,
    child: Option<Running>,
}

pub struct EventLoop {
    config: Config,
    db: Db,
    poll: Poll,
    signals: SignalPipe,
    slots: Vec<Slot>,
    /// Every spec's builds, in queue order, and their connections.
    dispatcher: Dispatcher,
    conns: Vec<Option<Conn>>,
    unwritten: Unwritten,
    evaluator_script: PathBuf,
    /// The job file of record specs.
    build_types: PathBuf,
    stopping: bool,
    next_status_log: Instant,
    /// When the last event came; see [`RELEASE_AFTER`].
    last_event: Instant,
    /// Memory was handed back since the last event.
    released: bool,
    http: Option<HttpServer>,
    reload: Option<reload::Reload>,
    logs: buildlog::Places,
    /// Per-build log copies, a chunk per turn.
    copier: Copier,
    /// Running builds' output, as it arrives.
    live: LiveLogs,
    /// Notification commands, with `--notify-command`.
    notify: Option<notify::Notify>,
    /// GC roots and the retention of old evaluations.
    roots: roots::Roots,
    /// Job names wait to be added to the search index.
    names_behind: bool,
    /// Registered builds' index entries wait to move to the large
    /// indexes (see [`crate::db::fresh`]), and since when.
    fresh_behind: Option<Instant>,
    /// How many builds' entries this run of the merge moved.
    fresh_merged: usize,
    /// An evaluation's superseded builds may wait to be canceled (see
    /// [`crate::db::supersede`]), and since when.
    superseding: Option<Instant>,
    /// The evaluations whose superseded builds wait to be canceled, with
    /// their specs: older evaluations' builds of those specs do not start
    /// meanwhile (they head the queue, and would be in flight, so spared,
    /// before their page came).
    superseding_evaluations: Vec<(String, crate::db::EvalId)>,
    /// The child that checkpoints the database's log.
    checkpoints: checkpoints::Checkpoints,
    /// Builds finished before weathers were kept still lack theirs; see
    /// [`crate::db::backfill`].
    weathers_behind: bool,
    /// When the weather backfill last said how far it got.
    backfill_logged: Instant,
    /// This run computed some.
    backfilled: bool,
    next_name_index: Instant,
}

/// Ends cuirass with an error message (one-shot) or is logged (daemon).
pub type Fatal = String;

impl EventLoop {
    pub fn new(config: Config, mut db: Db) -> Result<EventLoop, Fatal> {
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let signals = SignalPipe::install(poll.registry(), SIGNAL)
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let evaluator_script = write_evaluator_script(&config, "evaluate", EVALUATOR_SCRIPT)?;
        let build_types = write_evaluator_script(&config, "build-types", BUILD_TYPES_SCRIPT)?;
        let now = Instant::now();
        let specs = db.specifications().map_err(|e| e.to_string())?;
        let inactive = db.inactive_specifications().map_err(|e| e.to_string())?;
        let specs: Vec<_> = specs
            .into_iter()
            .filter(|s| usable_name(&s.name) && !inactive.contains(&s.name))
            .collect();
        std::fs::create_dir_all(&config.log_dir).map_err(|e| {
            format!(
                "cannot create the log directory {}: {e}",
                config.log_dir.display()
            )
        })?;
        let logs = buildlog::Places::new(buildlog::DAEMON_LOG_ROOT, &config.log_dir);
        let notify = config
            .notify_command
            .clone()
            .map(|command| notify::Notify::new(&config, command, now));
        db.set_notifying(notify.is_some());
        let roots = roots::Roots::new(&config, now)?;
        let http = match config.one_shot {
            true => None,
            false => Some(
                HttpServer::bind(
                    &config.listen,
                    config.port,
                    poll.registry(),
                    HTTP_LISTENER,
                    HTTP_CONN_BASE,
                    logs.clone(),
                    admin::load_auth(&config)?,
                )?
                .with_base_url(&config.base_url),
            ),
        };
        let dispatcher = Dispatcher::new(config.max_builds, config.one_shot);
        let conns = (0..dispatcher.slots()).map(|_| None).collect();
        let mut event_loop = EventLoop {
            dispatcher,
            conns,
            unwritten: Unwritten::default(),
            config,
            db,
            poll,
            signals,
            slots: Vec::new(),
            evaluator_script,
            build_types,
            stopping: false,
            next_status_log: now + STATUS_EVERY,
            last_event: now,
            released: false,
            http,
            reload: None,
            copier: Copier::new(logs.clone()),
            live: LiveLogs::new(logs.clone()),
            logs,
            notify,
            roots,
            names_behind: true,
            fresh_behind: Some(now),
            fresh_merged: 0,
            superseding: Some(now),
            superseding_evaluations: Vec::new(),
            checkpoints: checkpoints::Checkpoints::new(now),
            weathers_behind: true,
            backfill_logged: now,
            backfilled: false,
            next_name_index: now,
        };
        event_loop.reload_superseding(now);
        for spec in specs {
            event_loop.add_slot(spec, now);
        }
        Ok(event_loop)
    }

    fn add_slot(&mut self, spec: crate::spec::Specification, now: Instant) {
        let settings = Settings {
            interval: Duration::from_secs(self.config.interval_secs),
            fetch_timeout: Duration::from_secs(self.config.fetch_timeout_secs),
            compile_timeout: Duration::from_secs(self.config.fetch_timeout_secs),
            evaluation_timeout: Duration::from_secs(self.config.evaluation_timeout_secs),
            one_shot: self.config.one_shot,
            build_types: self.build_types.clone(),
            checkout: self.config.cache_dir.join(&spec.name),
            load_path: self.config.load_path.clone(),
        };
        self.slots.push(Slot {
            cycle: Cycle::new(spec, settings, now),
            child: None,
        });
    }

    /// Runs until one-shot work is done or a signal asks to stop.  In
    /// one-shot mode, a spec whose work could not be done for a reason
    /// that is not its commit's (unreachable remote, missing branch, no
    /// daemon) makes the run fail, naming it.
    pub fn run(mut self) -> Result<(), Fatal> {
        self.recover()?;
        if self.slots.is_empty() {
            log::warn!("no specifications in the database (add some with -S)");
        }
        let mut events = Events::with_capacity(256);
        loop {
            let turn = Instant::now();
            let mut slowest = (Duration::ZERO, String::new());
            self.advance(turn);
            let advancing = turn.elapsed();
            note_slowest(&mut slowest, advancing, || {
                "settling children, batches and timers".into()
            });
            if self.stopping {
                self.stop_all();
                break;
            }
            if self.config.one_shot
                && self.dispatcher.is_idle()
                && self.slots.iter().all(|s| s.cycle.is_finished())
            {
                // No build is left to end: the last roots need not wait
                // for company.
                self.roots.planner.flush();
                if !self.copier.busy() && !self.roots.busy() && self.notify_settled(turn) {
                    break;
                }
            }
            let timeout = self
                .next_wakeup(turn)
                .saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout.min(MAX_SLEEP))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("event loop: {e}")),
            }
            let woke = Instant::now();
            if !events.is_empty() {
                self.last_event = woke;
                self.released = false;
            } else if !self.released && woke >= self.last_event + RELEASE_AFTER {
                self.released = true;
                self.db.release_memory();
            }
            for event in events.iter() {
                let started = Instant::now();
                let kind = Event::of(event.token(), self.http.as_ref());
                self.dispatch(kind, event);
                note_slowest(&mut slowest, started.elapsed(), || {
                    kind.describe(&self.slots)
                });
            }
            self.db.end_reads();
            // The wait in poll is not work: only what the turn did counts.
            let took = advancing + woke.elapsed();
            if took > SLOW_TURN {
                log::warn!(
                    "slow loop turn: {} ms, {} ms of it {}",
                    took.as_millis(),
                    slowest.0.as_millis(),
                    slowest.1
                );
            }
        }
        self.shutdown();
        let mut failures: Vec<String> = self
            .slots
            .iter()
            .filter_map(|s| {
                s.cycle
                    .failure()
                    .map(|f| format!("spec {:?}: {f}", s.cycle.spec.name))
            })
            .collect();
        if let Some(f) = self.dispatcher.failure() {
            failures.push(format!("builds: {f}"));
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(failures.join("; ")),
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

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut next = now + MAX_SLEEP;
        for slot in &self.slots {
            if let Some(at) = slot.cycle.poll_at() {
                next = next.min(at);
            }
            if slot
                .child
                .as_ref()
                .is_some_and(|c| c.proc.wants_read() != (false, false))
            {
                return now;
            }
        }
        if self.conns.iter().flatten().any(|c| c.more) {
            return now;
        }
        for since in self.conns.iter().flatten().filter_map(|c| c.idle_since) {
            next = next.min(since + IDLE_CONNECTION);
        }
        if let Some(due) = self.unwritten.due() {
            next = next.min(due);
        }
        if !self.released {
            next = next.min(self.last_event + RELEASE_AFTER);
        }
        if let Some(at) = self.dispatcher.poll_at(now) {
            next = next.min(at);
        }
        if let Some(at) = self.http.as_ref().and_then(HttpServer::poll_at) {
            next = next.min(at);
        }
        if let Some(at) = self.reload.as_ref().map(reload::Reload::deadline) {
            next = next.min(at);
        }
        if let Some(at) = self.checkpoints.due() {
            next = next.min(at);
        }
        if let Some(n) = self.notify.as_ref() {
            if n.wants_read() {
                return now;
            }
            next = next.min(n.poll_at());
        }
        if self.copier.busy()
            || self.roots.has_work()
            || self.names_behind
            || self.fresh_behind.is_some()
            || self.superseding.is_some()
            || self.weathers_behind
        {
            return now;
        }
        next.max(now)
    }

    fn dispatch(&mut self, kind: Event, event: &mio::event::Event) {
        // Only HTTP requests share the turn's read transaction.
        if !matches!(kind, Event::Http) {
            self.db.end_reads();
        }
        match kind {
            Event::Http => {
                // Requests see every status the loop knows of.
                if self.unwritten.since.is_some() {
                    self.db.end_reads();
                    self.write_statuses();
                }
                // The turn's requests share one read transaction (see
                // `db::read_batch`); a write request ends it.
                self.db.begin_reads();
                if let Some(http) = self.http.as_mut() {
                    http.handle(self.poll.registry(), event, &mut self.db, Instant::now());
                }
                self.apply_effects(Instant::now());
            }
            Event::Signal => {
                for sig in self.signals.drain() {
                    self.on_signal(sig);
                }
            }
            Event::ReloadStdout | Event::ReloadStderr => self.reload_output(),
            Event::Roots => self.roots_io(),
            // While a read stopped at the cap, `advance` reads the rest a
            // cap a turn; reading here too would double the turn's work.
            Event::ChildStdout(i) if i < self.slots.len() && !self.stdout_pending(i) => {
                self.child_stdout(i)
            }
            Event::ChildStderr(i) if i < self.slots.len() => self.child_stderr(i),
            Event::Daemon(slot) if slot < self.conns.len() => self.daemon_io(slot),
            Event::NotifyStdout(p) | Event::NotifyStderr(p) => self.notify_output(p),
            _ => {}
        }
    }

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGINT | libc::SIGTERM => {
                log::info!("signal {sig}: stopping");
                self.stopping = true;
            }
            libc::SIGHUP => {
                self.reload_auth();
                self.start_reload();
            }
            // Exits are noticed by `advance`, which looks at every child.
            _ => {}
        }
    }

    /// Feeds one input to a spec's cycle and carries out its commands.
    fn feed(&mut self, index: usize, input: Input, now: Instant) {
        let socket = &self.config.daemon_socket;
        let daemon = || {
            // Connecting to a Unix socket does not block.
            std::os::unix::net::UnixStream::connect(socket)
                .map(drop)
                .map_err(|e| format!("cannot connect to guix-daemon at {}: {e}", socket.display()))
        };
        let read_drv = |path: &str| std::fs::read(path);
        let in_flight = self.dispatcher.in_flight_derivations();
        let mut env = Env {
            now,
            unix_now: unix_now(),
            db: &mut self.db,
            read_drv: &read_drv,
            file_size: &|path: &str| std::fs::metadata(path).ok().map(|m| m.len()),
            daemon: &daemon,
            in_flight: &in_flight,
        };
        self.slots[index].cycle.handle(input, &mut env);
        while let Some(command) = self.slots[index].cycle.poll_command() {
            self.execute(index, command, now);
        }
    }

    /// Feeds one input to the dispatcher and carries out its commands.
    fn feed_dispatcher(&mut self, input: queue::Input, now: Instant) {
        let read_drv = |path: &str| std::fs::read(path);
        let slots = &self.slots;
        let superseding = &self.superseding_evaluations;
        // A live cycle of an active spec: a stopped one is a tombstone.
        let may_start = |spec: &str, eval| {
            slots.iter().any(|s| {
                s.cycle.spec.name == spec
                    && s.cycle.spec.is_active()
                    && !matches!(s.cycle.state(), State::Stopped)
            }) && !crate::db::supersede::may_be_superseded(superseding, spec, eval)
        };
        let mut env = queue::Env {
            now,
            unix_now: unix_now(),
            db: &mut self.db,
            read_drv: &read_drv,
            may_start: &may_start,
        };
        self.dispatcher.handle(input, &mut env);
        while let Some(command) = self.dispatcher.poll_command() {
            match command {
                queue::Command::Open {
                    slot,
                    build,
                    spec,
                    item,
                    limits,
                } => self.open_batch(slot, (build, &spec), item, limits, now),
                queue::Command::Close { slot } => self.close_batch(slot),
            }
        }
    }

    fn execute(&mut self, index: usize, command: Command, now: Instant) {
        match command {
            Command::SpawnFetch(target) => self.spawn_fetch(index, &target, now),
            Command::SpawnCompile => self.spawn_compile(index, now),
            Command::SpawnEvaluator {
                arguments,
                time_machine,
            } => self.spawn_evaluator(index, &arguments, time_machine.as_deref(), now),
            Command::KillChild => {
                if let Some(child) = self.slots[index].child.as_mut() {
                    child.proc.kill();
                }
            }
            Command::QueueChanged => {
                // An evaluation closed, perhaps, superseding builds.
                self.reload_superseding(now);
                self.feed_dispatcher(queue::Input::Changed, now)
            }
        }
    }

    /// Settles whatever finished and ticks every cycle.
    fn advance(&mut self, now: Instant) {
        if let Some(http) = self.http.as_mut() {
            http.tick(self.poll.registry(), &mut self.db, now);
        }
        self.apply_effects(now);
        self.reap_reload(now);
        self.checkpoints_turn(now);
        self.fit_checkpoints(now);
        self.copier.step();
        self.roots_turn(now);
        if self.names_behind || now >= self.next_name_index {
            self.next_name_index = now + NAME_INDEX_EVERY;
            self.index_job_names();
            // A seek, where an idle merge would open a write transaction.
            if self.db.any_fresh().unwrap_or(true) {
                self.fresh_behind.get_or_insert(now);
            }
            // Superseding that failed a page is tried again.
            if self.superseding.is_none() {
                self.reload_superseding(now);
            }
        }
        if self.fresh_behind.is_some() {
            self.merge_fresh(now);
        }
        if self.superseding.is_some() {
            self.supersede(now);
        }
        if self.weathers_behind {
            self.backfill_weathers(now);
        }
        for index in 0..self.slots.len() {
            self.read_leftovers(index);
            self.reap_child(index, now);
            if !self.stopping {
                self.feed(index, Input::Tick, now);
            }
        }
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.more) {
                self.daemon_io(slot);
            }
            self.settle_batch(slot, now);
            if self.conns[slot]
                .as_ref()
                .and_then(|c| c.idle_since)
                .is_some_and(|t| now >= t + IDLE_CONNECTION)
            {
                self.drop_idle(slot);
            }
        }
        if !self.stopping {
            self.feed_dispatcher(queue::Input::Tick, now);
            self.notify_advance(now);
        }
        if self.unwritten.due().is_some_and(|t| now >= t) {
            self.write_statuses();
        }
        if now >= self.next_status_log {
            self.next_status_log = now + STATUS_EVERY;
            self.log_status();
        }
    }

    fn log_status(&self) {
        let mut by_state = std::collections::BTreeMap::new();
        for slot in &self.slots {
            *by_state.entry(slot.cycle.state().name()).or_insert(0) += 1;
        }
        let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let running = self.dispatcher.running();
        let today = self.db.evaluations_since(unix_now() - 86_400).unwrap_or(0);
        log::info!(
            "status: specs {} ({}), builds running {running}, evaluations in 24h {today}",
            self.slots.len(),
            states.join(", ")
        );
    }

    /// Every cycle is told to stop: children are killed, half-registered
    /// evaluations rolled back; builds in flight are dropped.
    fn stop_all(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            self.feed(index, Input::Stop, now);
        }
        self.feed_dispatcher(queue::Input::Stop, now);
    }

    /// Waits for killed children and puts in-flight builds back to
    /// `scheduled`.
    fn shutdown(&mut self) {
        self.write_statuses();
        for slot in &mut self.slots {
            if let Some(mut child) = slot.child.take() {
                child.proc.kill();
                let _ = child.proc.child.wait();
            }
        }
        self.conns.iter_mut().for_each(|c| *c = None);
        if let Some(reload) = self.reload.take() {
            reload.kill();
        }
        self.stop_checkpoints();
        self.notify_shutdown();
        match self.db.reset_started_builds() {
            Ok(n) if n > 0 => log::info!("{n} in-flight build(s) rescheduled for next time"),
            Ok(_) => {}
            Err(e) => log::error!("{e}"),
        }
    }
}

fn note_slowest(slowest: &mut (Duration, String), took: Duration, what: impl FnOnce() -> String) {
    if took > slowest.0 {
        *slowest = (took, what());
    }
}

/// Whether a spec is in the state whose child runs.
fn step_of(state: &State) -> Option<Step> {
    match state {
        State::Fetching { .. } => Some(Step::Fetch),
        State::Compiling { .. } => Some(Step::Compile),
        State::Evaluating(_) => Some(Step::Evaluate),
        State::Idle | State::Stopped => None,
    }
}

fn write_evaluator_script(config: &Config, name: &str, text: &str) -> Result<PathBuf, Fatal> {
    let dir = config.cache_dir.join(".cuirass");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the cache directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}-{}.scm", std::process::id()));
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Spec files refuse such names, but a database written by the original
/// or an earlier version may hold one: its history stays served, but it
/// is not polled, since its name would be a cache directory.
fn usable_name(name: &str) -> bool {
    match crate::spec::check_name(name) {
        Ok(()) => true,
        Err(why) => {
            log::error!(target: logging::SPEC, "spec={name:?} not polled: invalid name: {why}");
            false
        }
    }
}

pub const EVALUATOR_SCRIPT: &str = include_str!("evaluate.scm");
/// The job file of `specification` records: what each build type means.
pub const BUILD_TYPES_SCRIPT: &str = include_str!("build-types.scm");

pub use crate::cycle::evaluator_arguments;

/// The options a batch's connection sets: ours, and its limit class.
fn batch_options(config: &Config, limits: build::Limits) -> crate::wire::BuildOptions {
    build::build_options(
        config.use_substitutes,
        config.fallback,
        config.offload,
        limits,
    )
}

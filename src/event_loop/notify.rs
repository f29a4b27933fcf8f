//! Notification commands as children of the loop: the [`Notifier`]
//! decides, this carries its commands out (read the queue, run `sh -c
//! COMMAND` with an event's JSON on its standard input, kill it, record
//! the attempt) and turns exits into its inputs.  Nothing here waits: the
//! event is written into the pipe before the child starts.

use super::*;
use crate::db::events::EventView;
use crate::notify::{Command as Order, Input as NotifyInput, Notifier};
use std::collections::BTreeMap;
use std::process::{Command as Process, Stdio};

/// Tokens of notification children: two a place (stdout, stderr), far
/// above the specs' and below the HTTP connections'.
pub(super) const NOTIFY_TOKEN_BASE: usize = 1 << 18;

/// A notification command running for an event.
struct Sending {
    /// Its place, which gives its tokens.
    place: usize,
    proc: Proc,
    label: String,
}

pub(super) struct Notify {
    machine: Notifier,
    command: String,
    base_url: String,
    sending: BTreeMap<i64, Sending>,
    /// Places not in use.
    free: Vec<usize>,
}

impl Notify {
    pub(super) fn new(config: &Config, command: String, now: Instant) -> Notify {
        let n = config.notify.max_running.max(1);
        Notify {
            machine: Notifier::new(config.notify, now),
            command,
            base_url: config.base_url.clone(),
            sending: BTreeMap::new(),
            free: (0..n).rev().collect(),
        }
    }

    pub(super) fn poll_at(&self) -> Instant {
        self.machine.poll_at()
    }

    /// A pipe has bytes left over from a capped read.
    pub(super) fn wants_read(&self) -> bool {
        self.sending
            .values()
            .any(|s| s.proc.wants_read() != (false, false))
    }

    fn place_of(&self, place: usize) -> Option<i64> {
        self.sending
            .iter()
            .find(|(_, s)| s.place == place)
            .map(|(&id, _)| id)
    }
}

/// What a command sees besides its standard input: the event's main
/// fields, and the first `email` notification of its specification, so
/// that a shell script can mail without parsing JSON.
fn environment(e: &EventView, base_url: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CUIRASS_EVENT_ID", e.id.to_string()),
        ("CUIRASS_EVENT_KIND", e.kind.clone()),
        ("CUIRASS_EVENT_SPECIFICATION", e.specification.clone()),
        (
            "CUIRASS_EVENT_URL",
            format!("{base_url}{}", crate::notify::page_path(e)),
        ),
        ("CUIRASS_EVENT_SUMMARY", crate::notify::summary(e)),
    ];
    let email = e
        .record
        .as_deref()
        .and_then(|t| crate::spec::record::from_text(t).ok())
        .and_then(|s| s.record)
        .and_then(|r| r.emails().into_iter().next());
    if let Some(m) = email {
        for (name, value) in [
            ("CUIRASS_EMAIL_FROM", m.from),
            ("CUIRASS_EMAIL_TO", m.to),
            ("CUIRASS_EMAIL_SERVER", m.server),
        ] {
            if let Some(v) = value {
                env.push((name, v));
            }
        }
    }
    env
}

/// A pipe whose read end holds `bytes`, all of them, or an error: the
/// write end is non-blocking and closed before the child starts.
fn filled_pipe(bytes: &[u8]) -> io::Result<std::io::PipeReader> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let (reader, mut writer) = std::io::pipe()?;
    let fd = writer.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ is best effort
    // (events are a few KiB; the default 64 KiB is plenty).
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    writer.write_all(bytes)?;
    Ok(reader)
}

impl EventLoop {
    /// Reads a notification child's pipes; its lines are logged.
    pub(super) fn notify_output(&mut self, place: usize) {
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        let Some(id) = n.place_of(place) else {
            return;
        };
        let s = n.sending.get_mut(&id).unwrap();
        let registry = self.poll.registry();
        let label = &s.label;
        s.proc.read_stdout(registry, |l| {
            log::info!(target: logging::NOTIFY, "{label}: {}", String::from_utf8_lossy(l));
        });
        s.proc.read_stderr(registry, logging::NOTIFY, label);
    }

    /// Settles exited commands and ticks the notifier.
    pub(super) fn notify_advance(&mut self, now: Instant) {
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        let places: Vec<usize> = n
            .sending
            .values()
            .filter(|s| s.proc.wants_read() != (false, false))
            .map(|s| s.place)
            .collect();
        for place in places {
            self.notify_output(place);
        }
        let n = self.notify.as_mut().unwrap();
        let mut exited = Vec::new();
        for (&id, s) in n.sending.iter_mut() {
            if let Some(status) = s.proc.poll_exit() {
                // As with a spec's child: once killed, the exit is enough.
                if s.proc.pipes_closed() || s.proc.killed {
                    exited.push((id, status.success(), s.proc.failure_reason()));
                }
            }
        }
        for &(id, ..) in &exited {
            let s = n.sending.remove(&id).unwrap();
            n.free.push(s.place);
        }
        for (id, ok, reason) in exited {
            self.notify_feed(NotifyInput::Exited { id, ok, reason }, now);
        }
        self.notify_feed(NotifyInput::Tick, now);
    }

    fn notify_feed(&mut self, input: NotifyInput, now: Instant) {
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        n.machine.handle(input, now);
        while let Some(order) = self.notify.as_mut().and_then(|n| n.machine.poll_command()) {
            self.notify_execute(order, now);
        }
    }

    fn notify_execute(&mut self, order: Order, now: Instant) {
        match order {
            Order::Fetch { after, limit } => {
                let found = match self.db.queued_events(after, limit) {
                    Ok(found) => found,
                    Err(e) => {
                        log::error!(target: logging::NOTIFY, "notify: {e}");
                        Vec::new()
                    }
                };
                self.notify_feed(NotifyInput::Fetched(found), now);
            }
            Order::Spawn(id) => {
                if let Err(reason) = self.notify_spawn(id) {
                    let input = NotifyInput::Exited {
                        id,
                        ok: false,
                        reason,
                    };
                    self.notify_feed(input, now);
                }
            }
            Order::Kill(id) => {
                if let Some(s) = self.notify.as_mut().and_then(|n| n.sending.get_mut(&id)) {
                    s.proc.kill();
                }
            }
            Order::Record {
                id,
                attempts,
                error,
                gave_up,
            } => self.notify_record(id, attempts, error, gave_up),
        }
    }

    fn notify_spawn(&mut self, id: i64) -> Result<(), String> {
        let n = self.notify.as_mut().unwrap();
        let event = match self.db.event(id) {
            Ok(Some(e)) => e,
            Ok(None) => return Err("the event is no longer in the database".into()),
            Err(e) => return Err(e.to_string()),
        };
        let place = n.free.pop().ok_or("no free place (a bug)")?;
        let label = format!(
            "notify event {id} ({}, spec={:?})",
            event.kind, event.specification
        );
        let stdin = filled_pipe(&crate::api::events::event_bytes(&event, &n.base_url))
            .map_err(|e| format!("cannot write the event into a pipe: {e}"));
        let spawned = stdin.and_then(|stdin| {
            let mut cmd = Process::new("/bin/sh");
            cmd.arg("-c").arg(&n.command);
            cmd.envs(environment(&event, &n.base_url));
            let token = |k: usize| Token(NOTIFY_TOKEN_BASE + 2 * place + k);
            child::spawn_with_stdin(
                cmd,
                Stdio::from(stdin),
                self.poll.registry(),
                token(0),
                token(1),
            )
            .map_err(|e| format!("cannot start the notification command: {e}"))
        });
        match spawned {
            Ok(proc) => {
                log::debug!(target: logging::NOTIFY, "{label}: started");
                n.sending.insert(id, Sending { place, proc, label });
                Ok(())
            }
            Err(why) => {
                n.free.push(place);
                Err(why)
            }
        }
    }

    fn notify_record(&mut self, id: i64, attempts: u32, error: Option<String>, gave_up: bool) {
        if let Err(e) = self
            .db
            .event_attempted(id, attempts, error.as_deref(), gave_up)
        {
            log::error!(target: logging::NOTIFY, "notify event {id}: {e}");
        }
        match (error, gave_up) {
            (None, _) => {
                log::info!(target: logging::NOTIFY, "notify event {id}: delivered (attempt {attempts})")
            }
            (Some(why), false) => {
                let wait = self
                    .notify
                    .as_ref()
                    .map_or(Duration::ZERO, |n| n.machine.backoff(attempts));
                log::warn!(target: logging::NOTIFY,
                    "notify event {id}: attempt {attempts} failed: {why}; retry in {} s",
                    wait.as_secs()
                );
            }
            (Some(why), true) => log::error!(target: logging::NOTIFY,
                "notify event {id}: attempt {attempts} failed: {why}; given up"
            ),
        }
    }

    /// One-shot: whether the events of the run have been sent (first
    /// attempts; retries are left queued for the next run).
    pub(super) fn notify_settled(&mut self, now: Instant) -> bool {
        let Some(n) = self.notify.as_mut() else {
            return true;
        };
        n.machine.fetch_soon(now);
        self.notify_feed(NotifyInput::Tick, now);
        self.notify.as_ref().is_none_or(|n| n.machine.settled())
    }

    /// Kills the running commands; their events stay queued, the attempt
    /// uncounted, and go again at the next start.
    pub(super) fn notify_shutdown(&mut self) {
        if let Some(n) = self.notify.as_mut() {
            for (id, mut s) in std::mem::take(&mut n.sending) {
                log::info!(target: logging::NOTIFY, "notify event {id}: stopped, sent again at the next start");
                s.proc.kill();
                let _ = s.proc.child.wait();
            }
        }
    }
}

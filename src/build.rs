//! One batch of derivations built over one daemon connection: what to send,
//! and what the daemon's answers mean for each build's status.  Sans-I/O:
//! the event loop moves the bytes of [`Batch::client`].

use crate::logging::BUILDING;
use crate::records::{BuildStatus, PendingBuild, status};
pub use crate::records::{Limits, Update};
use crate::trace::{self, LineSplitter, Piece};
use crate::wire::{BuildOptions, Client, Event, Reply, Request};
use std::collections::{HashMap, VecDeque};

/// The original handed the daemon at most this many derivations at once.
pub const BATCH_SIZE: usize = 200;

/// Takes up to `max` builds of the limit class of the queue's first one,
/// in queue order; builds of other classes keep their places.  A class
/// never waits behind a longer queue of another: the oldest pending
/// build decides each batch's class.
pub fn take_batch(queue: &mut VecDeque<PendingBuild>, max: usize) -> Vec<PendingBuild> {
    let Some(class) = queue.front().map(|p| p.limits) else {
        return Vec::new();
    };
    let mut taken = Vec::new();
    let mut others = Vec::new();
    while taken.len() < max {
        let Some(pending) = queue.pop_front() else {
            break;
        };
        if pending.limits == class {
            taken.push(pending);
        } else {
            others.push(pending);
        }
    }
    for pending in others.into_iter().rev() {
        queue.push_front(pending);
    }
    taken
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub derivation: String,
    pub outputs: Vec<String>,
    /// Input derivations, from the `.drv` file.
    pub inputs: Vec<String>,
}

/// Output of a running build, from the daemon's `@ build-log PID LEN`
/// frames (with `multiplexed-build-output`): `bytes` as the builder, or
/// for an offloaded build the hook, printed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub derivation: String,
    pub bytes: Vec<u8>,
}

/// The name cuirass gives the daemon's own machine, as a build's worker.
pub const LOCALHOST: &str = "localhost";
/// Bytes of one frame line kept while looking for `@ build-remote` in a
/// build's output; a longer line is not that one.
const HOOK_LINE_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the reply to set-options, then to build-paths.
    Building,
    /// Asking which outputs are valid, for the derivations without an event.
    Checking,
    Done,
}

#[derive(Debug, Default, Clone)]
struct ItemState {
    status: Option<BuildStatus>,
    log: Option<String>,
    dependencies_failed: bool,
    /// The daemon's timeout message, which comes before `build-failed`.
    timed_out: Option<String>,
    /// The partial last line of this build's frames: the hook reports
    /// `@ build-remote` inside them.
    frame_line: Vec<u8>,
}

pub struct Batch {
    pub client: Client,
    items: Vec<Item>,
    index: HashMap<String, usize>,
    states: Vec<ItemState>,
    phase: Phase,
    replies_before_build: usize,
    lines: LineSplitter,
    updates: Vec<Update>,
    /// Items whose outputs are being checked, in request order.
    checking: Vec<usize>,
    daemon_error: Option<String>,
    limits: Limits,
    /// Items by the process id their `build-started` named: the frames
    /// of `@ build-log` carry it.
    pids: HashMap<u64, usize>,
    output: Vec<Output>,
}

/// The options of a batch's connection; its `limits` become the settings
/// `build-max-silent-time` and `build-timeout` (as `(guix store)` sends
/// them), absent ones are not sent.  `offload` lets the daemon hand
/// builds to its build hook (`guix offload`, machines of its
/// `machines.scm`).  Builder output comes multiplexed, each piece framed
/// with its builder's process id, so that it can be told apart per build
/// (the live logs).
pub fn build_options(
    use_substitutes: bool,
    fallback: bool,
    offload: bool,
    limits: Limits,
) -> BuildOptions {
    let mut settings: Vec<(String, String)> = [
        ("build-max-silent-time", limits.max_silent_time),
        ("build-timeout", limits.timeout),
    ]
    .into_iter()
    .filter_map(|(name, secs)| Some((name.to_string(), secs?.to_string())))
    .collect();
    settings.push(("multiplexed-build-output".into(), "true".into()));
    BuildOptions {
        keep_going: true,
        fallback,
        use_substitutes,
        use_build_hook: offload,
        print_build_trace: true,
        // The daemon forwards builder output when verbosity >=
        // build-verbosity (seen with 1.5.0): both 0 sends it, framed,
        // and nothing more of the daemon's own chatter.
        verbosity: 0,
        build_verbosity: 0,
        settings,
        ..BuildOptions::default()
    }
}

impl Batch {
    /// A batch of `items` of one limit class, built with `options` (from
    /// [`build_options`] with the same `limits`).
    pub fn new(items: Vec<Item>, options: BuildOptions, limits: Limits) -> Batch {
        Batch::on(Client::new(), items, Some(options), limits)
    }

    /// A batch on `client`, a connection that may have carried earlier
    /// batches (see [`Batch::into_client`]): it sends set-options first
    /// when `options` is given, else builds with the options in effect.
    pub fn on(
        mut client: Client,
        items: Vec<Item>,
        options: Option<BuildOptions>,
        limits: Limits,
    ) -> Batch {
        let replies_before_build = usize::from(options.is_some());
        if let Some(options) = options {
            client.request(Request::SetOptions(options));
        }
        client.request(Request::BuildPaths(
            items.iter().map(|i| i.derivation.clone()).collect(),
            0,
        ));
        let index = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.derivation.clone(), i))
            .collect();
        Batch {
            client,
            states: vec![ItemState::default(); items.len()],
            items,
            index,
            phase: Phase::Building,
            replies_before_build,
            lines: LineSplitter::with_options(trace::MAX_LINE, true),
            updates: Vec::new(),
            checking: Vec::new(),
            daemon_error: None,
            limits,
            pids: HashMap::new(),
            output: Vec::new(),
        }
    }

    /// The connection, once the batch is done, for the next one: the
    /// daemon's worker process keeps the options it was given.
    pub fn into_client(self) -> Client {
        self.client
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn derivations(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|i| i.derivation.as_str())
    }

    /// Derivations the daemon reported started and not yet finished.
    pub fn running(&self) -> usize {
        self.states
            .iter()
            .filter(|s| s.status.is_none() && s.log.is_some())
            .count()
    }

    pub fn take_updates(&mut self) -> Vec<Update> {
        std::mem::take(&mut self.updates)
    }

    /// Builder output received since the last call, in order, consecutive
    /// pieces of one build joined.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.output)
    }

    /// The error the daemon ended build-paths with, if any (with
    /// keep-going, "some builds failed" is the usual one).
    pub fn daemon_error(&self) -> Option<&str> {
        self.daemon_error.as_deref()
    }

    /// Feeds bytes read from the daemon socket.
    pub fn receive(&mut self, bytes: &[u8], now_label: &str) -> Result<(), String> {
        self.client.receive(bytes).map_err(|e| e.to_string())?;
        while let Some(event) = self.client.poll_event() {
            self.handle(event, now_label);
        }
        Ok(())
    }

    fn handle(&mut self, event: Event, label: &str) {
        match (self.phase, event) {
            (_, Event::Connected { daemon_version }) => {
                log::debug!(target: BUILDING, "{label}: daemon protocol {daemon_version:#x}");
            }
            (_, Event::Log(bytes)) => self.log_text(&bytes, label),
            // The reply to set-options.
            (Phase::Building, Event::Reply(_)) if self.replies_before_build > 0 => {
                self.replies_before_build -= 1;
            }
            (Phase::Building, Event::Failed { message, status })
                if self.replies_before_build > 0 =>
            {
                self.replies_before_build -= 1;
                log::warn!(target: BUILDING, "{label}: set-options refused ({status}): {message}");
            }
            // build-paths is over: with keep-going, every buildable
            // derivation was tried before this arrives.
            (Phase::Building, Event::Reply(_)) => self.check_outputs(),
            (Phase::Building, Event::Failed { message, status }) => {
                log::info!(target: BUILDING, "{label}: daemon says ({status}): {}", message.trim_end());
                self.daemon_error = Some(message);
                self.check_outputs();
            }
            (Phase::Checking, Event::Reply(Reply::Strings(valid))) => self.decide(&valid),
            (Phase::Checking, other) => {
                log::warn!(target: BUILDING, "{label}: unexpected answer to the validity check: {other:?}");
                self.decide(&[]);
            }
            (phase, other) => {
                log::warn!(target: BUILDING, "{label}: unexpected daemon event in {phase:?}: {other:?}")
            }
        }
    }

    fn log_text(&mut self, bytes: &[u8], label: &str) {
        self.lines.feed(bytes);
        let mut events = Vec::new();
        while let Some(piece) = self.lines.next_piece() {
            match piece {
                Piece::Line { line, .. } => match trace::parse_line(line) {
                    trace::Line::Event(e) => events.push(e),
                    trace::Line::Bogus(why) => {
                        log::warn!(target: BUILDING, "{label}: ignoring bogus trace line ({why})")
                    }
                    trace::Line::Text => {}
                },
                Piece::Raw { pid, bytes } => {
                    let Some(&i) = self.pids.get(&pid) else {
                        continue;
                    };
                    events.extend(frame_remote(&mut self.states[i].frame_line, bytes));
                    let derivation = &self.items[i].derivation;
                    match self.output.last_mut() {
                        Some(o) if &o.derivation == derivation => o.bytes.extend_from_slice(bytes),
                        _ => self.output.push(Output {
                            derivation: derivation.clone(),
                            bytes: bytes.to_vec(),
                        }),
                    }
                }
            }
        }
        for e in events {
            self.apply(e, label);
        }
    }

    /// Only events naming a derivation of this batch change a status: the
    /// daemon also reports dependencies it builds on the way.
    fn apply(&mut self, event: trace::Event, label: &str) {
        use trace::Event as T;
        let mut reason = None;
        let (drv, update) = match &event {
            T::BuildStarted { drv, log, pid, .. } => {
                if let (Some(pid), Some(&i)) = (pid, self.index.get(drv.as_str())) {
                    self.pids.insert(*pid, i);
                }
                (drv, Some((None, Some(log.clone()))))
            }
            T::BuildRemote { drv, host } => {
                if self.index.contains_key(drv.as_str()) {
                    log::info!(target: BUILDING, "{label}: {drv} offloaded to {host}");
                    self.updates.push(Update::Remote {
                        derivation: drv.clone(),
                        host: host.clone(),
                    });
                }
                return;
            }
            T::BuildSucceeded { drv } => (drv, Some((Some(status::SUCCEEDED), None))),
            T::BuildFailed { drv, reason: r } => {
                reason = Some(r.as_str());
                (drv, Some((Some(status::FAILED), None)))
            }
            T::DependenciesFailed { drv, .. } => (drv, None),
            T::TimedOut { drv, message } => {
                if let Some(&i) = self.index.get(drv.as_str()) {
                    self.states[i].timed_out = Some(self.timeout_message(message));
                }
                return;
            }
            _ => return,
        };
        let Some(&i) = self.index.get(drv.as_str()) else {
            log::debug!(target: BUILDING, "{label}: event for {drv}, outside this batch");
            return;
        };
        let state = &mut self.states[i];
        if state.status.is_some() {
            return;
        }
        match update {
            None => state.dependencies_failed = true,
            Some((None, Some(log))) => {
                log::info!(target: BUILDING, "{label}: started {drv}");
                state.log = Some(log.clone());
                self.updates.push(Update::Started {
                    derivation: drv.clone(),
                    log,
                });
            }
            Some((Some(st), _)) => {
                log::info!(target: BUILDING,
                    "{label}: {} {drv}",
                    if st == status::SUCCEEDED {
                        "succeeded"
                    } else {
                        "failed"
                    }
                );
                state.status = Some(st);
                state.frame_line = Vec::new();
                let reason = match reason {
                    Some("timeout") => Some(
                        state
                            .timed_out
                            .take()
                            .unwrap_or_else(|| "timed out".to_string()),
                    ),
                    Some(r) => Some(failure_message(r).to_string()),
                    None => None,
                };
                if let Some(r) = &reason {
                    log::info!(target: BUILDING, "{label}: {drv}: {r}");
                }
                self.updates.push(Update::Finished {
                    derivation: drv.clone(),
                    status: st,
                    log: state.log.clone(),
                    reason,
                });
            }
            Some((None, None)) => {}
        }
    }

    fn check_outputs(&mut self) {
        self.checking = (0..self.items.len())
            .filter(|&i| self.states[i].status.is_none())
            .collect();
        if self.checking.is_empty() {
            self.phase = Phase::Done;
            return;
        }
        let paths = self
            .checking
            .iter()
            .flat_map(|&i| self.items[i].outputs.iter().cloned())
            .collect();
        self.client.request(Request::QueryValidPaths(paths));
        self.phase = Phase::Checking;
    }

    /// Settles every derivation the daemon said nothing about: valid
    /// outputs mean it was built (now or before); otherwise it failed
    /// because an input failed, or for a reason the daemon did not trace.
    fn decide(&mut self, valid: &[String]) {
        let valid: std::collections::HashSet<&str> = valid.iter().map(String::as_str).collect();
        let mut undecided = Vec::new();
        for &i in &self.checking {
            if self.items[i]
                .outputs
                .iter()
                .all(|o| valid.contains(o.as_str()))
            {
                self.states[i].status = Some(status::SUCCEEDED);
            } else {
                undecided.push(i);
            }
        }
        // Failure flows from inputs to dependents; repeat until it stops
        // spreading, so chains of any depth in any order are settled.
        loop {
            let mut changed = false;
            for &i in &undecided {
                if self.states[i].status.is_some() {
                    continue;
                }
                let input_failed = self.items[i].inputs.iter().any(|input| {
                    self.index
                        .get(input.as_str())
                        .and_then(|&j| self.states[j].status)
                        .is_some_and(|s| s.is_final() && s != status::SUCCEEDED)
                });
                if self.states[i].dependencies_failed || input_failed {
                    self.states[i].status = Some(status::FAILED_DEPENDENCY);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for &i in &self.checking {
            let st = *self.states[i].status.get_or_insert(status::FAILED_OTHER);
            // Not traced, not built: what the daemon said of the whole
            // request is all there is to say (a build machine gone:
            // "unexpected EOF reading a line").
            let reason = match st {
                status::FAILED_OTHER => self
                    .daemon_error
                    .as_deref()
                    .map(|m| m.trim_end().to_string()),
                _ => None,
            };
            self.updates.push(Update::Finished {
                derivation: self.items[i].derivation.clone(),
                status: st,
                log: self.states[i].log.clone(),
                reason,
            });
        }
        self.checking.clear();
        self.phase = Phase::Done;
    }
}

impl Batch {
    /// guix-daemon 1.5.0 prints its timeout message with the number left
    /// as a format directive, `timed out after %2% seconds`
    /// (fixtures/trace/timeout-1.5.0.txt); this batch's own timeout is
    /// that number.
    fn timeout_message(&self, message: &str) -> String {
        match self.limits.timeout {
            Some(secs) => message.replace("%2%", &secs.to_string()),
            None => message.to_string(),
        }
    }
}

/// The `@ build-remote` events among the complete lines of a build's
/// frames: `guix offload` prints its trace on its standard error, which
/// the daemon frames as that build's output
/// (fixtures/trace/offload-mux-1.5.0.bin).  `partial` keeps the last,
/// unfinished line between frames (at most [`HOOK_LINE_MAX`] bytes).
fn frame_remote(partial: &mut Vec<u8>, bytes: &[u8]) -> Vec<trace::Event> {
    let mut events = Vec::new();
    let mut rest = bytes;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        let whole: &[u8] = if partial.is_empty() {
            line
        } else {
            partial.extend_from_slice(line);
            partial
        };
        if whole.starts_with(b"@ build-remote ")
            && let trace::Line::Event(e) = trace::parse_line(whole)
        {
            events.push(e);
        }
        partial.clear();
    }
    if partial.len() + rest.len() <= HOOK_LINE_MAX {
        partial.extend_from_slice(rest);
    } else {
        // Too long to be the hook's line.  A NUL, which no trace line
        // starts with, stands for it, so that its tail up to the next
        // newline is never read as a line of its own.
        partial.clear();
        partial.push(0);
    }
    events
}

/// The message of a `build-failed` trace line's reason, without the
/// leading status number (`1 builder for … failed with exit code 1`).
fn failure_message(reason: &str) -> &str {
    match reason.split_once(' ') {
        Some((code, message)) if code.bytes().all(|b| b.is_ascii_digit()) => message,
        _ => reason,
    }
}

#[cfg(test)]
mod tests;

/// `max-silent-time 2 s, timeout 3 s` or `the daemon's limits`, for logs.
pub fn describe_limits(limits: Limits) -> String {
    let parts: Vec<String> = [
        ("max-silent-time", limits.max_silent_time),
        ("timeout", limits.timeout),
    ]
    .iter()
    .filter_map(|(name, secs)| Some(format!("{name} {} s", (*secs)?)))
    .collect();
    if parts.is_empty() {
        "the daemon's limits".to_string()
    } else {
        parts.join(", ")
    }
}

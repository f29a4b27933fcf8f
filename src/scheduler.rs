//! The per-specification state machine.  Every transition goes through
//! [`SpecRun::set_state`], which logs it; the legal ones are listed in
//! [`allowed`].  What each state waits for lives in the event loop.

use crate::spec::Specification;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the next poll.
    Idle,
    /// The fetch child is updating the checkout.
    Fetching,
    /// `./bootstrap`, `./configure`, `make` in the checkout.
    Compiling,
    /// The evaluator is printing jobs.
    Evaluating,
    /// The spec's pending builds are being handed to the daemon in batches.
    Building,
}

/// Whether `from => to` is a transition the design allows.
pub fn allowed(from: State, to: State) -> bool {
    use State::*;
    matches!(
        (from, to),
        // The poll timer fired (or the daemon just started).
        (Idle, Fetching)
        // A new commit that needs compiling.
        | (Fetching, Compiling)
        // A new commit of a `#:no-compile?` spec.
        | (Fetching, Evaluating)
        // Same commit as last time, or the fetch failed: build whatever
        // is still pending from earlier evaluations.
        | (Fetching, Building)
        | (Fetching, Idle)
        | (Compiling, Evaluating)
        // Compilation failed: the same, and the commit is tried again at
        // the next poll.
        | (Compiling, Building)
        | (Compiling, Idle)
        // Jobs registered (or the evaluation failed): build what is pending.
        | (Evaluating, Building)
        | (Evaluating, Idle)
        // Queue drained.
        | (Building, Idle)
        // A poll fell due between two batches: new commits are not held
        // back by a long queue (see "New commits" in cuirass(1)).
        | (Building, Fetching)
        // Shutting down.
        | (_, Idle)
    )
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

/// What the loop knows about one specification.
pub struct SpecRun {
    pub spec: Specification,
    state: State,
    /// When the next poll is due.
    pub next_poll: Instant,
    /// Completed fetch-evaluate-build cycles (one-shot stops after one).
    pub cycles: u32,
}

impl SpecRun {
    pub fn new(spec: Specification, now: Instant) -> SpecRun {
        SpecRun {
            spec,
            state: State::Idle,
            next_poll: now,
            cycles: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn set_state(&mut self, to: State) {
        if self.state == to {
            return;
        }
        debug_assert!(allowed(self.state, to), "{:?} => {:?}", self.state, to);
        let name = crate::logging::shown(&self.spec.name);
        log::info!("spec={name} {:?}=>{:?}", self.state, to);
        self.state = to;
    }

    /// Polls are due every interval from the start of the previous one,
    /// however long its cycle took.
    pub fn polled(&mut self, now: Instant, interval: Duration) {
        self.next_poll = now + interval;
    }

    /// Called when a cycle ends, whatever its outcome.
    pub fn cycle_done(&mut self) {
        self.cycles += 1;
        self.set_state(State::Idle);
    }

    pub fn poll_due(&self, now: Instant) -> bool {
        now >= self.next_poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_cycle_is_allowed_and_shortcuts_are_not() {
        use State::*;
        for (a, b) in [
            (Idle, Fetching),
            (Fetching, Compiling),
            (Compiling, Evaluating),
            (Evaluating, Building),
            (Building, Idle),
            (Building, Fetching),
        ] {
            assert!(allowed(a, b), "{a:?} => {b:?}");
        }
        for (a, b) in [
            (Idle, Building),
            (Idle, Evaluating),
            (Building, Evaluating),
            (Building, Compiling),
        ] {
            assert!(!allowed(a, b), "{a:?} => {b:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.failed().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        b.succeeded();
        assert_eq!(b.failed().as_secs(), 1);
    }
}

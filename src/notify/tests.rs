//! The notifier's policy with a clock that is a value: order,
//! concurrency, timeouts, retries with backoff, giving up, and restarts.

use super::*;

fn settings() -> Settings {
    Settings {
        timeout: Duration::from_secs(10),
        max_running: 2,
        retry: Duration::from_secs(30),
        max_attempts: 3,
    }
}

struct Bed {
    n: Notifier,
    t0: Instant,
    /// What the database answers the next fetch with.
    queued: Vec<(i64, u32)>,
}

impl Bed {
    fn new(settings: Settings) -> Bed {
        let t0 = Instant::now();
        Bed {
            n: Notifier::new(settings, t0),
            t0,
            queued: Vec::new(),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// The commands an input gives, fetches answered (with `queued`) and
    /// left out.
    fn feed(&mut self, input: Input, secs: u64) -> Vec<Command> {
        let now = self.at(secs);
        self.n.handle(input, now);
        let mut out = Vec::new();
        while let Some(c) = self.n.poll_command() {
            match c {
                Command::Fetch { .. } => {
                    let events = std::mem::take(&mut self.queued);
                    self.n.handle(Input::Fetched(events), now);
                }
                c => out.push(c),
            }
        }
        out
    }

    /// A tick whose fetch, if any, finds `events`.
    fn tick_fetching(&mut self, events: Vec<(i64, u32)>, secs: u64) -> Vec<Command> {
        self.queued = events;
        self.feed(Input::Tick, secs)
    }

    /// The raw commands of one input, fetches included and unanswered.
    fn raw(&mut self, input: Input, secs: u64) -> Vec<Command> {
        let now = self.at(secs);
        self.n.handle(input, now);
        std::iter::from_fn(|| self.n.poll_command()).collect()
    }

    fn exit(&mut self, id: i64, ok: bool, secs: u64) -> Vec<Command> {
        let reason = "exited with status 1".to_string();
        self.feed(Input::Exited { id, ok, reason }, secs)
    }
}

fn record(id: i64, attempts: u32, error: Option<&str>, gave_up: bool) -> Command {
    Command::Record {
        id,
        attempts,
        error: error.map(String::from),
        gave_up,
    }
}

#[test]
fn events_go_in_order_at_most_n_at_once() {
    let mut b = Bed::new(settings());
    let out = b.tick_fetching(vec![(1, 0), (2, 0), (3, 0)], 0);
    assert_eq!(out, [Command::Spawn(1), Command::Spawn(2)]);
    assert_eq!(b.n.running(), 2);
    // One ends: the next starts in the same step.
    let out = b.exit(2, true, 1);
    assert_eq!(out, [record(2, 1, None, false), Command::Spawn(3)]);
    let out = b.exit(1, true, 1);
    assert_eq!(out, [record(1, 1, None, false)]);
}

#[test]
fn the_database_is_asked_once_a_second_for_events_after_the_last_seen() {
    let mut b = Bed::new(settings());
    let fetch = |after| Command::Fetch {
        after,
        limit: MAX_HELD,
    };
    assert_eq!(b.raw(Input::Tick, 0), [fetch(0)]);
    // No second fetch while the first is unanswered, nor within the second.
    assert_eq!(b.raw(Input::Tick, 0), []);
    assert_eq!(b.raw(Input::Fetched(vec![(7, 0)]), 0), [Command::Spawn(7)]);
    assert_eq!(b.raw(Input::Tick, 0), []);
    assert_eq!(b.n.poll_at(), b.at(1));
    assert_eq!(b.raw(Input::Tick, 1), [fetch(7)]);
}

#[test]
fn a_command_over_its_time_is_killed_and_retried_with_doubling_backoff_then_given_up() {
    let mut b = Bed::new(settings());
    assert_eq!(b.tick_fetching(vec![(5, 0)], 0), [Command::Spawn(5)]);
    assert_eq!(b.n.poll_at(), b.at(1), "the next fetch comes first");
    b.tick_fetching(vec![], 9);
    assert_eq!(b.n.poll_at(), b.at(10));
    // The deadline: killed once, however many ticks come.
    assert_eq!(b.tick_fetching(vec![], 10), [Command::Kill(5)]);
    assert_eq!(b.tick_fetching(vec![], 10), []);
    // The killed command's exit fails the attempt, whatever its status.
    let out = b.exit(5, true, 10);
    assert_eq!(out, [record(5, 1, Some("timed out after 10 s"), false)]);
    // Retried after 30 s, not before.
    assert_eq!(b.tick_fetching(vec![], 39), []);
    assert_eq!(b.tick_fetching(vec![], 40), [Command::Spawn(5)]);
    // A failed exit: retried after 60 s this time.
    assert_eq!(
        b.exit(5, false, 41),
        [record(5, 2, Some("exited with status 1"), false)]
    );
    assert_eq!(b.tick_fetching(vec![], 100), []);
    assert_eq!(b.tick_fetching(vec![], 101), [Command::Spawn(5)]);
    // The third failure is the last.
    assert_eq!(
        b.exit(5, false, 102),
        [record(5, 3, Some("exited with status 1"), true)]
    );
    assert_eq!(b.tick_fetching(vec![], 10_000), []);
    assert!(b.n.settled());
}

#[test]
fn backoff_doubles_up_to_an_hour() {
    let b = Bed::new(settings());
    let secs: Vec<u64> = [1, 2, 3, 4, 7, 8, 30]
        .iter()
        .map(|&a| b.n.backoff(a).as_secs())
        .collect();
    assert_eq!(secs, [30, 60, 120, 240, 1920, 3600, 3600]);
}

#[test]
fn a_hanging_command_does_not_hold_the_others() {
    let mut b = Bed::new(settings());
    assert_eq!(
        b.tick_fetching(vec![(1, 0), (2, 0), (3, 0), (4, 0)], 0),
        [Command::Spawn(1), Command::Spawn(2)]
    );
    // 1 hangs; 2, 3 and 4 go through the other place one after another.
    assert_eq!(
        b.exit(2, true, 1),
        [record(2, 1, None, false), Command::Spawn(3)]
    );
    assert_eq!(
        b.exit(3, true, 2),
        [record(3, 1, None, false), Command::Spawn(4)]
    );
    assert_eq!(b.exit(4, true, 3), [record(4, 1, None, false)]);
    assert!(!b.n.settled());
}

#[test]
fn events_queued_before_a_restart_are_retried_at_once_with_their_attempts_counted() {
    let mut b = Bed::new(settings());
    // Two attempts were made before the restart: one is left.
    assert_eq!(b.tick_fetching(vec![(9, 2)], 0), [Command::Spawn(9)]);
    assert!(!b.n.settled());
    assert_eq!(
        b.exit(9, false, 1),
        [record(9, 3, Some("exited with status 1"), true)]
    );
    assert!(b.n.settled());
}

#[test]
fn a_one_shot_run_is_settled_once_first_attempts_are_done_and_leaves_retries() {
    let mut b = Bed::new(settings());
    b.tick_fetching(vec![(1, 0)], 0);
    assert!(!b.n.settled());
    b.exit(1, false, 0);
    assert!(b.n.settled(), "a retry waits for the next run");
    // A fetch asked for now comes at the next step, and until it is
    // answered the run is not settled.
    b.n.fetch_soon(b.at(0));
    assert!(matches!(
        b.raw(Input::Tick, 0).as_slice(),
        [Command::Fetch { after: 1, .. }]
    ));
    assert!(!b.n.settled());
    assert_eq!(b.raw(Input::Fetched(vec![(2, 0)]), 0), [Command::Spawn(2)]);
    assert!(!b.n.settled());
}

#[test]
fn an_exit_for_an_event_not_running_is_ignored_and_zero_settings_are_raised() {
    let zero = Settings {
        max_running: 0,
        max_attempts: 0,
        ..settings()
    };
    let mut b = Bed::new(zero);
    assert_eq!(b.exit(42, true, 0), []);
    // One at a time, one attempt.
    assert_eq!(
        b.tick_fetching(vec![(1, 0), (2, 0)], 1),
        [Command::Spawn(1)]
    );
    assert_eq!(
        b.exit(1, false, 1),
        [
            record(1, 1, Some("exited with status 1"), true),
            Command::Spawn(2)
        ]
    );
}

//! The cycle's policies, driven input by input: no daemon, no children,
//! no sleeping.  Time is a value; the database is in memory; `.drv` files
//! come from fixtures/drv.

use super::*;
use crate::db::status;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

const DRV_A: &str = "/gnu/store/axsa2j6r5dw6snj74b5ii0xnj73chc6a-fixture-a.drv";
const DRV_B: &str = "/gnu/store/my13jx1ck7gc9k6dzp6lfmvz7fl4vpsj-fixture-b.drv";
const COMMIT_1: &str = "1111111111111111111111111111111111111111";
const COMMIT_2: &str = "2222222222222222222222222222222222222222";

struct World {
    db: Db,
    drvs: HashMap<String, Vec<u8>>,
    daemon_up: Cell<bool>,
    start: Instant,
    now: Instant,
    /// What the queue has handed to the daemon.
    in_flight: HashSet<String>,
}

impl World {
    fn new() -> World {
        let mut db = Db::open_in_memory().unwrap();
        db.add_specifications(&[spec(true)]).unwrap();
        let fixture = |drv: &str| {
            let base = drv.strip_prefix("/gnu/store/").unwrap();
            let path = format!("{}/fixtures/drv/{base}", env!("CARGO_MANIFEST_DIR"));
            (drv.to_string(), std::fs::read(path).unwrap())
        };
        let now = Instant::now();
        World {
            db,
            drvs: [fixture(DRV_A), fixture(DRV_B)].into_iter().collect(),
            daemon_up: Cell::new(true),
            start: now,
            now,
            in_flight: HashSet::new(),
        }
    }

    fn cycle(&self, no_compile: bool, one_shot: bool) -> Cycle {
        self.cycle_of(spec(no_compile), one_shot)
    }

    fn cycle_of(&self, spec: Specification, one_shot: bool) -> Cycle {
        let settings = Settings {
            interval: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(30),
            compile_timeout: Duration::from_secs(30),
            evaluation_timeout: Duration::from_secs(100),
            one_shot,
            build_types: PathBuf::from("/cache/.cuirass/build-types.scm"),
            checkout: PathBuf::from("/cache/hello"),
            load_path: vec![],
        };
        Cycle::new(spec, settings, self.now)
    }

    fn at(&mut self, secs: u64) -> &mut World {
        self.now = self.start + Duration::from_secs(secs);
        self
    }

    /// Feeds `input` and returns the commands it caused.
    fn feed(&mut self, cycle: &mut Cycle, input: Input) -> Vec<Command> {
        let drvs = &self.drvs;
        let read_drv = |path: &str| {
            drvs.get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let up = &self.daemon_up;
        let daemon = || match up.get() {
            true => Ok(()),
            false => Err("cannot connect to guix-daemon at /nowhere: no such file".to_string()),
        };
        let mut env = Env {
            now: self.now,
            unix_now: 1_700_000_000 + self.now.duration_since(self.start).as_secs() as i64,
            db: &mut self.db,
            read_drv: &read_drv,
            file_size: &|_: &str| Some(6),
            daemon: &daemon,
            in_flight: &self.in_flight,
        };
        cycle.handle(input, &mut env);
        std::iter::from_fn(|| cycle.poll_command()).collect()
    }

    fn count(&self, sql: &str) -> i64 {
        self.db
            .connection()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    fn evaluation_rows(&self) -> Vec<(String, i64, Option<String>)> {
        let mut stmt = self
            .db
            .connection()
            .prepare("SELECT revision, status, error FROM Evaluations ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Poll, fetch `commit`, evaluate the jobs `lines`, exit 0.
    fn evaluate(&mut self, cycle: &mut Cycle, commit: &str, lines: &[&str]) -> Vec<Command> {
        let mut commands = self.feed(cycle, Input::Tick);
        commands.extend(self.feed(cycle, fetched(commit)));
        commands.extend(self.feed(cycle, output(lines)));
        commands.extend(self.feed(cycle, exited(true)));
        commands
    }
}

fn spec(no_compile: bool) -> Specification {
    Specification {
        no_compile,
        ..Specification::new("hello", "file:///srv/hello.git", "ci.scm", "jobs")
    }
}

fn fetched(commit: &str) -> Input {
    Input::FetchExited {
        ok: true,
        stdout: format!("commit {commit}\n"),
        reason: String::new(),
    }
}

fn job_line(name: &str, drv: &str) -> String {
    format!("(job (name . \"{name}\") (derivation . \"{drv}\"))")
}

/// Lines read with the evaluator's pipe then empty.
fn output(lines: &[&str]) -> Input {
    Input::EvaluatorLines {
        lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
        more: false,
    }
}

/// Lines read with more waiting in the pipe.
fn output_and_more(lines: &[&str]) -> Input {
    Input::EvaluatorLines {
        lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
        more: true,
    }
}

fn exited(ok: bool) -> Input {
    Input::EvaluatorExited {
        ok,
        reason: if ok {
            "exited with status 0"
        } else {
            "exited with status 1"
        }
        .into(),
        error_line: None,
    }
}

fn two_jobs() -> Vec<String> {
    vec![
        job_line("a", DRV_A),
        job_line("b", DRV_B),
        "(done 2)".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Whether the commands tell the dispatcher to read the queue again.
fn queue_changed(commands: &[Command]) -> bool {
    commands.contains(&Command::QueueChanged)
}

fn scheduled(w: &World) -> i64 {
    w.count("SELECT COUNT(*) FROM Builds WHERE status = -2")
}

#[test]
fn a_new_commit_without_compile_is_evaluated_and_its_builds_start_while_evaluating() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    let cmds = w.feed(&mut c, Input::Tick);
    assert!(
        matches!(cmds[..], [Command::SpawnFetch(fetch::Target::Branch(ref b))] if b == "master")
    );
    assert_eq!(c.state().name(), "Fetching");
    let cmds = w.feed(&mut c, fetched(COMMIT_1));
    match &cmds[..] {
        [Command::SpawnEvaluator { arguments, .. }] => {
            assert!(
                arguments.contains("(file . \"/cache/hello/ci.scm\")"),
                "{arguments}"
            );
            assert!(arguments.contains("(proc . jobs)"), "{arguments}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.state().name(), "Evaluating");
    // The first job's build is queued before the evaluator ends, and the
    // dispatcher told.
    let cmds = w.feed(&mut c, output(&[&job_line("a", DRV_A)]));
    assert!(queue_changed(&cmds), "{cmds:?}");
    assert_eq!(scheduled(&w), 1);
    let cmds = w.feed(&mut c, output(&[&job_line("b", DRV_B), "(done 2)"]));
    assert!(queue_changed(&cmds), "{cmds:?}");
    let cmds = w.feed(&mut c, exited(true));
    assert!(queue_changed(&cmds), "{cmds:?}");
    assert_eq!(c.state().name(), "Idle");
    assert_eq!(w.evaluation_rows(), vec![(COMMIT_1.into(), 0, None)]);
    assert_eq!(w.db.stamp("hello").unwrap().as_deref(), Some(COMMIT_1));
    assert_eq!(scheduled(&w), 2);
}

#[test]
fn a_new_commit_with_compile_is_compiled_first_and_a_failed_compile_ends_the_round() {
    let mut w = World::new();
    let mut c = w.cycle(false, false);
    w.feed(&mut c, Input::Tick);
    assert_eq!(
        w.feed(&mut c, fetched(COMMIT_1)),
        vec![Command::SpawnCompile]
    );
    assert_eq!(c.state().name(), "Compiling");
    let cmds = w.feed(
        &mut c,
        Input::CompileExited {
            ok: false,
            reason: "exited with status 2".into(),
        },
    );
    assert!(cmds.is_empty());
    assert_eq!(c.state().name(), "Idle");
    // No evaluation, no stamp: the next poll tries the commit again.
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 0);
    assert_eq!(w.db.stamp("hello").unwrap(), None);
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(60)));
    w.at(60).feed(&mut c, Input::Tick);
    assert_eq!(
        w.feed(&mut c, fetched(COMMIT_1)),
        vec![Command::SpawnCompile]
    );
    let cmds = w.feed(
        &mut c,
        Input::CompileExited {
            ok: true,
            reason: String::new(),
        },
    );
    assert!(matches!(cmds[..], [Command::SpawnEvaluator { .. }]));
}

#[test]
fn an_unchanged_stamp_ends_the_round_without_an_evaluation() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.evaluate(&mut c, COMMIT_1, &strs(&two_jobs()));
    w.at(60).feed(&mut c, Input::Tick);
    let cmds = w.feed(&mut c, fetched(COMMIT_1));
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::SpawnEvaluator { .. }))
    );
    assert_eq!(c.state().name(), "Idle");
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 1);
}

#[test]
fn a_crashing_evaluator_fails_the_evaluation_with_its_own_one_line_message() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.feed(&mut c, Input::Tick);
    w.feed(&mut c, fetched(COMMIT_1));
    w.feed(&mut c, output(&[&job_line("a", DRV_A)]));
    // The queue hands its build to the daemon.
    w.in_flight.insert(DRV_A.to_string());
    let whole_job = format!("((#:job-name . \"x\") {})", "(#:junk . 1) ".repeat(500));
    w.feed(
        &mut c,
        Input::EvaluatorExited {
            ok: false,
            reason: "exited with status 1: In ice-9/boot-9.scm:".into(),
            error_line: Some(format!(
                "evaluate: error: calling 'jobs' of ci.scm: job is neither a thunk: {whole_job}"
            )),
        },
    );
    let rows = w.evaluation_rows();
    let error = rows[0].2.clone().unwrap();
    assert_eq!(rows[0].1, 1, "failed");
    assert!(
        error.starts_with("calling 'jobs' of ci.scm: job is neither"),
        "{error}"
    );
    assert!(error.chars().count() <= 1001, "{} characters", error.len());
    assert!(!error.contains("Backtrace"));
    // Its build was handed to the daemon already: it is not canceled, and
    // ends with its real result.  The commit is done with.
    assert_eq!(w.count("SELECT COUNT(*) FROM Builds WHERE status = 4"), 0);
    assert_eq!(w.db.stamp("hello").unwrap().as_deref(), Some(COMMIT_1));
}

/// Tester's finding: a build the daemon was building when the evaluator
/// failed was recorded canceled although it was built.
#[test]
fn an_evaluator_failure_cancels_builds_not_yet_handed_over_and_spares_those_in_flight() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.feed(&mut c, Input::Tick);
    w.feed(&mut c, fetched(COMMIT_1));
    let cmds = w.feed(&mut c, output(&[&job_line("a", DRV_A)]));
    assert!(cmds.contains(&Command::QueueChanged), "{cmds:?}");
    // The queue hands a's build to the daemon; b is registered while it
    // runs, then the evaluator dies.
    w.in_flight.insert(DRV_A.to_string());
    w.feed(&mut c, output(&[&job_line("b", DRV_B)]));
    w.feed(&mut c, exited(false));
    let status_of = |w: &World, drv: &str| {
        w.count(&format!(
            "SELECT status FROM Builds WHERE derivation = '{drv}'"
        ))
    };
    assert_eq!(w.evaluation_rows()[0].1, 1, "failed");
    assert_eq!(status_of(&w, DRV_B), status::CANCELED);
    assert_eq!(status_of(&w, DRV_A), status::SCHEDULED);
}

/// While the evaluator prints faster than the loop reads, its jobs are
/// registered in batches of `REGISTER_BATCH`, in the turn that completes
/// one; a job read after waits for the next batch, at most
/// `REGISTER_WAIT`, or until the pipe is empty.
#[test]
fn a_fast_evaluators_jobs_are_registered_in_batches() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.feed(&mut c, Input::Tick);
    w.feed(&mut c, fetched(COMMIT_1));
    // Every name its own job; two derivations are enough for the count.
    let drvs = [DRV_A, DRV_B];
    let n = job::REGISTER_BATCH;
    let lines: Vec<String> = (0..n + 2)
        .map(|i| job_line(&format!("job-{i}"), drvs[i % 2]))
        .collect();
    let cmds = w.feed(&mut c, output_and_more(&strs(&lines[..n - 1])));
    assert!(!queue_changed(&cmds), "{cmds:?}");
    assert_eq!(w.count("SELECT COUNT(*) FROM Derivations"), 0);
    let cmds = w.feed(&mut c, output_and_more(&strs(&lines[n - 1..n])));
    assert!(queue_changed(&cmds), "{cmds:?}");
    assert_eq!(w.db.evaluation_size(EvalId(1)).unwrap(), (n, 2));
    // The next job waits, then goes when its time is up...
    let cmds = w.feed(&mut c, output_and_more(&strs(&lines[n..n + 1])));
    assert!(!queue_changed(&cmds), "{cmds:?}");
    assert_eq!(c.poll_at(), Some(w.now + job::REGISTER_WAIT));
    assert!(w.feed(&mut c, Input::Tick).is_empty(), "not yet");
    // (Another name of a registered derivation: no new build to queue.)
    w.at(1).feed(&mut c, Input::Tick);
    assert_eq!(w.db.evaluation_size(EvalId(1)).unwrap(), (n + 1, 2));
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(100)));
    // ... or once the pipe is empty.
    w.feed(&mut c, output(&strs(&lines[n + 1..])));
    assert_eq!(w.db.evaluation_size(EvalId(1)).unwrap(), (n + 2, 2));
}

/// Issue 14: two job names, one derivation.  The evaluator's count (2)
/// is met, one build is queued, both names are registered.
#[test]
fn two_job_names_of_one_derivation_are_one_build_under_both_names() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    let lines = [job_line("alpha", DRV_A), job_line("beta", DRV_A)];
    w.feed(&mut c, Input::Tick);
    w.feed(&mut c, fetched(COMMIT_1));
    w.feed(&mut c, output(&strs(&lines)));
    w.feed(&mut c, output(&["(done 2)"]));
    w.feed(&mut c, exited(true));
    assert_eq!(w.evaluation_rows()[0].1, 0, "succeeded");
    assert_eq!(w.db.evaluation_size(EvalId(1)).unwrap(), (2, 1));
    assert_eq!(
        w.count("SELECT COUNT(*) FROM JobAliases WHERE job_name = 'beta'"),
        1
    );
    assert_eq!(w.count("SELECT COUNT(*) FROM Builds"), 1, "built once");
}

#[test]
fn garbage_from_the_evaluator_kills_it_and_fails_the_evaluation() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.feed(&mut c, Input::Tick);
    w.feed(&mut c, fetched(COMMIT_1));
    let cmds = w.feed(&mut c, output(&["this is not a job"]));
    assert_eq!(cmds, vec![Command::KillChild]);
    // Further lines are ignored; the kill's exit closes the evaluation.
    assert!(w.feed(&mut c, output(&[&job_line("a", DRV_A)])).is_empty());
    w.feed(&mut c, exited(false));
    let rows = w.evaluation_rows();
    assert_eq!(rows[0].1, 1);
    assert!(
        rows[0]
            .2
            .as_ref()
            .unwrap()
            .starts_with("bad evaluator output"),
        "{rows:?}"
    );
    assert_eq!(w.count("SELECT COUNT(*) FROM Builds"), 0);
}

#[test]
fn an_evaluator_past_its_timeout_is_killed_once_and_the_evaluation_fails() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.feed(&mut c, Input::Tick);
    w.feed(&mut c, fetched(COMMIT_1));
    // No poll while evaluating: the deadline is the next time.
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(100)));
    assert!(w.at(99).feed(&mut c, Input::Tick).is_empty());
    assert_eq!(
        w.at(100).feed(&mut c, Input::Tick),
        vec![Command::KillChild]
    );
    assert!(
        w.at(101).feed(&mut c, Input::Tick).is_empty(),
        "killed once"
    );
    w.feed(&mut c, exited(false));
    let rows = w.evaluation_rows();
    assert_eq!(
        rows[0].2.as_deref(),
        Some("evaluation timed out after 100 s")
    );
}

#[test]
fn without_a_daemon_the_evaluation_is_postponed() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.daemon_up.set(false);
    w.feed(&mut c, Input::Tick);
    assert!(w.feed(&mut c, fetched(COMMIT_1)).is_empty());
    // Nothing recorded: the same commit is evaluated once the daemon is back.
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 0);
    assert_eq!(c.state().name(), "Idle");
    w.daemon_up.set(true);
    w.at(60);
    let cmds = w.evaluate(&mut c, COMMIT_1, &strs(&two_jobs()));
    assert!(queue_changed(&cmds));
    assert_eq!(scheduled(&w), 2);
}

#[test]
fn a_poll_due_during_a_long_batch_fetches_and_evaluates_at_once_and_supersedes() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    let cmds = w.evaluate(&mut c, COMMIT_1, &[&job_line("a", DRV_A), "(done 1)"]);
    assert!(queue_changed(&cmds));
    // The batch runs on; the poll falls due and goes ahead regardless.
    let cmds = w.at(60).feed(&mut c, Input::Tick);
    assert!(matches!(cmds[..], [Command::SpawnFetch(_)]), "{cmds:?}");
    w.feed(&mut c, fetched(COMMIT_2));
    // Job "a" now has another derivation: the old build is superseded,
    // canceled once the evaluation is closed (by the loop, a page per
    // turn; nothing is in flight here).
    w.feed(&mut c, output(&[&job_line("a", DRV_B), "(done 1)"]));
    let cmds = w.feed(&mut c, exited(true));
    assert!(queue_changed(&cmds), "the loop looks for superseded builds");
    assert_eq!(scheduled(&w), 2, "not in the closing turn");
    assert_eq!(w.db.supersede_all(&w.in_flight, 0).unwrap(), 1);
    assert_eq!(
        w.count("SELECT COUNT(*) FROM Evaluations WHERE status = 0"),
        2
    );
    assert_eq!(w.count("SELECT COUNT(*) FROM Builds WHERE status = 4"), 1);
    assert_eq!(
        w.count(&format!(
            "SELECT evaluation FROM Builds WHERE status = 4 AND derivation = '{DRV_A}'"
        )),
        1
    );
    assert_eq!(scheduled(&w), 1);
}

#[test]
fn one_shot_finishes_after_one_round_once_everything_is_built() {
    let mut w = World::new();
    let mut c = w.cycle(true, true);
    assert!(!c.is_finished());
    w.evaluate(&mut c, COMMIT_1, &strs(&two_jobs()));
    // The builds are the dispatcher's; the loop waits for both.
    assert!(c.is_finished());
    assert_eq!(c.failure(), None);
    // No second poll in one-shot mode.
    assert_eq!(c.poll_at(), None);
    assert!(w.at(1000).feed(&mut c, Input::Tick).is_empty());
}

#[test]
fn one_shot_fails_naming_the_reason_when_the_fetch_fails() {
    let mut w = World::new();
    let mut c = w.cycle(true, true);
    w.feed(&mut c, Input::Tick);
    w.feed(
        &mut c,
        Input::FetchExited {
            ok: false,
            stdout: String::new(),
            reason: "exited with status 1: reference 'refs/heads/nope' not found".into(),
        },
    );
    assert!(c.is_finished());
    assert!(
        c.failure().unwrap().contains("refs/heads/nope"),
        "{:?}",
        c.failure()
    );
    // In daemon mode the same is logged and the next poll tries again.
    let mut d = w.cycle(true, false);
    w.feed(&mut d, Input::Tick);
    w.feed(
        &mut d,
        Input::FetchExited {
            ok: false,
            stdout: String::new(),
            reason: "unreachable".into(),
        },
    );
    assert_eq!(d.failure(), None);
    assert_eq!(d.poll_at(), Some(w.now + Duration::from_secs(60)));
}

#[test]
fn sigterm_in_each_state_kills_the_child_and_leaves_nothing_in_progress() {
    type Reach = fn(&mut World, &mut Cycle);
    let states: [(&str, Reach); 4] = [
        ("Idle", |_, _| {}),
        ("Fetching", |w, c| {
            w.feed(c, Input::Tick);
        }),
        ("Compiling", |w, c| {
            w.feed(c, Input::Tick);
            w.feed(c, fetched(COMMIT_1));
        }),
        ("Evaluating", |w, c| {
            w.feed(c, Input::Tick);
            w.feed(c, fetched(COMMIT_1));
            w.feed(
                c,
                Input::CompileExited {
                    ok: true,
                    reason: String::new(),
                },
            );
            w.feed(c, output(&[&job_line("a", DRV_A)]));
        }),
    ];
    for (name, reach) in states {
        let mut w = World::new();
        let mut c = w.cycle(false, false);
        reach(&mut w, &mut c);
        assert_eq!(c.state().name(), name);
        let cmds = w.feed(&mut c, Input::Stop);
        let mut expected = vec![];
        if name != "Idle" {
            expected.push(Command::KillChild);
        }
        assert_eq!(cmds, expected, "{name}");
        assert_eq!(c.state().name(), "Stopped");
        // The half-registered evaluation is rolled back, not left running.
        assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 0, "{name}");
        assert_eq!(w.count("SELECT COUNT(*) FROM Builds"), 0, "{name}");
        // Late exits change nothing.
        assert!(w.feed(&mut c, exited(true)).is_empty());
        assert!(c.is_finished());
    }
}

#[test]
fn a_trigger_polls_now_or_when_the_round_ends_and_a_retry_evaluates_its_commit_again() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    w.evaluate(&mut c, COMMIT_1, &strs(&two_jobs()));
    assert_eq!(c.state().name(), "Idle");
    // Long before the next poll: nothing due.
    assert!(w.at(5).feed(&mut c, Input::Tick).is_empty());
    let cmds = w.at(6).feed(&mut c, Input::Trigger { commit: None });
    assert!(
        matches!(cmds[..], [Command::SpawnFetch(fetch::Target::Branch(ref b))] if b == "master"),
        "{cmds:?}"
    );
    // During the round, a trigger waits for its end.
    assert!(
        w.feed(
            &mut c,
            Input::Trigger {
                commit: Some(COMMIT_1.into())
            }
        )
        .is_empty()
    );
    assert_eq!(c.state().name(), "Fetching");
    w.feed(&mut c, fetched(COMMIT_1));
    assert_eq!(
        c.state().name(),
        "Idle",
        "an evaluated commit ends the round"
    );
    assert_eq!(w.count("SELECT count(*) FROM Evaluations"), 1);
    let cmds = w.at(7).feed(&mut c, Input::Tick);
    assert!(
        matches!(cmds[..], [Command::SpawnFetch(fetch::Target::Commit(ref x))] if x == COMMIT_1),
        "{cmds:?}"
    );
    // The same commit is evaluated again: a retry.
    let cmds = w.feed(&mut c, fetched(COMMIT_1));
    assert!(
        matches!(cmds[..], [Command::SpawnEvaluator { .. }]),
        "{cmds:?}"
    );
    w.feed(&mut c, output(&strs(&two_jobs())));
    w.feed(&mut c, exited(true));
    assert_eq!(
        w.count("SELECT count(*) FROM Evaluations WHERE status = 0"),
        2
    );
    // A plain trigger of an evaluated commit evaluates nothing.
    w.at(8).feed(&mut c, Input::Trigger { commit: None });
    w.feed(&mut c, fetched(COMMIT_1));
    assert_eq!(w.count("SELECT count(*) FROM Evaluations"), 2);
}

mod records;

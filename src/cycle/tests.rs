//! The cycle's policies, driven input by input: no daemon, no children,
//! no sleeping.  Time is a value; the database is in memory; `.drv` files
//! come from fixtures/drv.

use super::*;
use std::cell::Cell;
use std::collections::HashMap;

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
        };
        cycle.handle(input, &mut env);
        std::iter::from_fn(|| cycle.poll_command()).collect()
    }

    /// What the loop records from a batch's trace events.
    fn built(&mut self, drvs: &[&str]) {
        let done: Vec<(String, i64, Option<String>)> = drvs
            .iter()
            .map(|d| (d.to_string(), status::SUCCEEDED, None))
            .collect();
        self.db.finish_builds(&done, 1_700_000_000).unwrap();
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

fn output(lines: &[&str]) -> Input {
    Input::EvaluatorLines(lines.iter().map(|l| l.as_bytes().to_vec()).collect())
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

fn batch_of(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .find_map(|c| match c {
            Command::OpenBatch(items, _) => {
                Some(items.iter().map(|i| i.derivation.clone()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
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
    // The first job's build is handed over before the evaluator ends.
    let cmds = w.feed(&mut c, output(&[&job_line("a", DRV_A)]));
    assert_eq!(batch_of(&cmds), vec![DRV_A]);
    let cmds = w.feed(&mut c, output(&[&job_line("b", DRV_B), "(done 2)"]));
    assert!(cmds.is_empty(), "one batch at a time: {cmds:?}");
    w.feed(&mut c, exited(true));
    assert_eq!(c.state().name(), "Idle");
    assert_eq!(w.evaluation_rows(), vec![(COMMIT_1.into(), 0, None)]);
    assert_eq!(w.db.stamp("hello").unwrap().as_deref(), Some(COMMIT_1));
    // The first batch ends: the second job's build goes next.
    w.built(&[DRV_A]);
    let cmds = w.feed(&mut c, Input::BatchDone { daemon_error: None });
    assert_eq!(batch_of(&cmds), vec![DRV_B]);
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
    // Its builds not yet started are canceled; the commit is done with.
    assert_eq!(w.count("SELECT COUNT(*) FROM Builds WHERE status = 4"), 1);
    assert_eq!(w.db.stamp("hello").unwrap().as_deref(), Some(COMMIT_1));
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
fn without_a_daemon_the_evaluation_is_postponed_and_batches_back_off() {
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
    assert_eq!(batch_of(&cmds), vec![DRV_A, DRV_B]);
    // The daemon goes away mid-batch: retries after 1, 2, 4 s.
    for (secs, delay) in [(70, 1), (80, 2), (90, 4)] {
        let cmds = w.at(secs).feed(&mut c, Input::BatchLost("gone".into()));
        assert!(cmds.is_empty());
        let retry = w.start + Duration::from_secs(secs + delay);
        assert!(c.poll_at().unwrap() <= retry);
        assert!(w.at(secs + delay - 1).feed(&mut c, Input::Tick).is_empty());
        // Back in order, the lost batch's builds with the rest.
        assert_eq!(
            batch_of(&w.at(secs + delay).feed(&mut c, Input::Tick)),
            vec![DRV_A, DRV_B]
        );
    }
    w.built(&[DRV_A, DRV_B]);
    w.feed(&mut c, Input::BatchDone { daemon_error: None });
    assert!(c.building().is_idle());
}

#[test]
fn a_poll_due_during_a_long_batch_fetches_and_evaluates_at_once_and_supersedes() {
    let mut w = World::new();
    let mut c = w.cycle(true, false);
    let cmds = w.evaluate(&mut c, COMMIT_1, &[&job_line("a", DRV_A), "(done 1)"]);
    assert_eq!(batch_of(&cmds), vec![DRV_A]);
    // The batch runs on; the poll falls due and goes ahead regardless.
    let cmds = w.at(60).feed(&mut c, Input::Tick);
    assert!(matches!(cmds[..], [Command::SpawnFetch(_)]), "{cmds:?}");
    w.feed(&mut c, fetched(COMMIT_2));
    // Job "a" now has another derivation: the old one is superseded.
    // (Its build is in flight, so it is not "scheduled" in the database's
    // sense only once the daemon starts it; here it has not started.)
    w.feed(&mut c, output(&[&job_line("a", DRV_B), "(done 1)"]));
    w.feed(&mut c, exited(true));
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
    // The batch ends; the new evaluation's build is next.
    w.built(&[DRV_A]);
    let cmds = w.feed(&mut c, Input::BatchDone { daemon_error: None });
    assert_eq!(batch_of(&cmds), vec![DRV_B]);
}

#[test]
fn one_shot_finishes_after_one_round_once_everything_is_built() {
    let mut w = World::new();
    let mut c = w.cycle(true, true);
    assert!(!c.is_finished());
    let cmds = w.evaluate(&mut c, COMMIT_1, &strs(&two_jobs()));
    assert_eq!(batch_of(&cmds), vec![DRV_A, DRV_B]);
    assert!(!c.is_finished(), "a batch is in flight");
    w.built(&[DRV_A, DRV_B]);
    w.feed(&mut c, Input::BatchDone { daemon_error: None });
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
        let batch = c.building().batch_open();
        let cmds = w.feed(&mut c, Input::Stop);
        let mut expected = vec![];
        if name != "Idle" {
            expected.push(Command::KillChild);
        }
        if batch {
            expected.push(Command::CloseBatch);
        }
        assert_eq!(cmds, expected, "{name}");
        assert_eq!(c.state().name(), "Stopped");
        // The half-registered evaluation is rolled back, not left running.
        assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 0, "{name}");
        assert_eq!(w.count("SELECT COUNT(*) FROM Builds"), 0, "{name}");
        // Late exits change nothing.
        assert!(w.feed(&mut c, exited(true)).is_empty());
        assert!(
            w.feed(&mut c, Input::BatchDone { daemon_error: None })
                .is_empty()
        );
        assert!(c.is_finished());
    }
}

#[test]
fn builds_left_pending_by_an_earlier_run_are_loaded_a_page_at_a_time() {
    let mut w = World::new();
    // Register PAGE + 1 builds of two derivations over many evaluations.
    for i in 0..=(PAGE / 2) {
        let jobs: Vec<JobRecord> = [DRV_A, DRV_B]
            .iter()
            .map(|d| job::job_record("x", d, Limits::default(), None, &w.drvs[*d]).unwrap())
            .enumerate()
            .map(|(k, mut j)| {
                j.job_name = format!("j{k}");
                j
            })
            .collect();
        w.db.register_evaluation("hello", &format!("{i:040}"), &jobs, 1)
            .unwrap();
    }
    let mut c = w.cycle(true, false);
    // The first page's first derivations make the batch; duplicates of a
    // derivation in flight wait for the next one.
    let cmds = w.feed(&mut c, Input::Tick);
    assert_eq!(batch_of(&cmds), vec![DRV_A, DRV_B]);
    assert!(c.building().queued() <= PAGE);
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

//! The dispatch policy, input by input: in-memory SQLite, synthetic
//! `.drv` files, time as a value, no daemon and no sleeping.

use super::*;
use crate::db::queue::{Counted, Waiting};
use crate::db::read::QueueFilter;
use crate::db::{JobRecord, status};
use crate::spec::Specification;
use std::collections::HashSet;

fn drv(name: &str) -> String {
    format!("/gnu/store/{:a<32}-{name}.drv", name.len())
}

/// A `.drv` file for any name: one output, no inputs.
fn drv_bytes(path: &str) -> Vec<u8> {
    let out = path.trim_end_matches(".drv");
    format!(
        "Derive([(\"out\",\"{out}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[(\"out\",\"{out}\")])"
    )
    .into_bytes()
}

fn job(name: &str, priority: i64, inputs: &[&str]) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: drv(name),
        system: "x86_64-linux".into(),
        nix_name: name.into(),
        outputs: vec![("out".into(), drv(name).trim_end_matches(".drv").into())],
        inputs: inputs.iter().map(|i| drv(i)).collect(),
        limits: Limits::default(),
        priority,
    }
}

struct World {
    db: Db,
    d: Dispatcher,
    start: Instant,
    now: Instant,
    inactive: HashSet<String>,
    /// `.drv` files collected from the store.
    missing: HashSet<String>,
}

impl World {
    fn new(slots: usize, specs: &[(&str, Option<i64>)]) -> World {
        let mut db = Db::open_in_memory().unwrap();
        for (name, priority) in specs {
            let spec = Specification::new(name, "file:///srv/x.git", "ci.scm", "jobs");
            db.add_specifications(&[spec]).unwrap();
            db.connection()
                .execute(
                    "UPDATE Specifications SET priority = ?2 WHERE repo_name = ?1",
                    rusqlite::params![name, priority],
                )
                .unwrap();
        }
        let now = Instant::now();
        World {
            db,
            d: Dispatcher::new(slots, false),
            start: now,
            now,
            inactive: HashSet::new(),
            missing: HashSet::new(),
        }
    }

    fn at(&mut self, secs: u64) -> &mut World {
        self.now = self.start + Duration::from_secs(secs);
        self
    }

    fn feed(&mut self, input: Input) -> Vec<Command> {
        let missing = &self.missing;
        let read_drv = |p: &str| match missing.contains(p) {
            true => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            false => Ok(drv_bytes(p)),
        };
        let inactive = &self.inactive;
        let may_start = |s: &str, _| !inactive.contains(s);
        let mut env = Env {
            now: self.now,
            unix_now: 1_700_000_000,
            db: &mut self.db,
            read_drv: &read_drv,
            may_start: &may_start,
        };
        let in_flight: Vec<Option<String>> = (0..self.d.slots())
            .map(|slot| self.d.in_flight(slot).map(|b| b.derivation.clone()))
            .collect();
        self.d.handle(input, &mut env);
        let cmds: Vec<Command> = std::iter::from_fn(|| self.d.poll_command()).collect();
        // The loop's close puts a build still started back in the queue.
        for c in &cmds {
            if let Command::Close { slot } = c
                && let Some(drv) = &in_flight[*slot]
            {
                self.db.reschedule(std::slice::from_ref(drv)).unwrap();
            }
        }
        // What the loop writes for the builds it hands to the daemon.
        let dispatched: Vec<_> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::Open { build, .. } => Some(*build),
                Command::Close { .. } => None,
            })
            .collect();
        self.db
            .record_statuses(&dispatched, &[], 1_700_000_000)
            .unwrap();
        cmds
    }

    fn evaluate(&mut self, spec: &str, commit: &str, jobs: &[JobRecord]) {
        self.db.register_evaluation(spec, commit, jobs, 1).unwrap();
        self.feed(Input::Changed);
    }

    /// What the loop records from the daemon, then tells the dispatcher.
    fn finish(&mut self, slot: usize, st: i64) -> Vec<Command> {
        let b = self.d.in_flight(slot).unwrap().derivation.clone();
        self.db
            .finish_builds(&[(b, crate::db::BuildStatus::of_column(st), None)], 2)
            .unwrap();
        self.feed(Input::Done {
            slot,
            daemon_error: None,
        })
    }

    fn status_of(&self, name: &str) -> i64 {
        self.db
            .connection()
            .query_row(
                "SELECT status FROM Builds WHERE derivation = ?1 ORDER BY id DESC",
                [drv(name)],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The job names of `/api/queue`, in its order.
    fn queue(&self) -> Vec<String> {
        // Two pages of 4: positions carry on from one page to the next.
        let (mut page, ahead) = self
            .db
            .queued_builds(&QueueFilter::default(), 4, None, Counted::default())
            .unwrap();
        if let Some(last) = page.last() {
            let after = Some((last.status.code(), last.rank, last.id));
            page.extend(
                self.db
                    .queued_builds(&QueueFilter::default(), 1000, after, ahead)
                    .unwrap()
                    .0,
            );
        }
        for (i, b) in page.iter().enumerate() {
            let expect = match b.status {
                status::STARTED => Waiting::Started,
                _ => Waiting::Queued {
                    position: i as i64 + 1,
                },
            };
            if b.waiting
                .as_ref()
                .is_some_and(|w| matches!(w, Waiting::Queued { .. } | Waiting::Started))
            {
                assert_eq!(b.waiting, Some(expect), "{}", b.job_name);
                // A single build's read says the same.
                let one = self.db.build(b.id).unwrap().unwrap();
                assert_eq!(one.waiting, b.waiting, "{}", b.job_name);
            }
        }
        page.into_iter().map(|b| b.job_name).collect()
    }
}

/// The job names of the builds opened, by slot order.
fn opened(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Open { item, .. } => Some(item.derivation.clone()),
            Command::Close { .. } => None,
        })
        .map(|d| {
            let name = d.rsplit_once('-').unwrap().1;
            name.trim_end_matches(".drv").to_string()
        })
        .collect()
}

#[test]
fn builds_start_by_spec_priority_then_job_priority_then_age_as_the_queue_lists_them() {
    let mut w = World::new(1, &[("low", None), ("high", Some(2)), ("mid", Some(5))]);
    w.evaluate("low", "c1", &[job("long", 0, &[]), job("low1", 0, &[])]);
    // The long build takes the only slot before the others are queued.
    assert_eq!(w.queue(), ["long", "low1"]);
    w.evaluate("mid", "c1", &[job("mid9", 9, &[]), job("mid0", 0, &[])]);
    w.evaluate("high", "c1", &[job("high3", 3, &[]), job("high1", 1, &[])]);
    let queue = w.queue();
    // Started first, then rank (spec × 10 + job): 21, 23, 50, 59, 90.
    assert_eq!(queue, ["long", "high1", "high3", "mid0", "mid9", "low1"]);
    let mut started = vec!["long".to_string()];
    while started.len() < queue.len() {
        let cmds = w.finish(0, status::SUCCEEDED.code());
        started.extend(opened(&cmds));
    }
    assert_eq!(started, queue);
    assert!(w.finish(0, status::SUCCEEDED.code()).is_empty());
    assert!(w.d.is_idle());
}

#[test]
fn each_slot_takes_one_build_and_a_derivation_is_never_in_flight_twice() {
    let mut w = World::new(3, &[("a", None), ("b", None)]);
    w.evaluate("a", "c1", &[job("x", 0, &[]), job("y", 0, &[])]);
    // Spec b's evaluation builds derivation x too.
    w.db.register_evaluation("b", "c1", &[job("x", 0, &[]), job("z", 0, &[])], 1)
        .unwrap();
    let cmds = w.feed(Input::Changed);
    assert_eq!(opened(&cmds), ["z"], "x is in flight already");
    assert_eq!(w.d.running(), 3);
    // x's result settles both of its builds.
    w.db.finish_builds(&[(drv("x"), status::SUCCEEDED, None)], 2)
        .unwrap();
    assert_eq!(
        w.db.connection()
            .query_row(
                "SELECT COUNT(*) FROM Builds WHERE derivation = ?1 AND status = 0",
                [drv("x")],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        2
    );
}

#[test]
fn a_build_waits_for_its_input_and_is_failed_dependency_without_the_daemon_when_it_fails() {
    let mut w = World::new(2, &[("a", None)]);
    // "app" comes first by priority, but needs "lib".
    w.evaluate("a", "c1", &[job("lib", 5, &[]), job("app", 0, &["lib"])]);
    assert_eq!(w.queue(), ["lib", "app"], "started first");
    let app: BuildView = w.db.build(BuildId(2)).unwrap().unwrap();
    assert_eq!(
        w.db.waiting(app.id, app.status, app.rank, "a").unwrap(),
        Some(Waiting::Dependency {
            input: BuildId(1),
            status: status::STARTED
        })
    );
    assert_eq!(w.d.running(), 1, "app waits, though a slot is free");
    let cmds = w.finish(0, status::FAILED.code());
    assert!(opened(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(w.status_of("app"), status::FAILED_DEPENDENCY);
    let errormsg: String =
        w.db.connection()
            .query_row("SELECT errormsg FROM Builds WHERE id = 2", [], |r| r.get(0))
            .unwrap();
    assert_eq!(errormsg, "dependency build 1 failed");
    assert!(w.d.is_idle());

    // A newer evaluation builds lib again (fixed): app is scheduled again
    // once lib succeeds, and built.
    w.evaluate("a", "c2", &[job("lib", 5, &[])]);
    let cmds = w.finish(0, status::SUCCEEDED.code());
    assert_eq!(opened(&cmds), ["app"]);
    assert_eq!(w.status_of("app"), status::STARTED);
}

#[test]
fn dependents_of_a_build_failed_in_the_scan_fail_in_the_same_turn() {
    let mut w = World::new(1, &[("a", None)]);
    w.evaluate("a", "c1", &[job("base", 0, &[])]);
    assert_eq!(w.finish(0, status::FAILED.code()), vec![]);
    // "top" (rank 90) is read before "mid" (95), which it needs; mid
    // needs the failed base.
    w.evaluate(
        "a",
        "c2",
        &[job("top", 0, &["mid"]), job("mid", 5, &["base"])],
    );
    assert_eq!(w.status_of("mid"), status::FAILED_DEPENDENCY);
    assert_eq!(w.status_of("top"), status::FAILED_DEPENDENCY);
    assert!(w.d.is_idle());
}

#[test]
fn builds_of_inactive_specs_wait_and_say_so() {
    let mut w = World::new(1, &[("on", None), ("off", None)]);
    w.inactive.insert("off".into());
    w.evaluate("off", "c1", &[job("o1", 0, &[])]);
    w.evaluate("on", "c1", &[job("n1", 0, &[]), job("n2", 0, &[])]);
    assert_eq!(w.d.in_flight(0).unwrap().specification, "on");
    // The database says so too.
    w.db.set_specification_active("off", false).unwrap();
    let o1 = w.db.build(BuildId(1)).unwrap().unwrap();
    assert_eq!(
        w.db.waiting(o1.id, o1.status, o1.rank, "off").unwrap(),
        Some(Waiting::Inactive)
    );
    let n2 = w.db.build(BuildId(3)).unwrap().unwrap();
    // n1 is in flight, and so listed as started: n2 is second.
    assert_eq!(
        w.db.waiting(n2.id, n2.status, n2.rank, "on").unwrap(),
        Some(Waiting::Queued { position: 2 })
    );
    w.finish(0, status::SUCCEEDED.code());
    w.finish(0, status::SUCCEEDED.code());
    assert!(w.d.is_idle());
    assert_eq!(w.status_of("o1"), status::SCHEDULED);
}

#[test]
fn a_derivation_gone_from_the_store_is_canceled_and_the_next_one_goes() {
    let mut w = World::new(1, &[("a", None)]);
    w.missing.insert(drv("gone"));
    w.evaluate("a", "c1", &[job("gone", 0, &[]), job("there", 0, &[])]);
    assert_eq!(w.status_of("gone"), status::CANCELED);
    assert_eq!(w.d.in_flight(0).unwrap().derivation, drv("there"));
}

#[test]
fn without_the_daemon_builds_back_off_and_one_shot_gives_up() {
    let mut w = World::new(1, &[("a", None)]);
    w.d = Dispatcher::new(1, true);
    w.evaluate("a", "c1", &[job("x", 0, &[])]);
    for (n, (secs, delay)) in [(10, 1), (20, 2), (30, 4), (40, 8)].into_iter().enumerate() {
        let cmds = w.at(secs).feed(Input::Lost {
            slot: 0,
            why: "gone".into(),
        });
        assert!(cmds.is_empty(), "{n}");
        let retry = w.start + Duration::from_secs(secs + delay);
        assert_eq!(w.d.poll_at(w.now), Some(retry));
        assert!(w.at(secs + delay - 1).feed(Input::Tick).is_empty());
        assert_eq!(opened(&w.at(secs + delay).feed(Input::Tick)), ["x"]);
    }
    assert_eq!(w.d.failure(), None);
    w.feed(Input::Lost {
        slot: 0,
        why: "gone".into(),
    });
    assert_eq!(w.d.failure(), Some("gone"));
    assert!(w.at(1000).feed(Input::Tick).is_empty());
}

#[test]
fn stop_closes_every_slot_in_flight() {
    let mut w = World::new(3, &[("a", None)]);
    w.evaluate("a", "c1", &[job("x", 0, &[]), job("y", 0, &[])]);
    let cmds = w.feed(Input::Stop);
    assert_eq!(
        cmds,
        [Command::Close { slot: 0 }, Command::Close { slot: 1 }]
    );
    assert!(w.feed(Input::Changed).is_empty());
}

#[test]
fn a_long_queue_blocked_on_an_input_is_scanned_a_bounded_chunk_per_turn() {
    let mut w = World::new(2, &[("a", None)]);
    w.evaluate("a", "c1", &[job("lib", 0, &[])]);
    assert_eq!(w.d.running(), 1);
    // 2.5 pages of builds that wait for lib, then one that does not.
    let mut jobs: Vec<JobRecord> = (0..PAGE * 5 / 2)
        .map(|i| job(&format!("w{i}"), 0, &["lib"]))
        .collect();
    jobs.push(job("free", 0, &[]));
    w.db.register_evaluation("a", "c2", &jobs, 1).unwrap();
    let mut turns = 1;
    let mut cmds = w.feed(Input::Changed);
    while cmds.is_empty() {
        assert_eq!(
            w.d.poll_at(w.now),
            Some(w.now),
            "more to scan: wake at once"
        );
        cmds = w.feed(Input::Tick);
        turns += 1;
    }
    assert_eq!(opened(&cmds), ["free"]);
    assert_eq!(turns, 3, "{SCAN_PER_TURN} rows a turn");
    // Once lib succeeds, the waiting builds go, in order.
    let cmds = w.finish(0, status::SUCCEEDED.code());
    assert_eq!(opened(&cmds), ["w0"]);
}

use crate::db::read::BuildView;

#[test]
fn a_position_far_back_is_counted_up_to_a_limit() {
    let mut w = World::new(1, &[("a", None)]);
    let n = crate::db::queue::POSITION_LIMIT as usize + 5;
    let jobs: Vec<JobRecord> = (0..n).map(|i| job(&format!("j{i}"), 0, &[])).collect();
    w.db.register_evaluation("a", "c1", &jobs, 1).unwrap();
    let at = |w: &World, id: i64| {
        let b = w.db.build(BuildId(id)).unwrap().unwrap();
        w.db.waiting(b.id, b.status, b.rank, "a").unwrap().unwrap()
    };
    let limit = crate::db::queue::POSITION_LIMIT;
    assert_eq!(
        at(&w, limit + 1),
        Waiting::Queued {
            position: limit + 1
        }
    );
    assert_eq!(
        at(&w, n as i64),
        Waiting::QueuedBeyond {
            position: limit + 2
        }
    );
}

#[test]
fn a_build_whose_daemon_connection_stays_silent_is_tried_again_then_fails() {
    let mut w = World::new(1, &[("s", None)]);
    let limits = Limits {
        max_silent_time: Some(20),
        timeout: Some(60),
    };
    let mut hung = job("hung", 0, &[]);
    hung.limits = limits;
    w.evaluate("s", "c1", &[hung, job("next", 0, &[])]);
    assert_eq!(w.status_of("hung"), status::STARTED.code());
    let limit = stall_limit(limits).as_secs();
    assert_eq!(limit, 60 + 20 + 60);
    // Bytes from the daemon now and then: not stalled.
    w.at(100);
    w.d.heard(0, w.now);
    assert!(w.at(limit + 50).feed(Input::Tick).is_empty());
    assert_eq!(
        w.d.poll_at(w.now),
        Some(w.start + Duration::from_secs(100 + limit))
    );
    // Silent for the whole limit: its connection closed, tried again.
    let cmds = w.at(100 + limit).feed(Input::Tick);
    assert_eq!(cmds.first(), Some(&Command::Close { slot: 0 }), "{cmds:?}");
    assert_eq!(opened(&cmds), ["hung"]);
    assert_eq!(w.status_of("hung"), status::STARTED.code());
    // Silent again: it fails, with why, and the next build goes.
    assert!(w.at(99 + 2 * limit).feed(Input::Tick).is_empty());
    let cmds = w.at(100 + 2 * limit).feed(Input::Tick);
    assert_eq!(cmds.first(), Some(&Command::Close { slot: 0 }), "{cmds:?}");
    assert_eq!(opened(&cmds), ["next"]);
    assert_eq!(w.status_of("hung"), status::FAILED_OTHER.code());
    let reason: String =
        w.db.connection()
            .query_row(
                "SELECT errormsg FROM Builds WHERE derivation = ?1",
                [drv("hung")],
                |r| r.get(0),
            )
            .unwrap();
    assert!(
        reason.contains("no word from guix-daemon for 140 s") && reason.contains("2 times"),
        "{reason}"
    );
    // A build that ends normally starts its count again.
    assert_eq!(w.d.stalls.len(), 0);
}

#[test]
fn the_stall_limit_covers_the_builds_own_limits_or_guix_defaults() {
    let none = stall_limit(Limits::default()).as_secs();
    assert_eq!(none, 72_000 + 3600 + 60);
    let short = Limits {
        max_silent_time: Some(2),
        timeout: Some(3),
    };
    assert_eq!(stall_limit(short).as_secs(), 65);
}

//! The build queue at 100,000 pending builds (a file database, as in
//! production): what one loop turn of the dispatcher costs, with the
//! queue free and with its first half waiting on one input, and what
//! `/api/queue` and one build's `waiting` cost at depth.

use crate::common::*;
use cuirass::db::read::QueueFilter;
use cuirass::db::{Db, JobRecord};
use cuirass::queue::{Dispatcher, Env, Input};
use std::time::Instant;

const PENDING: usize = 100_000;

fn drv(i: usize) -> String {
    format!("/gnu/store/{i:a>32}-q{i}.drv")
}

fn job(i: usize, inputs: Vec<String>) -> JobRecord {
    JobRecord {
        job_name: format!("q{i}"),
        derivation: drv(i),
        system: "x86_64-linux".into(),
        nix_name: format!("q{i}"),
        outputs: vec![("out".into(), drv(i).trim_end_matches(".drv").into())],
        inputs,
        priority: (i % 10) as i64,
        ..JobRecord::default()
    }
}

/// One dispatcher input's cost: the median over `n` calls of `input()`.
fn turns(db: &mut Db, d: &mut Dispatcher, n: usize, input: impl Fn() -> Input) -> f64 {
    let read_drv = |p: &str| {
        let out = p.trim_end_matches(".drv");
        Ok(format!(
            "Derive([(\"out\",\"{out}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])"
        )
        .into_bytes())
    };
    let may_start = |_: &str, _| true;
    let mut times = Vec::new();
    for _ in 0..n {
        let mut env = Env {
            now: Instant::now(),
            unix_now: 1,
            db,
            read_drv: &read_drv,
            may_start: &may_start,
        };
        let start = Instant::now();
        d.handle(input(), &mut env);
        times.push(secs(start.elapsed()));
        while d.poll_command().is_some() {}
    }
    median(times)
}

pub fn run() -> Result<Vec<Figure>, String> {
    let tmp = TempDir::new("queue");
    let mut db = open_db(&tmp.path().join("cuirass.db"), "file:///nowhere")?;
    let e = |e: cuirass::db::Error| e.to_string();
    // The first half waits for build 0's derivation, which is started.
    let blocker = drv(0);
    let jobs: Vec<JobRecord> = (0..PENDING)
        .map(|i| match i {
            1..=50_000 => job(i, vec![blocker.clone()]),
            _ => job(i, vec![]),
        })
        .collect();
    db.register_evaluation(SPEC, "c1", &jobs, 1).map_err(e)?;
    let mut figures = Vec::new();

    // Slot 0 takes the blocker; slot 1 passes over the builds waiting for
    // it, 1,000 rows a turn, until a free one comes.
    let mut d = Dispatcher::new(2, false);
    let first = turns(&mut db, &mut d, 1, || Input::Changed);
    let mut scan = Vec::new();
    for _ in 0..60 {
        scan.push(turns(&mut db, &mut d, 1, || Input::Tick));
        if d.running() == 2 {
            break;
        }
    }
    let worst = scan.iter().cloned().fold(first, f64::max);
    figures.push(
        Figure::new(
            "queue: worst dispatcher turn, 50,000 of 100,000 builds waiting on an input",
            worst * 1e3,
            "ms",
            Some(Target::AtMost(100.0)),
        )
        .note(format!(
            "{} turns to pass the waiting builds",
            scan.len() + 1
        )),
    );
    // Builds finishing one after another, the queue read again each time.
    let refill = turns(&mut db, &mut d, 20, || Input::Done {
        slot: 1,
        daemon_error: None,
    });
    figures.push(Figure::new(
        "queue: dispatcher turn after a build ends (100,000 pending)",
        refill * 1e3,
        "ms",
        Some(Target::AtMost(100.0)),
    ));

    let mut page = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        db.queued_builds(&Default::default(), 100, None, Default::default())
            .map_err(e)?;
        page.push(secs(start.elapsed()));
    }
    figures.push(Figure::new(
        "queue: /api/queue?nr=100 with waiting, 100,000 pending",
        median(page) * 1e3,
        "ms",
        Some(Target::AtMost(50.0)),
    ));
    // A filter the whole queue's walk checks: one job near the back (its
    // position counted up to 10,000 ahead), and one system, which every
    // build has (positions counted between listed builds).
    for (what, filter) in [
        (
            "job=q99999, at the back",
            QueueFilter {
                job: Some("q99999".into()),
                ..QueueFilter::default()
            },
        ),
        (
            "system=x86_64-linux, all",
            QueueFilter {
                system: Some("x86_64-linux".into()),
                ..QueueFilter::default()
            },
        ),
    ] {
        let mut page = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            db.queued_builds(&filter, 100, None, Default::default())
                .map_err(e)?;
            page.push(secs(start.elapsed()));
        }
        figures.push(Figure::new(
            &format!("queue: /api/queue?nr=100&{what} of 100,000 pending"),
            median(page) * 1e3,
            "ms",
            Some(Target::AtMost(50.0)),
        ));
    }
    let last = db
        .build(cuirass::records::BuildId(PENDING as i64))
        .map_err(e)?
        .ok_or("no last build")?;
    let mut deep = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        db.waiting(last.id, last.status, last.rank, SPEC)
            .map_err(e)?;
        deep.push(secs(start.elapsed()));
    }
    figures.push(
        Figure::new(
            "queue: one build's waiting at the back of 100,000",
            median(deep) * 1e3,
            "ms",
            Some(Target::AtMost(100.0)),
        )
        .note(format!("{:?}", last.waiting)),
    );
    Ok(figures)
}

//! Trace replay: recorded build-trace lines fed to [`Batch`] as the bytes
//! of daemon "next" messages, and the status updates they produce written
//! to the database the way the event loop writes them.

use crate::common::*;
use cuirass::build::{self, Batch, Item, Limits, Update};
use cuirass::db::{Db, JobRecord};
use cuirass::wire::{PROTOCOL_VERSION, WORKER_MAGIC_2, put_bytes, put_u64, tag};
use std::time::Instant;

const LINES: usize = 200_000;
/// Every derivation gets a build-started line and a final line.
const DERIVATIONS: usize = LINES / 2;
/// The event loop reads the daemon socket in chunks of this size.
const CHUNK: usize = 64 * 1024;
const RUNS: usize = 3;

const BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const NAMES: &[&str] = &[
    "hello-2.10",
    "guile-3.0.2",
    "coreutils-8.32",
    "python-numpy-1.17.3",
    "linux-libre-5.4.20",
    "gcc-toolchain-10.2.0",
];

/// A derivation file name shaped like the store's, distinct per index.
fn drv_name(i: usize) -> String {
    let mut hash = String::with_capacity(32);
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    for _ in 0..32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        hash.push(BASE32[(x % 32) as usize] as char);
    }
    format!("/gnu/store/{hash}-{}-{i}.drv", NAMES[i % NAMES.len()])
}

/// The two trace lines of derivation `i`, as guix-daemon 1.2.0 prints
/// them (see fixtures/trace/plain.txt); one build in ten fails.
fn trace_lines(i: usize, drv: &str) -> String {
    let base = &drv["/gnu/store/".len()..];
    let started = format!(
        "@ build-started {drv} - x86_64-linux /var/log/guix/drvs/{}//{}.bz2 {}\n",
        &base[..2],
        &base[2..],
        10_000 + i
    );
    let end = if i % 10 == 3 {
        format!("@ build-failed {drv} - 1 builder for `{drv}' failed with exit code 1\n")
    } else {
        format!("@ build-succeeded {drv} -\n")
    };
    started + &end
}

struct Recorded {
    items: Vec<Item>,
    /// Everything the daemon sends on the batch's connection.
    bytes: Vec<u8>,
}

fn record() -> (Vec<Recorded>, Vec<JobRecord>) {
    let mut batches = Vec::new();
    let mut jobs = Vec::with_capacity(DERIVATIONS);
    let names: Vec<String> = (0..DERIVATIONS).map(drv_name).collect();
    for (b, chunk) in names.chunks(build::BATCH_SIZE).enumerate() {
        let mut bytes = Vec::new();
        put_u64(&mut bytes, WORKER_MAGIC_2);
        put_u64(&mut bytes, PROTOCOL_VERSION);
        // End of the handshake's log stream, then set-options' reply.
        put_u64(&mut bytes, tag::LAST);
        put_u64(&mut bytes, tag::LAST);
        let mut items = Vec::new();
        for (k, drv) in chunk.iter().enumerate() {
            let i = b * build::BATCH_SIZE + k;
            let out = drv.trim_end_matches(".drv").to_string();
            // The daemon sends one "next" message per line it prints.
            for line in trace_lines(i, drv).split_inclusive('\n') {
                put_u64(&mut bytes, tag::NEXT);
                put_bytes(&mut bytes, line.as_bytes());
            }
            jobs.push(JobRecord {
                job_name: format!("job-{i}"),
                derivation: drv.clone(),
                system: "x86_64-linux".into(),
                nix_name: NAMES[i % NAMES.len()].into(),
                outputs: vec![("out".into(), out.clone())],
                ..JobRecord::default()
            });
            items.push(Item {
                derivation: drv.clone(),
                outputs: vec![out],
                inputs: Vec::new(),
            });
        }
        // build-paths ends in failure when any build failed, as with keep-going.
        put_u64(&mut bytes, tag::ERROR);
        put_bytes(&mut bytes, b"some builds failed");
        put_u64(&mut bytes, 100);
        batches.push(Recorded { items, bytes });
    }
    (batches, jobs)
}

/// Before the loop wrote each read's updates in one transaction
/// (`Db::apply_build_updates`), a started build was one auto-committed
/// UPDATE and the finished ones of a read went together: kept to show the
/// difference.
fn apply(db: &mut Db, updates: Vec<Update>, now: i64, one_transaction: bool) -> Result<(), String> {
    if one_transaction {
        return db
            .apply_build_updates(&updates, now)
            .map(drop)
            .map_err(|e| e.to_string());
    }
    let mut finished = Vec::new();
    for u in updates {
        match u {
            Update::Started { derivation, log } => {
                db.build_started(&derivation, &log, now)
                    .map_err(|e| e.to_string())?;
            }
            Update::Finished {
                derivation,
                status,
                log,
                ..
            } => finished.push((derivation, status, log)),
            // The replayed traces build nothing remotely.
            Update::Remote { .. } => {}
        }
    }
    if !finished.is_empty() {
        db.finish_builds(&finished, now)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn replay(db: &mut Db, batches: &[Recorded], one_transaction: bool) -> Result<(), String> {
    for recorded in batches {
        let mut batch = Batch::new(
            recorded.items.clone(),
            build::build_options(false, false, false, Limits::default()),
            Limits::default(),
        );
        for chunk in recorded.bytes.chunks(CHUNK) {
            batch.receive(chunk, "spec=bench builds")?;
            let n = batch.client.pending_output().len();
            batch.client.consume_output(n);
            apply(db, batch.take_updates(), 2, one_transaction)?;
        }
        if !batch.is_done() {
            return Err("a replayed batch did not finish".into());
        }
    }
    Ok(())
}

pub fn run() -> Result<Vec<Figure>, String> {
    let (batches, jobs) = record();
    let replay_rate = |one_transaction| -> Result<f64, String> {
        let tmp = TempDir::new("trace");
        let mut db = open_db(&tmp.path().join("cuirass.db"), "file:///nowhere")?;
        db.register_evaluation(SPEC, "0123abcd", &jobs, 1)
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        replay(&mut db, &batches, one_transaction)?;
        let rate = LINES as f64 / secs(start.elapsed());
        check(&db)?;
        Ok(rate)
    };
    // The old way is slow enough that one run makes the point.
    let auto_commit = replay_rate(false)?;
    let mut rates = Vec::new();
    let mut codec_rates = Vec::new();
    for _ in 0..RUNS {
        rates.push(replay_rate(true)?);
        // The same bytes without the database: what the codecs cost alone.
        let start = Instant::now();
        for recorded in &batches {
            let mut batch = Batch::new(
                recorded.items.clone(),
                build::build_options(false, false, false, Limits::default()),
                Limits::default(),
            );
            for chunk in recorded.bytes.chunks(CHUNK) {
                batch.receive(chunk, "spec=bench builds")?;
                std::hint::black_box(batch.take_updates());
            }
        }
        codec_rates.push(LINES as f64 / secs(start.elapsed()));
    }
    Ok(vec![
        Figure::new(
            "trace replay: 200,000 lines through Batch + database",
            median(rates),
            "lines/s",
            Some(Target::AtLeast(200_000.0)),
        )
        .note(format!(
            "median of {RUNS}; {} batches of {}, read in 64 KiB chunks; each read's updates in one transaction, as the event loop does",
            batches.len(),
            build::BATCH_SIZE,
        )),
        Figure::new(
            "trace replay, one auto-committed UPDATE per build-started",
            auto_commit,
            "lines/s",
            None,
        )
        .note("one run; how the loop wrote them before".to_string()),
        Figure::new(
            "trace replay, Batch alone (no database)",
            median(codec_rates),
            "lines/s",
            None,
        )
        .note(format!("median of {RUNS}; parsing, framing and status logic, with info logging formatted")),
    ])
}

/// The replay must have done the work it claims.
fn check(db: &Db) -> Result<(), String> {
    let (ok, failed, other): (i64, i64, i64) = db
        .connection()
        .query_row(
            "SELECT SUM(status = 0), SUM(status = 1), SUM(status NOT IN (0, 1)) FROM Builds",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| e.to_string())?;
    let want_failed = (DERIVATIONS / 10) as i64;
    if failed != want_failed || ok != DERIVATIONS as i64 - want_failed || other != 0 {
        return Err(format!(
            "replay left {ok} succeeded, {failed} failed, {other} other builds"
        ));
    }
    Ok(())
}

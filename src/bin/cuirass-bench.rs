//! `cuirass-bench`: the figures of README.md's Performance section.
//!
//!     cargo run --release --bin cuirass-bench -- [NAME...]
//!
//! NAME is one of `registration`, `streaming`, `trace-replay`,
//! `bookkeeping`, `restart`, `api`, `queue`, `spec-deletion`, and at
//! ci.guix's scale `restart-1m`,
//! `scale-db` (makes the 10,000,000-build databases and times the
//! upgrade), `api-10m`, `registration-10m`, and `throughput`,
//! `throughput-10m` (the `/build/ID` load run of `api` and `api-10m`
//! alone); none runs all but these last six, which need 20 GB of disk
//! or repeat a part of another.  Needs the real guix-daemon and
//! Guix (see /work/shared/GUIX.md); the first run makes and builds the
//! benchmark's derivations once and caches their evaluator output under
//! /var/tmp/cuirass-bench/, and `api` generates its database of 1,000,000
//! builds there once.

#[path = "cuirass-bench/api.rs"]
mod api;
#[path = "cuirass-bench/api_db.rs"]
mod api_db;
#[path = "cuirass-bench/bookkeeping.rs"]
mod bookkeeping;
#[path = "cuirass-bench/common.rs"]
mod common;
#[path = "cuirass-bench/deletion.rs"]
mod deletion;
#[path = "cuirass-bench/http_client.rs"]
mod http_client;
#[path = "cuirass-bench/queue.rs"]
mod queue;
#[path = "cuirass-bench/registration.rs"]
mod registration;
#[path = "cuirass-bench/restart.rs"]
mod restart;
#[path = "cuirass-bench/scale.rs"]
mod scale;
#[path = "cuirass-bench/streaming.rs"]
mod streaming;
#[path = "cuirass-bench/trace_replay.rs"]
mod trace_replay;

use common::Figure;
use std::process::ExitCode;

type Bench = fn() -> Result<Vec<Figure>, String>;

/// Run only when named.
const ON_REQUEST: &[&str] = &[
    "restart-1m",
    "scale-db",
    "api-10m",
    "registration-10m",
    "throughput",
    "throughput-10m",
];

const BENCHES: &[(&str, Bench)] = &[
    ("registration", registration::run),
    ("streaming", streaming::run),
    ("trace-replay", trace_replay::run),
    ("bookkeeping", bookkeeping::run),
    ("restart", restart::run),
    ("api", api::run),
    ("queue", queue::run),
    ("spec-deletion", deletion::run),
    ("restart-1m", restart::run_1m),
    ("scale-db", api::generate_10m),
    ("api-10m", api::run_10m),
    ("registration-10m", scale::run),
    ("throughput", api::throughput),
    ("throughput-10m", api::throughput_10m),
];

fn main() -> ExitCode {
    // The registration child's checkpointer, as the loop has one.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(cuirass::db::checkpointer::SUBCOMMAND) {
        return ExitCode::from(cuirass::db::checkpointer::child_main(&args) as u8);
    }
    // `registration-10m` runs its registration in a child, this binary.
    if let Some(db) = std::env::var_os(scale::CHILD_ENV) {
        return match scale::child(&db.to_string_lossy()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("registration child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Cuirass logs every build event at info level; the daemon writes that
    // to stderr, so the benchmarks pay for the formatting too.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .target(env_logger::Target::Pipe(Box::new(std::io::sink())))
        .init();
    let names: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bad) = names
        .iter()
        .find(|n| !BENCHES.iter().any(|(name, _)| name == n))
    {
        let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "cuirass-bench: unknown benchmark {bad:?} (known: {})",
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let mut failed = false;
    let mut figures = Vec::new();
    for (name, bench) in BENCHES {
        let named = names.iter().any(|n| n == name);
        if !named && (!names.is_empty() || ON_REQUEST.contains(name)) {
            continue;
        }
        eprintln!("{name}…");
        let start = std::time::Instant::now();
        match bench() {
            Ok(fs) => {
                for f in &fs {
                    print_figure(f);
                }
                figures.extend(fs);
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                failed = true;
            }
        }
        eprintln!("  ({name} took {:.0} s)", start.elapsed().as_secs_f64());
    }
    println!();
    println!("| figure | value | target | met |");
    println!("|---|---|---|---|");
    for f in &figures {
        let target = match f.target {
            Some(common::Target::AtMost(x)) => format!("≤ {}", fmt(x, f.unit)),
            Some(common::Target::AtLeast(x)) => format!("≥ {}", fmt(x, f.unit)),
            None => "—".into(),
        };
        let met = match f.met() {
            Some(true) => "met",
            Some(false) => "not met",
            None => "",
        };
        println!(
            "| {} | {} | {target} | {met} |",
            f.name,
            fmt(f.value, f.unit)
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fmt(x: f64, unit: &str) -> String {
    let n = if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    };
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

fn print_figure(f: &Figure) {
    println!("{}: {}", f.name, fmt(f.value, f.unit));
    if !f.note.is_empty() {
        println!("    {}", f.note);
    }
}

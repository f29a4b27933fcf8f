//! The HTTP API under load: the real `cuirass` daemon over a database of
//! 1,000,000 builds, driven by the blocking clients of `http_client`.

use crate::api_db::{self, Rng, Shape};
use crate::common::*;
use crate::http_client::{Client, closed_loop, quantile_ms};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SEQUENTIAL: usize = 1_000;
const WARM_UP: usize = 200;
const CONNECTIONS: usize = 50;
const LOAD_REQUESTS: u64 = 1_000_000;
/// 1,000,000 requests take ~50 s at the target rate; a loaded machine
/// gets this long and the figure says how many were done.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
const HOL_TRIALS: usize = 50;
/// How long after the large request the small one is sent, so that it
/// arrives while the large one is being served.
const HOL_DELAY: Duration = Duration::from_micros(200);

/// The path of the `i`th request of a run.
type PathOf = Box<dyn Fn(u64) -> String>;

/// `/build/ID` for a pseudo-random ID spread over the whole table of
/// `builds` builds.
fn build_path(builds: i64) -> impl Fn(u64) -> String + Send + Sync + Clone + 'static {
    move |i| format!("/build/{}", 1 + Rng(i).next() % builds as u64)
}

/// The CPUs to pin the daemon and the load generator to, if there are two
/// and `taskset` (util-linux) exists.
pub(crate) fn cpus() -> Option<(usize, usize)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("taskset").is_file()));
    (n >= 2 && taskset).then_some((0, 1))
}

pub(crate) fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn start_daemon(
    cuirass: &Path,
    dir: &Path,
    db: &Path,
    cpu: Option<usize>,
) -> Result<Daemon, String> {
    start_daemon_with(cuirass, dir, db, cpu, &[])
}

/// The daemon of [`start_daemon`] with `extra` arguments; its log is
/// `dir/cuirass.log`.
pub(crate) fn start_daemon_with(
    cuirass: &Path,
    dir: &Path,
    db: &Path,
    cpu: Option<usize>,
    extra: &[String],
) -> Result<Daemon, String> {
    let port = free_port()?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string()]).arg(cuirass);
            cmd
        }
        None => Command::new(cuirass),
    };
    let log = std::fs::File::create(dir.join("cuirass.log")).map_err(|e| e.to_string())?;
    cmd.arg("--database")
        .arg(db)
        .arg("--cache-directory")
        .arg(dir.join("cache"))
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        .args(["--interval", "100000"])
        .args(extra)
        // No daemon is needed: there is nothing to build.
        .env("GUIX_DAEMON_SOCKET", dir.join("no-daemon"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let child = cmd.spawn().map_err(|e| format!("cuirass: {e}"))?;
    Ok(Daemon { child, port })
}

pub(crate) fn wait_ready(daemon: &mut Daemon, start: Instant) -> Result<f64, String> {
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("cuirass exited at start-up: {status}"));
        }
        if let Ok(mut c) = Client::connect(daemon.port)
            && c.get("/api/queue?nr=1").is_ok()
        {
            return Ok(secs(start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err("cuirass did not answer within 120 s".into())
}

fn rss_mib(pid: u32) -> Result<f64, String> {
    proc_status_kib(pid, "VmRSS")
        .map(|k| k as f64 / 1024.0)
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

/// Every route measured, by name, with the path of its `i`th request;
/// random IDs and names spread over the whole database.
fn routes(shape: &Shape) -> Vec<(String, PathOf)> {
    let (evals, builds) = (shape.evaluations as u64, shape.builds() as u64);
    let packages = (shape.jobs_per_evaluation as u64 / shape.systems.len() as u64).max(1);
    let eval = move |i: u64| 1 + Rng(i ^ 0x5eed).next() % evals;
    let build = move |i: u64| 1 + Rng(i).next() % builds;
    let (first, second) = (shape.systems[0], shape.systems[1]);
    let names = move |i: u64| {
        let p = i % packages;
        format!("package-{p}.{first},package-{p}.{second}")
    };
    let mut r: Vec<(String, PathOf)> = vec![
        (
            "/api/latestbuilds?nr=100".into(),
            Box::new(|_| "/api/latestbuilds?nr=100".into()),
        ),
        (
            "/api/queue?nr=100".into(),
            Box::new(|_| "/api/queue?nr=100".into()),
        ),
        (
            "/build/ID (random ID)".into(),
            Box::new(move |i| format!("/build/{}", build(i))),
        ),
        (
            "/api/evaluations?nr=20".into(),
            Box::new(|_| "/api/evaluations?nr=20".into()),
        ),
        (
            "/api/evaluation?id=ID".into(),
            Box::new(move |i| format!("/api/evaluation?id={}", eval(i))),
        ),
        (
            "/api/jobs?evaluation=ID&names=A,B".into(),
            Box::new(move |i| format!("/api/jobs?evaluation={}&names={}", eval(i), names(i))),
        ),
        (
            "/api/jobs/history?spec=guix-master&names=A,B&nr=10".into(),
            Box::new(move |i| {
                format!(
                    "/api/jobs/history?spec=guix-master&names={}&nr=10",
                    names(i)
                )
            }),
        ),
        ("/ (specifications)".into(), Box::new(|_| "/".into())),
        (
            "/jobset/guix-master".into(),
            Box::new(|_| "/jobset/guix-master".into()),
        ),
    ];
    for status in ["all", "succeeded", "failed", "pending", "canceled"] {
        r.push((
            format!("/eval/ID?status={status}"),
            Box::new(move |i| format!("/eval/{}?status={status}", eval(i))),
        ));
    }
    r.push((
        "/eval/ID?job=package-N (a package's jobs)".into(),
        Box::new(move |i| format!("/eval/{}?job=package-{}.", eval(i), i % packages)),
    ));
    r.push((
        "/build/ID/details".into(),
        Box::new(move |i| format!("/build/{}/details", build(i))),
    ));
    r.push(("/metrics".into(), Box::new(|_| "/metrics".into())));
    r.push((
        "/search?query=package-N (N in 100-999: 1 to 111 packages)".into(),
        Box::new(move |i| format!("/search?query=package-{}", 100 + i % 900)),
    ));
    r.push((
        "/search?query=SYSTEM (a fifth of all names)".into(),
        Box::new(move |i| {
            format!(
                "/search?query={}",
                ["aarch64", "i686", "x86_64"][i as usize % 3]
            )
        }),
    ));
    r.push((
        "/search?query=NOTHING (no match)".into(),
        Box::new(|i| format!("/search?query=zz{i}q")),
    ));
    r
}

/// The whole job list of the newest evaluation (`/api/jobs`), which the
/// server answers a page per loop turn: median time of a few.
fn whole_jobs_listing(client: &mut Client, shape: &Shape) -> Result<Figure, String> {
    let path = format!("/api/jobs?evaluation={}", shape.evaluations);
    let times: Vec<f64> = (0..10)
        .map(|_| client.get(&path).map(secs))
        .collect::<Result<_, _>>()?;
    Ok(Figure::new(
        &format!(
            "API /api/jobs?evaluation=ID, all {} jobs: median",
            shape.jobs_per_evaluation
        ),
        median(times) * 1e3,
        "ms",
        None,
    )
    .note("the answer goes out a page of jobs per loop turn, other requests served between"))
}

/// Median and p99 of `SEQUENTIAL` requests on one connection, in ms.
fn sequential(client: &mut Client, path: &PathOf) -> Result<(f64, f64), String> {
    for i in 0..WARM_UP {
        client.get(&path(i as u64 + 1_000_000))?;
    }
    let mut lat: Vec<u32> = (0..SEQUENTIAL)
        .map(|i| client.get(&path(i as u64)).map(|d| d.as_micros() as u32))
        .collect::<Result<_, _>>()?;
    lat.sort_unstable();
    Ok((quantile_ms(&lat, 0.5), quantile_ms(&lat, 0.99)))
}

/// The small request's extra wait while a large one is served, in ms
/// (median over trials), and the large one's own time alone.
fn head_of_line(
    port: u16,
    small_alone: f64,
    build_path: &dyn Fn(u64) -> String,
) -> Result<(f64, f64), String> {
    const LARGE: &str = "/api/latestbuilds?nr=1000";
    let mut large = Client::connect(port)?;
    let mut small = Client::connect(port)?;
    let mut alone: Vec<f64> = (0..20)
        .map(|_| large.get(LARGE).map(secs))
        .collect::<Result<_, _>>()?;
    alone.sort_by(f64::total_cmp);
    let mut waits = Vec::new();
    for i in 0..HOL_TRIALS {
        large.send(LARGE)?;
        let sent = Instant::now();
        while sent.elapsed() < HOL_DELAY {
            std::hint::spin_loop();
        }
        let d = small.get(&build_path(i as u64))?;
        large.receive()?;
        waits.push(secs(d) * 1e3);
    }
    Ok((
        (median(waits) - small_alone).max(0.0),
        alone[alone.len() / 2] * 1e3,
    ))
}

/// Each route's sequential latency, then the head-of-line wait.
fn latencies(
    port: u16,
    shape: &Shape,
    db: &Path,
    build_path: &dyn Fn(u64) -> String,
) -> Result<Vec<Figure>, String> {
    let mut figures = Vec::new();
    let mut client = Client::connect(port)?;
    api_db::restore_specifications(db)?;
    let mut build_median = 0.0;
    for (name, path) in routes(shape) {
        let (p50, p99) = sequential(&mut client, &path)?;
        if name.starts_with("/build/ID ") {
            build_median = p50;
        }
        let target = if name.starts_with("/search") {
            20.0
        } else {
            10.0
        };
        let what = format!("{SEQUENTIAL} sequential keep-alive requests");
        figures.push(
            Figure::new(
                &format!("API latency {name}: median"),
                p50,
                "ms",
                Some(Target::AtMost(2.0)),
            )
            .note(what),
        );
        figures.push(Figure::new(
            &format!("API latency {name}: p99"),
            p99,
            "ms",
            Some(Target::AtMost(target)),
        ));
    }
    figures.push(whole_jobs_listing(&mut client, shape)?);
    drop(client);

    let (extra, large_alone) = head_of_line(port, build_median, build_path)?;
    figures.push(
        Figure::new(
            "API head-of-line: extra wait of /build/ID behind /api/latestbuilds?nr=1000",
            extra,
            "ms",
            Some(Target::AtMost(1.0)),
        )
        .note(format!(
            "median of {HOL_TRIALS}, sent {} µs after the large one, which takes {large_alone:.2} ms alone",
            HOL_DELAY.as_micros()
        )),
    );

    Ok(figures)
}

/// The figures on the 1,000,000-build database.
pub fn run() -> Result<Vec<Figure>, String> {
    run_on(&api_db::ONE_MILLION, Part::All)
}

/// The figures on the 10,000,000-build database.
pub fn run_10m() -> Result<Vec<Figure>, String> {
    run_on(&api_db::TEN_MILLION, Part::All)
}

/// Only the `/build/ID` throughput run on the 1,000,000-build database,
/// with the CPU time each side used: for working on the server's cost
/// per request without the twenty other routes.
pub fn throughput() -> Result<Vec<Figure>, String> {
    run_on(&api_db::ONE_MILLION, Part::Throughput)
}

/// As [`throughput`], on the 10,000,000-build database.
pub fn throughput_10m() -> Result<Vec<Figure>, String> {
    run_on(&api_db::TEN_MILLION, Part::Throughput)
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    All,
    Throughput,
}

/// Generates (once) the 10,000,000-build database in the 2018 schema
/// and its migrated copy, and says how long the upgrade and the weathers
/// computed after it took.
pub fn generate_10m() -> Result<Vec<Figure>, String> {
    api_db::template(&api_db::TEN_MILLION)?;
    api_db::upgrade_figures(&api_db::TEN_MILLION)
}

fn run_on(shape: &Shape, part: Part) -> Result<Vec<Figure>, String> {
    let cuirass = cuirass_binary()?;
    let template = api_db::template(shape)?;
    let build_path = build_path(shape.builds());
    let tmp = TempDir::new("api");
    let db = tmp.path().join("cuirass.db");
    std::fs::copy(&template, &db).map_err(|e| format!("copying {}: {e}", template.display()))?;
    let mut figures = match (part, shape.compare) {
        (Part::Throughput, _) => {
            api_db::without_comparison(&db)?;
            Vec::new()
        }
        (Part::All, true) => api_db::side_by_side(&db)?,
        (Part::All, false) => api_db::without_comparison(&db)?,
    };
    let pin = cpus();
    let (daemon_cpu, load_cpu) = (pin.map(|p| p.0), pin.map(|p| p.1));
    // This thread sends the sequential requests; the later benchmarks,
    // and the daemon (which taskset re-pins), must not inherit the pin.
    let _pinned = load_cpu.map(crate::http_client::Pinned::to);
    let start = Instant::now();
    let mut daemon = start_daemon(&cuirass, tmp.path(), &db, daemon_cpu)?;
    let ready = wait_ready(&mut daemon, start)?;
    let (port, pid) = (daemon.port, daemon.child.id());
    // Idle: past the 5 s without an event after which the daemon hands
    // back the page cache its start-up scans filled.
    std::thread::sleep(Duration::from_millis(6_000));
    let idle_rss = rss_mib(pid)?;
    let pinning = match pin {
        Some((d, l)) => format!("cuirass pinned to CPU {d} (taskset), load generator to CPU {l}"),
        None => "no pinning (one CPU or no taskset)".into(),
    };
    figures.push(
        Figure::new(
            &format!(
                "API: daemon start-up over {} builds until /api/queue?nr=1 answers",
                shape.builds()
            ),
            ready,
            "s",
            None,
        )
        .note(pinning.clone()),
    );
    figures.push(
        Figure::new(
            "API: daemon VmRSS idle after start-up",
            idle_rss,
            "MiB",
            Some(Target::AtMost(16.0)),
        )
        .note("6 s after its first answer, no request meanwhile"),
    );

    match part {
        Part::All => figures.extend(latencies(port, shape, &db, &build_path)?),
        Part::Throughput => api_db::restore_specifications(&db)?,
    }

    // Warm-up at full concurrency, so that the RSS baseline includes the
    // connections' buffers and SQLite's page cache after random reads.
    closed_loop(
        port,
        CONNECTIONS,
        50_000,
        LOAD_LIMIT,
        load_cpu,
        build_path.clone(),
    )?;
    let before = rss_mib(pid)?;
    let cpu_before = (proc_cpu(pid), proc_cpu(std::process::id()));
    let load = closed_loop(
        port,
        CONNECTIONS,
        LOAD_REQUESTS,
        LOAD_LIMIT,
        load_cpu,
        build_path,
    )?;
    let after = rss_mib(pid)?;
    let rate = load.requests as f64 / secs(load.elapsed);
    // Which side is the bottleneck: the daemon at 100 % of its CPU is;
    // a daemon waiting on the generator is not measured at all.
    let busy = |before: Option<f64>, pid: u32| {
        let used = proc_cpu(pid).zip(before).map(|(a, b)| a - b);
        used.map_or("?".to_string(), |u| {
            format!("{:.0} %", 100.0 * u / secs(load.elapsed))
        })
    };
    let busy = format!(
        "CPU busy: cuirass {}, load generator {}",
        busy(cpu_before.0, pid),
        busy(cpu_before.1, std::process::id())
    );
    figures.push(
        Figure::new(
            &format!("API throughput: /build/ID over {CONNECTIONS} keep-alive connections"),
            rate,
            "req/s",
            Some(Target::AtLeast(20_000.0)),
        )
        .note(format!(
            "{} requests in {:.1} s; median {:.2} ms; {pinning}; {busy}",
            load.requests,
            secs(load.elapsed),
            quantile_ms(&load.latencies, 0.5)
        )),
    );
    figures.push(Figure::new(
        "API throughput: p99 latency under that load",
        quantile_ms(&load.latencies, 0.99),
        "ms",
        Some(Target::AtMost(10.0)),
    ));
    figures.push(
        Figure::new(
            &format!("API: daemon VmRSS growth over {} requests", load.requests),
            after - before,
            "MiB",
            // A page or two of the allocator's comes and goes between
            // runs (0–12 KiB seen); a leak of one byte a request would
            // show as a whole MiB.
            Some(Target::AtMost(0.1)),
        )
        .note(format!(
            "VmRSS {before:.1} MiB after warm-up (50,000 requests), {after:.1} MiB after; \
             up to 0.1 MiB is the allocator's pages coming and going"
        )),
    );
    if let Ok(Some(status)) = daemon.child.try_wait() {
        return Err(format!("cuirass exited during the run: {status}"));
    }
    Ok(figures)
}

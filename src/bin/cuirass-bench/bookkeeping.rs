//! Build bookkeeping: a real `cuirass --one-shot` building 1,000 fresh
//! trivial derivations with a real guix-daemon, and the CPU cuirass spends
//! per unit of CPU the daemon spends on the same builds.

use crate::common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const JOBS: usize = 1_000;

/// A guix-daemon of our own on a private socket, so that its CPU time is
/// that of our builds alone, whatever else uses the machine's daemon.
struct PrivateDaemon {
    child: Child,
}

impl PrivateDaemon {
    fn start(socket: &Path) -> Result<PrivateDaemon, String> {
        let child = Command::new("guix-daemon")
            .arg("--disable-chroot")
            .arg(format!("--listen={}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("guix-daemon: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err("the private guix-daemon did not create its socket".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(PrivateDaemon { child })
    }

    /// CPU of the daemon, of the workers it has reaped and their builders.
    /// Waits until no worker is left, so each is counted once, by its parent.
    fn cpu(&self) -> Result<f64, String> {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !children_of(pid).is_empty() {
            if Instant::now() > deadline {
                return Err("guix-daemon workers did not exit".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        proc_cpu(pid).ok_or_else(|| "cannot read guix-daemon's CPU time".into())
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

pub fn run() -> Result<Vec<Figure>, String> {
    let cuirass = cuirass_binary()?;
    let tmp = TempDir::new("bookkeeping-jobs");
    let jobs_file = tmp.path().join("jobs.out");
    let text = generate_jobs(&format!("cuirass-bench-{}", nonce()), JOBS, 0)?;
    std::fs::write(&jobs_file, text).map_err(|e| e.to_string())?;
    let setup = OneShotSetup::new("bookkeeping", &jobs_file)?;
    let socket = setup.tmp.path().join("daemon-socket");
    let daemon = PrivateDaemon::start(&socket)?;
    let log_path = setup.tmp.path().join("cuirass.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let before = daemon.cpu()?;
    let start = Instant::now();
    let mut child = setup
        .command(&cuirass)
        .arg("--one-shot")
        // The private daemon has no build machines: with offloading on,
        // it would start its hook (`guix offload`, a Guile process, about
        // 0.13 s of CPU) for every build request, and time that instead.
        .arg("--no-offload")
        .env("GUIX_DAEMON_SOCKET", &socket)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let usage = wait_usage(&mut child)?;
    let elapsed = start.elapsed();
    let daemon_cpu = daemon.cpu()? - before;
    drop(daemon);
    let conn = rusqlite::Connection::open(&setup.db).map_err(|e| e.to_string())?;
    let succeeded: i64 = conn
        .query_row("SELECT COUNT(*) FROM Builds WHERE status = 0", [], |r| {
            r.get(0)
        })
        .map_err(|e| e.to_string())?;
    if !usage.success || succeeded != JOBS as i64 {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        return Err(format!(
            "one-shot build run failed ({succeeded} of {JOBS} succeeded); log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(vec![
        Figure::new(
            "build bookkeeping: cuirass CPU / guix-daemon CPU, 1,000 builds",
            usage.cpu / daemon_cpu,
            "",
            Some(Target::AtMost(0.05)),
        )
        .note(format!(
            "one run; cuirass {:.2} s CPU (with its fetch and evaluator children), guix-daemon {:.2} s (with workers and builders), {:.0} s wall",
            usage.cpu,
            daemon_cpu,
            secs(elapsed)
        )),
    ])
}

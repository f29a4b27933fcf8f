//! Builds offloaded by the daemon (`guix offload`) to two build machines
//! on this machine (`.ci/setup-build-machines.sh`: network namespaces,
//! their own roots, daemons and sshd), and live build logs.

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The offloading daemon's socket, as cuirass in the root names it.
const OFFLOAD_SOCKET: &str = "/var/guix/offload-socket/socket";
const MACHINES: [&str; 2] = ["10.231.1.2", "10.231.2.2"];

fn require_build_machines() {
    let socket = guix_root().join(OFFLOAD_SOCKET.trim_start_matches('/'));
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "no offloading guix-daemon on {}: run `.ci/setup-build-machines.sh` (as root) first",
        socket.display()
    );
}

/// GET over HTTP/1.0: the status line and headers, and the body.
fn get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let body = all.split_off(end + 4);
    (String::from_utf8_lossy(&all).into_owned(), body)
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let (head, body) = get(port, path);
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    serde_json::from_slice(&body).unwrap()
}

/// A project of fixtures/jobs/offload-jobs.scm served by a daemon-mode
/// cuirass on `socket` (as seen in the root; None: the main daemon).
fn start(label: &str, arguments: &str, socket: Option<&str>) -> (Setup, Running, u16) {
    let setup = Setup::new(label);
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/offload-jobs.scm")]);
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            &format!("{label}-{nonce}"),
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\") {arguments}"),
        )
    ));
    let port = free_port();
    let port_arg = port.to_string();
    let args = [
        "-S",
        spec.to_str().unwrap(),
        "--listen",
        "127.0.0.1",
        "--port",
        &port_arg,
        "--interval",
        "100000",
    ];
    let env: Vec<(&str, &str)> = socket
        .map(|s| ("GUIX_DAEMON_SOCKET", s))
        .into_iter()
        .collect();
    let running = Running::start(&setup, &args, &env);
    (setup, running, port)
}

/// (id, job, status, worker, errormsg, output) of every build.
type Row = (i64, String, i64, Option<String>, Option<String>, String);

/// None while the database is not there yet.
fn builds(setup: &Setup) -> Vec<Row> {
    let conn = setup.db();
    let Ok(mut stmt) = conn.prepare(
        "SELECT b.id, d.job_name, b.status, b.worker, b.errormsg, o.path
         FROM Builds b JOIN Derivations d USING (derivation)
         JOIN Outputs o ON o.build = b.id ORDER BY b.id",
    ) else {
        return Vec::new();
    };
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Brings a build machine's link down, and back up when dropped.
struct Unplugged(&'static str);

impl Unplugged {
    fn new(link: &'static str) -> Unplugged {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", link, "down"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set {link} down");
        Unplugged(link)
    }
}

impl Drop for Unplugged {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", self.0, "up"])
            .status();
    }
}

#[test]
fn builds_spread_over_two_machines_and_all_end_when_one_is_stopped() {
    require_build_machines();
    let (setup, running, port) = start(
        "offload",
        "(count . 20) (seconds . \"4\")",
        Some(OFFLOAD_SOCKET),
    );
    wait_until(Duration::from_secs(120), "builds on both machines", || {
        let rows = builds(&setup);
        MACHINES
            .iter()
            .all(|m| rows.iter().any(|r| r.3.as_deref() == Some(*m) && r.2 == 0))
    });
    // A running offloaded build's live log: the remote builder's lines
    // come through the hook.
    let remote_running = |rows: &[Row]| {
        rows.iter()
            .find(|r| r.2 == -1 && r.3.as_deref().is_some_and(|w| MACHINES.contains(&w)))
            .map(|r| (r.0, r.1.clone()))
    };
    let mut followed = None;
    wait_until(Duration::from_secs(60), "a running offloaded build", || {
        followed = remote_running(&builds(&setup));
        followed.is_some()
    });
    let (id, job) = followed.unwrap();
    let (head, log) = get(port, &format!("/build/{id}/log/raw"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains(&format!("{job} line 3")) && log.contains("@ build-remote"),
        "{log}"
    );
    let before = builds(&setup);
    let pending = before.iter().filter(|r| r.2 < 0).count();
    eprintln!("stopping machine m2 with {pending} builds not finished");
    assert!(
        pending > 0,
        "all builds finished before a machine could be stopped"
    );
    let unplugged = Unplugged::new("cuirass-m2");
    wait_until(Duration::from_secs(400), "every build to end", || {
        builds(&setup).iter().all(|r| r.2 >= 0)
    });
    drop(unplugged);
    let rows = builds(&setup);
    assert_eq!(rows.len(), 20, "{rows:?}");
    for (id, job, st, worker, reason, out) in &rows {
        match st {
            0 => {
                assert!(
                    worker.as_deref().is_some_and(|w| MACHINES.contains(&w)),
                    "build {id} ({job}) succeeded on {worker:?}"
                );
                assert!(setup.host_path(out).exists(), "{job}: no {out}");
            }
            _ => assert!(
                reason.as_deref().is_some_and(|r| !r.is_empty()),
                "build {id} ({job}) failed ({st}) without a reason"
            ),
        }
        let b = json(port, &format!("/build/{id}"));
        assert_eq!(b["worker"].as_str(), worker.as_deref(), "build {id}");
    }
    let succeeded = rows.iter().filter(|r| r.2 == 0).count();
    eprintln!(
        "after the stop: {succeeded} of 20 succeeded; per machine {:?}; failures {:?}",
        MACHINES.map(|m| rows.iter().filter(|r| r.3.as_deref() == Some(m)).count()),
        rows.iter()
            .filter(|r| r.2 != 0)
            .map(|r| (r.1.as_str(), r.3.as_deref(), r.4.as_deref()))
            .collect::<Vec<_>>()
    );
    // Builds not yet running when m2 went away were built on m1.
    let not_started: Vec<i64> = before.iter().filter(|r| r.2 == -2).map(|r| r.0).collect();
    for r in rows.iter().filter(|r| not_started.contains(&r.0)) {
        assert_eq!(
            r.3.as_deref(),
            Some(MACHINES[0]),
            "build {} after the stop",
            r.0
        );
    }
    // The machines, as the API and the page show them.
    let machines = json(port, "/api/machines");
    for m in MACHINES {
        let entry = machines
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == m)
            .unwrap_or_else(|| panic!("{m} not in {machines}"));
        let on = |st: fn(i64) -> bool| {
            rows.iter()
                .filter(|r| r.3.as_deref() == Some(m) && st(r.2))
                .count() as i64
        };
        assert_eq!(entry["done"], on(|s| s >= 0), "{entry}");
        assert_eq!(entry["failed"], on(|s| s > 0), "{entry}");
        assert_eq!(entry["running"], 0, "{entry}");
        assert!(entry["lastseen"].as_i64().unwrap() > 0);
    }
    let (head, page) = get(port, "/machines");
    assert!(head.starts_with("HTTP/1.1 200"));
    let page = String::from_utf8_lossy(&page);
    assert!(MACHINES.iter().all(|m| page.contains(m)), "{page}");
    let details = get(port, &format!("/build/{}/details", rows[0].0)).1;
    assert!(String::from_utf8_lossy(&details).contains("<dt>Machine</dt>"));
    drop(running);
    assert_sound(&setup.db);
}

/// Reads `path` over HTTP/1.0 until the server closes, noting when each
/// piece arrived.
fn read_timed(port: u16, path: &str) -> (String, Vec<(Instant, Vec<u8>)>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut pieces = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // Other tests' children end while this one reads: their SIGCHLD
        // may interrupt the read, which is no answer from the server.
        let n = match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.unwrap(),
        };
        if n == 0 {
            break;
        }
        pieces.push((Instant::now(), buf[..n].to_vec()));
    }
    let all: Vec<u8> = pieces.iter().flat_map(|p| p.1.clone()).collect();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (String::from_utf8_lossy(&all[..end]).into_owned(), pieces)
}

#[test]
fn a_running_builds_log_streams_as_it_grows() {
    require_daemon();
    let (setup, running, port) = start("livelog", "(ticker . #t)", None);
    let mut id = 0;
    wait_until(Duration::from_secs(60), "the ticker to start", || {
        let rows = builds(&setup);
        rows.iter()
            .find(|r| r.1 == "ticker" && r.2 == -1)
            .map(|r| id = r.0)
            .is_some()
    });
    // Another client, meanwhile: its requests must not wait for the log.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let (head, _) = get(port, &format!("/build/{id}"));
                assert!(head.starts_with("HTTP/1.1 200"));
                worst = worst.max(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (worst, n)
        })
    };
    // The details page shows the tail of the live log, and refreshes.
    std::thread::sleep(Duration::from_millis(1500));
    let (head, details) = get(port, &format!("/build/{id}/details"));
    assert!(head.contains("Refresh: 5"), "{head}");
    assert!(String::from_utf8_lossy(&details).contains("tick 1"));
    let started = Instant::now();
    let (head, pieces) = read_timed(port, &format!("/build/{id}/log/raw"));
    let ended = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, probes) = prober.join().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let text: Vec<u8> = pieces.iter().flat_map(|p| p.1.clone()).collect();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("tick ")).collect();
    let expect: Vec<String> = (1..=10).map(|i| format!("tick {i}")).collect();
    assert_eq!(lines, expect, "{text}");
    // Lines arrived while the build ran: the first well before the end.
    let first = pieces
        .iter()
        .find(|p| String::from_utf8_lossy(&p.1).contains("tick "))
        .unwrap()
        .0;
    let before_end = ended - first;
    eprintln!(
        "log followed for {:?}; first tick {before_end:?} before the end, in {} pieces; \
         other client: {probes} requests, worst {worst:?}",
        ended - started,
        pieces.len()
    );
    assert!(before_end > Duration::from_secs(3), "{before_end:?}");
    assert!(pieces.len() > 3);
    assert!(worst < Duration::from_millis(100), "{worst:?}");
    // The body ended with the build: it is final.
    let st = builds(&setup).iter().find(|r| r.0 == id).unwrap().2;
    assert_eq!(st, 0);
    // The live file is gone; the log is the daemon's, whole.
    let live_dir: PathBuf = setup.db.parent().unwrap().join("build-logs/live");
    let left = std::fs::read_dir(&live_dir).map_or(0, |d| d.count());
    assert_eq!(left, 0, "{}", live_dir.display());
    let whole = get(port, &format!("/build/{id}/log/raw")).1;
    assert!(String::from_utf8_lossy(&whole).contains("tick 10"));
    drop(running);
    assert_sound(&setup.db);
}

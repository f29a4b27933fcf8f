//! A daemon worker that stops answering in the middle of a build request
//! (CI saw one after a build machine was unplugged, most likely waiting
//! on its hook, `guix offload`, a wait no daemon timer covers).  A proxy
//! in front of the real daemon plays the wedged worker: the daemon
//! builds, but none of its answers on that connection reach cuirass.

use crate::support::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// A connection went deaf.
    deafened: AtomicBool,
    /// cuirass closed the deaf connection.
    deaf_closed: AtomicBool,
}

/// Whether `sent` (a connection's client bytes so far) holds a build
/// request: op 9 (build-paths) with one `/gnu/store/…` string.
fn has_build_request(sent: &[u8]) -> bool {
    let mut head = Vec::new();
    head.extend(9u64.to_le_bytes());
    head.extend(1u64.to_le_bytes());
    sent.windows(head.len() + 8 + 11)
        .any(|w| w.starts_with(&head) && &w[head.len() + 8..] == b"/gnu/store/")
}

/// Forwards connections on `listen` to the daemon at `daemon`; the first
/// that carries a build request goes deaf from then on.
fn deaf_proxy(listen: &Path, daemon: &Path) -> Arc<Seen> {
    let listener = UnixListener::bind(listen).unwrap();
    let seen = Arc::new(Seen::default());
    let daemon = daemon.to_path_buf();
    let shared = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(upstream) = UnixStream::connect(&daemon) else {
                continue;
            };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let deaf = Arc::new(AtomicBool::new(false));
            // Daemon to cuirass, until deaf: then read and dropped.
            let (mut from, mut to) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
            let is_deaf = deaf.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !is_deaf.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
            // cuirass to the daemon, watching for the first build request.
            let (mut from, mut to) = (client, upstream);
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !deaf.load(Ordering::SeqCst) && sent.len() < 1 << 20 {
                        sent.extend_from_slice(&buf[..n]);
                        // Before the request reaches the daemon: none of
                        // its answers may get through.
                        if has_build_request(&sent) && !shared.deafened.swap(true, Ordering::SeqCst)
                        {
                            deaf.store(true, Ordering::SeqCst);
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                if deaf.load(Ordering::SeqCst) {
                    shared.deaf_closed.store(true, Ordering::SeqCst);
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    seen
}

#[test]
fn a_daemon_connection_that_goes_silent_is_closed_and_its_build_done_again() {
    require_daemon();
    let setup = Setup::new("wedged");
    let nonce = nonce();
    let proxy = setup.tmp.path().join("deaf.sock");
    let seen = deaf_proxy(&proxy, &setup.guix.socket());
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/offload-jobs.scm")]);
    let name = format!("wedged-{nonce}");
    // Limits of 5 and 10 s: the connection is given up after 5 + 10 + 60 s.
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            &name,
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!(
                "(nonce . \"{nonce}\") (count . 1) (seconds . \"1\") \
                 (max-silent-time . 5) (timeout . 10)"
            ),
        )
    ));
    let port = free_port();
    let port_arg = port.to_string();
    let proxy_arg = proxy.to_str().unwrap().to_string();
    let running = Running::start(
        &setup,
        &[
            "-S",
            spec.to_str().unwrap(),
            "--port",
            &port_arg,
            "--interval",
            "100000",
        ],
        &[("GUIX_DAEMON_SOCKET", &proxy_arg)],
    );
    let status = || {
        let conn = setup.db();
        conn.query_row("SELECT status FROM Builds", [], |r| r.get::<_, i64>(0))
            .ok()
    };
    wait_until(Duration::from_secs(60), "the deaf build request", || {
        seen.deafened.load(Ordering::SeqCst)
    });
    // The daemon builds it, unheard: cuirass holds it as started.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(status(), Some(-1), "{}", running.log_text());
    wait_until(Duration::from_secs(120), "the build, done again", || {
        status() == Some(0)
    });
    let log = running.log_text();
    assert!(
        log.contains("no word from guix-daemon for 75 s (max-silent-time 5 s, timeout 10 s); connection closed, build scheduled again"),
        "{log}"
    );
    assert!(seen.deaf_closed.load(Ordering::SeqCst), "{log}");
    assert!(seen.connections.load(Ordering::SeqCst) >= 2);
    // One build, succeeded, its output in the store; the API agrees.
    let db = setup.db();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM Builds"), 1);
    let (id, out): (i64, String) = db
        .query_row(
            "SELECT b.id, o.path FROM Builds b JOIN Outputs o ON o.build = b.id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(setup.host_path(&out).exists(), "{out}");
    let (code, build) = get_json(port, &format!("/build/{id}"));
    assert_eq!(code, 200);
    assert_eq!(build["buildstatus"], 0, "{build}");
    drop(running);
    assert_sound(&setup.db);
}

#[test]
fn the_proxy_knows_a_build_request() {
    let mut req = Vec::new();
    req.extend(9u64.to_le_bytes());
    req.extend(1u64.to_le_bytes());
    req.extend(20u64.to_le_bytes());
    req.extend(b"/gnu/store/x-y.drv!out");
    assert!(has_build_request(&req));
    assert!(!has_build_request(&req[..30]));
    let mut other = req.clone();
    other[0] = 8;
    assert!(!has_build_request(&other));
}

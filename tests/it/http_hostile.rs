//! Hostile HTTP clients against a running daemon: every malformed or
//! malicious request gets a 4xx, nothing outside the build logs is ever
//! served, the database is untouched, and memory stays bounded.

use crate::support::*;
use cuirass::db::{Db, JobRecord};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends raw bytes, returns the status code and body of the answer.
fn raw(port: u16, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let code = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn get(port: u16, target: &str) -> (u16, String) {
    raw(
        port,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A database with two builds whose log columns point outside the log
/// directory, as a corrupted or malicious database might.
fn hostile_database(setup: &Setup) {
    let mut db = Db::open(&setup.db).unwrap();
    let spec = cuirass::spec::Specification::new("evil", "file:///nowhere", "ci.scm", "jobs");
    db.add_specifications(&[spec]).unwrap();
    let job = |n: &str| JobRecord {
        job_name: n.into(),
        derivation: format!("/gnu/store/{:a<32}-{n}.drv", ""),
        system: "x86_64-linux".into(),
        nix_name: n.into(),
        outputs: vec![("out".into(), format!("/gnu/store/{:b<32}-{n}", ""))],
        ..JobRecord::default()
    };
    db.register_evaluation("evil", "c0ffee", &[job("one"), job("two")], 1)
        .unwrap();
    db.connection()
        .execute_batch(
            "UPDATE Builds SET status = 1, stoptime = 2, log = '/etc/passwd' WHERE id = 1;
             UPDATE Builds SET status = 1, stoptime = 2,
               log = '/var/log/guix/drvs/../../../etc/passwd' WHERE id = 2;",
        )
        .unwrap();
}

#[test]
fn hostile_requests_get_4xx_and_nothing_leaks() {
    let setup = Setup::new("hostile");
    hostile_database(&setup);
    let port = free_port();
    let daemon = Running::start(
        &setup,
        &[
            "--listen",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--interval",
            "100000",
        ],
        &[("GUIX_DAEMON_SOCKET", "/nonexistent/socket")],
    );
    wait_until(Duration::from_secs(20), "the HTTP server", || {
        http_status(port, "/jobsets") == Some(200)
    });
    let rss_before = vm_rss_kib(daemon.child.id());

    let malformed: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /jobsets\r\n\r\n",
        b"GET /jobsets HTTP/9.9\r\n\r\n",
        b"GET /jobsets HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /jobsets%00 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /job\x00sets HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /jobsets HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /jobsets HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\xff\xfe\xfd /jobsets HTTP/1.1\r\n\r\n",
    ];
    for request in malformed {
        let (code, _) = raw(port, request);
        assert!(
            (400..600).contains(&code) && code != 500,
            "{request:?} -> {code}"
        );
    }
    // Thirty pipelined requests whose answers (about 45 kB each: the
    // query is echoed, escaped, three times) overflow a turn's output
    // cap: every one is answered, with and without a half-close after
    // them; with it, the connection then closes.
    let query = "%3C".repeat(2_600);
    let one = format!("GET /search?query={query} HTTP/1.1\r\nHost: t\r\n\r\n");
    for half_close in [false, true] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(one.repeat(30).as_bytes()).unwrap();
        if half_close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let (mut buf, mut answers, mut bytes) = (Vec::new(), 0, 0);
        let mut chunk = vec![0u8; 1 << 16];
        while answers < 30 {
            let n = match s.read(&mut chunk) {
                Ok(0) => panic!("closed after {answers} answers (half-close {half_close})"),
                Ok(n) => n,
                Err(e) => panic!("{e} after {answers} answers (half-close {half_close})"),
            };
            buf.extend_from_slice(&chunk[..n]);
            // Each answer: a head with Content-Length, then its body.
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if buf.len() < end + 4 + length {
                    break;
                }
                buf.drain(..end + 4 + length);
                answers += 1;
                bytes += length;
            }
        }
        assert!(bytes > 512 * 1024, "answers too small to overflow: {bytes}");
        if half_close {
            let mut rest = Vec::new();
            let end = s.read_to_end(&mut rest);
            assert!(
                end.is_ok() && rest.is_empty(),
                "after the answers: {end:?}, {} more bytes",
                rest.len()
            );
        }
    }
    // A keep-alive request, then the client shuts its side at once: the
    // answer comes and the connection closes then, not at the idle
    // timeout. The socket is corked so that the request and the EOF go
    // in one segment and the server sees both in one event.
    for _ in 0..3 {
        let asked = std::time::Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option.
        let corked = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(corked, 0);
        s.write_all(b"GET /jobsets HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        let read = s.read_to_end(&mut reply);
        let took = asked.elapsed();
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        assert!(
            read.is_ok() && took < Duration::from_secs(2),
            "closed after {took:?}: {read:?}"
        );
    }
    for method in ["POST", "PUT", "DELETE", "BREW", "OPTIONS"] {
        let (code, _) = raw(
            port,
            format!("{method} /jobsets HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        assert!(
            code == 405 || code == 501 || code == 400,
            "{method} -> {code}"
        );
    }
    // Oversized request line and headers.
    let long_path = format!("/{}", "a".repeat(100_000));
    assert_eq!(get(port, &long_path).0, 414);
    let big_header = format!(
        "GET /jobsets HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    assert_eq!(raw(port, big_header.as_bytes()).0, 431);

    // Paths that try to leave the API, and logs that point outside
    // /var/log/guix/drvs: never a file's contents.
    for target in [
        "/build/%2e%2e/%2e%2e/etc/passwd",
        "/build/1/log/raw/../../../../etc/passwd",
        "/build/1/log/raw/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/../../../../etc/passwd",
        "http://evil.example/etc/passwd",
        "//etc/passwd",
        "/build/1/log/raw",
        "/build/2/log/raw",
    ] {
        let (code, body) = get(port, target);
        assert!((400..500).contains(&code), "{target} -> {code}");
        assert!(!body.contains("root:"), "{target} leaked /etc/passwd");
    }

    // Bad ids and limits.
    for target in [
        "/build/-1",
        "/build/abc",
        "/build/1%20OR%201=1",
        "/build/99999999999999999999999",
        "/build/0x10",
        "/api/latestbuilds",
        "/api/latestbuilds?nr=-5",
        "/api/latestbuilds?nr=ten",
        "/api/latestbuilds?nr=%00",
        "/api/queue?nr=1e3",
        "/api/evaluations?nr=",
    ] {
        let code = get(port, target).0;
        assert!(code == 400 || code == 404, "{target} -> {code}");
    }
    // A huge nr is refused, naming the parameter and its limit.
    let (code, body) = get(port, "/api/latestbuilds?nr=1000000000000");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Parameter nr: at most 1000"), "{body}");

    // SQL metacharacters in every parameter are data, not SQL.
    let injected = "%27%20OR%201%3D1%20--";
    for param in ["project", "jobset", "job", "system", "evaluation", "status"] {
        let target = format!("/api/latestbuilds?nr=10&{param}={injected}");
        let (code, body) = get(port, &target);
        assert!(code == 200 || code == 400, "{target} -> {code}");
        if code == 200 {
            assert!(body.ends_with("[]"), "{target} matched rows: {body}");
        }
    }
    let (_, body) = get(
        port,
        "/api/latestbuilds?nr=10&job=x%27%3BDROP%20TABLE%20Builds%3B--",
    );
    assert!(body.ends_with("[]"), "{body}");
    let conn = setup.db();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM Builds"), 2);

    // Thousands of idle connections at once: beyond the limit they are
    // closed at once, memory stays bounded, and once they go the server
    // answers as before.
    let mut held = Vec::new();
    for _ in 0..3000 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    assert!(held.len() >= 1500, "only {} connections opened", held.len());
    std::thread::sleep(Duration::from_millis(500));
    let rss_flooded = vm_rss_kib(daemon.child.id());
    assert!(
        rss_flooded < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_flooded} KiB with {} connections",
        held.len()
    );
    drop(held);
    wait_until(Duration::from_secs(10), "an answer after the flood", || {
        http_status(port, "/api/queue?nr=1") == Some(200)
    });
    for _ in 0..200 {
        assert_eq!(http_status(port, "/build/1").unwrap_or(0), 200);
    }
    let rss_after = vm_rss_kib(daemon.child.id());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

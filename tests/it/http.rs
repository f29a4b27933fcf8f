//! The HTTP API of a real daemon-mode cuirass, over a database filled by a
//! real one-shot build.

use crate::support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn get(server: &Server, target: &str) -> Reply {
    request(
        server.port,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"));
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Parses one response from `buf`, if it is all there.
fn parse_reply(buf: &[u8], head_only: bool) -> Option<(Reply, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let Some((_, len)) = headers.iter().find(|(k, _)| k == "Content-Length") else {
        // A streamed log: chunked, read to the connection's end.
        let body = dechunk(&buf[end..]);
        let used = buf.len();
        return Some((
            Reply {
                status,
                headers,
                body,
            },
            used,
        ));
    };
    let len: usize = len.parse().unwrap();
    let len = if head_only { 0 } else { len };
    if buf.len() < end + len {
        return None;
    }
    let body = buf[end..end + len].to_vec();
    Some((
        Reply {
            status,
            headers,
            body,
        },
        end + len,
    ))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap(), 16).unwrap();
        out.extend_from_slice(&body[eol + 2..eol + 2 + n]);
        body = &body[eol + 4 + n..];
    }
    out
}

fn request(port: u16, raw: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_reply(&buf, raw.starts_with("HEAD"))
        .unwrap_or_else(|| panic!("{raw:?}: {buf:?}"))
        .0
}

fn query_i64(conn: &rusqlite::Connection, sql: &str, id: i64) -> i64 {
    conn.query_row(sql, [id], |r| r.get(0)).unwrap()
}

#[test]
fn every_route_against_a_real_database() {
    let Built {
        setup,
        repo,
        head,
        name,
        ..
    } = build_keyword_project("http");
    let conn = setup.db();
    let daemon = Server::start(&setup);

    // Specifications.
    for path in ["/jobsets", "/specifications"] {
        let r = get(&daemon, path);
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["name"], name.as_str());
        assert_eq!(v[0]["url"], repo.url().as_str());
        assert_eq!(v[0]["branch"], "master");
    }

    // Every build, field by field, against the database.
    let ids: Vec<i64> = query_rows::<i64>(&conn, "SELECT id FROM Builds ORDER BY id")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ids.len(), 5);
    let mut fail_id = None;
    for &id in &ids {
        let r = get(&daemon, &format!("/build/{id}"));
        assert_eq!(r.status, 200);
        let b = r.json();
        let (drv, job, nix, system): (String, String, String, String) = conn
            .query_row(
                "SELECT b.derivation, d.job_name, d.nix_name, d.system FROM Builds b
                 JOIN Derivations d ON d.derivation = b.derivation AND d.evaluation = b.evaluation
                 WHERE b.id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        let status = query_i64(&conn, "SELECT status FROM Builds WHERE id = ?1", id);
        let stop = query_i64(&conn, "SELECT stoptime FROM Builds WHERE id = ?1", id);
        let start = query_i64(&conn, "SELECT starttime FROM Builds WHERE id = ?1", id);
        let out: String = conn
            .query_row(
                "SELECT path FROM Outputs WHERE build = ?1 AND name = 'out'",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b["id"], id);
        assert_eq!(b["project"], name.as_str());
        assert_eq!(b["jobset"], name.as_str());
        assert_eq!(b["evaluation"], 1);
        assert_eq!(b["job"], job.as_str());
        assert_eq!(b["derivation"], drv.as_str());
        assert_eq!(b["nixname"], nix.as_str());
        assert_eq!(b["system"], system.as_str());
        assert_eq!(b["buildstatus"], status);
        assert_eq!(
            (&b["timestamp"], &b["stoptime"], &b["starttime"]),
            (&stop.into(), &stop.into(), &start.into())
        );
        assert_eq!(b["buildoutputs"], serde_json::json!({"out": {"path": out}}));
        assert_eq!(
            (&b["finished"], &b["busy"], &b["priority"]),
            (&1.into(), &0.into(), &0.into())
        );
        assert_eq!(b["buildproducts"], serde_json::json!([]));
        for null in ["releasename", "buildinputs_builds"] {
            assert!(b[null].is_null(), "{null}");
        }
        if job == "fail" {
            fail_id = Some(id);
        }
    }

    // The failing job's log is what its builder printed.
    let fail_id = fail_id.unwrap();
    let r = get(&daemon, &format!("/build/{fail_id}/log/raw"));
    assert_eq!(r.status, 200);
    // Builders print bytes in any encoding: no charset is claimed.
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("failing"), "{text}");
    // dep-on-fail never started: no log.
    let never: i64 = conn
        .query_row(
            "SELECT b.id FROM Builds b JOIN Derivations d ON d.derivation = b.derivation
             WHERE d.job_name = 'dep-on-fail'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(get(&daemon, &format!("/build/{never}/log/raw")).status, 404);

    // Latest builds: finished ones, most recently finished first.
    let expect: Vec<i64> = query_rows::<i64>(
        &conn,
        "SELECT id FROM Builds ORDER BY stoptime DESC, id DESC",
    )
    .into_iter()
    .flatten()
    .collect();
    let list = |t: &str| -> Vec<i64> {
        let r = get(&daemon, t);
        assert_eq!(r.status, 200, "{t}");
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(list("/api/latestbuilds?nr=100"), expect);
    assert_eq!(list("/api/latestbuilds?nr=2"), expect[..2]);
    assert_eq!(list("/api/latestbuilds?nr=1000000000000"), expect);
    assert_eq!(
        list(&format!("/api/latestbuilds?nr=10&job=fail&project={name}")),
        [fail_id]
    );
    assert_eq!(list("/api/latestbuilds?nr=10&status=failed").len(), 2);
    assert_eq!(
        list("/api/latestbuilds?nr=10&system=x86_64-linux&evaluation=1").len(),
        5
    );
    assert_eq!(
        list("/api/latestbuilds?nr=10&jobset=other"),
        Vec::<i64>::new()
    );
    assert_eq!(list("/api/queue?nr=10"), Vec::<i64>::new());

    let r = get(&daemon, "/api/evaluations?nr=10");
    assert_eq!(r.status, 200);
    let (begun, ended): (i64, i64) = conn
        .query_row("SELECT timestamp, evaltime FROM Evaluations", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(begun > 0 && ended >= begun);
    assert_eq!(
        r.json(),
        serde_json::json!([{"id": 1, "specification": name, "status": 0, "error": null,
                            "in-progress": 0, "timestamp": begun, "checkouttime": begun,
                            "evaltime": ended,
                            "checkouts": [{"commit": head, "channel": name, "input": name,
                                           "directory": setup.cache.join(&name)}]}])
    );

    // Errors.
    let r = get(&daemon, "/build/12345");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "Build with ID 12345 doesn't exist."})
    );
    for (target, code) in [
        ("/nope", 404),
        ("/build/abc", 400),
        ("/api/latestbuilds", 400),
        ("/api/queue?nr=x", 400),
        ("/api/evaluations", 400),
        ("/build/..%2f..%2fetc/log/raw", 400),
    ] {
        let r = get(&daemon, target);
        assert_eq!(r.status, code, "{target}");
        assert!(r.json()["error"].is_string());
    }
    let r = request(
        daemon.port,
        "POST /jobsets HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = request(
        daemon.port,
        "HEAD /jobsets HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );

    // Keep-alive: three requests, pipelined, on one connection.
    let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /jobsets HTTP/1.1\r\n\r\nGET /build/1 HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    while statuses.len() < 3 {
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {statuses:?}");
        buf.extend_from_slice(&chunk[..n]);
        while let Some((r, used)) = parse_reply(&buf, false) {
            assert_eq!(r.header("connection"), Some("keep-alive"));
            statuses.push(r.status);
            buf.drain(..used);
        }
    }
    assert_eq!(statuses, [200, 200, 404]);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let setup = Setup::new("http-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = setup
        .command()
        .args(["--listen", "127.0.0.1", "--port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn many_slow_and_oversized_clients_do_not_block_the_others() {
    let setup = Setup::new("http-load");
    let daemon = Server::start(&setup);
    let port = daemon.port;

    // A slow client: one byte a second; the server drops it after 10 s.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        for byte in b"GET /jobsets HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            if start.elapsed() > Duration::from_secs(25) {
                break;
            }
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        (start.elapsed(), buf)
    });

    // 200 connections open at once, each answered.
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for s in &mut conns {
        s.write_all(b"GET /api/queue?nr=5 HTTP/1.1\r\n\r\n")
            .unwrap();
    }
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let reply = loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
            if let Some((r, _)) = parse_reply(&buf, false) {
                break r;
            }
        };
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"[]"[..]));
    }

    // An oversized header: 431, then the connection closes.
    let big = format!(
        "GET /jobsets HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "x".repeat(40_000)
    );
    assert_eq!(request(port, &big).status, 431);
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
    assert_eq!(request(port, &long).status, 414);

    // Meanwhile ordinary requests stay quick, all through the slow client.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        let r = request(port, "GET /jobsets HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "slow: {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(conns);
    let (took, reply) = slow.join().unwrap();
    assert!(reply.is_empty(), "the slow client got an answer: {reply:?}");
    assert!(
        took < Duration::from_secs(20),
        "the slow client was kept {took:?}"
    );
}

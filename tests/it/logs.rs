//! Build logs through the real daemons: Guix 1.5.0's gzip and 1.2.0's
//! bzip2 logs served as text (or as gzip when accepted), a 200 MB log
//! streamed byte for byte in bounded memory, and a rebuilt derivation
//! whose builds each keep their own log.

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A response's status, headers (names lower-cased) and the reader
/// positioned at its body.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn send(port: u16, target: &str, extra: &str) -> (Head, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line[9..12].parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(": ").unwrap();
        headers.push((k.to_ascii_lowercase(), v.to_string()));
    }
    (Head { status, headers }, r)
}

/// The body, whatever its framing, passed to `sink` a piece at a time.
fn read_body(head: &Head, r: &mut BufReader<TcpStream>, mut sink: impl FnMut(&[u8])) {
    if head.header("transfer-encoding") != Some("chunked") {
        let mut body = Vec::new();
        r.read_to_end(&mut body).unwrap();
        if let Some(n) = head.header("content-length") {
            assert_eq!(body.len(), n.parse::<usize>().unwrap());
        }
        return sink(&body);
    }
    let mut line = String::new();
    let mut buf = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let n = usize::from_str_radix(line.trim_end(), 16).unwrap();
        buf.resize(n + 2, 0);
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[n..], b"\r\n");
        if n == 0 {
            return;
        }
        sink(&buf[..n]);
    }
}

fn get(port: u16, target: &str, extra: &str) -> (Head, Vec<u8>) {
    let (head, mut r) = send(port, target, extra);
    let mut body = Vec::new();
    read_body(&head, &mut r, |b| body.extend_from_slice(b));
    (head, body)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut text = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut text)
        .unwrap();
    text
}

/// Runs the log jobs once (one-shot) with `arguments` added; the spec.
fn run_log_jobs(setup: &Setup, repo: &Repo, nonce: &str, arguments: &str) -> String {
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "logs",
            &repo.url(),
            "ci.scm",
            "log-jobs",
            &format!("(nonce . \"{nonce}\") {arguments}")
        )
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    spec.to_str().unwrap().to_string()
}

/// (build id, status, log column) of `job` in `evaluation`.
fn build_of(setup: &Setup, job: &str, evaluation: i64) -> (i64, i64, String) {
    setup
        .db()
        .query_row(
            "SELECT b.id, b.status, b.log FROM Builds b JOIN Derivations d
               ON d.derivation = b.derivation AND d.evaluation = b.evaluation
             WHERE d.job_name = ?1 AND b.evaluation = ?2",
            rusqlite::params![job, evaluation],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

const CHATTY: &[u8] = b"chatty: hello from the builder\nto stderr\nbyte \xff and UTF-8 \xc3\xa9\n";

/// The chatty job's log, checked every way it is served.
fn check_chatty(setup: &Setup, suffix: &str) {
    let (id, status, log) = build_of(setup, "chatty", 1);
    assert_eq!(status, 0);
    assert!(log.ends_with(suffix), "{log}");
    // The daemon's own file holds what the builder printed.
    let stored = std::fs::read(setup.host_path(&log)).unwrap();
    assert!(
        !stored.starts_with(b"chatty"),
        "the daemon's log is compressed"
    );
    // The build's own copy, under the log directory beside the database.
    let copy = setup
        .tmp
        .path()
        .join(format!("build-logs/{id}.log{suffix}"));
    assert_eq!(std::fs::read(&copy).unwrap(), stored, "{}", copy.display());
    // A small copy has no .tail file: the page decodes it when asked.
    let tail = setup.tmp.path().join(format!("build-logs/{id}.tail"));
    assert!(!tail.exists());
    let server = Server::start(setup);
    let (head, body) = get(server.port, &format!("/build/{id}/log/raw"), "");
    assert_eq!(head.status, 200);
    assert_eq!(body, CHATTY);
    assert_eq!(head.header("content-type"), Some("text/plain"));
    assert_eq!(head.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(head.header("content-encoding"), None);
    let (head, body) = get(
        server.port,
        &format!("/build/{id}/log/raw"),
        "Accept-Encoding: gzip, deflate\r\n",
    );
    if suffix == ".gz" {
        assert_eq!(head.header("content-encoding"), Some("gzip"));
        assert_eq!(body, stored);
        assert_eq!(gunzip(&body), CHATTY);
    } else {
        assert_eq!(head.header("content-encoding"), None);
        assert_eq!(body, CHATTY);
    }
    let (head, page) = get(server.port, &format!("/build/{id}/details"), "");
    assert_eq!(head.status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("chatty: hello from the builder\nto stderr\nbyte \u{fffd} and UTF-8 é"),
        "{page}"
    );
}

#[test]
fn guix_1_5_gzip_logs_are_served_as_text_or_as_gzip() {
    require_daemon();
    let setup = Setup::new("logs-gz");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/log-jobs.scm")]);
    run_log_jobs(&setup, &repo, &nonce(), "");
    check_chatty(&setup, ".gz");
}

#[test]
fn guix_1_2_bzip2_logs_are_served_as_text() {
    Guix::V1_2.require_daemon();
    let setup = Setup::new_2018("logs-bz2");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/log-jobs.scm")]);
    run_log_jobs(&setup, &repo, &nonce(), "");
    check_chatty(&setup, ".bz2");
}

#[test]
fn a_rebuilt_derivation_keeps_each_builds_log() {
    require_daemon();
    let setup = Setup::new("logs-rebuild");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/log-jobs.scm")]);
    // Outside the store, where the builder can leave it for next time.
    let marker = setup.tmp.path().join("flaky-marker");
    let marker_arg = format!("(marker . \"{}\")", marker.display());
    let nonce = nonce();
    run_log_jobs(&setup, &repo, &nonce, &marker_arg);
    let (first, status, log1) = build_of(&setup, "flaky", 1);
    assert_eq!(status, 1, "the first attempt fails");
    assert!(marker.exists());
    std::fs::write(repo.dir.join("README"), "a new commit\n").unwrap();
    repo.commit("second evaluation");
    run_log_jobs(&setup, &repo, &nonce, &marker_arg);
    let (second, status, log2) = build_of(&setup, "flaky", 2);
    assert_eq!(status, 0, "the second attempt succeeds");
    assert_eq!(log1, log2, "one derivation, one daemon log");
    assert_ne!(first, second);
    let daemon_text = gunzip(&std::fs::read(setup.host_path(&log2)).unwrap());
    assert_eq!(daemon_text, b"second attempt: ok\n");
    let server = Server::start(&setup);
    for (id, want) in [
        (first, "first attempt: failing\n"),
        (second, "second attempt: ok\n"),
    ] {
        let (head, body) = get(server.port, &format!("/build/{id}/log/raw"), "");
        assert_eq!(
            (head.status, String::from_utf8(body).unwrap().as_str()),
            (200, want)
        );
        let (_, page) = get(server.port, &format!("/build/{id}/details"), "");
        assert!(String::from_utf8(page).unwrap().contains(want.trim_end()));
    }
}

/// VmHWM and VmRSS of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn a_200_mb_log_streams_byte_for_byte_in_bounded_memory() {
    require_daemon();
    const LINES: u64 = 24_000_000;
    let setup = Setup::new("logs-big");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/log-jobs.scm")]);
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            "logs",
            &repo.url(),
            "ci.scm",
            "log-jobs",
            &format!("(nonce . \"{}\") (lines . {LINES})", nonce())
        )
    ));
    let running = Running::start(
        &setup,
        &["-S", spec.to_str().unwrap(), "--interval", "100000"],
        &[],
    );
    let port = running.port();
    wait_until(Duration::from_secs(300), "the big build to finish", || {
        setup
            .db()
            .query_row(
                "SELECT COUNT(*) FROM Builds b JOIN Derivations d ON d.derivation = b.derivation
                 WHERE d.job_name = 'big' AND b.status = 0",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0)
            == 1
    });
    let (id, _, log) = build_of(&setup, "big", 1);
    assert!(log.ends_with(".drv.gz"), "{log}");
    let pid = running.child.id();
    let (head, mut body) = send(port, &format!("/build/{id}/log/raw"), "");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    // Checked as it comes: the numbers 1 to LINES, one a line, nothing
    // else; meanwhile other requests are timed.
    let mut expect = 1u64;
    let mut partial = Vec::new();
    let mut total = 0u64;
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    let mut last_probe = Instant::now();
    read_body(&head, &mut body, |piece| {
        total += piece.len() as u64;
        partial.extend_from_slice(piece);
        let end = partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for line in partial[..end]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            assert_eq!(line, expect.to_string().as_bytes(), "line {expect}");
            expect += 1;
        }
        partial.drain(..end);
        if last_probe.elapsed() > Duration::from_millis(200) {
            let t = Instant::now();
            let (h, _) = get(port, &format!("/build/{id}"), "");
            assert_eq!(h.status, 200);
            slowest = slowest.max(t.elapsed());
            probes += 1;
            last_probe = Instant::now();
        }
    });
    assert!(partial.is_empty());
    assert_eq!(expect - 1, LINES, "every line, once, in order");
    assert!(total > 200_000_000, "{total} bytes");
    let (hwm, rss) = memory_kib(pid);
    eprintln!(
        "200 MB log: {total} bytes; daemon VmHWM {hwm} KiB, VmRSS {rss} KiB; \
         /build/{id} during the transfer: {probes} probes, slowest {slowest:?}"
    );
    assert!(hwm < 64 * 1024, "VmHWM {hwm} KiB");
    assert!(probes >= 3, "the transfer was too quick to probe");
    assert!(slowest < Duration::from_millis(100), "slowest {slowest:?}");
    // Its copy's tail, on the details page, without reading it all.
    let tail = setup.tmp.path().join(format!("build-logs/{id}.tail"));
    wait_until(Duration::from_secs(120), "the copy's tail", || {
        tail.exists()
    });
    let (_, page) = get(port, &format!("/build/{id}/details"), "");
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains(&format!("{}\n{LINES}\n", LINES - 1))
            || page.contains(&format!("{}\n{LINES}</pre>", LINES - 1)),
        "{page}"
    );
    let (hwm, _) = memory_kib(pid);
    assert!(hwm < 64 * 1024, "VmHWM {hwm} KiB after the copy");
    drop(running);
}

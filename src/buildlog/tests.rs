use super::decode::{ErrorKind, gzip_header_len};
use super::serve::{self, LogStream};
use super::*;
use crate::db::{Db, JobRecord};
use crate::http::{Length, Parsed, Request, parse_request};
use std::io::Write;

const REAL_GZ: &[u8] = include_bytes!("../../fixtures/logs/guix-1.5.0.drv.gz");
const REAL_BZ2: &[u8] = include_bytes!("../../fixtures/logs/guix-1.2.0.drv.bz2");
const REAL_TEXT: &[u8] =
    b"guix perform-download: error: refusing to run with elevated privileges (UID 0)\n";

fn gzip(text: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(text).unwrap();
    z.finish().unwrap()
}

fn bzip2(text: &[u8]) -> Vec<u8> {
    let mut z = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    z.write_all(text).unwrap();
    z.finish().unwrap()
}

/// Decodes `input` fed `split` bytes at a time with `budget` bytes of
/// text per call, as the loop does; the text, or the error.
fn decode_split(
    c: Compression,
    input: &[u8],
    split: usize,
    budget: usize,
) -> Result<Vec<u8>, Error> {
    let mut d = Decoder::new(c);
    let mut text = Vec::new();
    for piece in input.chunks(split) {
        let mut used = 0;
        while used < piece.len() {
            let before = text.len();
            used += d.decode(&piece[used..], &mut text, budget)?;
            assert!(text.len() - before <= budget, "budget overrun");
        }
    }
    d.finish()?;
    Ok(text)
}

use super::decode::Error;

fn check(c: Compression, input: &[u8], want: &[u8]) {
    for (split, budget) in [
        (input.len().max(1), 1 << 20),
        (1, 1 << 20),
        (7, 3),
        (4096, 1),
    ] {
        let got = decode_split(c, input, split, budget).unwrap();
        assert_eq!(got, want, "{c:?} split {split} budget {budget}");
    }
}

fn kind(c: Compression, input: &[u8]) -> ErrorKind {
    decode_split(c, input, 5, 100).unwrap_err().kind
}

#[test]
fn real_daemon_logs_decode() {
    check(Compression::Gzip, REAL_GZ, REAL_TEXT);
    check(Compression::Bzip2, REAL_BZ2, REAL_TEXT);
}

#[test]
fn every_compression_decodes_in_any_split() {
    let text: Vec<u8> = (0..20_000u32)
        .flat_map(|i| [format!("line {i} \u{e9}").as_bytes(), b"\xff\n"].concat())
        .collect();
    check(Compression::Plain, &text, &text);
    check(Compression::Gzip, &gzip(&text), &text);
    check(Compression::Bzip2, &bzip2(&text), &text);
    check(Compression::Plain, b"", b"");
    check(Compression::Gzip, b"", b"");
    check(Compression::Gzip, &gzip(b""), b"");
}

#[test]
fn several_members_and_streams_are_one_text() {
    let mut gz = gzip(b"first\n");
    gz.extend(gzip(b"second\n"));
    check(Compression::Gzip, &gz, b"first\nsecond\n");
    let mut bz = bzip2(b"first\n");
    bz.extend(bzip2(b"second\n"));
    check(Compression::Bzip2, &bz, b"first\nsecond\n");
}

#[test]
fn gzip_headers_with_every_optional_field() {
    // FEXTRA (2 bytes), FNAME, FCOMMENT and FHCRC, as RFC 1952 orders them.
    let mut head = vec![0x1f, 0x8b, 8, 2 | 4 | 8 | 16, 0, 0, 0, 0, 0, 3];
    head.extend([2, 0, b'x', b'y']);
    head.extend(b"name.log\0comment\0");
    head.extend([0xaa, 0xbb]);
    assert_eq!(gzip_header_len(&head), Ok(Some(head.len())));
    for short in 0..head.len() {
        assert_eq!(gzip_header_len(&head[..short]), Ok(None), "{short}");
    }
    let plain = gzip(b"hello\n");
    let mut member = head.clone();
    member.extend(&plain[10..]);
    check(Compression::Gzip, &member, b"hello\n");
    assert_eq!(gzip_header_len(b"\x1f\x8b\x07"), Err(ErrorKind::NotGzip));
    let mut reserved = plain.clone();
    reserved[3] = 0x20;
    assert_eq!(kind(Compression::Gzip, &reserved), ErrorKind::BadGzipHeader);
    // A name with no end is refused past the cap, not buffered forever.
    let mut endless = vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3];
    endless.extend(vec![b'n'; decode::MAX_GZIP_HEADER + 10]);
    assert_eq!(kind(Compression::Gzip, &endless), ErrorKind::BadGzipHeader);
}

#[test]
fn corrupt_logs_are_clear_errors() {
    let gz = gzip(b"some text that is long enough to matter\n");
    let bz = bzip2(b"some text that is long enough to matter\n");
    assert_eq!(kind(Compression::Gzip, b"plain text\n"), ErrorKind::NotGzip);
    assert_eq!(
        kind(Compression::Gzip, &gz[..gz.len() - 3]),
        ErrorKind::Truncated
    );
    assert_eq!(kind(Compression::Gzip, &gz[..5]), ErrorKind::Truncated);
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 1;
    assert_eq!(kind(Compression::Gzip, &bad_crc), ErrorKind::Checksum);
    let mut bad_len = gz.clone();
    bad_len[n - 1] ^= 1;
    assert_eq!(kind(Compression::Gzip, &bad_len), ErrorKind::Checksum);
    let mut garbage = gz.clone();
    garbage.extend(b"junk");
    assert_eq!(kind(Compression::Gzip, &garbage), ErrorKind::NotGzip);
    let mut body = gz.clone();
    body[12] ^= 0xff;
    assert!(matches!(
        kind(Compression::Gzip, &body),
        ErrorKind::Corrupt(_) | ErrorKind::Checksum
    ));
    assert!(matches!(
        kind(Compression::Bzip2, b"BZh9 not really"),
        ErrorKind::Corrupt(_)
    ));
    assert_eq!(
        kind(Compression::Bzip2, &bz[..bz.len() - 4]),
        ErrorKind::Truncated
    );
    let e = decode_split(Compression::Gzip, &bad_crc, n, 100).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("gzip checksum or length mismatch at byte {}", n - 8)
    );
}

#[test]
fn mangled_input_never_panics() {
    // A small deterministic mutation run over both formats: each result
    // is text or an error, never a panic or a budget overrun.
    let text: Vec<u8> = (0..3000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (c, good) in [
        (Compression::Gzip, gzip(&text)),
        (Compression::Bzip2, bzip2(&text)),
    ] {
        for _ in 0..300 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bad.len() as u64) as usize;
                bad[at] = next() as u8;
            }
            let cut = bad.len() - (next() % 3) as usize;
            let _ = decode_split(
                c,
                &bad[..cut],
                1 + (next() % 64) as usize,
                1 + (next() % 4096) as usize,
            );
        }
    }
}

#[test]
fn a_tail_keeps_the_last_lines_in_bounded_memory() {
    let mut t = Tail::new(16);
    t.push(b"a\nb\nc\n");
    assert_eq!(t.lines(2), b"b\nc\n");
    assert_eq!(t.lines(9), b"a\nb\nc\n");
    for i in 0..1000 {
        t.push(format!("line {i}\n").as_bytes());
    }
    // Only whole lines of the last 16 bytes: "line 999\n" and the end of
    // "line 998\n" cut off.
    assert_eq!(t.lines(5), b"line 999\n");
    let mut big = Tail::new(8);
    big.push(&[b'x'; 100]);
    assert_eq!(big.lines(3), [b'x'; 8]);
    assert_eq!(Tail::new(8).lines(3), b"");
}

/// A temporary directory for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("cuirass-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("daemon/ab")).unwrap();
        std::fs::create_dir_all(d.join("copies")).unwrap();
        Dir(d)
    }
    fn places(&self) -> Places {
        Places::new(self.0.join("daemon"), self.0.join("copies"))
    }
    fn daemon_file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join("daemon/ab").join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The body of a chunked message, de-chunked; panics on bad framing.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap(), 16).unwrap();
        assert_eq!(&body[eol + 2 + n..eol + 4 + n], b"\r\n");
        out.extend_from_slice(&body[eol + 2..eol + 2 + n]);
        body = &body[eol + 4 + n..];
        if n == 0 {
            assert!(body.is_empty());
            return out;
        }
    }
}

fn stream_all(
    source: &Source,
    pass: bool,
    chunked: bool,
) -> (Length, Result<Vec<u8>, String>, usize) {
    let mut s = LogStream::open(source, pass, chunked).unwrap();
    let mut out = Vec::new();
    let mut turns = 0;
    while !s.is_done() {
        let before = out.len();
        if let Err(e) = s.next(&mut out) {
            return (s.length(), Err(e), turns);
        }
        assert!(
            out.len() - before <= serve::TEXT_CHUNK + 16,
            "a turn's chunk is bounded"
        );
        turns += 1;
    }
    (s.length(), Ok(out), turns)
}

#[test]
fn logs_stream_a_bounded_chunk_per_turn() {
    let dir = Dir::new("stream");
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("{i:08}\n").into_bytes())
        .collect();
    let source = |name: &str, bytes: &[u8], live| Source {
        path: dir.daemon_file(name, bytes).into(),
        compression: Compression::of_path(name),
        live,
    };
    let gz = source("x.drv.gz", &gzip(&text), false);
    let (length, body, turns) = stream_all(&gz, false, true);
    assert_eq!(length, Length::Chunked);
    assert_eq!(dechunk(&body.unwrap()), text);
    assert!(turns >= text.len() / serve::TEXT_CHUNK, "{turns} turns");
    // HTTP/1.0: the text as it is, to the connection's end.
    let (length, body, _) = stream_all(&gz, false, false);
    assert_eq!((length, body.unwrap()), (Length::UntilClose, text.clone()));
    // Passed through: the stored bytes, with their length.
    let (length, body, _) = stream_all(&gz, true, true);
    assert_eq!(
        (length, body.unwrap()),
        (
            Length::Known(std::fs::metadata(&gz.path).unwrap().len()),
            gzip(&text)
        )
    );
    let bz = source("x.drv.bz2", &bzip2(&text), false);
    assert_eq!(dechunk(&stream_all(&bz, false, true).1.unwrap()), text);
    let plain = source("x.drv", &text, false);
    let (length, body, _) = stream_all(&plain, false, true);
    assert_eq!(
        (length, body.unwrap()),
        (Length::Known(text.len() as u64), text.clone())
    );
    // A build still running: its cut-short log is what there is so far.
    let cut = gzip(&text);
    let live = source("live.drv.gz", &cut[..cut.len() / 2], true);
    let so_far = dechunk(&stream_all(&live, false, true).1.unwrap());
    assert!(!so_far.is_empty() && text.starts_with(&so_far));
    // Finished, the same cut is corrupt.
    let dead = source("dead.drv.gz", &cut[..cut.len() / 2], false);
    let err = stream_all(&dead, false, true).1.unwrap_err();
    assert!(
        err.contains("dead.drv.gz: compressed data cut short"),
        "{err}"
    );
}

fn request(target: &str, headers: &str) -> Request {
    let text = format!("GET {target} HTTP/1.1\r\n{headers}\r\n");
    match parse_request(text.as_bytes()) {
        Ok(Parsed::Complete(req, _)) => req,
        other => panic!("{target}: {other:?}"),
    }
}

fn job(name: &str) -> JobRecord {
    JobRecord {
        job_name: name.into(),
        derivation: format!("/gnu/store/{name:a<32}-{name}.drv"),
        system: "x86_64-linux".into(),
        nix_name: format!("{name}-1.0"),
        outputs: vec![("out".into(), format!("/gnu/store/{name:b<32}-{name}"))],
        inputs: vec![],
        limits: Default::default(),
        priority: 0,
    }
}

/// Builds 1 (`gz`, finished, log `x.drv.gz`), 2 (`bz`, finished, a bzip2
/// log), 3 (`wip`, started, no log yet) and 4 (`bad`, a log outside the
/// daemon's directory).
fn db_with_logs(dir: &Dir) -> Db {
    let mut db = Db::open_in_memory().unwrap();
    db.add_specifications(&[crate::spec::Specification::new(
        "s",
        "file:///s",
        "ci.scm",
        "jobs",
    )])
    .unwrap();
    let jobs: Vec<JobRecord> = ["gz", "bz", "wip", "bad"].iter().map(|n| job(n)).collect();
    db.register_evaluation("s", "abc", &jobs, 100).unwrap();
    let gz = dir.daemon_file("x.drv.gz", REAL_GZ);
    let bz = dir.daemon_file("y.drv.bz2", REAL_BZ2);
    db.build_finished(
        &jobs[0].derivation,
        crate::db::status::SUCCEEDED,
        Some(&gz),
        200,
    )
    .unwrap();
    db.build_finished(
        &jobs[1].derivation,
        crate::db::status::FAILED,
        Some(&bz),
        200,
    )
    .unwrap();
    db.build_started(&jobs[2].derivation, "", 150).unwrap();
    db.build_finished(
        &jobs[3].derivation,
        crate::db::status::FAILED,
        Some("/etc/passwd"),
        200,
    )
    .unwrap();
    db
}

#[test]
fn raw_logs_are_their_text_or_gzip_when_accepted() {
    let dir = Dir::new("raw");
    let db = db_with_logs(&dir);
    let places = dir.places();
    let r = serve::whole(&db, &places, &request("/build/1/log/raw", ""));
    assert_eq!(
        (r.status, r.content_type, r.body.as_slice()),
        (200, "text/plain", REAL_TEXT)
    );
    assert!(
        r.headers
            .contains(&("X-Content-Type-Options", "nosniff".into()))
    );
    assert!(!r.headers.iter().any(|(k, _)| *k == "Content-Encoding"));
    let r = serve::whole(
        &db,
        &places,
        &request("/build/1/log/raw", "Accept-Encoding: br, gzip;q=0.5\r\n"),
    );
    assert_eq!(r.body, REAL_GZ);
    assert!(r.headers.contains(&("Content-Encoding", "gzip".into())));
    let r = serve::whole(
        &db,
        &places,
        &request("/build/1/log/raw", "Accept-Encoding: gzip;q=0\r\n"),
    );
    assert_eq!(r.body, REAL_TEXT);
    let r = serve::whole(
        &db,
        &places,
        &request("/build/2/log/raw", "Accept-Encoding: gzip\r\n"),
    );
    assert_eq!((r.status, r.body.as_slice()), (200, REAL_TEXT));
    for (target, code) in [
        ("/build/3/log/raw", 404),
        ("/build/4/log/raw", 404),
        ("/build/9/log/raw", 404),
        ("/build/x/log/raw", 400),
    ] {
        assert_eq!(
            serve::whole(&db, &places, &request(target, "")).status,
            code,
            "{target}"
        );
    }
    // A `..` in the database's path is refused too.
    let sneaky = format!("{}/ab/../../../../etc/passwd", places.daemon.display());
    db.connection()
        .execute("UPDATE Builds SET log = ?1 WHERE id = 4", [sneaky])
        .unwrap();
    assert_eq!(
        serve::whole(&db, &places, &request("/build/4/log/raw", "")).status,
        404
    );
    // A log that is not what its name says: a 500 naming the file.
    std::fs::write(places.daemon.join("ab/x.drv.gz"), b"not gzip").unwrap();
    let r = serve::whole(&db, &places, &request("/build/1/log/raw", ""));
    let body = String::from_utf8(r.body).unwrap();
    assert_eq!(r.status, 500);
    assert!(body.contains("x.drv.gz: not gzip data at byte 0"), "{body}");
}

/// `/log/ITEM` (today's Cuirass): the log of the build that made a store
/// item, served as `/build/ID/log/raw` serves it.
#[test]
fn a_store_items_log_is_that_of_the_build_that_made_it() {
    let dir = Dir::new("item");
    let db = db_with_logs(&dir);
    let places = dir.places();
    let item = |name: &str| {
        job(name).outputs[0]
            .1
            .strip_prefix("/gnu/store/")
            .unwrap()
            .to_string()
    };
    let r = serve::whole(&db, &places, &request(&format!("/log/{}", item("bz")), ""));
    assert_eq!((r.status, r.body.as_slice()), (200, REAL_TEXT));
    let r = serve::whole(
        &db,
        &places,
        &request(&format!("/log/{}", item("gz")), "Accept-Encoding: gzip\r\n"),
    );
    assert_eq!((r.status, r.body.as_slice()), (200, REAL_GZ));
    assert_eq!(
        serve::log_request(&request("/log/x", "")),
        Some(serve::LogOf::Item("x"))
    );
    for (target, code) in [
        (format!("/log/{}", item("wip")), 404),
        (format!("/log/{}", item("none")), 404),
    ] {
        let r = serve::whole(&db, &places, &request(&target, ""));
        assert_eq!(r.status, code, "{target}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("error"),
            "{target}"
        );
    }
}

#[test]
fn accept_encoding_values() {
    for (value, gzip) in [
        ("gzip", true),
        ("deflate, GZIP", true),
        ("x-gzip", true),
        ("*", true),
        ("gzip;q=0", false),
        ("gzip; q=0.0, br", false),
        ("br, identity", false),
        ("gzip;q=bogus", false),
        ("", false),
    ] {
        assert_eq!(crate::http::accepts_gzip(value), gzip, "{value}");
    }
}

fn run(copier: &mut copy::Copier) -> usize {
    let mut turns = 0;
    while copier.busy() {
        copier.step();
        turns += 1;
        assert!(turns < 10_000);
    }
    turns
}

#[test]
fn each_build_keeps_its_own_copy_and_tail() {
    let dir = Dir::new("copy");
    let db = db_with_logs(&dir);
    let places = dir.places();
    let mut copier = copy::Copier::new(places.clone());
    let gz = places.daemon.join("ab/x.drv.gz");
    copier.push(vec![BuildId(1), BuildId(4)], gz.to_str().unwrap());
    // Outside the daemon's directory: ignored.
    copier.push(vec![BuildId(2)], "/etc/passwd");
    run(&mut copier);
    for id in [1, 4] {
        assert_eq!(
            std::fs::read(places.copy_path(BuildId(id), Compression::Gzip)).unwrap(),
            REAL_GZ
        );
        // A small copy's tail is decoded when asked for: no .tail file.
        assert!(!places.tail_path(BuildId(id)).exists());
    }
    assert!(places.copy_of(BuildId(2)).is_none());
    // The daemon rewrites its log for a rebuild: build 1 keeps its own.
    std::fs::write(&gz, gzip(b"second attempt\n")).unwrap();
    let r = serve::whole(&db, &places, &request("/build/1/log/raw", ""));
    assert_eq!(r.body, REAL_TEXT);
    // A plain daemon log is compressed on the way; its tail is its end.
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let plain = dir.daemon_file("z.drv", &text);
    copier.push(vec![BuildId(3)], &plain);
    let turns = run(&mut copier);
    assert!(turns > 2, "{turns} turns");
    let copy = places.copy_of(BuildId(3)).unwrap();
    assert_eq!(copy.compression, Compression::Gzip);
    assert_eq!(
        decode_split(
            Compression::Gzip,
            &std::fs::read(copy.path).unwrap(),
            4096,
            1 << 20
        )
        .unwrap(),
        text
    );
    let tail = std::fs::read(places.tail_path(BuildId(3))).unwrap();
    assert!(tail.starts_with(b"399950\n") && tail.ends_with(b"399999\n"));
    // A corrupt log is copied (it is the log), but has no tail.
    let bad = dir.daemon_file("bad.drv.gz", b"\x1f\x8b\x08\x00garbage");
    copier.push(vec![BuildId(5)], &bad);
    run(&mut copier);
    assert!(places.copy_of(BuildId(5)).is_some());
    assert!(!places.tail_path(BuildId(5)).exists());
    // A vanished log: no copy, no temporary file left.
    copier.push(
        vec![BuildId(6)],
        places.daemon.join("ab/gone.drv.gz").to_str().unwrap(),
    );
    run(&mut copier);
    assert!(places.copy_of(BuildId(6)).is_none());
    let names: Vec<_> = std::fs::read_dir(&places.copies)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
        "{names:?}"
    );
}

#[test]
fn tails_come_from_the_tail_file_or_the_end_of_the_log() {
    let dir = Dir::new("tail");
    let mut db = db_with_logs(&dir);
    let places = dir.places();
    let build = |db: &Db, id| db.build(id).unwrap().unwrap();
    // No copy yet: the compressed log, decoded.
    assert_eq!(
        tail_text(&places, &build(&db, BuildId(1)), 50).unwrap(),
        REAL_TEXT
    );
    assert_eq!(
        tail_text(&places, &build(&db, BuildId(2)), 50).unwrap(),
        REAL_TEXT
    );
    assert_eq!(
        tail_text(&places, &build(&db, BuildId(3)), 50).unwrap_err(),
        NO_LOG
    );
    // A copy's tail file wins.
    std::fs::write(places.copy_path(BuildId(1), Compression::Gzip), REAL_GZ).unwrap();
    std::fs::write(places.tail_path(BuildId(1)), b"from the tail file\n").unwrap();
    assert_eq!(
        tail_text(&places, &build(&db, BuildId(1)), 50).unwrap(),
        b"from the tail file\n"
    );
    // A large plain log: its end, read with one seek.
    let text: Vec<u8> = (0..1_000_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let plain = dir.daemon_file("big.drv", &text);
    db.connection()
        .execute("UPDATE Builds SET log = ?1 WHERE id = 3", [&plain])
        .unwrap();
    let t = tail_text(&places, &build(&db, BuildId(3)), 3).unwrap();
    assert_eq!(t, b"999997\n999998\n999999\n");
    // A compressed one too large to decode for its tail is said so.
    let big = dir.daemon_file("big.drv.gz", &gzip(&vec![b'y'; TAIL_SCAN + 10]));
    db.connection()
        .execute("UPDATE Builds SET log = ?1 WHERE id = 2", [&big])
        .unwrap();
    let e = tail_text(&places, &build(&db, BuildId(2)), 3).unwrap_err();
    assert!(e.contains("too long"), "{e}");
    let _ = &mut db;
}

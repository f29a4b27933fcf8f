//! A dependency-free mutation fuzzer for cuirass's sans-I/O parsers.
//!
//!     cuirass-fuzz [--seconds N] [--seed N] [--crashes DIR] [TARGET...]
//!     cuirass-fuzz --replay FILE TARGET
//!
//! cargo-fuzz needs a nightly compiler and a top-level `fuzz/` crate, so
//! this is a plain binary instead: no coverage feedback, but seeds from
//! `fixtures/`, a grammar-aware set of mutations (the tokens that trip
//! S-expression, ATerm, trace and wire parsers), and invariants beyond
//! "does not panic": what the S-expression reader accepts must print and
//! read back the same, the incremental decoders must give the same result
//! however their input is chunked, and no parser may take more than
//! `SLOW` on a 1 MiB input.  Each failing input is written to the crash
//! directory and the process exits 1.  A fixed `--seed` makes a run
//! reproducible.

use cuirass::{drv, job, sexp, spec, trace, wire};
use std::panic::{AssertUnwindSafe, catch_unwind};

#[path = "cuirass-fuzz/admin.rs"]
mod admin;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The time budget of a parser on a 1 MiB input.  Going over it is a bug
/// when the time grows faster than the input (quadratic behaviour) or is
/// five times over; a linear parse of half a million tiny data can take a
/// little longer on a busy machine without anything being wrong.
const SLOW: Duration = Duration::from_millis(100);
/// The size of the inputs of the timing check.
const BIG: usize = 1 << 20;
/// Ordinary mutated inputs stay below this, to keep executions fast.
const MAX_LEN: usize = 64 * 1024;
/// Inputs that parse are kept as new starting points, up to this many.
const MAX_CORPUS: usize = 4096;

const TARGETS: &[&str] = &[
    "sexp", "spec", "drv", "trace", "wire", "job", "http", "admin",
];

/// xorshift64*: small, fast, and the same on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Tokens that matter to at least one of the grammars.
const TOKENS: &[&[u8]] = &[
    b"(",
    b")",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"#",
    b"#:",
    b"#t",
    b"#f",
    b"#\\",
    b"#\\x",
    b"#(",
    b"#{",
    b"}#",
    b"#|",
    b"|#",
    b"#;",
    b"#!",
    b"!#",
    b"'",
    b"`",
    b",",
    b",@",
    b" . ",
    b".",
    b";",
    b"\n",
    b"\r\n",
    b" ",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"99999999999999999999999999",
    b"-9223372036854775808",
    b"9223372036854775807",
    b"18446744073709551615",
    b"1e999",
    b"+nan.0",
    b"-inf.0",
    b"1/0",
    b"\\x",
    b"\\x41;",
    b"\\U0010ffff",
    b"\\u",
    b"(quote ",
    b"(quasiquote ",
    b"(unquote ",
    b"(list ",
    b"(cons* ",
    b"(append ",
    b"Derive(",
    b"[(",
    b")]",
    b"\",\"",
    b"/gnu/store/",
    b"/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv",
    b".drv",
    b"@ ",
    b"@ build-started ",
    b"@ build-succeeded ",
    b"@ build-failed ",
    b"@ build-log ",
    b"@ build-log 1 99999999999 ",
    b"@ substituter-started ",
    b"cannot build derivation `",
    b"' 3 dependencies couldn't be built",
    b" - ",
    b"(job ",
    b"(job-error ",
    b"(done ",
    b"(name . ",
    b"(derivation . ",
    b"#:name",
    b"#:url",
    b"#:arguments",
];

/// Little-endian words that matter to the worker protocol.
const WORDS: &[u64] = &[
    0,
    1,
    7,
    8,
    0x6f6c_6d67, // next
    0x616c_7473, // last
    0x6378_7470, // error
    0x6461_7461, // read
    0x6461_7416, // write
    0xffff_ffff,
    u64::MAX,
    1 << 40,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            3 if len > 0 => input.truncate(rng.below(len)),
            4 if !corpus.is_empty() => {
                // Splice: our head, another input's tail.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            5 if len > 0 => {
                // Repeat a chunk a few or many times.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = input[i..i + n].to_vec();
                let times = if rng.chance(8) {
                    1 + rng.below(2000)
                } else {
                    1 + rng.below(8)
                };
                for _ in 0..times {
                    input.splice(i..i, chunk.iter().copied());
                }
            }
            6 | 7 => {
                let i = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(i..i, token.iter().copied());
            }
            8 => {
                // Word-aligned, for the wire protocol.
                let i = (rng.below(len / 8 + 1)) * 8;
                let w = WORDS[rng.below(WORDS.len())].to_le_bytes();
                if i + 8 <= len && rng.chance(2) {
                    input[i..i + 8].copy_from_slice(&w);
                } else {
                    input.splice(i.min(len)..i.min(len), w);
                }
            }
            _ if len > 1 => {
                // Swap two bytes.
                let (a, b) = (rng.below(len), rng.below(len));
                input.swap(a, b);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

/// What one execution found: `Err` is a broken invariant.  `Ok(true)` means
/// the input was accepted, so it is worth mutating further.
type Outcome = Result<bool, String>;

fn run_target(target: &str, input: &[u8], rng_seed: u64) -> Outcome {
    match target {
        "sexp" => fuzz_sexp(input),
        "spec" => Ok(spec::read_spec_text("fuzz.scm", &String::from_utf8_lossy(input)).is_ok()),
        "drv" => Ok(drv::Derivation::parse(input)
            .map(|d| d.name().map(str::len))
            .is_ok()),
        "trace" => fuzz_trace(input, rng_seed),
        "wire" => fuzz_wire(input, rng_seed),
        "job" => Ok(job::parse_line(input).is_ok()),
        "http" => fuzz_http(input),
        "admin" => admin::fuzz(input),
        other => Err(format!("unknown target {other}")),
    }
}

/// Only the parser, for the timing check: the invariant checks of
/// `run_target` cost more than the parse they check.
fn parse_only(target: &str, input: &[u8]) {
    match target {
        "sexp" => drop(sexp::parse_all(&String::from_utf8_lossy(input))),
        "spec" => drop(spec::read_spec_text(
            "fuzz.scm",
            &String::from_utf8_lossy(input),
        )),
        "drv" => drop(drv::Derivation::parse(input)),
        "trace" => {
            for line in input.split(|&b| b == b'\n') {
                drop(trace::parse_line(line));
            }
            drop(split_all(input, &[], trace::MAX_LINE, true));
        }
        "wire" => drop(decode(input, &[])),
        "job" => drop(job::parse_line(input)),
        "http" => drop(cuirass::http::parse_request(input)),
        "admin" => {
            if let Ok(cuirass::http::Parsed::Complete(req, _)) = cuirass::http::parse_request(input)
            {
                drop(cuirass::api::admin::Body::of(&req));
            }
            drop(serde_json::from_slice::<serde_json::Value>(input));
        }
        _ => {}
    }
}

thread_local! {
    /// One small database for every HTTP execution: routes run real queries.
    static API_DB: cuirass::db::Db = {
        let mut db = cuirass::db::Db::open_in_memory().expect("in-memory database");
        let spec = spec::Specification::new("hello", "file:///nowhere", "ci.scm", "jobs");
        db.add_specifications(&[spec]).expect("spec");
        let job = cuirass::db::JobRecord {
            job_name: "hello".into(),
            derivation: "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv".into(),
            system: "x86_64-linux".into(),
            nix_name: "hello".into(),
            outputs: vec![("out".into(), "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-hello".into())],
            ..Default::default()
        };
        db.register_evaluation("hello", "c0ffee", &[job], 1).expect("evaluation");
        db
    };
}

/// An HTTP request head: whatever is accepted has a clean path (no `.`,
/// `..` or NUL segment), a length within the input, the same answer for
/// every prefix that holds it, and a route answer that is a real status.
fn fuzz_http(input: &[u8]) -> Outcome {
    use cuirass::http::{Parsed, parse_request};
    let Ok(Parsed::Complete(req, used)) = parse_request(input) else {
        return Ok(false);
    };
    if used == 0 || used > input.len() {
        return Err(format!("consumed {used} of {} bytes", input.len()));
    }
    if !req.path.starts_with('/') || req.path.contains('\0') {
        return Err(format!("unclean path {:?}", req.path));
    }
    if let Some(bad) = req
        .segments
        .iter()
        .find(|s| *s == "." || *s == ".." || s.contains('\0'))
    {
        return Err(format!("segment {bad:?} let through"));
    }
    match parse_request(&input[..used]) {
        Ok(Parsed::Complete(again, n)) if n == used && again.path == req.path => {}
        other => {
            return Err(format!(
                "the request's own bytes parse differently: {other:?}"
            ));
        }
    }
    let status = API_DB.with(|db| cuirass::api::respond(db, &req).status);
    if !(200..600).contains(&status) || status == 500 {
        return Err(format!("{} {} answered {status}", req.method, req.path));
    }
    Ok(true)
}

/// Prints, reads back and prints again: the two texts must be equal.
fn round_trip(d: &sexp::Datum, what: &str) -> Result<(), String> {
    let printed = d.to_string();
    let again = sexp::parse_all(&printed)
        .map_err(|e| format!("{what} {printed:?} does not read back: {e}"))?;
    let [back] = again.as_slice() else {
        return Err(format!(
            "{what} {printed:?} reads back as {} data",
            again.len()
        ));
    };
    let reprinted = back.to_string();
    if reprinted != printed {
        return Err(format!("{what} {printed:?} reads back as {reprinted:?}"));
    }
    Ok(())
}

fn fuzz_sexp(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let Ok(data) = sexp::parse_all(&text) else {
        return Ok(false);
    };
    for d in &data {
        round_trip(d, "datum")?;
        if let Ok(value) = sexp::eval_data(d) {
            round_trip(&value, "value")?;
        }
    }
    Ok(true)
}

/// The pieces of a stream, with adjacent raw pieces of one builder merged,
/// so that two chunkings can be compared.
fn split_all(
    input: &[u8],
    chunks: &[usize],
    max_line: usize,
    frames: bool,
) -> Vec<(i64, Vec<u8>, bool)> {
    let mut s = trace::LineSplitter::with_options(max_line, frames);
    let mut out: Vec<(i64, Vec<u8>, bool)> = Vec::new();
    let take = |s: &mut trace::LineSplitter, out: &mut Vec<(i64, Vec<u8>, bool)>| {
        while let Some(p) = s.next_piece() {
            match p {
                trace::Piece::Line { line, truncated } => {
                    assert!(line.len() <= max_line, "a line longer than the cap");
                    out.push((-1, line.to_vec(), truncated))
                }
                trace::Piece::Raw { pid, bytes } => match out.last_mut() {
                    Some((p, b, _)) if *p == pid as i64 => b.extend_from_slice(bytes),
                    _ => out.push((pid as i64, bytes.to_vec(), false)),
                },
            }
        }
    };
    let mut at = 0;
    for &n in chunks {
        let end = (at + n).min(input.len());
        s.feed(&input[at..end]);
        take(&mut s, &mut out);
        at = end;
    }
    s.feed(&input[at..]);
    take(&mut s, &mut out);
    s.finish();
    take(&mut s, &mut out);
    out
}

fn chunking(len: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed | 1);
    let mut chunks = Vec::new();
    let mut total = 0;
    while total < len {
        let most = if rng.chance(2) { 8 } else { 4096 };
        let n = 1 + rng.below(most);
        chunks.push(n);
        total += n;
    }
    chunks
}

fn fuzz_trace(input: &[u8], seed: u64) -> Outcome {
    let mut events = 0;
    for line in input.split(|&b| b == b'\n') {
        if let trace::Line::Event(_) = trace::parse_line(line) {
            events += 1;
        }
    }
    let max_line = if seed.is_multiple_of(3) {
        1 + (seed as usize >> 8) % 200
    } else {
        trace::MAX_LINE
    };
    let frames = seed.is_multiple_of(2);
    let whole = split_all(input, &[], max_line, frames);
    let chunked = split_all(input, &chunking(input.len(), seed), max_line, frames);
    if whole != chunked {
        return Err(format!(
            "LineSplitter (max_line {max_line}, frames {frames}) gives other pieces when chunked"
        ));
    }
    Ok(events > 0)
}

/// What the daemon sends before any request: its magic and version, then
/// the end of the start-up log stream.
fn handshake() -> Vec<u8> {
    [0x6478_696f_u64, 0x163, 0x616c_7473]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

fn requests() -> Vec<wire::Request> {
    let drv = "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv".to_string();
    vec![
        wire::Request::SetOptions(wire::BuildOptions {
            keep_going: true,
            print_build_trace: true,
            ..wire::BuildOptions::default()
        }),
        wire::Request::IsValidPath(drv.clone()),
        wire::Request::QueryValidPaths(vec![drv.clone()]),
        wire::Request::QueryDerivationOutputs(drv.clone()),
        wire::Request::AddTempRoot(drv.clone()),
        wire::Request::BuildPaths(vec![drv], 0),
    ]
}

/// Feeds the daemon's bytes in the given chunks; returns the events and
/// the error, if any.
fn decode(input: &[u8], chunks: &[usize]) -> (Vec<wire::Event>, Option<String>) {
    let mut client = wire::Client::new();
    for r in requests() {
        client.request(r);
    }
    client.receive(&handshake()).expect("the handshake decodes");
    let mut events = Vec::new();
    let mut error = None;
    let mut at = 0;
    let mut pieces: Vec<&[u8]> = Vec::new();
    for &n in chunks {
        let end = (at + n).min(input.len());
        pieces.push(&input[at..end]);
        at = end;
    }
    pieces.push(&input[at..]);
    for piece in pieces {
        let result = client.receive(piece);
        let n = client.pending_output().len();
        client.consume_output(n);
        while let Some(e) = client.poll_event() {
            events.push(e);
        }
        if let Err(e) = result {
            // A broken stream stays broken, with the same error.
            if client.receive(b"more").err() != Some(e.clone()) {
                panic!("the error changed after more input");
            }
            error = Some(e.to_string());
            break;
        }
    }
    (events, error)
}

fn fuzz_wire(input: &[u8], seed: u64) -> Outcome {
    let whole = decode(input, &[]);
    let chunked = decode(input, &chunking(input.len(), seed));
    if whole != chunked {
        return Err(format!(
            "wire::Client gives other events when chunked: {:?} vs {:?}",
            whole.1, chunked.1
        ));
    }
    Ok(whole.1.is_none() && !whole.0.is_empty())
}

fn read_dir_files(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file() && keep(p))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn seeds(target: &str, fixtures: &Path) -> Vec<Vec<u8>> {
    let any = |_: &Path| true;
    let ext = |e: &'static str| move |p: &Path| p.extension().is_some_and(|x| x == e);
    let drv = "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv";
    let mut seeds = match target {
        "sexp" | "spec" => {
            let mut s = read_dir_files(&fixtures.join("specs"), any);
            s.extend(read_dir_files(&fixtures.join("jobs"), ext("scm")));
            s.extend(read_dir_files(&fixtures.join("example"), ext("scm")));
            s
        }
        "drv" => read_dir_files(&fixtures.join("drv"), ext("drv")),
        "http" => [
            "GET /build/1 HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /api/latestbuilds?nr=10&job=hello&status=0 HTTP/1.1\r\nHost: t\r\n\r\n",
            "HEAD /api/queue?nr=5 HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /build/1/log/raw HTTP/1.0\r\n\r\n",
            "GET /api/evaluations?nr=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /jobsets%2F..%2F HTTP/1.1\r\n\r\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "admin" => admin::seeds(),
        "trace" => read_dir_files(&fixtures.join("trace"), ext("txt")),
        "wire" => read_dir_files(&fixtures.join("wire"), ext("bin"))
            .into_iter()
            .map(|b| strip_handshake(&b))
            .collect(),
        _ => Vec::new(),
    };
    if target == "job" || target == "sexp" {
        // Evaluator output lines, as src/evaluate.scm prints them.
        for line in [
            format!(
                "(job (name . \"hello\") (derivation . \"{drv}\") (system . \"x86_64-linux\"))"
            ),
            "(job-error (name . \"bad\") (message . \"In procedure car: \\\"x\\\"\"))".into(),
            "(done 42)".into(),
            format!(
                "(job (name . \"a b\") (derivation . \"{drv}\") (outputs (\"out\" . \"/gnu/store/x\")))"
            ),
        ] {
            seeds.push(line.into_bytes());
        }
    }
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    seeds
}

/// The part of a captured daemon stream after its start-up log stream.
fn strip_handshake(bytes: &[u8]) -> Vec<u8> {
    let mut client = wire::Client::new();
    for (i, b) in bytes.iter().enumerate() {
        if client.receive(std::slice::from_ref(b)).is_err() {
            break;
        }
        while let Some(e) = client.poll_event() {
            if matches!(e, wire::Event::Connected { .. }) {
                return bytes[i + 1..].to_vec();
            }
        }
    }
    bytes.to_vec()
}

/// Runs one input, turning a panic into an error message.
fn execute(target: &str, input: &[u8], seed: u64) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| run_target(target, input, seed))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("panicked: {msg}"))
        }
    }
}

/// A big input built by repeating a corpus entry or a token, checked and
/// timed.
fn timing_check(target: &str, rng: &mut Rng, corpus: &[Vec<u8>]) -> Option<(Vec<u8>, String, u64)> {
    let mut unit = corpus[rng.below(corpus.len())].clone();
    if unit.is_empty() || rng.chance(2) {
        let token = TOKENS[rng.below(TOKENS.len())];
        unit = token.repeat(1 + rng.below(4));
    }
    if unit.len() > 4096 {
        let start = rng.below(unit.len() - 4096);
        unit = unit[start..start + 1 + rng.below(4096)].to_vec();
    }
    let mut big = Vec::with_capacity(BIG + unit.len());
    while big.len() < BIG {
        big.extend_from_slice(&unit);
    }
    big.truncate(BIG);
    let seed = rng.next();
    if let Err(e) = execute(target, &big, seed) {
        return Some((big, e, seed));
    }
    let time = |input: &[u8]| {
        // The best of five: the machine may be busy with other work.
        (0..5)
            .map(|_| {
                let start = Instant::now();
                parse_only(target, input);
                start.elapsed()
            })
            .min()
            .unwrap()
    };
    let full = time(&big);
    if full <= SLOW {
        return None;
    }
    // Over the budget: a bug if the time grows faster than the input
    // (a quarter of the input should take about a quarter of the time;
    // quadratic work takes a sixteenth, and cache effects and a busy
    // machine account for up to about 2.5 times the linear figure), or if
    // it is absurd anyway.
    let quarter = time(&big[..BIG / 4]);
    let why = if full > quarter * 10 + SLOW / 10 {
        format!(
            "superlinear: {} ms on 1 MiB, {} ms on 256 KiB",
            full.as_millis(),
            quarter.as_millis()
        )
    } else if full > SLOW * 5 {
        format!("took {} ms on a 1 MiB input", full.as_millis())
    } else {
        return None;
    };
    Some((big, why, seed))
}

struct Stats {
    execs: u64,
    crashes: usize,
    corpus: usize,
}

fn fuzz(target: &str, seconds: u64, seed: u64, fixtures: &Path, crashes: &Path) -> Stats {
    let mut rng = Rng(seed
        ^ target.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
        | 1);
    let mut corpus = seeds(target, fixtures);
    let base = corpus.len();
    let mut stats = Stats {
        execs: 0,
        crashes: 0,
        corpus: 0,
    };
    let mut seen_errors = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // The file name holds the execution's seed (it decides the chunking),
    // which `--replay` reads back.
    let mut save = |input: &[u8], why: String, exec_seed: u64, stats: &mut Stats| {
        // One file per distinct failure, so a run does not fill the disk.
        let key = why.chars().take(60).collect::<String>();
        if !seen_errors.insert(key) {
            return;
        }
        stats.crashes += 1;
        let _ = std::fs::create_dir_all(crashes);
        let path = crashes.join(format!("{target}-{exec_seed}"));
        let _ = std::fs::write(&path, input);
        eprintln!("{target}: {why}\n  input saved to {}", path.display());
    };
    // Seeds first, as they are.
    for input in corpus.clone() {
        if let Err(why) = execute(target, &input, 1) {
            save(&input, why, 1, &mut stats);
        }
    }
    while Instant::now() < deadline {
        for _ in 0..64 {
            stats.execs += 1;
            if stats.execs.is_multiple_of(4096)
                && let Some((input, why, s)) = timing_check(target, &mut rng, &corpus)
            {
                save(&input, why, s, &mut stats);
            }
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus);
            let exec_seed = rng.next();
            match execute(target, &input, exec_seed) {
                Err(why) => save(&input, why, exec_seed, &mut stats),
                Ok(true) if corpus.len() < MAX_CORPUS && rng.chance(4) => corpus.push(input),
                Ok(_) => {}
            }
        }
    }
    stats.corpus = corpus.len() - base;
    stats
}

fn usage() -> ! {
    eprintln!(
        "usage: cuirass-fuzz [--seconds N] [--seed N] [--crashes DIR] [--fixtures DIR] [TARGET...]\n       \
         cuirass-fuzz --replay FILE TARGET\ntargets: {}",
        TARGETS.join(" ")
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 60;
    let mut seed = 0x5eed_u64;
    let mut crashes = PathBuf::from("fuzz-crashes");
    let mut fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut replay = None;
    let mut targets = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--seconds" => seconds = value().parse().unwrap_or_else(|_| usage()),
            "--seed" => seed = value().parse().unwrap_or_else(|_| usage()),
            "--crashes" => crashes = value().into(),
            "--fixtures" => fixtures = value().into(),
            "--replay" => replay = Some(PathBuf::from(value())),
            "-h" | "--help" => usage(),
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            _ => usage(),
        }
    }
    // Panics are reported by `execute`; the default hook's backtrace
    // message for each would drown the summary.
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(file) = replay {
        let [target] = targets.as_slice() else {
            usage()
        };
        let input = std::fs::read(&file).unwrap_or_else(|e| {
            eprintln!("{}: {e}", file.display());
            std::process::exit(2)
        });
        let exec_seed = file
            .file_name()
            .and_then(|n| n.to_str()?.rsplit('-').next()?.parse().ok())
            .unwrap_or(1);
        let outcome = execute(target, &input, exec_seed);
        let start = Instant::now();
        parse_only(target, &input);
        let took = start.elapsed();
        println!("{target}: {outcome:?}, parsed in {} ms", took.as_millis());
        let slow = input.len() <= BIG && took > SLOW * 5;
        std::process::exit(i32::from(outcome.is_err() || slow));
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    let mut failed = false;
    for target in &targets {
        let stats = fuzz(target, seconds, seed, &fixtures, &crashes);
        println!(
            "{target}: {} executions in {seconds} s, {} crash(es), {} inputs added to the corpus",
            stats.execs, stats.crashes, stats.corpus
        );
        failed |= stats.crashes > 0;
    }
    if failed {
        eprintln!("crashing inputs are in {}", crashes.display());
        std::process::exit(1);
    }
}

use super::*;

/// Captured from `guix repl` with print-build-trace and keep-going (see
/// fixtures/trace/README).
const PLAIN: &[u8] = include_bytes!("../../fixtures/trace/plain.txt");
/// The same, with multiplexed-build-output and extended build traces.
const MUX: &[u8] = include_bytes!("../../fixtures/trace/multiplexed.txt");

/// Parses `line` and compares the outcome's debug form with `expect`.
fn check(line: &str, expect: &str) {
    assert_eq!(
        format!("{:?}", parse_line(line.as_bytes())),
        expect,
        "line: {line:?}"
    );
}

/// An owned form of [`Piece`], so runs can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Line(Vec<u8>, bool),
    Raw(u64, Vec<u8>),
}

/// Splits `stream` fed in chunks of `chunk` bytes, merging adjacent raw
/// pieces of a frame (their boundaries depend on the chunking).
fn split(stream: &[u8], chunk: usize, sp: &mut LineSplitter) -> Vec<Owned> {
    let mut out = Vec::new();
    let drain = |sp: &mut LineSplitter, out: &mut Vec<Owned>| {
        while let Some(p) = sp.next_piece() {
            match (p, out.last_mut()) {
                (Piece::Raw { pid, bytes }, Some(Owned::Raw(last, acc))) if *last == pid => {
                    acc.extend_from_slice(bytes)
                }
                (Piece::Raw { pid, bytes }, _) => out.push(Owned::Raw(pid, bytes.to_vec())),
                (Piece::Line { line, truncated }, _) => {
                    out.push(Owned::Line(line.to_vec(), truncated))
                }
            }
        }
    };
    for c in stream.chunks(chunk) {
        sp.feed(c);
        drain(sp, &mut out);
    }
    sp.finish();
    drain(sp, &mut out);
    out
}

fn events(pieces: &[Owned]) -> Vec<Line> {
    pieces
        .iter()
        .filter_map(|p| match p {
            Owned::Line(l, _) => Some(parse_line(l)),
            Owned::Raw(..) => None,
        })
        .filter(|l| *l != Line::Text)
        .collect()
}

fn drv(name: &str) -> String {
    format!("/gnu/store/{name}.drv")
}

#[test]
fn plain_fixture() {
    let pieces = split(
        PLAIN,
        PLAIN.len(),
        &mut LineSplitter::with_options(MAX_LINE, false),
    );
    let fail = drv("6p75gwvx6wrd4mjp78w0cs3da3dm0ljy-fail-plain-1795608623");
    let ok = drv("kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok-plain-1795608623");
    let dep2 = drv("8y8ksb65pgviw886pmi7xfk0l5pam4kh-dep2-on-ok-plain-1795608623");
    let started = |d: &str, log: &str, pid| {
        Line::Event(Event::BuildStarted {
            drv: d.to_owned(),
            system: "x86_64-linux".into(),
            log: format!("/var/log/guix/drvs/{log}.drv.bz2"),
            pid: Some(pid),
        })
    };
    let expect = vec![
        started(
            &fail,
            "6p//75gwvx6wrd4mjp78w0cs3da3dm0ljy-fail-plain-1795608623",
            6272,
        ),
        Line::Event(Event::BuildFailed {
            drv: fail.clone(),
            reason: format!("1 builder for `{fail}' failed with exit code 1"),
        }),
        Line::Event(Event::DependenciesFailed {
            drv: drv("pzv6fm27agngnj6cr230pd96r242a1sm-dep-on-fail-plain-1795608623"),
            count: 1,
        }),
        started(
            &ok,
            "kf//c47jkdwz4zds6i6fg9k2bpgfjymznq-ok-plain-1795608623",
            6273,
        ),
        Line::Event(Event::BuildSucceeded { drv: ok }),
        started(
            &dep2,
            "8y//8ksb65pgviw886pmi7xfk0l5pam4kh-dep2-on-ok-plain-1795608623",
            6274,
        ),
        Line::Event(Event::BuildSucceeded { drv: dep2 }),
    ];
    assert_eq!(events(&pieces), expect);
    // The builder's unterminated last line is cut off the trace line
    // the daemon glued to it.
    assert!(pieces.contains(&Owned::Line(b"no newline at end".to_vec(), false)));
    assert!(pieces.contains(&Owned::Line(b"bad byte \xff here".to_vec(), false)));
    assert!(pieces.iter().all(|p| matches!(p, Owned::Line(_, false))));
}

#[test]
fn multiplexed_fixture() {
    let pieces = split(MUX, MUX.len(), &mut LineSplitter::new());
    let raws: Vec<_> = pieces
        .iter()
        .filter(|p| matches!(p, Owned::Raw(..)))
        .collect();
    assert_eq!(
        raws,
        [
            &Owned::Raw(6365, b"about to fail\nbad byte \xff here\n".to_vec()),
            &Owned::Raw(6366, b"hello from ok\nno newline at end".to_vec()),
            &Owned::Raw(6367, b"after ok\n".to_vec()),
        ]
    );
    let evs = events(&pieces);
    assert_eq!(evs.len(), 10);
    assert_eq!(evs[1], Line::Event(Event::BuildLog { pid: 6365, len: 30 }));
    assert_eq!(
        evs[6],
        Line::Event(Event::BuildSucceeded {
            drv: drv("6yy01wqhii6v7b4mwzyv8r95g6gsr65f-ok-mux-1795608630")
        })
    );
    // The frame, not glue detection, separated the trace line here.
    assert!(!pieces.contains(&Owned::Line(b"no newline at end".to_vec(), false)));
}

#[test]
fn every_chunk_size_gives_the_same_pieces() {
    for (stream, frames) in [(PLAIN, false), (MUX, true)] {
        let whole = split(
            stream,
            stream.len(),
            &mut LineSplitter::with_options(MAX_LINE, frames),
        );
        for chunk in 1..=stream.len() {
            let got = split(
                stream,
                chunk,
                &mut LineSplitter::with_options(MAX_LINE, frames),
            );
            assert_eq!(got, whole, "chunk size {chunk}");
        }
    }
}

#[test]
fn long_lines_are_cut_and_memory_stays_bounded() {
    let mut sp = LineSplitter::with_options(10, true);
    let mut got = Vec::new();
    for _ in 0..1000 {
        sp.feed(b"0123456789abcdef");
        while let Some(p) = sp.next_piece() {
            got.push(format!("{p:?}"));
        }
        assert!(sp.buf.capacity() < 64, "capacity {}", sp.buf.capacity());
    }
    sp.feed(b"tail\nnext\r\n");
    while let Some(p) = sp.next_piece() {
        got.push(format!("{p:?}"));
    }
    assert_eq!(
        got,
        [
            "Line { line: [48, 49, 50, 51, 52, 53, 54, 55, 56, 57], truncated: true }",
            "Line { line: [110, 101, 120, 116], truncated: false }",
        ]
    );
}

#[test]
fn final_line_without_newline_and_crlf() {
    let mut sp = LineSplitter::new();
    let got = split(b"a\r\nb\n\nlast", 3, &mut sp);
    let lines: Vec<_> = got
        .iter()
        .map(|p| match p {
            Owned::Line(l, _) => String::from_utf8_lossy(l).into_owned(),
            Owned::Raw(..) => unreachable!(),
        })
        .collect();
    assert_eq!(lines, ["a", "b", "", "last"]);
}

#[test]
fn frames_with_odd_lengths() {
    // A zero-length frame, a frame cut short by the end of the stream,
    // and a bogus frame header that must not start raw mode.
    let stream = b"@ build-log 1 0\n@ build-log 2 x\nnot raw\n@ build-log 3 100\nshort";
    let got = split(stream, 7, &mut LineSplitter::new());
    assert_eq!(
        got,
        [
            Owned::Line(b"@ build-log 1 0".to_vec(), false),
            Owned::Line(b"@ build-log 2 x".to_vec(), false),
            Owned::Line(b"not raw".to_vec(), false),
            Owned::Line(b"@ build-log 3 100".to_vec(), false),
            Owned::Raw(3, b"short".to_vec()),
        ]
    );
    // Without frame following, the same bytes are all lines.
    let got = split(stream, 7, &mut LineSplitter::with_options(MAX_LINE, false));
    assert_eq!(got.last(), Some(&Owned::Line(b"short".to_vec(), false)));
}

#[test]
fn glued_lines_need_a_real_event() {
    let d = drv("kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok");
    let stream = format!(
        "x@ build-succeeded {d} -\ny@ nonsense\nzcannot build derivation `{d}': 2 dependencies couldn't be built\n"
    );
    let got = split(stream.as_bytes(), 5, &mut LineSplitter::new());
    let lines: Vec<_> = got
        .iter()
        .map(|p| match p {
            Owned::Line(l, _) => String::from_utf8_lossy(l).into_owned(),
            Owned::Raw(..) => unreachable!(),
        })
        .collect();
    assert_eq!(
        lines,
        [
            "x".to_owned(),
            format!("@ build-succeeded {d} -"),
            "y@ nonsense".to_owned(),
            "z".to_owned(),
            format!("cannot build derivation `{d}': 2 dependencies couldn't be built"),
        ]
    );
}

/// One case a line: `INPUT => EXPECTED` (the debug form of
/// [`parse_line`]'s result), with `DRV` and `ITEM` standing for valid
/// store paths.
const CASES: &str = r#"
@ build-started DRV - x86_64-linux  42 => Event(BuildStarted { drv: "DRV", system: "x86_64-linux", log: "", pid: Some(42) })
@ build-started DRV - i686-linux /l => Event(BuildStarted { drv: "DRV", system: "i686-linux", log: "/l", pid: None })
@ build-succeeded DRV => Event(BuildSucceeded { drv: "DRV" })
@ build-failed DRV - timeout => Event(BuildFailed { drv: "DRV", reason: "timeout" })
@ build-failed DRV - => Event(BuildFailed { drv: "DRV", reason: "" })
@ build-remote DRV build-machine => Event(BuildRemote { drv: "DRV", host: "build-machine" })
@ substituter-started ITEM substitute => Event(SubstituterStarted { item: "ITEM" })
@ substituter-succeeded ITEM => Event(SubstituterSucceeded { item: "ITEM" })
@ substituter-failed ITEM 1 no  luck => Event(SubstituterFailed { item: "ITEM", reason: "1 no  luck" })
@ build-log 6366 31 => Event(BuildLog { pid: 6366, len: 31 })
cannot build derivation `DRV': 3 dependencies couldn't be built => Event(DependenciesFailed { drv: "DRV", count: 3 })
hello => Text
@build-log 1 2 => Text
builder for `DRV' failed with exit code 1 => Text
@  => Bogus("unknown trace keyword ``")
@ download-progress x => Bogus("unknown trace keyword `download-progress`")
@ build-succeeded => Bogus("build-succeeded: missing derivation")
@ build-succeeded  x => Bogus("build-succeeded: missing derivation")
@ build-succeeded foo.drv - => Bogus("not a store derivation: `foo.drv`")
@ build-succeeded ITEM - => Bogus("not a store derivation: `ITEM`")
@ build-succeeded /gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-.drv - => Bogus("not a store derivation: `/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-.drv`")
@ build-succeeded ITEM/../b.drv - => Bogus("not a store derivation: `ITEM/../b.drv`")
@ build-started DRV - => Bogus("build-started: missing system")
@ build-started DRV - x /l pid => Bogus("build-started: bad pid `pid`")
@ build-failed DRV => Bogus("build-failed: missing `-`")
@ build-remote DRV => Bogus("build-remote: missing host")
@ substituter-succeeded /tmp/x => Bogus("not a store path: `/tmp/x`")
@ build-log 1 => Bogus("build-log: missing length")
@ build-log +1 2 => Bogus("build-log: bad pid `+1`")
@ build-log 1 99999999999999999999 => Bogus("build-log: bad length `99999999999999999999`")
@ build-log 1 2 3 => Bogus("build-log: extra fields")
cannot build derivation `DRV': many dependencies couldn't be built => Bogus("dependency failure: bad count `many`")
cannot build derivation `x => Bogus("unrecognised dependency failure: `x`")
building of `DRV' timed out after 2 seconds of silence => Event(TimedOut { drv: "DRV", message: "timed out after 2 seconds of silence" })
building of `DRV' timed out after %2% seconds => Event(TimedOut { drv: "DRV", message: "timed out after %2% seconds" })
building of `DRV' took long => Text
building of `/tmp/x.drv' timed out after 3 seconds => Text
"#;

#[test]
fn cases() {
    let item = "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok";
    let expand = |s: &str| {
        s.replace("DRV", &format!("{item}.drv"))
            .replace("ITEM", item)
    };
    for case in CASES.lines().filter(|l| !l.is_empty()) {
        let (input, expect) = case.split_once(" => ").expect("malformed case");
        check(&expand(input), &expand(expect));
    }
    check("", "Text");
    check(
        &expand("@ build-succeeded DRV -\r\n"),
        &expand(r#"Event(BuildSucceeded { drv: "DRV" })"#),
    );
    assert_eq!(
        parse_line(b"@ build-succeeded \xff"),
        Line::Bogus("trace line is not UTF-8".into())
    );
}

#[test]
fn every_prefix_and_garbage_is_handled() {
    for stream in [PLAIN, MUX] {
        for line in stream.split(|&b| b == b'\n') {
            for end in 0..=line.len() {
                let _ = parse_line(&line[..end]);
                let _ = parse_line(&line[end..]);
            }
        }
    }
    let mut sp = LineSplitter::with_options(16, true);
    let mut x: u32 = 1;
    let garbage: Vec<u8> = (0..20_000)
        .map(|_| {
            // xorshift: deterministic noise rich in the bytes that matter.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let alphabet = b"@ \n\r\xff0123build-log ";
            alphabet[x as usize % alphabet.len()]
        })
        .collect();
    let _ = split(&garbage, 13, &mut sp);
}

#[test]
fn store_drv_paths() {
    let ok = ["/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok.drv"];
    let bad = [
        "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-.drv",
        "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq.drv",
        "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymzn-ok.drv",
        "gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok.drv",
        "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok.drv/x.drv",
        "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-o k.drv",
    ];
    assert!(ok.iter().all(|p| is_store_drv(p)));
    assert!(!bad.iter().any(|p| is_store_drv(p)));
}

/// The trace events of a capture, in order, as `kind drv-name reason`.
fn timeline(capture: &[u8]) -> Vec<String> {
    let mut sp = LineSplitter::new();
    events(&split(capture, 7, &mut sp))
        .into_iter()
        .filter_map(|l| match l {
            Line::Event(Event::TimedOut { drv, message }) => {
                Some(format!("{} {message}", short(&drv)))
            }
            Line::Event(Event::BuildFailed { drv, reason }) => {
                Some(format!("{} failed: {reason}", short(&drv)))
            }
            Line::Event(Event::BuildSucceeded { drv }) => {
                Some(format!("{} succeeded", short(&drv)))
            }
            _ => None,
        })
        .collect()
}

/// `silent` or `chatty`, from the derivation's name.
fn short(drv: &str) -> &str {
    let name = &drv[44..];
    &name[..name.find('-').unwrap()]
}

#[test]
fn timeouts_as_both_daemons_report_them() {
    let silent_1_5 = include_bytes!("../../fixtures/trace/timeout-silent-1.5.0.txt");
    let timeout_1_5 = include_bytes!("../../fixtures/trace/timeout-1.5.0.txt");
    let silent_1_2 = include_bytes!("../../fixtures/trace/timeout-silent-1.2.0.txt");
    let timeout_1_2 = include_bytes!("../../fixtures/trace/timeout-1.2.0.txt");
    for silent in [&silent_1_5[..], &silent_1_2[..]] {
        assert_eq!(
            timeline(silent),
            [
                "chatty succeeded",
                "silent timed out after 2 seconds of silence",
                "silent failed: timeout"
            ]
        );
    }
    let timeout = |n: &str| {
        vec![
            format!("chatty timed out after {n} seconds"),
            "chatty failed: timeout".to_string(),
            format!("silent timed out after {n} seconds"),
            "silent failed: timeout".to_string(),
        ]
    };
    assert_eq!(timeline(timeout_1_2), timeout("3"));
    assert_eq!(timeline(timeout_1_5), timeout("%2%"));
}

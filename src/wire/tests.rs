use super::*;

/// A session recorded by fixtures/wire/capture.py while Guix 1.2.0's own
/// client ran fixtures/wire/session.scm; see that script for the steps.
const C2D: &[u8] = include_bytes!("../../fixtures/wire/session-c2d.bin");
const D2C: &[u8] = include_bytes!("../../fixtures/wire/session-d2c.bin");
const OK_DRV: &str = "/gnu/store/1zsycnxl0qqdvgbdgs2riii29xbnp5dy-ok-wire1795608647.drv";
const OK_OUT: &str = "/gnu/store/x5jz57lsifq5r3gg85h9nbwyi5vqds06-ok-wire1795608647";
const FAIL_DRV: &str = "/gnu/store/nz5bdyb3nmp84cszvakqx449kpridqga-fail-wire1795608647.drv";
const DEP_DRV: &str = "/gnu/store/w9wd338axrgz3gw68s91cnb8v0z0qkk0-dep-on-fail-wire1795608647.drv";
const MISSING: &str = "/gnu/store/00000000000000000000000000000000-missing";

fn words(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn primitives_encode_to_fixed_bytes() {
    let mut out = Vec::new();
    put_u64(&mut out, 0x0102_0304_0506_0708);
    assert_eq!(out, [8, 7, 6, 5, 4, 3, 2, 1]);

    let mut out = Vec::new();
    put_bytes(&mut out, b"root");
    assert_eq!(out, b"\x04\0\0\0\0\0\0\0root\0\0\0\0");

    let mut out = Vec::new();
    put_bytes(&mut out, b"12345678");
    assert_eq!(out, b"\x08\0\0\0\0\0\0\x0012345678");

    let mut out = Vec::new();
    put_strings(&mut out, &["a", ""]);
    assert_eq!(
        out,
        b"\x02\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );

    let mut out = Vec::new();
    put_string_pairs(&mut out, &[("k".into(), "v".into())]);
    assert_eq!(out[..8], words(&[1])[..]);
    assert_eq!(out.len(), 8 + 16 + 16);
}

#[test]
fn primitives_decode_or_ask_for_more() {
    let s = b"\x04\0\0\0\0\0\0\0root\0\0\0\0";
    for cut in 0..s.len() {
        assert_eq!(get_bytes(&s[..cut]), Ok(Status::Partial), "cut {cut}");
    }
    assert_eq!(get_bytes(s), Ok(Status::Complete(b"root".to_vec(), 16)));
    assert_eq!(get_u64(&[1, 0, 0]), Status::Partial);
    assert_eq!(get_u64(&words(&[7, 9])), Status::Complete(7, 8));

    let mut list = Vec::new();
    put_strings(&mut list, &["/gnu/store/a", "b"]);
    let want = vec!["/gnu/store/a".to_string(), "b".to_string()];
    assert_eq!(get_strings(&list), Ok(Status::Complete(want, list.len())));
    assert_eq!(get_strings(&list[..list.len() - 1]), Ok(Status::Partial));
}

#[test]
fn primitives_reject_garbage() {
    let too_long = words(&[MAX_STRING_LEN + 1]);
    assert_eq!(
        get_bytes(&too_long).unwrap_err().kind,
        ErrorKind::TooLong(MAX_STRING_LEN + 1)
    );
    let padded = b"\x01\0\0\0\0\0\0\0a\0\0\0\0\0\0\x05";
    let e = get_bytes(padded).unwrap_err();
    assert_eq!((e.pos, e.kind), (9, ErrorKind::NonZeroPadding));
    let mut bad_utf8 = words(&[1]);
    put_bytes(&mut bad_utf8, b"\xff");
    assert_eq!(
        get_strings(&bad_utf8).unwrap_err().kind,
        ErrorKind::InvalidUtf8
    );
    assert_eq!(
        get_message(&words(&[0xdead])).unwrap_err().kind,
        ErrorKind::UnexpectedTag(0xdead)
    );
    let e = ProtocolError {
        pos: 16,
        kind: ErrorKind::TooLong(1 << 40),
    };
    assert_eq!(
        e.to_string(),
        "daemon protocol error at byte 16: absurd length 1099511627776"
    );
}

#[test]
fn log_messages_decode() {
    let mut m = words(&[tag::NEXT]);
    put_bytes(&mut m, b"half a li\xffne");
    assert_eq!(
        get_message(&m),
        Ok(Status::Complete(
            Message::Next(b"half a li\xffne".to_vec()),
            m.len()
        ))
    );
    let mut e = words(&[tag::ERROR]);
    put_bytes(&mut e, b"boom");
    e.extend(words(&[100]));
    let want = Message::Error {
        message: "boom".into(),
        status: 100,
    };
    assert_eq!(get_message(&e), Ok(Status::Complete(want, e.len())));
    assert_eq!(get_message(&e[..e.len() - 1]), Ok(Status::Partial));
}

fn captured_requests() -> Vec<Request> {
    let options = BuildOptions {
        keep_going: true,
        print_build_trace: true,
        settings: vec![
            ("print-extended-build-trace".into(), "1".into()),
            ("user-name".into(), "root".into()),
        ],
        ..BuildOptions::default()
    };
    vec![
        Request::SetOptions(options),
        Request::IsValidPath(OK_DRV.into()),
        Request::IsValidPath(MISSING.into()),
        Request::IsValidPath("/tmp/not-in-store".into()),
        Request::QueryDerivationOutputs(OK_DRV.into()),
        Request::AddTempRoot(OK_DRV.into()),
        Request::BuildPaths(vec![OK_DRV.into()], 0),
        Request::BuildPaths(vec![FAIL_DRV.into(), DEP_DRV.into()], 0),
    ]
}

fn expected_events() -> Vec<Event> {
    let log = |s: String| Event::Log(s.into_bytes());
    let fail_log =
        "/var/log/guix/drvs/nz//5bdyb3nmp84cszvakqx449kpridqga-fail-wire1795608647.drv.bz2";
    let builder_failed = format!("builder for `{FAIL_DRV}' failed with exit code 1");
    vec![
        Event::Connected {
            daemon_version: 0x163,
        },
        Event::Reply(Reply::Unit),
        Event::Reply(Reply::Bool(true)),
        Event::Reply(Reply::Bool(false)),
        Event::Failed {
            message: "path `/tmp/not-in-store' is not in the store".into(),
            status: 1,
        },
        Event::Reply(Reply::Strings(vec![OK_OUT.into()])),
        Event::Reply(Reply::Unit),
        log(format!(
            "@ build-started {OK_DRV} - x86_64-linux /var/log/guix/drvs/1z//sycnxl0qqdvgbdgs2riii29xbnp5dy-ok-wire1795608647.drv.bz2 6458\n"
        )),
        log(format!("@ build-succeeded {OK_DRV} -\n")),
        Event::Reply(Reply::Int(1)),
        log(format!(
            "@ build-started {FAIL_DRV} - x86_64-linux {fail_log} 6459\n"
        )),
        log("oops\n".into()),
        log(format!("{builder_failed}\n")),
        log(format!("@ build-failed {FAIL_DRV} - 1 {builder_failed}\n")),
        log(format!(
            "cannot build derivation `{DEP_DRV}': 1 dependencies couldn't be built\n"
        )),
        Event::Failed {
            message: format!("build of `{FAIL_DRV}', `{DEP_DRV}' failed"),
            status: 100,
        },
    ]
}

/// Replays the captured daemon bytes in chunks of `chunk`, collecting what
/// the client writes and the events it reports.
fn replay(chunk: usize) -> (Vec<u8>, Vec<Event>) {
    let mut client = Client::new();
    for req in captured_requests() {
        client.request(req);
    }
    let (mut written, mut events) = (Vec::new(), Vec::new());
    for piece in D2C.chunks(chunk) {
        written.extend_from_slice(client.pending_output());
        client.consume_output(client.pending_output().len());
        client.receive(piece).unwrap();
        events.extend(std::iter::from_fn(|| client.poll_event()));
    }
    written.extend_from_slice(client.pending_output());
    assert_eq!(client.outstanding(), 0);
    (written, events)
}

#[test]
fn client_writes_what_guile_wrote() {
    let (written, _) = replay(D2C.len());
    assert_eq!(written, C2D);
}

#[test]
fn captured_session_decodes_the_same_in_every_chunking() {
    let want = expected_events();
    for chunk in 1..=D2C.len() {
        let (written, events) = replay(chunk);
        assert_eq!(events, want, "chunk size {chunk}");
        assert_eq!(written, C2D, "chunk size {chunk}");
    }
}

#[test]
fn requests_wait_for_the_handshake_and_each_other() {
    let mut c = Client::new();
    c.request(Request::IsValidPath(MISSING.into()));
    c.request(Request::AddTempRoot(MISSING.into()));
    assert_eq!(c.pending_output(), words(&[WORKER_MAGIC_1]));
    assert_eq!(c.outstanding(), 2);
    c.consume_output(8);
    c.receive(&words(&[WORKER_MAGIC_2, 0x163])).unwrap();
    assert_eq!(c.pending_output(), words(&[0x163, 0, 1]));
    c.consume_output(24);
    c.receive(&words(&[tag::LAST])).unwrap();
    let mut first = words(&[op::IS_VALID_PATH]);
    put_bytes(&mut first, MISSING.as_bytes());
    assert_eq!(c.pending_output(), first);
    c.consume_output(first.len());
    c.receive(&words(&[tag::LAST])).unwrap();
    assert_eq!(c.pending_output(), b"", "second request held until a reply");
    c.receive(&words(&[0])).unwrap();
    assert_eq!(c.pending_output()[..8], words(&[op::ADD_TEMP_ROOT])[..]);
    assert_eq!(c.outstanding(), 1);
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(
        events,
        [
            Event::Connected {
                daemon_version: 0x163
            },
            Event::Reply(Reply::Bool(false))
        ]
    );
}

/// A connected client with its handshake bytes consumed.
fn connected() -> Client {
    let mut c = Client::new();
    c.receive(&words(&[WORKER_MAGIC_2, 0x163])).unwrap();
    c.receive(&words(&[tag::LAST])).unwrap();
    let n = c.pending_output().len();
    c.consume_output(n);
    assert!(matches!(c.poll_event(), Some(Event::Connected { .. })));
    c
}

#[test]
fn add_text_to_store_sends_name_text_references_and_replies_the_path() {
    let mut c = connected();
    let refs = vec![
        "/gnu/store/aaa-x".to_string(),
        "/gnu/store/bbb-y".to_string(),
    ];
    c.request(Request::AddTextToStore {
        name: "roots".into(),
        text: "x\ny\n".into(),
        references: refs.clone(),
    });
    let mut want = words(&[op::ADD_TEXT_TO_STORE]);
    put_bytes(&mut want, b"roots");
    put_bytes(&mut want, b"x\ny\n");
    put_strings(&mut want, &refs);
    assert_eq!(c.pending_output(), want);
    c.consume_output(want.len());
    let mut reply = words(&[tag::LAST]);
    put_bytes(&mut reply, b"/gnu/store/ccc-roots");
    // Split inside the path: nothing until it is whole.
    c.receive(&reply[..20]).unwrap();
    assert_eq!(c.poll_event(), None);
    c.receive(&reply[20..]).unwrap();
    assert_eq!(
        c.poll_event(),
        Some(Event::Reply(Reply::Path("/gnu/store/ccc-roots".into())))
    );
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn gc_root_requests_encode_and_drop_the_daemons_constant() {
    let mut c = connected();
    let link = "/var/cache/cuirass/gcroots/abc-hello";
    c.request(Request::AddIndirectRoot(link.into()));
    c.request(Request::SyncWithGc);
    let mut want = words(&[op::ADD_INDIRECT_ROOT]);
    put_bytes(&mut want, link.as_bytes());
    assert_eq!(c.pending_output(), want);
    c.consume_output(want.len());
    // "last", then the word 1 the daemon always writes.
    c.receive(&words(&[tag::LAST])).unwrap();
    assert_eq!(c.poll_event(), None, "the reply's word is still due");
    c.receive(&words(&[1])).unwrap();
    assert_eq!(c.poll_event(), Some(Event::Reply(Reply::Unit)));
    assert_eq!(c.pending_output(), words(&[op::SYNC_WITH_GC]));
    c.consume_output(8);
    c.receive(&words(&[tag::LAST, 1])).unwrap();
    assert_eq!(c.poll_event(), Some(Event::Reply(Reply::Unit)));
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn handshake_errors() {
    let mut c = Client::new();
    let e = c.receive(&words(&[1, 0x163])).unwrap_err();
    assert_eq!((e.pos, e.kind), (0, ErrorKind::BadMagic(1)));
    assert!(c.receive(&[]).is_err(), "a broken client stays broken");

    let mut c = Client::new();
    let e = c.receive(&words(&[WORKER_MAGIC_2, 0x20f])).unwrap_err();
    assert_eq!((e.pos, e.kind), (8, ErrorKind::UnsupportedVersion(0x20f)));

    let mut c = Client::new();
    let mut refusal = words(&[WORKER_MAGIC_2, 0x163, tag::NEXT]);
    put_bytes(&mut refusal, b"opening store\n");
    refusal.extend(words(&[tag::ERROR]));
    put_bytes(&mut refusal, b"no store");
    refusal.extend(words(&[1]));
    let e = c.receive(&refusal).unwrap_err();
    assert_eq!(e.pos, 48);
    assert!(e.to_string().contains("no store"), "{e}");
    assert_eq!(
        c.poll_event(),
        Some(Event::Log(b"opening store\n".to_vec()))
    );
}

#[test]
fn unexpected_messages_are_errors() {
    let connected = words(&[WORKER_MAGIC_2, 0x163, tag::LAST]);
    let mut c = Client::new();
    let e = c
        .receive(&[&connected[..], &words(&[tag::LAST])].concat())
        .unwrap_err();
    assert_eq!((e.pos, e.kind), (24, ErrorKind::UnsolicitedData));

    let mut c = Client::new();
    c.request(Request::IsValidPath(MISSING.into()));
    c.receive(&connected).unwrap();
    let e = c.receive(&words(&[tag::READ, 100])).unwrap_err();
    assert_eq!((e.pos, e.kind), (24, ErrorKind::DataTransfer(tag::READ)));
}

#[test]
fn random_bytes_never_panic() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let prefixes = [
        Vec::new(),
        words(&[WORKER_MAGIC_2, 0x163]),
        words(&[WORKER_MAGIC_2, 0x163, tag::LAST]),
    ];
    for round in 0..3000 {
        let mut c = Client::new();
        c.request(Request::QueryValidPaths(vec![MISSING.into()]));
        let mut bytes = prefixes[round % prefixes.len()].clone();
        let len = (next() % 200) as usize;
        for _ in 0..len {
            // Mostly small values and real tags, so decoding gets past the
            // first word now and then.
            let b = match next() % 4 {
                0 => next() as u8,
                1 => 0,
                _ => [0x67, 0x6d, 0x6c, 0x6f, 0x73, 0x74, 0x61, 1, 8][(next() % 9) as usize],
            };
            bytes.push(b);
        }
        for piece in bytes.chunks(1 + (next() % 17) as usize) {
            if c.receive(piece).is_err() {
                break;
            }
        }
        while c.poll_event().is_some() {}
    }
}

mod daemon {
    //! Against the real guix-daemon; skipped when it is not running here.

    use super::super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    const SOCKET: &str = "/var/guix/daemon-socket/socket";

    /// Moves bytes until the client reports an event other than a log line.
    fn next_event(c: &mut Client, s: &mut UnixStream, log: &mut Vec<u8>) -> Event {
        loop {
            while let Some(ev) = c.poll_event() {
                match ev {
                    Event::Log(text) => log.extend(text),
                    other => return other,
                }
            }
            if !c.pending_output().is_empty() {
                let n = s.write(c.pending_output()).unwrap();
                c.consume_output(n);
                continue;
            }
            let mut buf = [0; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "daemon closed the connection");
            c.receive(&buf[..n]).unwrap();
        }
    }

    /// Creates a fresh, unbuilt derivation with Guix's own client.
    fn make_derivation(nonce: &str) -> Option<String> {
        let script = std::env::temp_dir().join(format!("cuirass-wire-{nonce}.scm"));
        std::fs::write(
            &script,
            "(use-modules (guix store) (guix derivations) (ice-9 match))\n\
             (match (command-line) ((_ name) (with-store s (display (derivation-file-name\n\
             (derivation s name \"/bin/sh\" (list \"-c\" \"echo hi > $out\")))))))\n",
        )
        .unwrap();
        let out = std::process::Command::new("guix")
            .args(["repl", "--"])
            .arg(&script)
            .arg(format!("wire-it-{nonce}"))
            .output();
        let _ = std::fs::remove_file(&script);
        let out = out.ok().filter(|o| o.status.success())?;
        Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    #[test]
    fn talks_to_the_real_daemon() {
        if !std::path::Path::new(SOCKET).exists() {
            eprintln!("note: {SOCKET} is absent; skipping the daemon test");
            return;
        }
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let drv = make_derivation(&nonce).expect("guix repl made a derivation");
        let mut s = UnixStream::connect(SOCKET).unwrap();
        let mut c = Client::new();
        let mut log = Vec::new();
        c.request(Request::SetOptions(BuildOptions {
            keep_going: true,
            print_build_trace: true,
            settings: vec![("build-timeout".into(), "60".into())],
            ..BuildOptions::default()
        }));
        c.request(Request::IsValidPath(super::MISSING.into()));
        c.request(Request::QueryDerivationOutputs(drv.clone()));
        let ev = next_event(&mut c, &mut s, &mut log);
        assert!(matches!(ev, Event::Connected { daemon_version } if daemon_version >> 8 == 1));
        assert_eq!(
            next_event(&mut c, &mut s, &mut log),
            Event::Reply(Reply::Unit)
        );
        let ev = next_event(&mut c, &mut s, &mut log);
        assert_eq!(ev, Event::Reply(Reply::Bool(false)));
        let Event::Reply(Reply::Strings(outputs)) = next_event(&mut c, &mut s, &mut log) else {
            panic!("no outputs for {drv}");
        };
        assert_eq!(outputs.len(), 1);
        let out = outputs[0].clone();

        c.request(Request::AddTempRoot(drv.clone()));
        c.request(Request::BuildPaths(vec![drv.clone()], 0));
        c.request(Request::QueryValidPaths(vec![
            out.clone(),
            super::MISSING.into(),
        ]));
        assert_eq!(
            next_event(&mut c, &mut s, &mut log),
            Event::Reply(Reply::Unit)
        );
        assert_eq!(
            next_event(&mut c, &mut s, &mut log),
            Event::Reply(Reply::Int(1))
        );
        let ev = next_event(&mut c, &mut s, &mut log);
        assert_eq!(ev, Event::Reply(Reply::Strings(vec![out])));
        let log = String::from_utf8_lossy(&log);
        assert!(log.contains(&format!("@ build-succeeded {drv} -")), "{log}");
        assert_eq!(c.outstanding(), 0);
    }
}

use super::*;
use crate::records::{BuildId, EvalId};
use crate::wire::{PROTOCOL_VERSION, WORKER_MAGIC_2, put_bytes, put_strings, put_u64, tag};

fn pending(id: i64, limits: Limits) -> PendingBuild {
    PendingBuild {
        rank: 90,
        id: BuildId(id),
        derivation: format!("/gnu/store/{id:a<32}-job{id}.drv"),
        evaluation: EvalId(1),
        specification: "s".into(),
        limits,
    }
}

fn limits(max_silent_time: Option<u64>, timeout: Option<u64>) -> Limits {
    Limits {
        max_silent_time,
        timeout,
    }
}

#[test]
fn a_batch_takes_one_limit_class_in_queue_order() {
    let (a, b, none) = (
        limits(Some(2), Some(60)),
        limits(Some(60), Some(3)),
        Limits::default(),
    );
    let mut queue: VecDeque<PendingBuild> = [(1, a), (2, b), (3, a), (4, none), (5, a), (6, b)]
        .into_iter()
        .map(|(id, l)| pending(id, l))
        .collect();
    let ids = |v: &[PendingBuild]| v.iter().map(|p| p.id).collect::<Vec<_>>();
    let first = take_batch(&mut queue, 2);
    assert_eq!(ids(&first), [1, 3]);
    // The others keep their places; 5 is next of its class.
    assert_eq!(ids(queue.make_contiguous()), [2, 4, 5, 6]);
    assert_eq!(ids(&take_batch(&mut queue, 200)), [2, 6]);
    assert_eq!(ids(&take_batch(&mut queue, 200)), [4]);
    assert_eq!(ids(&take_batch(&mut queue, 200)), [5]);
    assert!(take_batch(&mut queue, 200).is_empty());
}

#[test]
fn limits_become_the_connections_settings() {
    let pairs = |l| {
        let mut s = build_options(false, false, false, l).settings;
        // Always there: the live logs need it.
        assert_eq!(
            s.pop(),
            Some(("multiplexed-build-output".into(), "true".into()))
        );
        s
    };
    assert_eq!(pairs(Limits::default()), []);
    assert_eq!(
        pairs(limits(Some(2), Some(72000))),
        [
            ("build-max-silent-time".to_string(), "2".to_string()),
            ("build-timeout".to_string(), "72000".to_string())
        ]
    );
    assert_eq!(
        pairs(limits(None, Some(3))),
        [("build-timeout".to_string(), "3".to_string())]
    );
}

/// What the daemon sends for a handshake, set-options and a build-paths
/// whose log text is `log`, ending with keep-going's error.
fn daemon_bytes(log: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in [WORKER_MAGIC_2, PROTOCOL_VERSION, tag::LAST, tag::LAST] {
        put_u64(&mut out, w);
    }
    for line in log.split_inclusive(|&b| b == b'\n') {
        put_u64(&mut out, tag::NEXT);
        put_bytes(&mut out, line);
    }
    put_u64(&mut out, tag::ERROR);
    put_bytes(&mut out, b"build of ... failed");
    put_u64(&mut out, 101);
    out
}

/// The derivations of a capture's `@ build-started` lines.
fn started(capture: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(capture)
        .lines()
        .filter_map(|l| l.strip_prefix("@ build-started "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// Feeds a capture of the real daemon to a batch of its derivations and
/// returns each finished one's (name, status, reason).
fn outcome(
    capture: &[u8],
    limits: Limits,
) -> Vec<(String, crate::db::BuildStatus, Option<String>)> {
    let items = started(capture)
        .into_iter()
        .map(|derivation| Item {
            outputs: vec![derivation.trim_end_matches(".drv").to_string()],
            inputs: Vec::new(),
            derivation,
        })
        .collect();
    let mut batch = Batch::new(items, build_options(false, false, false, limits), limits);
    batch.receive(&daemon_bytes(capture), "test").unwrap();
    // Nothing is left undecided: the validity check is not asked.
    let mut valid = Vec::new();
    put_u64(&mut valid, tag::LAST);
    put_strings::<&str>(&mut valid, &[]);
    if !batch.is_done() {
        batch.receive(&valid, "test").unwrap();
    }
    assert!(batch.is_done());
    batch
        .take_updates()
        .into_iter()
        .filter_map(|u| match u {
            Update::Finished {
                derivation,
                status,
                reason,
                ..
            } => Some((derivation[44..].to_string(), status, reason)),
            Update::Started { .. } | Update::Remote { .. } => None,
        })
        .map(|(name, st, r)| (name[..name.find('-').unwrap()].to_string(), st, r))
        .collect()
}

#[test]
fn a_build_killed_for_a_limit_records_the_daemons_reason() {
    let silent = limits(Some(2), None);
    for capture in [
        &include_bytes!("../../fixtures/trace/timeout-silent-1.5.0.txt")[..],
        &include_bytes!("../../fixtures/trace/timeout-silent-1.2.0.txt")[..],
    ] {
        assert_eq!(
            outcome(capture, silent),
            [
                ("chatty".into(), status::SUCCEEDED, None),
                (
                    "silent".into(),
                    status::FAILED,
                    Some("timed out after 2 seconds of silence".into())
                ),
            ]
        );
    }
    // 1.5.0 leaves `%2%` where the number goes: the batch's own timeout
    // fills it in, so both daemons give the same reason.
    let timeout = limits(None, Some(3));
    for capture in [
        &include_bytes!("../../fixtures/trace/timeout-1.5.0.txt")[..],
        &include_bytes!("../../fixtures/trace/timeout-1.2.0.txt")[..],
    ] {
        let reason = Some("timed out after 3 seconds".to_string());
        assert_eq!(
            outcome(capture, timeout),
            [
                ("chatty".into(), status::FAILED, reason.clone()),
                ("silent".into(), status::FAILED, reason),
            ]
        );
    }
}

#[test]
fn an_ordinary_failure_keeps_the_daemons_message() {
    let plain = include_bytes!("../../fixtures/trace/plain.txt");
    let failed: Vec<_> = outcome(plain, Limits::default())
        .into_iter()
        .filter(|(_, st, _)| *st == status::FAILED)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let reason = failed[0].2.as_deref().unwrap();
    assert!(
        reason.starts_with("builder for `/gnu/store/")
            && reason.ends_with("failed with exit code 1"),
        "{reason}"
    );
}

#[test]
fn a_failure_the_daemon_did_not_trace_keeps_the_requests_error() {
    let drv = format!("/gnu/store/{:a<32}-x.drv", "");
    let items = vec![Item {
        outputs: vec![drv.trim_end_matches(".drv").to_string()],
        inputs: Vec::new(),
        derivation: drv,
    }];
    let limits = Limits::default();
    let mut batch = Batch::new(items, build_options(false, false, false, limits), limits);
    let mut bytes = Vec::new();
    for w in [WORKER_MAGIC_2, PROTOCOL_VERSION, tag::LAST, tag::LAST] {
        put_u64(&mut bytes, w);
    }
    put_u64(&mut bytes, tag::ERROR);
    put_bytes(&mut bytes, b"unexpected EOF reading a line\n");
    put_u64(&mut bytes, 1);
    batch.receive(&bytes, "test").unwrap();
    let mut valid = Vec::new();
    put_u64(&mut valid, tag::LAST);
    put_strings::<&str>(&mut valid, &[]);
    batch.receive(&valid, "test").unwrap();
    assert!(batch.is_done());
    let reasons: Vec<_> = batch
        .take_updates()
        .into_iter()
        .filter_map(|u| match u {
            Update::Finished { status, reason, .. } => Some((status, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [(
            status::FAILED_OTHER,
            Some("unexpected EOF reading a line".to_string())
        )]
    );
}

#[test]
fn offloading_is_asked_for_unless_forbidden() {
    assert!(build_options(false, false, true, Limits::default()).use_build_hook);
    assert!(!build_options(false, false, false, Limits::default()).use_build_hook);
}

/// A batch of the derivations a capture of real daemon bytes (after
/// build-paths: fixtures/trace/*.bin) started, fed those bytes in chunks
/// of `chunk` bytes: its updates and output.
fn replay(capture: &[u8], chunk: usize) -> (Vec<Update>, Vec<Output>) {
    // Each message starts with its binary tag and length: look for the
    // trace lines inside them.
    let text = String::from_utf8_lossy(capture);
    let items = text
        .split("@ build-started ")
        .skip(1)
        .map(|l| l.split(' ').next().unwrap().to_string())
        .map(|derivation| Item {
            outputs: vec![derivation.trim_end_matches(".drv").to_string()],
            inputs: Vec::new(),
            derivation,
        })
        .collect();
    let limits = Limits::default();
    let mut batch = Batch::new(items, build_options(false, false, true, limits), limits);
    let mut bytes = Vec::new();
    for w in [WORKER_MAGIC_2, PROTOCOL_VERSION, tag::LAST, tag::LAST] {
        put_u64(&mut bytes, w);
    }
    bytes.extend_from_slice(capture);
    let (mut updates, mut output) = (Vec::new(), Vec::<Output>::new());
    for piece in bytes.chunks(chunk) {
        batch.receive(piece, "test").unwrap();
        updates.extend(batch.take_updates());
        for o in batch.take_output() {
            match output.iter_mut().find(|x| x.derivation == o.derivation) {
                Some(x) => x.bytes.extend_from_slice(&o.bytes),
                None => output.push(o),
            }
        }
    }
    assert!(batch.is_done());
    (updates, output)
}

/// (name without hash and nonce, host) of each `Update::Remote`.
fn remotes(updates: &[Update]) -> Vec<(String, String)> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Remote { derivation, host } => {
                Some((derivation[44..51].to_string(), host.clone()))
            }
            _ => None,
        })
        .collect()
}

fn output_of<'a>(output: &'a [Output], name: &str) -> &'a [u8] {
    output
        .iter()
        .find(|o| o.derivation.contains(name))
        .map_or(&[][..], |o| &o.bytes)
}

#[test]
fn offloaded_builds_name_their_machine_and_their_output_is_theirs() {
    // Real bytes: `guix offload` prints `@ build-remote` on its stderr,
    // which the daemon frames as that build's output.
    let capture = include_bytes!("../../fixtures/trace/offload-mux-1.5.0.bin");
    for chunk in [1, 3, 7, 64, 4096, usize::MAX] {
        let (updates, output) = replay(capture, chunk.min(capture.len() + 64));
        assert_eq!(
            remotes(&updates),
            [
                ("cap-fai".to_string(), "10.231.1.2".to_string()),
                ("cap-ok-".to_string(), "10.231.2.2".to_string())
            ],
            "chunk {chunk}"
        );
        let ok = String::from_utf8_lossy(output_of(&output, "cap-ok")).into_owned();
        assert!(ok.contains("line 1\nline 2\nline 3\nno newline"), "{ok}");
        assert!(ok.contains("retrieving 1 store item from '10.231.2.2'"));
        let fail = String::from_utf8_lossy(output_of(&output, "cap-fail")).into_owned();
        assert!(fail.contains("about to fail\n") && !fail.contains("line 1"));
        // Statuses are unchanged by all this.
        let finished: Vec<crate::db::BuildStatus> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Finished { status, .. } => Some(*status),
                _ => None,
            })
            .collect();
        assert_eq!(finished, [status::FAILED, status::SUCCEEDED]);
    }
}

#[test]
fn local_builds_have_their_output_and_no_machine() {
    let capture = include_bytes!("../../fixtures/trace/local-mux-1.5.0.bin");
    let (updates, output) = replay(capture, 5);
    assert!(remotes(&updates).is_empty());
    assert_eq!(output_of(&output, "cap-fail"), b"about to fail\n");
    assert_eq!(
        output_of(&output, "cap-ok"),
        b"line 1\nline 2\nline 3\nno newline"
    );
}

#[test]
fn without_frames_build_remote_is_a_line_of_its_own() {
    // Captured without `multiplexed-build-output`.
    let capture = include_bytes!("../../fixtures/trace/offload-plain-1.5.0.bin");
    let (updates, output) = replay(capture, 11);
    assert_eq!(
        remotes(&updates),
        [
            ("cap-fai".to_string(), "10.231.1.2".to_string()),
            ("cap-ok-".to_string(), "10.231.1.2".to_string())
        ]
    );
    assert!(output.is_empty());
}

#[test]
fn build_remote_is_found_across_frames_and_not_in_long_lines() {
    let drv = format!("/gnu/store/{}-x.drv", "a".repeat(32));
    let line = format!("@ build-remote {drv} m1\n");
    let mut partial = Vec::new();
    let (a, b) = line.split_at(20);
    assert!(frame_remote(&mut partial, format!("offloading...\n{a}").as_bytes()).is_empty());
    assert_eq!(
        frame_remote(&mut partial, b.as_bytes()),
        [trace::Event::BuildRemote {
            drv: drv.clone(),
            host: "m1".into()
        }]
    );
    assert!(partial.is_empty());
    // A builder line longer than the hook's is dropped whole, its tail
    // included, even when the tail looks like the hook's line.
    let long = "x".repeat(HOOK_LINE_MAX + 1);
    assert!(frame_remote(&mut partial, long.as_bytes()).is_empty());
    assert!(frame_remote(&mut partial, line.as_bytes()).is_empty());
    assert!(partial.is_empty());
    assert_eq!(frame_remote(&mut partial, line.as_bytes()).len(), 1);
}

/// A connection carries one batch after another: the second sends no
/// set-options (the daemon's worker keeps those of the first) and is
/// settled by its own events alone.
#[test]
fn a_batch_on_a_used_connection_builds_with_the_options_in_effect() {
    let drv = |n: &str| format!("/gnu/store/{}-{n}.drv", "a".repeat(32));
    let item = |n: &str| Item {
        derivation: drv(n),
        outputs: vec![drv(n).trim_end_matches(".drv").to_string()],
        inputs: Vec::new(),
    };
    // The daemon's answer to build-paths: trace lines, then success.
    let built = |n: &str| {
        let mut out = Vec::new();
        let log = format!(
            "@ build-started {d} - x86_64-linux /var/log/guix/drvs/aa/{n}.drv.gz 42\n\
             @ build-succeeded {d} -\n",
            d = drv(n)
        );
        for line in log.split_inclusive('\n') {
            put_u64(&mut out, tag::NEXT);
            put_bytes(&mut out, line.as_bytes());
        }
        put_u64(&mut out, tag::LAST);
        put_u64(&mut out, 1);
        out
    };
    let finished = |b: &mut Batch| -> Vec<(String, crate::db::BuildStatus)> {
        b.take_updates()
            .into_iter()
            .filter_map(|u| match u {
                Update::Finished {
                    derivation, status, ..
                } => Some((derivation, status)),
                _ => None,
            })
            .collect()
    };
    let l = limits(Some(60), None);
    let mut first = Batch::new(vec![item("one")], build_options(false, false, false, l), l);
    let mut hello = Vec::new();
    for w in [WORKER_MAGIC_2, PROTOCOL_VERSION, tag::LAST, tag::LAST] {
        put_u64(&mut hello, w);
    }
    first.receive(&hello, "test").unwrap();
    first.receive(&built("one"), "test").unwrap();
    assert!(first.is_done());
    assert_eq!(finished(&mut first), [(drv("one"), status::SUCCEEDED)]);

    let mut client = first.into_client();
    let n = client.pending_output().len();
    client.consume_output(n);
    let mut second = Batch::on(client, vec![item("two")], None, l);
    let mut op = Vec::new();
    put_u64(&mut op, crate::wire::op::BUILD_PATHS);
    assert!(second.client.pending_output().starts_with(&op));
    second.receive(&built("two"), "test").unwrap();
    assert!(second.is_done());
    assert_eq!(finished(&mut second), [(drv("two"), status::SUCCEEDED)]);
    assert_eq!(second.daemon_error(), None);
}

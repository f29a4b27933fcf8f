//! The policies of record specs: channels, checkouts, `period`,
//! `is-active?`, which Guix evaluates, authentication failures.

use super::*;
use crate::spec::{Parsed, read_spec_text};

const A1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
const A2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2";
const B1: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1";
const B2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";

/// A record spec named "hello" (the world's database knows that name)
/// with `fields` after its name.
fn record(fields: &str) -> Specification {
    let text = format!("(list (specification (name \"hello\") {fields}))");
    match read_spec_text("t.scm", &text) {
        Ok(Parsed::Specs(mut s)) => s.remove(0),
        other => panic!("{other:?}"),
    }
}

const TWO: &str = r#"(build '(channels a))
   (channels (list (channel (name 'a) (url "file:///a"))
                   (channel (name 'b) (url "file:///b"))))"#;

fn channels(lines: &[(&str, &str)]) -> Input {
    let stdout: String = lines
        .iter()
        .map(|(name, commit)| format!("channel\t{name}\t{commit}\t/cache/hello/{name}\n"))
        .collect();
    Input::FetchExited {
        ok: true,
        stdout,
        reason: String::new(),
    }
}

fn checkouts(w: &World) -> Vec<(i64, String, String)> {
    let mut stmt = w
        .db
        .connection()
        .prepare("SELECT evaluation, channel, revision FROM Checkouts ORDER BY evaluation, channel")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Poll, fetch `commits`, evaluate nothing, exit 0.
fn evaluate(w: &mut World, c: &mut Cycle, commits: &[(&str, &str)]) -> Vec<Command> {
    let mut cmds = w.feed(c, Input::Tick);
    cmds.extend(w.feed(c, channels(commits)));
    cmds.extend(w.feed(c, output(&["(done 0)"])));
    cmds.extend(w.feed(c, exited(true)));
    cmds
}

#[test]
fn a_new_commit_in_either_channel_makes_an_evaluation_with_both_checkouts() {
    let mut w = World::new();
    let mut c = w.cycle_of(record(TWO), false);
    let cmds = evaluate(&mut w, &mut c, &[("a", A1), ("b", B1)]);
    let Some(Command::SpawnEvaluator {
        arguments,
        time_machine,
    }) = cmds
        .iter()
        .find(|c| matches!(c, Command::SpawnEvaluator { .. }))
    else {
        panic!("{cmds:?}")
    };
    // No guix channel: the installed Guix evaluates, with the checkouts.
    assert_eq!(*time_machine, None);
    assert!(
        arguments.contains("(proc . build-type-jobs)"),
        "{arguments}"
    );
    assert!(arguments.contains("(build . (channels a))"), "{arguments}");
    assert!(
        arguments.contains("(checkouts (a . \"/cache/hello/a\") (b . \"/cache/hello/b\"))"),
        "{arguments}"
    );
    assert_eq!(w.db.stamp("hello").unwrap(), Some(format!("{A1} {B1}")));
    // Same commits: nothing new.
    w.at(60).feed(&mut c, Input::Tick);
    w.feed(&mut c, channels(&[("a", A1), ("b", B1)]));
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 1);
    // A new commit in b, then in a.
    w.at(120);
    evaluate(&mut w, &mut c, &[("a", A1), ("b", B2)]);
    w.at(180);
    evaluate(&mut w, &mut c, &[("a", A2), ("b", B2)]);
    assert_eq!(
        checkouts(&w),
        [
            (1, "a".into(), A1.into()),
            (1, "b".into(), B1.into()),
            (2, "a".into(), A1.into()),
            (2, "b".into(), B2.into()),
            (3, "a".into(), A2.into()),
            (3, "b".into(), B2.into()),
        ]
    );
    assert_eq!(
        w.evaluation_rows()
            .iter()
            .map(|r| r.0.clone())
            .collect::<Vec<_>>(),
        [A1, A1, A2]
    );
}

#[test]
fn a_channel_that_cannot_be_fetched_ends_the_round_without_an_evaluation() {
    let mut w = World::new();
    let mut c = w.cycle_of(record(TWO), true);
    w.feed(&mut c, Input::Tick);
    let stdout =
        format!("channel\ta\t{A1}\t/cache/hello/a\nfailed\tb\tfile:///b: no such repository\n");
    w.feed(
        &mut c,
        Input::FetchExited {
            ok: false,
            stdout,
            reason: "exited with status 1".into(),
        },
    );
    assert_eq!(c.state().name(), "Idle");
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 0);
    let failure = c.failure().unwrap();
    assert!(
        failure.contains("channel \"b\"") && failure.contains("no such repository"),
        "{failure}"
    );
}

#[test]
fn the_guix_channel_is_left_to_the_time_machine() {
    let mut w = World::new();
    let spec = record(
        "(build 'hello) (channels (cons (channel (name 'a) (url \"file:///a\")) %default-channels))",
    );
    let mut c = w.cycle_of(spec, false);
    w.feed(&mut c, Input::Tick);
    let stdout = format!(
        "channel\ta\t{A1}\t/cache/hello/a\nfailed\tguix\thttps://git.guix.gnu.org/guix.git: host not found\n"
    );
    let cmds = w.feed(
        &mut c,
        Input::FetchExited {
            ok: false,
            stdout,
            reason: "exited with status 1".into(),
        },
    );
    let [
        Command::SpawnEvaluator {
            time_machine: Some(channels),
            ..
        },
    ] = &cmds[..]
    else {
        panic!("{cmds:?}")
    };
    assert!(
        channels.contains(&format!(
            "(channel (name 'a) (url \"file:///a\") (branch \"master\") (commit \"{A1}\"))"
        )),
        "{channels}"
    );
    assert!(channels.contains("(channel (name 'guix) (url \"https://git.guix.gnu.org/guix.git\") (branch \"master\") (introduction"), "{channels}");
    // The time-machine fails: a failed evaluation with its message.
    w.feed(
        &mut c,
        Input::EvaluatorExited {
            ok: false,
            reason: "exited with status 1".into(),
            error_line: None,
        },
    );
    let rows = w.evaluation_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, 1);
    assert_eq!(
        checkouts(&w),
        [
            (1, "a".into(), A1.into()),
            (1, "guix".into(), String::new())
        ]
    );
}

#[test]
fn a_refused_commit_is_a_failed_evaluation_with_the_reason() {
    let mut w = World::new();
    let mut c = w.cycle_of(record(TWO), false);
    w.feed(&mut c, Input::Tick);
    let stdout = format!(
        "channel\ta\t{A1}\t/cache/hello/a\nunauthenticated\tb\t{B1}\t/cache/hello/b\tguix git: error: commit {B1} not signed by an authorized key\n"
    );
    let cmds = w.feed(
        &mut c,
        Input::FetchExited {
            ok: true,
            stdout,
            reason: String::new(),
        },
    );
    assert!(cmds.is_empty(), "no evaluator: {cmds:?}");
    assert_eq!(c.state().name(), "Idle");
    let rows = w.evaluation_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, 1);
    let error = rows[0].2.clone().unwrap();
    assert!(
        error.contains("channel \"b\"") && error.contains("not signed by an authorized key"),
        "{error}"
    );
    assert_eq!(checkouts(&w).len(), 2);
    // The stamp moved: the same commits are not tried again.
    w.at(60).feed(&mut c, Input::Tick);
    let stdout =
        format!("channel\ta\t{A1}\t/cache/hello/a\nunauthenticated\tb\t{B1}\t/cache/hello/b\tno\n");
    w.feed(
        &mut c,
        Input::FetchExited {
            ok: true,
            stdout,
            reason: String::new(),
        },
    );
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 1);
}

#[test]
fn period_spaces_evaluations_and_zero_evaluates_each_new_commit() {
    let mut w = World::new();
    let one = "(channels (list (channel (name 'a) (url \"file:///a\"))))";
    let mut c = w.cycle_of(record(&format!("(period 300) {one}")), false);
    evaluate(&mut w, &mut c, &[("a", A1)]);
    // The poll interval is 60 s, but the next poll waits for the period.
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(300)));
    assert!(w.at(60).feed(&mut c, Input::Tick).is_empty());
    assert!(w.at(299).feed(&mut c, Input::Tick).is_empty());
    assert_eq!(c.state().name(), "Idle");
    w.at(300);
    evaluate(&mut w, &mut c, &[("a", A2)]);
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 2);
    // A round without a new commit does not wait a period.
    w.at(600).feed(&mut c, Input::Tick);
    w.feed(&mut c, channels(&[("a", A2)]));
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(660)));

    let mut w = World::new();
    let mut c = w.cycle_of(record(one), false);
    evaluate(&mut w, &mut c, &[("a", A1)]);
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(60)));
    w.at(60);
    evaluate(&mut w, &mut c, &[("a", A2)]);
    assert_eq!(w.count("SELECT COUNT(*) FROM Evaluations"), 2);
}

#[test]
fn an_inactive_spec_is_never_polled_and_resumes_when_switched_on() {
    let mut w = World::new();
    let one = "(channels (list (channel (name 'a) (url \"file:///a\"))))";
    let mut c = w.cycle_of(record(&format!("(is-active? #f) {one}")), false);
    assert_eq!(c.poll_at(), None);
    assert!(w.feed(&mut c, Input::Tick).is_empty());
    assert!(w.at(3600).feed(&mut c, Input::Tick).is_empty());
    assert_eq!(c.state().name(), "Idle");
    c.replace_spec(record(one));
    assert_eq!(c.poll_at(), Some(w.start));
    let cmds = w.feed(&mut c, Input::Tick);
    assert!(matches!(cmds[..], [Command::SpawnFetch(_)]), "{cmds:?}");
    // One-shot: an inactive spec has no work, so it is finished at once.
    let mut c = w.cycle_of(record(&format!("(is-active? #f) {one}")), true);
    assert!(w.feed(&mut c, Input::Tick).is_empty());
    assert!(c.is_finished());
}

/// A fetched guix channel is pinned for the time-machine, and its tree
/// stays off the load path (the time-machine's Guix has its modules).
#[test]
fn a_fetched_guix_channel_is_pinned_and_kept_off_the_load_path() {
    let mut w = World::new();
    let spec = record(
        "(build 'hello) (channels (cons (channel (name 'a) (url \"file:///a\")) %default-channels))",
    );
    let mut c = w.cycle_of(spec, false);
    w.feed(&mut c, Input::Tick);
    let cmds = w.feed(&mut c, channels(&[("a", A1), ("guix", B1)]));
    let [
        Command::SpawnEvaluator {
            arguments,
            time_machine: Some(file),
        },
    ] = &cmds[..]
    else {
        panic!("{cmds:?}")
    };
    assert!(
        file.contains(&format!(
            "(branch \"master\") (commit \"{B1}\") (introduction"
        )),
        "{file}"
    );
    assert!(
        arguments.contains("(checkouts (a . \"/cache/hello/a\"))"),
        "{arguments}"
    );
    assert!(
        arguments.contains(&format!("(commit \"{B1}\") (name guix)")),
        "{arguments}"
    );
}

/// After a restart, the period counts from the latest evaluation in the
/// database, not from the start of the process.
#[test]
fn the_period_counts_from_the_last_evaluation_in_the_database() {
    let mut w = World::new();
    let one = "(channels (list (channel (name 'a) (url \"file:///a\")))) (period 300)";
    // An evaluation 100 s before this cycle starts (unix time of `start`
    // is 1_700_000_000 in the world's clock).
    w.db.begin_evaluation("hello", A1, 1_700_000_000 - 100)
        .unwrap();
    let mut c = w.cycle_of(record(one), false);
    assert!(w.feed(&mut c, Input::Tick).is_empty());
    assert_eq!(c.poll_at(), Some(w.start + Duration::from_secs(200)));
    let cmds = w.at(200).feed(&mut c, Input::Tick);
    assert!(matches!(cmds[..], [Command::SpawnFetch(_)]), "{cmds:?}");
}

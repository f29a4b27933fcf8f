//! Weather and notifications against the real daemon (Guix 1.5.0): a
//! job's weather over four evaluations in the database and the API, the
//! events a notification command receives (a script appending its
//! standard input to a file), a command that hangs (killed at its time
//! limit, retried, delaying no build), a failed evaluation, the feed,
//! `/metrics`, and the queue surviving a restart.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn q(setup: &Setup, sql: &str) -> Vec<Vec<i64>> {
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    query_rows(&conn, sql)
}

/// (evaluation, status, weather) of spec `spec`'s `flip` builds, by
/// evaluation.
fn flips(setup: &Setup, spec: &str) -> Vec<(i64, i64, Option<i64>)> {
    let conn = setup.db();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT b.evaluation, b.status, b.weather FROM Builds b
             JOIN Evaluations e ON e.id = b.evaluation
             WHERE e.specification = ?1 ORDER BY b.evaluation",
        )
        .unwrap();
    stmt.query_map([spec], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn evaluations(setup: &Setup, spec: &str) -> i64 {
    q(
        setup,
        &format!("SELECT COUNT(*) FROM Evaluations WHERE specification = '{spec}' AND status >= 0"),
    )[0][0]
}

/// The events a file of JSON lines holds.
fn events_in(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn set_mode(repo: &Repo, mode: &str) -> String {
    std::fs::write(repo.dir.join("mode"), format!("{mode}\n")).unwrap();
    repo.commit(mode)
}

/// Waits until both specs have evaluated `n` times and built what they
/// evaluated.
fn wait_for_evaluation(setup: &Setup, n: i64, running: &Running) {
    wait_until(Duration::from_secs(240), &format!("evaluation {n}"), || {
        ["a", "hang"].iter().all(|s| {
            evaluations(setup, s) >= n
                && q(
                    setup,
                    &format!(
                        "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
                         WHERE e.specification = '{s}' AND b.status < 0"
                    ),
                )[0][0]
                    == 0
        }) || running.log_text().contains("panicked")
    });
}

/// The notification command: spec `a`'s events are appended to
/// `events`; spec `hang`'s are appended to `hung` and then the command
/// hangs, so that cuirass must kill it.
fn notify_script(dir: &Path, events: &Path, hung: &Path) -> PathBuf {
    let script = dir.join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "event=$(cat)\n\
             case \"$CUIRASS_EVENT_SPECIFICATION\" in\n\
             hang) printf '%s\\n' \"$event\" >> {hung}; exec sleep 1000;;\n\
             *) printf '%s\\n' \"$event\" >> {events};;\n\
             esac\n",
            hung = hung.display(),
            events = events.display()
        ),
    )
    .unwrap();
    script
}

#[test]
fn weather_changes_and_failed_evaluations_reach_the_command_and_the_feed_and_a_hanging_command_delays_nothing()
 {
    require_daemon();
    let setup = Setup::new("notify");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/weather-jobs.scm")]);
    let first = set_mode(&repo, "ok");
    let spec = setup.write_spec(&format!(
        "(list {} {})\n",
        spec_entry(
            "a",
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\")")
        ),
        spec_entry(
            "hang",
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}-hang\")")
        ),
    ));
    let events = setup.tmp.path().join("events.jsonl");
    let hung = setup.tmp.path().join("hung.jsonl");
    let script = notify_script(setup.tmp.path(), &events, &hung);
    let command = format!("/bin/sh {}", script.display());
    let base = "https://ci.example.org/cuirass";
    let args = [
        "-S",
        spec.to_str().unwrap(),
        "--interval",
        "2",
        "--notify-command",
        &command,
        "--notify-timeout",
        "2",
        "--notify-retry",
        "1",
        "--notify-jobs",
        "3",
        "--base-url",
        base,
    ];
    let running = Running::start(&setup, &args, &[]);
    let port = running.port();
    wait_for_evaluation(&setup, 1, &running);

    // 2: flip fails (a new failure), 3: fixed, 4: still succeeding.
    let mut commits = vec![first];
    for (n, mode) in [(2, "fail"), (3, "ok"), (4, "ok")] {
        if n > 2 {
            // From here on `hang`'s command for its new failure hangs.
            wait_until(Duration::from_secs(30), "a hanging command", || {
                !events_in(&hung).is_empty()
            });
        }
        let started = Instant::now();
        commits.push(set_mode(&repo, mode));
        wait_for_evaluation(&setup, n, &running);
        // Hanging notification commands of `hang` run meanwhile: a poll,
        // an evaluation and a build still take seconds, and the HTTP
        // server answers at once.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "evaluation {n}: {took:?}");
        let asked = Instant::now();
        assert_eq!(http_status(port, "/api/queue?nr=1"), Some(200));
        assert!(asked.elapsed() < Duration::from_millis(500));
    }
    let a = flips(&setup, "a");
    assert_eq!(
        a.iter().map(|&(_, st, w)| (st, w)).collect::<Vec<_>>(),
        [(0, Some(-1)), (1, Some(1)), (0, Some(0)), (0, Some(2))],
        "flip's status and weather by evaluation"
    );
    // The API serves the kept weather.
    let api: Vec<i64> = get_json(port, "/api/latestbuilds?nr=10&jobset=a")
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weather"].as_i64().unwrap())
        .collect();
    assert_eq!(api, [2, 0, 1, -1], "newest first");

    // 5: the evaluation fails.
    commits.push(set_mode(&repo, "broken"));
    wait_until(Duration::from_secs(240), "the failed evaluations", || {
        q(&setup, "SELECT COUNT(*) FROM Evaluations WHERE status = 1")[0][0] == 2
    });
    wait_until(Duration::from_secs(30), "spec a's three events", || {
        events_in(&events).len() >= 3
    });
    let got = events_in(&events);
    let kinds: Vec<&str> = got.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["new-failure", "fixed", "evaluation-failed"],
        "{got:?}"
    );
    assert!(got.iter().all(|e| e["specification"] == "a"));
    let (failed, fixed, broken) = (&got[0], &got[1], &got[2]);
    let build_of_eval = |k: usize| a[k].0;
    assert_eq!(failed["evaluation"], build_of_eval(1));
    assert_eq!(failed["commit"], commits[1].as_str());
    assert_eq!(failed["job"], "flip");
    assert_eq!(
        (&failed["status"], &failed["weather"]),
        (&1.into(), &"new-failure".into())
    );
    assert!(
        failed["derivation"]
            .as_str()
            .unwrap()
            .ends_with(&format!("-flip-{nonce}.drv"))
    );
    let failed_build: i64 = q(
        &setup,
        &format!(
            "SELECT b.id FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
             WHERE e.specification = 'a' AND b.evaluation = {}",
            build_of_eval(1)
        ),
    )[0][0];
    assert_eq!(failed["build"], failed_build);
    assert_eq!(
        failed["url"],
        format!("{base}/build/{failed_build}/details")
    );
    assert_eq!(
        (&fixed["status"], &fixed["weather"]),
        (&0.into(), &"new-success".into())
    );
    assert_eq!(fixed["commit"], commits[2].as_str());
    assert_eq!(broken["build"], Value::Null);
    assert_eq!(broken["commit"], commits[4].as_str());
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("broken on purpose"),
        "{broken}"
    );
    assert!(
        broken["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}/eval/"))
    );
    assert_eq!(broken["notifications"], serde_json::json!([]));

    // `hang`'s command was killed at its limit and tried again.
    wait_until(Duration::from_secs(60), "a retried hanging command", || {
        running
            .log_text()
            .contains("attempt 2 failed: timed out after 2 s")
    });
    let hung_events = events_in(&hung);
    let first_id = &hung_events[0]["id"];
    assert!(
        hung_events.iter().filter(|e| &e["id"] == first_id).count() >= 2,
        "{hung_events:?}"
    );
    assert!(
        hung_events.iter().all(|e| e["specification"] == "hang"),
        "{hung_events:?}"
    );
    // Spec a's events were delivered once each, hang's are still queued.
    assert_eq!(
        q(
            &setup,
            "SELECT delivery, attempts FROM Events WHERE specification = 'a' ORDER BY id"
        ),
        [[1, 1], [1, 1], [1, 1]]
    );
    assert!(
        q(
            &setup,
            "SELECT COUNT(*) FROM Events WHERE specification = 'hang' AND delivery = 0 AND attempts >= 1"
        )[0][0]
            >= 1
    );

    // The feed lists every event, newest first, with absolute links.
    let (code, head, body) = get_raw(port, "/events/rss");
    let xml = String::from_utf8(body).unwrap();
    assert_eq!(code, 200);
    assert!(head.contains("application/atom+xml"), "{head}");
    assert_eq!(xml.matches("<entry>").count(), 6, "{xml}");
    let first_entry = xml.split("<entry>").nth(1).unwrap();
    assert!(first_entry.contains("evaluation") && first_entry.contains("failed"));
    assert!(xml.contains(&format!(
        "<link href=\"{base}/build/{failed_build}/details\"/>"
    )));
    // The dashboard's filter, and /metrics.
    let (_, _, page) = get_raw(
        port,
        &format!("/eval/{}?status=newly-failed", build_of_eval(1)),
    );
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("newly-failed (1)"), "{page}");
    let (_, _, metrics) = get_raw(port, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "cuirass_build_weather_total{spec=\"a\",weather=\"new-failure\"} 1",
        "cuirass_build_weather_total{spec=\"a\",weather=\"new-success\"} 1",
        "cuirass_build_weather_total{spec=\"a\",weather=\"still-succeeding\"} 1",
        "cuirass_events{delivery=\"sent\"} 3",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }

    // A restart with a command that works delivers hang's queued events,
    // their earlier attempts counted (a running command is killed
    // without counting its attempt).
    running.signal(libc::SIGTERM);
    let mut running = running;
    assert!(running.wait_for_exit(Duration::from_secs(30)).is_some());
    let hang_attempts = "SELECT attempts FROM Events WHERE specification = 'hang' ORDER BY id";
    let before = q(&setup, hang_attempts);
    let all = setup.tmp.path().join("all.jsonl");
    let command = format!("cat >> {}", all.display());
    let mut args = args.to_vec();
    args[5] = &command;
    let running = Running::start(&setup, &args, &[]);
    wait_until(Duration::from_secs(60), "hang's events delivered", || {
        q(&setup, "SELECT COUNT(*) FROM Events WHERE delivery <> 1")[0][0] == 0
    });
    let mut late = events_in(&all);
    assert_eq!(late.len(), 3, "{late:?}");
    // Sent at once, three commands side by side: in any order.
    late.sort_by_key(|e| e["id"].as_i64());
    assert!(late.iter().all(|e| e["specification"] == "hang"));
    let kinds: Vec<&str> = late.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["new-failure", "fixed", "evaluation-failed"]);
    let after: Vec<i64> = q(&setup, hang_attempts).iter().map(|r| r[0]).collect();
    let expected: Vec<i64> = before.iter().map(|r| r[0] + 1).collect();
    assert_eq!(after, expected);
    drop(running);
    assert_sound(&setup.db);
}

/// A one-shot run sends its events before it exits.
#[test]
fn a_one_shot_run_sends_the_event_of_its_failed_evaluation_before_it_exits() {
    require_daemon();
    let setup = Setup::new("notify-once");
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/weather-jobs.scm")]);
    let commit = set_mode(&repo, "broken");
    let spec = setup.write_spec(&spec_text(
        "once",
        &repo.url(),
        "ci.scm",
        "cuirass-jobs",
        &nonce(),
    ));
    let events = setup.tmp.path().join("events.jsonl");
    let command = format!("sleep 1; cat >> {}", events.display());
    let out = setup.one_shot(&["-S", spec.to_str().unwrap(), "--notify-command", &command]);
    assert!(out.status.success());
    let got = events_in(&events);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (&got[0]["kind"], &got[0]["commit"]),
        (&"evaluation-failed".into(), &commit.as_str().into())
    );
    assert!(
        got[0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://localhost:8080/eval/")
    );
    assert_eq!(q(&setup, "SELECT delivery, attempts FROM Events"), [[1, 1]]);
}

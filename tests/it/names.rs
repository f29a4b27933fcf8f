//! Names in log lines and spec files: a name that would break a path
//! segment or a log line is refused where the file says it; names are
//! quoted in log lines when they are not one plain word; every line says
//! which part of cuirass it comes from.

use crate::support::*;

/// The targets log lines may have: one per part of cuirass.
const PARTS: &[&str] = &[
    "cuirass",
    "cuirass::fetch",
    "cuirass::compile",
    "cuirass::evaluation",
    "cuirass::building",
    "cuirass::http",
    "cuirass::spec",
    "cuirass::cycle",
    "cuirass::db",
    "cuirass::event_loop",
    "cuirass::gcroots",
    "cuirass::retention",
];

/// `[2026-01-01T00:00:00Z INFO  cuirass::building] text` → (target, text).
fn target_and_text(line: &str) -> (&str, &str) {
    let (head, text) = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .unwrap_or_else(|| panic!("not a log line: {line:?}"));
    (head.rsplit(' ').next().unwrap(), text)
}

#[test]
fn a_spec_name_with_a_control_character_is_refused_with_file_and_line() {
    let setup = Setup::new("badname");
    for (name, shown) in [("a\\nb", r"'\n'"), ("x\\ty", r"'\t'"), ("a/b", "'/'")] {
        let spec = setup.write_spec(&format!(
            "(list\n `((#:name . \"{name}\")\n   (#:url . \"file:///x\")\n   (#:file . \"f\")\n   (#:proc . p)))\n"
        ));
        let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let place = format!("{}:2:14: invalid specification name", spec.display());
        assert!(stderr.contains(&place), "{name}: {stderr}");
        assert!(stderr.contains(shown), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!setup.db.exists(), "a broken spec file wrote the database");
    }
}

/// The first batch is submitted while the evaluator still runs (the last
/// job's thunk sleeps): its build events are `building`'s, not the
/// evaluator's.  The spec's name has a space, so it is quoted.
#[test]
fn build_events_during_an_evaluation_are_logged_as_building_with_names_quoted() {
    require_daemon();
    let setup = Setup::new("labels");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let name = format!("lib+ {nonce}");
    let spec = setup.write_spec(&format!(
        "(list {})\n",
        spec_entry(
            &name,
            &repo.url(),
            "ci.scm",
            "cuirass-jobs",
            &format!("(nonce . \"{nonce}\") (delay . 4)")
        )
    ));
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<(&str, &str)> = stderr.lines().map(target_and_text).collect();
    for (target, text) in &lines {
        assert!(PARTS.contains(target), "{target}: {text}");
        assert!(!text.contains("spec=lib+"), "name not quoted: {text}");
    }
    let spec_field = format!("spec=\"lib+ {nonce}\"");
    let started = lines
        .iter()
        .position(|(_, t)| t.contains(" started /gnu/store/"))
        .expect("a build started");
    let evaluated = lines
        .iter()
        .position(|(_, t)| t.contains("evaluation 1 of") && t.contains(" done: "))
        .expect("the evaluation done");
    assert!(
        started < evaluated,
        "no build started during the evaluation"
    );
    for (target, text) in &lines {
        if text.contains(" started /gnu/store/") || text.contains(" succeeded /gnu/store/") {
            assert_eq!(*target, "cuirass::building", "{text}");
            assert!(
                text.starts_with(&format!("{spec_field} builds: ")),
                "{text}"
            );
        }
        if text.contains("new commit") {
            assert_eq!(*target, "cuirass::fetch", "{text}");
        }
        if text.contains("evaluation 1 of") {
            assert_eq!(*target, "cuirass::evaluation", "{text}");
        }
    }
    assert_sound(&setup.db);
}

//! Hostile evaluator output: every kind of broken output is a recorded
//! evaluation failure with its reason, never a crash and never an
//! evaluation left half-registered, and the next good commit of the same
//! specification is evaluated by the real evaluator and built by the real
//! daemon.

use crate::support::*;

/// (case, fake evaluator body, what the recorded error must say).  `$DRV`
/// and `$DRV2` are real `.drv` files from the spec's first evaluation.
const CASES: &[(&str, &str, &str)] = &[
    (
        "truncated",
        r#"printf '(job (name . "a") (derivation . "%s' "$DRV""#,
        "unreadable output",
    ),
    (
        "no-done",
        r#"printf '(job (name . "a") (derivation . "%s"))\n' "$DRV""#,
        "without (done N)",
    ),
    (
        "done-miscounted",
        r#"printf '(job (name . "a") (derivation . "%s"))\n(done 7)\n' "$DRV""#,
        "announced 7 jobs but printed 1",
    ),
    (
        "after-done",
        r#"printf '(done 0)\n(done 0)\n'"#,
        "after (done 0)",
    ),
    ("non-utf8", r#"printf '\377\376(done 0)\n'"#, "not UTF-8"),
    (
        "not-sexp",
        "echo 'Backtrace: In ice-9/boot-9.scm:'; echo '(done 0)'",
        "expected one S-expression",
    ),
    ("not-a-list", "echo '\"just a string\"'", "not a list"),
    (
        "missing-field",
        r#"echo '(job (name . "a"))'"#,
        "missing field 'derivation'",
    ),
    (
        "missing-drv",
        r#"echo '(job (name . "a") (derivation . "/gnu/store/00000000000000000000000000000000-gone.drv"))'"#,
        "cannot read",
    ),
    (
        "not-a-drv",
        r#"printf '(job (name . "a") (derivation . "%s"))\n' "${DRV%.drv}""#,
        "not a store .drv",
    ),
    (
        "drv-garbage",
        // A .drv path outside the store is refused before it is read.
        r#"echo garbage > "$TMPDIR/x.drv"; printf '(job (name . "a") (derivation . "%s"))\n' "$TMPDIR/x.drv""#,
        "not a store .drv",
    ),
    (
        "duplicate-name",
        r#"printf '(job (name . "a") (derivation . "%s"))\n(job (name . "a") (derivation . "%s"))\n(done 2)\n' "$DRV" "$DRV2""#,
        "'a' appears twice",
    ),
    (
        "huge-line",
        // 24 MB without a newline, then a valid end: the line is refused
        // at 1 MiB, so memory stays bounded.
        "head -c 24000000 /dev/zero | tr '\\0' a; echo; echo '(done 0)'",
        "over 1048576 bytes",
    ),
    (
        "flood",
        // Tens of megabytes of junk lines: the first fails the evaluation
        // and the evaluator is killed rather than read to the end.
        "yes 'junk junk junk' | head -c 40000000; echo '(done 0)'",
        "expected one S-expression",
    ),
];

fn error_of(setup: &Setup, eval: i64) -> (i64, String) {
    setup
        .db()
        .query_row(
            "SELECT status, COALESCE(error, '') FROM Evaluations WHERE id = ?1",
            [eval],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn broken_evaluator_output_is_a_recorded_failure_and_the_next_commit_builds() {
    require_daemon();
    let setup = Setup::new("hostile");
    let nonce = nonce();
    let repo = Repo::new(setup.tmp.path(), &[("ci.scm", "jobs/keyword-jobs.scm")]);
    let spec = setup.write_spec(&spec_text(
        "h",
        &repo.url(),
        "ci.scm",
        "cuirass-jobs",
        &nonce,
    ));
    // A first, good evaluation gives real derivations to put in bad output.
    let out = setup.one_shot(&["-S", spec.to_str().unwrap()]);
    assert!(out.status.success());
    let drvs: Vec<Vec<String>> = query_rows(
        &setup.db(),
        "SELECT derivation FROM Builds ORDER BY id LIMIT 2",
    );
    let (drv, drv2) = (&drvs[0][0], &drvs[1][0]);
    for (case, body, needle) in CASES {
        std::fs::write(repo.dir.join("case"), case).unwrap();
        repo.commit(case);
        let script = format!(
            "DRV='{drv}'; DRV2='{drv2}'; TMPDIR='{}'\n{body}",
            setup.tmp.path().display()
        );
        let evaluator = fake_evaluator(setup.tmp.path(), case, &script);
        let out = setup.one_shot(&["--evaluator", &evaluator]);
        assert!(out.status.success(), "{case}: cuirass failed");
        let eval: i64 = count(&setup.db(), "SELECT MAX(id) FROM Evaluations");
        let (status, error) = error_of(&setup, eval);
        assert_eq!(status, 1, "{case}: evaluation not failed ({error})");
        assert!(error.contains(needle), "{case}: {error:?} lacks {needle:?}");
        assert_sound(&setup.db);
        // Jobs registered before the bad line are canceled, not left queued.
        let queued = count(
            &setup.db(),
            &format!("SELECT COUNT(*) FROM Builds WHERE evaluation = {eval} AND status < 0"),
        );
        assert_eq!(queued, 0, "{case}: builds of a failed evaluation queued");
    }
    // The next good commit goes through the real evaluator and daemon.
    std::fs::write(repo.dir.join("case"), "fixed").unwrap();
    let fixed = repo.commit("fixed");
    let out = setup.one_shot(&[]);
    assert!(out.status.success());
    let conn = setup.db();
    let (status, error) = error_of(&setup, count(&conn, "SELECT MAX(id) FROM Evaluations"));
    assert_eq!((status, error.as_str()), (0, ""));
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
                 WHERE e.revision = '{fixed}' AND b.status >= 0"
            )
        ),
        5
    );
    assert_sound(&setup.db);
}

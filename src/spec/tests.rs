use super::*;

pub(super) fn specs(text: &str) -> Vec<Specification> {
    match read_spec_text("t.scm", text) {
        Ok(Parsed::Specs(s)) => s,
        other => panic!("{text}: {other:?}"),
    }
}

/// Expects an error and returns it written, `t.scm:LINE:COLUMN: message`.
pub(super) fn error(text: &str) -> String {
    match read_spec_text("t.scm", text) {
        Err(e) => e.to_string(),
        other => panic!("{text}: {other:?}"),
    }
}

const MINIMAL: &str = r#"(#:name . "n") (#:url . "u") (#:file . "f") (#:proc . p)"#;

fn one(extra: &str) -> String {
    format!("'(({MINIMAL} {extra}))")
}

#[test]
fn minimal_spec_gets_defaults() {
    let s = specs(&one(""));
    assert_eq!(
        s,
        vec![Specification {
            name: "n".into(),
            url: "u".into(),
            branch: Some("master".into()),
            commit: None,
            tag: None,
            no_compile: false,
            load_path: ".".into(),
            file: "f".into(),
            proc_name: "p".into(),
            arguments: "()".into(),
            record: None,
        }]
    );
}

#[test]
fn all_keys() {
    let s = &specs(&one(
        r#"(#:commit . "abc") (#:no-compile? . #t) (#:load-path . "lib") (#:arguments (subset . "hello") (n . 1))"#,
    ))[0];
    assert_eq!(s.branch, None);
    assert_eq!(s.commit.as_deref(), Some("abc"));
    assert!(s.no_compile);
    assert_eq!(s.load_path, "lib");
    assert_eq!(s.arguments, r#"((subset . "hello") (n . 1))"#);
    assert_eq!(
        specs(&one(r#"(#:tag . "v1")"#))[0].tag.as_deref(),
        Some("v1")
    );
    assert_eq!(specs(&one("(#:arguments)"))[0].arguments, "()");
    assert_eq!(specs(&one("(#:unknown . 1)")).len(), 1);
    assert_eq!(specs("'()"), vec![]);
    let s = &specs(r#"(list `((#:name . "a") (#:url . "u") (#:file . "f") (#:proc . "p")))"#)[0];
    assert_eq!(s.proc_name, "p");
}

#[test]
fn code_needs_scheme() {
    for text in [
        "(define x 1)\n'()",
        r#"(list `((#:name . ,(string-append "a" "b"))))"#,
        "(let ((x 1)) '())",
        "'() (use-modules (guix))",
    ] {
        assert!(
            matches!(read_spec_text("t.scm", text), Ok(Parsed::NeedsScheme(_))),
            "{text}"
        );
    }
    let Ok(Parsed::NeedsScheme(why)) = read_spec_text("t.scm", "(list\n (f))") else {
        panic!()
    };
    assert_eq!(why, "2:2: a call to `f`");
}

#[test]
fn errors_name_the_place() {
    assert_eq!(
        error("(list 1"),
        "t.scm:1:1: list opened here is never closed"
    );
    assert_eq!(error("; nothing"), "t.scm: the file contains no expression");
    assert_eq!(
        error("(cons 1)"),
        "t.scm:1:1: cons takes 2 argument(s), not 1"
    );
    assert_eq!(
        error("\"x\""),
        "t.scm:1:1: the file's value must be a list of specifications, not \"x\""
    );
    assert_eq!(
        error("'(5)"),
        "t.scm:1:3: a specification must be an association list, not 5"
    );
    assert_eq!(
        error("'((a))"),
        "t.scm:1:4: expected a (#:key . value) pair, not a"
    );
    assert_eq!(
        error("'(((a . 1)))"),
        "t.scm:1:5: expected a keyword such as #:name, not a"
    );
    assert_eq!(
        error("'(((#:name \"n\")))"),
        "t.scm:1:12: #:name must be a string, as in (#:name . \"...\"), not (\"n\")"
    );
    assert!(error(&one("(#:url . \"again\")")).ends_with("#:url given twice"));
    assert!(error(&one("(#:no-compile? . 1)")).contains("#:no-compile? must be #t or #f, not 1"));
    assert!(error(&one("(#:load-path . lib)")).contains("#:load-path must be a string"));
    assert!(error(&one("(#:branch . 1)")).contains("#:branch must be a string"));
    let both = error(&format!(
        "'(({MINIMAL}\n (#:branch . \"b\") (#:tag . \"t\")))"
    ));
    assert_eq!(
        both,
        "t.scm:2:19: give only one of #:branch, #:commit and #:tag"
    );
    assert!(error(&format!("'(({MINIMAL} (#:proc . 1)))")).contains("given twice"));
    assert!(
        error(r#"'(((#:name . "n") (#:url . "u") (#:file . "f") (#:proc . 1)))"#)
            .contains("#:proc must be a symbol")
    );
}

#[test]
fn missing_and_invalid_names() {
    let entries = [
        ("name", "\"n\""),
        ("url", "\"u\""),
        ("file", "\"f\""),
        ("proc", "p"),
    ];
    for key in ["name", "url", "file", "proc"] {
        let kept: Vec<String> = entries
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| format!("(#:{k} . {v})"))
            .collect();
        let e = error(&format!("'(({}))", kept.join(" ")));
        assert_eq!(e, format!("t.scm:1:3: specification has no #:{key}"));
    }
    for bad in ["", ".hidden", "a/b", "..", "a\0b"] {
        let text = format!(
            r#"'(((#:name . {}) (#:url . "u") (#:file . "f") (#:proc . p)))"#,
            Datum::new(Pos { line: 1, column: 1 }, Kind::Str(bad.into()))
        );
        assert!(
            error(&text).contains("invalid specification name"),
            "{bad:?}"
        );
    }
    let dup = format!("'(({MINIMAL}) ({MINIMAL}))");
    assert_eq!(
        error(&dup),
        format!(
            "t.scm:1:{}: duplicate specification name \"n\"",
            MINIMAL.len() + 6
        )
    );
}

/// A name is a cache directory, a URL segment and a log-line field: what
/// would break one of them is refused where the file says it.
#[test]
fn names_unfit_for_a_path_segment_or_a_log_line_are_refused_with_their_place() {
    let with_name = |name: &str| {
        format!(
            "'(\n((#:name . {})\n  (#:url . \"u\") (#:file . \"f\") (#:proc . p)))",
            Datum::new(Pos { line: 1, column: 1 }, Kind::Str(name.into()))
        )
    };
    let long = "x".repeat(256);
    for (bad, why) in [
        ("a\nb", r"'\n', which would break a log line"),
        ("tab\there", r"'\t', which would break a log line"),
        ("esc\x1b[31m", r"'\u{1b}', which would break a log line"),
        ("del\x7f", r"'\u{7f}', which would break a log line"),
        ("nel\u{85}", r"'\u{85}', which would break a log line"),
        ("ls\u{2028}", r"'\u{2028}', which would break a log line"),
        ("a/b", "it contains '/'"),
        (".git", "it starts with '.'"),
        ("", "it is empty"),
        (long.as_str(), "256 bytes long, over 255"),
    ] {
        let e = error(&with_name(bad));
        assert!(
            e.starts_with("t.scm:2:12: invalid specification name"),
            "{e}"
        );
        assert!(e.ends_with(why), "{bad:?}: {e}");
        assert!(!e.contains('\n'), "the message itself splits: {e:?}");
    }
    for good in [
        "gtk+",
        "libsigc++",
        "guix master",
        "été",
        "a.b",
        &"x".repeat(255),
    ] {
        assert_eq!(specs(&with_name(good))[0].name, good);
    }
    for (extra, value, message) in [
        (
            r#"(#:branch . "a..b")"#,
            r#""a..b""#,
            r#"#:branch "a..b" is not a valid git branch name"#,
        ),
        (
            r#"(#:tag . "v 1")"#,
            r#""v 1""#,
            r#"#:tag "v 1" is not a valid git tag name"#,
        ),
        (
            "(#:load-path . \"u\\nx\")",
            "\"u\\nx\"",
            r"#:load-path contains the control character '\n'",
        ),
        (
            "(#:commit . \"abc\\r\")",
            "\"abc\\r\"",
            r"#:commit contains the control character '\r'",
        ),
    ] {
        let text = one(extra);
        let column = text.find(value).unwrap() + 1;
        assert_eq!(error(&text), format!("t.scm:1:{column}: {message}"));
    }
}

#[test]
fn temp_script_is_unique_and_removed() {
    let (a, b) = (TempScript::create().unwrap(), TempScript::create().unwrap());
    assert_ne!(a.0, b.0);
    assert_eq!(
        std::fs::read_to_string(&a.0).unwrap(),
        include_str!("../read-spec.scm")
    );
    let path = a.0.clone();
    drop(a);
    assert!(!path.exists());
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/specs")
        .join(name)
}

fn have_guix() -> bool {
    let found = Command::new("guix")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("note: `guix` is not on PATH; skipping a test that runs Guile");
    }
    found
}

#[test]
fn plain_fixtures_read_without_guile() {
    // A Guile command that cannot run proves Guile is not needed.
    let no_guile = vec!["/nonexistent/guile".to_string()];
    let s = read_spec_file(&fixture("plain.scm"), &no_guile).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].branch.as_deref(), Some("stable"));
    assert_eq!(
        s[0].arguments,
        r#"((subset . "hello") (systems "x86_64-linux"))"#
    );
    assert_eq!(
        (
            s[0].load_path.as_str(),
            s[0].proc_name.as_str(),
            s[0].no_compile
        ),
        ("scheme", "hydra-jobs", true)
    );
    let s = read_spec_file(&fixture("list.scm"), &no_guile).unwrap();
    assert_eq!(
        s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["guix", "tagged"]
    );
    assert_eq!(s[1].arguments, r#"((subset . "core"))"#);
    assert_eq!(s[1].tag.as_deref(), Some("v1.0"));
    let e = read_spec_file(&fixture("broken-syntax.scm"), &no_guile).unwrap_err();
    assert_eq!(
        (e.pos.map(|p| (p.line, p.column)), e.message.as_str()),
        (Some((2, 3)), "list opened here is never closed")
    );
    let e = read_spec_file(&fixture("bad-type.scm"), &no_guile).unwrap_err();
    assert_eq!(e.pos.map(|p| p.line), Some(6));
    let e = read_spec_file(&fixture("missing.scm"), &no_guile).unwrap_err();
    assert!(e.to_string().contains("missing.scm: cannot read"), "{e}");
    let e = read_spec_file(&fixture("code.scm"), &no_guile).unwrap_err();
    assert!(
        e.message.starts_with("cannot run /nonexistent/guile"),
        "{e}"
    );
}

#[test]
fn code_fixture_through_guix() {
    if !have_guix() {
        return;
    }
    let s = read_spec_file(&fixture("code.scm"), &default_guile_command()).unwrap();
    let dir = std::fs::canonicalize(fixture("")).unwrap();
    assert_eq!(s[0].name, "code-one");
    assert_eq!(s[0].url, format!("file://{}/repo", dir.display()));
    assert_eq!(s[0].file, "ci.scm");
    assert_eq!(s[0].proc_name, "cuirass-jobs");
    assert_eq!(
        s[0].arguments,
        r#"((base . "https://git.example.org/") (home-set . #t))"#
    );
}

#[test]
fn non_ascii_through_guix_in_c_locale() {
    if !have_guix() {
        return;
    }
    // In the C locale Guile writes "\xe9" and "\u03bb" escapes.
    let command = ["env", "LC_ALL=C", "LANG=", "guix", "repl", "--"].map(String::from);
    let s = read_spec_file(&fixture("unicode.scm"), &command).unwrap();
    assert_eq!(s[0].name, "caf\u{e9}-\u{3bb}");
}

#[test]
fn broken_fixtures_through_guix() {
    if !have_guix() {
        return;
    }
    let guix = default_guile_command();
    let e = read_spec_file(&fixture("broken-scheme.scm"), &guix).unwrap_err();
    assert!(
        e.to_string().contains("broken-scheme.scm: ") && e.message.contains("undefined-procedure"),
        "{e}"
    );
    let e = read_spec_file(&fixture("procedure-value.scm"), &guix).unwrap_err();
    assert!(
        e.message.contains("not plain data") && e.message.contains("#<procedure"),
        "{e}"
    );
}

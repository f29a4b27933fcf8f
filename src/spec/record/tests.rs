use super::*;
use crate::spec::tests::{error, specs};

/// The example of Cuirass's manual, as shared/CUIRASS.md quotes it.
const MANUAL: &str = r#"(list (specification
       (name "my-channel")
       (build '(channels my-channel))
       (channels
        (cons (channel
               (name 'my-channel)
               (url "https://example.org/my-channel.git")
               (branch "main"))
              %default-channels))
       (priority 2)
       (systems '("x86_64-linux" "aarch64-linux"))))
"#;

#[test]
fn manual_example() {
    let s = specs(MANUAL);
    assert_eq!(s.len(), 1);
    let r = s[0].record.as_ref().unwrap();
    assert_eq!(s[0].name, "my-channel");
    assert_eq!(r.build, "(channels my-channel)");
    assert_eq!(r.priority, 2);
    assert_eq!(r.systems, ["x86_64-linux", "aarch64-linux"]);
    assert_eq!(r.period, 0);
    assert!(r.is_active);
    let names: Vec<_> = r.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["my-channel", "guix"]);
    assert_eq!(r.channels[0].branch, "main");
    let guix = &r.channels[1];
    assert_eq!(guix.url, "https://git.guix.gnu.org/guix.git");
    let intro = guix.introduction.as_ref().unwrap();
    assert_eq!(intro.commit, "9edb3f66fd807b096b48283debdcddccfea34bad");
    // The legacy columns describe the first channel.
    assert_eq!(s[0].url, "https://example.org/my-channel.git");
    assert_eq!(s[0].branch.as_deref(), Some("main"));
}

#[test]
fn defaults() {
    let s = specs(r#"(list (specification (name 'guix)))"#);
    let r = s[0].record.as_ref().unwrap();
    assert_eq!(s[0].name, "guix");
    assert_eq!(r.build, "all");
    assert_eq!(r.channels.len(), 1);
    assert_eq!(r.channels[0].name, "guix");
    assert_eq!(r.priority, 9);
    assert_eq!(r.systems, [current_system()]);
    assert_eq!(r.notifications, "()");
    assert!(r.build_outputs.is_empty());
}

#[test]
fn every_field_and_the_data_forms() {
    let text = r#"
`(,(specification
    (name "a")
    (build '(custom (a ci) (a more)))
    (channels (append (list (channel (name 'a) (url "file:///a")
                                     (commit "0123")
                                     (introduction
                                      (make-channel-introduction
                                       "abcd" (openpgp-fingerprint "AAAA BBBB")))))
                      (list %default-guix-channel)))
    (build-outputs (list (build-output (job "^hello\\.") (type "text")
                                       (path "share/doc"))))
    (notifications (list (email (from "a@b") (to "c@d") (server "s")) (mastodon)))
    (period 3600)
    (priority 0)
    (systems (list "x86_64-linux"))
    (is-active? #f))
  ,(specification (name "b") (build '(packages "hello" "guile"))
                  (channels (list (channel (name 'b) (url "file:///b"))))))
"#;
    let s = specs(text);
    let a = s[0].record.as_ref().unwrap();
    assert_eq!(a.build, "(custom (a ci) (a more))");
    assert_eq!(a.channels[0].commit.as_deref(), Some("0123"));
    let intro = a.channels[0].introduction.as_ref().unwrap();
    assert_eq!((&*intro.commit, &*intro.signer), ("abcd", "AAAA BBBB"));
    assert_eq!(a.channels[1].name, "guix");
    assert_eq!(
        a.build_outputs,
        [BuildOutput {
            job: "^hello\\.".into(),
            kind: "text".into(),
            output: "out".into(),
            path: "share/doc".into(),
        }]
    );
    assert!(a.notifications.starts_with("((<email> (from . \"a@b\")"));
    assert_eq!((a.period, a.priority, a.is_active), (3600, 0, false));
    assert!(!s[0].is_active());
    let b = s[1].record.as_ref().unwrap();
    assert_eq!(b.build, r#"(packages "hello" "guile")"#);
    assert_eq!(b.channels[0].branch, "master");
}

#[test]
fn stored_text_reads_back() {
    for spec in specs(MANUAL) {
        let text = spec.record.as_ref().unwrap().to_text(&spec.name);
        assert_eq!(from_text(&text).unwrap(), spec, "{text}");
    }
}

/// Every error names the line, the column and the field.
#[test]
fn errors_name_the_place_and_the_field() {
    let cases = [
        (
            "(list (specification (name \"a\")\n  (period -1)))",
            "t.scm:2:11: specification field `period` must be a number of seconds",
        ),
        (
            "(list (specification (name \"a\")\n  (priority 12)))",
            "t.scm:2:13: specification field `priority` must be an integer from 0 to 9",
        ),
        (
            "(list (specification (name \"a\") (colour 1)))",
            "t.scm:1:33: specification: unknown field `colour`",
        ),
        (
            "(list (specification (build 'all)))",
            "t.scm:1:7: specification has no `name` field",
        ),
        (
            "(list (specification (name \"a\") (build 'everything)))",
            "t.scm:1:41: specification field `build` must be all, core",
        ),
        (
            "(list (specification (name \"a\")\n (build '(channels nope))))",
            "t.scm:2:20: specification field `build`: nope is not one of the spec's channels",
        ),
        (
            "(list (specification (name \"a\") (channels (list (channel (url \"u\"))))))",
            "t.scm:1:49: channel has no `name` field",
        ),
        (
            "(list (specification (name \"a\") (channels (list (channel (name \"x\") (url \"u\"))))))",
            "t.scm:1:64: channel field `name` must be a symbol",
        ),
        (
            "(list (specification (name \"a\") (channels '())))",
            "t.scm:1:33: specification field `channels` must be a non-empty list",
        ),
        (
            "(list (specification (name \"a\") (systems \"x86_64-linux\")))",
            "t.scm:1:42: specification field `systems` must be a list of strings",
        ),
        (
            "(list (specification (name \"a\") (is-active? 1)))",
            "t.scm:1:45: specification field `is-active?` must be #t or #f",
        ),
        (
            "(list (specification (name \"a\") (build-outputs (list (build-output (job \"(\"))))))",
            "t.scm:1:73: build-output field `job` is not a regular expression",
        ),
        (
            "(list (specification (name \"a\") (period)))",
            "t.scm:1:33: specification: a field is (NAME VALUE)",
        ),
        (
            "(list (specification (name \"a\") (channels (list (channel (name 'a) (url \"u\")) (channel (name 'a) (url \"v\"))))))",
            "t.scm:1:49: channel \"a\" is given twice",
        ),
        (
            "(list (specification (name \"a\")) '((#:name . \"b\")))",
            "t.scm:1:35: a file holds either specification records or 2018 association lists",
        ),
    ];
    for (text, expected) in cases {
        let e = error(text);
        assert!(
            e.starts_with(expected),
            "{text}\n got: {e}\nwant: {expected}"
        );
    }
}

/// A file with code goes through Guile, which gets the same record forms
/// as the data evaluator and must give the same specifications.
#[test]
fn code_files_through_guix_give_the_same_records() {
    let dir = std::env::temp_dir().join(format!("cuirass-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let code = dir.join("code.scm");
    std::fs::write(
        &code,
        MANUAL.replace(
            "\"https://example.org/my-channel.git\"",
            "(string-append \"https://example.org/\" \"my-channel.git\")",
        ),
    )
    .unwrap();
    let read = crate::spec::read_spec_file(&code, &crate::spec::default_guile_command()).unwrap();
    assert_eq!(read, specs(MANUAL));
    // Guix's own channel records, when a file makes them, are read too.
    std::fs::write(
        &code,
        "(list (specification (name \"g\") (channels (@ (guix channels) %default-channels))))",
    )
    .unwrap();
    let read = crate::spec::read_spec_file(&code, &crate::spec::default_guile_command()).unwrap();
    let guix = &read[0].record.as_ref().unwrap().channels[0];
    assert_eq!(guix.name, "guix");
    assert_eq!(
        guix.introduction.as_ref().unwrap().signer,
        "BBB0 2DDF 2CEA F6A8 0D1D  E643 A2A0 6DF2 A33A 54FA"
    );
    std::fs::write(
        &code,
        "(define x 1)\n(list (specification (name \"a\") (period 'soon)))",
    )
    .unwrap();
    let e = crate::spec::read_spec_file(&code, &crate::spec::default_guile_command()).unwrap_err();
    assert!(
        e.to_string()
            .contains("specification field `period` must be a number of seconds"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

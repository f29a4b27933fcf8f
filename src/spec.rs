//! Specification files: Scheme whose value is a list of association lists,
//! one per specification (see CUIRASS.md).
//!
//! Files made only of data (`quote`, `quasiquote`, `list`, `cons`...) are
//! read here without Guile; files with real code are evaluated by Guile
//! through `src/read-spec.scm`, which writes the value back as plain data.
//! Unknown keys are accepted with a warning, as the original Cuirass simply
//! ignored them; everything else that is wrong is an error naming the place.

use crate::sexp::{self, Datum, EvalError, Kind, Pos};
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, PartialEq)]
pub struct Specification {
    pub name: String,
    pub url: String,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub tag: Option<String>,
    pub no_compile: bool,
    /// Relative to the checkout; "." when absent.
    pub load_path: String,
    pub file: String,
    pub proc_name: String,
    /// The written cdr of the `#:arguments` entry, e.g. `((subset . "hello"))`.
    pub arguments: String,
}

#[derive(Debug)]
pub struct SpecError {
    pub file: String,
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for SpecError {}

/// What reading a file without Guile gave.
#[derive(Debug)]
pub enum Parsed {
    Specs(Vec<Specification>),
    /// The file contains code; the string says where and what.
    NeedsScheme(String),
}

/// The command that runs Guile with Guix's modules, before the script's path.
pub fn default_guile_command() -> Vec<String> {
    ["guix", "repl", "--"].map(String::from).to_vec()
}

const KEYS: &[&str] = &[
    "name",
    "url",
    "branch",
    "commit",
    "tag",
    "no-compile?",
    "load-path",
    "file",
    "proc",
    "arguments",
];

/// Shortens a written datum for an error message.
fn show(d: &Datum) -> String {
    let s = d.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Turns the evaluated value of a file into specifications.
pub fn specs_from_data(file: &str, value: &Datum) -> Result<Vec<Specification>, SpecError> {
    let err = |pos: Pos, message: String| SpecError {
        file: file.to_string(),
        pos: Some(pos),
        message,
    };
    let Some(items) = value.as_list() else {
        return Err(err(
            value.pos,
            format!(
                "the file's value must be a list of specifications, not {}",
                show(value)
            ),
        ));
    };
    let mut specs: Vec<Specification> = Vec::new();
    for item in items {
        let spec = one_spec(item).map_err(|(pos, message)| err(pos, message))?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(err(
                item.pos,
                format!("duplicate specification name {:?}", spec.name),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn one_spec(item: &Datum) -> Result<Specification, (Pos, String)> {
    let Some(entries) = item.as_list() else {
        return Err((
            item.pos,
            format!(
                "a specification must be an association list, not {}",
                show(item)
            ),
        ));
    };
    let mut found: Vec<(&str, Datum, Pos)> = Vec::new();
    for entry in entries {
        let Some((key, value)) = entry.as_pair() else {
            return Err((
                entry.pos,
                format!("expected a (#:key . value) pair, not {}", show(entry)),
            ));
        };
        let Some(k) = key.as_keyword() else {
            return Err((
                key.pos,
                format!("expected a keyword such as #:name, not {}", show(key)),
            ));
        };
        let Some(k) = KEYS.iter().find(|x| **x == k) else {
            log::warn!("ignoring unknown specification key #:{k}");
            continue;
        };
        if found.iter().any(|(x, _, _)| x == k) {
            return Err((entry.pos, format!("#:{k} given twice")));
        }
        found.push((k, value, entry.pos));
    }
    let get = |k: &str| {
        found
            .iter()
            .find(|(x, _, _)| *x == k)
            .map(|(_, v, p)| (v, *p))
    };
    let string = |k: &str| -> Result<Option<String>, (Pos, String)> {
        match get(k) {
            None => Ok(None),
            Some((v, _)) => match v.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                // `(#:name "x")` without the dot is the likely mistake.
                None => Err((
                    v.pos,
                    format!(
                        "#:{k} must be a string, as in (#:{k} . \"...\"), not {}",
                        show(v)
                    ),
                )),
            },
        }
    };
    let required = |k: &str| -> Result<String, (Pos, String)> {
        string(k)?.ok_or_else(|| (item.pos, format!("specification has no #:{k}")))
    };
    let name = required("name")?;
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        let pos = get("name").map_or(item.pos, |(v, _)| v.pos);
        return Err((
            pos,
            format!(
                "invalid specification name {name:?}: it names a directory, so it must be non-empty, without '/', and not start with '.'"
            ),
        ));
    }
    let url = required("url")?;
    let file = required("file")?;
    let proc_name = match get("proc") {
        None => return Err((item.pos, "specification has no #:proc".into())),
        Some((v, _)) => match &v.kind {
            Kind::Symbol(s) | Kind::Str(s) => s.clone(),
            _ => return Err((v.pos, format!("#:proc must be a symbol, not {}", show(v)))),
        },
    };
    let no_compile = match get("no-compile?") {
        None => false,
        Some((v, _)) => v.as_bool().ok_or_else(|| {
            (
                v.pos,
                format!("#:no-compile? must be #t or #f, not {}", show(v)),
            )
        })?,
    };
    let (mut branch, commit, tag) = (string("branch")?, string("commit")?, string("tag")?);
    let given: Vec<_> = ["branch", "commit", "tag"]
        .into_iter()
        .filter_map(get)
        .collect();
    if given.len() > 1 {
        return Err((
            given[1].1,
            "give only one of #:branch, #:commit and #:tag".into(),
        ));
    }
    if given.is_empty() {
        branch = Some("master".into());
    }
    Ok(Specification {
        name,
        url,
        branch,
        commit,
        tag,
        no_compile,
        load_path: string("load-path")?.unwrap_or_else(|| ".".into()),
        file,
        proc_name,
        arguments: get("arguments").map_or_else(|| "()".into(), |(v, _)| v.to_string()),
    })
}

/// Reads a file's text without Guile. Every top-level form is evaluated with
/// [`sexp::eval_data`], so a file whose earlier forms are code (a `define`,
/// `use-modules`) goes to Guile as a whole, and the value is the last form's,
/// as with Guile's `primitive-load`.
pub fn read_spec_text(file: &str, text: &str) -> Result<Parsed, SpecError> {
    let err = |pos, message| SpecError {
        file: file.to_string(),
        pos,
        message,
    };
    let forms = sexp::parse_all(text).map_err(|e| err(Some(e.pos), e.kind_message()))?;
    let mut value = None;
    for form in &forms {
        match sexp::eval_data(form) {
            Ok(v) => value = Some(v),
            Err(EvalError::NeedsScheme { pos, what }) => {
                return Ok(Parsed::NeedsScheme(format!(
                    "{}:{}: {what}",
                    pos.line, pos.column
                )));
            }
            Err(EvalError::Bad { pos, message }) => return Err(err(Some(pos), message)),
        }
    }
    let value = value.ok_or_else(|| err(None, "the file contains no expression".into()))?;
    specs_from_data(file, &value).map(Parsed::Specs)
}

impl sexp::Error {
    /// The message without the position, for callers that print it their way.
    fn kind_message(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.pos);
        full.strip_prefix(&prefix).unwrap_or(&full).to_string()
    }
}

/// The helper script lives in a temporary file for the duration of one run.
struct TempScript(std::path::PathBuf);

impl TempScript {
    fn create() -> std::io::Result<TempScript> {
        // Tests run in threads of one process, so the pid alone is not unique.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("cuirass-read-spec-{}-{n}.scm", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, include_str!("read-spec.scm"))?;
        Ok(TempScript(path))
    }
}

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads a specification file, running Guile only when the file is code.
/// `guile_command` is usually [`default_guile_command`]. Guile runs to
/// completion: a file that loops forever blocks the caller.
pub fn read_spec_file(
    path: &Path,
    guile_command: &[String],
) -> Result<Vec<Specification>, SpecError> {
    let file = path.display().to_string();
    let err = |message: String| SpecError {
        file: file.clone(),
        pos: None,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let why = match read_spec_text(&file, &text)? {
        Parsed::Specs(specs) => return Ok(specs),
        Parsed::NeedsScheme(why) => why,
    };
    log::debug!("{file}: evaluating with Guile ({why})");
    let absolute =
        std::fs::canonicalize(path).map_err(|e| err(format!("cannot resolve path: {e}")))?;
    let (program, args) = guile_command
        .split_first()
        .ok_or_else(|| err("no Guile command configured".into()))?;
    let script =
        TempScript::create().map_err(|e| err(format!("cannot write helper script: {e}")))?;
    let output = Command::new(program)
        .args(args)
        .arg(&script.0)
        .arg(&absolute)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    drop(script);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let msg = stderr.trim();
        let msg = if msg.is_empty() {
            format!("Guile failed ({})", output.status)
        } else {
            msg.to_string()
        };
        return Err(err(msg));
    }
    if !stderr.trim().is_empty() {
        log::info!("{file}: Guile said: {}", stderr.trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let not_data = |detail: String| {
        err(format!(
            "the file's value, as Guile wrote it, is not plain data ({detail}): {}",
            stdout.trim()
        ))
    };
    let forms = sexp::parse_all(&stdout).map_err(|e| not_data(e.kind_message()))?;
    let [value] = forms.as_slice() else {
        return Err(not_data(format!("{} values", forms.len())));
    };
    // Positions refer to Guile's output, not to the file: drop them.
    specs_from_data(&file, value).map_err(|e| SpecError { pos: None, ..e })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(text: &str) -> Vec<Specification> {
        match read_spec_text("t.scm", text) {
            Ok(Parsed::Specs(s)) => s,
            other => panic!("{text}: {other:?}"),
        }
    }

    /// Expects an error and returns it written, `t.scm:LINE:COLUMN: message`.
    fn error(text: &str) -> String {
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
        let s =
            &specs(r#"(list `((#:name . "a") (#:url . "u") (#:file . "f") (#:proc . "p")))"#)[0];
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
        assert!(
            error(&one("(#:no-compile? . 1)")).contains("#:no-compile? must be #t or #f, not 1")
        );
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

    #[test]
    fn temp_script_is_unique_and_removed() {
        let (a, b) = (TempScript::create().unwrap(), TempScript::create().unwrap());
        assert_ne!(a.0, b.0);
        assert_eq!(
            std::fs::read_to_string(&a.0).unwrap(),
            include_str!("read-spec.scm")
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
            e.to_string().contains("broken-scheme.scm: ")
                && e.message.contains("undefined-procedure"),
            "{e}"
        );
        let e = read_spec_file(&fixture("procedure-value.scm"), &guix).unwrap_err();
        assert!(
            e.message.contains("not plain data") && e.message.contains("#<procedure"),
            "{e}"
        );
    }
}

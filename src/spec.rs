//! Specification files: Scheme whose value is a list of association lists,
//! one per specification (see CUIRASS.md).
//!
//! Files made only of data (`quote`, `quasiquote`, `list`, `cons`...) are
//! read here without Guile; files with real code are evaluated by Guile
//! through `src/read-spec.scm`, which writes the value back as plain data.
//! Unknown keys are accepted with a warning, as the original Cuirass simply
//! ignored them; everything else that is wrong is an error naming the place.

use crate::sexp::{self, Datum, EvalError, Kind, Pos};
pub use record::{BuildOutput, Channel, Introduction, Record};
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Serializable so that the child that re-reads a file on SIGHUP can hand
/// its specifications back to the loop (as JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Today's fields, for a spec read from a `specification` record (the
    /// fields above then describe its first channel); None for a 2018 alist.
    #[serde(default)]
    pub record: Option<Record>,
}

impl Specification {
    /// A specification with the defaults a file would get for the keys it
    /// leaves out: branch master, load path ".", no arguments, no
    /// compilation step.
    pub fn new(name: &str, url: &str, file: &str, proc_name: &str) -> Specification {
        Specification {
            name: name.into(),
            url: url.into(),
            branch: Some("master".into()),
            commit: None,
            tag: None,
            no_compile: true,
            load_path: ".".into(),
            file: file.into(),
            proc_name: proc_name.into(),
            arguments: "()".into(),
            record: None,
        }
    }

    /// Whether the cycle polls it (2018 specs always are).
    pub fn is_active(&self) -> bool {
        self.record.as_ref().is_none_or(|r| r.is_active)
    }
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

/// Why `name` cannot name a specification, if it cannot.  The name is a
/// directory of the cache, a segment of URLs (`/jobset/NAME`) and a field
/// of log lines, so it must be one file name: non-empty, at most 255
/// bytes, not hidden, without '/', and without characters that would
/// break a line (control characters, U+2028 and U+2029).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 255 {
        return Err(format!("it is {} bytes long, over 255", name.len()));
    }
    if name.starts_with('.') {
        return Err("it starts with '.'".into());
    }
    match name
        .chars()
        .find(|&c| c == '/' || c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        Some('/') => Err("it contains '/'".into()),
        Some(c) => Err(format!("it contains {c:?}, which would break a log line")),
        None => Ok(()),
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
    let records = items
        .first()
        .is_some_and(|i| record::is_record(i, "specification"));
    let mut specs: Vec<Specification> = Vec::new();
    for item in items {
        if records != record::is_record(item, "specification") {
            return Err(err(
                item.pos,
                "a file holds either specification records or 2018 association lists, not both"
                    .into(),
            ));
        }
        let spec = if records {
            record::spec_from_record(item)
        } else {
            one_spec(item)
        };
        let spec = spec.map_err(|(pos, message)| err(pos, message))?;
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
            log::warn!(target: crate::logging::SPEC, "ignoring unknown specification key #:{k}");
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
    if let Err(why) = check_name(&name) {
        let pos = get("name").map_or(item.pos, |(v, _)| v.pos);
        return Err((pos, format!("invalid specification name {name:?}: {why}")));
    }
    // Every other string reaches log lines, and git or the evaluator: a
    // control character there is a mistake better caught here, with the
    // place, than at each poll.
    for (k, v, _) in &found {
        if let Some(c) = v.as_str().and_then(|s| s.chars().find(|c| c.is_control())) {
            return Err((v.pos, format!("#:{k} contains the control character {c:?}")));
        }
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
    for (kind, value) in [("branch", &branch), ("tag", &tag)] {
        let prefix = if kind == "branch" { "heads" } else { "tags" };
        if let Some(v) = value
            && !git2::Reference::is_valid_name(&format!("refs/{prefix}/{v}"))
        {
            let pos = get(kind).map_or(item.pos, |(d, _)| d.pos);
            return Err((
                pos,
                format!("#:{kind} {v:?} is not a valid git {kind} name"),
            ));
        }
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
        record: None,
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

/// How long Guile may take over a specification file, in seconds: the
/// evaluation timeout, set once by `main` (default an hour).
static GUILE_TIMEOUT_SECS: AtomicU64 = AtomicU64::new(3600);

/// Bounds the Guile run of [`read_spec_file`] (`--evaluation-timeout`).
pub fn set_guile_timeout(timeout: std::time::Duration) {
    GUILE_TIMEOUT_SECS.store(timeout.as_secs().max(1), Ordering::Relaxed);
}

fn guile_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(GUILE_TIMEOUT_SECS.load(Ordering::Relaxed))
}

/// Runs `cmd` to completion within `timeout`, its output in temporary
/// files (no pipes to drain, no threads): its own process group, killed
/// whole at the timeout and when cuirass dies (`crate::child::die_with_parent`).
fn run_bounded(
    mut cmd: Command,
    timeout: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("cuirass-guile-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let result = (|| {
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .process_group(0);
        crate::child::die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                // SAFETY: kill(2) of the process group of our own child.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(std::io::Error::other(format!(
                    "timed out after {} s (--evaluation-timeout)",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Ok(std::process::Output {
            status,
            stdout: std::fs::read(&out_path)?,
            stderr: std::fs::read(&err_path)?,
        })
    })();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    result
}

/// Reads a specification file, running Guile only when the file is code.
/// `guile_command` is usually [`default_guile_command`].  Guile gets the
/// time [`set_guile_timeout`] gave it, then it is killed and the file is
/// an error.
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
    log::debug!(target: crate::logging::SPEC, "{file}: evaluating with Guile ({why})");
    let absolute =
        std::fs::canonicalize(path).map_err(|e| err(format!("cannot resolve path: {e}")))?;
    let (program, args) = guile_command
        .split_first()
        .ok_or_else(|| err("no Guile command configured".into()))?;
    let script =
        TempScript::create().map_err(|e| err(format!("cannot write helper script: {e}")))?;
    let mut cmd = Command::new(program);
    cmd.args(args).arg(&script.0).arg(&absolute);
    let output =
        run_bounded(cmd, guile_timeout()).map_err(|e| err(format!("cannot run {program}: {e}")))?;
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
        log::info!(target: crate::logging::SPEC, "{file}: Guile said: {}", stderr.trim());
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

/// The subcommand of the child that re-reads a specification file on
/// SIGHUP, so that a file whose Guile code loops cannot stall the loop.
pub const SUBCOMMAND: &str = "internal-read-spec";

/// Entry point of that child: `internal-read-spec FILE GUILE-COMMAND...`.
/// Prints the specifications as one JSON array and exits 0, or prints the
/// error (naming file, line and column) on stderr and exits 1.
pub fn child_main(args: &[String]) -> i32 {
    let [_, file, guile @ ..] = args else {
        eprintln!("usage: cuirass {SUBCOMMAND} FILE GUILE-COMMAND...");
        return 2;
    };
    match read_spec_file(Path::new(file), guile) {
        Ok(specs) => match serde_json::to_string(&specs) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("{file}: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

pub mod record;
#[cfg(test)]
mod tests;

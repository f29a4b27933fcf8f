//! The evaluator's output, one S-expression per line, turned into jobs.
//!
//! The evaluator (src/evaluate.scm) prints, as each job is computed,
//! `(job (name . "hello") (derivation . "/gnu/store/…drv") (system . …) …)`,
//! `(job-error (name . "x") (message . "…"))` for a job whose thunk failed,
//! and `(done N)` at the end.  Nothing here trusts that output: every line
//! is checked, and the `.drv` file decides the system, name, outputs and
//! inputs (the same .drv files as today's `#:inputs`, in every convention).

use crate::build::Limits;
use crate::db::JobRecord;
use crate::drv::Derivation;
use crate::sexp::{Datum, Kind, parse_all};

/// Limits above this many seconds (a year) are refused as nonsense rather
/// than passed on to the daemon.
pub const MAX_LIMIT_SECS: u64 = 365 * 86_400;

#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `limits` are the job's `max-silent-time` and `timeout` (seconds),
    /// `priority` its `priority`, each absent when the job gave none.
    Job {
        name: String,
        derivation: String,
        limits: Limits,
        priority: Option<i64>,
    },
    JobError {
        name: String,
        message: String,
    },
    Done(u64),
}

fn field<'a>(items: &'a [Datum], key: &str) -> Option<&'a Datum> {
    items.iter().find_map(|item| match &item.kind {
        Kind::Dotted(head, tail) if head.len() == 1 => match &head[0].kind {
            Kind::Symbol(k) if k == key => Some(&**tail),
            _ => None,
        },
        _ => None,
    })
}

fn string_field(items: &[Datum], key: &str) -> Result<String, String> {
    match field(items, key).map(|d| &d.kind) {
        Some(Kind::Str(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field '{key}' is not a string")),
        None => Err(format!("missing field '{key}'")),
    }
}

/// An optional non-negative integer field of at most `max`.
fn natural_field(items: &[Datum], key: &str, max: u64) -> Result<Option<u64>, String> {
    match field(items, key).map(|d| &d.kind) {
        None => Ok(None),
        Some(Kind::Int(n)) if (0..=max as i64).contains(n) => Ok(Some(*n as u64)),
        Some(_) => Err(format!("field '{key}' is not an integer from 0 to {max}")),
    }
}

/// Parses one line of evaluator output.  Errors name the field at fault.
pub fn parse_line(line: &[u8]) -> Result<Line, String> {
    let text = std::str::from_utf8(line).map_err(|_| "output is not UTF-8".to_string())?;
    let data = parse_all(text).map_err(|e| format!("unreadable output ({e})"))?;
    let [datum] = data.as_slice() else {
        return Err(format!("expected one S-expression, found {}", data.len()));
    };
    let Kind::List(items) = &datum.kind else {
        return Err("output is not a list".into());
    };
    let (head, rest) = match items.split_first() {
        Some((
            Datum {
                kind: Kind::Symbol(h),
                ..
            },
            rest,
        )) => (h.as_str(), rest),
        _ => return Err("output does not start with a symbol".into()),
    };
    match head {
        "job" => {
            let derivation = string_field(rest, "derivation")?;
            if !crate::trace::is_store_drv(&derivation) {
                // Escaped: the message goes to a log line and the database.
                let drv = derivation.escape_debug();
                return Err(format!("'{drv}' is not a store .drv file"));
            }
            Ok(Line::Job {
                name: string_field(rest, "name")?,
                derivation,
                limits: Limits {
                    max_silent_time: natural_field(rest, "max-silent-time", MAX_LIMIT_SECS)?,
                    timeout: natural_field(rest, "timeout", MAX_LIMIT_SECS)?,
                },
                priority: natural_field(rest, "priority", i64::MAX as u64)?.map(|p| p as i64),
            })
        }
        "job-error" => Ok(Line::JobError {
            name: string_field(rest, "name")?,
            message: string_field(rest, "message").unwrap_or_default(),
        }),
        "done" => match rest {
            [
                Datum {
                    kind: Kind::Int(n), ..
                },
            ] if *n >= 0 => Ok(Line::Done(*n as u64)),
            _ => Err("malformed (done N)".into()),
        },
        other => Err(format!("unknown output '{other}'")),
    }
}

/// Bytes of the evaluator's output one loop turn reads at most: about
/// 200 jobs of 150 bytes, each with its `.drv` read and parsed, 1–3 ms.
/// The evaluator waits on a full pipe meanwhile, and the loop comes back
/// at once while bytes are left.
pub const EVALUATOR_READ_CAP: usize = 32 * 1024;

/// Jobs read from the evaluator are registered in one transaction as
/// soon as its output pipe is empty.  While it prints faster than the
/// loop reads (each read stopping at [`EVALUATOR_READ_CAP`] with bytes
/// left), they wait until this many are read, or until the first of them
/// has waited [`REGISTER_WAIT`].  Each transaction rewrites every leaf
/// of the small fresh indexes its random keys land in (see
/// `db::fresh`), so a 75,000-job evaluation into 10,000,000 builds took
/// 6 s in 375 transactions of a read's 200 jobs, and takes 2.25 s in
/// batches of 3,072, the turn that registers one 130–140 ms there
/// (`cuirass-bench registration-10m`; batches of 4,096: 2.15 s, but
/// turns of 170–190 ms, near the loop's 200 ms warning).
pub const REGISTER_BATCH: usize = 3072;

/// How long a job read from the evaluator waits at most for its batch
/// (see [`REGISTER_BATCH`]) before it is registered and its build
/// queued.
pub const REGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How the evaluator starts the one line that says why it failed (its
/// backtrace, if any, follows on later lines).
pub const EVALUATOR_ERROR_PREFIX: &str = "evaluate: error: ";

/// The most of an evaluation error recorded, in characters.
pub const MAX_EVALUATION_ERROR: usize = 1000;

/// An evaluation error as recorded: `reason` cut to
/// [`MAX_EVALUATION_ERROR`] characters, without the evaluator's prefix.
pub fn evaluation_error(reason: &str) -> String {
    let reason = reason
        .strip_prefix(EVALUATOR_ERROR_PREFIX)
        .unwrap_or(reason);
    if reason.chars().count() <= MAX_EVALUATION_ERROR {
        return reason.to_string();
    }
    let mut cut: String = reason.chars().take(MAX_EVALUATION_ERROR - 1).collect();
    cut.push('…');
    cut
}

/// What one evaluation's output has said so far, to check it as a whole:
/// every job name once, nothing after `(done N)`, and N the number of jobs.
///
/// A job name that appears twice fails the evaluation rather than being
/// ignored: the name is how people and the HTTP API find a job's builds
/// (`/api/latestbuilds?job=…`), so keeping either derivation silently
/// would hide a bug in the job file behind builds of the wrong thing.
#[derive(Debug, Default)]
pub struct Tally {
    /// Job name to its derivation.
    names: std::collections::HashMap<String, String>,
    done: Option<u64>,
}

impl Tally {
    /// Checks a line against what came before it and counts it.
    pub fn accept(&mut self, line: &Line) -> Result<(), String> {
        if let Some(n) = self.done {
            return Err(format!("output after (done {n})"));
        }
        match line {
            Line::Job {
                name, derivation, ..
            } => {
                if let Some(first) = self.names.get(name) {
                    return Err(format!(
                        "job name '{}' appears twice ({first} and {derivation})",
                        name.escape_debug()
                    ));
                }
                self.names.insert(name.clone(), derivation.clone());
            }
            Line::JobError { .. } => {}
            Line::Done(n) => self.done = Some(*n),
        }
        Ok(())
    }

    /// How many jobs (distinct names) the output has given so far.
    pub fn jobs(&self) -> usize {
        self.names.len()
    }

    /// Whether the output, now ended, was complete.
    pub fn finish(&self) -> Result<(), String> {
        match self.done {
            None => Err("evaluator output ended without (done N)".into()),
            Some(n) if n != self.names.len() as u64 => Err(format!(
                "evaluator announced {n} jobs but printed {} (output lost?)",
                self.names.len()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Builds the database record of a job (its line's `limits` and
/// `priority`) from its `.drv` file's contents.
pub fn job_record(
    name: &str,
    derivation: &str,
    limits: Limits,
    priority: Option<i64>,
    drv_bytes: &[u8],
) -> Result<JobRecord, String> {
    let drv =
        Derivation::parse(drv_bytes).map_err(|e| format!("{derivation}: bad derivation: {e}"))?;
    let nix_name = drv
        .name()
        .ok_or_else(|| format!("{derivation}: no 'name' in its environment"))?
        .to_string();
    Ok(JobRecord {
        job_name: name.to_string(),
        derivation: derivation.to_string(),
        system: drv.system.clone(),
        nix_name,
        outputs: drv
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.path.clone()))
            .collect(),
        inputs: drv.input_drvs.iter().map(|(d, _)| d.clone()).collect(),
        limits,
        priority: priority.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-ok-1.drv";

    #[test]
    fn reads_jobs_errors_and_done() {
        let line =
            format!(r#"(job (name . "ok-1") (derivation . "{DRV}") (system . "x86_64-linux"))"#);
        assert_eq!(parse_line(line.as_bytes()).unwrap(), job("ok-1", DRV));
        assert_eq!(
            parse_line(br#"(job-error (name . "bad") (message . "boom"))"#).unwrap(),
            Line::JobError {
                name: "bad".into(),
                message: "boom".into()
            }
        );
        assert_eq!(parse_line(b"(done 5)").unwrap(), Line::Done(5));
    }

    fn job(name: &str, drv: &str) -> Line {
        Line::Job {
            name: name.into(),
            derivation: drv.into(),
            limits: Limits::default(),
            priority: None,
        }
    }

    #[test]
    fn reads_limits_and_priority_of_every_convention() {
        // As the evaluator prints a job of Guix 1.5.0's `cuirass-jobs`.
        let line = format!(
            r#"(job (name . "hello.x86_64-linux") (derivation . "{DRV}") (system . "x86_64-linux") (max-silent-time . 3600) (timeout . 72000) (priority . 5))"#
        );
        assert_eq!(
            parse_line(line.as_bytes()).unwrap(),
            Line::Job {
                name: "hello.x86_64-linux".into(),
                derivation: DRV.into(),
                limits: Limits {
                    max_silent_time: Some(3600),
                    timeout: Some(72000)
                },
                priority: Some(5),
            }
        );
        let only_timeout = format!(r#"(job (name . "a") (derivation . "{DRV}") (timeout . 3))"#);
        let Line::Job {
            limits, priority, ..
        } = parse_line(only_timeout.as_bytes()).unwrap()
        else {
            panic!("not a job")
        };
        assert_eq!(
            (limits.max_silent_time, limits.timeout, priority),
            (None, Some(3), None)
        );
    }

    #[test]
    fn an_evaluation_error_is_the_evaluators_line_cut_to_1000_characters() {
        assert_eq!(
            evaluation_error("evaluate: error: calling 'jobs' of ci.scm: unknown subset"),
            "calling 'jobs' of ci.scm: unknown subset"
        );
        let long = format!("evaluate: error: {}", "é".repeat(5000));
        let recorded = evaluation_error(&long);
        assert_eq!(recorded.chars().count(), MAX_EVALUATION_ERROR);
        assert!(recorded.ends_with("é…"), "{recorded}");
        assert_eq!(
            evaluation_error("exited with status 1"),
            "exited with status 1"
        );
    }

    #[test]
    fn refuses_limits_that_are_not_seconds() {
        for (value, key) in [
            ("(timeout . -1)", "'timeout'"),
            ("(timeout . 2.5)", "'timeout'"),
            ("(max-silent-time . \"60\")", "'max-silent-time'"),
            ("(max-silent-time . 99999999999)", "'max-silent-time'"),
            ("(priority . -3)", "'priority'"),
        ] {
            let line = format!(r#"(job (name . "a") (derivation . "{DRV}") {value})"#);
            let err = parse_line(line.as_bytes()).unwrap_err();
            assert!(err.contains(key), "{value}: {err}");
        }
    }

    #[test]
    fn the_record_takes_inputs_from_the_drv_and_the_limits_from_the_line() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/drv/mfg2kx200kw1wdk3kmxlp32x6ay7fjmb-hello-2.10.drv"
        ))
        .unwrap();
        let limits = Limits {
            max_silent_time: Some(2),
            timeout: None,
        };
        let record = job_record("j", DRV, limits, Some(7), &bytes).unwrap();
        assert_eq!((record.limits, record.priority), (limits, 7));
        assert!(!record.inputs.is_empty(), "{record:?}");
        assert!(record.inputs.iter().all(|i| crate::trace::is_store_drv(i)));
    }

    #[test]
    fn duplicate_job_names_are_an_error() {
        let mut tally = Tally::default();
        tally.accept(&job("a", DRV)).unwrap();
        let err = tally
            .accept(&job("a", "/gnu/store/x-other.drv"))
            .unwrap_err();
        assert!(err.contains("'a' appears twice"), "{err}");
    }

    /// Names from the evaluator reach log lines and the database: a
    /// newline in one must not split the line.
    #[test]
    fn names_in_errors_cannot_split_a_log_line() {
        let err = parse_line(br#"(job (name . "a") (derivation . "/x\n.drv"))"#).unwrap_err();
        assert_eq!(err, r"'/x\n.drv' is not a store .drv file");
        let drv = "/gnu/store/00000000000000000000000000000000-a.drv";
        let mut tally = Tally::default();
        tally.accept(&job("a\nb", drv)).unwrap();
        let err = tally.accept(&job("a\nb", drv)).unwrap_err();
        assert!(err.starts_with(r"job name 'a\nb' appears twice"), "{err}");
    }

    #[test]
    fn done_must_be_last_and_count_the_jobs() {
        let mut tally = Tally::default();
        assert!(tally.finish().unwrap_err().contains("without (done N)"));
        tally.accept(&job("a", DRV)).unwrap();
        tally.accept(&Line::Done(2)).unwrap();
        assert!(
            tally
                .finish()
                .unwrap_err()
                .contains("announced 2 jobs but printed 1")
        );
        assert!(
            tally
                .accept(&Line::Done(1))
                .unwrap_err()
                .contains("after (done 2)")
        );
        let mut tally = Tally::default();
        tally.accept(&job("a", DRV)).unwrap();
        tally
            .accept(&Line::JobError {
                name: "b".into(),
                message: String::new(),
            })
            .unwrap();
        tally.accept(&Line::Done(1)).unwrap();
        tally.finish().unwrap();
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for (input, needle) in [
            (&b"hello world"[..], "expected one"),
            (b"(job (name . \"x\"))", "derivation"),
            (b"(job (name . \"x\") (derivation . \"/tmp/x.drv\"))", "not a store"),
            (b"(job (name . 1) (derivation . \"/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-a.drv\"))", "not a string"),
            (b"(done -1)", "done"),
            (b"(frobnicate)", "unknown"),
            (b"\xff\xfe", "UTF-8"),
            (b"(job (name . \"x\"", "unreadable"),
        ] {
            let err = parse_line(input).unwrap_err();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }
}

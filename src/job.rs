//! The evaluator's output, one S-expression per line, turned into jobs.
//!
//! The evaluator (src/evaluate.scm) prints, as each job is computed,
//! `(job (name . "hello") (derivation . "/gnu/store/…drv") (system . …) …)`,
//! `(job-error (name . "x") (message . "…"))` for a job whose thunk failed,
//! and `(done N)` at the end.  Nothing here trusts that output: every line
//! is checked, and the `.drv` file decides the system, name and outputs.

use crate::db::JobRecord;
use crate::drv::Derivation;
use crate::sexp::{Datum, Kind, parse_all};

#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Job { name: String, derivation: String },
    JobError { name: String, message: String },
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

/// Parses one line of evaluator output.
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
            Line::Job { name, derivation } => {
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

/// Builds the database record of a job from its `.drv` file's contents.
pub fn job_record(name: &str, derivation: &str, drv_bytes: &[u8]) -> Result<JobRecord, String> {
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
        assert_eq!(
            parse_line(line.as_bytes()).unwrap(),
            Line::Job {
                name: "ok-1".into(),
                derivation: DRV.into()
            }
        );
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
        }
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

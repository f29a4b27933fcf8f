//! Today's specification files: `specification` records (Cuirass ≥ 1.0),
//! whose `channels` name the repositories to follow.  The fields, their
//! defaults and meanings are those of Cuirass 1.3 (shared/CUIRASS.md,
//! "Specification records").
//!
//! Both readers (the data evaluator of `sexp::eval` and Guile through
//! src/read-spec.scm) turn a record form into the datum
//! `(<specification> (FIELD . VALUE) ...)`, so one parser, here, checks
//! them; the database keeps a spec in that shape too ([`Record::to_text`]).

use super::{Specification, show};
use crate::sexp::{Datum, Kind, Pos, record_tag};

type Failure = (Pos, String);

/// What a `specification` record says beyond the 2018 alist.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// What to build, written: `all`, `(channels my-channel)`,
    /// `(custom (my-channel ci))`...
    pub build: String,
    /// At least one; names are unique.
    pub channels: Vec<Channel>,
    pub build_outputs: Vec<BuildOutput>,
    /// The written list of `email`/`mastodon` records; stored, not acted on.
    pub notifications: String,
    /// Seconds: evaluate at most once per period; 0 = at each new commit.
    pub period: u64,
    /// 0 (first) to 9.
    pub priority: i64,
    /// Guix system types, e.g. `x86_64-linux`; jobs are made for each.
    pub systems: Vec<String>,
    /// An inactive spec keeps its history but is not polled.
    pub is_active: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Channel {
    pub name: String,
    pub url: String,
    pub branch: String,
    /// A pinned commit: the channel never moves.
    pub commit: Option<String>,
    pub introduction: Option<Introduction>,
}

/// Where a channel's authentication starts: `guix git authenticate COMMIT
/// SIGNER` (the signer is an OpenPGP fingerprint, spaces allowed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Introduction {
    pub commit: String,
    pub signer: String,
}

/// Files of succeeded builds of jobs matching `job` (a regular
/// expression) registered as build products of type `kind`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildOutput {
    pub job: String,
    pub kind: String,
    pub output: String,
    /// Relative to the output; empty = the output itself.
    pub path: String,
}

const BUILD_SUBSETS: &[&str] = &[
    "all",
    "core",
    "guix",
    "hello",
    "images",
    "system-tests",
    "tarball",
];

/// The system the daemon builds for when a spec names none.
pub fn current_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// Whether `d` is a record datum of kind `record` (`specification`...).
pub fn is_record(d: &Datum, record: &str) -> bool {
    d.as_list()
        .and_then(|l| l.first())
        .and_then(Datum::as_symbol)
        .is_some_and(|s| s == record_tag(record))
}

/// The fields of record datum `d`, checked against `known`, each once.
fn fields(
    d: &Datum,
    record: &str,
    known: &[&'static str],
) -> Result<Vec<(&'static str, Datum, Pos)>, Failure> {
    if !is_record(d, record) {
        return Err((
            d.pos,
            format!("expected a `{record}` record, not {}", show(d)),
        ));
    }
    let mut out: Vec<(&'static str, Datum, Pos)> = Vec::new();
    for entry in &d.as_list().unwrap_or_default()[1..] {
        let Some((key, value)) = entry.as_pair() else {
            return Err((
                entry.pos,
                format!("{record}: malformed field {}", show(entry)),
            ));
        };
        let name = key.as_symbol().unwrap_or_default();
        let Some(name) = known.iter().find(|k| **k == name) else {
            return Err((
                entry.pos,
                format!(
                    "{record}: unknown field `{name}` (known: {})",
                    known.join(", ")
                ),
            ));
        };
        if out.iter().any(|(n, _, _)| n == name) {
            return Err((entry.pos, format!("{record}: field `{name}` given twice")));
        }
        out.push((name, value, entry.pos));
    }
    Ok(out)
}

fn get<'a>(fields: &'a [(&str, Datum, Pos)], name: &str) -> Option<&'a Datum> {
    fields
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, v, _)| v)
}

fn wrong<T>(record: &str, field: &str, want: &str, v: &Datum) -> Result<T, Failure> {
    Err((
        v.pos,
        format!("{record} field `{field}` must be {want}, not {}", show(v)),
    ))
}

fn string(record: &str, field: &str, v: &Datum) -> Result<String, Failure> {
    match v.as_str() {
        Some(s) if s.chars().any(char::is_control) => {
            wrong(record, field, "a string without control characters", v)
        }
        Some(s) => Ok(s.to_string()),
        None => wrong(record, field, "a string", v),
    }
}

fn string_list(record: &str, field: &str, v: &Datum) -> Result<Vec<String>, Failure> {
    match v.as_list() {
        Some(items) => items.iter().map(|i| string(record, field, i)).collect(),
        None => wrong(record, field, "a list of strings", v),
    }
}

/// A `specification` record datum turned into a [`Specification`].
pub fn spec_from_record(item: &Datum) -> Result<Specification, Failure> {
    const R: &str = "specification";
    let f = fields(
        item,
        R,
        &[
            "name",
            "build",
            "channels",
            "build-outputs",
            "notifications",
            "period",
            "priority",
            "systems",
            "is-active?",
        ],
    )?;
    let name = match get(&f, "name") {
        None => return Err((item.pos, "specification has no `name` field".into())),
        Some(v) => match &v.kind {
            Kind::Str(s) | Kind::Symbol(s) => s.clone(),
            _ => return wrong(R, "name", "a string or a symbol", v),
        },
    };
    if let Err(why) = super::check_name(&name) {
        let pos = get(&f, "name").map_or(item.pos, |v| v.pos);
        return Err((pos, format!("invalid specification name {name:?}: {why}")));
    }
    let channels = match get(&f, "channels") {
        None => vec![default_guix_channel()],
        Some(v) => match v.as_list() {
            Some(items) if !items.is_empty() => {
                items.iter().map(channel).collect::<Result<Vec<_>, _>>()?
            }
            _ => return wrong(R, "channels", "a non-empty list of `channel` records", v),
        },
    };
    for (i, c) in channels.iter().enumerate() {
        if channels[..i].iter().any(|o| o.name == c.name) {
            let pos = get(&f, "channels").map_or(item.pos, |v| v.pos);
            return Err((pos, format!("channel {:?} is given twice", c.name)));
        }
    }
    let build = match get(&f, "build") {
        None => "all".to_string(),
        Some(v) => build(v, &channels)?,
    };
    let build_outputs = match get(&f, "build-outputs") {
        None => vec![],
        Some(v) => match v.as_list() {
            Some(items) => items.iter().map(build_output).collect::<Result<_, _>>()?,
            None => return wrong(R, "build-outputs", "a list of `build-output` records", v),
        },
    };
    let notifications = match get(&f, "notifications") {
        None => "()".to_string(),
        Some(v) => match v.as_list() {
            Some(items)
                if items
                    .iter()
                    .all(|n| is_record(n, "email") || is_record(n, "mastodon")) =>
            {
                v.to_string()
            }
            _ => {
                return wrong(
                    R,
                    "notifications",
                    "a list of `email` or `mastodon` records",
                    v,
                );
            }
        },
    };
    let period = match get(&f, "period") {
        None => 0,
        Some(v) => match v.as_int() {
            Some(n) if n >= 0 => n as u64,
            _ => return wrong(R, "period", "a number of seconds (0 or more)", v),
        },
    };
    let priority = match get(&f, "priority") {
        None => 9,
        Some(v) => match v.as_int() {
            Some(n @ 0..=9) => n,
            _ => return wrong(R, "priority", "an integer from 0 to 9", v),
        },
    };
    let systems = match get(&f, "systems") {
        None => vec![current_system()],
        Some(v) => match string_list(R, "systems", v)? {
            s if s.is_empty() => return wrong(R, "systems", "a non-empty list of systems", v),
            s => s,
        },
    };
    let is_active = match get(&f, "is-active?") {
        None => true,
        Some(v) => match v.as_bool() {
            Some(b) => b,
            None => return wrong(R, "is-active?", "#t or #f", v),
        },
    };
    let first = channels[0].clone();
    Ok(Specification {
        name,
        url: first.url,
        branch: Some(first.branch),
        commit: first.commit,
        tag: None,
        no_compile: true,
        load_path: ".".into(),
        file: String::new(),
        proc_name: String::new(),
        arguments: "()".into(),
        record: Some(Record {
            build,
            channels,
            build_outputs,
            notifications,
            period,
            priority,
            systems,
            is_active,
        }),
    })
}

fn build(v: &Datum, channels: &[Channel]) -> Result<String, Failure> {
    const WANT: &str = "all, core, guix, hello, images, system-tests, tarball, \
                        (channels NAME ...), (packages NAME ...), (manifests FILE ...) \
                        or (custom MODULE ...)";
    if let Some(s) = v.as_symbol() {
        return match BUILD_SUBSETS.contains(&s) {
            true => Ok(s.to_string()),
            false => wrong("specification", "build", WANT, v),
        };
    }
    let Some([head, rest @ ..]) = v.as_list() else {
        return wrong("specification", "build", WANT, v);
    };
    let item_ok = |i: &Datum| match head.as_symbol() {
        Some("channels") => i
            .as_symbol()
            .is_some_and(|n| channels.iter().any(|c| c.name == n)),
        Some("packages" | "manifests") => i.as_str().is_some(),
        Some("custom") => i
            .as_list()
            .is_some_and(|l| !l.is_empty() && l.iter().all(|s| s.as_symbol().is_some())),
        _ => false,
    };
    if rest.is_empty() {
        return wrong("specification", "build", WANT, v);
    }
    match rest.iter().find(|i| !item_ok(i)) {
        None => Ok(v.to_string()),
        Some(i) if head.as_symbol() == Some("channels") => Err((
            i.pos,
            format!(
                "specification field `build`: {} is not one of the spec's channels",
                show(i)
            ),
        )),
        Some(_) => wrong("specification", "build", WANT, v),
    }
}

fn channel(d: &Datum) -> Result<Channel, Failure> {
    const R: &str = "channel";
    let f = fields(d, R, &["name", "url", "branch", "commit", "introduction"])?;
    let name = match get(&f, "name") {
        None => return Err((d.pos, "channel has no `name` field".into())),
        Some(v) => match v.as_symbol() {
            Some(s) if super::check_name(s).is_ok() => s.to_string(),
            _ => return wrong(R, "name", "a symbol such as 'guix", v),
        },
    };
    let url = match get(&f, "url") {
        None => return Err((d.pos, format!("channel {name:?} has no `url` field"))),
        Some(v) => string(R, "url", v)?,
    };
    let branch = match get(&f, "branch") {
        None => "master".to_string(),
        Some(v) => string(R, "branch", v)?,
    };
    if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
        let v = get(&f, "branch").unwrap_or(d);
        return wrong(R, "branch", "a valid git branch name", v);
    }
    let commit = get(&f, "commit")
        .map(|v| string(R, "commit", v))
        .transpose()?;
    let introduction = match get(&f, "introduction") {
        None => None,
        Some(v) if v.as_bool() == Some(false) => None,
        Some(v) => {
            let f = fields(v, "channel-introduction", &["commit", "signer"])?;
            let field = |n: &str| match get(&f, n) {
                Some(x) => string("channel-introduction", n, x),
                None => Err((v.pos, format!("channel introduction has no {n}"))),
            };
            Some(Introduction {
                commit: field("commit")?,
                signer: field("signer")?,
            })
        }
    };
    Ok(Channel {
        name,
        url,
        branch,
        commit,
        introduction,
    })
}

fn build_output(d: &Datum) -> Result<BuildOutput, Failure> {
    const R: &str = "build-output";
    let f = fields(d, R, &["job", "type", "output", "path"])?;
    let field = |n: &str, default: &str| match get(&f, n) {
        Some(v) => string(R, n, v),
        None => Ok(default.to_string()),
    };
    let job = field("job", "")?;
    if let Err(e) = regex::Regex::new(&job) {
        let v = get(&f, "job").unwrap_or(d);
        return Err((
            v.pos,
            format!("build-output field `job` is not a regular expression: {e}"),
        ));
    }
    let path = field("path", "")?;
    if path.split('/').any(|c| c == "..") || path.starts_with('/') {
        let v = get(&f, "path").unwrap_or(d);
        return wrong(R, "path", "a path relative to the output, without '..'", v);
    }
    Ok(BuildOutput {
        job,
        kind: field("type", "")?,
        output: field("output", "out")?,
        path,
    })
}

/// Guix's `%default-guix-channel`, as the data evaluator gives it.
fn default_guix_channel() -> Channel {
    let pos = Pos { line: 1, column: 1 };
    let d = crate::sexp::eval_data(&Datum::new(
        pos,
        Kind::Symbol("%default-guix-channel".into()),
    ))
    .expect("a built-in value");
    channel(&d).expect("a valid channel")
}

impl Record {
    /// The record as the datum both readers produce, written, for the
    /// database; [`spec_from_record`] reads it back.
    pub fn to_text(&self, name: &str) -> String {
        let pos = Pos { line: 1, column: 1 };
        let sym = |s: &str| Datum::new(pos, Kind::Symbol(s.into()));
        let st = |s: &str| Datum::new(pos, Kind::Str(s.into()));
        let rec = |tag: &str, fields: Vec<(&str, Datum)>| {
            let mut items = vec![sym(&record_tag(tag))];
            for (n, v) in fields {
                items.push(crate::sexp::cons_list(vec![sym(n)], v));
            }
            Datum::new(pos, Kind::List(items))
        };
        let list = |v: Vec<Datum>| Datum::new(pos, Kind::List(v));
        let parse = |t: &str| {
            crate::sexp::parse_all(t)
                .ok()
                .and_then(|mut v| v.pop())
                .unwrap_or_else(|| list(vec![]))
        };
        let channels = self.channels.iter().map(|c| {
            let mut f = vec![
                ("name", sym(&c.name)),
                ("url", st(&c.url)),
                ("branch", st(&c.branch)),
            ];
            if let Some(commit) = &c.commit {
                f.push(("commit", st(commit)));
            }
            if let Some(i) = &c.introduction {
                let intro = rec(
                    "channel-introduction",
                    vec![("commit", st(&i.commit)), ("signer", st(&i.signer))],
                );
                f.push(("introduction", intro));
            }
            rec("channel", f)
        });
        let outputs = self.build_outputs.iter().map(|o| {
            rec(
                "build-output",
                vec![
                    ("job", st(&o.job)),
                    ("type", st(&o.kind)),
                    ("output", st(&o.output)),
                    ("path", st(&o.path)),
                ],
            )
        });
        rec(
            "specification",
            vec![
                ("name", st(name)),
                ("build", parse(&self.build)),
                ("channels", list(channels.collect())),
                ("build-outputs", list(outputs.collect())),
                ("notifications", parse(&self.notifications)),
                ("period", Datum::new(pos, Kind::Int(self.period as i64))),
                ("priority", Datum::new(pos, Kind::Int(self.priority))),
                (
                    "systems",
                    list(self.systems.iter().map(|s| st(s)).collect()),
                ),
                ("is-active?", Datum::new(pos, Kind::Bool(self.is_active))),
            ],
        )
        .to_string()
    }
}

/// A spec as the database keeps it ([`Record::to_text`]), read back.
pub fn from_text(text: &str) -> Result<Specification, String> {
    let forms = crate::sexp::parse_all(text).map_err(|e| format!("stored record: {e}"))?;
    let [d] = forms.as_slice() else {
        return Err(format!("stored record: {} forms", forms.len()));
    };
    spec_from_record(d).map_err(|(pos, m)| format!("stored record: {pos}: {m}"))
}

#[cfg(test)]
mod tests;

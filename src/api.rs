//! The HTTP API's routes: a [`Request`] and the database in, a
//! [`Response`] out.  The only module that serializes JSON; field names
//! and types are those of Cuirass and Hydra, which clients such as Guix's
//! `(guix ci)` read.

use crate::db::read::{BuildFilter, BuildView, EvaluationView};
use crate::db::{Db, status};
use crate::http::{Request, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The most items one request returns, whatever `nr` says.
pub const MAX_NR: u32 = 1000;

const JSON: &str = "application/json";

/// Answers a JSON API request.  Build logs (`/build/ID/log/raw`) are not
/// JSON and are answered by `buildlog::serve`.
pub fn respond(db: &Db, req: &Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = error(405, &format!("Method {} not allowed.", req.method));
        r.headers.push(("Allow", "GET, HEAD".into()));
        return r;
    }
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let result = match segs.as_slice() {
        ["jobsets"] | ["specifications"] => specifications(db),
        ["build", id] => build(db, id),
        ["api", "latestbuilds"] | ["api", "queue"] => build_listing(db, req),
        ["api", "evaluations"] => evaluations(db, req),
        ["api", "jobs", "history"] => history::jobs_history(db, req),
        _ => Err(error(404, &format!("Resource {} not found.", req.path))),
    };
    result.unwrap_or_else(|r| r)
}

/// A JSON error object, `{"error": message}`.
pub fn error(code: u16, message: &str) -> Response {
    json_response(code, &json!({ "error": message }))
}

fn json_response<T: Serialize>(code: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::new(code, JSON, body),
        Err(e) => Response::new(500, "text/plain", e.to_string().into_bytes()),
    }
}

type Reply = Result<Response, Response>;

fn db_error(e: crate::db::Error) -> Response {
    log::error!("http: {e}");
    error(500, "Database error.")
}

#[derive(Serialize)]
struct SpecJson<'a> {
    name: &'a str,
    url: &'a str,
    #[serde(rename = "load-path")]
    load_path: &'a str,
    file: &'a str,
    proc: &'a str,
    arguments: &'a str,
    branch: Option<&'a str>,
    tag: Option<&'a str>,
    commit: Option<&'a str>,
    #[serde(rename = "no-compile?")]
    no_compile: bool,
}

fn specifications(db: &Db) -> Reply {
    let specs = db.specifications().map_err(db_error)?;
    let out: Vec<SpecJson> = specs
        .iter()
        .map(|s| SpecJson {
            name: &s.name,
            url: &s.url,
            load_path: &s.load_path,
            file: &s.file,
            proc: &s.proc_name,
            arguments: &s.arguments,
            branch: s.branch.as_deref(),
            tag: s.tag.as_deref(),
            commit: s.commit.as_deref(),
            no_compile: s.no_compile,
        })
        .collect();
    Ok(json_response(200, &out))
}

/// Hydra's build object, as Cuirass serves it.
#[derive(Serialize)]
struct BuildJson<'a> {
    id: i64,
    project: &'a str,
    jobset: Option<&'a str>,
    job: &'a str,
    timestamp: i64,
    starttime: i64,
    stoptime: i64,
    derivation: &'a str,
    buildoutputs: Map<String, Value>,
    system: &'a str,
    nixname: &'a str,
    buildstatus: i64,
    busy: i64,
    priority: i64,
    finished: i64,
    buildproducts: Option<()>,
    releasename: Option<()>,
    buildinputs_builds: Option<()>,
    /// Hydra's names for a build's limits, in seconds; null: the daemon's.
    timeout: Option<i64>,
    maxsilent: Option<i64>,
    /// Why the build failed, as the daemon said it: `timed out after 3
    /// seconds`; null otherwise.
    errormsg: Option<&'a str>,
    /// The machine that ran the build (`localhost`, or the build machine
    /// `guix offload` sent it to); null before it started.
    worker: Option<&'a str>,
}

fn build_json(b: &BuildView) -> BuildJson<'_> {
    let finished = status::is_final(b.status);
    BuildJson {
        id: b.id,
        project: &b.specification,
        jobset: b.branch.as_deref(),
        job: &b.job_name,
        timestamp: if finished { b.stoptime } else { b.timestamp },
        starttime: b.starttime,
        stoptime: b.stoptime,
        derivation: &b.derivation,
        buildoutputs: b
            .outputs
            .iter()
            .map(|(name, path)| (name.clone(), json!({ "path": path })))
            .collect(),
        system: &b.system,
        nixname: &b.nix_name,
        buildstatus: b.status,
        busy: (b.status == status::STARTED) as i64,
        priority: b.priority,
        finished: finished as i64,
        buildproducts: None,
        releasename: None,
        buildinputs_builds: None,
        timeout: b.timeout,
        maxsilent: b.max_silent_time,
        errormsg: b.errormsg.as_deref(),
        worker: b.worker.as_deref(),
    }
}

fn parse_id(id: &str) -> Result<i64, Response> {
    match id.parse::<i64>() {
        Ok(n) if n > 0 && id.bytes().all(|c| c.is_ascii_digit()) => Ok(n),
        _ => Err(error(400, &format!("Invalid build ID: {id}."))),
    }
}

/// The build `/build/ID…` names: 400 for a bad ID, 404 for none.
pub fn find_build(db: &Db, id: &str) -> Result<BuildView, Response> {
    let id = parse_id(id)?;
    db.build(id)
        .map_err(db_error)?
        .ok_or_else(|| error(404, &format!("Build with ID {id} doesn't exist.")))
}

fn build(db: &Db, id: &str) -> Reply {
    Ok(json_response(200, &build_json(&find_build(db, id)?)))
}

/// `nr`, required, capped so that a huge value is merely the cap.
fn limit(req: &Request) -> Result<u32, Response> {
    let bad = || error(400, "Parameter nr: a number is required.");
    let nr = req.param("nr").ok_or_else(bad)?;
    if nr.is_empty() || !nr.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(nr.parse::<u64>().unwrap_or(u64::MAX).min(MAX_NR as u64) as u32)
}

/// Status filter values: a number, or Cuirass's names for ranges.
fn status_range(value: &str) -> Option<(i64, i64)> {
    match value {
        "succeeded" => Some((0, 0)),
        "failed" => Some((1, i64::MAX)),
        "done" => Some((0, i64::MAX)),
        n => n.parse().ok().map(|n| (n, n)),
    }
}

fn latest_filter(req: &Request) -> Result<BuildFilter, Response> {
    let text = |k: &str| req.param(k).map(str::to_string);
    let evaluation = match req.param("evaluation") {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| error(400, "Parameter evaluation: a number is required."))?,
        ),
    };
    let status = match req.param("status") {
        None => None,
        Some(v) => Some(status_range(v).ok_or_else(|| {
            error(
                400,
                "Parameter status: a number, succeeded, failed or done is required.",
            )
        })?),
    };
    Ok(BuildFilter {
        specification: text("project"),
        branch: text("jobset"),
        job: text("job"),
        system: text("system"),
        evaluation,
        status,
        after: None,
    })
}

/// Build listings are answered at most this many builds per loop turn, so
/// that a large `nr` never holds up the other clients for long.
pub const PAGE: u32 = 100;

enum Listing {
    Latest(BuildFilter),
    /// The (status, timestamp, id) of the last build of the previous page.
    Queue(Option<(i64, i64, i64)>),
}

/// A build listing being answered a page at a time: each page continues
/// after the last build of the one before (keyset pagination), so every
/// page costs the same, and the JSON array grows until the last.
pub struct Pager {
    listing: Listing,
    remaining: u32,
    body: Vec<u8>,
    empty: bool,
}

impl Pager {
    /// The pager for `req` if it asks for a build listing (a bad
    /// parameter is the error response), or None for any other request.
    pub fn for_request(req: &Request) -> Option<Result<Pager, Response>> {
        if req.method != "GET" && req.method != "HEAD" {
            return None;
        }
        let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
        let listing = match segs.as_slice() {
            ["api", "latestbuilds"] => latest_filter(req).map(Listing::Latest),
            ["api", "queue"] => Ok(Listing::Queue(None)),
            _ => return None,
        };
        Some(listing.and_then(|listing| {
            Ok(Pager {
                listing,
                remaining: limit(req)?,
                body: b"[".to_vec(),
                empty: true,
            })
        }))
    }

    /// Adds one page; returns the whole response once it is complete.
    pub fn step(&mut self, db: &Db) -> Option<Response> {
        let n = self.remaining.min(PAGE);
        let page = match &self.listing {
            Listing::Latest(filter) => db.latest_builds(filter, n),
            Listing::Queue(after) => db.queued_builds(n, *after),
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => return Some(db_error(e)),
        };
        for b in &page {
            if !self.empty {
                self.body.push(b',');
            }
            self.empty = false;
            if let Err(e) = serde_json::to_writer(&mut self.body, &build_json(b)) {
                return Some(Response::new(500, "text/plain", e.to_string().into_bytes()));
            }
        }
        self.remaining -= page.len() as u32;
        match (&mut self.listing, page.last()) {
            (Listing::Latest(filter), Some(last)) => filter.after = Some((last.stoptime, last.id)),
            (Listing::Queue(after), Some(last)) => {
                *after = Some((last.status, last.timestamp, last.id))
            }
            (_, None) => {}
        }
        if (page.len() as u32) < n || self.remaining == 0 {
            self.body.push(b']');
            return Some(Response::new(200, JSON, std::mem::take(&mut self.body)));
        }
        None
    }

    /// Every page at once, for callers without a loop to come back from.
    pub fn run(mut self, db: &Db) -> Response {
        loop {
            if let Some(response) = self.step(db) {
                return response;
            }
        }
    }
}

fn build_listing(db: &Db, req: &Request) -> Reply {
    match Pager::for_request(req) {
        Some(Ok(pager)) => Ok(pager.run(db)),
        Some(Err(response)) => Err(response),
        None => Err(error(404, &format!("Resource {} not found.", req.path))),
    }
}

#[derive(Serialize)]
struct CheckoutJson<'a> {
    commit: &'a str,
    input: &'a str,
}

#[derive(Serialize)]
struct EvaluationJson<'a> {
    id: i64,
    specification: &'a str,
    /// 1 while the evaluator is still registering jobs.
    #[serde(rename = "in-progress")]
    in_progress: i64,
    checkouts: [CheckoutJson<'a>; 1],
}

fn evaluations(db: &Db, req: &Request) -> Reply {
    let evals: Vec<EvaluationView> = db.latest_evaluations(limit(req)?).map_err(db_error)?;
    let out: Vec<EvaluationJson> = evals
        .iter()
        .map(|e| EvaluationJson {
            id: e.id,
            specification: &e.specification,
            in_progress: i64::from(e.in_progress),
            checkouts: [CheckoutJson {
                commit: &e.revision,
                input: &e.specification,
            }],
        })
        .collect();
    Ok(json_response(200, &out))
}

mod history;
pub mod machines;
#[cfg(test)]
mod tests;

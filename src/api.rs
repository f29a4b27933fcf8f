//! The HTTP API's routes: a [`Request`] and the database in, a
//! [`Response`] out.  The only module that serializes JSON; field names
//! and types are those of Cuirass and Hydra, which clients such as Guix's
//! `(guix ci)` read.

use crate::db::queue::{Counted, Waiting};
use crate::db::read::{BuildFilter, BuildView, JobFilter, QueueFilter};
use crate::db::{Db, status};
use crate::http::{Request, Response};
use crate::records::{BuildId, EvalId};
use crate::routes::{self, Route};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The most items one request returns, whatever `nr` says.
pub const MAX_NR: u32 = 1000;

const JSON: &str = "application/json";

/// Answers a JSON API request.  Build logs (`/build/ID/log/raw`) are not
/// JSON and are answered by `buildlog::serve`.
pub fn respond(db: &Db, req: &Request) -> Response {
    let not_found = || error(404, &format!("Resource {} not found.", req.path));
    let Some(m) = routes::of(req) else {
        if req.method != "GET" && req.method != "HEAD" {
            let mut r = error(405, &format!("Method {} not allowed.", req.method));
            r.headers.push(("Allow", "GET, HEAD".into()));
            return r;
        }
        return not_found();
    };
    if !routes::methods(m.route)
        .split(", ")
        .any(|method| method == req.method)
    {
        return admin::not_allowed(req, m.route);
    }
    let result = match m.route {
        Route::Jobsets | Route::Specifications => specifications(db),
        Route::BuildOfDerivation => items::build_of_derivation(db, m.arg(0)),
        Route::Build => build(db, m.arg(0)),
        Route::LatestBuilds | Route::Queue | Route::Jobs => build_listing(db, req),
        Route::ApiEvaluation => evaluations::evaluation(db, req),
        Route::ApiEvaluations => evaluations::evaluations(db, req),
        Route::JobsHistory => jobs::jobs_history(db, req),
        Route::Output => items::output(db, m.arg(0)),
        Route::SearchLatest => items::search_latest(db, req, None),
        Route::SearchLatestOfType => items::search_latest(db, req, Some(m.arg(0))),
        Route::BuildAttempts => admin::attempts(db, m.arg(0)),
        // Pages, logs and metrics are the dashboard's (`web`), and so is
        // `/api/machines`, whose "last 24 hours" needs the wall clock that
        // `web`'s context brings.
        Route::Index
        | Route::Jobset
        | Route::Badge
        | Route::Evaluation
        | Route::BuildDetails
        | Route::BuildLog
        | Route::LogOfItem
        | Route::Search
        | Route::Metrics
        | Route::Machines
        | Route::ApiMachines
        | Route::EventsFeed
        | Route::AttemptLog
        | Route::Login
        | Route::Logout => Err(not_found()),
        // Writes are answered by `admin::respond` before this; a method
        // they take never reaches here.
        _ => Err(not_found()),
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
    log::error!(target: crate::logging::HTTP, "http: {e}");
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
    // A record spec answers today's shape, a 2018 one 2018's.
    let out: Vec<Value> = specs
        .iter()
        .map(|s| match &s.record {
            Some(r) => records::record_json(&s.name, r),
            None => serde_json::to_value(SpecJson {
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
            .unwrap_or(Value::Null),
        })
        .collect();
    Ok(json_response(200, &out))
}

/// Hydra's build object, as Cuirass serves it today; `project` stays
/// for 2018's clients.
#[derive(Serialize)]
struct BuildJson<'a> {
    id: BuildId,
    evaluation: EvalId,
    /// The specification's name, both: 2018's `jobset` was its branch,
    /// today's is its name, and today's clients are the ones that read it.
    project: &'a str,
    jobset: &'a str,
    job: &'a str,
    timestamp: i64,
    starttime: i64,
    stoptime: i64,
    derivation: &'a str,
    /// `{"out": {"path": "/gnu/store/…", "available": true}}`: `available`
    /// while cuirass's GC root keeps the output (see `gcroots`).
    buildoutputs: Map<String, Value>,
    system: &'a str,
    nixname: &'a str,
    buildstatus: i64,
    /// One of [`crate::db::read::weather`].
    weather: i64,
    busy: i64,
    priority: i64,
    finished: i64,
    /// `[{"id", "type", "path", "file-size"}]`, the files its spec's
    /// `build-outputs` names (downloadable at `/download/ID`).
    buildproducts: Vec<Value>,
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
    /// Pending builds only: see [`waiting_json`].
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<Value>,
}

fn build_json(b: &BuildView) -> BuildJson<'_> {
    let finished = status::is_final(b.status);
    BuildJson {
        id: b.id,
        evaluation: b.evaluation,
        project: &b.specification,
        jobset: &b.specification,
        job: &b.job_name,
        timestamp: if finished { b.stoptime } else { b.timestamp },
        starttime: b.starttime,
        stoptime: b.stoptime,
        derivation: &b.derivation,
        buildoutputs: b
            .outputs
            .iter()
            .zip(&b.kept_until)
            .map(|((name, path), kept)| {
                (
                    name.clone(),
                    json!({ "path": path, "available": kept.is_some() }),
                )
            })
            .collect(),
        system: &b.system,
        nixname: &b.nix_name,
        buildstatus: b.status.code(),
        weather: b.weather,
        busy: (b.status == status::STARTED) as i64,
        priority: b.priority,
        finished: finished as i64,
        buildproducts: b
            .products
            .iter()
            .map(|p| json!({"id": p.id, "type": p.kind, "path": p.path, "file-size": p.file_size}))
            .collect(),
        releasename: None,
        buildinputs_builds: None,
        timeout: b.timeout,
        maxsilent: b.max_silent_time,
        errormsg: b.errormsg.as_deref(),
        worker: b.worker.as_deref(),
        waiting: b.waiting.as_ref().map(waiting_json),
    }
}

/// Where a pending build stands: `{"reason": "queued", "position": N}`
/// (1 = next to start, started builds included; with `"at_least": true`
/// when more than `POSITION_LIMIT` are ahead), `{"reason": "started"}`,
/// `{"reason": "dependency", "build": ID, "status": S}` (an input's
/// build that must succeed first), or `{"reason": "inactive"}`.
pub fn waiting_json(w: &Waiting) -> Value {
    match w {
        Waiting::Started => json!({ "reason": "started" }),
        Waiting::Queued { position } => json!({ "reason": "queued", "position": position }),
        Waiting::Dependency { input, status } => {
            json!({ "reason": "dependency", "build": input, "status": status })
        }
        Waiting::QueuedBeyond { position } => {
            json!({ "reason": "queued", "position": position, "at_least": true })
        }
        Waiting::Inactive => json!({ "reason": "inactive" }),
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
    db.build(BuildId(id))
        .map_err(db_error)?
        .ok_or_else(|| error(404, &format!("Build with ID {id} doesn't exist.")))
}

fn build(db: &Db, id: &str) -> Reply {
    Ok(json_response(200, &build_json(&find_build(db, id)?)))
}

/// `nr`, required, at most `max`: a larger one is refused rather than
/// cut, so that a client asking for more never takes what it gets for
/// all there is (the dashboard's `page` is refused the same way).
fn limit(req: &Request, max: u32) -> Result<u32, Response> {
    let bad = || error(400, "Parameter nr: a number is required.");
    let nr = req.param("nr").ok_or_else(bad)?;
    if nr.is_empty() || !nr.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    match nr.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(error(
            400,
            &format!("Parameter nr: at most {max} (asked for {nr})."),
        )),
    }
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

/// An integer parameter, if given.
fn number(req: &Request, name: &str) -> Result<Option<i64>, Response> {
    req.param(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| error(400, &format!("Parameter {name}: a number is required.")))
        })
        .transpose()
}

fn latest_filter(req: &Request) -> Result<BuildFilter, Response> {
    let text = |k: &str| req.param(k).map(str::to_string);
    let evaluation = number(req, "evaluation")?;
    let status = match req.param("status") {
        None => None,
        Some(v) => Some(status_range(v).ok_or_else(|| {
            error(
                400,
                "Parameter status: a number, succeeded, failed or done is required.",
            )
        })?),
    };
    // Today's clients name the specification `jobset`; 2018's named it
    // `project`, with `jobset` its branch.  A request that says `project`
    // speaks 2018's language.
    let (specification, branch) = match text("project") {
        Some(project) => (Some(project), text("jobset")),
        None => (text("jobset"), None),
    };
    Ok(BuildFilter {
        specification,
        branch,
        derivation: text("derivation"),
        job: text("job"),
        system: text("system"),
        evaluation: evaluation.map(EvalId),
        status,
        after: None,
        floor: None,
    })
}

/// `/api/queue`'s filters: those of `/api/latestbuilds` that a pending
/// build has (`jobset` names the specification).
fn queue_filter(req: &Request) -> Result<QueueFilter, Response> {
    let text = |k: &str| req.param(k).map(str::to_string);
    Ok(QueueFilter {
        specification: text("jobset"),
        job: text("job"),
        system: text("system"),
        evaluation: number(req, "evaluation")?.map(EvalId),
        derivation: text("derivation"),
    })
}

/// Build listings are answered at most this many builds per loop turn, so
/// that a large `nr` never holds up the other clients for long: with each
/// build's outputs and weather looked up, 100 builds took 1.4 ms on the
/// benchmark's million builds and 3 ms on its ten million (pages read
/// from the OS, not the cache), where a request behind a page of 50
/// waited 2.9 ms.
pub const PAGE: u32 = 20;

/// An `/api/jobs` row is one lookup of its build, where a build has its
/// outputs and weather looked up too: on the benchmark's million builds,
/// 100 jobs took 0.15 ms and 50 builds 0.7 ms.
const JOBS_PAGE: u32 = 500;

enum Listing {
    Latest(BuildFilter),
    /// The (status, rank, id) of the last build of the previous page, and
    /// how far positions were counted.
    Queue(QueueFilter, Option<(i64, i64, BuildId)>, Counted),
    /// Every job of the evaluation: there is no `nr`.
    Jobs(JobFilter),
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
        let listing = match routes::of(req)?.route {
            Route::LatestBuilds => latest_filter(req).map(Listing::Latest),
            Route::Queue => queue_filter(req).map(|f| Listing::Queue(f, None, Counted::default())),
            Route::Jobs => jobs::job_filter(req).map(Listing::Jobs),
            _ => return None,
        };
        Some(listing.and_then(|listing| {
            let remaining = match listing {
                Listing::Jobs(_) => u32::MAX,
                _ => limit(req, MAX_NR)?,
            };
            Ok(Pager {
                listing,
                remaining,
                body: b"[".to_vec(),
                empty: true,
            })
        }))
    }

    fn push<T: Serialize>(&mut self, item: &T) -> Result<(), Response> {
        if !self.empty {
            self.body.push(b',');
        }
        self.empty = false;
        serde_json::to_writer(&mut self.body, item)
            .map_err(|e| Response::new(500, "text/plain", e.to_string().into_bytes()))
    }

    /// Adds one page; returns the whole response once it is complete.
    pub fn step(&mut self, db: &Db) -> Option<Response> {
        let n = match self.listing {
            Listing::Jobs(_) => self.remaining.min(JOBS_PAGE),
            _ => self.remaining.min(PAGE),
        };
        let (got, more) = match self.page(db, n) {
            Ok(got) => got,
            Err(response) => return Some(response),
        };
        self.remaining -= got;
        if !more || self.remaining == 0 {
            self.body.push(b']');
            return Some(Response::new(200, JSON, std::mem::take(&mut self.body)));
        }
        None
    }

    /// Appends up to `n` items after the previous page's last; returns how
    /// many there were and whether more may follow (a filtered walk's page
    /// may end short of `n` with more to come: `db::read::WALK_BUDGET`).
    fn page(&mut self, db: &Db, n: u32) -> Result<(u32, bool), Response> {
        let (builds, more) = match &mut self.listing {
            Listing::Latest(filter) => {
                let page = db.latest_builds_page(filter, n).map_err(db_error)?;
                filter.after = page.next;
                (page.builds, page.next.is_some())
            }
            Listing::Queue(filter, after, counted) => {
                let (page, now_counted) = db
                    .queued_builds(filter, n, *after, *counted)
                    .map_err(db_error)?;
                *counted = now_counted;
                if let Some(last) = page.last() {
                    *after = Some((last.status.code(), last.rank, last.id));
                }
                let more = page.len() as u32 == n;
                (page, more)
            }
            Listing::Jobs(filter) => {
                let page = db.jobs(filter, n).map_err(db_error)?;
                if let Some(last) = page.last() {
                    filter.after = Some(last.key);
                }
                for j in &page {
                    self.push(&jobs::job_json(j))?;
                }
                return Ok((page.len() as u32, page.len() as u32 == n));
            }
        };
        for b in &builds {
            self.push(&build_json(b))?;
        }
        Ok((builds.len() as u32, more))
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

pub mod admin;
#[cfg(test)]
mod admin_tests;
mod evaluations;
pub mod events;
mod items;
mod records;
pub use items::build_of_item;
mod jobs;
pub mod machines;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod today_tests;

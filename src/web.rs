//! The dashboard: server-rendered HTML pages, `/metrics` in Prometheus's
//! text format and SVG badges, in front of the JSON API.  A request in,
//! a response out, like `api`; the wall-clock time the pages show "3
//! minutes ago" against comes in with the request ([`Ctx::now`]), so a
//! page renders the same in a test every time.  Nothing here writes
//! JSON: what is not a page goes on to `api`.

mod badge;
mod machines;
mod metrics;
mod pages;

use crate::api;
use crate::buildlog;
use crate::db::Db;
use crate::http::{Request, Response};
use std::collections::BTreeMap;

pub use metrics::render as render_metrics;

const HTML: &str = "text/html; charset=utf-8";

/// What a route needs beyond the database and the request.
pub struct Ctx<'a> {
    /// Unix time, for relative times.
    pub now: i64,
    /// Where build logs are looked for.
    pub logs: &'a buildlog::Places,
    pub counters: &'a HttpCounters,
}

/// Requests answered, by route pattern and status code.  Patterns are a
/// fixed set and codes a handful, so the map stays small however many
/// different paths clients ask for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HttpCounters {
    counts: BTreeMap<(&'static str, u16), u64>,
}

impl HttpCounters {
    pub fn record(&mut self, route: &'static str, code: u16) {
        *self.counts.entry((route, code)).or_default() += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u16, u64)> + '_ {
        self.counts.iter().map(|(&(r, c), &n)| (r, c, n))
    }
}

/// The pattern of the route a request took, for [`HttpCounters`]: never
/// the raw path, which a client could make unique per request.
pub fn route_pattern(req: &Request) -> &'static str {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] => "/",
        ["jobset", _] => "/jobset/:name",
        ["jobset", _, "badge.svg"] => "/jobset/:name/badge.svg",
        ["eval", _] => "/eval/:id",
        ["build", drv] if drv.ends_with(".drv") => "/build/:derivation",
        ["build", _] => "/build/:id",
        ["build", _, "details"] => "/build/:id/details",
        ["build", _, "log", "raw"] => "/build/:id/log/raw",
        ["search"] => "/search",
        ["metrics"] => "/metrics",
        ["machines"] => "/machines",
        ["api", "machines"] => "/api/machines",
        ["jobsets"] => "/jobsets",
        ["specifications"] => "/specifications",
        ["api", "latestbuilds"] => "/api/latestbuilds",
        ["api", "queue"] => "/api/queue",
        ["api", "evaluations"] => "/api/evaluations",
        ["api", "evaluation"] => "/api/evaluation",
        ["api", "jobs"] => "/api/jobs",
        ["api", "jobs", "history"] => "/api/jobs/history",
        ["output", _] => "/output/:item",
        ["log", _] => "/log/:item",
        ["search", "latest"] => "/search/latest",
        ["search", "latest", _] => "/search/latest/:type",
        _ => "other",
    }
}

/// Answers a request: a page, `/metrics` or a badge, else the JSON API.
pub fn respond(db: &Db, req: &Request, ctx: &Ctx) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return api::respond(db, req);
    }
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let result = match segs.as_slice() {
        [] => pages::index(db, ctx.now),
        ["jobset", name] => pages::jobset(db, req, name, ctx.now),
        ["jobset", name, "badge.svg"] => Ok(badge::badge(db, name)),
        ["eval", id] => pages::evaluation(db, req, id, ctx.now),
        ["build", id, "details"] => pages::build_details(db, id, ctx),
        ["search"] => pages::search(db, req, ctx.now),
        ["metrics"] => Ok(metrics::metrics(db, ctx.counters)),
        ["machines"] => machines::machines(db, ctx.now),
        ["api", "machines"] => Ok(api::machines::machines(db, ctx.now)),
        ["build", _, "log", "raw"] | ["log", _] => Ok(buildlog::serve::whole(db, ctx.logs, req)),
        _ => return api::respond(db, req),
    };
    result.unwrap_or_else(|r| r)
}

type Page = Result<Response, Response>;

fn html(status: u16, body: String) -> Response {
    Response::new(status, HTML, body.into_bytes())
}

/// An error as a page, so that a browser shows a sentence, not JSON.
fn error_page(status: u16, message: &str) -> Response {
    let title = match status {
        404 => "Not found",
        400 => "Bad request",
        _ => "Error",
    };
    let body = format!("<p>{}</p>", crate::html::esc(message));
    html(status, crate::html::page(title, &[], &body))
}

fn db_error(e: crate::db::Error) -> Response {
    log::error!(target: crate::logging::HTTP, "http: {e}");
    error_page(500, "Database error.")
}

#[cfg(test)]
mod tests;

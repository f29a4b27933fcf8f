//! The dashboard: server-rendered HTML pages, `/metrics` in Prometheus's
//! text format and SVG badges, in front of the JSON API.  A request in,
//! a response out, like `api`; the wall-clock time the pages show "3
//! minutes ago" against comes in with the request ([`Ctx::now`]), so a
//! page renders the same in a test every time.  Nothing here writes
//! JSON: what is not a page goes on to `api`.

mod admin;
mod badge;
mod machines;
mod metrics;
mod pages;

use crate::api;
use crate::buildlog;
use crate::db::Db;
use crate::http::{Request, Response};
use crate::routes::{self, Route};
use std::collections::BTreeMap;

pub use admin::{respond_write, session};
pub use metrics::render as render_metrics;

const HTML: &str = "text/html; charset=utf-8";

/// What a route needs beyond the database and the request.
pub struct Ctx<'a> {
    /// Unix time, for relative times.
    pub now: i64,
    /// Where build logs are looked for.
    pub logs: &'a buildlog::Places,
    pub counters: &'a HttpCounters,
    /// The operator's dashboard session, if logged in: pages then show
    /// the action buttons.
    pub session: Option<&'a crate::admin::Session>,
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

/// Answers a request: a page, `/metrics` or a badge, else the JSON API.
pub fn respond(db: &Db, req: &Request, ctx: &Ctx) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return api::respond(db, req);
    }
    let Some(m) = routes::of(req) else {
        return api::respond(db, req);
    };
    let result = match m.route {
        Route::Index => pages::index(db, ctx.now),
        Route::Jobset => pages::jobset(db, req, m.arg(0), ctx),
        Route::Badge => Ok(badge::badge(db, m.arg(0))),
        Route::Evaluation => pages::evaluation(db, req, m.arg(0), ctx),
        Route::Login => Ok(admin::login_page()),
        Route::BuildDetails => pages::build_details(db, m.arg(0), ctx),
        Route::Search => pages::search(db, req, ctx.now),
        Route::Metrics => Ok(metrics::metrics(db, ctx.counters)),
        Route::Machines => machines::machines(db, ctx.now),
        Route::ApiMachines => Ok(api::machines::machines(db, ctx.now)),
        Route::BuildLog | Route::LogOfItem | Route::AttemptLog | Route::Download => {
            Ok(buildlog::serve::whole(db, ctx.logs, req))
        }
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

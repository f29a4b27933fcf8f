//! Builds found by what they made or how people search for them:
//! `/build/NAME.drv`, `/output/ITEM`, `/search/latest`, and the build
//! whose log `/log/ITEM` is
//! (routes of today's Cuirass; ITEM is a store file name, without
//! `/gnu/store/`).

use super::{Reply, build_json, db_error, error, json_response};
use crate::db::Db;
use crate::db::read::{BuildView, SearchQuery};
use crate::drv::STORE_DIR;
use crate::http::{Request, Response};
use serde::Serialize;

/// The most words of a search query matched against job names.
pub const MAX_WORDS: usize = 8;

/// `/gnu/store/ITEM`.  ITEM is one path segment, so it names nothing
/// outside the store; whatever else it holds is only a value to look up.
fn store_item(item: &str) -> String {
    format!("{STORE_DIR}/{item}")
}

/// `/build/NAME.drv`: the latest build of that derivation.
pub(super) fn build_of_derivation(db: &Db, drv: &str) -> Reply {
    let path = store_item(drv);
    let b = db
        .build_of_derivation(&path)
        .map_err(db_error)?
        .ok_or_else(|| error(404, &format!("No build of derivation {path}.")))?;
    Ok(json_response(200, &build_json(&b)))
}

fn find_output(db: &Db, item: &str) -> Result<crate::db::read::OutputView, Response> {
    let path = store_item(item);
    db.output(&path)
        .map_err(db_error)?
        .ok_or_else(|| error(404, &format!("No build made {path}.")))
}

#[derive(Serialize)]
struct OutputJson<'a> {
    /// The output's name, e.g. `out`.
    name: &'a str,
    derivation: &'a str,
    build: super::BuildJson<'a>,
}

/// `/output/ITEM`: `{"name", "derivation", "build": {…}}` of the build
/// that made that store item (a succeeded one if any, else the latest).
pub(super) fn output(db: &Db, item: &str) -> Reply {
    let o = find_output(db, item)?;
    Ok(json_response(
        200,
        &OutputJson {
            name: &o.name,
            derivation: &o.derivation,
            build: build_json(&o.build),
        },
    ))
}

/// The build that made store item ITEM, for `/log/ITEM` (served by
/// `buildlog::serve`); 404 if no build did.
pub fn build_of_item(db: &Db, item: &str) -> Result<BuildView, Response> {
    Ok(find_output(db, item)?.build)
}

/// A search query of today's Cuirass, e.g. `spec:guix system:x86_64-linux
/// status:success hello`: the prefixed terms filter, the other words are
/// substrings of the job name.
pub fn parse_search(text: &str) -> Result<SearchQuery, String> {
    let mut q = SearchQuery::default();
    for term in text.split_whitespace() {
        match term.split_once(':') {
            Some(("spec", name)) => q.specification = Some(name.to_string()),
            Some(("system", system)) => q.system = Some(system.to_string()),
            Some(("status", st)) => {
                q.status = Some(match st {
                    "success" | "succeeded" => (0, 0),
                    "failed" => (1, 3),
                    "pending" => (-3, -1),
                    "canceled" => (4, 4),
                    _ => {
                        return Err(format!(
                            "status:{st}: success, failed, pending or canceled is expected"
                        ));
                    }
                })
            }
            _ => q.words.push(term.to_string()),
        }
    }
    if q.words.len() > MAX_WORDS {
        return Err(format!("at most {MAX_WORDS} words"));
    }
    Ok(q)
}

fn found(location: String) -> Response {
    let mut r = Response::new(302, "text/plain; charset=utf-8", Vec::new());
    r.headers.push(("Location", location));
    r
}

/// `/search/latest?query=Q`: 302 to the page of the newest build that
/// matches; `/search/latest/TYPE?query=Q`: 302 to its build product of
/// that type, which no build has until build products are registered.
pub(super) fn search_latest(db: &Db, req: &Request, kind: Option<&str>) -> Reply {
    let text = req
        .param("query")
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| error(400, "Parameter query: a search query is required."))?;
    let query = parse_search(text).map_err(|e| error(400, &format!("Parameter query: {e}.")))?;
    let b: BuildView = db
        .search_latest(&query)
        .map_err(db_error)?
        .ok_or_else(|| error(404, &format!("No build matches {text}.")))?;
    match kind {
        None => Ok(found(format!("/build/{}/details", b.id))),
        Some(kind) => match b.products.iter().find(|p| p.kind == kind) {
            Some(p) => Ok(found(format!("/download/{}", p.id))),
            None => Err(error(
                404,
                &format!("Build {} has no build product of type {kind}.", b.id),
            )),
        },
    }
}

//! `/api/jobs/history`: how chosen jobs of one specification fared across
//! its latest evaluations, for a client that draws a row of coloured dots.

use super::{Reply, db_error, error, json_response};
use crate::db::Db;
use crate::http::Request;
use serde::Serialize;

/// The most evaluations one request looks back over.
pub const MAX_HISTORY: u32 = 100;
/// The most job names one request asks about.
pub const MAX_NAMES: usize = 50;

#[derive(Serialize)]
struct Point {
    evaluation: i64,
    build: i64,
    status: i64,
}

#[derive(Serialize)]
struct JobHistory {
    name: String,
    history: Vec<Point>,
}

pub(super) fn jobs_history(db: &Db, req: &Request) -> Reply {
    let spec = req
        .param("spec")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| error(400, "Parameter spec: a specification name is required."))?;
    let names: Vec<String> = req
        .param("names")
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(error(
            400,
            "Parameter names: a comma-separated list of job names is required.",
        ));
    }
    if names.len() > MAX_NAMES {
        return Err(error(
            400,
            &format!("Parameter names: at most {MAX_NAMES} job names."),
        ));
    }
    let nr = super::limit(req)?.min(MAX_HISTORY);
    let rows = db.job_history(spec, &names, nr).map_err(db_error)?;
    let out: Vec<JobHistory> = rows
        .into_iter()
        .map(|(name, points)| JobHistory {
            name,
            history: points
                .into_iter()
                .map(|(evaluation, build, status)| Point {
                    evaluation,
                    build,
                    status,
                })
                .collect(),
        })
        .collect();
    Ok(json_response(200, &out))
}

//! An evaluation's jobs (`/api/jobs`, answered a page at a time by
//! [`super::Pager`]) and how chosen jobs of one specification fared across
//! its latest evaluations (`/api/jobs/history`), in the shapes of today's
//! Cuirass that Guix 1.5.0's `evaluation-jobs` and `jobs-history` read.

use super::evaluations::{CheckoutJson, checkouts};
use super::{Reply, Response, client_status, db_error, error, json_response, number};
use crate::db::Db;
use crate::db::read::{JobFilter, JobView};
use crate::http::Request;
use serde::Serialize;

/// The most evaluations one request looks back over.
pub const MAX_HISTORY: u32 = 100;
/// The most job names one request asks about.
pub const MAX_NAMES: usize = 50;

#[derive(Serialize)]
pub(super) struct JobJson<'a> {
    name: &'a str,
    build: i64,
    /// The build's status, as in build objects.
    status: i64,
}

pub(super) fn job_json(j: &JobView) -> JobJson<'_> {
    JobJson {
        name: &j.name,
        build: j.build,
        status: client_status(j.status),
    }
}

/// `names=a,b`: none given is `None`; more than [`MAX_NAMES`] is an error.
fn names(req: &Request, required: bool) -> Result<Option<Vec<String>>, Response> {
    let names: Vec<String> = req
        .param("names")
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() > MAX_NAMES {
        return Err(error(
            400,
            &format!("Parameter names: at most {MAX_NAMES} job names."),
        ));
    }
    if names.is_empty() && required {
        return Err(error(
            400,
            "Parameter names: a comma-separated list of job names is required.",
        ));
    }
    Ok(Some(names).filter(|n| !n.is_empty()))
}

/// `/api/jobs?evaluation=N[&names=a,b][&system=S]`.
pub(super) fn job_filter(req: &Request) -> Result<JobFilter, Response> {
    Ok(JobFilter {
        evaluation: number(req, "evaluation")?
            .ok_or_else(|| error(400, "Parameter evaluation: a number is required."))?,
        names: names(req, false)?,
        system: req.param("system").map(str::to_string),
        after: None,
    })
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    evaluation: i64,
    checkouts: Vec<CheckoutJson<'a>>,
    jobs: Vec<JobJson<'a>>,
}

/// `/api/jobs/history?spec=NAME&names=a,b&nr=N`: the specification's last
/// N evaluations (at most [`MAX_HISTORY`]) that have any of those jobs,
/// newest first, each `{"evaluation", "checkouts", "jobs": [{"name",
/// "build", "status"}]}`.
pub(super) fn jobs_history(db: &Db, req: &Request) -> Reply {
    let spec = req
        .param("spec")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| error(400, "Parameter spec: a specification name is required."))?;
    let names = names(req, true)?.unwrap_or_default();
    let nr = super::limit(req)?.min(MAX_HISTORY);
    let rows = db.jobs_history(spec, &names, nr).map_err(db_error)?;
    let out: Vec<HistoryJson> = rows
        .iter()
        .map(|(eval, jobs)| HistoryJson {
            evaluation: eval.id,
            checkouts: checkouts(eval),
            jobs: jobs.iter().map(job_json).collect(),
        })
        .collect();
    Ok(json_response(200, &out))
}

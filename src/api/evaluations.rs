//! Evaluation objects: `/api/evaluation?id=N` and
//! `/api/evaluations?nr=N[&spec=NAME]`, read by both generations of Guix's
//! `(guix ci)`.

use super::{Reply, db_error, error, json_response, limit, number};
use crate::db::Db;
use crate::db::read::EvaluationView;
use crate::http::Request;
use serde::Serialize;

/// One checkout of an evaluation: one per channel as recorded, or for an
/// evaluation made before checkouts were recorded (a 2018 database), the
/// specification's repository at the evaluated commit, whose channel is
/// named after the specification.
#[derive(Serialize)]
pub(super) struct CheckoutJson<'a> {
    commit: &'a str,
    /// Today's name of the channel (Guix 1.5.0 reads it).
    channel: &'a str,
    /// 2018's name of the same thing (Guix 1.2.0 reads it).
    input: &'a str,
    /// Where cuirass checked it out (today's Cuirass gives a store
    /// directory; ours is the cache, which keeps only the latest commit
    /// of each channel); null when not recorded.  A `guix` channel left
    /// to `guix time-machine` has an empty commit and directory.
    directory: Option<&'a str>,
}

pub(super) fn checkouts(e: &EvaluationView) -> Vec<CheckoutJson<'_>> {
    if e.checkouts.is_empty() {
        return vec![CheckoutJson {
            commit: &e.revision,
            channel: &e.specification,
            input: &e.specification,
            directory: None,
        }];
    }
    e.checkouts
        .iter()
        .map(|c| CheckoutJson {
            commit: &c.commit,
            channel: &c.channel,
            input: &c.channel,
            directory: Some(&c.directory),
        })
        .collect()
}

/// Today's evaluation object plus 2018's `in-progress`.
#[derive(Serialize)]
struct EvaluationJson<'a> {
    id: i64,
    specification: &'a str,
    /// −1 started, 0 succeeded, 1 failed (2 aborted, which cuirass never
    /// records).
    status: i64,
    /// Why it failed, when it did: the evaluator's error or what cuirass
    /// refused in its output.
    error: Option<&'a str>,
    /// 1 while the evaluator is still registering jobs, else 0.
    #[serde(rename = "in-progress")]
    in_progress: i64,
    /// When it began, when its commit was checked out, when it ended
    /// (Unix seconds; 0: unknown or not yet).  Cuirass begins an
    /// evaluation once its checkout is there, so the first two agree.
    timestamp: i64,
    checkouttime: i64,
    evaltime: i64,
    checkouts: Vec<CheckoutJson<'a>>,
}

fn evaluation_json(e: &EvaluationView) -> EvaluationJson<'_> {
    EvaluationJson {
        id: e.id,
        specification: &e.specification,
        status: e.status,
        error: e.error.as_deref(),
        in_progress: i64::from(e.in_progress()),
        timestamp: e.timestamp,
        checkouttime: e.timestamp,
        evaltime: e.evaltime,
        checkouts: checkouts(e),
    }
}

/// `/api/evaluation?id=N`: one evaluation; 404 if there is none.
pub(super) fn evaluation(db: &Db, req: &Request) -> Reply {
    let id = number(req, "id")?.ok_or_else(|| error(400, "Parameter id: a number is required."))?;
    let e = db
        .evaluation_view(id)
        .map_err(db_error)?
        .ok_or_else(|| error(404, &format!("Evaluation with ID {id} doesn't exist.")))?;
    Ok(json_response(200, &evaluation_json(&e)))
}

/// `/api/evaluations?nr=N[&spec=NAME]`: the latest evaluations, of one
/// specification or of all, newest first.
pub(super) fn evaluations(db: &Db, req: &Request) -> Reply {
    let evals = db
        .latest_evaluations(limit(req)?, req.param("spec"))
        .map_err(db_error)?;
    let out: Vec<EvaluationJson> = evals.iter().map(evaluation_json).collect();
    Ok(json_response(200, &out))
}

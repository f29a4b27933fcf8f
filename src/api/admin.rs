//! The operators' actions and the triggers over HTTP: who may, what the
//! request body says, the action's transaction, its log line, and the
//! JSON answer.  A request and the server's [`Auth`] in, a response and
//! the [`Effect`]s for the event loop out.
//!
//! Requests carry JSON (`Content-Type: application/json`, or an empty
//! body) from API clients, or a form (`application/x-www-form-urlencoded`)
//! from the dashboard's buttons, which is answered with a redirect to the
//! page named by its `next` field.

use super::{Reply, db_error, error, json_response, parse_id};
use crate::admin::webhook::{self, Forge};
use crate::admin::{Auth, Effect, Who};
use crate::db::Db;
use crate::db::admin::{ActionError, Restarted};
use crate::http::{Request, Response};
use crate::logging::ADMIN;
use crate::records::{BuildId, EvalId};
use crate::routes::{self, Route};
use crate::spec::Specification;
use serde_json::{Value, json};
use std::time::Instant;

/// The clock, as the shell hands it down.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub now: Instant,
    /// Unix seconds, for the database.
    pub unix: i64,
}

/// A request body, as the actions read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    Json(serde_json::Map<String, Value>),
    Form(Vec<(String, String)>),
}

impl Body {
    /// Reads `req`'s body by its content type.  Errors: JSON that is not
    /// an object, a form that is not URL-encoded, naming the request.
    pub fn of(req: &Request) -> Result<Body, String> {
        let kind = req.header("content-type").unwrap_or("");
        if kind.starts_with("application/x-www-form-urlencoded") {
            return parse_form(&req.body)
                .map(Body::Form)
                .ok_or_else(|| format!("{}: form body: bad URL encoding", req.path));
        }
        if req.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body::Empty);
        }
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(map)) => Ok(Body::Json(map)),
            Ok(_) => Err(format!("{}: body: a JSON object is required", req.path)),
            Err(e) => Err(format!("{}: body: not JSON: {e}", req.path)),
        }
    }

    /// A string field, if given.  Errors: a JSON field that is not a
    /// string.
    pub fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self {
            Body::Empty => Ok(None),
            Body::Form(pairs) => Ok(pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())),
            Body::Json(map) => match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("field {name:?}: a string is required")),
            },
        }
    }

    fn is_form(&self) -> bool {
        matches!(self, Body::Form(_))
    }
}

/// `a=1&b=%20x+y` pairs; `+` is a space here (the HTML form encoding).
pub fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let decode = |s: &str| crate::http::percent_decode(&s.replace('+', " "));
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// What an action produced: its answer and what the loop must do.
pub type Outcome = (Response, Vec<Effect>);

/// Answers a POST (or any request to a write route); `None` for a route
/// that is not an action or a trigger (the dashboard's log-in is `web`'s).
pub fn respond(db: &mut Db, req: &Request, auth: &mut Auth, now: Now) -> Option<Outcome> {
    let m = routes::of(req)?;
    let writes = routes::is_action(m.route) || routes::is_trigger(m.route);
    if !writes {
        return None;
    }
    if req.method != "POST" {
        return Some((not_allowed(req, m.route), Vec::new()));
    }
    let mut effects = Vec::new();
    let result = match m.route {
        Route::HookEvaluate => hook_evaluate(db, req, auth, m.arg(0), now, &mut effects),
        Route::PushGitHub => push(db, req, auth, Forge::GitHub, now, &mut effects),
        Route::PushGitea => push(db, req, auth, Forge::Gitea, now, &mut effects),
        Route::PushGitLab => push(db, req, auth, Forge::GitLab, now, &mut effects),
        route => action(db, req, auth, route, m.arg(0), now, &mut effects),
    };
    let response = result.unwrap_or_else(|r| r);
    if response.status >= 400 {
        effects.clear();
    }
    Some((response, effects))
}

/// 405 naming the methods the route takes.
pub fn not_allowed(req: &Request, route: Route) -> Response {
    let mut r = error(405, &format!("Method {} not allowed.", req.method));
    r.headers.push(("Allow", routes::methods(route).into()));
    r
}

fn action_error(e: ActionError) -> Response {
    match e {
        ActionError::NotFound(m) => error(404, &m),
        ActionError::Conflict(m) => error(409, &m),
        ActionError::Db(e) => db_error(e),
    }
}

/// The operator behind an action request: a token, or a session with its
/// CSRF token in the form.  Errors: 401 without credentials, 403 with
/// wrong ones.
fn operator(req: &Request, body: &Body, auth: &Auth, now: Instant) -> Result<String, Response> {
    match auth.who(req, now) {
        Who::Anonymous => {
            let mut r = error(401, "Authentication required: Authorization: Bearer TOKEN.");
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            Err(r)
        }
        Who::Refused => Err(error(403, "Invalid token or session.")),
        Who::Operator(label) if req.header("authorization").is_some() => Ok(label),
        Who::Operator(label) => {
            // A session's cookie comes with any request the browser makes
            // to us, even from another site's form: only our own pages
            // know the CSRF token.
            let session = crate::admin::cookie(req, crate::admin::SESSION_COOKIE)
                .and_then(|id| auth.session_of(id, now));
            let given = body.text("csrf").ok().flatten().unwrap_or_default();
            match session {
                Some(s) if crate::admin::same_secret(s.csrf.as_bytes(), given.as_bytes()) => {
                    Ok(label)
                }
                _ => Err(error(403, "Missing or wrong CSRF token.")),
            }
        }
    }
}

fn action(
    db: &mut Db,
    req: &Request,
    auth: &mut Auth,
    route: Route,
    arg: &str,
    now: Now,
    effects: &mut Vec<Effect>,
) -> Reply {
    let body = Body::of(req).map_err(|e| error(400, &e))?;
    let who = operator(req, &body, auth, now.now)?;
    let what = format!("{route:?}");
    let result = run(db, &body, route, arg, now, effects);
    // The specification added is named in the body, not the path.
    let named;
    let arg = match (route, body.text("name")) {
        (Route::AddSpec, Ok(Some(name))) => {
            named = name;
            named.as_str()
        }
        _ => arg,
    };
    let outcome = match &result {
        Ok(_) => "done".to_string(),
        Err(r) => format!("refused ({})", r.status),
    };
    log::info!(target: ADMIN, "{who:?} {what} {arg:?}: {outcome}");
    if let Err(e) = db.log_action(&who, &what, arg, &outcome, now.unix) {
        log::error!(target: ADMIN, "{e}");
    }
    let value = result?;
    if body.is_form() {
        let next = body.text("next").ok().flatten();
        return Ok(redirect(next.as_deref()));
    }
    Ok(json_response(200, &value))
}

/// A 303 to `next` when it is a path of ours, else to the index.
pub fn redirect(next: Option<&str>) -> Response {
    let next = next
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains(['\r', '\n']))
        .unwrap_or("/");
    let mut r = Response::new(303, "text/plain", Vec::new());
    r.headers.push(("Location", next.to_string()));
    r
}

fn restarted_json(restarted: &[Restarted], effects: &mut Vec<Effect>) -> Value {
    let mut specs: Vec<&str> = restarted.iter().map(|r| r.specification.as_str()).collect();
    specs.sort();
    specs.dedup();
    for spec in specs {
        effects.push(Effect::Requeue { spec: spec.into() });
    }
    for r in restarted {
        effects.push(Effect::KeepLog {
            build: r.build,
            attempt: r.attempt,
        });
    }
    json!({
        "restarted": restarted
            .iter()
            .map(|r| json!({"build": r.build, "attempt": r.attempt + 1}))
            .collect::<Vec<_>>()
    })
}

fn run(
    db: &mut Db,
    body: &Body,
    route: Route,
    arg: &str,
    now: Now,
    effects: &mut Vec<Effect>,
) -> Result<Value, Response> {
    let id = || parse_id(arg);
    let requeue = |spec: String| Effect::Requeue { spec };
    match route {
        Route::RestartBuild => {
            let restarted = db.restart_build(BuildId(id()?)).map_err(action_error)?;
            Ok(restarted_json(&restarted, effects))
        }
        Route::RestartEvaluation => {
            let restarted = db
                .restart_failed_builds(EvalId(id()?))
                .map_err(action_error)?;
            Ok(restarted_json(&restarted, effects))
        }
        Route::CancelBuild => {
            let c = db
                .cancel_build(BuildId(id()?), now.unix)
                .map_err(action_error)?;
            effects.push(requeue(c.specification));
            Ok(json!({ "canceled": c.builds }))
        }
        Route::CancelEvaluation => {
            let c = db
                .cancel_evaluation(EvalId(id()?), now.unix)
                .map_err(action_error)?;
            effects.push(requeue(c.specification));
            Ok(json!({ "canceled": c.builds }))
        }
        Route::RetryEvaluation => {
            let eval = EvalId(id()?);
            let (spec, commit) = db.evaluation_commit(eval).map_err(action_error)?;
            active_spec(db, &spec)?;
            effects.push(Effect::Trigger {
                spec: spec.clone(),
                commit: Some(commit.clone()),
            });
            Ok(json!({ "evaluation": eval, "specification": spec, "commit": commit }))
        }
        Route::TriggerSpec => {
            active_spec(db, arg)?;
            effects.push(Effect::Trigger {
                spec: arg.into(),
                commit: None,
            });
            Ok(json!({ "triggered": [arg] }))
        }
        Route::DeactivateSpec | Route::ReactivateSpec => {
            let active = route == Route::ReactivateSpec;
            db.set_specification_active(arg, active)
                .map_err(action_error)?;
            match active {
                true => effects.push(Effect::SpecChanged(Box::new(spec_named(db, arg)?))),
                false => effects.push(Effect::SpecStopped { spec: arg.into() }),
            }
            Ok(json!({ "specification": arg, "active": active }))
        }
        Route::DeleteSpec => {
            let confirm = body.text("confirm").map_err(|e| error(400, &e))?;
            if confirm.as_deref() != Some(arg) {
                return Err(error(
                    400,
                    &format!(
                        "field \"confirm\": must be the specification's name, {arg:?}, to delete it and its history"
                    ),
                ));
            }
            let builds = db.delete_specification(arg).map_err(action_error)?;
            effects.push(Effect::SpecDeleted { spec: arg.into() });
            // The builds go in the background, a chunk per loop turn.
            Ok(json!({ "deleted": arg, "builds": builds }))
        }
        Route::AddSpec | Route::EditSpec => {
            let name = match route {
                Route::AddSpec => body
                    .text("name")
                    .map_err(|e| error(400, &e))?
                    .ok_or_else(|| error(400, "field \"name\": required"))?,
                _ => arg.to_string(),
            };
            let exists = db.specification_active(&name).map_err(db_error)?;
            match (route, exists) {
                (Route::AddSpec, Some(_)) => {
                    return Err(error(
                        409,
                        &format!("Specification {name:?} exists; edit it."),
                    ));
                }
                (Route::EditSpec, None) => {
                    return Err(error(404, &format!("Specification {name:?} not found.")));
                }
                _ => {}
            }
            let old = match exists {
                Some(_) => Some(spec_named(db, &name)?),
                None => None,
            };
            let spec = spec_of_body(body, &name, old).map_err(|e| error(400, &e))?;
            db.add_specifications(std::slice::from_ref(&spec))
                .map_err(db_error)?;
            if exists != Some(false) {
                effects.push(Effect::SpecChanged(Box::new(spec)));
            }
            Ok(json!({ "specification": name }))
        }
        _ => Err(error(404, "Not an action.")),
    }
}

fn spec_named(db: &Db, name: &str) -> Result<Specification, Response> {
    db.specifications()
        .map_err(db_error)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| error(404, &format!("Specification {name:?} not found.")))
}

/// 404 for no such spec, 409 for an inactive one.
fn active_spec(db: &Db, name: &str) -> Result<(), Response> {
    match db.specification_active(name).map_err(db_error)? {
        None => Err(error(404, &format!("Specification {name:?} not found."))),
        Some(false) => Err(error(409, &format!("Specification {name:?} is inactive."))),
        Some(true) => Ok(()),
    }
}

/// A specification from an add or edit request's fields (Cuirass's JSON
/// names: `url`, `branch`, `tag`, `commit`, `load-path`, `file`, `proc`,
/// `arguments`, `no-compile?`), over `old`'s values for an edit.  Errors
/// name the field.
pub fn spec_of_body(
    body: &Body,
    name: &str,
    old: Option<Specification>,
) -> Result<Specification, String> {
    crate::spec::check_name(name).map_err(|why| format!("field \"name\": {why}"))?;
    let mut spec = old.unwrap_or_else(|| Specification::new(name, "", "", ""));
    let text = |k: &str| body.text(k);
    if let Some(v) = text("url")? {
        spec.url = v;
    }
    if let Some(v) = text("load-path")? {
        spec.load_path = v;
    }
    if let Some(v) = text("file")? {
        spec.file = v;
    }
    if let Some(v) = text("proc")? {
        spec.proc_name = v;
    }
    if let Some(v) = text("arguments")? {
        match crate::sexp::parse_all(&v) {
            Ok(data) if data.len() == 1 => {}
            Ok(_) => return Err("field \"arguments\": one S-expression is required".into()),
            Err(e) => return Err(format!("field \"arguments\": {e}")),
        }
        spec.arguments = v;
    }
    for (key, slot) in [
        ("branch", &mut spec.branch),
        ("tag", &mut spec.tag),
        ("commit", &mut spec.commit),
    ] {
        if let Some(v) = text(key)? {
            *slot = Some(v).filter(|v| !v.is_empty());
        }
    }
    if let Body::Json(map) = body
        && let Some(v) = map.get("no-compile?")
    {
        spec.no_compile = v
            .as_bool()
            .ok_or("field \"no-compile?\": true or false is required")?;
    }
    for (key, value) in [
        ("url", &spec.url),
        ("file", &spec.file),
        ("proc", &spec.proc_name),
    ] {
        if value.is_empty() {
            return Err(format!("field {key:?}: required"));
        }
    }
    Ok(spec)
}

/// `POST /jobset/NAME/hook/evaluate`: evaluate NAME now.  Open to anyone,
/// as in today's Cuirass, but [`crate::admin::TRIGGERS_PER_WINDOW`] per
/// window per specification (then 429); a wrong token is still 403.
fn hook_evaluate(
    db: &mut Db,
    req: &Request,
    auth: &mut Auth,
    name: &str,
    now: Now,
    effects: &mut Vec<Effect>,
) -> Reply {
    if auth.who(req, now.now) == Who::Refused {
        return Err(error(403, "Invalid token or session."));
    }
    active_spec(db, name)?;
    if !auth.allow_trigger(name, now.now) {
        log::warn!(target: ADMIN, "spec={name:?} trigger refused: rate limit");
        return Err(error(
            429,
            &format!(
                "Specification {name:?} was triggered {} times in the last {} s.",
                crate::admin::TRIGGERS_PER_WINDOW,
                crate::admin::TRIGGER_WINDOW.as_secs()
            ),
        ));
    }
    log::info!(target: ADMIN, "spec={name:?} triggered by the hook");
    effects.push(Effect::Trigger {
        spec: name.into(),
        commit: None,
    });
    Ok(json_response(200, &json!({ "triggered": [name] })))
}

/// A forge's push webhook: the signature, then every active
/// specification whose repository is the pushed one, and whose branch it
/// is when the payload's `ref` names a branch, is triggered (those over
/// the rate limit are listed apart).
fn push(
    db: &mut Db,
    req: &Request,
    auth: &mut Auth,
    forge: Forge,
    now: Now,
    effects: &mut Vec<Effect>,
) -> Reply {
    let Some(secret) = auth.webhook_secret.as_deref() else {
        return Err(error(403, "Webhooks are disabled: no --webhook-secret."));
    };
    if !webhook::verify(forge, secret, req) {
        log::warn!(target: ADMIN, "{forge:?} webhook refused: bad signature");
        return Err(error(401, "Bad or missing webhook signature."));
    }
    let event = ["x-github-event", "x-forgejo-event", "x-gitea-event"]
        .iter()
        .find_map(|h| req.header(h));
    if event == Some("ping") {
        return Ok(json_response(200, &json!({ "triggered": [] })));
    }
    let payload: Value = serde_json::from_slice(&req.body)
        .map_err(|e| error(400, &format!("webhook payload: not JSON: {e}")))?;
    let urls = webhook::pushed_urls(&payload).map_err(|e| error(400, &e))?;
    let branch = payload
        .get("ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("refs/heads/"));
    let inactive = db.inactive_specifications().map_err(db_error)?;
    let mut triggered = Vec::new();
    let mut limited = Vec::new();
    for spec in db.specifications().map_err(db_error)? {
        if inactive.contains(&spec.name) || !urls.contains(&webhook::normalize_url(&spec.url)) {
            continue;
        }
        // A push to another branch changes nothing a spec that follows
        // one branch would see.
        if let (Some(pushed), Some(followed)) = (branch, spec.branch.as_deref())
            && spec.tag.is_none()
            && spec.commit.is_none()
            && pushed != followed
        {
            continue;
        }
        match auth.allow_trigger(&spec.name, now.now) {
            true => {
                effects.push(Effect::Trigger {
                    spec: spec.name.clone(),
                    commit: None,
                });
                triggered.push(spec.name);
            }
            false => limited.push(spec.name),
        }
    }
    log::info!(target: ADMIN, "{forge:?} webhook for {urls:?}: triggered {triggered:?}, rate-limited {limited:?}");
    Ok(json_response(
        200,
        &json!({ "triggered": triggered, "rate-limited": limited }),
    ))
}

/// `GET /build/ID/attempts`: a build's earlier runs, oldest first, each
/// `{"attempt", "buildstatus", "starttime", "stoptime", "errormsg", "log"}`
/// (`log`: the URL of its log).
pub fn attempts(db: &Db, id: &str) -> Reply {
    let b = super::find_build(db, id)?;
    let attempts = db.build_attempts(b.id).map_err(db_error)?;
    let out: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt,
                "buildstatus": a.status.code(),
                "starttime": a.starttime,
                "stoptime": a.stoptime,
                "errormsg": a.errormsg,
                "log": format!("/build/{}/attempt/{}/log/raw", b.id, a.attempt),
            })
        })
        .collect();
    Ok(json_response(200, &out))
}

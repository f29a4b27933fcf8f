//! The dashboard's operators: a log-in form that opens a session with a
//! token (an `HttpOnly`, `SameSite=Strict` cookie, `Secure` with
//! `--secure-cookies`), log-out, and the action buttons pages show to a
//! logged-in operator: POST forms that carry the session's CSRF token and
//! the page to come back to.  Anonymous visitors see no button.

use super::{Ctx, html};
use crate::admin::{Auth, SESSION_COOKIE, Session, cookie, session_cookie};
use crate::api::admin::{Body, Now, Outcome, redirect};
use crate::db::Db;
use crate::html::esc;
use crate::http::{Request, Response};
use crate::logging::ADMIN;
use crate::routes::{self, Route};

/// The session a page is shown to, if its cookie names a live one.
pub fn session<'a>(auth: &'a Auth, req: &Request, now: std::time::Instant) -> Option<&'a Session> {
    auth.session_of(cookie(req, SESSION_COOKIE)?, now)
}

/// Answers a request that may write: log-in and log-out here, the
/// actions and triggers in `api::admin`; None for anything else.
pub fn respond_write(
    db: &mut Db,
    req: &Request,
    auth: &mut Auth,
    now: Now,
    random: &dyn Fn() -> [u8; 64],
) -> Option<Outcome> {
    let m = routes::of(req)?;
    match (m.route, req.method.as_str()) {
        (Route::Login, "POST") => Some((login(req, auth, now, random), Vec::new())),
        (Route::Logout, "POST") => {
            if let Some(id) = cookie(req, SESSION_COOKIE) {
                auth.close_session(id);
            }
            let mut r = redirect(Some("/"));
            r.headers
                .push(("Set-Cookie", session_cookie(None, auth.secure_cookies)));
            Some((r, Vec::new()))
        }
        (Route::Logout, _) => Some((crate::api::admin::not_allowed(req, m.route), Vec::new())),
        _ => {
            let (response, effects) = crate::api::admin::respond(db, req, auth, now)?;
            Some((as_page_for_forms(req, response), effects))
        }
    }
}

/// A refused button (its form's request) gets a page saying why, not
/// the API's JSON.
fn as_page_for_forms(req: &Request, response: Response) -> Response {
    let form = req
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form || response.status < 400 {
        return response;
    }
    let message = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| "The action was refused.".into());
    let mut page = super::error_page(response.status, &message);
    page.headers = response.headers;
    page
}

fn login(req: &Request, auth: &mut Auth, now: Now, random: &dyn Fn() -> [u8; 64]) -> Response {
    let form = Body::of(req).ok();
    let field = |k: &str| form.as_ref().and_then(|b| b.text(k).ok().flatten());
    let token = field("token").unwrap_or_default();
    let Some(label) = auth.tokens.check(token.trim()).map(str::to_string) else {
        log::warn!(target: ADMIN, "dashboard log-in refused");
        return html(403, login_form("Wrong token."));
    };
    let (id, _csrf) = auth.open_session(&label, random(), now.now);
    log::info!(target: ADMIN, "{label:?} logged in to the dashboard");
    let mut r = redirect(field("next").as_deref());
    r.headers
        .push(("Set-Cookie", session_cookie(Some(&id), auth.secure_cookies)));
    r
}

/// `GET /login`: the form.
pub fn login_page() -> Response {
    html(200, login_form(""))
}

fn login_form(error: &str) -> String {
    let error = match error.is_empty() {
        true => String::new(),
        false => format!("<p class=\"st st-failed\">{}</p>", esc(error)),
    };
    crate::html::page(
        "Log in",
        &[],
        &format!(
            "{error}<form method=\"post\" action=\"/login\">\
             <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\"></label> \
             <button type=\"submit\">Log in</button></form>"
        ),
    )
}

/// One action button: a POST form to `action` carrying the CSRF token and
/// `next`, the page to come back to; `confirm` adds the field that a
/// deletion needs.
fn button(s: &Session, action: &str, label: &str, next: &str, confirm: Option<&str>) -> String {
    let confirm = confirm.map_or(String::new(), |c| {
        format!(
            "<input type=\"hidden\" name=\"confirm\" value=\"{}\">",
            esc(c)
        )
    });
    format!(
        "<form class=\"action\" method=\"post\" action=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">{confirm}\
         <button type=\"submit\">{}</button></form>",
        esc(action),
        esc(&s.csrf),
        esc(next),
        esc(label)
    )
}

/// The buttons of a build's page, or nothing for a visitor.
pub fn build_buttons(ctx: &Ctx, id: i64, status: i64) -> String {
    let Some(s) = ctx.session else {
        return String::new();
    };
    let next = format!("/build/{id}/details");
    let mut out = String::from("<div class=\"actions\">");
    if crate::db::status::is_final(status) {
        out += &button(
            s,
            &format!("/admin/build/{id}/restart"),
            "Restart",
            &next,
            None,
        );
    }
    if status == crate::db::status::SCHEDULED {
        out += &button(
            s,
            &format!("/admin/build/{id}/cancel"),
            "Cancel",
            &next,
            None,
        );
    }
    out + &logout(s) + "</div>"
}

/// The buttons of an evaluation's page.
pub fn evaluation_buttons(ctx: &Ctx, id: i64) -> String {
    let Some(s) = ctx.session else {
        return String::new();
    };
    let next = format!("/eval/{id}");
    let b = |what: &str, label: &str| {
        button(
            s,
            &format!("/admin/evaluation/{id}/{what}"),
            label,
            &next,
            None,
        )
    };
    format!(
        "<div class=\"actions\">{}{}{}{}</div>",
        b("restart", "Restart failed builds"),
        b("cancel", "Cancel pending builds"),
        b("retry", "Evaluate again"),
        logout(s)
    )
}

/// The buttons of a specification's page.
pub fn spec_buttons(ctx: &Ctx, name: &str, active: bool) -> String {
    let Some(s) = ctx.session else {
        return String::new();
    };
    let next = format!("/jobset/{}", crate::html::url(name));
    let action = |what: &str| format!("/admin/specification/{}/{what}", crate::html::url(name));
    let mut out = String::from("<div class=\"actions\">");
    if active {
        out += &button(s, &action("trigger"), "Evaluate now", &next, None);
        out += &button(s, &action("deactivate"), "Deactivate", &next, None);
    } else {
        out += &button(s, &action("reactivate"), "Reactivate", &next, None);
    }
    out += &button(
        s,
        &action("delete"),
        "Delete with its history",
        "/",
        Some(name),
    );
    out + &logout(s) + "</div>"
}

fn logout(s: &Session) -> String {
    format!(
        "<form class=\"action\" method=\"post\" action=\"/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Log out ({})</button></form>",
        esc(&s.csrf),
        esc(&s.label)
    )
}

//! The HTML pages: specifications, a specification's evaluations, an
//! evaluation's builds, one build, and a search over job names.  Each
//! links to the next, spec → evaluation → build → log, and back by its
//! breadcrumbs.

use super::{Ctx, Page, db_error, error_page, html};
use crate::db::Db;
use crate::db::dashboard::{Counts, EvalBuildFilter, EvalSummary};
use crate::db::read::{BuildView, weather};
use crate::db::{eval_status, status};
use crate::html::{self, esc, url};
use crate::http::Request;
use crate::records::{BuildId, EvalId};

/// Evaluations on one page of a specification.
pub const EVALS_PER_PAGE: u32 = 20;
/// Builds on one page of an evaluation.
pub const BUILDS_PER_PAGE: u32 = 50;
/// The most results a search shows.
pub const MAX_SEARCH: u32 = 100;
/// Lines of the log shown on a build's page.
pub const LOG_TAIL: usize = crate::buildlog::TAIL_LINES;
/// Beyond this page, OFFSET walks too far to be worth it.
const MAX_PAGE: u32 = 10_000;

fn crumb(href: String, label: impl Into<String>) -> (String, String) {
    (href, label.into())
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// `?page=N`, 1 when absent.
fn page_param(req: &Request) -> Result<u32, super::Response> {
    match req.param("page") {
        None | Some("") => Ok(1),
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(error_page(
                400,
                &format!("Parameter page: a number from 1 to {MAX_PAGE} is required."),
            )),
        },
    }
}

fn eval_status_label(e: &EvalSummary) -> String {
    match e.status {
        eval_status::IN_PROGRESS => "<span class=\"st st-started\">evaluating</span>".into(),
        eval_status::FAILED => "<span class=\"st st-failed\">evaluation failed</span>".into(),
        _ => "<span class=\"st st-succeeded\">evaluated</span>".into(),
    }
}

/// The three counts, each linking to the builds it counts.
fn counts_cells(eval: EvalId, c: &Counts) -> String {
    format!(
        "<td><a class=\"n-ok\" href=\"/eval/{eval}?status=succeeded\">{}</a></td>\
         <td><a class=\"n-fail\" href=\"/eval/{eval}?status=failed\">{}</a></td>\
         <td><a class=\"n-pending\" href=\"/eval/{eval}?status=pending\">{}</a></td>",
        c.succeeded, c.failed, c.pending
    )
}

pub fn index(db: &Db, now: i64) -> Page {
    let specs = db.spec_summaries().map_err(db_error)?;
    let rows: Vec<String> = specs
        .iter()
        .map(|s| {
            let name = format!(
                "<td><a href=\"/jobset/{}\">{}</a></td><td class=\"hide-s\">{}</td>",
                url(&s.name),
                esc(&s.name),
                esc(s.branch.as_deref().unwrap_or("—"))
            );
            match &s.latest {
                None => format!(
                    "<tr>{name}<td colspan=\"6\" class=\"dim\">no evaluation yet</td></tr>\n"
                ),
                Some(e) => format!(
                    "<tr>{name}<td><a href=\"/eval/{id}\">#{id}</a> {}</td>\
                     <td><code>{}</code></td>{}<td>{}</td></tr>\n",
                    eval_status_label(e),
                    esc(short(&e.revision)),
                    counts_cells(e.id, &e.counts),
                    html::time(now, e.timestamp),
                    id = e.id,
                ),
            }
        })
        .collect();
    let body = html::table(
        &[
            "Specification",
            "~Branch",
            "Latest evaluation",
            "Commit",
            "Succeeded",
            "Failed",
            "Pending",
            "When",
        ],
        &rows,
        "No specifications yet: add some with cuirass -S FILE.",
    );
    Ok(html(200, html::page("Specifications", &[], &body)))
}

pub fn jobset(db: &Db, req: &Request, name: &str, ctx: &Ctx) -> Page {
    let now = ctx.now;
    if !db.specification_exists(name).map_err(db_error)? {
        return Err(error_page(404, &format!("No specification named {name}.")));
    }
    let page = page_param(req)?;
    let offset = u64::from(page - 1) * u64::from(EVALS_PER_PAGE);
    let mut evals = db
        .spec_evaluations(name, EVALS_PER_PAGE + 1, offset)
        .map_err(db_error)?;
    let has_next = evals.len() > EVALS_PER_PAGE as usize;
    evals.truncate(EVALS_PER_PAGE as usize);
    let rows: Vec<String> = evals
        .iter()
        .map(|e| {
            let took = match e.evaltime > 0 {
                true => html::duration(e.evaltime - e.timestamp),
                false => "—".into(),
            };
            let error = match &e.error {
                Some(msg) => format!("<br><small class=\"dim\">{}</small>", esc(msg)),
                None => String::new(),
            };
            format!(
                "<tr><td><a href=\"/eval/{id}\">#{id}</a></td><td><code>{}</code></td>\
                 <td>{}{error}</td>{}<td>{}</td><td class=\"hide-s\">{took}</td></tr>\n",
                esc(short(&e.revision)),
                eval_status_label(e),
                counts_cells(e.id, &e.counts),
                html::time(now, e.timestamp),
                id = e.id,
            )
        })
        .collect();
    let link = url(name);
    let body = format!(
        "<p><img src=\"/jobset/{link}/badge.svg\" alt=\"status badge\"></p>{}{}",
        html::table(
            &[
                "Evaluation",
                "Commit",
                "Status",
                "Succeeded",
                "Failed",
                "Pending",
                "When",
                "~Took"
            ],
            &rows,
            "No evaluations on this page."
        ),
        html::pager(page, has_next, |p| format!("/jobset/{link}?page={p}"))
    );
    let active = db.specification_active(name).map_err(db_error)? != Some(false);
    let state = match active {
        true => "",
        false => "<p class=\"st st-canceled\">inactive: not polled</p>",
    };
    let body = format!(
        "{state}{}{body}",
        super::admin::spec_buttons(ctx, name, active)
    );
    Ok(html(200, html::page(name, &[], &body)))
}

/// The filter of builds that are new failures.
const NEWLY_FAILED: &str = "newly-failed";

/// The evaluation page's status filters: (parameter value, status range).
const FILTERS: &[(&str, Option<(i64, i64)>)] = &[
    ("all", None),
    (
        "succeeded",
        Some((status::SUCCEEDED.code(), status::SUCCEEDED.code())),
    ),
    (
        "failed",
        Some((status::FAILED.code(), status::FAILED_OTHER.code())),
    ),
    // Failed builds whose job's previous build succeeded (their weather).
    (
        NEWLY_FAILED,
        Some((status::FAILED.code(), status::FAILED_OTHER.code())),
    ),
    (
        "pending",
        Some((status::SCHEDULED.code(), status::STARTED.code())),
    ),
    (
        "canceled",
        Some((status::CANCELED.code(), status::CANCELED.code())),
    ),
];

/// A build's or an evaluation's id in a page's path: 400 for anything but
/// a positive decimal number.
fn parse_row_id<T: From<i64>>(id: &str) -> Result<T, super::Response> {
    match id.parse::<i64>() {
        Ok(n) if n > 0 && id.bytes().all(|c| c.is_ascii_digit()) => Ok(T::from(n)),
        _ => Err(error_page(400, &format!("Invalid ID: {id}."))),
    }
}

/// A build's job name, and its other names (jobs of the same derivation).
fn job_names(b: &BuildView) -> String {
    match b.other_names.is_empty() {
        true => esc(&b.job_name),
        false => format!(
            "{} <small>(also {})</small>",
            esc(&b.job_name),
            b.other_names
                .iter()
                .map(|n| esc(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn build_row(b: &BuildView, now: i64, with_eval: bool) -> String {
    let finished = status::is_final(b.status);
    let eval = match with_eval {
        true => format!(
            "<td><a href=\"/jobset/{}\">{}</a></td><td><a href=\"/eval/{e}\">#{e}</a></td>",
            url(&b.specification),
            esc(&b.specification),
            e = b.evaluation
        ),
        false => String::new(),
    };
    format!(
        "<tr><td><a href=\"/build/{id}/details\">{id}</a></td><td>{}</td>{eval}<td>{}</td>\
         <td class=\"hide-s\">{}</td><td>{}</td><td class=\"hide-s\">{}</td></tr>\n",
        job_names(b),
        html::status_badge(b.status),
        esc(&b.system),
        html::time(now, if finished { b.stoptime } else { b.timestamp }),
        match finished && b.starttime > 0 {
            true => html::duration(b.stoptime - b.starttime),
            false => "—".into(),
        },
        id = b.id,
    )
}

pub fn evaluation(db: &Db, req: &Request, id: &str, ctx: &Ctx) -> Page {
    let now = ctx.now;
    let id: EvalId = parse_row_id(id)?;
    let eval = db
        .evaluation(id)
        .map_err(db_error)?
        .ok_or_else(|| error_page(404, &format!("No evaluation {id}.")))?;
    let chosen = req.param("status").unwrap_or("all");
    let Some(&(_, range)) = FILTERS.iter().find(|(n, _)| *n == chosen) else {
        return Err(error_page(
            400,
            "Parameter status: all, succeeded, failed, newly-failed, pending or canceled is required.",
        ));
    };
    let job = req.param("job").filter(|j| !j.is_empty());
    let page = page_param(req)?;
    let filter = EvalBuildFilter {
        status: range,
        job: job.map(str::to_string),
        weather: (chosen == NEWLY_FAILED).then_some(weather::NEW_FAILURE),
    };
    let offset = u64::from(page - 1) * u64::from(BUILDS_PER_PAGE);
    let (builds, total) = db
        .evaluation_builds(id, &filter, BUILDS_PER_PAGE, offset)
        .map_err(db_error)?;
    let job_q = job.map(|j| format!("&job={}", url(j))).unwrap_or_default();
    let c = &eval.counts;
    let newly_failed = db.evaluation_new_failures(id).map_err(db_error)?;
    let filters: String = FILTERS
        .iter()
        .map(|(name, _)| {
            let n = match *name {
                "all" => c.total(),
                "succeeded" => c.succeeded,
                "failed" => c.failed,
                NEWLY_FAILED => newly_failed,
                "pending" => c.pending,
                _ => c.canceled,
            };
            format!(
                "<a{} href=\"/eval/{id}?status={name}{}\">{name} ({n})</a>",
                if *name == chosen { " class=\"on\"" } else { "" },
                esc(&job_q)
            )
        })
        .collect();
    let error = match &eval.error {
        Some(msg) => format!("<h2>Evaluation error</h2><pre>{}</pre>", esc(msg)),
        None => String::new(),
    };
    let rows: Vec<String> = builds.iter().map(|b| build_row(b, now, false)).collect();
    // One line per channel when the checkouts were recorded.
    let checkouts = db.checkouts(id).map_err(db_error)?;
    let commits = match checkouts.is_empty() {
        true => format!(
            "<dt>Commit</dt><dd><code>{}</code></dd>",
            esc(&eval.revision)
        ),
        false => {
            let lines: Vec<String> = checkouts
                .iter()
                .map(|c| {
                    let commit = if c.commit.is_empty() {
                        "(left to guix time-machine)"
                    } else {
                        &c.commit
                    };
                    format!("{} <code>{}</code>", esc(&c.channel), esc(commit))
                })
                .collect();
            format!("<dt>Checkouts</dt><dd>{}</dd>", lines.join("<br>"))
        }
    };
    let body = format!(
        "<dl><dt>Specification</dt><dd><a href=\"/jobset/{}\">{}</a></dd>\
         {commits}<dt>Status</dt><dd>{}</dd>\
         <dt>Started</dt><dd>{}</dd><dt>Took</dt><dd>{}</dd></dl>{error}\
         <form class=\"filters\" action=\"/eval/{id}\" method=\"get\">{filters}\
         <input type=\"hidden\" name=\"status\" value=\"{}\">\
         <input type=\"search\" name=\"job\" value=\"{}\" placeholder=\"job name contains\" \
         aria-label=\"job name contains\"><button>Filter</button></form>\
         <p class=\"dim\">{total} matching build{}</p>{}{}",
        url(&eval.specification),
        esc(&eval.specification),
        eval_status_label(&eval),
        html::time(now, eval.timestamp),
        match eval.evaltime > 0 {
            true => html::duration(eval.evaltime - eval.timestamp),
            false => "—".into(),
        },
        esc(chosen),
        esc(job.unwrap_or("")),
        if total == 1 { "" } else { "s" },
        html::table(
            &["Build", "Job", "Status", "~System", "When", "~Took"],
            &rows,
            "No builds match."
        ),
        html::pager(page, (offset + builds.len() as u64) < total as u64, |p| {
            format!("/eval/{id}?status={chosen}{job_q}&page={p}")
        })
    );
    let crumbs = [crumb(
        format!("/jobset/{}", url(&eval.specification)),
        &eval.specification,
    )];
    let body = format!("{}{body}", super::admin::evaluation_buttons(ctx, id));
    Ok(html(
        200,
        html::page(&format!("Evaluation {id}"), &crumbs, &body),
    ))
}

/// The last `n` lines of a log, as text.
pub fn tail(log: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let text = text.trim_end_matches('\n');
    let start = text
        .rmatch_indices('\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    text[start..].to_string()
}

pub fn build_details(db: &Db, id: &str, ctx: &Ctx) -> Page {
    let id: BuildId = parse_row_id(id)?;
    let b = db
        .build(id)
        .map_err(db_error)?
        .ok_or_else(|| error_page(404, &format!("No build {id}.")))?;
    let now = ctx.now;
    let finished = status::is_final(b.status);
    let took = match finished && b.starttime > 0 {
        true => html::duration(b.stoptime - b.starttime),
        false => "—".into(),
    };
    // An output is only said to be there while cuirass's GC root keeps
    // it: past the ttl, `guix gc` may have deleted it.
    let outputs: Vec<String> = b
        .outputs
        .iter()
        .zip(&b.kept_until)
        .map(|((name, path), kept)| {
            let kept = match (kept, b.status) {
                (Some(t), _) => format!("kept until {}", html::utc(*t)),
                (None, status::SUCCEEDED) => "not kept: guix gc may have deleted it".into(),
                (None, _) => "—".into(),
            };
            format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{kept}</td></tr>\n",
                esc(name),
                esc(path)
            )
        })
        .collect();
    // Bytes that are not UTF-8 show as U+FFFD: the page is UTF-8.
    let log = match crate::buildlog::tail_text(ctx.logs, &b, LOG_TAIL) {
        Ok(text) => format!(
            "<p><a href=\"/build/{id}/log/raw\">Full log</a> (last {LOG_TAIL} lines below)</p>\
             <pre>{}</pre>",
            esc(&tail(&text, LOG_TAIL))
        ),
        Err(why) if why == crate::buildlog::NO_LOG => "<p class=\"empty\">No log.</p>".into(),
        Err(why) => format!(
            "<p><a href=\"/build/{id}/log/raw\">Full log</a></p><p class=\"empty\">{}</p>",
            esc(&why)
        ),
    };
    let seconds = |s: Option<i64>| s.map_or("the daemon's".to_string(), |s| format!("{s} s"));
    let limits = format!(
        "<dt>Limits</dt><dd>silent {}, total {}</dd><dt>Priority</dt><dd>{}</dd>",
        seconds(b.max_silent_time),
        seconds(b.timeout),
        b.priority
    );
    let mut reason = b.errormsg.as_deref().map_or(String::new(), |r| {
        format!("<dt>Reason</dt><dd>{}</dd>", esc(r))
    });
    if finished && b.weather != weather::UNKNOWN {
        reason += &format!("<dt>Weather</dt><dd>{}</dd>", weather::name(b.weather));
    }
    if let Some(w) = &b.worker {
        let w = esc(w);
        reason += &format!("<dt>Machine</dt><dd><a href=\"/machines\">{w}</a></dd>");
    }
    if let Some(w) = &b.waiting {
        reason.push_str(&format!("<dt>Waiting</dt><dd>{}</dd>", waiting_html(w)));
    }
    let body = format!(
        "<dl><dt>Job</dt><dd>{}</dd><dt>Status</dt><dd>{}</dd>\
         <dt>Specification</dt><dd><a href=\"/jobset/{}\">{}</a></dd>\
         <dt>Evaluation</dt><dd><a href=\"/eval/{e}\">#{e}</a></dd>\
         <dt>Name</dt><dd>{}</dd><dt>System</dt><dd>{}</dd>\
         <dt>Derivation</dt><dd><code>{}</code></dd>\
         <dt>Queued</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd>\
         <dt>Duration</dt><dd>{took}</dd>{limits}{reason}</dl>\
         <h2>Outputs</h2>{}<h2>Log</h2>{log}{}",
        job_names(&b),
        html::status_badge(b.status),
        url(&b.specification),
        esc(&b.specification),
        esc(&b.nix_name),
        esc(&b.system),
        esc(&b.derivation),
        html::time(now, b.timestamp),
        html::time(now, b.starttime),
        html::time(now, if finished { b.stoptime } else { 0 }),
        html::table(&["Name", "Store path", "GC root"], &outputs, "No outputs."),
        attempts(db, &b, now)?,
        e = b.evaluation,
    );
    let body = format!("{}{body}", super::admin::build_buttons(ctx, id, b.status));
    let crumbs = [
        crumb(
            format!("/jobset/{}", url(&b.specification)),
            &b.specification,
        ),
        crumb(
            format!("/eval/{}", b.evaluation),
            format!("Evaluation {}", b.evaluation),
        ),
    ];
    let mut page = html(
        200,
        html::page(&format!("Build {id}: {}", b.job_name), &crumbs, &body),
    );
    // A running build's tail grows (its live log): browsers reload a
    // page whose answer says `Refresh`, with no script.
    if b.status == status::STARTED {
        page.headers.push(("Refresh", "5".into()));
    }
    Ok(page)
}

pub fn search(db: &Db, req: &Request, now: i64) -> Page {
    let query = req.param("query").unwrap_or("").trim();
    let form = format!(
        "<form class=\"filters\" action=\"/search\" method=\"get\">\
         <input type=\"search\" name=\"query\" value=\"{}\" placeholder=\"job name contains\" \
         aria-label=\"job name contains\"><button>Search</button></form>",
        esc(query)
    );
    if query.is_empty() {
        return Ok(html(200, html::page("Search", &[], &form)));
    }
    let found = db.search_builds(query, MAX_SEARCH).map_err(db_error)?;
    let builds = &found.builds;
    let rows: Vec<String> = builds.iter().map(|b| build_row(b, now, true)).collect();
    let note = if found.stopped_early {
        format!(
            "<p class=\"dim\">Only the {} most recent jobs were searched.</p>",
            crate::db::search::WALK_BUDGET
        )
    } else if builds.len() as u32 >= MAX_SEARCH {
        format!("<p class=\"dim\">The {MAX_SEARCH} most recent builds shown.</p>")
    } else {
        String::new()
    };
    let body = format!(
        "{form}{note}{}",
        html::table(
            &[
                "Build",
                "Job",
                "Specification",
                "Evaluation",
                "Status",
                "~System",
                "When",
                "~Took"
            ],
            &rows,
            "No job matches."
        )
    );
    Ok(html(
        200,
        html::page(&format!("Jobs matching “{query}”"), &[], &body),
    ))
}

/// Where a pending build stands, for its page.
fn waiting_html(w: &crate::db::queue::Waiting) -> String {
    use crate::db::queue::Waiting;
    match w {
        Waiting::Started => "being built".into(),
        Waiting::Queued { position: 1 } => "next to start".into(),
        Waiting::Queued { position } => format!("number {position} in the queue"),
        Waiting::QueuedBeyond { position } => format!("number {position} or later in the queue"),
        Waiting::Dependency { input, status } => format!(
            "for its input, <a href=\"/build/{input}/details\">build {input}</a> ({})",
            html::status_name(*status)
        ),
        Waiting::Inactive => "its specification is inactive".into(),
    }
}

/// A restarted build's earlier runs, each with its log.
fn attempts(db: &Db, b: &BuildView, now: i64) -> Result<String, super::Response> {
    let attempts = db.build_attempts(b.id).map_err(db_error)?;
    if attempts.is_empty() {
        return Ok(String::new());
    }
    let rows: Vec<String> = attempts
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{n}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td><a href=\"/build/{id}/attempt/{n}/log/raw\">log</a></td></tr>\n",
                html::status_badge(a.status),
                html::time(now, a.stoptime),
                esc(a.errormsg.as_deref().unwrap_or("")),
                n = a.attempt,
                id = b.id,
            )
        })
        .collect();
    Ok(format!(
        "<h2>Earlier attempts</h2>{}",
        html::table(
            &["Attempt", "Status", "Finished", "Reason", "Log"],
            &rows,
            ""
        )
    ))
}

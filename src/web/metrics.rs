//! `/metrics`, in Prometheus's text exposition format (version 0.0.4).

use super::HttpCounters;
use crate::db::dashboard::{DbMetrics, Histogram};
use crate::db::events::delivery;
use crate::db::read::weather;
use crate::db::{BuildStatus, Db};
use crate::db::{eval_status, status};
use crate::html::status_name;
use crate::http::Response;
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the evaluation-duration buckets, in seconds.
pub const EVAL_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

const STATUSES: &[BuildStatus] = &[
    status::SCHEDULED,
    status::STARTED,
    status::SUCCEEDED,
    status::FAILED,
    status::FAILED_DEPENDENCY,
    status::FAILED_OTHER,
    status::CANCELED,
];

pub fn metrics(db: &Db, counters: &HttpCounters) -> Response {
    match db.metrics(EVAL_BUCKETS) {
        Ok(m) => Response::new(200, CONTENT_TYPE, render(&m, counters).into_bytes()),
        Err(e) => {
            log::error!(target: crate::logging::HTTP, "http: {e}");
            Response::new(500, CONTENT_TYPE, b"# database error\n".to_vec())
        }
    }
}

/// The count of `key` in (key, count) rows, 0 when absent.
fn count_of(rows: &[(i64, i64)], key: i64) -> i64 {
    rows.iter().filter(|(k, _)| *k == key).map(|(_, n)| n).sum()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values as the format wants them: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    for (le, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// The exposition text; every series is present even when zero, so that
/// a dashboard's query does not vanish with the last failed build.
pub fn render(m: &DbMetrics, counters: &HttpCounters) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "cuirass_builds",
        "gauge",
        "Builds in the database, by status.",
    );
    for &s in STATUSES {
        let n = count_of(&m.builds, s.code());
        let _ = writeln!(out, "cuirass_builds{{status=\"{}\"}} {n}", status_name(s));
    }
    let odd: i64 = m
        .builds
        .iter()
        .filter(|(st, _)| !STATUSES.iter().any(|s| s.code() == *st))
        .map(|(_, n)| n)
        .sum();
    if odd > 0 {
        let _ = writeln!(out, "cuirass_builds{{status=\"unknown\"}} {odd}");
    }
    header(
        &mut out,
        "cuirass_build_queue_length",
        "gauge",
        "Builds scheduled or started.",
    );
    let _ = writeln!(out, "cuirass_build_queue_length {}", m.queue_length);
    header(
        &mut out,
        "cuirass_evaluations_total",
        "counter",
        "Evaluations, by outcome.",
    );
    for (outcome, s) in [
        ("succeeded", eval_status::SUCCEEDED),
        ("failed", eval_status::FAILED),
        ("in-progress", eval_status::IN_PROGRESS),
    ] {
        let n = count_of(&m.evaluations, s);
        let _ = writeln!(
            out,
            "cuirass_evaluations_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    histogram(
        &mut out,
        "cuirass_evaluation_duration_seconds",
        "Time from an evaluation's start to its end, for those that ended.",
        &m.evaluation_duration,
    );
    histogram(
        &mut out,
        "cuirass_build_duration_seconds",
        "Time from a finished build's start to its end.",
        &m.build_duration,
    );
    weathers(&mut out, m);
    header(
        &mut out,
        "cuirass_http_requests_total",
        "counter",
        "HTTP requests answered since start, by route pattern and status code.",
    );
    for (route, code, n) in counters.iter() {
        let _ = writeln!(
            out,
            "cuirass_http_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
            label(route)
        );
    }
    header(
        &mut out,
        "cuirass_database_size_bytes",
        "gauge",
        "Size of the SQLite database file (page_count * page_size).",
    );
    let _ = writeln!(out, "cuirass_database_size_bytes {}", m.size_bytes);
    out
}

/// Weather counters by specification, and notification events by
/// delivery state.
fn weathers(out: &mut String, m: &DbMetrics) {
    header(
        out,
        "cuirass_build_weather_total",
        "counter",
        "Finished builds by specification and weather (new-failure and new-success are changes), counted as they finish.",
    );
    for (spec, w, n) in &m.weathers {
        let _ = writeln!(
            out,
            "cuirass_build_weather_total{{spec=\"{}\",weather=\"{}\"}} {n}",
            label(spec),
            weather::name(*w)
        );
    }
    header(
        out,
        "cuirass_events",
        "gauge",
        "Events (weather changes, failed evaluations) by notification delivery state.",
    );
    for d in [
        delivery::QUEUED,
        delivery::SENT,
        delivery::GAVE_UP,
        delivery::NONE,
    ] {
        let n = count_of(&m.events, d);
        let _ = writeln!(
            out,
            "cuirass_events{{delivery=\"{}\"}} {n}",
            delivery::name(d)
        );
    }
}

//! `/jobset/NAME/badge.svg`: the latest evaluation's pass and fail counts
//! as a shields.io-style badge, for a project's README.

use crate::db::Db;
use crate::html::esc;
use crate::http::Response;

const SVG: &str = "image/svg+xml";
const GREEN: &str = "#2e8540";
const RED: &str = "#c62828";
const GREY: &str = "#7b8494";

pub fn badge(db: &Db, name: &str) -> Response {
    let (code, text, colour) = match latest_counts(db, name) {
        Err(e) => {
            log::error!(target: crate::logging::HTTP, "http: {e}");
            (500, "error".to_string(), GREY)
        }
        Ok(None) => (404, "no such specification".into(), GREY),
        Ok(Some(None)) => (200, "no evaluation".into(), GREY),
        Ok(Some(Some((passed, failed)))) => (
            200,
            format!("{passed} passed, {failed} failed"),
            if failed == 0 { GREEN } else { RED },
        ),
    };
    let mut r = Response::new(code, SVG, render("cuirass", &text, colour).into_bytes());
    // Image proxies (GitHub's camo) would otherwise show a stale count.
    r.headers.push(("Cache-Control", "no-cache".into()));
    r
}

/// None: no such specification; Some(None): no evaluation yet.
fn latest_counts(db: &Db, name: &str) -> crate::db::Result<Option<Option<(i64, i64)>>> {
    if !db.specification_exists(name)? {
        return Ok(None);
    }
    let latest = db.spec_evaluations(name, 1, 0)?.pop();
    Ok(Some(latest.map(|e| (e.counts.succeeded, e.counts.failed))))
}

/// Widths are estimated at 7 pixels a character (Verdana 11px), which
/// is what every badge service does without a font at hand.
pub fn render(left: &str, right: &str, colour: &str) -> String {
    let w = |s: &str| 10 + 7 * s.chars().count();
    let (lw, rw) = (w(left), w(right));
    let total = lw + rw;
    let (left, right) = (esc(left), esc(right));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total}\" height=\"20\" \
         role=\"img\" aria-label=\"{left}: {right}\"><title>{left}: {right}</title>\
         <rect width=\"{lw}\" height=\"20\" rx=\"3\" fill=\"#555\"/>\
         <rect x=\"{lw}\" width=\"{rw}\" height=\"20\" rx=\"3\" fill=\"{colour}\"/>\
         <g fill=\"#fff\" font-family=\"Verdana,DejaVu Sans,sans-serif\" font-size=\"11\" \
         text-anchor=\"middle\"><text x=\"{}\" y=\"14\">{left}</text>\
         <text x=\"{}\" y=\"14\">{right}</text></g></svg>\n",
        lw / 2,
        lw + rw / 2
    )
}

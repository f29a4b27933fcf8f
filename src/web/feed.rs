//! `/events/rss`: the events (new failures, fixes, failed evaluations)
//! as an Atom feed, newest first, the latest [`FEED_ENTRIES`] only.
//! Every text is escaped by `html::xml_text`; links are absolute
//! (`--base-url`).

use super::{Ctx, Page, db_error};
use crate::db::Db;
use crate::db::events::EventView;
use crate::html::{rfc3339, xml_text};
use crate::http::Response;
use crate::notify::{page_path, summary};

/// Entries in the feed.
pub const FEED_ENTRIES: u32 = 50;

pub const CONTENT_TYPE: &str = "application/atom+xml; charset=utf-8";

fn entry(e: &EventView, base: &str) -> String {
    let link = format!("{base}{}", page_path(e));
    let mut lines = vec![
        format!("Specification: {}", e.specification),
        format!("Evaluation: {} (commit {})", e.evaluation, e.revision),
    ];
    if let (Some(job), Some(drv)) = (&e.job_name, &e.derivation) {
        lines.push(format!("Job: {job}"));
        lines.push(format!("Derivation: {drv}"));
    }
    if let Some(error) = &e.error {
        lines.push(format!("Error: {error}"));
    }
    format!(
        "<entry>\n<title>{}</title>\n<id>{}</id>\n<link href=\"{}\"/>\n\
         <updated>{}</updated>\n<category term=\"{}\"/>\n<content type=\"text\">{}</content>\n</entry>\n",
        xml_text(&summary(e)),
        xml_text(&format!("{base}/events/rss#{}", e.id)),
        xml_text(&link),
        rfc3339(e.timestamp),
        xml_text(&e.kind),
        xml_text(&lines.join("\n")),
    )
}

/// The feed document.
pub fn render(events: &[EventView], base: &str, now: i64) -> String {
    let updated = events.first().map_or(now, |e| e.timestamp);
    let entries: String = events.iter().map(|e| entry(e, base)).collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>cuirass: new failures, fixes and failed evaluations</title>\n\
         <id>{feed}</id>\n<link rel=\"self\" href=\"{feed}\"/>\n<link href=\"{home}/\"/>\n\
         <updated>{}</updated>\n<author><name>cuirass</name></author>\n{entries}</feed>\n",
        rfc3339(updated),
        feed = xml_text(&format!("{base}/events/rss")),
        home = xml_text(base),
    )
}

pub fn feed(db: &Db, ctx: &Ctx) -> Page {
    let events = db.latest_events(FEED_ENTRIES).map_err(db_error)?;
    let body = render(&events, ctx.base_url, ctx.now);
    Ok(Response::new(200, CONTENT_TYPE, body.into_bytes()))
}

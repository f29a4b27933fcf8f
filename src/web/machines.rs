//! `/machines`: which machine runs what (the daemon's own, `localhost`,
//! and the build machines `guix offload` sends builds to).

use super::{Page, db_error};
use crate::api::machines::DAY;
use crate::db::Db;
use crate::html::{self, esc};

pub fn machines(db: &Db, now: i64) -> Page {
    let list = db.machines(now - DAY).map_err(db_error)?;
    let rows: Vec<String> = list
        .iter()
        .map(|m| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.name),
                m.running,
                m.done,
                m.failed,
                html::ago(now, m.last_seen)
            )
        })
        .collect();
    let body = html::table(
        &[
            "Machine",
            "Running",
            "Done today",
            "Failed today",
            "Last seen",
        ],
        &rows,
        "No machine ran a build in the last 24 hours.",
    );
    Ok(super::html(200, html::page("Machines", &[], &body)))
}

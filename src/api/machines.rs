//! `/api/machines`: the build machines and their builds of the last day.

use super::{db_error, json_response};
use crate::db::Db;
use crate::db::machines::Machine;
use crate::http::Response;
use serde::Serialize;

/// The window of "today": the last 24 hours, in seconds.
pub const DAY: i64 = 86_400;

#[derive(Serialize)]
struct MachineJson<'a> {
    name: &'a str,
    running: i64,
    /// Finished in the last 24 hours, failures included.
    done: i64,
    failed: i64,
    /// Unix seconds.
    lastseen: i64,
}

/// `[{"name", "running", "done", "failed", "lastseen"}]`, by name: every
/// machine running a build or having finished one in the 24 hours before
/// `now` (Unix seconds).
pub fn machines(db: &Db, now: i64) -> Response {
    match db.machines(now - DAY) {
        Ok(list) => json_response(200, &list.iter().map(machine_json).collect::<Vec<_>>()),
        Err(e) => db_error(e),
    }
}

fn machine_json(m: &Machine) -> MachineJson<'_> {
    MachineJson {
        name: &m.name,
        running: m.running,
        done: m.done,
        failed: m.failed,
        lastseen: m.last_seen,
    }
}

//! Deleting a specification with a quarter of the 1,000,000-build
//! database (`guix-core-updates`: 25 evaluations, 250,000 builds) while
//! `/build/ID` requests keep coming: how long the action takes to
//! answer, how long its history takes to go, and what the requests
//! meanwhile wait.

use crate::api::{cpus, start_daemon_with, wait_ready};
use crate::api_db::{self, ONE_MILLION, Rng};
use crate::common::*;
use crate::http_client::{Client, Pinned, quantile_ms};
use rusqlite::Connection;
use std::time::{Duration, Instant};

const SPEC: &str = "guix-core-updates";
const TOKEN: &str = "bench-deletion-token-0123456789";
/// The history must be gone within this.
const LIMIT: Duration = Duration::from_secs(600);

/// Rows the tombstone still holds: its evaluations and their builds.
fn left(conn: &Connection) -> Result<(i64, i64), String> {
    conn.query_row(
        "SELECT (SELECT COUNT(*) FROM Evaluations e JOIN Specifications s
                 ON s.repo_name = e.specification WHERE s.deleting = 1),
                (SELECT COUNT(*) FROM Specifications WHERE deleting = 1)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .map_err(|e| e.to_string())
}

pub fn run() -> Result<Vec<Figure>, String> {
    let cuirass = cuirass_binary()?;
    let template = api_db::template(&ONE_MILLION)?;
    let tmp = TempDir::new("deletion");
    let db = tmp.path().join("cuirass.db");
    std::fs::copy(&template, &db).map_err(|e| format!("copying {}: {e}", template.display()))?;
    // The daemon starts with no specification (nothing to poll); the
    // rows come back before the action, which reads the table.
    api_db::without_comparison(&db)?;
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("bench:{TOKEN}\n")).map_err(|e| e.to_string())?;
    let pin = cpus();
    let _pinned = pin.map(|p| Pinned::to(p.1));
    let extra = [format!("--admin-tokens={}", tokens.display())];
    let mut daemon = start_daemon_with(&cuirass, tmp.path(), &db, pin.map(|p| p.0), &extra)?;
    wait_ready(&mut daemon, Instant::now())?;
    api_db::restore_specifications(&db)?;
    let conn = Connection::open(&db).map_err(|e| e.to_string())?;
    let builds: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM Builds b JOIN Evaluations e ON e.id = b.evaluation
             WHERE e.specification = ?1",
            [SPEC],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    let total: i64 = conn
        .query_row("SELECT MAX(id) FROM Builds", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;

    let mut client = Client::connect(daemon.port)?;
    let asked = Instant::now();
    client.post(
        &format!("/admin/specification/{SPEC}/delete"),
        TOKEN,
        &format!(r#"{{"confirm": "{SPEC}"}}"#),
    )?;
    let (status, _) = client.receive()?;
    let answered = secs(asked.elapsed());
    if status != 200 {
        return Err(format!(
            "delete: status {status}: {}",
            String::from_utf8_lossy(client.body())
        ));
    }
    // Random builds of the whole table meanwhile, one at a time: those
    // of the deleted specification answer 404 once their chunk went.
    let mut latencies = Vec::new();
    let mut rng = Rng(42);
    let mut next_look = Instant::now();
    let gone = loop {
        let path = format!("/build/{}", 1 + rng.next() % total as u64);
        let sent = Instant::now();
        client.send(&path)?;
        let (status, _) = client.receive()?;
        latencies.push(sent.elapsed().as_micros() as u32);
        if status != 200 && status != 404 {
            return Err(format!("GET {path}: status {status}"));
        }
        if Instant::now() >= next_look {
            next_look = Instant::now() + Duration::from_millis(100);
            if left(&conn)? == (0, 0) {
                break secs(asked.elapsed());
            }
            if asked.elapsed() > LIMIT {
                return Err(format!("the history was not gone after {LIMIT:?}"));
            }
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("cuirass exited during the deletion: {status}"));
        }
    };
    let still: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM Builds WHERE evaluation NOT IN (SELECT id FROM Evaluations)",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if still != 0 {
        return Err(format!("{still} builds left without their evaluation"));
    }
    let log = std::fs::read_to_string(tmp.path().join("cuirass.log")).unwrap_or_default();
    let slow: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("slow loop turn: ").nth(1))
        .filter_map(|rest| rest.split(" ms").next()?.parse().ok())
        .collect();
    latencies.sort_unstable();
    let worst = latencies.last().copied().unwrap_or(0) as f64 / 1e3;
    Ok(vec![
        Figure::new(
            &format!("deleting a specification of {builds} builds: the action's answer"),
            answered * 1e3,
            "ms",
            Some(Target::AtMost(200.0)),
        )
        .note("its row goes and its evaluations move to its tombstone, in one transaction"),
        Figure::new(
            &format!(
                "— then its history deleted in the background ({} rows a loop turn)",
                cuirass::retention::ROW_BUDGET
            ),
            gone,
            "s",
            None,
        )
        .note(format!(
            "{:.0} builds/s, while {} sequential /build/ID requests were answered",
            builds as f64 / gone,
            latencies.len()
        )),
        Figure::new(
            "— /build/ID meanwhile: median",
            quantile_ms(&latencies, 0.5),
            "ms",
            Some(Target::AtMost(2.0)),
        ),
        Figure::new(
            "— /build/ID meanwhile: p99",
            quantile_ms(&latencies, 0.99),
            "ms",
            Some(Target::AtMost(10.0)),
        ),
        Figure::new(
            "— /build/ID meanwhile: the longest wait",
            worst,
            "ms",
            Some(Target::AtMost(200.0)),
        )
        .note(format!(
            "the loop's slow-turn warnings (over 200 ms): {}",
            match slow.len() {
                0 => "none".to_string(),
                n => format!("{n}, the longest {} ms", slow.iter().max().unwrap_or(&0)),
            }
        )),
    ])
}

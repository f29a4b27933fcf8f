//! GC roots and retention in the loop: the planner's chunks of symlinks
//! made and registered over a daemon connection of their own, symlinks
//! removed, the ones no root accounts for found at start-up, and the
//! retention's chunks with the log copies they delete.  The decisions
//! are `gcroots::Planner`'s and `retention::Retention`'s.

use super::*;
use crate::db::gcroots::RootRow;
use crate::gcroots::{Command as RootsCommand, Planner};
use crate::logging::{GC_ROOTS, RETENTION};
use crate::retention::Retention;
use crate::wire::{self, Reply, Request};
use mio::Interest;
use std::io::{Read, Write};

/// How often an idle planner looks for new work (new builds, expiries).
const ROOTS_PACE: Duration = Duration::from_millis(100);
/// A chunk's daemon requests must all be answered within this (a
/// collection in progress holds sync-with-gc back).
const ROOTS_TIMEOUT: Duration = Duration::from_secs(300);
/// Directory entries looked at per turn by the start-up scan.
const SCAN_CHUNK: usize = 500;
/// Bytes read from the roots connection per turn.
const ROOTS_READ_CAP: usize = 256 * 1024;

/// The roots' and the retention's state in the loop.
pub(super) struct Roots {
    pub(super) planner: Planner,
    conn: Option<RootsConn>,
    next_step: Instant,
    /// The start-up look for symlinks no root accounts for.
    scan: Option<std::fs::ReadDir>,
    retention: Option<Retention>,
}

/// The daemon connection that registers roots.
struct RootsConn {
    stream: UnixStream,
    client: wire::Client,
    wants_write: bool,
    /// Replies due for the chunk in flight; the last one is the valid
    /// items.
    due: usize,
    deadline: Instant,
}

impl Roots {
    /// The directory must be absolute (the daemon follows the symlinks
    /// from its own working directory) and UTF-8 (the wire carries
    /// strings).
    pub(super) fn new(config: &Config, now: Instant) -> Result<Roots, Fatal> {
        let dir = std::path::absolute(&config.gc_roots_dir).map_err(|e| {
            format!(
                "--gc-roots-directory {}: {e}",
                config.gc_roots_dir.display()
            )
        })?;
        if dir.to_str().is_none() {
            return Err(format!("--gc-roots-directory {}: not UTF-8", dir.display()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create the GC roots directory {}: {e}",
                dir.display()
            )
        })?;
        let unix = unix_now();
        Ok(Roots {
            scan: std::fs::read_dir(&dir).ok(),
            planner: Planner::new(dir, config.ttl_secs, unix),
            conn: None,
            next_step: now,
            retention: config.retention_secs.map(|age| Retention::new(age, unix)),
        })
    }

    /// Work is due now: the loop turns again without sleeping.
    pub(super) fn has_work(&self) -> bool {
        self.planner.has_work() || self.scan.is_some() || self.retention_busy()
    }

    /// A one-shot run waits for this to end.
    pub(super) fn busy(&self) -> bool {
        self.planner.busy() || self.scan.is_some() || self.retention_busy()
    }

    fn retention_busy(&self) -> bool {
        self.retention.as_ref().is_some_and(|r| r.busy(unix_now()))
    }
}

impl EventLoop {
    /// One turn's roots and retention work.
    pub(super) fn roots_turn(&mut self, now: Instant) {
        if self
            .roots
            .conn
            .as_ref()
            .is_some_and(|c| c.due > 0 && now >= c.deadline)
        {
            self.roots_lost("the daemon did not answer in time".into());
        }
        self.scan_roots();
        self.retention_step();
        if self.roots.planner.has_work() || now >= self.roots.next_step {
            self.roots.next_step = now + ROOTS_PACE;
            self.roots.planner.step(&mut self.db, unix_now());
            self.run_roots_commands(now);
        }
    }

    /// Carries out the planner's commands, then closes an idle
    /// connection (each holds a daemon process).
    fn run_roots_commands(&mut self, now: Instant) {
        while let Some(command) = self.roots.planner.poll_command() {
            match command {
                RootsCommand::Remove(items) => self.remove_roots(&items),
                RootsCommand::Make(roots) => self.make_roots(roots, now),
            }
        }
        let idle = self.roots.conn.as_ref().is_some_and(|c| c.due == 0);
        if idle
            && !self.roots.planner.busy()
            && let Some(mut conn) = self.roots.conn.take()
        {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn remove_roots(&mut self, items: &[String]) {
        for item in items {
            let Some(link) = self.roots.planner.link_of(item) else {
                continue;
            };
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::error!(target: GC_ROOTS, "cannot remove {}: {e}", link.display()),
            }
        }
    }

    /// Makes the chunk's symlinks and queues their registration, the
    /// wait for a collection in progress, and the validity query.
    fn make_roots(&mut self, roots: Vec<RootRow>, now: Instant) {
        let mut links = Vec::new();
        let mut items = Vec::new();
        for r in &roots {
            let Some(link) = self.roots.planner.link_of(&r.item) else {
                log::error!(target: GC_ROOTS, "{:?} is not a store item: no root for it", r.item);
                continue;
            };
            match make_symlink(&r.item, &link) {
                Ok(()) => {
                    // The directory is UTF-8 (checked at start) and so is the item.
                    links.push(link.to_string_lossy().into_owned());
                    items.push(r.item.clone());
                }
                Err(e) => log::error!(target: GC_ROOTS, "cannot make {}: {e}", link.display()),
            }
        }
        if items.is_empty() {
            self.roots.planner.made(&mut self.db, &[], unix_now());
            return;
        }
        if self.roots.conn.is_none() {
            match self.connect_roots() {
                Ok(conn) => self.roots.conn = Some(conn),
                Err(why) => {
                    self.roots.planner.failed(&why, unix_now());
                    return;
                }
            }
        }
        let conn = self.roots.conn.as_mut().expect("connected above");
        for link in links {
            conn.client.request(Request::AddIndirectRoot(link));
        }
        conn.client.request(Request::SyncWithGc);
        conn.client.request(Request::QueryValidPaths(items));
        conn.due = conn.client.outstanding();
        conn.deadline = now + ROOTS_TIMEOUT;
        if let Err(why) = flush_roots(conn, self.poll.registry()) {
            self.roots_lost(why);
        }
    }

    fn connect_roots(&mut self) -> Result<RootsConn, String> {
        let socket = &self.config.daemon_socket;
        let mut stream = UnixStream::connect(socket)
            .map_err(|e| format!("cannot reach guix-daemon at {}: {e}", socket.display()))?;
        self.poll
            .registry()
            .register(
                &mut stream,
                ROOTS_DAEMON,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("cannot watch the daemon socket: {e}"))?;
        Ok(RootsConn {
            stream,
            client: wire::Client::new(),
            wants_write: true,
            due: 0,
            deadline: Instant::now() + ROOTS_TIMEOUT,
        })
    }

    /// The connection failed: the chunk in flight is tried again later.
    fn roots_lost(&mut self, why: String) {
        if let Some(mut conn) = self.roots.conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.roots.planner.failed(&why, unix_now());
        self.run_roots_commands(Instant::now());
    }

    /// Reads the daemon's answers (mio is edge-triggered: until
    /// WouldBlock, or the cap) and writes what is queued.
    pub(super) fn roots_io(&mut self) {
        let Some(conn) = self.roots.conn.as_mut() else {
            return;
        };
        let mut failure = None;
        let mut valid = None;
        let mut buf = [0u8; 16 * 1024];
        let mut read = 0;
        while read < ROOTS_READ_CAP && failure.is_none() {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    failure = Some("the daemon closed the connection".to_string());
                }
                Ok(n) => {
                    read += n;
                    if let Err(e) = conn.client.receive(&buf[..n]) {
                        failure = Some(e.to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => failure = Some(e.to_string()),
            }
            while let Some(event) = conn.client.poll_event() {
                match event {
                    wire::Event::Reply(reply) => {
                        conn.due = conn.due.saturating_sub(1);
                        if let (0, Reply::Strings(paths)) = (conn.due, reply) {
                            valid = Some(paths);
                        }
                    }
                    wire::Event::Failed { message, .. } => {
                        failure.get_or_insert(format!("the daemon refused: {message}"));
                    }
                    wire::Event::Log(_) | wire::Event::Connected { .. } => {}
                }
            }
        }
        if failure.is_none() {
            failure = flush_roots(conn, self.poll.registry()).err();
        }
        // More to read next turn: mio will not say so again.
        let more = read >= ROOTS_READ_CAP;
        if let Some(valid) = valid {
            self.roots.planner.made(&mut self.db, &valid, unix_now());
            self.run_roots_commands(Instant::now());
        } else if let Some(why) = failure {
            if self.roots.conn.as_ref().is_some_and(|c| c.due > 0) {
                self.roots_lost(why);
            } else if let Some(mut conn) = self.roots.conn.take() {
                // An idle connection the daemon closed: the next chunk
                // opens another.
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        } else if more {
            self.roots_io();
        }
    }

    /// At start-up, a chunk of the directory's entries: symlinks no root
    /// accounts for are removed.
    fn scan_roots(&mut self) {
        let Some(entries) = self.roots.scan.as_mut() else {
            return;
        };
        let mut links = Vec::new();
        let mut ended = true;
        for entry in entries.by_ref() {
            let Ok(entry) = entry else { continue };
            let (Some(name), Ok(target)) = (
                entry.file_name().to_str().map(String::from),
                std::fs::read_link(entry.path()),
            ) else {
                continue;
            };
            if let Some(target) = target.to_str() {
                links.push((name, target.to_string()));
            }
            if links.len() >= SCAN_CHUNK {
                ended = false;
                break;
            }
        }
        let stale = self.roots.planner.stale_links(&self.db, &links);
        let dir = self.roots.planner.dir().to_path_buf();
        for name in &stale {
            if let Err(e) = std::fs::remove_file(dir.join(name)) {
                log::error!(target: GC_ROOTS, "cannot remove {}/{name}: {e}", dir.display());
            }
        }
        if !stale.is_empty() {
            log::info!(target: GC_ROOTS, "{} symlink(s) without a root removed from {}", stale.len(), dir.display());
        }
        if ended {
            self.roots.scan = None;
        }
    }

    /// A chunk of the retention's work; the deleted builds' log copies
    /// go, and their outputs' roots are looked at again.
    fn retention_step(&mut self) {
        let Some(retention) = self.roots.retention.as_mut() else {
            return;
        };
        let Some(deleted) = retention.step(&mut self.db, unix_now()) else {
            return;
        };
        let mut removed = 0;
        for b in &deleted.builds {
            for path in self.logs.files_of(b.id, &b.attempts) {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        log::error!(target: RETENTION, "cannot remove {}: {e}", path.display())
                    }
                }
            }
        }
        log::debug!(target: RETENTION,
            "{} build(s) deleted, {removed} log file(s) removed",
            deleted.builds.len()
        );
        self.roots.planner.recheck(deleted.outputs);
    }
}

/// A symlink at `link` to `item`; one already there to `item` is kept,
/// one to something else replaced.
fn make_symlink(item: &str, link: &std::path::Path) -> io::Result<()> {
    match std::os::unix::fs::symlink(item, link) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if std::fs::read_link(link).is_ok_and(|t| t.as_os_str() == item) {
                return Ok(());
            }
            std::fs::remove_file(link)?;
            std::os::unix::fs::symlink(item, link)
        }
        other => other,
    }
}

/// Writes what the client has queued; WRITABLE is asked for only while
/// bytes remain.
fn flush_roots(conn: &mut RootsConn, registry: &mio::Registry) -> Result<(), String> {
    loop {
        let out = conn.client.pending_output();
        if out.is_empty() {
            break;
        }
        match conn.stream.write(out) {
            Ok(n) => conn.client.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    let wants_write = !conn.client.pending_output().is_empty();
    if wants_write != conn.wants_write {
        let interest = match wants_write {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        registry
            .reregister(&mut conn.stream, ROOTS_DAEMON, interest)
            .map_err(|e| e.to_string())?;
        conn.wants_write = wants_write;
    }
    Ok(())
}

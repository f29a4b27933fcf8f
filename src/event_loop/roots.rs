//! GC roots and retention in the loop: the planner's chunks rooted over
//! a daemon connection of their own (one per chunk: the daemon holds the
//! root file as a temporary root of the connection until it closes), root
//! files' symlinks removed, the ones no row is held by found at start-up,
//! the retention's chunks with the log copies they delete, and so do
//! deleted specifications' histories.  The
//! decisions are `gcroots::Planner`'s, `gcroots::maker::Maker`'s and
//! `retention::Retention`'s.

use super::*;
use crate::db::gcroots::RootRow;
use crate::db::retention::ChunkEnd;
use crate::gcroots::maker::{Maker, Next};
use crate::gcroots::{Command as RootsCommand, Planner};
use crate::logging::{GC_ROOTS, RETENTION};
use crate::retention::Retention;
use crate::wire;
use mio::Interest;
use std::io::{Read, Write};

/// How often an idle planner looks for new work (new builds, expiries).
const ROOTS_PACE: Duration = Duration::from_millis(100);
/// A chunk must be made within this (a collection in progress holds
/// sync-with-gc back).
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
    /// A deleted specification's history may be left to delete (at
    /// start-up: a deletion a restart interrupted).
    pub(super) deleting: bool,
    /// Chunks of the current deletion, for its progress lines.
    deletion_chunks: u64,
}

/// The daemon connection that makes the chunk in flight.
struct RootsConn {
    stream: UnixStream,
    client: wire::Client,
    wants_write: bool,
    maker: Maker,
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
            deleting: true,
            deletion_chunks: 0,
        })
    }

    /// Work is due now: the loop turns again without sleeping.
    pub(super) fn has_work(&self) -> bool {
        self.planner.has_work() || self.scan.is_some() || self.retention_busy() || self.deleting
    }

    /// A one-shot run waits for this to end.
    pub(super) fn busy(&self) -> bool {
        self.planner.busy() || self.scan.is_some() || self.retention_busy() || self.deleting
    }

    fn retention_busy(&self) -> bool {
        self.retention.as_ref().is_some_and(|r| r.busy(unix_now()))
    }
}

impl EventLoop {
    /// One turn's roots and retention work.
    pub(super) fn roots_turn(&mut self, now: Instant) {
        if self.roots.conn.as_ref().is_some_and(|c| now >= c.deadline) {
            self.roots_lost("the daemon did not answer in time".into());
        }
        self.scan_roots();
        self.retention_step();
        self.spec_deletion_step();
        if self.roots.planner.has_work() || now >= self.roots.next_step {
            self.roots.next_step = now + ROOTS_PACE;
            self.roots.planner.step(&mut self.db, unix_now());
            self.run_roots_commands(now);
        }
    }

    /// Carries out the planner's commands.
    fn run_roots_commands(&mut self, now: Instant) {
        while let Some(command) = self.roots.planner.poll_command() {
            match command {
                RootsCommand::Remove(files) => self.remove_roots(&files),
                RootsCommand::Make(roots) => self.make_roots(roots, now),
            }
        }
    }

    fn remove_roots(&mut self, files: &[String]) {
        for file in files {
            let Some(link) = self.roots.planner.link_of(file) else {
                continue;
            };
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::error!(target: GC_ROOTS, "cannot remove {}: {e}", link.display()),
            }
        }
    }

    /// Opens the chunk's connection and sends its first requests.
    fn make_roots(&mut self, roots: Vec<RootRow>, now: Instant) {
        let items = roots.into_iter().map(|r| r.item).collect();
        let (maker, first) = Maker::new(self.roots.planner.dir(), items);
        match self.connect_roots(maker, now) {
            Ok(conn) => self.roots.conn = Some(conn),
            Err(why) => {
                self.roots.planner.failed(&why, None, unix_now());
                return;
            }
        }
        let conn = self.roots.conn.as_mut().expect("connected above");
        for request in first {
            conn.client.request(request);
        }
        if let Err(why) = flush_roots(conn, self.poll.registry()) {
            self.roots_lost(why);
        }
    }

    fn connect_roots(&mut self, maker: Maker, now: Instant) -> Result<RootsConn, String> {
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
            maker,
            deadline: now + ROOTS_TIMEOUT,
        })
    }

    /// Closes the chunk's connection (each holds a daemon process, and
    /// the temporary root of the chunk's file).
    fn close_roots(&mut self) -> Option<RootsConn> {
        let mut conn = self.roots.conn.take()?;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        Some(conn)
    }

    /// The connection failed: the chunk in flight is tried again later.
    fn roots_lost(&mut self, why: String) {
        let file = self
            .close_roots()
            .and_then(|c| c.maker.file().map(String::from));
        self.roots.planner.failed(&why, file.as_deref(), unix_now());
        self.run_roots_commands(Instant::now());
    }

    /// Reads the daemon's answers (mio is edge-triggered: until
    /// WouldBlock, or the cap), feeds them to the chunk's maker and
    /// writes what it asks.
    pub(super) fn roots_io(&mut self) {
        let Some(conn) = self.roots.conn.as_mut() else {
            return;
        };
        let mut failure = None;
        let mut done = None;
        let mut buf = [0u8; 16 * 1024];
        let mut read = 0;
        while read < ROOTS_READ_CAP && failure.is_none() && done.is_none() {
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
                    wire::Event::Reply(reply) => match conn.maker.reply(reply) {
                        Next::Wait => {}
                        Next::Send(requests) => {
                            requests.into_iter().for_each(|r| conn.client.request(r))
                        }
                        Next::Link { link, file, then } => match make_symlink(&file, &link) {
                            Ok(()) => then.into_iter().for_each(|r| conn.client.request(r)),
                            Err(e) => {
                                failure
                                    .get_or_insert(format!("cannot make {}: {e}", link.display()));
                            }
                        },
                        Next::Done { file, valid } => done = Some((file, valid)),
                        Next::Failed(why) => {
                            failure.get_or_insert(why);
                        }
                    },
                    wire::Event::Failed { message, .. } => {
                        failure.get_or_insert(format!("the daemon refused: {message}"));
                    }
                    wire::Event::Log(_) | wire::Event::Connected { .. } => {}
                }
            }
        }
        if let Some((file, valid)) = done {
            self.close_roots();
            let now = unix_now();
            self.roots
                .planner
                .made(&mut self.db, file.as_deref(), &valid, now);
            self.run_roots_commands(Instant::now());
            return;
        }
        if failure.is_none() {
            failure = flush_roots(conn, self.poll.registry()).err();
        }
        if let Some(why) = failure {
            self.roots_lost(why);
        } else if read >= ROOTS_READ_CAP {
            // More to read: mio will not say so again.
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
        let making = self
            .roots
            .conn
            .as_ref()
            .and_then(|c| c.maker.file().map(String::from));
        let stale = self
            .roots
            .planner
            .stale_links(&self.db, &links, making.as_deref());
        let dir = self.roots.planner.dir().to_path_buf();
        for name in &stale {
            if let Err(e) = std::fs::remove_file(dir.join(name)) {
                log::error!(target: GC_ROOTS, "cannot remove {}/{name}: {e}", dir.display());
            }
        }
        if !stale.is_empty() {
            log::info!(target: GC_ROOTS, "{} symlink(s) no GC root is held by removed from {}", stale.len(), dir.display());
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
        let removed = self.remove_log_copies(&deleted.builds);
        log::debug!(target: RETENTION,
            "{} build(s) deleted, {removed} log file(s) removed",
            deleted.builds.len()
        );
        self.roots.planner.recheck(deleted.outputs);
    }

    /// A chunk of a deleted specification's history
    /// (`Db::spec_deletion_chunk`), with its builds' log copies; once
    /// the history is gone, every GC root is looked at again (the `.drv`
    /// roots of its pending builds).
    fn spec_deletion_step(&mut self) {
        if !self.roots.deleting {
            return;
        }
        let c = match self.db.spec_deletion_chunk(crate::retention::ROW_BUDGET) {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.roots.deleting = false;
                return;
            }
            Err(e) => {
                // Tried again at the next deletion or restart.
                log::error!(target: RETENTION, "deleting a specification's history: {e}");
                self.roots.deleting = false;
                return;
            }
        };
        self.remove_log_copies(&c.chunk.builds);
        self.roots.planner.recheck(c.chunk.outputs);
        self.roots.deletion_chunks += 1;
        let spec = c
            .tombstone
            .strip_suffix(crate::db::admin::TOMBSTONE_SUFFIX)
            .unwrap_or(&c.tombstone);
        match (c.evaluation, c.chunk.end) {
            (None, _) => {
                log::info!(target: RETENTION,
                    "spec={spec:?} (deleted): its history is deleted ({} chunks)",
                    self.roots.deletion_chunks
                );
                self.roots.deletion_chunks = 0;
                self.roots.planner.rescan(unix_now());
            }
            (Some(eval), ChunkEnd::Deleted) => {
                log::info!(target: RETENTION, "spec={spec:?} (deleted): evaluation {eval} deleted");
                // Another specification's build may have waited for one
                // of its pending builds (an input's latest build).
                self.feed_dispatcher(crate::queue::Input::Changed, Instant::now());
            }
            (Some(eval), _) if self.roots.deletion_chunks.is_multiple_of(100) => {
                log::info!(target: RETENTION,
                    "spec={spec:?} (deleted): deleting evaluation {eval} ({} chunks so far)",
                    self.roots.deletion_chunks
                )
            }
            _ => {}
        }
    }

    /// Removes the log copies of deleted builds; returns how many files.
    fn remove_log_copies(&self, builds: &[crate::db::retention::DeletedBuild]) -> usize {
        let mut removed = 0;
        for b in builds {
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
        removed
    }
}

/// A symlink at `link` to `item` (a root file); one already there to
/// `item` is kept, one to something else replaced.
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

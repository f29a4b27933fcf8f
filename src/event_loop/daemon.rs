//! Batches on daemon connections: opening them, moving their bytes,
//! recording the statuses they report, and telling the cycle how they
//! ended.

use super::*;
use crate::build::{Item, Limits, Output, Update};
use crate::logging::BUILDING;
use mio::Interest;
use std::io::{Read, Write};

/// Bytes read from one daemon connection per loop turn.
const DAEMON_READ_CAP: usize = 1 << 20;

impl EventLoop {
    pub(super) fn open_batch(
        &mut self,
        index: usize,
        items: Vec<Item>,
        limits: Limits,
        now: Instant,
    ) {
        let mut stream = match UnixStream::connect(&self.config.daemon_socket) {
            Ok(s) => s,
            Err(e) => {
                let why = format!(
                    "cannot reach guix-daemon at {}: {e}",
                    self.config.daemon_socket.display()
                );
                self.feed(index, Input::BatchLost(why), now);
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Event::Daemon(index).token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            let why = format!("cannot watch the daemon socket: {e}");
            self.feed(index, Input::BatchLost(why), now);
            return;
        }
        log::info!(
            target: BUILDING,
            "spec={:?} batch of {} derivation(s) submitted ({}), {} more queued",
            self.slots[index].cycle.spec.name,
            items.len(),
            build::describe_limits(limits),
            self.slots[index].cycle.building().queued()
        );
        let batch = Batch::new(items, batch_options(&self.config, limits), limits);
        self.slots[index].conn = Some(Conn {
            stream,
            batch,
            wants_write: true,
            more: false,
        });
    }

    /// Drops the connection: the daemon stops the batch's builds, which
    /// go back to scheduled.
    pub(super) fn close_batch(&mut self, index: usize) {
        if let Some(mut conn) = self.slots[index].conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            let drvs: Vec<String> = conn.batch.derivations().map(String::from).collect();
            for drv in &drvs {
                self.live.finished(drv);
            }
            if let Err(e) = self.db.reschedule(&drvs) {
                log::error!(target: logging::BUILDING, "spec={:?} {e}", self.slots[index].cycle.spec.name);
            }
        }
        self.copy_logs(index);
    }

    /// Hands the logs of the batch's finished builds to the copier, once
    /// the daemon is done with the batch (and so with their log files).
    fn copy_logs(&mut self, index: usize) {
        for (builds, log) in std::mem::take(&mut self.slots[index].copies) {
            self.copier.push(builds, &log);
        }
    }

    /// Tells the cycle once the batch in flight is done.
    pub(super) fn settle_batch(&mut self, index: usize, now: Instant) {
        let done = self.slots[index]
            .conn
            .as_ref()
            .is_some_and(|c| c.batch.is_done());
        if !done {
            return;
        }
        let mut conn = self.slots[index].conn.take().unwrap();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let updates = conn.batch.take_updates();
        let output = conn.batch.take_output();
        self.apply_updates(index, updates, output);
        self.copy_logs(index);
        let daemon_error = conn.batch.daemon_error().map(String::from);
        self.feed(index, Input::BatchDone { daemon_error }, now);
    }

    /// Reads until WouldBlock (mio is edge-triggered), or up to
    /// [`DAEMON_READ_CAP`] (builders' output comes this way, and a
    /// builder may print without end), and writes what is queued.
    pub(super) fn daemon_io(&mut self, index: usize) {
        let label = format!("spec={:?} builds", self.slots[index].cycle.spec.name);
        let Some(conn) = self.slots[index].conn.as_mut() else {
            return;
        };
        let mut failure = None;
        let mut buf = [0u8; 64 * 1024];
        let mut read = 0;
        conn.more = false;
        loop {
            if read >= DAEMON_READ_CAP {
                conn.more = true;
                break;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    if !conn.batch.is_done() {
                        failure = Some("the daemon closed the connection".to_string());
                    }
                    break;
                }
                Ok(n) => {
                    read += n;
                    if let Err(e) = conn.batch.receive(&buf[..n], &label) {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if failure.is_none() {
            failure = flush(conn, self.poll.registry(), Event::Daemon(index).token()).err();
        }
        let updates = conn.batch.take_updates();
        let output = conn.batch.take_output();
        self.apply_updates(index, updates, output);
        if let Some(why) = failure {
            let count = self.slots[index].conn.as_ref().map_or(0, |c| c.batch.len());
            self.close_batch(index);
            let why = format!("lost guix-daemon during a batch of {count}: {why}");
            self.feed(index, Input::BatchLost(why), Instant::now());
        }
    }

    /// Records statuses and live output.  A build's output precedes its
    /// final status on the wire, and is written before it here, so that a
    /// client following its live log sees the whole once it has ended.
    fn apply_updates(&mut self, index: usize, mut updates: Vec<Update>, output: Vec<Output>) {
        for u in &updates {
            if let Update::Started { derivation, .. } = u {
                self.live.started(derivation);
            }
        }
        for o in &output {
            self.live.append(&o.derivation, &o.bytes);
        }
        if updates.is_empty() {
            return;
        }
        // Settled without a trace event, a build may still have a log from
        // an earlier attempt.
        for u in &mut updates {
            if let Update::Finished {
                derivation,
                log: log @ None,
                ..
            } = u
            {
                *log = self.logs.daemon_log_of(derivation);
            }
        }
        match self.db.apply_build_updates(&updates, unix_now()) {
            // The daemon's log is rewritten when the derivation is built
            // again: each build keeps a copy of its own.
            Ok(logged) => self.slots[index].copies.extend(logged),
            Err(e) => {
                log::error!(target: logging::BUILDING, "spec={:?} {e}", self.slots[index].cycle.spec.name)
            }
        }
        for u in &updates {
            if let Update::Finished { derivation, .. } = u {
                self.live.finished(derivation);
            }
        }
    }
}

/// Writes what the client has queued; asks for WRITABLE only while bytes
/// remain, so an idle connection does not wake the loop.
fn flush(conn: &mut Conn, registry: &mio::Registry, token: Token) -> Result<(), String> {
    loop {
        let out = conn.batch.client.pending_output();
        if out.is_empty() {
            break;
        }
        match conn.stream.write(out) {
            Ok(n) => conn.batch.client.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    let wants_write = !conn.batch.client.pending_output().is_empty();
    if wants_write != conn.wants_write {
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry
            .reregister(&mut conn.stream, token, interest)
            .map_err(|e| e.to_string())?;
        conn.wants_write = wants_write;
    }
    Ok(())
}

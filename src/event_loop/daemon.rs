//! Build requests on daemon connections, one per dispatcher slot:
//! opening them, moving their bytes, recording the statuses they report,
//! and telling the dispatcher how they ended.

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
        slot: usize,
        (build, spec): (crate::db::BuildId, &str),
        item: Item,
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
                self.feed_dispatcher(queue::Input::Lost { slot, why }, now);
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Event::Daemon(slot).token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            let why = format!("cannot watch the daemon socket: {e}");
            self.feed_dispatcher(queue::Input::Lost { slot, why }, now);
            return;
        }
        log::info!(
            target: BUILDING,
            "build {build} of spec={spec:?} submitted in slot {slot} ({}): {:?}",
            build::describe_limits(limits),
            item.derivation
        );
        let batch = Batch::new(vec![item], batch_options(&self.config, limits), limits);
        self.conns[slot] = Some(Conn {
            stream,
            batch,
            wants_write: true,
            more: false,
            copies: Vec::new(),
        });
    }

    /// Drops the connection: the daemon stops the batch's builds, which
    /// go back to scheduled.
    pub(super) fn close_batch(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            let drvs: Vec<String> = conn.batch.derivations().map(String::from).collect();
            for drv in &drvs {
                self.live.finished(drv);
            }
            if let Err(e) = self.db.reschedule(&drvs) {
                log::error!(target: logging::BUILDING, "slot {slot}: {e}");
            }
            self.copy_logs(conn.copies);
        }
    }

    /// Hands the logs of the request's finished builds to the copier,
    /// once the daemon is done with the request (and so with their log
    /// files).
    fn copy_logs(&mut self, copies: Vec<(Vec<crate::db::BuildId>, String)>) {
        for (builds, log) in copies {
            self.copier.push(builds, &log);
        }
    }

    /// Tells the dispatcher once the slot's build is done.
    pub(super) fn settle_batch(&mut self, slot: usize, now: Instant) {
        let done = self.conns[slot].as_ref().is_some_and(|c| c.batch.is_done());
        if !done {
            return;
        }
        let mut conn = self.conns[slot].take().unwrap();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let updates = conn.batch.take_updates();
        let output = conn.batch.take_output();
        let logged = self.apply_updates(updates, output);
        conn.copies.extend(logged);
        self.copy_logs(std::mem::take(&mut conn.copies));
        let daemon_error = conn.batch.daemon_error().map(String::from);
        let spec = self
            .dispatcher
            .in_flight(slot)
            .map(|b| b.specification.clone());
        self.feed_dispatcher(queue::Input::Done { slot, daemon_error }, now);
        // Its spec's build outputs become products.
        if let Some(i) = spec.and_then(|spec| self.live_slot(&spec)) {
            let drvs = conn.batch.derivations().map(String::from).collect();
            self.feed(i, Input::BuildsDone(drvs), now);
        }
    }

    /// Reads until WouldBlock (mio is edge-triggered), or up to
    /// [`DAEMON_READ_CAP`] (builders' output comes this way, and a
    /// builder may print without end), and writes what is queued.
    pub(super) fn daemon_io(&mut self, slot: usize) {
        // The daemon's events name their derivation; the spec says whose.
        let label = match self.dispatcher.in_flight(slot) {
            Some(b) => format!("spec={:?} builds", b.specification),
            None => format!("slot {slot}"),
        };
        let Some(conn) = self.conns[slot].as_mut() else {
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
            failure = flush(conn, self.poll.registry(), Event::Daemon(slot).token()).err();
        }
        let updates = conn.batch.take_updates();
        let output = conn.batch.take_output();
        let logged = self.apply_updates(updates, output);
        if let Some(conn) = self.conns[slot].as_mut() {
            conn.copies.extend(logged);
        }
        if let Some(why) = failure {
            self.close_batch(slot);
            let why = format!("lost guix-daemon during {label}: {why}");
            self.feed_dispatcher(queue::Input::Lost { slot, why }, Instant::now());
        }
    }

    /// Records statuses and live output.  A build's output precedes its
    /// final status on the wire, and is written before it here, so that a
    /// client following its live log sees the whole once it has ended.
    /// Returns the logs to copy once the request ends: (builds, log file).
    fn apply_updates(
        &mut self,
        mut updates: Vec<Update>,
        output: Vec<Output>,
    ) -> Vec<(Vec<crate::db::BuildId>, String)> {
        for u in &updates {
            if let Update::Started { derivation, .. } = u {
                self.live.started(derivation);
            }
        }
        for o in &output {
            self.live.append(&o.derivation, &o.bytes);
        }
        if updates.is_empty() {
            return Vec::new();
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
        let logged = match self.db.apply_build_updates(&updates, unix_now()) {
            // The daemon's log is rewritten when the derivation is built
            // again: each build keeps a copy of its own.
            Ok(logged) => logged,
            Err(e) => {
                log::error!(target: logging::BUILDING, "{e}");
                Vec::new()
            }
        };
        for u in &updates {
            if let Update::Finished { derivation, .. } = u {
                self.live.finished(derivation);
            }
        }
        logged
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

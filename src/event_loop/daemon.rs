//! Build requests on daemon connections, one per dispatcher slot:
//! opening the connections (or reusing them, see [`Conn`]), moving their
//! bytes, gathering the statuses they report and writing them a few
//! turns at a time ([`WRITE_DELAY`]), and telling the dispatcher how each
//! request ended.

use super::*;
use crate::build::{Item, Output, Update};
use crate::logging::BUILDING;
use crate::wire::Client;
use mio::Interest;
use std::io::{Read, Write};

/// Bytes read from one daemon connection per loop turn.
const DAEMON_READ_CAP: usize = 1 << 20;

impl EventLoop {
    /// Sends build `build`'s request on `slot`'s connection: the one
    /// left open by the slot's previous request when it has the same
    /// limits, else a new one (with set-options for `limits`).
    pub(super) fn open_batch(
        &mut self,
        slot: usize,
        (build, spec): (crate::db::BuildId, &str),
        item: Item,
        limits: Limits,
        now: Instant,
    ) {
        let reusable = self.conns[slot].as_ref().is_some_and(|c| {
            matches!(c.work, Work::Idle(_))
                && !c.eof
                && c.limits == limits
                && c.requests < REQUESTS_PER_CONNECTION
        });
        if !reusable {
            self.drop_idle(slot);
            match self.connect(slot, limits) {
                Ok(conn) => self.conns[slot] = Some(conn),
                Err(why) => {
                    self.feed_dispatcher(queue::Input::Lost { slot, why }, now);
                    return;
                }
            }
        }
        let conn = self.conns[slot].as_mut().expect("connected above");
        log::info!(
            target: BUILDING,
            "build {build} of spec={spec:?} submitted in slot {slot} ({}), request {} of its connection: {:?}",
            build::describe_limits(limits),
            conn.requests + 1,
            item.derivation
        );
        let options = (conn.requests == 0).then(|| batch_options(&self.config, limits));
        let client = match std::mem::replace(&mut conn.work, Work::Idle(Client::default())) {
            Work::Idle(client) => client,
            Work::Building(_) => unreachable!("a slot's dispatcher sends one request at a time"),
        };
        conn.work = Work::Building(Box::new(Batch::on(client, vec![item], options, limits)));
        conn.requests += 1;
        conn.idle_since = None;
        self.unwritten.dispatched.push(build);
        self.unwritten.since.get_or_insert(now);
        if let Err(e) = flush(conn, self.poll.registry(), Event::Daemon(slot).token()) {
            self.close_batch(slot);
            let why = format!("lost guix-daemon in slot {slot}: {e}");
            self.feed_dispatcher(queue::Input::Lost { slot, why }, now);
        }
    }

    fn connect(&mut self, slot: usize, limits: Limits) -> Result<Conn, String> {
        let mut stream = UnixStream::connect(&self.config.daemon_socket).map_err(|e| {
            format!(
                "cannot reach guix-daemon at {}: {e}",
                self.config.daemon_socket.display()
            )
        })?;
        self.poll
            .registry()
            .register(
                &mut stream,
                Event::Daemon(slot).token(),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("cannot watch the daemon socket: {e}"))?;
        Ok(Conn {
            stream,
            work: Work::Idle(Client::new()),
            limits,
            requests: 0,
            eof: false,
            wants_write: true,
            more: false,
            idle_since: None,
        })
    }

    /// Closes `slot`'s connection if it carries no request.
    pub(super) fn drop_idle(&mut self, slot: usize) {
        if self.conns[slot]
            .as_ref()
            .is_some_and(|c| matches!(c.work, Work::Idle(_)))
            && let Some(mut conn) = self.conns[slot].take()
        {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Drops the connection: the daemon stops the request's build, which
    /// goes back to scheduled (what the daemon reported is written first).
    pub(super) fn close_batch(&mut self, slot: usize) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let Work::Building(batch) = conn.work else {
            return;
        };
        self.write_statuses();
        let drvs: Vec<String> = batch.derivations().map(String::from).collect();
        for drv in &drvs {
            self.live.finished(drv);
        }
        if let Err(e) = self.db.reschedule(&drvs) {
            log::error!(target: logging::BUILDING, "slot {slot}: {e}");
        }
        self.copy_logs(&drvs);
    }

    /// Hands the logs of the request's finished builds to the copier,
    /// once the daemon is done with the request (and so with their log
    /// files).
    fn copy_logs(&mut self, drvs: &[String]) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unwritten.copies)
            .into_iter()
            .partition(|l| drvs.contains(&l.derivation));
        self.unwritten.copies = later;
        for l in now {
            self.copier.push(l.builds, &l.log);
        }
    }

    /// Once the slot's request is done: its statuses are written, its
    /// logs copied, and the dispatcher told; the connection waits for
    /// the slot's next request.
    pub(super) fn settle_batch(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if !conn.work.batch().is_some_and(Batch::is_done) {
            return;
        }
        let Work::Building(mut batch) =
            std::mem::replace(&mut conn.work, Work::Idle(Client::default()))
        else {
            unreachable!("checked above");
        };
        let updates = batch.take_updates();
        let output = batch.take_output();
        let daemon_error = batch.daemon_error().map(String::from);
        let drvs: Vec<String> = batch.derivations().map(String::from).collect();
        conn.work = Work::Idle((*batch).into_client());
        conn.idle_since = Some(now);
        self.gather(updates, output, now);
        // The dispatcher reads them (a build's inputs, its dependents).
        self.write_statuses();
        self.copy_logs(&drvs);
        let spec = self
            .dispatcher
            .in_flight(slot)
            .map(|b| b.specification.clone());
        self.feed_dispatcher(queue::Input::Done { slot, daemon_error }, now);
        // Its spec's build outputs become products.
        if let Some(i) = spec.and_then(|spec| self.live_slot(&spec)) {
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
                    conn.eof = true;
                    if !conn.work.batch().is_none_or(Batch::is_done) {
                        failure = Some("the daemon closed the connection".to_string());
                    }
                    break;
                }
                Ok(n) => {
                    read += n;
                    let received = match &mut conn.work {
                        Work::Building(batch) => batch.receive(&buf[..n], &label),
                        Work::Idle(_) => Err("bytes between requests".to_string()),
                    };
                    if let Err(e) = received {
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
        if read > 0 {
            self.dispatcher.heard(slot, Instant::now());
        }
        if failure.is_none() && !conn.eof {
            failure = flush(conn, self.poll.registry(), Event::Daemon(slot).token()).err();
        }
        let building = matches!(conn.work, Work::Building(_));
        if let Work::Building(batch) = &mut conn.work {
            let updates = batch.take_updates();
            let output = batch.take_output();
            self.gather(updates, output, Instant::now());
        }
        match failure {
            Some(why) if building => {
                self.close_batch(slot);
                let why = format!("lost guix-daemon during {label}: {why}");
                self.feed_dispatcher(queue::Input::Lost { slot, why }, Instant::now());
            }
            Some(why) => {
                log::info!(target: BUILDING, "slot {slot}: idle daemon connection closed: {why}");
                self.drop_idle(slot);
            }
            None => {}
        }
    }

    /// Takes in what a read brought: live output at once, statuses for
    /// the next write.  A build's output precedes its final status on the
    /// wire and is written before its live file goes, so that a client
    /// following it sees the whole once it has ended.
    fn gather(&mut self, mut updates: Vec<Update>, output: Vec<Output>, now: Instant) {
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
        for u in &mut updates {
            match u {
                // Settled without a trace event, a build may still have a
                // log from an earlier attempt.
                Update::Finished {
                    derivation,
                    log: log @ None,
                    ..
                } => {
                    *log = self.logs.daemon_log_of(derivation);
                    self.live.finished(derivation);
                }
                Update::Finished { derivation, .. } => self.live.finished(derivation),
                Update::Started { .. } | Update::Remote { .. } => {}
            }
        }
        let at = unix_now();
        self.unwritten.read_at.extend(updates.iter().map(|_| at));
        self.unwritten.updates.extend(updates);
        self.unwritten.since.get_or_insert(now);
    }

    /// Writes the gathered status changes in one transaction.  The
    /// daemon's log is rewritten when a derivation is built again: each
    /// finished build keeps a copy of its own, made once its request ends.
    pub(super) fn write_statuses(&mut self) {
        if self.unwritten.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(since) = self.unwritten.since.take() else {
            return;
        };
        let dispatched = std::mem::take(&mut self.unwritten.dispatched);
        let updates = std::mem::take(&mut self.unwritten.updates);
        let read_at = std::mem::take(&mut self.unwritten.read_at);
        let time_of = |i: usize| read_at[i];
        match self
            .db
            .record_statuses_at(&dispatched, &updates, &time_of, unix_now())
        {
            Ok(logged) => {
                self.unwritten.retry_at = None;
                self.unwritten.copies.extend(logged);
                // Once written: a succeeded build's outputs get their
                // roots, a finished build's `.drv` may lose its.
                for u in &updates {
                    if let Update::Finished {
                        derivation, status, ..
                    } = u
                    {
                        let succeeded = *status == crate::db::status::SUCCEEDED;
                        self.roots.planner.finished(derivation, succeeded);
                    }
                }
            }
            Err(e) => {
                log::error!(
                    target: logging::BUILDING,
                    "cannot record {} build(s) dispatched and {} status change(s): {e}; \
                     kept, to be written again in {} s",
                    dispatched.len(),
                    updates.len(),
                    WRITE_RETRY.as_secs()
                );
                // Nothing was gathered meanwhile: the loop is this turn.
                // Lost, these builds would stay pending in the database
                // for ever (a full disk that frees up again).
                self.unwritten.dispatched = dispatched;
                self.unwritten.updates = updates;
                self.unwritten.read_at = read_at;
                self.unwritten.since = Some(since);
                self.unwritten.retry_at = Some(Instant::now() + WRITE_RETRY);
            }
        }
    }
}

/// Writes what the client has queued; asks for WRITABLE only while bytes
/// remain, so an idle connection does not wake the loop.
fn flush(conn: &mut Conn, registry: &mio::Registry, token: Token) -> Result<(), String> {
    loop {
        let out = conn.work.client().pending_output();
        if out.is_empty() {
            break;
        }
        match conn.stream.write(out) {
            Ok(n) => conn.work.client_mut().consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    let wants_write = !conn.work.client().pending_output().is_empty();
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

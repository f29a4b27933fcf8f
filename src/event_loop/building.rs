//! Building: pending builds handed to the daemon in batches, one
//! connection per batch, and the statuses that come back.

use super::*;
use crate::logging::{BUILDING, shown};

impl EventLoop {
    /// Loads every pending build of the spec (older evaluations' too),
    /// leaving out those already submitted this cycle.
    pub(super) fn start_building(&mut self, index: usize) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        match self.db.pending_builds(Some(&name)) {
            Ok(pending) => {
                let work = &mut self.work[index];
                work.queue = pending
                    .into_iter()
                    .filter(|p| !work.submitted.contains(&p.derivation))
                    .collect();
                log::info!(target: BUILDING, "spec={spec} {} build(s) to submit", work.queue.len());
            }
            Err(e) => log::error!(target: BUILDING, "spec={spec} {e}"),
        }
        self.specs[index].set_state(State::Building);
    }

    /// Called every turn while Building: ends the cycle once nothing is
    /// left, and fetches between two batches when a poll is due so that a
    /// long queue never holds back a new commit.
    pub(super) fn continue_building(&mut self, index: usize, now: Instant) {
        if !self.settle_finished_batch(index) {
            return;
        }
        let work = &mut self.work[index];
        if work.queue.is_empty() && work.retry_at.is_none() {
            self.end_cycle(index);
        } else if self.specs[index].poll_due(now) && !self.config.one_shot {
            // The rest of the queue is reloaded after the evaluation.
            work.queue.clear();
            self.start_fetch(index, now);
        } else {
            self.submit_next_batch(index, now);
        }
    }

    /// Takes the outcome of the batch in flight once it is done; returns
    /// whether no batch is in flight any more.
    pub(super) fn settle_finished_batch(&mut self, index: usize) -> bool {
        let work = &mut self.work[index];
        match &work.conn {
            None => true,
            Some(conn) if !conn.batch.is_done() => false,
            Some(_) => {
                let conn = work.conn.take().unwrap();
                work.backoff.succeeded();
                self.finish_batch(index, conn);
                true
            }
        }
    }

    /// Opens a connection for the next batch, unless a retry delay runs.
    pub(super) fn submit_next_batch(&mut self, index: usize, now: Instant) {
        let work = &mut self.work[index];
        if work.retry_at.is_some_and(|at| now < at) {
            return;
        }
        work.retry_at = None;
        while !self.work[index].queue.is_empty() {
            let items = self.next_items(index);
            if !items.is_empty() {
                self.open_batch(index, items, now);
                return;
            }
        }
    }

    /// Takes up to BATCH_SIZE builds off the queue, cancelling those whose
    /// derivation is gone from the store (collected since evaluation).
    pub(super) fn next_items(&mut self, index: usize) -> Vec<Item> {
        let mut items = Vec::new();
        let mut canceled = Vec::new();
        while items.len() < build::BATCH_SIZE {
            let Some(pending) = self.work[index].queue.pop_front() else {
                break;
            };
            if !self.work[index]
                .submitted
                .insert(pending.derivation.clone())
            {
                continue;
            }
            match std::fs::read(&pending.derivation)
                .ok()
                .and_then(|bytes| Derivation::parse(&bytes).ok())
            {
                Some(drv) => items.push(Item {
                    outputs: drv.outputs.iter().map(|o| o.path.clone()).collect(),
                    inputs: drv.input_drvs.iter().map(|(d, _)| d.clone()).collect(),
                    derivation: pending.derivation,
                }),
                None => canceled.push((pending.derivation, status::CANCELED, None)),
            }
        }
        if !canceled.is_empty() {
            log::warn!(target: BUILDING,
                "spec={} {} build(s) canceled: derivation no longer in the store",
                shown(&self.specs[index].spec.name),
                canceled.len()
            );
            if let Err(e) = self.db.finish_builds(&canceled, unix_now()) {
                log::error!(target: BUILDING, "{e}");
            }
        }
        items
    }

    pub(super) fn open_batch(&mut self, index: usize, items: Vec<Item>, now: Instant) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        let count = items.len();
        let mut stream = match UnixStream::connect(&self.config.daemon_socket) {
            Ok(s) => s,
            Err(e) => {
                self.daemon_unreachable(index, now, &e.to_string());
                return;
            }
        };
        let batch = Batch::new(
            items,
            build::build_options(self.config.use_substitutes, self.config.fallback),
        );
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            spec_token(index, DAEMON),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!(target: BUILDING, "spec={spec} cannot watch the daemon socket: {e}");
            return;
        }
        let remaining = self.work[index].queue.len();
        log::info!(target: BUILDING, "spec={spec} batch of {count} derivation(s) submitted, {remaining} more queued");
        self.work[index].conn = Some(Conn {
            stream,
            batch,
            wants_write: true,
        });
    }

    pub(super) fn daemon_unreachable(&mut self, index: usize, now: Instant, why: &str) {
        let socket = self.config.daemon_socket.display().to_string();
        self.retry_later(
            index,
            now,
            &format!("cannot reach guix-daemon at {socket}: {why}"),
        );
    }

    /// Something went wrong with the daemon: reload the queue from the
    /// database (the unfinished builds, in order) and try again after a
    /// growing delay.  One-shot runs give up after a few tries.
    fn retry_later(&mut self, index: usize, now: Instant, why: &str) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        let work = &mut self.work[index];
        let delay = work.backoff.failed();
        log::error!(target: BUILDING, "spec={spec} {why}; retrying in {} s", delay.as_secs());
        if self.config.one_shot && work.backoff.failures() >= ONE_SHOT_DAEMON_TRIES {
            self.exit_error = Some(why.to_string());
            self.stopping = true;
        }
        match self.db.pending_builds(Some(&name)) {
            Ok(pending) => work.queue = pending.into(),
            Err(e) => log::error!(target: BUILDING, "spec={spec} {e}"),
        }
        // The lost batch's builds are pending again and must be resubmitted.
        work.submitted.clear();
        work.retry_at = Some(now + delay);
    }

    /// Reads until WouldBlock (mio is edge-triggered) and writes what is
    /// queued.  No cap: with verbosity 0 the daemon sends only trace lines.
    pub(super) fn daemon_io(&mut self, index: usize) {
        // The evaluator may still run: this is the batch's voice, not its.
        let label = format!("spec={} daemon", shown(&self.specs[index].spec.name));
        let Some(conn) = self.work[index].conn.as_mut() else {
            return;
        };
        let mut failure = None;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    if !conn.batch.is_done() {
                        failure = Some("the daemon closed the connection".to_string());
                    }
                    break;
                }
                Ok(n) => {
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
            failure = flush(conn, self.poll.registry(), spec_token(index, DAEMON)).err();
        }
        let updates = conn.batch.take_updates();
        self.apply_updates(index, updates);
        if let Some(why) = failure {
            self.batch_lost(index, &why);
        }
    }

    pub(super) fn apply_updates(&mut self, index: usize, mut updates: Vec<Update>) {
        // Settled without a trace event, a build may still have a log from
        // an earlier attempt.
        for u in &mut updates {
            if let Update::Finished {
                derivation,
                log: log @ None,
                ..
            } = u
            {
                *log = existing_log_file(derivation);
            }
        }
        if let Err(e) = self.db.apply_build_updates(&updates, unix_now()) {
            log::error!(target: BUILDING, "spec={} {e}", shown(&self.specs[index].spec.name));
        }
    }

    pub(super) fn finish_batch(&mut self, index: usize, mut conn: Conn) {
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let updates = conn.batch.take_updates();
        self.apply_updates(index, updates);
        log::info!(target: BUILDING,
            "spec={} batch of {} done{}",
            shown(&self.specs[index].spec.name),
            conn.batch.len(),
            conn.batch
                .daemon_error()
                .map(|e| format!(" ({})", e.trim_end()))
                .unwrap_or_default()
        );
    }

    /// The daemon went away mid-batch: its builds go back to the queue and
    /// the batch is submitted again after a delay.
    pub(super) fn batch_lost(&mut self, index: usize, why: &str) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        let Some(mut conn) = self.work[index].conn.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let drvs: Vec<String> = conn.batch.derivations().map(String::from).collect();
        if let Err(e) = self.db.reschedule(&drvs) {
            log::error!(target: BUILDING, "spec={spec} {e}");
        }
        let why = format!("lost guix-daemon during a batch of {}: {why}", drvs.len());
        self.retry_later(index, Instant::now(), &why);
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

/// The daemon's log of a derivation built earlier, if it kept one.
fn existing_log_file(derivation: &str) -> Option<String> {
    let base = derivation.strip_prefix("/gnu/store/")?;
    if base.len() < 3 {
        return None;
    }
    let path = format!("/var/log/guix/drvs/{}/{}.bz2", &base[..2], &base[2..]);
    std::path::Path::new(&path).exists().then_some(path)
}

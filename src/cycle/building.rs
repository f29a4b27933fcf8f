//! The building track of a cycle: pending builds read a page at a time and
//! handed to the daemon a batch at a time, beside whatever the evaluation
//! track does.

use super::*;

/// Doubling reconnection delays, capped.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(60);

    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let secs = 1u64 << self.failures.min(6).saturating_sub(1);
        Duration::from_secs(secs).min(Backoff::MAX)
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The building track: pending builds and the batch in flight.
#[derive(Debug, Default)]
pub struct Building {
    pub(super) queue: VecDeque<PendingBuild>,
    /// Keyset position of the next page to load; None once all are read.
    pub(super) next_page: Option<BuildId>,
    /// Derivations of the batch in flight: never handed over twice.
    pub(super) in_flight: HashSet<String>,
    pub(super) batch_open: bool,
    pub(super) retry_at: Option<Instant>,
    pub(super) backoff: Backoff,
}

impl Building {
    /// Nothing queued, nothing to load, nothing in flight or waiting.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.next_page.is_none()
            && !self.batch_open
            && self.retry_at.is_none()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn batch_open(&self) -> bool {
        self.batch_open
    }
}

impl Cycle {
    pub(super) fn reload_queue(&mut self) {
        self.building.queue.clear();
        self.building.next_page = Some(BuildId(0));
    }

    pub(super) fn batch_done(&mut self, daemon_error: Option<&str>) {
        let b = &mut self.building;
        b.batch_open = false;
        b.in_flight.clear();
        b.backoff.succeeded();
        log::info!(target: BUILDING,
            "spec={:?} batch done{}",
            self.spec.name,
            daemon_error
                .map(|e| format!(" ({})", e.trim_end()))
                .unwrap_or_default()
        );
    }

    /// Something went wrong with the daemon: the lost batch's builds are
    /// pending again (the loop rescheduled them), the queue is read again
    /// in order, and batches resume after a growing delay.  One-shot runs
    /// give up after a few tries.
    pub(super) fn batch_lost(&mut self, why: &str, env: &mut Env) {
        let b = &mut self.building;
        b.batch_open = false;
        b.in_flight.clear();
        let delay = b.backoff.failed();
        b.retry_at = Some(env.now + delay);
        log::error!(target: BUILDING,
            "spec={:?} {why}; retrying in {} s",
            self.spec.name,
            delay.as_secs()
        );
        if self.settings.one_shot && b.backoff.failures() >= ONE_SHOT_DAEMON_TRIES {
            self.failure = Some(why.to_string());
        }
        self.reload_queue();
    }

    /// Opens the next batch when none is in flight: up to
    /// [`build::BATCH_SIZE`] builds of the limit class of the oldest
    /// pending one (the daemon takes limits per connection), a page read
    /// from the database whenever the queue runs dry.
    pub(super) fn fill_batch(&mut self, env: &mut Env) {
        let name = self.spec.name.clone();
        let b = &mut self.building;
        if b.batch_open || self.failure.is_some() {
            return;
        }
        match b.retry_at {
            Some(at) if env.now < at => return,
            Some(_) => b.retry_at = None,
            None => {}
        }
        let mut items = Vec::new();
        let mut limits = Limits::default();
        let mut canceled = Vec::new();
        while items.is_empty() {
            if b.queue.is_empty() {
                let Some(after) = b.next_page else { break };
                match env.db.pending_builds_page(&name, after, PAGE) {
                    Ok(page) => {
                        b.next_page = (page.len() == PAGE).then(|| page.last().unwrap().id);
                        b.queue.extend(page);
                    }
                    Err(e) => {
                        log::error!(target: BUILDING, "spec={name:?} {e}");
                        break;
                    }
                }
                if b.queue.is_empty() {
                    break;
                }
            }
            let taken = build::take_batch(&mut b.queue, build::BATCH_SIZE);
            limits = taken.first().map(|p| p.limits).unwrap_or_default();
            for pending in taken {
                if b.in_flight.contains(&pending.derivation) {
                    continue;
                }
                // A derivation collected since evaluation cannot be built.
                match (env.read_drv)(&pending.derivation)
                    .ok()
                    .and_then(|bytes| Derivation::parse(&bytes).ok())
                {
                    Some(drv) => {
                        b.in_flight.insert(pending.derivation.clone());
                        items.push(Item {
                            outputs: drv.outputs.iter().map(|o| o.path.clone()).collect(),
                            inputs: drv.input_drvs.iter().map(|(d, _)| d.clone()).collect(),
                            derivation: pending.derivation,
                        });
                    }
                    None => canceled.push((pending.derivation, status::CANCELED, None)),
                }
            }
        }
        if !canceled.is_empty() {
            log::warn!(target: BUILDING,
                "spec={name:?} {} build(s) canceled: derivation no longer in the store",
                canceled.len()
            );
            if let Err(e) = env.db.finish_builds(&canceled, env.unix_now) {
                log::error!(target: BUILDING, "spec={name:?} {e}");
            }
        }
        if !items.is_empty() {
            // The loop logs the batch once it is on a connection.
            b.batch_open = true;
            self.commands.push_back(Command::OpenBatch(items, limits));
        }
    }
}

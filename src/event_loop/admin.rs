//! What the operators' actions ask of the loop ([`Effect`]s): triggered
//! cycles, queues read again, log copies kept as an attempt's, cycles
//! added or stopped; and the token file read at start and on SIGHUP.

use super::*;
use crate::admin::{Auth, Effect, Tokens};
use crate::buildlog::Compression;

/// Reads the token file and the webhook secret the options name.
pub(super) fn load_auth(config: &Config) -> Result<Auth, Fatal> {
    let tokens = match &config.admin_tokens {
        Some(path) => read_tokens(path)?,
        None => Tokens::default(),
    };
    let secret = match &config.webhook_secret {
        Some(path) => {
            let text = std::fs::read(path)
                .map_err(|e| format!("cannot read the webhook secret {}: {e}", path.display()))?;
            let secret = text.trim_ascii().to_vec();
            if secret.len() < crate::admin::MIN_TOKEN_LEN {
                return Err(format!(
                    "{}: the webhook secret is shorter than {} bytes",
                    path.display(),
                    crate::admin::MIN_TOKEN_LEN
                ));
            }
            Some(secret)
        }
        None => None,
    };
    match tokens.is_empty() {
        true => log::info!(target: logging::ADMIN, "no admin tokens: every action is refused"),
        false => log::info!(target: logging::ADMIN, "{} admin token(s) loaded", tokens.len()),
    }
    let mut auth = Auth::new(tokens, secret);
    auth.secure_cookies = config.secure_cookies;
    Ok(auth)
}

fn read_tokens(path: &std::path::Path) -> Result<Tokens, Fatal> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin tokens {}: {e}", path.display()))?;
    Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl EventLoop {
    /// SIGHUP: the token file again; a broken one keeps the tokens we had.
    pub(super) fn reload_auth(&mut self) {
        let (Some(path), Some(http)) = (&self.config.admin_tokens, self.http.as_mut()) else {
            return;
        };
        match read_tokens(path) {
            Ok(tokens) => {
                log::info!(target: logging::ADMIN, "SIGHUP: {} admin token(s) loaded", tokens.len());
                http.auth_mut().tokens = tokens;
            }
            Err(e) => {
                log::error!(target: logging::ADMIN, "SIGHUP: {e} (keeping the current tokens)")
            }
        }
    }

    /// The slot of the live cycle of spec `name`: a stopped one stays as
    /// a tombstone (its tokens are its index), and a reactivated spec
    /// gets a new slot.
    pub(super) fn live_slot(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .rposition(|s| s.cycle.spec.name == name && !matches!(s.cycle.state(), State::Stopped))
    }

    pub(super) fn apply_effects(&mut self, now: Instant) {
        let Some(http) = self.http.as_mut() else {
            return;
        };
        let effects = http.take_effects();
        if !effects.is_empty() {
            // Effects write (feeding a cycle, the queue): not within the
            // turn's read transaction.
            self.db.end_reads();
        }
        for effect in effects {
            // A deleted specification's history goes a chunk per turn.
            self.roots.deleting |= matches!(effect, Effect::SpecDeleted { .. });
            match effect {
                Effect::Trigger { spec, commit } => match self.live_slot(&spec) {
                    Some(i) => self.feed(i, Input::Trigger { commit }, now),
                    None => {
                        log::warn!(target: logging::ADMIN, "spec={spec:?} triggered but not polled")
                    }
                },
                // Restarted builds join the queue, canceled ones leave it;
                // restarted builds want their `.drv` kept again, and
                // canceled ones no longer.
                Effect::Requeue { .. } => {
                    self.roots.planner.rescan(unix_now());
                    self.feed_dispatcher(queue::Input::Changed, now);
                }
                Effect::KeepLog { build, attempt } => self.keep_log(build, attempt),
                // An activated spec's pending builds may go; a stopped
                // one's wait (those in flight end).
                Effect::SpecChanged(spec) => {
                    match self.live_slot(&spec.name) {
                        Some(i) => self.slots[i].cycle.replace_spec(*spec),
                        None if usable_name(&spec.name) => {
                            log::info!(target: logging::SPEC, "spec={:?} added", spec.name);
                            self.add_slot(*spec, now);
                        }
                        None => {}
                    }
                    self.feed_dispatcher(queue::Input::Changed, now);
                }
                Effect::SpecStopped { spec } | Effect::SpecDeleted { spec } => {
                    if let Some(i) = self.live_slot(&spec) {
                        self.feed(i, Input::Stop, now);
                    }
                    self.feed_dispatcher(queue::Input::Changed, now);
                }
            }
        }
    }

    /// The copy of a restarted build's log becomes its attempt's: the
    /// next run's copy takes the build's name.  Renames only, so nothing
    /// here is slow.
    fn keep_log(&self, build: crate::records::BuildId, attempt: i64) {
        for c in [Compression::Gzip, Compression::Bzip2] {
            let from = self.logs.copy_path(build, c);
            if from.is_file() {
                let to = self.logs.attempt_path(build, attempt, c);
                if let Err(e) = std::fs::rename(&from, &to) {
                    log::error!(target: logging::ADMIN, "build {build}: keeping its log: {e}");
                }
            }
        }
        let _ = std::fs::remove_file(self.logs.tail_path(build));
    }
}

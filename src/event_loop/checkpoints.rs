//! The checkpointer child ([`crate::db::checkpointer`]): started with
//! the loop, started again after a pause if it ends, killed at the end.

use super::*;
use crate::logging::DB;

/// How long the loop waits before starting a checkpointer that ended.
const RESTART_AFTER: Duration = Duration::from_secs(10);
/// How often the loop looks at the free space for its allowance.
const FIT_EVERY: Duration = Duration::from_secs(1);

/// The child and when to start it if there is none.
pub(super) struct Checkpoints {
    child: Option<std::process::Child>,
    start_at: Instant,
    /// The loop connection's allowance last set, and last logged, in
    /// pages of log; when to look at the free space again.
    allowance: Option<i64>,
    logged: Option<i64>,
    fit_at: Instant,
}

impl Checkpoints {
    pub(super) fn new(now: Instant) -> Checkpoints {
        Checkpoints {
            child: None,
            start_at: now,
            allowance: None,
            logged: None,
            fit_at: now,
        }
    }

    /// When the loop should come back to start a checkpointer.
    pub(super) fn due(&self) -> Option<Instant> {
        self.child.is_none().then_some(self.start_at)
    }
}

impl EventLoop {
    /// Starts the checkpointer when it is due, and notices its end (the
    /// loop's own connection checkpoints past its allowance either way).
    pub(super) fn checkpoints_turn(&mut self, now: Instant) {
        if let Some(child) = self.checkpoints.child.as_mut() {
            match child.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) => {
                    log::warn!(target: DB, "checkpointer ended ({status}); starting another in {} s", RESTART_AFTER.as_secs())
                }
                Err(e) => log::warn!(target: DB, "checkpointer: {e}"),
            }
            self.checkpoints.child = None;
            self.checkpoints.start_at = now + RESTART_AFTER;
        }
        if now < self.checkpoints.start_at || self.stopping {
            return;
        }
        self.checkpoints.start_at = now + RESTART_AFTER;
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                log::warn!(target: DB, "no checkpointer: cannot find the cuirass executable: {e}");
                return;
            }
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(crate::db::checkpointer::SUBCOMMAND)
            .arg(&self.config.database)
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::null());
        child::die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(proc) => {
                log::debug!(target: DB, "checkpointer started, pid {}", proc.id());
                self.checkpoints.child = Some(proc);
            }
            Err(e) => log::warn!(target: DB, "no checkpointer: {e}"),
        }
    }

    /// The loop's own checkpoint allowance, from the free space on the
    /// database's disk ([`crate::db::checkpointer::allowance`]), once a
    /// second at most (a `statvfs`); set when it changed, and a line
    /// when it is a tenth or ten times what the last line said, so that
    /// a disk filling up is seen.
    pub(super) fn fit_checkpoints(&mut self, now: Instant) {
        if now < self.checkpoints.fit_at {
            return;
        }
        self.checkpoints.fit_at = now + FIT_EVERY;
        let pages = match self.db.checkpoint_allowance() {
            Ok(pages) if Some(pages) == self.checkpoints.allowance => return,
            Ok(pages) => pages,
            Err(e) => return log::warn!(target: DB, "checkpoint allowance not known: {e}"),
        };
        if let Err(e) = self.db.set_checkpoint_allowance(pages) {
            return log::warn!(target: DB, "checkpoint allowance not set: {e}");
        }
        self.checkpoints.allowance = Some(pages);
        let logged = self.checkpoints.logged;
        if logged.is_none_or(|l| pages >= l * 10 || pages * 10 <= l) {
            log::info!(target: DB, "checkpoints in the loop past {pages} pages of log");
            self.checkpoints.logged = Some(pages);
        }
    }

    /// Kills the checkpointer and waits for it.
    pub(super) fn stop_checkpoints(&mut self) {
        if let Some(mut child) = self.checkpoints.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

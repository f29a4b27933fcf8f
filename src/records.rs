//! Values that the database and the build logic both speak of: ids, build
//! and evaluation statuses, a job's limits, a build's status change, a
//! pending build.  A leaf module, so that `db` and `build` depend on it
//! and not on each other.

pub type EvalId = i64;
pub type BuildId = i64;

/// Build statuses: Hydra's, plus two of Cuirass's own.
pub mod status {
    pub const SCHEDULED: i64 = -2;
    pub const STARTED: i64 = -1;
    pub const SUCCEEDED: i64 = 0;
    pub const FAILED: i64 = 1;
    pub const FAILED_DEPENDENCY: i64 = 2;
    pub const FAILED_OTHER: i64 = 3;
    pub const CANCELED: i64 = 4;

    pub fn is_final(status: i64) -> bool {
        status >= 0
    }
}

/// Evaluation outcomes, in the column migration 2 adds.
pub mod eval_status {
    /// Jobs are still being registered as the evaluator prints them.
    pub const IN_PROGRESS: i64 = -1;
    pub const SUCCEEDED: i64 = 0;
    pub const FAILED: i64 = 1;
}

/// A job's build limits, in seconds: the build fails when it prints
/// nothing for `max_silent_time`, or runs longer than `timeout`.  `None`
/// leaves the daemon's own setting (its `--max-silent-time` and
/// `--timeout`, both 0 = none by default).
///
/// guix-daemon takes limits per connection (set-options), not per
/// derivation, so a batch holds builds of one limit class only.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_silent_time: Option<u64>,
    pub timeout: Option<u64>,
}

/// A change of a build's status, for the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Started {
        derivation: String,
        log: String,
    },
    /// `reason` is the daemon's word on a failure: `timed out after 3
    /// seconds`, `timed out after 2 seconds of silence`, `builder for
    /// `…drv' failed with exit code 1`; `None` when it said nothing.
    Finished {
        derivation: String,
        status: i64,
        log: Option<String>,
        reason: Option<String>,
    },
    /// The daemon's build hook (`guix offload`) sent the build to the
    /// build machine `host` (`@ build-remote DRV HOST`); a build started
    /// without one ran on the daemon's own machine.
    Remote {
        derivation: String,
        host: String,
    },
}

/// A build that has not reached a final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBuild {
    pub id: BuildId,
    pub derivation: String,
    pub evaluation: EvalId,
    pub specification: String,
    /// Its job's limits: builds are batched by them.
    pub limits: Limits,
}

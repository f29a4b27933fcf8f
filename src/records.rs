//! Values that the database and the build logic both speak of: ids, build
//! and evaluation statuses, a job's limits, a build's status change, a
//! pending build.  A leaf module, so that `db` and `build` depend on it
//! and not on each other.

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use std::fmt;

/// Row ids of `Evaluations` and `Builds`: SQLite integers, as in the 2018
/// tables and in the API's `id`, `evaluation` and `build` fields (JSON
/// numbers).  Distinct types so that an evaluation id is never passed as a
/// build id; `.0` is the number, for arithmetic and formatting.
macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        // Tests and page arithmetic compare ids with numbers as written.
        impl PartialEq<i64> for $name {
            fn eq(&self, n: &i64) -> bool {
                self.0 == *n
            }
        }

        impl PartialEq<$name> for i64 {
            fn eq(&self, id: &$name) -> bool {
                *self == id.0
            }
        }

        impl PartialEq<$name> for serde_json::Value {
            fn eq(&self, id: &$name) -> bool {
                self.as_i64() == Some(id.0)
            }
        }

        impl From<i64> for $name {
            fn from(n: i64) -> Self {
                $name(n)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.0))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }
    };
}

row_id!(
    /// An evaluation's id (`Evaluations.id`).
    EvalId
);
row_id!(
    /// A build's id (`Builds.id`).
    BuildId
);

/// A build's status, as the `Builds.status` column and the API's
/// `buildstatus` write it: Hydra's numbers, plus two of Cuirass's own
/// (−2 scheduled, −1 started).  Final statuses are ≥ 0.  Other numbers in a
/// column are read as [`BuildStatus::of_column`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Scheduled,
    Started,
    Succeeded,
    Failed,
    FailedDependency,
    FailedOther,
    Canceled,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 7] = [
        BuildStatus::Scheduled,
        BuildStatus::Started,
        BuildStatus::Succeeded,
        BuildStatus::Failed,
        BuildStatus::FailedDependency,
        BuildStatus::FailedOther,
        BuildStatus::Canceled,
    ];

    /// The number in the database and the API.
    pub const fn code(self) -> i64 {
        match self {
            BuildStatus::Scheduled => -2,
            BuildStatus::Started => -1,
            BuildStatus::Succeeded => 0,
            BuildStatus::Failed => 1,
            BuildStatus::FailedDependency => 2,
            BuildStatus::FailedOther => 3,
            BuildStatus::Canceled => 4,
        }
    }

    /// The status numbered `code`; `None` for a number no status has.
    pub fn from_code(code: i64) -> Option<BuildStatus> {
        BuildStatus::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The status a `Builds.status` column's `code` means.  A database
    /// written by another program may hold Hydra's further failure codes
    /// (5 and up, e.g. 7 timed out), failures of another kind, or today's
    /// Cuirass's −3 (submitted: not yet started), scheduled to us.
    pub fn of_column(code: i64) -> BuildStatus {
        match BuildStatus::from_code(code) {
            Some(st) => st,
            None if code > 0 => BuildStatus::FailedOther,
            None => BuildStatus::Scheduled,
        }
    }

    /// Succeeded, failed (in any way) or canceled: the build is over.
    pub const fn is_final(self) -> bool {
        self.code() >= 0
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.code().fmt(f)
    }
}

impl ToSql for BuildStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.code()))
    }
}

impl FromSql for BuildStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(BuildStatus::of_column)
    }
}

// Unit tests compare statuses with numbers read by hand from SQL.
#[cfg(test)]
impl PartialEq<BuildStatus> for i64 {
    fn eq(&self, st: &BuildStatus) -> bool {
        *self == st.code()
    }
}

#[cfg(test)]
impl PartialEq<i64> for BuildStatus {
    fn eq(&self, code: &i64) -> bool {
        self.code() == *code
    }
}

impl serde::Serialize for BuildStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

/// The statuses by their names, for code that reads as the 2018 sources
/// did (`status::SUCCEEDED`).
pub mod status {
    use super::BuildStatus;

    pub const SCHEDULED: BuildStatus = BuildStatus::Scheduled;
    pub const STARTED: BuildStatus = BuildStatus::Started;
    pub const SUCCEEDED: BuildStatus = BuildStatus::Succeeded;
    pub const FAILED: BuildStatus = BuildStatus::Failed;
    pub const FAILED_DEPENDENCY: BuildStatus = BuildStatus::FailedDependency;
    pub const FAILED_OTHER: BuildStatus = BuildStatus::FailedOther;
    pub const CANCELED: BuildStatus = BuildStatus::Canceled;

    pub fn is_final(status: BuildStatus) -> bool {
        status.is_final()
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
        status: BuildStatus,
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
    /// Its place class in the queue: spec priority × 10 + job priority.
    pub rank: i64,
    pub derivation: String,
    pub evaluation: EvalId,
    pub specification: String,
    /// Its job's limits, which its build request's options carry.
    pub limits: Limits,
}

//! The target of each log line: the part of cuirass it comes from.
//!
//! env_logger prints the target beside the level, `RUST_LOG` filters on
//! it (`RUST_LOG=info,cuirass::building=debug`), and it says which part
//! spoke even when the line comes from code shared between parts (the
//! build events of a batch submitted while the evaluator still runs are
//! `building`, not `evaluation`).
//!
//! Names from outside (spec names from an old database, job names and
//! messages from the evaluator, request paths) are printed with `{:?}`:
//! quoted and escaped, a newline in one can neither split the line nor
//! pass for the next field.

/// Git fetches and their child process.
pub const FETCH: &str = "cuirass::fetch";
/// `./bootstrap`, `./configure`, `make` in a checkout.
pub const COMPILE: &str = "cuirass::compile";
/// The evaluator, its output, and the evaluations recorded.
pub const EVALUATION: &str = "cuirass::evaluation";
/// Batches handed to guix-daemon and the build events it sends back.
pub const BUILDING: &str = "cuirass::building";
/// The HTTP server, the API and the dashboard.
pub const HTTP: &str = "cuirass::http";
/// Specification files read at start-up or on SIGHUP.
pub const SPEC: &str = "cuirass::spec";
/// Operators' actions, triggers and webhooks: who did what.
pub const ADMIN: &str = "cuirass::admin";
/// Notification commands: events delivered, retried, given up.
pub const NOTIFY: &str = "cuirass::notify";
/// GC roots made, released and expired (`gcroots`).
pub const GC_ROOTS: &str = "cuirass::gcroots";
/// Old evaluations deleted (`retention`).
pub const RETENTION: &str = "cuirass::retention";
/// The database: migrations and its background upkeep.
pub const DB: &str = "cuirass::db";

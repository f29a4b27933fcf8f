//! cuirass: a continuous-integration daemon for GNU Guix.
//!
//! Codemap, in the order data flows through the program:
//!
//! - `cli`: command-line options, their documentation, and defaults.
//! - `logging`: the log target of each part of cuirass.
//! - `sexp`: the S-expression reader and writer (pure; no I/O).
//! - `spec`: specification files turned into [`spec::Specification`]s:
//!   2018 alists, and today's `specification` records (`spec::record`).
//! - `drv`: the ATerm `.drv` file parser (pure).
//! - `wire`: the guix-daemon worker protocol, as a sans-I/O client.
//! - `trace`: build-trace lines (`@ build-started …`) parsed (pure).
//! - `http`: HTTP/1.1 requests parsed and responses written (pure).
//! - `records`: ids, statuses, limits and status updates that `db` and
//!   `build` share (so neither depends on the other).
//! - `db`: the SQLite database: schema migrations and every query.
//! - `job`: evaluator output lines turned into jobs.
//! - `fetch`: git checkouts, run in a child process of this binary (a
//!   record spec's channels, authenticated by `guix git authenticate`,
//!   in `fetch::channels`).
//! - `child`: subprocesses whose pipes the event loop watches.
//! - `build`: one batch of derivations of one limit class handed to the
//!   daemon, and its statuses, machines (`@ build-remote`) and output.
//! - `cycle`: one specification's cycle, a sans-I/O state machine (the
//!   evaluation track and the building track).
//! - `buildlog`: build logs found, decoded (a sans-I/O codec), streamed a
//!   chunk per turn and copied per build; running builds' live logs,
//!   written as their output arrives and followed by `/build/ID/log/raw`.
//! - `routes`: every HTTP route in one table (dispatch, `/metrics` labels).
//! - `admin`: write access (tokens, sessions, CSRF, the trigger rate
//!   limit, webhook signatures) and the [`admin::Effect`]s an action asks
//!   of the loop (pure: time is given).
//! - `api`: the HTTP routes over the database; the only JSON serializer
//!   (the actions' routes are `api::admin`).
//! - `html`: escaping, the page layout and formatters for the dashboard (pure).
//! - `web`: the dashboard's pages, `/metrics` and badges; then `api`.
//! - `http_server`: the listener and connections the loop drives.
//! - `signals`: signals turned into a readable pipe for the loop.
//! - `event_loop`: the single-threaded mio loop that moves bytes.
//!
//! Invariants: codecs (`sexp`, `drv`, `wire`, `trace`, `http`) do no I/O;
//! only the shell (`event_loop`, `http_server`) reads the clock, everything
//! else is handed `now`; only `db` writes SQL; only `api` writes JSON; nothing holds a
//! whole build log (`buildlog` reads and decodes bounded chunks); no log
//! line prints a name from outside (a spec's, a job's, a derivation from
//! the evaluator) but quoted with escapes (`{:?}`); no log line goes out
//! without the target of its part (`logging`); nothing answered to GET
//! or HEAD changes anything, and every change goes through `api::admin`,
//! which checks who asks and logs who did it.

pub mod admin;
pub mod api;
pub mod build;
pub mod buildlog;
pub mod child;
pub mod cli;
pub mod cycle;
pub mod db;
pub mod drv;
pub mod event_loop;
pub mod fetch;
pub mod html;
pub mod http;
pub mod http_server;
pub mod job;
pub mod logging;
pub mod records;
pub mod routes;
pub mod sexp;
pub mod signals;
pub mod spec;
pub mod trace;
pub mod web;
pub mod wire;

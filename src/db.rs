//! The SQLite database: the 2018 Cuirass tables, numbered migrations, and
//! every query cuirass makes.  Only this module writes SQL.

use crate::records::Limits;
use crate::spec::Specification;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashSet;
use std::path::Path;

pub use crate::records::{BuildId, BuildStatus, EvalId, PendingBuild, eval_status, status};

/// Migration 1: the original tables, without a secondary index.  Public
/// so that the benchmarks can generate a large database in them and let
/// [`Db::open`] build the indexes in one sorted pass each.
pub const ORIGINAL_TABLES: &str = "CREATE TABLE IF NOT EXISTS Specifications (
       repo_name     TEXT NOT NULL PRIMARY KEY,
       url           TEXT NOT NULL,
       load_path     TEXT NOT NULL,
       file          TEXT NOT NULL,
       proc          TEXT NOT NULL,
       arguments     TEXT NOT NULL,
       branch        TEXT,
       tag           TEXT,
       revision      TEXT,
       no_compile_p  INTEGER);
     CREATE TABLE IF NOT EXISTS Stamps (
       specification TEXT NOT NULL PRIMARY KEY,
       stamp         TEXT NOT NULL,
       FOREIGN KEY (specification) REFERENCES Specifications (repo_name));
     CREATE TABLE IF NOT EXISTS Evaluations (
       id            INTEGER PRIMARY KEY AUTOINCREMENT,
       specification TEXT NOT NULL,
       revision      TEXT NOT NULL,
       FOREIGN KEY (specification) REFERENCES Specifications (repo_name));
     CREATE TABLE IF NOT EXISTS Derivations (
       derivation    TEXT NOT NULL,
       evaluation    INTEGER NOT NULL,
       job_name      TEXT NOT NULL,
       system        TEXT NOT NULL,
       nix_name      TEXT NOT NULL,
       PRIMARY KEY (derivation, evaluation),
       FOREIGN KEY (evaluation) REFERENCES Evaluations (id));
     CREATE TABLE IF NOT EXISTS Builds (
       id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
       derivation    TEXT NOT NULL,
       evaluation    INTEGER NOT NULL,
       log           TEXT NOT NULL,
       status        INTEGER NOT NULL,
       timestamp     INTEGER NOT NULL DEFAULT 0,
       starttime     INTEGER NOT NULL DEFAULT 0,
       stoptime      INTEGER NOT NULL DEFAULT 0,
       FOREIGN KEY (derivation, evaluation) REFERENCES Derivations (derivation, evaluation));
     CREATE TABLE IF NOT EXISTS Outputs (
       build INTEGER NOT NULL,
       name  TEXT NOT NULL,
       path  TEXT NOT NULL,
       PRIMARY KEY (build, name),
       FOREIGN KEY (build) REFERENCES Builds (id));";

/// Whether job name `name` (an SQL expression) is one of evaluation
/// ?2's, under any of its names: seeks in the indexes by name, where an
/// `IN (SELECT ...)` of the evaluation's 75,000 names would hold them all
/// in memory (a few MiB of the registration's peak RSS).  The small
/// fresh index first: a new evaluation's names are there until they
/// move, and a seek in the large one reads a leaf of 10,000,000 entries
/// (in a WHERE clause SQLite stops at the first arm that holds).
fn new_name(name: &str) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM Derivations n INDEXED BY Derivations_job_name_fresh
                  WHERE n.job_name = {name} AND n.evaluation = ?2 AND n.fresh = 1)
          OR EXISTS (SELECT 1 FROM Derivations n INDEXED BY Derivations_job_name
                     WHERE n.job_name = {name} AND n.evaluation = ?2 AND n.fresh = 0)
          OR EXISTS (SELECT 1 FROM JobAliases n
                     WHERE n.evaluation = ?2 AND n.job_name = {name}))"
    )
}

/// The triggers that take a job name out of `JobNames` with its last
/// row, made by migration 22 and again by 25, which rebuild the tables
/// they name (a macro: the migrations are literals).
macro_rules! job_name_triggers {
    () => {
        "
     CREATE TRIGGER Derivations_job_name_delete AFTER DELETE ON Derivations
       WHEN NOT EXISTS (SELECT 1 FROM Derivations INDEXED BY Derivations_job_name
                        WHERE job_name = old.job_name AND fresh = 0)
        AND NOT EXISTS (SELECT 1 FROM Derivations INDEXED BY Derivations_job_name_fresh
                        WHERE job_name = old.job_name AND fresh = 1)
        AND NOT EXISTS (SELECT 1 FROM JobAliases WHERE job_name = old.job_name) BEGIN
       DELETE FROM JobNames WHERE name = old.job_name;
     END;
     CREATE TRIGGER JobAliases_job_name_delete AFTER DELETE ON JobAliases
       WHEN NOT EXISTS (SELECT 1 FROM Derivations INDEXED BY Derivations_job_name
                        WHERE job_name = old.job_name AND fresh = 0)
        AND NOT EXISTS (SELECT 1 FROM Derivations INDEXED BY Derivations_job_name_fresh
                        WHERE job_name = old.job_name AND fresh = 1)
        AND NOT EXISTS (SELECT 1 FROM JobAliases WHERE job_name = old.job_name) BEGIN
       DELETE FROM JobNames WHERE name = old.job_name;
     END;"
    };
}

/// The schema is append-only: an old database replays the migrations it
/// has not seen, in order, each in the transaction that bumps
/// `user_version`.  Migration 1 is the schema of Cuirass as of March 2018,
/// with `IF NOT EXISTS` so that a database written by the original passes
/// through it untouched.
const MIGRATIONS: &[&str] = &[
    ORIGINAL_TABLES,
    // 2: evaluation outcomes and the indexes the scheduler and API need.
    "ALTER TABLE Evaluations ADD COLUMN status INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE Evaluations ADD COLUMN error TEXT;
     ALTER TABLE Evaluations ADD COLUMN timestamp INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX IF NOT EXISTS Builds_status_stoptime ON Builds (status, stoptime DESC);
     CREATE INDEX IF NOT EXISTS Builds_derivation ON Builds (derivation);
     CREATE INDEX IF NOT EXISTS Builds_evaluation ON Builds (evaluation, status);
     CREATE INDEX IF NOT EXISTS Derivations_evaluation ON Derivations (evaluation);
     CREATE INDEX IF NOT EXISTS Evaluations_specification ON Evaluations (specification, id);",
    // 3: the HTTP API's orders (finished builds by stop time, the queue)
    // and its one selective filter, the job name.
    "CREATE INDEX IF NOT EXISTS Builds_finished ON Builds (stoptime DESC, id DESC) WHERE status >= 0;
     CREATE INDEX IF NOT EXISTS Builds_queue ON Builds (status DESC, timestamp, id) WHERE status < 0;
     CREATE INDEX IF NOT EXISTS Derivations_job_name ON Derivations (job_name);",
    // 4: when an evaluation ended, for its duration on /metrics, and an
    // index that holds what /metrics reads of finished builds, so that a
    // scrape does not read the table.
    "ALTER TABLE Evaluations ADD COLUMN evaltime INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX IF NOT EXISTS Builds_duration ON Builds (status, starttime, stoptime)
       WHERE status >= 0;",
    // 5: the build-duration histogram kept as builds finish, since
    // computing it at each scrape read every finished build (a third of a
    // second per million, in the loop's thread); filled once here.  The
    // CASE is BUILD_DURATION_BOUNDS (a test checks they agree).  The
    // index of migration 4 goes: it only served that scan, and it lured
    // the planner away from Builds_finished.
    "CREATE TABLE IF NOT EXISTS BuildDurations (
       bucket INTEGER PRIMARY KEY,
       count  INTEGER NOT NULL,
       sum    REAL NOT NULL);
     INSERT INTO BuildDurations (bucket, count, sum)
       SELECT CASE WHEN v <= 1 THEN 0 WHEN v <= 5 THEN 1 WHEN v <= 10 THEN 2 WHEN v <= 30 THEN 3 WHEN v <= 60 THEN 4 WHEN v <= 300 THEN 5 WHEN v <= 600 THEN 6 WHEN v <= 1800 THEN 7 WHEN v <= 3600 THEN 8 WHEN v <= 7200 THEN 9 WHEN v <= 21600 THEN 10 WHEN v <= 86400 THEN 11 ELSE 12 END AS k, COUNT(*), TOTAL(v)
       FROM (SELECT stoptime - starttime AS v FROM Builds WHERE status >= 0 AND starttime > 0)
       GROUP BY k;
     DROP INDEX IF EXISTS Builds_duration;",
    // 6: Builds_status_stoptime is covered by the partial indexes of
    // migration 3 for every query but the count by status, which
    // Builds_evaluation covers as well; every build insert and status
    // change paid for it.
    "DROP INDEX IF EXISTS Builds_status_stoptime;",
    // 7: Builds_finished in ascending order, read backwards: builds finish
    // in increasing stop time, so new entries now land at the index's right
    // edge, where SQLite appends to the last page instead of splitting
    // pages at the left one.
    "DROP INDEX IF EXISTS Builds_finished;
     CREATE INDEX Builds_finished ON Builds (stoptime, id) WHERE status >= 0;",
    // 8: what today's jobs say beyond the 2018 convention.  A build's
    // limits (seconds; NULL leaves the daemon's own) and priority, with
    // Hydra's column names, and `errormsg`, the daemon's reason for a
    // failure ("timed out after 3 seconds").  `Inputs` holds the input
    // derivations of each build's `.drv`, as `Outputs` holds its outputs;
    // they are what today's `#:inputs` lists.
    "ALTER TABLE Builds ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE Builds ADD COLUMN timeout INTEGER;
     ALTER TABLE Builds ADD COLUMN maxsilent INTEGER;
     ALTER TABLE Builds ADD COLUMN errormsg TEXT;
     CREATE TABLE IF NOT EXISTS Inputs (
       build      INTEGER NOT NULL,
       derivation TEXT NOT NULL,
       PRIMARY KEY (build, derivation),
       FOREIGN KEY (build) REFERENCES Builds (id)) WITHOUT ROWID;",
    // 9: today's HTTP API.  A build's weather and a job's history walk
    // one job's derivations by evaluation, and each step finds its build
    // by (derivation, evaluation): both indexes gain the evaluation, which
    // the lookups by job name or derivation alone still use as a prefix.
    // `/output/ITEM` and `/log/ITEM` find builds by store item.
    "DROP INDEX IF EXISTS Derivations_job_name;
     CREATE INDEX Derivations_job_name ON Derivations (job_name, evaluation);
     DROP INDEX IF EXISTS Builds_derivation;
     CREATE INDEX Builds_derivation ON Builds (derivation, evaluation);
     CREATE INDEX IF NOT EXISTS Outputs_path ON Outputs (path);",
    // 10: the machine that ran each build (`localhost`, or the build
    // machine `guix offload` named), NULL for builds never started or
    // recorded before; the index serves the /machines page, which reads
    // the last day's builds by stop time.
    "ALTER TABLE Builds ADD COLUMN worker TEXT;
     CREATE INDEX IF NOT EXISTS Builds_worker ON Builds (stoptime, worker)
       WHERE worker IS NOT NULL;",
    // 11: operators' actions.  A restarted build keeps its earlier
    // attempts (status, times, log, reason) in `BuildAttempts`; `Inputs`
    // is read backwards to find the builds that failed because of one;
    // an inactive specification keeps its history but is not polled;
    // `AdminLog` says who did what.
    "CREATE TABLE IF NOT EXISTS BuildAttempts (
       build     INTEGER NOT NULL,
       attempt   INTEGER NOT NULL,
       status    INTEGER NOT NULL,
       starttime INTEGER NOT NULL,
       stoptime  INTEGER NOT NULL,
       log       TEXT NOT NULL,
       errormsg  TEXT,
       PRIMARY KEY (build, attempt),
       FOREIGN KEY (build) REFERENCES Builds (id)) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS Inputs_derivation ON Inputs (derivation);
     ALTER TABLE Specifications ADD COLUMN is_active INTEGER NOT NULL DEFAULT 1;
     CREATE TABLE IF NOT EXISTS AdminLog (
       id        INTEGER PRIMARY KEY AUTOINCREMENT,
       timestamp INTEGER NOT NULL,
       who       TEXT NOT NULL,
       action    TEXT NOT NULL,
       target    TEXT NOT NULL,
       outcome   TEXT NOT NULL);",
    // 12: today's specifications.  A record spec keeps its whole record,
    // written as `(<specification> (FIELD . VALUE) ...)` (NULL for a
    // 2018 alist), and its priority as a column (`is_active`, which migration 11 added,
    // is the other field queries need).  Each
    // evaluation records the commit and directory of every channel, and
    // succeeded builds the files their spec's `build-outputs` name.
    "ALTER TABLE Specifications ADD COLUMN record TEXT;
     ALTER TABLE Specifications ADD COLUMN priority INTEGER;
     CREATE TABLE IF NOT EXISTS Checkouts (
       evaluation INTEGER NOT NULL,
       channel    TEXT NOT NULL,
       revision   TEXT NOT NULL,
       directory  TEXT NOT NULL,
       PRIMARY KEY (evaluation, channel),
       FOREIGN KEY (evaluation) REFERENCES Evaluations (id)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS BuildProducts (
       id        INTEGER PRIMARY KEY AUTOINCREMENT,
       build     INTEGER NOT NULL,
       type      TEXT NOT NULL,
       file_size INTEGER NOT NULL,
       path      TEXT NOT NULL,
       FOREIGN KEY (build) REFERENCES Builds (id));
     CREATE INDEX IF NOT EXISTS BuildProducts_build ON BuildProducts (build);",
    // 13: a job's other names.  Two jobs of one evaluation may have one
    // derivation (a package under two names); the 2018 key (derivation,
    // evaluation) holds one Derivations row and one build, under the
    // first name, as 2018's readers expect.  Each further name is a row
    // here pointing at that build, so that queries by job name find it
    // under every name: by name across evaluations (`JobAliases_job_name`),
    // by evaluation (the key) and by build (a build's page, deletions).
    "CREATE TABLE IF NOT EXISTS JobAliases (
       evaluation INTEGER NOT NULL,
       job_name   TEXT NOT NULL,
       build      INTEGER NOT NULL,
       PRIMARY KEY (evaluation, job_name),
       FOREIGN KEY (evaluation) REFERENCES Evaluations (id),
       FOREIGN KEY (build) REFERENCES Builds (id)) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS JobAliases_job_name ON JobAliases (job_name, evaluation);
     CREATE INDEX IF NOT EXISTS JobAliases_build ON JobAliases (build);",
    // 14: weather and notifications.  A finished build's weather is
    // computed once, when it finishes, and kept (NULL: finished before,
    // computed when read).  `WeatherCounts` counts them by specification
    // for /metrics, as `BuildDurations` does durations.  `Events` are the
    // weather changes and failed evaluations, with what a notification
    // says (copied, so that it outlives a deleted specification), and
    // their delivery to the notification command: the queue survives a
    // restart; its partial index holds only what is left to send.
    "ALTER TABLE Builds ADD COLUMN weather INTEGER;
     CREATE TABLE IF NOT EXISTS WeatherCounts (
       specification TEXT NOT NULL,
       weather       INTEGER NOT NULL,
       count         INTEGER NOT NULL,
       PRIMARY KEY (specification, weather)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS Events (
       id            INTEGER PRIMARY KEY AUTOINCREMENT,
       timestamp     INTEGER NOT NULL,
       kind          TEXT NOT NULL,
       specification TEXT NOT NULL,
       evaluation    INTEGER NOT NULL,
       revision      TEXT NOT NULL,
       build         INTEGER,
       job_name      TEXT,
       derivation    TEXT,
       status        INTEGER,
       weather       INTEGER,
       error         TEXT,
       delivery      INTEGER NOT NULL,
       attempts      INTEGER NOT NULL DEFAULT 0,
       last_error    TEXT);
     CREATE INDEX IF NOT EXISTS Events_queued ON Events (id) WHERE delivery = 0;
     CREATE INDEX IF NOT EXISTS Events_evaluation ON Events (evaluation);",
    // 15: the GC roots cuirass holds (`gcroots`): one row per store item
    // kept.  `root` is the store file whose references include the item,
    // whose symlink exists and is registered with the daemon (one per
    // chunk of items; it goes with its last row).  `expires` is when an
    // output's row may go (Unix seconds); NULL for a `.drv`, held while
    // a build of it is pending.  The API says an output is available
    // while its row exists.
    "CREATE TABLE IF NOT EXISTS GcRoots (
       item    TEXT NOT NULL PRIMARY KEY,
       expires INTEGER,
       root    TEXT NOT NULL) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS GcRoots_expires ON GcRoots (expires)
       WHERE expires IS NOT NULL;
     CREATE INDEX IF NOT EXISTS GcRoots_root ON GcRoots (root);",
    // 16: the queue's order.  `queue_rank` is the spec's priority × 10
    // plus the job's (0 first), fixed when the build is queued; pending
    // builds start by (rank, id), started ones listed first, down one
    // index.  Builds pending before this version get their spec's
    // priority, or the default, 9.
    "ALTER TABLE Builds ADD COLUMN queue_rank INTEGER NOT NULL DEFAULT 90;
     UPDATE Builds SET queue_rank = 10 * coalesce(
         (SELECT min(max(s.priority, 0), 9) FROM Evaluations e
          JOIN Specifications s ON s.repo_name = e.specification
          WHERE e.id = Builds.evaluation), 9) + priority
       WHERE status < 0;
     DROP INDEX IF EXISTS Builds_queue;
     CREATE INDEX Builds_queue ON Builds (status DESC, queue_rank, id) WHERE status < 0;",
    // 17: ten million builds.  Counting an evaluation's builds by status walked its 75,000
    // index entries per page view, and /metrics counted every build:
    // `BuildCounts` keeps those counts.  Searching job names read every
    // build: `JobNames` holds each name of an existing derivation once
    // (75,000 on ci.guix, against 10,000,000 builds), and `JobNamesText`
    // indexes them by trigram for substring matches.
    //
    // Registration (`Db::insert_jobs`) adds its builds' counts and new
    // names itself: an insert trigger made every job's INSERT a
    // multi-row write that may abort (foreign keys), which costs a
    // statement journal each, spilled to a temporary file past 64 KiB
    // (50,000 jobs: 0.5 → 2 s of CPU, most of it in the kernel).  Status
    // changes and deletes come from many places, so triggers keep up
    // with those: counts move, an evaluation's rows go with it, a name
    // goes with its last derivation.  Names up to `JobNamesIndexed.upto`
    // are in the trigram index; the loop indexes the rest a page per
    // turn after the registration commits (`Db::index_job_names`), and
    // searches scan that tail meanwhile.  AUTOINCREMENT keeps a deleted
    // name's id from coming back below the mark.
    "CREATE TABLE IF NOT EXISTS BuildCounts (
       evaluation INTEGER NOT NULL,
       status     INTEGER NOT NULL,
       count      INTEGER NOT NULL,
       PRIMARY KEY (evaluation, status)) WITHOUT ROWID;
     INSERT INTO BuildCounts (evaluation, status, count)
       SELECT evaluation, status, COUNT(*) FROM Builds GROUP BY evaluation, status;
     CREATE TRIGGER IF NOT EXISTS Builds_count_delete AFTER DELETE ON Builds BEGIN
       UPDATE BuildCounts SET count = count - 1
         WHERE evaluation = old.evaluation AND status = old.status;
     END;
     CREATE TRIGGER IF NOT EXISTS Builds_count_update AFTER UPDATE OF status, evaluation ON Builds
       WHEN old.status IS NOT new.status OR old.evaluation IS NOT new.evaluation BEGIN
       UPDATE BuildCounts SET count = count - 1
         WHERE evaluation = old.evaluation AND status = old.status;
       INSERT INTO BuildCounts (evaluation, status, count) VALUES (new.evaluation, new.status, 1)
         ON CONFLICT (evaluation, status) DO UPDATE SET count = count + 1;
     END;
     CREATE TRIGGER IF NOT EXISTS Evaluations_counts_delete AFTER DELETE ON Evaluations BEGIN
       DELETE FROM BuildCounts WHERE evaluation = old.id;
     END;
     CREATE TABLE IF NOT EXISTS JobNames (
       id   INTEGER PRIMARY KEY AUTOINCREMENT,
       name TEXT NOT NULL UNIQUE);
     CREATE VIRTUAL TABLE IF NOT EXISTS JobNamesText USING fts5 (
       name, content = 'JobNames', content_rowid = 'id', tokenize = 'trigram');
     CREATE TABLE IF NOT EXISTS JobNamesIndexed (upto INTEGER NOT NULL);
     INSERT OR IGNORE INTO JobNames (name)
       SELECT job_name FROM Derivations UNION SELECT job_name FROM JobAliases;
     INSERT INTO JobNamesText (rowid, name) SELECT id, name FROM JobNames;
     INSERT INTO JobNamesIndexed (upto) SELECT COALESCE(MAX(id), 0) FROM JobNames;
     CREATE TRIGGER IF NOT EXISTS Derivations_job_name_delete AFTER DELETE ON Derivations
       WHEN NOT EXISTS (SELECT 1 FROM Derivations WHERE job_name = old.job_name)
        AND NOT EXISTS (SELECT 1 FROM JobAliases WHERE job_name = old.job_name) BEGIN
       DELETE FROM JobNames WHERE name = old.job_name;
     END;
     CREATE TRIGGER IF NOT EXISTS JobAliases_job_name_delete AFTER DELETE ON JobAliases
       WHEN NOT EXISTS (SELECT 1 FROM Derivations WHERE job_name = old.job_name)
        AND NOT EXISTS (SELECT 1 FROM JobAliases WHERE job_name = old.job_name) BEGIN
       DELETE FROM JobNames WHERE name = old.job_name;
     END;
     CREATE TRIGGER IF NOT EXISTS JobNames_text_delete AFTER DELETE ON JobNames
       WHEN old.id <= (SELECT upto FROM JobNamesIndexed) BEGIN
       INSERT INTO JobNamesText (JobNamesText, rowid, name) VALUES ('delete', old.id, old.name);
     END;",
    // 18: an evaluation's new failures (its page's header) were counted
    // by reading each failed build's row for its weather: 4,000 row
    // seeks, 5–7 ms, per view of a ci.guix evaluation.  A partial index
    // holds just the new failures, with their status (a restarted build
    // keeps its weather until it finishes again), so the count reads
    // the index alone.
    "CREATE INDEX IF NOT EXISTS Builds_new_failures ON Builds (evaluation, status)
       WHERE weather = 1;",
    // 19: the weather of builds that finished before migration 14 is
    // computed once, in the background (`db::backfill`), from the newest
    // build down to `below`.
    "CREATE TABLE IF NOT EXISTS WeatherBackfill (below INTEGER NOT NULL);
     INSERT INTO WeatherBackfill (below) SELECT COALESCE(MAX(id), 0) + 1 FROM Builds;",
    // 20: a build's outputs in one B-tree.  The 2018 table is a rowid
    // table whose key (build, name) is a second index: every build shown
    // read a leaf of each, two random pages of a 10,000,000-build
    // database (`/build/ID` made about eight page reads, `strace`).  As
    // a WITHOUT ROWID table the key holds the row; `Outputs_path` then
    // holds (path, build, name) and answers `/output/ITEM` alone.  The
    // new table's foreign key is checked as rows go in: outputs of a
    // build no longer there (2018 Cuirass ran without foreign keys) are
    // left out, as no query could reach them.
    "CREATE TABLE Outputs_by_build (
       build INTEGER NOT NULL,
       name  TEXT NOT NULL,
       path  TEXT NOT NULL,
       PRIMARY KEY (build, name),
       FOREIGN KEY (build) REFERENCES Builds (id)) WITHOUT ROWID;
     INSERT INTO Outputs_by_build (build, name, path)
       SELECT build, name, path FROM Outputs WHERE build IN (SELECT id FROM Builds)
       ORDER BY build, name;
     DROP TABLE Outputs;
     ALTER TABLE Outputs_by_build RENAME TO Outputs;
     CREATE INDEX Outputs_path ON Outputs (path);",
    // 21: a deleted specification's history goes a chunk per loop turn
    // (`Db::spec_deletion_chunk`): deleting 250,000 builds in the
    // action's transaction held the loop 12.5 s.  The action moves the
    // evaluations to a tombstone, a specification row named
    // `NAME/(deleted)` (no polled name has a '/') with `deleting` set,
    // which listings leave out; the name is free again at once.
    "ALTER TABLE Specifications ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;",
    // 22: registration writes near the right edge of every index.  A
    // 75,000-job evaluation added an entry per job to four indexes keyed
    // by hash or name, 10,000,000 entries each: nearly every job read
    // and rewrote a leaf of each (24 s, turns of 0.9 s).
    //
    // The derivations' unique key becomes (evaluation, derivation), the
    // same columns in the order they arrive; rowids are kept, which
    // `/api/jobs` pages by.  For lookups by derivation, job name and
    // store item, each of those indexes is split in two partial indexes
    // by a `fresh` column: registration writes `fresh = 1` rows, whose
    // entries go to the small `_fresh` indexes, and the loop moves them
    // to the large ones a page per turn after (`Db::merge_fresh`,
    // builds above `FreshBuilds.above`).  A build's derivation row,
    // outputs and inputs move with it, in one transaction.  Queries ask
    // for `(x.fresh = 0 OR x.fresh = 1)`, which SQLite answers from both
    // partial indexes (MULTI-INDEX OR); one that does not still gets
    // every row, by another index or a scan, which the query-plan tests
    // catch.  The two triggers that look up job names are written again
    // the same way; the one on `JobAliases` goes first, as the table it
    // names is rebuilt (migrations run with foreign keys off, or dropping
    // the old table would first delete and check its 10,000,000 rows).
    concat!("DROP TRIGGER IF EXISTS JobAliases_job_name_delete;
     CREATE TABLE Derivations_by_evaluation (
       derivation    TEXT NOT NULL,
       evaluation    INTEGER NOT NULL,
       job_name      TEXT NOT NULL,
       system        TEXT NOT NULL,
       nix_name      TEXT NOT NULL,
       fresh         INTEGER NOT NULL DEFAULT 0,
       PRIMARY KEY (evaluation, derivation),
       FOREIGN KEY (evaluation) REFERENCES Evaluations (id));
     INSERT INTO Derivations_by_evaluation (rowid, derivation, evaluation, job_name, system, nix_name)
       SELECT rowid, derivation, evaluation, job_name, system, nix_name FROM Derivations
       ORDER BY rowid;
     DROP TABLE Derivations;
     ALTER TABLE Derivations_by_evaluation RENAME TO Derivations;
     CREATE INDEX Derivations_evaluation ON Derivations (evaluation);
     CREATE INDEX Derivations_job_name ON Derivations (job_name, evaluation) WHERE fresh = 0;
     CREATE INDEX Derivations_job_name_fresh ON Derivations (job_name, evaluation) WHERE fresh = 1;
     ALTER TABLE Builds ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;
     DROP INDEX Builds_derivation;
     CREATE INDEX Builds_derivation ON Builds (derivation, evaluation) WHERE fresh = 0;
     CREATE INDEX Builds_derivation_fresh ON Builds (derivation, evaluation) WHERE fresh = 1;
     ALTER TABLE Outputs ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;
     DROP INDEX Outputs_path;
     CREATE INDEX Outputs_path ON Outputs (path) WHERE fresh = 0;
     CREATE INDEX Outputs_path_fresh ON Outputs (path) WHERE fresh = 1;
     ALTER TABLE Inputs ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;
     DROP INDEX Inputs_derivation;
     CREATE INDEX Inputs_derivation ON Inputs (derivation) WHERE fresh = 0;
     CREATE INDEX Inputs_derivation_fresh ON Inputs (derivation) WHERE fresh = 1;
     CREATE TABLE FreshBuilds (above INTEGER NOT NULL);
     INSERT INTO FreshBuilds (above) SELECT COALESCE(MAX(id), 0) FROM Builds;",
     job_name_triggers!()),
    // 23: evaluations whose superseded builds are being canceled, a page
    // per loop turn (`db::supersede`): the older evaluation being gone
    // through, the build id up to which it has been, and how many builds
    // were canceled so far.
    "CREATE TABLE IF NOT EXISTS Superseding (
       evaluation INTEGER PRIMARY KEY REFERENCES Evaluations (id) ON DELETE CASCADE,
       older      INTEGER NOT NULL DEFAULT 0,
       after      INTEGER NOT NULL DEFAULT 0,
       canceled   INTEGER NOT NULL DEFAULT 0);",
    // 24: the fresh indexes keyed by the first 8 characters of the store
    // item's hash (after `/gnu/store/`) instead of the whole file name.
    // A registration's keys land at random in them, so each batch's
    // commit rewrote most of their leaves; 8-byte keys instead of some
    // 75 make them several times smaller (registration-10m: 1.5 s of
    // batches against 2.1–2.4).  40 bits of hash tell a fresh item from the
    // others; queries also compare the whole name.  With another store
    // directory lookups stay right, only slower.  Queries give the same
    // `substr(X, 12, 8)` as the index, which SQLite matches to it, and
    // `CAST(?N AS TEXT)` for a value: older SQLite (3.40) put the value
    // of `X = ?N` in place of X and lost the match.
    "DROP INDEX Builds_derivation_fresh;
     CREATE INDEX Builds_derivation_fresh ON Builds (substr(derivation, 12, 8), evaluation)
       WHERE fresh = 1;
     DROP INDEX Outputs_path_fresh;
     CREATE INDEX Outputs_path_fresh ON Outputs (substr(path, 12, 8)) WHERE fresh = 1;
     DROP INDEX Inputs_derivation_fresh;
     CREATE INDEX Inputs_derivation_fresh ON Inputs (substr(derivation, 12, 8)) WHERE fresh = 1;",
    // 25: a derivation row's rowid is its build's id, and Derivations
    // has no key by derivation.  Its key (evaluation, derivation) was the
    // last index that a registration fills at random: a 75,000-job
    // evaluation's region of it (some 1,500 pages) was written again by
    // every batch's commit, half of all the pages a registration wrote
    // on the 10,000,000-build database (41,232 with it, 20,458 without;
    // batches 1.42 s against 0.94).  A build and its row are now joined
    // by rowid, and found by derivation through Builds' indexes.  Two
    // jobs of one evaluation with one derivation are told by a lookup
    // in `Builds_derivation_fresh` before the insert (`Db::insert_jobs`),
    // where the key's conflict told them.  Builds' foreign key to
    // Derivations needed that key; it becomes one to Evaluations, which
    // it implied, in Builds' definition in place (`schema_edit`, after
    // this SQL), which keeps the rows.
    // Rows of no build (2018's registration could leave some) keep
    // their place as negative rowids, found through a temporary index
    // in evaluation order rather than 10,000,000 random seeks; a 2018
    // row of several builds is copied for each.
    concat!("DROP TRIGGER IF EXISTS JobAliases_job_name_delete;
     CREATE TABLE Derivations_by_build (
       derivation    TEXT NOT NULL,
       evaluation    INTEGER NOT NULL,
       job_name      TEXT NOT NULL,
       system        TEXT NOT NULL,
       nix_name      TEXT NOT NULL,
       fresh         INTEGER NOT NULL DEFAULT 0,
       FOREIGN KEY (evaluation) REFERENCES Evaluations (id));
     INSERT INTO Derivations_by_build (rowid, derivation, evaluation, job_name, system, nix_name,
                                       fresh)
       SELECT b.id, d.derivation, d.evaluation, d.job_name, d.system, d.nix_name, d.fresh
       FROM Builds b CROSS JOIN Derivations d
         ON d.evaluation = b.evaluation AND d.derivation = b.derivation
       ORDER BY b.id;
     CREATE INDEX Builds_migration_25 ON Builds (evaluation, derivation);
     INSERT INTO Derivations_by_build (rowid, derivation, evaluation, job_name, system, nix_name,
                                       fresh)
       SELECT -d.rowid, d.derivation, d.evaluation, d.job_name, d.system, d.nix_name, d.fresh
       FROM Derivations d
       WHERE NOT EXISTS (SELECT 1 FROM Builds b INDEXED BY Builds_migration_25
                         WHERE b.evaluation = d.evaluation AND b.derivation = d.derivation);
     DROP INDEX Builds_migration_25;
     DROP TABLE Derivations;
     ALTER TABLE Derivations_by_build RENAME TO Derivations;
     CREATE INDEX Derivations_evaluation ON Derivations (evaluation);
     CREATE INDEX Derivations_job_name ON Derivations (job_name, evaluation) WHERE fresh = 0;
     CREATE INDEX Derivations_job_name_fresh ON Derivations (job_name, evaluation) WHERE fresh = 1;",
     job_name_triggers!()),
    // 26: `Inputs` as a rowid table.  It was `WITHOUT ROWID`, keyed by
    // (build, derivation), so each entry of `Inputs_derivation_fresh`
    // held the whole derivation after its 8-byte key, some 85 bytes:
    // with 10 inputs a job, 750,000 of them at random per 75,000-job
    // evaluation, which every batch's commit rewrote (registration
    // 5.8 s, turns of 304 ms, against 1.8 s without that index).  Its
    // entries now hold the rowid.  A build's inputs are found through
    // `Inputs_build`; its inputs are told apart by the registration
    // (`Db::insert_jobs`), where the key did.
    "CREATE TABLE Inputs_by_rowid (
       build      INTEGER NOT NULL,
       derivation TEXT NOT NULL,
       fresh      INTEGER NOT NULL DEFAULT 0,
       FOREIGN KEY (build) REFERENCES Builds (id));
     INSERT INTO Inputs_by_rowid (build, derivation, fresh)
       SELECT build, derivation, fresh FROM Inputs ORDER BY build, derivation;
     DROP TABLE Inputs;
     ALTER TABLE Inputs_by_rowid RENAME TO Inputs;
     CREATE INDEX Inputs_build ON Inputs (build);
     CREATE INDEX Inputs_derivation ON Inputs (derivation) WHERE fresh = 0;
     CREATE INDEX Inputs_derivation_fresh ON Inputs (substr(derivation, 12, 8)) WHERE fresh = 1;",];

/// The migration after whose SQL Builds' foreign key to Derivations
/// becomes one to Evaluations (see migration 25).
const BUILDS_KEY_REPLACED: usize = 25;

pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

/// A hash (FNV-1a, 64 bits) of every migration's SQL: two builds of
/// cuirass agree on it exactly when they make the same schema, which the
/// version number alone does not say across branches that each append a
/// migration.  The benchmarks key their migrated databases by it.
pub fn schema_fingerprint() -> u64 {
    MIGRATIONS
        .iter()
        .flat_map(|m| m.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error(format!("database: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One job of an evaluation, as registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRecord {
    pub job_name: String,
    pub derivation: String,
    pub system: String,
    pub nix_name: String,
    /// (output name, store path), from the `.drv` file.
    pub outputs: Vec<(String, String)>,
    /// Input `.drv` files, from the `.drv` file.
    pub inputs: Vec<String>,
    /// The job's own limits, from the evaluator.
    pub limits: Limits,
    /// The job's priority (0 when it gave none).
    pub priority: i64,
}

/// Cancels the scheduled builds of ids ?1 (a JSON array) at time ?3
/// (?2 the canceled status, ?4 the scheduled one).
pub(crate) const CANCEL_SQL: &str = "UPDATE Builds SET status = ?2, stoptime = ?3
     WHERE id IN (SELECT value FROM json_each(?1)) AND status = ?4";

pub struct Db {
    conn: Connection,
    /// Whether new events are queued for the notification command
    /// ([`events::delivery`]); without one they are only listed.
    notifying: bool,
    /// Where pending builds' positions are counted from
    /// ([`queue_head`]); `None` until asked for.
    queue_head: std::cell::RefCell<Option<queue_head::QueueHead>>,
    /// Whether a read transaction of [`read_batch`] is open.
    reading: std::cell::Cell<bool>,
    /// The derivations of the evaluation [`Db::supersede`] goes through,
    /// kept between its pages.
    superseding_derivations: Option<supersede::DerivationSet>,
    /// The derivations of each evaluation [`Db::add_jobs`] registers,
    /// kept between its batches (specifications evaluate side by side).
    registering: std::collections::HashMap<EvalId, registering::Registering>,
    /// Whether foreign keys could not be turned back on after a batch
    /// ([`Db::without_foreign_keys`]): the next write tries again first.
    foreign_keys_off: bool,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error(format!("cannot open database {}: {e}", path.display())))?;
        Db::setup(conn).map_err(|e| Error(format!("{}: {}", path.display(), e.0)))
    }

    pub fn open_in_memory() -> Result<Db> {
        Db::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Db> {
        // WAL lets HTTP readers and the writer coexist; a busy timeout
        // rides out another process (sqlite3 CLI, a backup) holding a lock.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Up to 16 MiB of page cache (the default is 2 MiB): it grows only
        // as pages are used, and keeps status updates and API queries on a
        // large database from re-reading index pages.
        conn.pragma_update(None, "cache_size", -16 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Plans that do not depend on bound values: otherwise SQLite
        // compiles a statement again whenever a value it looked at
        // changes (`BuildProducts WHERE build = ?1` was, at every call:
        // 13 % of `/build/ID`'s CPU).  The queries name their indexes
        // where it matters and are checked by the query-plan tests.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        let mut db = Db {
            conn,
            notifying: false,
            queue_head: Default::default(),
            reading: Default::default(),
            superseding_derivations: None,
            registering: Default::default(),
            foreign_keys_off: false,
        };
        db.migrate()?;
        Ok(db)
    }

    pub fn user_version(&self) -> Result<usize> {
        let v: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(v as usize)
    }

    fn migrate(&mut self) -> Result<()> {
        let current = self.user_version()?;
        if current > MIGRATIONS.len() {
            return Err(Error(format!(
                "schema version {current} is newer than this cuirass knows ({})",
                MIGRATIONS.len()
            )));
        }
        if current == MIGRATIONS.len() {
            return Ok(());
        }
        // Off for the migrations (it cannot change inside a transaction):
        // migration 22 rebuilds a table that others refer to.  Each
        // migration copies rows whose references hold already.
        self.conn.pragma_update(None, "foreign_keys", "OFF")?;
        let migrated = self.run_migrations(current);
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        migrated
    }

    fn run_migrations(&mut self, current: usize) -> Result<()> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = self.write()?;
            tx.execute_batch(sql)
                .map_err(|e| Error(format!("migration {}: {e}", i + 1)))?;
            let edited = i + 1 == BUILDS_KEY_REPLACED
                && schema_edit::replace_foreign_key(
                    &tx,
                    "Builds",
                    "Derivations",
                    "FOREIGN KEY (evaluation) REFERENCES Evaluations (id)",
                )
                .map_err(|e| Error(format!("migration {}: {e}", i + 1)))?;
            if i + 1 == BUILDS_KEY_REPLACED
                && !edited
                && schema_edit::has_foreign_key(&tx, "Builds", "Derivations")?
            {
                // Every write to Builds would fail ("foreign key
                // mismatch") with a key to a table without its key.
                return Err(Error(format!(
                    "migration {}: Builds' foreign key to Derivations not found in its definition",
                    i + 1
                )));
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            if edited {
                schema_edit::reload_schema(&self.conn)?;
            }
            log::info!("database migrated to schema version {}", i + 1);
        }
        Ok(())
    }

    /// Frees SQLite's page cache and hands the allocator's free memory
    /// back to the system (glibc's `malloc_trim`); errors are ignored, as
    /// the memory merely stays.
    pub fn release_memory(&self) {
        self.forget_queue_head();
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Adds or updates specifications, all or none.
    pub fn add_specifications(&mut self, specs: &[Specification]) -> Result<()> {
        let tx = self.write()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO Specifications
                   (repo_name, url, load_path, file, proc, arguments, branch, tag, revision,
                    no_compile_p, record, priority, is_active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (repo_name) DO UPDATE SET
                   url = excluded.url, load_path = excluded.load_path, file = excluded.file,
                   proc = excluded.proc, arguments = excluded.arguments, branch = excluded.branch,
                   tag = excluded.tag, revision = excluded.revision,
                   no_compile_p = excluded.no_compile_p, record = excluded.record,
                   priority = excluded.priority, is_active = excluded.is_active",
            )?;
            for s in specs {
                stmt.execute(params![
                    s.name,
                    s.url,
                    s.load_path,
                    s.file,
                    s.proc_name,
                    s.arguments,
                    s.branch,
                    s.tag,
                    s.commit,
                    s.no_compile as i64,
                    s.record.as_ref().map(|r| r.to_text(&s.name)),
                    s.record.as_ref().map(|r| r.priority),
                    s.is_active() as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn specifications(&self) -> Result<Vec<Specification>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT repo_name, url, load_path, file, proc, arguments, branch, tag, revision,
                    no_compile_p, record
             FROM Specifications WHERE deleting = 0 ORDER BY repo_name",
        )?;
        let rows = stmt.query_map([], |r| {
            if let Some(text) = r.get::<_, Option<String>>(10)? {
                return Ok(crate::spec::record::from_text(&text));
            }
            Ok(Ok(Specification {
                name: r.get(0)?,
                url: r.get(1)?,
                load_path: r.get(2)?,
                file: r.get(3)?,
                proc_name: r.get(4)?,
                arguments: r.get(5)?,
                branch: r.get(6)?,
                tag: r.get(7)?,
                commit: r.get(8)?,
                no_compile: r.get::<_, Option<i64>>(9)?.unwrap_or(0) != 0,
                record: None,
            }))
        })?;
        let mut specs = Vec::new();
        for row in rows {
            specs.push(row?.map_err(Error)?);
        }
        Ok(specs)
    }

    pub fn stamp(&self, spec: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT stamp FROM Stamps WHERE specification = ?1")?
            .query_row([spec], |r| r.get(0))
            .optional()?)
    }

    fn set_stamp(tx: &Transaction, spec: &str, commit: &str) -> Result<()> {
        tx.prepare_cached(
            "INSERT INTO Stamps (specification, stamp) VALUES (?1, ?2)
             ON CONFLICT (specification) DO UPDATE SET stamp = excluded.stamp",
        )?
        .execute(params![spec, commit])?;
        Ok(())
    }

    /// Records an evaluation with all its jobs, one scheduled build per
    /// job, and the new stamp: one transaction, so a crash leaves either
    /// the whole evaluation or nothing.
    pub fn register_evaluation(
        &mut self,
        spec: &str,
        commit: &str,
        jobs: &[JobRecord],
        now: i64,
    ) -> Result<EvalId> {
        let tx = self.write()?;
        let eval = Db::insert_evaluation(&tx, spec, commit, eval_status::SUCCEEDED, now)?;
        let mut known = registering::Registering::empty(eval);
        Db::insert_jobs(&tx, eval, jobs, now, &mut known, |_, _, _| {})?;
        Db::set_stamp(&tx, spec, commit)?;
        tx.commit()?;
        Ok(eval)
    }

    fn insert_evaluation(
        tx: &Transaction,
        spec: &str,
        commit: &str,
        status: i64,
        now: i64,
    ) -> Result<EvalId> {
        tx.prepare_cached(
            "INSERT INTO Evaluations (specification, revision, status, timestamp)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![spec, commit, status, now])?;
        Ok(EvalId(tx.last_insert_rowid()))
    }

    /// Inserts jobs' builds, derivation rows and outputs, fresh
    /// (migration 22: their entries go to the small indexes until
    /// [`Db::merge_fresh`] moves them); `added` hears of each new build.
    /// A derivation row's rowid is its build's id (migration 25).  A job
    /// whose derivation another job of the evaluation has already (an
    /// alias) is recorded as another name of that build; returns how
    /// many were.  `known` holds the evaluation's derivations and hears
    /// of each new one.  It counts the builds in
    /// `BuildCounts` and adds new job names to `JobNames` itself: those
    /// tables have no insert triggers (see migration 17), so any other
    /// writer of Builds, Derivations or JobAliases must do the same.
    fn insert_jobs(
        tx: &Transaction,
        eval: EvalId,
        jobs: &[JobRecord],
        now: i64,
        known: &mut registering::Registering,
        mut added: impl FnMut(BuildId, &JobRecord, i64),
    ) -> Result<usize> {
        let mut aliases = 0;
        // Whether another job of the evaluation has this derivation: its
        // build is in the small fresh index, or in the large one once
        // `Db::merge_fresh` moved some of the evaluation's builds there
        // (a registration slower than the moves), where a seek reads a
        // leaf of 10,000,000 entries.
        let merged = fresh::some_moved(tx, eval)?;
        let mut same_stmt = tx.prepare_cached(
            "SELECT id FROM Builds INDEXED BY Builds_derivation_fresh
             WHERE substr(derivation, 12, 8) = substr(CAST(?1 AS TEXT), 12, 8)
               AND derivation = CAST(?1 AS TEXT) AND evaluation = ?2 AND fresh = 1
             UNION ALL
             SELECT id FROM Builds INDEXED BY Builds_derivation
             WHERE ?3 AND derivation = CAST(?1 AS TEXT) AND evaluation = ?2 AND fresh = 0",
        )?;
        let mut build_stmt = tx.prepare_cached(
            "INSERT INTO Builds (derivation, evaluation, log, status, timestamp, starttime, stoptime,
                                 priority, timeout, maxsilent, queue_rank, fresh)
             VALUES (?1, ?2, '', ?3, ?4, 0, 0, ?5, ?6, ?7, ?8, 1)",
        )?;
        // The build's id as rowid (migration 25).
        let mut drv_stmt = tx.prepare_cached(
            "INSERT INTO Derivations (rowid, derivation, evaluation, job_name, system, nix_name,
                                      fresh)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
        )?;
        let spec_rank = queue::spec_priority_of_evaluation(tx, eval)? * 10;
        let mut output_stmt = tx.prepare_cached(
            "INSERT INTO Outputs (build, name, path, fresh) VALUES (?1, ?2, ?3, 1)",
        )?;
        let mut input_stmt =
            tx.prepare_cached("INSERT INTO Inputs (build, derivation, fresh) VALUES (?1, ?2, 1)")?;
        let mut scheduled = 0;
        // The new builds' ids, consecutive: this transaction is the only
        // writer.
        let mut new_builds: Option<(BuildId, BuildId)> = None;
        for job in jobs {
            // Two jobs of one evaluation may share a derivation; the 2018
            // key allowed one row, and one build of it, which the later
            // name joins.  Looked up only if the set says it may be.
            let same = if known.add(&job.derivation) {
                None
            } else {
                same_stmt
                    .query_row(params![job.derivation, eval, merged], |r| {
                        r.get::<_, BuildId>(0)
                    })
                    .optional()?
            };
            if let Some(build) = same {
                Db::insert_alias(tx, eval, job, build)?;
                aliases += 1;
                continue;
            }
            build_stmt.execute(params![
                job.derivation,
                eval,
                status::SCHEDULED,
                now,
                job.priority,
                job.limits.timeout.map(|t| t as i64),
                job.limits.max_silent_time.map(|t| t as i64),
                spec_rank + job.priority
            ])?;
            let build = BuildId(tx.last_insert_rowid());
            drv_stmt.execute(params![
                build,
                job.derivation,
                eval,
                job.job_name,
                job.system,
                job.nix_name
            ])?;
            scheduled += 1;
            new_builds = Some((new_builds.map_or(build, |(first, _)| first), build));
            for (name, path) in &job.outputs {
                output_stmt.execute(params![build, name, path])?;
            }
            // Each once, as a key on (build, derivation) made them
            // until migration 26.
            let mut inputs: Vec<&String> = job.inputs.iter().collect();
            inputs.sort_unstable();
            inputs.dedup();
            for input in inputs {
                input_stmt.execute(params![build, input])?;
            }
            added(build, job, spec_rank + job.priority);
        }
        if let Some((first, last)) = new_builds {
            // Most names are known from earlier evaluations: a lookup
            // each, in one statement (a statement a job cost some 0.1 s
            // of a 75,000-job registration on the 10M database, in runs
            // that vary by ±15 %).
            tx.prepare_cached(
                "INSERT OR IGNORE INTO JobNames (name)
                 SELECT job_name FROM Derivations WHERE rowid BETWEEN ?1 AND ?2",
            )?
            .execute(params![first, last])?;
        }
        if scheduled > 0 {
            tx.prepare_cached(
                "INSERT INTO BuildCounts (evaluation, status, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (evaluation, status) DO UPDATE SET count = count + excluded.count",
            )?
            .execute(params![eval, status::SCHEDULED, scheduled])?;
        }
        Ok(aliases)
    }

    /// Records `job`'s name as another name of `build`, the one its
    /// derivation already has in `eval`, and in `JobNames` for searches.  A name
    /// given twice is an error (the evaluator's output is checked for
    /// that before, by `job::Tally`).
    fn insert_alias(tx: &Transaction, eval: EvalId, job: &JobRecord, build: BuildId) -> Result<()> {
        tx.prepare_cached(
            "INSERT INTO JobAliases (evaluation, job_name, build) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![eval, job.job_name, build])
        .map_err(|e| {
            Error(format!(
                "job {:?} (also {}): database: {e}",
                job.job_name, job.derivation
            ))
        })?;
        tx.prepare_cached("INSERT OR IGNORE INTO JobNames (name) VALUES (?1)")?
            .execute([&job.job_name])?;
        Ok(())
    }

    /// How many job names and how many builds evaluation `eval` has: more
    /// names than builds when jobs share a derivation.
    pub fn evaluation_size(&self, eval: EvalId) -> Result<(usize, usize)> {
        let (names, builds): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT (SELECT COUNT(*) FROM Derivations WHERE evaluation = ?1)
                        + (SELECT COUNT(*) FROM JobAliases WHERE evaluation = ?1),
                        (SELECT COUNT(*) FROM Builds WHERE evaluation = ?1)",
            )?
            .query_row([eval], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((names as usize, builds as usize))
    }

    /// Opens an evaluation whose jobs arrive while the evaluator runs.
    ///
    /// A specification runs one evaluation at a time, so one of its
    /// evaluations still in progress here is a leftover: its outcome could
    /// not be recorded (a full disk, a read-only file) and the stamp did not
    /// move.  It is rolled back in the same transaction, so the commit's new
    /// evaluation replaces it instead of leaving it in progress forever.
    pub fn begin_evaluation(&mut self, spec: &str, commit: &str, now: i64) -> Result<EvalId> {
        let tx = self.write()?;
        let leftovers: Vec<EvalId> = tx
            .prepare_cached("SELECT id FROM Evaluations WHERE specification = ?1 AND status = ?2")?
            .query_map(params![spec, eval_status::IN_PROGRESS], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        for &eval in &leftovers {
            log::warn!("spec={spec:?} evaluation {eval} was left in progress; rolled back");
            Db::delete_evaluation(&tx, eval)?;
        }
        let eval = Db::insert_evaluation(&tx, spec, commit, eval_status::IN_PROGRESS, now)?;
        tx.commit()?;
        for leftover in leftovers {
            self.registering.remove(&leftover);
        }
        Ok(eval)
    }

    /// Registers a chunk of an in-progress evaluation's jobs in one
    /// transaction and returns their new builds, ready to be built.
    /// Errors if `eval` is not in progress.
    pub fn add_jobs(
        &mut self,
        spec: &str,
        eval: EvalId,
        jobs: &[JobRecord],
        now: i64,
    ) -> Result<Vec<PendingBuild>> {
        // Foreign keys are not checked in the batch: a check is a seek
        // in the parent table for each row, three a job, and every row
        // the batch writes refers to the evaluation, checked once below,
        // or to a build of the same transaction.
        self.without_foreign_keys(|db| {
            // Taken, and put back only once the batch is committed: a batch
            // that fails leaves hashes of rows that rolled back.
            let kept = db.registering.remove(&eval);
            let tx = db.write()?;
            let status: Option<i64> = tx
                .prepare_cached("SELECT status FROM Evaluations WHERE id = ?1")?
                .query_row([eval], |r| r.get(0))
                .optional()?;
            if status != Some(eval_status::IN_PROGRESS) {
                return Err(Error(format!(
                    "evaluation {eval}: not in progress ({}); its jobs are not registered",
                    status.map_or("no such evaluation".to_string(), |s| format!("status {s}"))
                )));
            }
            let mut known = match kept {
                Some(known) => known,
                None => registering::Registering::of(&tx, eval)?,
            };
            let mut added = Vec::with_capacity(jobs.len());
            Db::insert_jobs(&tx, eval, jobs, now, &mut known, |id, job, rank| {
                added.push(PendingBuild {
                    id,
                    rank,
                    derivation: job.derivation.clone(),
                    evaluation: eval,
                    specification: spec.to_string(),
                    limits: job.limits,
                })
            })?;
            tx.commit()?;
            db.registering.insert(eval, known);
            Ok(added)
        })
    }

    /// `f`, with foreign keys not checked.  The pragma changes only
    /// outside a transaction; it is back on before any other write,
    /// whatever `f`'s outcome.  Each change makes SQLite prepare its
    /// statements again when next used: tens of them a batch, well
    /// under a millisecond, against the 225,000 seeks of a 75,000-job
    /// evaluation's checks (registration-10m: batches 0.69 s against
    /// 0.75 s).
    fn without_foreign_keys<T>(&mut self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        self.end_reads();
        self.conn.pragma_update(None, "foreign_keys", false)?;
        let done = f(self);
        let on = self.foreign_keys_on();
        let done = done?;
        on?;
        Ok(done)
    }

    /// Turns foreign keys back on and reads the setting back: the
    /// pragma does nothing, silently, inside a transaction (one whose
    /// rollback failed).  Until it reads back on, every write tries it
    /// first and fails ([`Db::write`]), rather than go unchecked.
    pub(super) fn foreign_keys_on(&mut self) -> Result<()> {
        let on = self
            .conn
            .pragma_update(None, "foreign_keys", true)
            .and_then(|()| {
                self.conn
                    .pragma_query_value(None, "foreign_keys", |r| r.get::<_, bool>(0))
            });
        self.foreign_keys_off = !matches!(on, Ok(true));
        match on {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error(
                "foreign keys could not be turned back on (a transaction is still open)".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Closes an evaluation whose jobs are all registered and moves the
    /// stamp; the builds it supersedes are canceled after, a page per
    /// loop turn ([`Db::supersede`]): scheduled builds of older evaluations
    /// of the same specification for a job (under any of its names) that
    /// this evaluation has with another derivation.  Nobody wants them
    /// built any more, and on a busy farm they would otherwise pile up.
    pub fn complete_evaluation(
        &mut self,
        spec: &str,
        eval: EvalId,
        commit: &str,
        now: i64,
    ) -> Result<()> {
        let tx = self.write()?;
        tx.prepare_cached("UPDATE Evaluations SET status = ?2, evaltime = ?3 WHERE id = ?1")?
            .execute(params![eval, eval_status::SUCCEEDED, now])?;
        Db::set_stamp(&tx, spec, commit)?;
        tx.prepare_cached("INSERT INTO Superseding (evaluation) VALUES (?1)")?
            .execute([eval])?;
        tx.commit()?;
        // Its superseding starts from the registration's set, unless
        // that of an older evaluation is in use.
        if let Some(known) = self.registering.remove(&eval)
            && self.superseding_derivations.is_none()
        {
            self.superseding_derivations = Some(known.into_derivation_set());
        }
        Ok(())
    }

    /// Closes an evaluation that failed part-way: it is recorded as failed
    /// with its reason, its builds not yet handed to the daemon are
    /// canceled (those of `in_flight` derivations end with their real
    /// result), and the stamp moves on so the next commit gets a new
    /// chance.
    pub fn fail_evaluation(
        &mut self,
        spec: &str,
        eval: EvalId,
        commit: &str,
        error: &str,
        in_flight: &HashSet<String>,
        now: i64,
    ) -> Result<()> {
        let notifying = self.notifying;
        self.registering.remove(&eval);
        let tx = self.write()?;
        tx.prepare_cached(
            "UPDATE Evaluations SET status = ?2, error = ?3, evaltime = ?4 WHERE id = ?1",
        )?
        .execute(params![eval, eval_status::FAILED, error, now])?;
        let event = events::NewEvent {
            kind: events::kind::EVALUATION_FAILED,
            specification: spec,
            evaluation: eval,
            revision: commit,
            build: None,
            error: Some(error),
        };
        Db::insert_event(&tx, &event, now, events::delivery::initial(notifying))?;
        let scheduled: Vec<(BuildId, String)> = tx
            .prepare_cached(
                "SELECT id, derivation FROM Builds WHERE evaluation = ?1 AND status = ?2",
            )?
            .query_map(params![eval, status::SCHEDULED], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<std::result::Result<_, _>>()?;
        Db::cancel_scheduled(&tx, &scheduled, in_flight, now)?;
        Db::set_stamp(&tx, spec, commit)?;
        tx.commit()?;
        Ok(())
    }

    /// Cancels `builds` (id, derivation) but those of `in_flight`
    /// derivations; returns how many.  One statement for them all: a
    /// statement a build copied each page it changed to SQLite's
    /// statement journal (the counting trigger needs one) again for
    /// every build, some 5 pages a cancel.
    fn cancel_scheduled(
        tx: &Transaction,
        builds: &[(BuildId, String)],
        in_flight: &HashSet<String>,
        now: i64,
    ) -> Result<usize> {
        let ids: Vec<i64> = builds
            .iter()
            .filter(|(_, drv)| !in_flight.contains(drv))
            .map(|(id, _)| id.0)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let ids = serde_json::to_string(&ids).map_err(|e| Error(e.to_string()))?;
        Ok(tx.prepare_cached(CANCEL_SQL)?.execute(params![
            ids,
            status::CANCELED,
            now,
            status::SCHEDULED
        ])?)
    }

    /// Rolls back an evaluation whose jobs could not all be registered;
    /// the stamp stays, so its commit is evaluated again.
    pub fn abandon_evaluation(&mut self, eval: EvalId) -> Result<()> {
        self.registering.remove(&eval);
        let tx = self.write()?;
        Db::delete_evaluation(&tx, eval)?;
        tx.commit()?;
        Ok(())
    }

    /// At start-up, evaluations a previous process left in progress are
    /// rolled back entirely, so their commit is evaluated again.
    pub fn roll_back_interrupted_evaluations(&mut self) -> Result<usize> {
        let tx = self.write()?;
        let evals: Vec<EvalId> = tx
            .prepare("SELECT id FROM Evaluations WHERE status = ?1")?
            .query_map([eval_status::IN_PROGRESS], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        for eval in &evals {
            Db::delete_evaluation(&tx, *eval)?;
        }
        tx.commit()?;
        Ok(evals.len())
    }

    /// Deletes an evaluation and everything registered for it, children
    /// first (foreign keys are on).
    pub(super) fn delete_evaluation(tx: &Transaction, eval: EvalId) -> Result<()> {
        tx.execute(
            "DELETE FROM Outputs WHERE build IN (SELECT id FROM Builds WHERE evaluation = ?1)",
            [eval],
        )?;
        tx.execute(
            "DELETE FROM Inputs WHERE build IN (SELECT id FROM Builds WHERE evaluation = ?1)",
            [eval],
        )?;
        tx.execute(
            "DELETE FROM BuildAttempts WHERE build IN (SELECT id FROM Builds WHERE evaluation = ?1)",
            [eval],
        )?;
        tx.execute(
            "DELETE FROM BuildProducts WHERE build IN (SELECT id FROM Builds WHERE evaluation = ?1)",
            [eval],
        )?;
        tx.execute("DELETE FROM Checkouts WHERE evaluation = ?1", [eval])?;
        tx.execute("DELETE FROM JobAliases WHERE evaluation = ?1", [eval])?;
        tx.execute("DELETE FROM Events WHERE evaluation = ?1", [eval])?;
        tx.execute("DELETE FROM Builds WHERE evaluation = ?1", [eval])?;
        tx.execute("DELETE FROM Derivations WHERE evaluation = ?1", [eval])?;
        tx.execute("DELETE FROM Evaluations WHERE id = ?1", [eval])?;
        Ok(())
    }

    pub fn evaluations_since(&self, since: i64) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM Evaluations WHERE timestamp >= ?1")?
            .query_row([since], |r| r.get(0))?)
    }

    pub fn outputs_of_derivation(&self, derivation: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT DISTINCT o.path FROM Outputs o JOIN Builds b ON b.id = o.build WHERE ",
            fresh::builds_of_derivation_sql!("b.id", "?1"),
            " ORDER BY o.path"
        ))?;
        let rows = stmt.query_map([derivation], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

pub mod admin;
pub mod backfill;
pub mod channels;
pub mod checkpointer;
pub mod dashboard;
pub mod events;
pub mod fresh;
pub mod gcroots;
pub mod machines;
pub mod queue;
mod queue_head;
pub mod read;
mod read_batch;
mod registering;
pub mod retention;
mod schema_edit;
pub mod search;
mod statuses;
pub mod supersede;

#[cfg(test)]
use statuses::PENDING_BUILDS_OF_DERIVATION;
pub use statuses::{BUILD_DURATION_BOUNDS, Logged, duration_bucket};

/// Whether a query plan sorts, other than the results of the arms of a
/// [`fresh::both_arms`] union (a limit's worth of rows each).
#[cfg(test)]
pub(crate) fn sorts_beyond_arms(plan: &str) -> bool {
    let steps: Vec<&str> = plan.split("; ").collect();
    steps.iter().enumerate().any(|(i, s)| {
        s.contains("TEMP B-TREE") && !(i > 0 && steps[i - 1].starts_with("SCAN (subquery-"))
    })
}

/// Whether a query plan reads a whole table or index, other than the
/// results of subqueries and a `SELECT` without a table.
#[cfg(test)]
pub(crate) fn scans_a_table(plan: &str) -> bool {
    plan.split("; ").any(|s| {
        s.starts_with("SCAN") && !s.starts_with("SCAN (subquery-") && s != "SCAN CONSTANT ROW"
    })
}

/// A database as the 2018 original wrote it (`fixtures/schema-2018.sql`)
/// with `rows` (SQL) in it, at a new path of its own under the system's
/// temporary directory (named by `tag`, the process and the thread),
/// for the upgrade tests; returns the database file.
#[cfg(test)]
pub(crate) fn database_2018(tag: &str, rows: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cuirass-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cuirass.db");
    let _ = std::fs::remove_file(&path);
    let old = Connection::open(&path).unwrap();
    old.execute_batch(include_str!("../fixtures/schema-2018.sql"))
        .unwrap();
    old.execute_batch(rows).unwrap();
    path
}

/// What SQLite's planner does with `sql`, its steps joined by "; ", for
/// tests that pin a query to its index.
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let steps: Vec<String> = stmt
        .query_map(params, |r| r.get(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    steps.join("; ")
}

#[cfg(test)]
mod alias_tests;
#[cfg(test)]
mod fresh_tests;
#[cfg(test)]
mod registering_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod supersede_tests;
#[cfg(test)]
mod tests;

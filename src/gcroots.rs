//! GC roots: what cuirass keeps from `guix gc`, planned without I/O.
//!
//! Two kinds of store items are kept: the `.drv` of every pending build
//! (scheduled or started), until no build of it is pending, and the
//! outputs of succeeded builds, until `--ttl` after the latest succeeded
//! build that has them.  Items are rooted a chunk at a time: one store
//! text file refers to the chunk's items, and a symlink `DIR/BASENAME` to
//! that file is registered with the daemon as an indirect root (op 12),
//! as Guix's own `--root` options do ([`maker`] has the exchange).  The
//! `GcRoots` table (`crate::db::gcroots`) has a row per item kept, naming
//! its root file; the API says an output is available while its row
//! exists.  A row goes when its item is no longer wanted, and a root
//! file's symlink with its last row; an item wanted again later goes
//! into a new chunk.
//!
//! The [`Planner`] takes the database and `now` (Unix seconds) and returns
//! [`Command`]s: root a chunk (the loop reports which items the daemon
//! says are valid and held), or remove root files' symlinks.  Items
//! wanted are gathered, `.drv`s and outputs apart (their rows go at
//! different times), into a chunk that is made once it has
//! [`GROUP_MAX`] items or its first item has waited [`LINGER`] seconds,
//! one chunk at a time.  Every call does a bounded amount of work: pages
//! of [`PAGE`] rows per walk.  Work comes from:
//!
//! - builds registered since the last look (a walk by build id), and all
//!   pending builds at start-up and when an operator requeues some;
//! - builds the loop saw finish ([`Planner::finished`]): a success's
//!   outputs get roots, and any end may release the `.drv`'s;
//! - at start-up, builds that succeeded within `--ttl` before it;
//! - rows whose expiry has passed (once a second), items the retention
//!   deleted builds of ([`Planner::recheck`]), and a sweep of every row
//!   every [`SWEEP_EVERY`] seconds (a build canceled by a newer
//!   evaluation, a `--ttl` made shorter).
//!
//! A row is kept or removed by one rule ([`Planner::recheck`]): a `.drv`
//! while a build of it is pending, an output while its latest succeeded
//! build stopped less than the ttl ago.

use crate::db::gcroots::RootRow;
use crate::db::{BuildId, Db};
use crate::logging::GC_ROOTS;
use std::collections::{HashSet, VecDeque};

pub mod maker;
use std::path::{Path, PathBuf};

/// Items rooted by one store file at most: the daemon gets them in one
/// request (about 100 bytes each) and a text file of that size.
pub const GROUP_MAX: usize = 1000;
/// Seconds a chunk gathers items after its first before it is made
/// (Unix seconds, so 1 to 2 s): builds end one by one, and a chunk per
/// step would cost a symlink every few builds.  A one-shot run that has
/// nothing else left makes its last chunks at once ([`Planner::flush`]).
pub const LINGER: i64 = 2;
/// Rows read per walk or sweep page.
pub const PAGE: usize = 500;
/// Seconds between two sweeps of every root.
pub const SWEEP_EVERY: i64 = 60;
/// Seconds before a chunk the daemon could not take is tried again.
pub const RETRY_AFTER: i64 = 30;

/// What the loop must do for the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Root these items with one store file ([`maker::Maker`] over a
    /// connection of its own); reported with [`Planner::made`], or
    /// [`Planner::failed`].
    Make(Vec<RootRow>),
    /// Remove the symlinks of these root files: no row is held by them.
    Remove(Vec<String>),
}

/// The store item a symlink is named after: its base name must be a
/// plain file name.
fn base_name(item: &str) -> Option<&str> {
    let (dir, name) = item.rsplit_once('/')?;
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('\0');
    (plain && !dir.is_empty()).then_some(name)
}

/// The walk over pending builds, by build id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingWalk {
    /// Start over from the first pending build.
    Restart,
    /// Builds above this id are not looked at yet; `more`: the last page
    /// was full.
    After { id: BuildId, more: bool },
}

/// Items gathered for the next chunk of one kind.
#[derive(Debug, Default)]
struct Gather {
    rows: Vec<RootRow>,
    /// When the first item came (Unix seconds).
    since: i64,
}

impl Gather {
    fn full(&self) -> bool {
        self.rows.len() >= GROUP_MAX
    }

    fn push(&mut self, row: RootRow, now: i64) {
        if self.rows.is_empty() {
            self.since = now;
        }
        self.rows.push(row);
    }

    fn due(&self, now: i64, flush: bool) -> bool {
        !self.rows.is_empty() && (self.full() || flush || now >= self.since + LINGER)
    }
}

/// GC roots planned; see the module docs.
#[derive(Debug)]
pub struct Planner {
    dir: PathBuf,
    ttl: i64,
    pending: PendingWalk,
    /// Start-up walk over builds that succeeded within the ttl: the
    /// (stop time, id) reached, and the stop time where it ends.
    catch_up: Option<((i64, BuildId), i64)>,
    /// Derivations whose builds succeeded: their outputs get roots.
    succeeded: VecDeque<String>,
    /// Items whose rows may have to go.
    recheck: VecDeque<String>,
    /// The sweep in progress: the last item looked at.
    sweep: Option<String>,
    next_sweep: i64,
    next_expiry: i64,
    drvs: Gather,
    outputs: Gather,
    /// Items gathered, in flight or waiting for a retry: not taken twice.
    queued: HashSet<String>,
    /// The chunk being made.
    in_flight: Option<Vec<RootRow>>,
    /// A chunk the daemon did not take, and when to try it again.
    retry: Option<(i64, Vec<RootRow>)>,
    /// Make chunks without waiting for more items.
    flush: bool,
    /// The database failed: nothing is planned before this time, so a
    /// broken database is not asked again at every turn.
    paused_until: Option<i64>,
    commands: VecDeque<Command>,
}

impl Planner {
    /// `dir`: where the symlinks live (absolute: the daemon follows
    /// them); `ttl`: seconds an output stays kept; `now`: Unix seconds.
    pub fn new(dir: PathBuf, ttl: u64, now: i64) -> Planner {
        let ttl = ttl.min(i64::MAX as u64 / 2) as i64;
        Planner {
            dir,
            ttl,
            pending: PendingWalk::Restart,
            catch_up: Some(((now.saturating_sub(ttl), BuildId(0)), now)),
            succeeded: VecDeque::new(),
            recheck: VecDeque::new(),
            sweep: None,
            next_sweep: now,
            next_expiry: now,
            drvs: Gather::default(),
            outputs: Gather::default(),
            queued: HashSet::new(),
            in_flight: None,
            retry: None,
            flush: false,
            paused_until: None,
            commands: VecDeque::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The symlink of root file `file`: `DIR/BASENAME`, None for a name
    /// that is not a store item's.
    pub fn link_of(&self, file: &str) -> Option<PathBuf> {
        base_name(file).map(|name| self.dir.join(name))
    }

    /// A build of `derivation` reached a final status.
    pub fn finished(&mut self, derivation: &str, succeeded: bool) {
        if succeeded {
            self.succeeded.push_back(derivation.to_string());
        }
        self.recheck.push_back(derivation.to_string());
    }

    /// These items' builds changed (deleted, canceled): their rows are
    /// looked at again.
    pub fn recheck(&mut self, items: impl IntoIterator<Item = String>) {
        self.recheck.extend(items);
    }

    /// Builds went back to pending (an operator's restart): every pending
    /// build is looked at again, and every row at the next step.
    pub fn rescan(&mut self, now: i64) {
        self.pending = PendingWalk::Restart;
        self.next_sweep = self.next_sweep.min(now);
    }

    /// From now on, chunks are made as soon as they have an item: a
    /// one-shot run with nothing else left does not wait for more.
    pub fn flush(&mut self) {
        self.flush = true;
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Whether [`Planner::step`] has work now (rather than at its next
    /// periodic look).
    pub fn has_work(&self) -> bool {
        if self.paused_until.is_some() {
            return !self.commands.is_empty();
        }
        let idle = self.in_flight.is_none() && self.retry.is_none();
        !self.commands.is_empty()
            || !self.recheck.is_empty()
            || self.sweep.is_some()
            || (!self.outputs.full() && (!self.succeeded.is_empty() || self.catch_up.is_some()))
            || (!self.drvs.full()
                && matches!(
                    self.pending,
                    PendingWalk::Restart | PendingWalk::After { more: true, .. }
                ))
            || (idle
                && [&self.drvs, &self.outputs]
                    .iter()
                    .any(|g| g.full() || (self.flush && !g.rows.is_empty())))
    }

    /// Work is under way or due: a one-shot run waits for it.  A chunk
    /// waiting for its retry is not, nor what gathers behind it: the
    /// daemon may be gone for good.
    pub fn busy(&self) -> bool {
        let gathered = !self.drvs.rows.is_empty() || !self.outputs.rows.is_empty();
        self.in_flight.is_some() || self.has_work() || (self.retry.is_none() && gathered)
    }

    /// One bounded piece of work; see the module docs.
    pub fn step(&mut self, db: &mut Db, now: i64) {
        match self.paused_until {
            Some(until) if now < until => return,
            _ => self.paused_until = None,
        }
        let mut work = Work::default();
        if let Err(e) = self.plan(db, now, &mut work) {
            log::error!(target: GC_ROOTS, "{e}; GC roots looked at again in {RETRY_AFTER} s");
            self.paused_until = Some(now + RETRY_AFTER);
        }
        if !work.remove.is_empty() {
            match db.remove_gc_roots(&work.remove) {
                Ok(files) => {
                    log::debug!(target: GC_ROOTS,
                        "{} GC root(s) released, {} root file(s) let go",
                        work.remove.len(), files.len()
                    );
                    if !files.is_empty() {
                        self.commands.push_back(Command::Remove(files));
                    }
                }
                Err(e) => log::error!(target: GC_ROOTS, "{e}"),
            }
        }
        self.dispatch(now);
    }

    /// Hands the next chunk to the loop: a retry when it is due, else a
    /// gathered chunk that is full or has waited long enough.
    fn dispatch(&mut self, now: i64) {
        if self.in_flight.is_some() {
            return;
        }
        let chunk = match self.retry.take() {
            Some((at, roots)) if now >= at => roots,
            Some(waiting) => {
                self.retry = Some(waiting);
                return;
            }
            None => {
                let flush = self.flush;
                let Some(g) = [&mut self.drvs, &mut self.outputs]
                    .into_iter()
                    .find(|g| g.due(now, flush))
                else {
                    return;
                };
                std::mem::take(&mut g.rows)
            }
        };
        self.in_flight = Some(chunk.clone());
        self.commands.push_back(Command::Make(chunk));
    }

    fn plan(&mut self, db: &mut Db, now: i64, work: &mut Work) -> crate::db::Result<()> {
        // Releases first: they need no daemon.
        for _ in 0..PAGE {
            let Some(item) = self.recheck.pop_front() else {
                break;
            };
            self.recheck_one(db, &item, now, work)?;
        }
        if now >= self.next_expiry {
            let expired = db.gc_roots_expired(now, PAGE)?;
            self.next_expiry = match expired.len() == PAGE {
                true => now,
                false => now + 1,
            };
            for row in expired {
                self.recheck_one(db, &row.item, now, work)?;
            }
        }
        self.sweep_page(db, now, work)?;
        while !self.outputs.full() {
            let Some(drv) = self.succeeded.pop_front() else {
                break;
            };
            for (path, stop) in db.succeeded_outputs_of(&drv)? {
                self.want_output(db, path, stop, now)?;
            }
        }
        self.walk_pending(db, now)?;
        self.walk_catch_up(db, now)
    }

    /// Decides whether `item`'s row stays (see the module docs).
    fn recheck_one(
        &mut self,
        db: &mut Db,
        item: &str,
        now: i64,
        work: &mut Work,
    ) -> crate::db::Result<()> {
        let Some(row) = db.gc_root(item)? else {
            return Ok(());
        };
        match row.expires {
            None => {
                if !db.derivation_pending(item)? {
                    work.release(row.item);
                }
            }
            Some(expires) => match db.output_last_success(item)?.map(|t| t + self.ttl) {
                Some(until) if until > now => {
                    if until != expires {
                        db.set_gc_root_expiry(item, until)?;
                    }
                }
                _ => work.release(row.item),
            },
        }
        Ok(())
    }

    /// An output of a build that succeeded at `stop`: kept until the ttl
    /// has passed, unless it has passed already.
    fn want_output(
        &mut self,
        db: &mut Db,
        path: String,
        stop: i64,
        now: i64,
    ) -> crate::db::Result<()> {
        let until = stop.saturating_add(self.ttl);
        if until <= now {
            return Ok(());
        }
        if self.queued.contains(&path) {
            self.extend_queued(&path, until);
            return Ok(());
        }
        match db.gc_root(&path)? {
            Some(RootRow {
                expires: Some(e), ..
            }) if e < until => db.set_gc_root_expiry(&path, until)?,
            Some(_) => {}
            None => self.gather(path, Some(until), now),
        }
        Ok(())
    }

    /// Queues `item` for the next chunk of its kind.  A name the daemon
    /// would refuse (not directly in the store) is left out, or the
    /// chunk would fail at every retry.
    fn gather(&mut self, item: String, expires: Option<i64>, now: i64) {
        let in_store = item
            .strip_prefix(crate::drv::STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|name| base_name(&item) == Some(name));
        if !in_store {
            log::error!(target: GC_ROOTS, "{item:?} is not a store item: no root for it");
            return;
        }
        self.queued.insert(item.clone());
        let row = RootRow { item, expires };
        match expires {
            None => self.drvs.push(row, now),
            Some(_) => self.outputs.push(row, now),
        }
    }

    /// An output queued with an earlier expiry succeeded again.
    fn extend_queued(&mut self, path: &str, until: i64) {
        let retry = self.retry.iter_mut().flat_map(|(_, rows)| rows.iter_mut());
        let rows = self
            .outputs
            .rows
            .iter_mut()
            .chain(self.in_flight.iter_mut().flatten())
            .chain(retry);
        for row in rows.filter(|r| r.item == path) {
            if let Some(e) = row.expires.as_mut() {
                *e = (*e).max(until);
            }
        }
    }

    /// New pending builds, by id: their `.drv` get roots.
    fn walk_pending(&mut self, db: &mut Db, now: i64) -> crate::db::Result<()> {
        if self.drvs.full() {
            return Ok(());
        }
        let mut after = match self.pending {
            PendingWalk::After { id, .. } => id,
            PendingWalk::Restart => match db.first_pending_build()? {
                Some(first) => BuildId(first.0 - 1),
                // Only builds registered from now on can be pending.
                None => db.max_build_id()?,
            },
        };
        let page = db.builds_after(after, PAGE)?;
        let mut more = page.len() == PAGE;
        for (id, drv, pending) in page {
            if pending && !self.queued.contains(&drv) && db.gc_root(&drv)?.is_none() {
                if self.drvs.full() {
                    more = true;
                    break;
                }
                self.gather(drv, None, now);
            }
            after = id;
        }
        self.pending = PendingWalk::After { id: after, more };
        Ok(())
    }

    /// At start-up: outputs of builds that succeeded within the ttl.
    fn walk_catch_up(&mut self, db: &mut Db, now: i64) -> crate::db::Result<()> {
        let Some((mut after, until)) = self.catch_up else {
            return Ok(());
        };
        let limit = PAGE;
        let page = db.succeeded_outputs_page(after, until, limit)?;
        let mut done = page.len() < limit;
        for (stop, id, paths) in page {
            if self.outputs.full() {
                done = false;
                break;
            }
            for path in paths {
                self.want_output(db, path, stop, now)?;
            }
            after = (stop, id);
        }
        self.catch_up = match done {
            true => {
                log::info!(target: GC_ROOTS, "start-up: every build that succeeded within the ttl ({} s) looked at for roots", self.ttl);
                None
            }
            false => Some((after, until)),
        };
        Ok(())
    }

    /// A page of the sweep of every row, if one is due or running.
    fn sweep_page(&mut self, db: &mut Db, now: i64, work: &mut Work) -> crate::db::Result<()> {
        if self.sweep.is_none() && now >= self.next_sweep {
            self.sweep = Some(String::new());
        }
        let Some(after) = self.sweep.take() else {
            return Ok(());
        };
        let page = db.gc_roots_page(&after, PAGE)?;
        let last = page.last().map(|r| r.item.clone());
        let full = page.len() == PAGE;
        for row in page {
            self.recheck_one(db, &row.item, now, work)?;
        }
        match (full, last) {
            (true, Some(last)) => self.sweep = Some(last),
            _ => self.next_sweep = now + SWEEP_EVERY,
        }
        Ok(())
    }

    /// The chunk in flight was made: `valid` are its items that the
    /// daemon says are valid and held by the root file `file` (None: no
    /// item was valid, no file was made).  Those still wanted get their
    /// rows; if none is, the file's symlink goes.
    pub fn made(&mut self, db: &mut Db, file: Option<&str>, valid: &[String], now: i64) {
        let Some(roots) = self.in_flight.take() else {
            return;
        };
        let valid: HashSet<&str> = valid.iter().map(String::as_str).collect();
        let mut keep = Vec::new();
        for root in roots {
            self.queued.remove(&root.item);
            let wanted = match (valid.contains(root.item.as_str()), root.expires) {
                (false, None) => {
                    log::warn!(target: GC_ROOTS, "{:?}, the derivation of a pending build, is not in the store", root.item);
                    false
                }
                (false, Some(_)) => {
                    log::debug!(target: GC_ROOTS, "{:?} was collected before its root was made", root.item);
                    false
                }
                // Its builds may have ended while the root was being made.
                (true, None) => db.derivation_pending(&root.item).unwrap_or(true),
                (true, Some(until)) => until > now,
            };
            if wanted {
                keep.push(root);
            }
        }
        let Some(file) = file else {
            return;
        };
        if let Err(e) = db.add_gc_roots(&keep, file) {
            // Nothing was written (one transaction): the file goes.
            log::error!(target: GC_ROOTS, "{e}");
            self.commands.push_back(Command::Remove(vec![file.into()]));
            return;
        }
        match db.gc_root_file_held(file) {
            Ok(true) => {
                log::debug!(target: GC_ROOTS, "{} GC root(s) made, held by {file}", keep.len())
            }
            Ok(false) => self.commands.push_back(Command::Remove(vec![file.into()])),
            // Its rows may exist: the symlink stays (if none does, the
            // next start-up's scan removes it).
            Err(e) => log::error!(target: GC_ROOTS, "{e}"),
        }
    }

    /// The chunk in flight could not be made (`why`: the daemon's error
    /// or a lost connection): the symlink of its root file goes, if it
    /// was made, and it is tried again after [`RETRY_AFTER`] seconds.
    pub fn failed(&mut self, why: &str, file: Option<&str>, now: i64) {
        let Some(roots) = self.in_flight.take() else {
            return;
        };
        log::warn!(target: GC_ROOTS,
            "{} GC root(s) not made: {why}; trying again in {RETRY_AFTER} s",
            roots.len()
        );
        if let Some(file) = file {
            self.commands.push_back(Command::Remove(vec![file.into()]));
        }
        self.retry = Some((now + RETRY_AFTER, roots));
    }

    /// Of the symlinks found in the directory (name, target), those no
    /// row is held by: left by a process that stopped between making a
    /// symlink and recording its rows, or before removing it.  `making`:
    /// the root file of the chunk in flight, whose rows are not written
    /// yet.
    pub fn stale_links(
        &self,
        db: &Db,
        links: &[(String, String)],
        making: Option<&str>,
    ) -> Vec<String> {
        links
            .iter()
            .filter(|(name, target)| {
                let ours = base_name(target) == Some(name.as_str());
                let held = ours && matches!(db.gc_root_file_held(target), Ok(true));
                !held && making != Some(target.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// What one step released.
#[derive(Default)]
struct Work {
    remove: Vec<String>,
    released: HashSet<String>,
}

impl Work {
    /// Rows are deleted at the end of the step: a sweep may meet an
    /// item the recheck queue released already.
    fn release(&mut self, item: String) {
        if self.released.insert(item.clone()) {
            self.remove.push(item);
        }
    }
}

#[cfg(test)]
mod tests;

//! GC roots: what cuirass keeps from `guix gc`, planned without I/O.
//!
//! Two kinds of store items are kept: the `.drv` of every pending build
//! (scheduled or started), until no build of it is pending, and the
//! outputs of succeeded builds, until `--ttl` after the latest succeeded
//! build that has them.  A root is a symlink `DIR/BASENAME` to the item,
//! registered with the daemon as an indirect root (op 12), as Guix's own
//! `--root` options do; the `GcRoots` table lists the roots that exist
//! (`crate::db::gcroots`), and the API says an output is available
//! while its row does.
//!
//! The [`Planner`] takes the database and `now` (Unix seconds) and returns
//! [`Command`]s: make a chunk of roots (the loop makes the symlinks and
//! registers them over its own daemon connection, then reports which
//! items the daemon says are valid), or remove symlinks.  Every call does
//! a bounded amount of work: at most [`MAKE_CHUNK`] roots in flight, and
//! pages of [`PAGE`] rows per walk.  Work comes from:
//!
//! - builds registered since the last look (a walk by build id), and all
//!   pending builds at start-up and when an operator requeues some;
//! - builds the loop saw finish ([`Planner::finished`]): a success's
//!   outputs get roots, and any end may release the `.drv`'s;
//! - at start-up, builds that succeeded within `--ttl` before it;
//! - roots whose expiry has passed (once a second), items the retention
//!   deleted builds of ([`Planner::recheck`]), and a sweep of every root
//!   every [`SWEEP_EVERY`] seconds (a build canceled by a newer
//!   evaluation, a `--ttl` made shorter).
//!
//! A root is kept or removed by one rule ([`Planner::recheck`]): a `.drv`
//! while a build of it is pending, an output while its latest succeeded
//! build stopped less than the ttl ago.

use crate::db::gcroots::RootRow;
use crate::db::{BuildId, Db};
use crate::logging::GC_ROOTS;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

/// Roots in one chunk handed to the loop (one symlink and one daemon
/// request each): creating a symlink took 0.7 ms on a loaded test
/// machine's ext4 (its inode allocator skips recently freed inodes), so
/// a chunk stays well within a loop turn.
pub const MAKE_CHUNK: usize = 64;
/// Rows read per walk or sweep page.
pub const PAGE: usize = 500;
/// Seconds between two sweeps of every root.
pub const SWEEP_EVERY: i64 = 60;
/// Seconds before a chunk the daemon could not take is tried again.
pub const RETRY_AFTER: i64 = 30;

/// What the loop must do for the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// For each root, a symlink at [`Planner::link_of`] its item, then
    /// each registered with the daemon (add-indirect-root), then a wait
    /// for any collection in progress (sync-with-gc), then the valid
    /// items asked (query-valid-paths); reported with [`Planner::made`],
    /// or [`Planner::failed`].
    Make(Vec<RootRow>),
    /// Remove the symlinks of these items: their rows are gone.
    Remove(Vec<String>),
}

/// The store item a root keeps, from the symlink's name: its base name
/// must be a plain file name.
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
    /// Items whose roots may have to go.
    recheck: VecDeque<String>,
    /// The sweep in progress: the last item looked at.
    sweep: Option<String>,
    next_sweep: i64,
    next_expiry: i64,
    /// The chunk being made.
    in_flight: Option<Vec<RootRow>>,
    /// A chunk the daemon did not take, and when to try it again.
    retry: Option<(i64, Vec<RootRow>)>,
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
            in_flight: None,
            retry: None,
            paused_until: None,
            commands: VecDeque::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The symlink of `item`'s root: `DIR/BASENAME`, None for a name that
    /// is not a store item's.
    pub fn link_of(&self, item: &str) -> Option<PathBuf> {
        base_name(item).map(|name| self.dir.join(name))
    }

    /// A build of `derivation` reached a final status.
    pub fn finished(&mut self, derivation: &str, succeeded: bool) {
        if succeeded {
            self.succeeded.push_back(derivation.to_string());
        }
        self.recheck.push_back(derivation.to_string());
    }

    /// These items' builds changed (deleted, canceled): their roots are
    /// looked at again.
    pub fn recheck(&mut self, items: impl IntoIterator<Item = String>) {
        self.recheck.extend(items);
    }

    /// Builds went back to pending (an operator's restart): every pending
    /// build is looked at again, and every root at the next step.
    pub fn rescan(&mut self, now: i64) {
        self.pending = PendingWalk::Restart;
        self.next_sweep = self.next_sweep.min(now);
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Whether [`Planner::step`] has work now (rather than at its next
    /// periodic look).
    pub fn has_work(&self) -> bool {
        let producing = self.in_flight.is_none() && self.retry.is_none();
        if self.paused_until.is_some() {
            return !self.commands.is_empty();
        }
        !self.commands.is_empty()
            || !self.recheck.is_empty()
            || self.sweep.is_some()
            || (producing
                && (!self.succeeded.is_empty()
                    || self.catch_up.is_some()
                    || matches!(
                        self.pending,
                        PendingWalk::Restart | PendingWalk::After { more: true, .. }
                    )))
    }

    /// Work is under way or due: a one-shot run waits for it.  A chunk
    /// waiting for its retry is not: the daemon may be gone for good.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some() || self.has_work()
    }

    /// One bounded piece of work; see the module docs.
    pub fn step(&mut self, db: &mut Db, now: i64) {
        match self.paused_until {
            Some(until) if now < until => return,
            _ => self.paused_until = None,
        }
        let mut work = Work::default();
        if self.in_flight.is_none()
            && let Some((at, roots)) = self.retry.take()
        {
            match now >= at {
                true => {
                    for r in roots {
                        work.add(r);
                    }
                }
                false => self.retry = Some((at, roots)),
            }
        }
        if let Err(e) = self.plan(db, now, &mut work) {
            log::error!(target: GC_ROOTS, "{e}; GC roots looked at again in {RETRY_AFTER} s");
            self.paused_until = Some(now + RETRY_AFTER);
        }
        if !work.remove.is_empty() {
            match db.remove_gc_roots(&work.remove) {
                Ok(()) => {
                    log::debug!(target: GC_ROOTS, "{} GC root(s) released", work.remove.len());
                    self.commands.push_back(Command::Remove(work.remove));
                }
                Err(e) => log::error!(target: GC_ROOTS, "{e}"),
            }
        }
        if !work.make.is_empty() {
            self.in_flight = Some(work.make.clone());
            self.commands.push_back(Command::Make(work.make));
        }
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
        if self.in_flight.is_some() || self.retry.is_some() {
            return Ok(());
        }
        while !work.full() {
            let Some(drv) = self.succeeded.pop_front() else {
                break;
            };
            for (path, stop) in db.succeeded_outputs_of(&drv)? {
                self.want_output(db, path, stop, now, work)?;
            }
        }
        self.walk_pending(db, work)?;
        self.walk_catch_up(db, now, work)
    }

    /// Decides whether `item`'s root stays (see the module docs).
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

    /// An output of a build that succeeded at `stop`: rooted until the
    /// ttl has passed, unless it has passed already.
    fn want_output(
        &mut self,
        db: &mut Db,
        path: String,
        stop: i64,
        now: i64,
        work: &mut Work,
    ) -> crate::db::Result<()> {
        let until = stop.saturating_add(self.ttl);
        if until <= now {
            return Ok(());
        }
        match db.gc_root(&path)? {
            Some(RootRow {
                expires: Some(e), ..
            }) if e < until => db.set_gc_root_expiry(&path, until)?,
            Some(_) => {}
            None => work.add(RootRow {
                item: path,
                expires: Some(until),
            }),
        }
        Ok(())
    }

    /// New pending builds, by id: their `.drv` get roots.
    fn walk_pending(&mut self, db: &mut Db, work: &mut Work) -> crate::db::Result<()> {
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
            if pending && !work.has(&drv) && db.gc_root(&drv)?.is_none() {
                if work.full() {
                    more = true;
                    break;
                }
                work.add(RootRow {
                    item: drv,
                    expires: None,
                });
            }
            after = id;
        }
        self.pending = PendingWalk::After { id: after, more };
        Ok(())
    }

    /// At start-up: outputs of builds that succeeded within the ttl.
    fn walk_catch_up(&mut self, db: &mut Db, now: i64, work: &mut Work) -> crate::db::Result<()> {
        let Some((mut after, until)) = self.catch_up else {
            return Ok(());
        };
        let limit = MAKE_CHUNK;
        let page = db.succeeded_outputs_page(after, until, limit)?;
        let mut done = page.len() < limit;
        for (stop, id, paths) in page {
            if work.full() {
                done = false;
                break;
            }
            for path in paths {
                self.want_output(db, path, stop, now, work)?;
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

    /// A page of the sweep of every root, if one is due or running.
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

    /// The chunk in flight was made: `valid` are its items whose symlink
    /// exists, registered, and that the daemon says are valid.  Those
    /// still wanted get their rows; the others' symlinks go.
    pub fn made(&mut self, db: &mut Db, valid: &[String], now: i64) {
        let Some(roots) = self.in_flight.take() else {
            return;
        };
        let valid: HashSet<&str> = valid.iter().map(String::as_str).collect();
        let mut keep = Vec::new();
        let mut drop = Vec::new();
        for root in roots {
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
            match wanted {
                true => keep.push(root),
                false => drop.push(root.item),
            }
        }
        match db.add_gc_roots(&keep) {
            Ok(()) => log::debug!(target: GC_ROOTS, "{} GC root(s) made", keep.len()),
            Err(e) => {
                log::error!(target: GC_ROOTS, "{e}");
                drop.extend(keep.into_iter().map(|r| r.item));
            }
        }
        if !drop.is_empty() {
            self.commands.push_back(Command::Remove(drop));
        }
    }

    /// The chunk in flight could not be made (`why`: the daemon's error
    /// or a lost connection): its symlinks go, and it is tried again
    /// after [`RETRY_AFTER`] seconds.
    pub fn failed(&mut self, why: &str, now: i64) {
        let Some(roots) = self.in_flight.take() else {
            return;
        };
        log::warn!(target: GC_ROOTS,
            "{} GC root(s) not made: {why}; trying again in {RETRY_AFTER} s",
            roots.len()
        );
        self.commands.push_back(Command::Remove(
            roots.iter().map(|r| r.item.clone()).collect(),
        ));
        self.retry = Some((now + RETRY_AFTER, roots));
    }

    /// Of the symlinks found in the directory (name, target), those no
    /// root accounts for: left by a process that stopped between making
    /// a symlink and recording it.
    pub fn stale_links(&self, db: &Db, links: &[(String, String)]) -> Vec<String> {
        let in_flight: HashSet<&str> = self
            .in_flight
            .iter()
            .flatten()
            .map(|r| r.item.as_str())
            .collect();
        links
            .iter()
            .filter(|(name, target)| {
                let ours = base_name(target) == Some(name.as_str());
                let held = ours && matches!(db.gc_root(target), Ok(Some(_)));
                !held && !in_flight.contains(target.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// What one step decided.
#[derive(Default)]
struct Work {
    make: Vec<RootRow>,
    seen: HashSet<String>,
    remove: Vec<String>,
    released: HashSet<String>,
}

impl Work {
    fn full(&self) -> bool {
        self.make.len() >= MAKE_CHUNK
    }

    fn has(&self, item: &str) -> bool {
        self.seen.contains(item)
    }

    fn add(&mut self, root: RootRow) {
        if self.seen.insert(root.item.clone()) {
            self.make.push(root);
        }
    }

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

//! The database's background upkeep, a bounded page per loop turn: new
//! job names into the search index, registered builds' index entries
//! into the large indexes, and the weathers of builds that finished
//! before weathers were kept.

use super::*;
use crate::logging::DB;

impl EventLoop {
    /// A page of newly registered job names into the search index (the
    /// searches scan the names not indexed yet); while a full page was
    /// indexed, the next turn comes at once and indexes the next.
    pub(super) fn index_job_names(&mut self) {
        let page = crate::db::search::NAME_INDEX_PAGE;
        match self.db.index_job_names(page) {
            Ok(n) => self.names_behind = n == page,
            Err(e) => {
                log::warn!(target: DB, "job names not indexed for search yet: {e}");
                self.names_behind = false;
            }
        }
    }

    /// A page of registered builds' index entries into the large indexes
    /// ([`crate::db::fresh`]); the next turn comes at once until none is
    /// left, and a line says how many moved once more than a page did.
    pub(super) fn merge_fresh(&mut self, now: Instant) {
        let page = crate::db::fresh::MERGE_PAGE;
        match self.db.merge_fresh(page) {
            Ok(n) if n == page => self.fresh_merged += n,
            Ok(n) => {
                self.fresh_merged += n;
                let since = self.fresh_behind.take().unwrap_or(now);
                if self.fresh_merged > page {
                    log::info!(
                        target: DB,
                        "index entries of {} registered builds moved to the large indexes in {:.1} s",
                        self.fresh_merged,
                        now.duration_since(since).as_secs_f64()
                    );
                }
                self.fresh_merged = 0;
            }
            Err(e) => {
                log::warn!(target: DB, "registered builds' index entries not moved yet: {e}");
                self.fresh_behind = None;
            }
        }
    }

    /// A page of the builds a new evaluation may supersede, those it does
    /// canceled (see [`crate::db::supersede`]); the next turn comes at once
    /// until no evaluation waits, and the dispatcher reads the queue again
    /// after a page that canceled some.
    pub(super) fn supersede(&mut self, now: Instant) {
        if self.superseding_evaluations.is_empty() {
            self.superseding = None;
            return;
        }
        let in_flight = self.dispatcher.in_flight_derivations();
        let page = crate::db::supersede::SUPERSEDE_PAGE;
        match self.db.supersede(&in_flight, unix_now(), page) {
            Ok(None) => {
                self.superseding = None;
                self.superseding_evaluations.clear();
            }
            Ok(Some(done)) => {
                if done.done {
                    let since = self.superseding.unwrap_or(now);
                    // The next evaluation waiting, if any, is timed from now.
                    self.superseding = None;
                    self.reload_superseding(now);
                    log::info!(
                        target: DB,
                        "spec={:?} evaluation {}: {} superseded build(s) canceled in {:.1} s",
                        done.specification,
                        done.evaluation,
                        done.canceled_in_all,
                        now.duration_since(since).as_secs_f64()
                    );
                }
                if done.canceled > 0 || done.done {
                    self.feed_dispatcher(queue::Input::Changed, now);
                }
            }
            Err(e) => {
                // Tried again within a second (see `advance`).
                log::warn!(target: DB, "superseded builds not canceled yet: {e}");
                self.superseding = None;
            }
        }
    }

    /// Reads which evaluations still supersede builds; while any does,
    /// the next turn comes at once.  On an error the list stays as it was
    /// and the pages are tried anyway.
    pub(super) fn reload_superseding(&mut self, now: Instant) {
        match self.db.superseding_evaluations() {
            Ok(list) => {
                if list.is_empty() {
                    self.superseding = None;
                } else {
                    self.superseding.get_or_insert(now);
                }
                self.superseding_evaluations = list;
            }
            Err(e) => {
                log::warn!(target: DB, "cannot read the evaluations superseding builds: {e}");
                self.superseding.get_or_insert(now);
            }
        }
    }

    /// A page of weathers not kept yet (see [`crate::db::backfill`]);
    /// the next turn comes at once until none is left.
    pub(super) fn backfill_weathers(&mut self, now: Instant) {
        match self
            .db
            .backfill_weathers(crate::db::backfill::BACKFILL_PAGE)
        {
            Ok(0) => {
                self.weathers_behind = false;
                if self.backfilled {
                    log::info!(target: DB, "weathers of builds finished before they were kept: all computed");
                }
            }
            Ok(mark) => {
                let first = !self.backfilled;
                self.backfilled = true;
                if first || now >= self.backfill_logged + STATUS_EVERY {
                    self.backfill_logged = now;
                    log::info!(
                        target: DB,
                        "weathers of builds finished before they were kept: computing, down to build id {mark}"
                    );
                }
            }
            Err(e) => {
                log::warn!(target: DB, "weathers of older builds not computed: {e}");
                self.weathers_behind = false;
            }
        }
    }
}

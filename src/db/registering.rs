//! The derivations of the evaluation being registered, kept in memory
//! between its batches ([`Db::add_jobs`]) as 64-bit hashes (some 1.3 MiB
//! for a 75,000-job evaluation).  Registration asks, for every job,
//! whether another job of the evaluation has its derivation already (an
//! alias, recorded as another name of that build).  Almost never: a seek
//! in `Builds_derivation_fresh` per job answered "no" some 75,000 times,
//! about 80 ms of a registration on the 10,000,000-build database.  A
//! hash not in the set is a new derivation; a hash in it is looked up as
//! before, so two derivations with one hash cost a seek, never a wrong
//! alias.  When the evaluation closes, the set becomes the one its
//! superseding starts from ([`DerivationSet`]), which otherwise reads
//! the 75,000 derivations again.

use super::supersede::DerivationSet;
use super::*;

/// Every derivation of `evaluation`'s builds, hashed: a derivation not
/// in it is certainly not among them.  Only true while each new build's
/// derivation is [added](Registering::add) and the set is dropped when
/// a batch fails (its transaction rolls back, the hashes stay).
#[derive(Debug)]
pub(crate) struct Registering {
    pub(crate) evaluation: EvalId,
    hashes: HashSet<u64>,
}

impl Registering {
    /// Evaluation `eval`'s derivations so far, from its builds: none when
    /// it was just opened, which is when the loop's registrations start.
    pub(crate) fn of(tx: &Transaction, eval: EvalId) -> Result<Registering> {
        Ok(Registering {
            evaluation: eval,
            hashes: DerivationSet::hashes_of(tx, eval)?,
        })
    }

    /// An evaluation with no builds yet.
    pub(crate) fn empty(eval: EvalId) -> Registering {
        Registering {
            evaluation: eval,
            hashes: HashSet::new(),
        }
    }

    /// Records `derivation` as one of the evaluation's builds' (the
    /// build is inserted next); true if it certainly was not before,
    /// false if it may have been.
    pub(crate) fn add(&mut self, derivation: &str) -> bool {
        self.hashes.insert(DerivationSet::hash(derivation))
    }

    /// The set superseding looks derivations up in, sorted.
    pub(crate) fn into_derivation_set(self) -> DerivationSet {
        DerivationSet::from_hashes(self.evaluation, self.hashes.into_iter().collect())
    }
}

//! The evaluation track of a `specification` record: its channels'
//! commits, the evaluations they make, and which Guix evaluates them.

use super::*;
use crate::fetch::{Checkout, Outcome};
use crate::sexp::{Datum, Kind, Pos};
use crate::spec::Record;

/// The channel whose Guix evaluates a spec that lists it.
const GUIX: &str = "guix";

impl Cycle {
    /// The single checkout of a 2018 spec, named after the spec.
    pub(super) fn own_checkout(&self, commit: &str) -> Vec<Checkout> {
        vec![Checkout {
            channel: self.spec.name.clone(),
            commit: commit.to_string(),
            directory: self.settings.checkout.clone(),
        }]
    }

    /// An evaluation opened in the database with its checkouts; the
    /// revision column holds the first channel's commit.
    pub(super) fn open_evaluation(
        &mut self,
        key: &str,
        checkouts: &[Checkout],
        env: &mut Env,
    ) -> crate::db::Result<EvalId> {
        let revision = checkouts.first().map_or(key, |c| c.commit.as_str());
        let id = env
            .db
            .begin_evaluation(&self.spec.name, revision, env.unix_now)?;
        if let Err(e) = env.db.add_checkouts(id, checkouts) {
            // Gone with the evaluation: nothing half-registered.
            let _ = env.db.abandon_evaluation(id);
            return Err(e);
        }
        Ok(id)
    }

    /// The fetch child's lines, one per channel.  A channel that cannot
    /// be fetched ends the round as a failed fetch does, except `guix`,
    /// which `guix time-machine` fetches (and authenticates) itself: its
    /// checkout then has no commit and the time-machine says what is
    /// wrong.  A commit refused by `guix git authenticate` is a failed
    /// evaluation with the reason.
    pub(super) fn channels_fetched(&mut self, stdout: &str, reason: &str, env: &mut Env) -> State {
        let Some(record) = self.spec.record.clone() else {
            return self.end_round();
        };
        let outcomes = fetch::parse_channels_output(stdout);
        let mut checkouts = Vec::new();
        let mut refused = None;
        for channel in &record.channels {
            let outcome = outcomes.iter().find(|o| match o {
                Outcome::Fetched(c) | Outcome::Unauthenticated { checkout: c, .. } => {
                    c.channel == channel.name
                }
                Outcome::Failed { channel: n, .. } => *n == channel.name,
            });
            match outcome {
                Some(Outcome::Fetched(c)) => checkouts.push(c.clone()),
                Some(Outcome::Unauthenticated { checkout, reason }) => {
                    refused.get_or_insert_with(|| {
                        format!(
                            "channel {:?}: commit {} failed authentication: {reason}",
                            channel.name, checkout.commit
                        )
                    });
                    checkouts.push(checkout.clone());
                }
                Some(Outcome::Failed { reason, .. }) if channel.name == GUIX => {
                    log::warn!(target: FETCH,
                        "spec={:?} channel \"guix\" left to guix time-machine: {reason}",
                        self.spec.name
                    );
                    checkouts.push(Checkout {
                        channel: GUIX.into(),
                        commit: String::new(),
                        directory: PathBuf::new(),
                    });
                }
                other => {
                    let why = match other {
                        Some(Outcome::Failed { reason, .. }) => reason.clone(),
                        _ => format!("no answer for it ({reason})"),
                    };
                    let why = format!("fetch of channel {:?} failed: {why}", channel.name);
                    log::error!(target: FETCH, "spec={:?} {why}", self.spec.name);
                    if self.settings.one_shot {
                        self.failure = Some(why);
                    }
                    return self.end_round();
                }
            }
        }
        let key: Vec<&str> = checkouts.iter().map(|c| c.commit.as_str()).collect();
        let key = key.join(" ");
        let name = self.spec.name.clone();
        match env.db.stamp(&name) {
            Err(e) => {
                log::error!(target: FETCH, "spec={name:?} {e}");
                return self.end_round();
            }
            Ok(Some(stamp)) if stamp == key => {
                log::info!(target: FETCH, "spec={name:?} commits {key:?} already evaluated");
                return self.end_round();
            }
            Ok(_) => log::info!(target: FETCH, "spec={name:?} new commits {key:?}"),
        }
        match refused {
            None => self.begin_evaluation(key, checkouts, env),
            Some(why) => {
                let recorded = self.open_evaluation(&key, &checkouts, env).and_then(|id| {
                    log::error!(target: EVALUATION, "spec={name:?} evaluation {id} failed: {why}");
                    env.db.fail_evaluation(&name, id, &key, &why, env.unix_now)
                });
                if let Err(e) = recorded {
                    log::error!(target: EVALUATION, "spec={name:?} cannot record a failed evaluation: {e}");
                }
                self.end_round()
            }
        }
    }

    /// How long the spec's `period` still holds polls, counted from its
    /// latest evaluation as the database has it.
    pub(super) fn period_left(&self, env: &Env) -> Option<Duration> {
        let period = self.spec.record.as_ref()?.period as i64;
        if period == 0 {
            return None;
        }
        let last = env.db.latest_evaluations(1, Some(&self.spec.name)).ok()?;
        let elapsed = env.unix_now - last.first()?.timestamp;
        (elapsed < period).then(|| Duration::from_secs((period - elapsed.max(0)) as u64))
    }

    /// The files the spec's `build-outputs` names, of the batch's builds
    /// that succeeded, become build products.
    pub(super) fn register_products(&mut self, env: &mut Env) {
        let Some(record) = self
            .spec
            .record
            .as_ref()
            .filter(|r| !r.build_outputs.is_empty())
        else {
            return;
        };
        let drvs: Vec<String> = self.building.in_flight.iter().cloned().collect();
        match env
            .db
            .register_products(&self.spec.name, &drvs, &record.build_outputs, env.file_size)
        {
            Ok(0) => {}
            Ok(n) => {
                log::info!(target: BUILDING, "spec={:?} {n} build product(s) registered", self.spec.name)
            }
            Err(e) => {
                log::error!(target: BUILDING, "spec={:?} build products: {e}", self.spec.name)
            }
        }
    }

    /// The evaluator of a record spec: src/build-types.scm's
    /// `build-type-jobs`, with the checkouts on the load path, run by the
    /// Guix of the spec's channels when they include `guix`, else by the
    /// installed one.
    pub(super) fn record_evaluator(&self, record: &Record, checkouts: &[Checkout]) -> Command {
        let pos = Pos { line: 1, column: 1 };
        let st = |s: &str| Datum::new(pos, Kind::Str(s.into())).to_string();
        let sym = |s: &str| Datum::new(pos, Kind::Symbol(s.into())).to_string();
        let mut repositories = Vec::new();
        let mut time_machine = Vec::new();
        for (channel, checkout) in record.channels.iter().zip(checkouts) {
            let commit = match checkout.commit.as_str() {
                "" => "#f".to_string(),
                c => st(c),
            };
            repositories.push(format!(
                "(repository (version 0) (url {}) (branch {}) (commit {commit}) (name {}))",
                st(&channel.url),
                st(&channel.branch),
                sym(&channel.name)
            ));
            let pin = match checkout.commit.as_str() {
                "" => String::new(),
                c => format!(" (commit {})", st(c)),
            };
            let intro = channel.introduction.as_ref().map_or(String::new(), |i| {
                format!(
                    " (introduction (make-channel-introduction {} (openpgp-fingerprint {})))",
                    st(&i.commit),
                    st(&i.signer)
                )
            });
            time_machine.push(format!(
                "(channel (name '{}) (url {}) (branch {}){pin}{intro})",
                sym(&channel.name),
                st(&channel.url),
                st(&channel.branch)
            ));
        }
        // Guix's own tree is never put on the load path: its source
        // would shadow the compiled modules of the Guix that evaluates.
        let dirs: Vec<String> = checkouts
            .iter()
            .filter(|c| !c.commit.is_empty() && c.channel != GUIX)
            .map(|c| {
                format!(
                    "({} . {})",
                    sym(&c.channel),
                    st(&c.directory.to_string_lossy())
                )
            })
            .collect();
        let systems: Vec<String> = record.systems.iter().map(|s| st(s)).collect();
        let arguments = format!(
            "((build . {}) (systems {}) (checkouts {}) (channels {}))",
            record.build,
            systems.join(" "),
            dirs.join(" "),
            repositories.join(" ")
        );
        let load_path: Vec<PathBuf> = self.settings.load_path.clone();
        let uses_guix = record.channels.iter().any(|c| c.name == GUIX);
        Command::SpawnEvaluator {
            arguments: evaluator_arguments(
                &self.settings.checkout,
                &load_path,
                &self.settings.build_types,
                "build-type-jobs",
                &arguments,
            ),
            time_machine: uses_guix.then(|| format!("(list {})\n", time_machine.join("\n      "))),
        }
    }
}

//! The evaluation track's work: a new commit, the evaluator's output
//! registered as it comes, and the evaluation's outcome recorded.

use super::*;

impl Evaluation {
    /// Whether the jobs read so far are to be registered now (see
    /// [`job::REGISTER_BATCH`]).
    pub(super) fn flush_due(&self, now: Instant) -> bool {
        self.jobs.len() >= job::REGISTER_BATCH
            || self
                .waiting_since
                .is_some_and(|since| now >= since + job::REGISTER_WAIT)
    }
}

impl Cycle {
    /// `again`: evaluate `commit` even if it was already (a retry).
    pub(super) fn new_commit(&mut self, commit: String, again: bool, env: &mut Env) -> State {
        let name = &self.spec.name;
        match env.db.stamp(name) {
            Ok(Some(stamp)) if stamp == commit && again => {
                log::info!(target: FETCH, "spec={name:?} commit {commit} evaluated again");
                self.begin_compile_or_evaluation(commit, env)
            }
            Err(e) => {
                log::error!(target: FETCH, "spec={name:?} {e}");
                self.end_round()
            }
            Ok(Some(stamp)) if stamp == commit => {
                log::info!(target: FETCH, "spec={name:?} commit {commit} already evaluated");
                self.end_round()
            }
            Ok(_) => {
                log::info!(target: FETCH, "spec={name:?} new commit {commit}");
                self.begin_compile_or_evaluation(commit, env)
            }
        }
    }

    fn begin_compile_or_evaluation(&mut self, commit: String, env: &mut Env) -> State {
        if self.spec.no_compile {
            let checkouts = self.own_checkout(&commit);
            self.begin_evaluation(commit, checkouts, env)
        } else {
            self.commands.push_back(Command::SpawnCompile);
            State::Compiling {
                commit,
                deadline: env.now + self.settings.compile_timeout,
                killed: false,
            }
        }
    }

    /// The evaluator needs the daemon: without it every evaluation would
    /// fail and its commit be marked done.  Postponed instead, with no
    /// stamp, so the next poll tries the same commit again.
    pub(super) fn begin_evaluation(
        &mut self,
        commit: String,
        checkouts: Vec<fetch::Checkout>,
        env: &mut Env,
    ) -> State {
        let name = self.spec.name.clone();
        if let Err(e) = (env.daemon)() {
            let why = format!("evaluation of {commit} postponed: {e}");
            log::error!(target: EVALUATION, "spec={name:?} {why}");
            if self.settings.one_shot {
                self.failure = Some(why);
            }
            return self.end_round();
        }
        let id = match self.open_evaluation(&commit, &checkouts, env) {
            Ok(id) => id,
            Err(e) => {
                // Nothing recorded, no stamp: the next poll tries again.
                log::error!(target: EVALUATION, "spec={name:?} cannot start an evaluation: {e}");
                return self.end_round();
            }
        };
        log::info!(target: EVALUATION, "spec={name:?} evaluation {id} of {commit} started");
        if let Some(period) = self
            .spec
            .record
            .as_ref()
            .map(|r| r.period)
            .filter(|p| *p > 0)
        {
            // At most one evaluation per period: polls wait until it ends.
            self.next_poll = self.next_poll.max(env.now + Duration::from_secs(period));
        }
        self.commands.push_back(match &self.spec.record {
            None => Command::SpawnEvaluator {
                arguments: self.evaluator_arguments(),
                time_machine: None,
            },
            Some(record) => self.record_evaluator(record, &checkouts),
        });
        State::Evaluating(Box::new(Evaluation {
            id,
            commit,
            deadline: env.now + self.settings.evaluation_timeout,
            killed: false,
            tally: job::Tally::default(),
            jobs: Vec::new(),
            waiting_since: None,
            registered: 0,
            error: None,
            retry: false,
        }))
    }

    pub(super) fn evaluator_arguments(&self) -> String {
        let checkout = &self.settings.checkout;
        let mut load_path = vec![checkout.join(&self.spec.load_path)];
        load_path.extend(self.settings.load_path.iter().cloned());
        evaluator_arguments(
            checkout,
            &load_path,
            &checkout.join(&self.spec.file),
            &self.spec.proc_name,
            &self.spec.arguments,
        )
    }

    /// One line of evaluator output; the first bad one fails the evaluation.
    pub(super) fn evaluator_line(&mut self, e: &mut Evaluation, line: &[u8], env: &mut Env) {
        if e.error.is_some() || line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = job::parse_line(line).and_then(|l| {
            e.tally.accept(&l)?;
            match l {
                job::Line::Job {
                    name,
                    derivation,
                    limits,
                    priority,
                } => {
                    let bytes = (env.read_drv)(&derivation).map_err(|err| {
                        format!("job {name:?}: cannot read {derivation:?}: {err}")
                    })?;
                    if e.jobs.is_empty() {
                        e.waiting_since = Some(env.now);
                    }
                    e.jobs.push(job::job_record(
                        &name,
                        &derivation,
                        limits,
                        priority,
                        &bytes,
                    )?);
                }
                job::Line::JobError { name, message } => log::warn!(target: EVALUATION,
                    "spec={:?} job {name:?} failed to evaluate: {message:?}",
                    self.spec.name
                ),
                job::Line::Done(_) => {}
            }
            Ok(())
        });
        if let Err(err) = parsed {
            self.fail_evaluation(e, format!("bad evaluator output: {err}"));
        }
    }

    /// The first reason is the one kept; the evaluator is killed since
    /// nothing more it says is used.
    pub(super) fn fail_evaluation(&mut self, e: &mut Evaluation, reason: String) {
        if e.error.is_some() {
            return;
        }
        log::error!(target: EVALUATION, "spec={:?} evaluation {}: {reason}", self.spec.name, e.id);
        e.error = Some(reason);
        if !e.killed {
            e.killed = true;
            self.commands.push_back(Command::KillChild);
        }
    }

    /// Registers the jobs read so far and queues their builds.
    pub(super) fn flush_jobs(&mut self, e: &mut Evaluation, env: &mut Env) {
        let jobs = std::mem::take(&mut e.jobs);
        e.waiting_since = None;
        if jobs.is_empty() || e.error.is_some() {
            return;
        }
        match env.db.add_jobs(&self.spec.name, e.id, &jobs, env.unix_now) {
            Ok(added) => {
                e.registered += jobs.len();
                if added.len() < jobs.len() {
                    log::info!(target: EVALUATION,
                        "spec={:?} evaluation {}: {} job(s) share another job's derivation: one build, found under each name",
                        self.spec.name,
                        e.id,
                        jobs.len() - added.len()
                    );
                }
                log::debug!(target: EVALUATION,
                    "spec={:?} evaluation {}: {} jobs registered so far",
                    self.spec.name,
                    e.id,
                    e.registered
                );
                if !added.is_empty() {
                    self.commands.push_back(Command::QueueChanged);
                }
            }
            Err(err) => {
                self.fail_evaluation(e, format!("cannot register jobs: {err}"));
                e.retry = true;
            }
        }
    }

    /// Records the outcome; then the queue is read again from the start.
    /// Builds already handed to the daemon keep their real result.
    pub(super) fn close_evaluation(&mut self, e: Evaluation, env: &mut Env) {
        let name = self.spec.name.clone();
        let in_flight = env.in_flight;
        let jobs = e.tally.jobs();
        let Evaluation {
            id, commit, error, ..
        } = e;
        let result = match (error, e.retry) {
            // A full disk or a read-only file says nothing about the
            // commit: forget the evaluation and keep the stamp, so the next
            // poll evaluates the commit again.  Should this fail too, the
            // next `begin_evaluation` rolls it back.
            (Some(error), true) => {
                log::error!(target: EVALUATION,
                    "spec={name:?} evaluation {id} of {commit} abandoned, to be retried: {error}"
                );
                env.db.abandon_evaluation(id)
            }
            (Some(error), false) => {
                log::error!(target: EVALUATION, "spec={name:?} evaluation {id} of {commit} failed: {error}");
                env.db
                    .fail_evaluation(&name, id, &commit, &error, in_flight, env.unix_now)
            }
            (None, _) => env
                .db
                .complete_evaluation(&name, id, &commit, env.unix_now)
                .and_then(|()| {
                    let size = env.db.evaluation_size(id)?;
                    log::info!(target: EVALUATION,
                        "spec={name:?} evaluation {id} of {commit} done: {}; the builds it supersedes are canceled next",
                        describe_size(size),
                    );
                    if size.0 != jobs {
                        // Never silent: a job the evaluator printed and no
                        // query finds is a bug to report.
                        log::error!(target: EVALUATION,
                            "spec={name:?} evaluation {id}: the evaluator printed {jobs} jobs, {} are registered",
                            size.0
                        );
                    }
                    Ok(())
                }),
        };
        if let Err(err) = result {
            // The stamp did not move, so the next poll evaluates again.
            log::error!(target: EVALUATION, "spec={name:?} cannot record evaluation {id}: {err}");
        }
        // Superseded builds were canceled, a failure's builds deleted.
        self.commands.push_back(Command::QueueChanged);
    }
}

/// `2 jobs, 1 build (2 jobs share a derivation)`, or `3 jobs` when each
/// has its own build: (job names, builds) of an evaluation.
pub fn describe_size((jobs, builds): (usize, usize)) -> String {
    if jobs == builds {
        return format!("{jobs} jobs");
    }
    format!(
        "{jobs} jobs, {builds} build(s) ({} job name(s) share another job's derivation)",
        jobs.saturating_sub(builds)
    )
}

/// The single argument of the evaluator script, an alist it `read`s.
pub fn evaluator_arguments(
    checkout: &std::path::Path,
    load_path: &[PathBuf],
    file: &std::path::Path,
    proc_name: &str,
    arguments: &str,
) -> String {
    use crate::sexp::{Datum, Kind, Pos};
    let datum = |kind| {
        Datum {
            pos: Pos { line: 1, column: 1 },
            kind,
        }
        .to_string()
    };
    let s = |p: &std::path::Path| datum(Kind::Str(p.to_string_lossy().into_owned()));
    let dirs: Vec<String> = load_path.iter().map(|p| s(p)).collect();
    format!(
        "((checkout . {}) (load-path {}) (file . {}) (proc . {}) (arguments . {}))",
        s(checkout),
        dirs.join(" "),
        s(file),
        datum(Kind::Symbol(proc_name.to_string())),
        arguments
    )
}

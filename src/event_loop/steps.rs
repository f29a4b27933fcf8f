//! The subprocess steps of a cycle: fetch, compile, evaluate.

use super::*;
use crate::logging::{COMPILE, EVALUATION, FETCH, shown};

impl EventLoop {
    pub(super) fn start_fetch(&mut self, index: usize, now: Instant) {
        let spec = &self.specs[index].spec;
        let target = fetch::Target::of(spec);
        let dir = self.checkout_dir(index);
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                log::error!(target: FETCH, "cannot find the cuirass executable: {e}");
                return;
            }
        };
        let mut cmd = Command::new(exe);
        cmd.args(fetch::child_args(&spec.url, &dir, &target));
        let work = &mut self.work[index];
        work.fetch_stdout.clear();
        work.commit = None;
        work.submitted.clear();
        let interval = Duration::from_secs(self.config.interval_secs);
        self.specs[index].polled(now, interval);
        self.specs[index].set_state(State::Fetching);
        if !self.spawn(index, Step::Fetch, cmd, self.config.fetch_timeout_secs) {
            self.end_cycle(index);
        }
    }

    pub(super) fn child_stdout(&mut self, index: usize) {
        let Some((step, proc, _)) = self.work[index].proc.as_mut() else {
            return;
        };
        let step = *step;
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let too_long = proc.read_stdout(self.poll.registry(), |l| lines.push(l.to_vec()));
        match step {
            Step::Fetch => {
                for l in lines {
                    let work = &mut self.work[index];
                    work.fetch_stdout.push_str(&String::from_utf8_lossy(&l));
                    work.fetch_stdout.push('\n');
                }
            }
            Step::Compile => {
                let label = self.label(index);
                for l in lines {
                    log::info!(target: COMPILE, "{label}: {}", String::from_utf8_lossy(&l));
                }
                if let Some(n) = too_long {
                    log::warn!(target: COMPILE, "{label}: an output line over {n} bytes was dropped");
                }
            }
            Step::Evaluate => {
                for l in lines {
                    self.evaluator_line(index, &l);
                }
                if let Some(n) = too_long {
                    self.evaluator_failed(index, format!("an output line is over {n} bytes"));
                }
                self.flush_jobs(index);
            }
        }
    }

    /// One line of evaluator output; the first bad one fails the evaluation.
    pub(super) fn evaluator_line(&mut self, index: usize, line: &[u8]) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        let work = &mut self.work[index];
        if work.eval_error.is_some() || line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = job::parse_line(line).and_then(|l| {
            work.tally.accept(&l)?;
            match l {
                job::Line::Job {
                    name: job_name,
                    derivation,
                } => {
                    let bytes = std::fs::read(&derivation).map_err(|e| {
                        let (job, drv) = (shown(&job_name), shown(&derivation));
                        format!("job {job}: cannot read {drv}: {e}")
                    })?;
                    work.jobs
                        .push(job::job_record(&job_name, &derivation, &bytes)?);
                }
                job::Line::JobError {
                    name: job_name,
                    message,
                } => log::warn!(
                    target: EVALUATION,
                    "spec={spec} job {} failed to evaluate: {}",
                    shown(&job_name),
                    shown(&message)
                ),
                job::Line::Done(_) => {}
            }
            Ok(())
        });
        if let Err(e) = parsed {
            self.evaluator_failed(index, e);
        }
    }

    /// Bad output ends the evaluation: the first reason is the one kept,
    /// and the evaluator is killed since nothing more it says is used.
    fn evaluator_failed(&mut self, index: usize, reason: String) {
        let work = &mut self.work[index];
        if work.eval_error.is_some() {
            return;
        }
        log::error!(target: EVALUATION,
            "spec={} bad evaluator output: {reason}",
            shown(&self.specs[index].spec.name)
        );
        work.eval_error = Some(format!("bad evaluator output: {reason}"));
        if let Some((_, proc, _)) = work.proc.as_mut() {
            proc.kill();
        }
    }

    /// Notices a finished or timed-out child and moves its spec on.
    pub(super) fn reap_child(&mut self, index: usize, now: Instant) {
        let Some((step, proc, deadline)) = self.work[index].proc.as_mut() else {
            return;
        };
        let step = *step;
        if now >= *deadline && !proc.killed && proc.poll_exit().is_none() {
            log::error!(
                target: step.target(),
                "spec={} {step:?} timed out; killing it",
                shown(&self.specs[index].spec.name)
            );
            proc.kill();
            if step == Step::Evaluate {
                let secs = self.config.evaluation_timeout_secs;
                self.work[index].eval_error = Some(format!("evaluation timed out after {secs} s"));
            }
        }
        let Some((_, proc, _)) = self.work[index].proc.as_mut() else {
            return;
        };
        let Some(exit) = proc.poll_exit() else {
            return;
        };
        // Read what is left before deciding: the last lines may be there.
        // Once killed an exit is enough, since a grandchild that left the
        // process group could hold the pipes open forever.
        if !proc.pipes_closed() && !proc.killed {
            return;
        }
        let (_, proc, _) = self.work[index].proc.take().unwrap();
        let ok = exit.success();
        match step {
            Step::Fetch => self.fetch_done(index, ok, &proc),
            Step::Compile => {
                if ok {
                    self.start_evaluation(index);
                } else {
                    log::error!(
                        target: COMPILE,
                        "spec={} compilation failed: {}",
                        shown(&self.specs[index].spec.name),
                        proc.failure_reason()
                    );
                    self.start_building(index);
                }
            }
            Step::Evaluate => self.evaluation_done(index, ok, &proc),
        }
    }

    pub(super) fn fetch_done(&mut self, index: usize, ok: bool, proc: &Proc) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        let commit = if ok {
            fetch::parse_child_output(&self.work[index].fetch_stdout)
        } else {
            None
        };
        let Some(commit) = commit else {
            // Builds still pending from earlier evaluations need no fetch.
            log::error!(target: FETCH, "spec={spec} fetch failed: {}", proc.failure_reason());
            self.start_building(index);
            return;
        };
        let stamp = match self.db.stamp(&name) {
            Ok(s) => s,
            Err(e) => {
                log::error!(target: FETCH, "spec={spec} {e}");
                self.end_cycle(index);
                return;
            }
        };
        if stamp.as_deref() == Some(commit.as_str()) {
            log::info!(target: FETCH, "spec={spec} commit {commit} already evaluated");
            self.start_building(index);
            return;
        }
        log::info!(target: FETCH, "spec={spec} new commit {commit}");
        self.work[index].commit = Some(commit);
        if self.specs[index].spec.no_compile {
            self.start_evaluation(index);
        } else {
            self.start_compile(index);
        }
    }

    pub(super) fn start_compile(&mut self, index: usize) {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "set -e; [ -f configure ] || ./bootstrap; \
                 [ -f Makefile ] || ./configure --localstatedir=/var; make -j {jobs}"
            ))
            .current_dir(self.checkout_dir(index));
        self.specs[index].set_state(State::Compiling);
        if !self.spawn(index, Step::Compile, cmd, self.config.fetch_timeout_secs) {
            self.end_cycle(index);
        }
    }

    pub(super) fn start_evaluation(&mut self, index: usize) {
        let spec = &self.specs[index].spec;
        let name = spec.name.clone();
        let checkout = self.checkout_dir(index);
        let mut load_path = vec![checkout.join(&spec.load_path)];
        load_path.extend(self.config.load_path.iter().cloned());
        let args = evaluator_arguments(
            &checkout,
            &load_path,
            &checkout.join(&spec.file),
            &spec.proc_name,
            &spec.arguments,
        );
        let mut cmd = Command::new(&self.config.evaluator[0]);
        cmd.args(&self.config.evaluator[1..])
            .arg(&self.evaluator_script)
            .arg(args)
            .current_dir(&checkout)
            .env("GUIX_DAEMON_SOCKET", &self.config.daemon_socket);
        let commit = self.work[index].commit.clone().unwrap_or_default();
        let spec = shown(&name);
        // The evaluator needs the daemon; without it every evaluation would
        // fail and its commit be marked done.  Postponed instead, with no
        // stamp, so the next poll tries the same commit again.  (Connecting
        // to a Unix socket does not block.)
        if let Err(e) = std::os::unix::net::UnixStream::connect(&self.config.daemon_socket) {
            log::error!(target: EVALUATION,
                "spec={spec} evaluation of {commit} postponed: cannot connect to guix-daemon at {}: {e}",
                self.config.daemon_socket.display()
            );
            self.end_cycle(index);
            return;
        }
        let eval = match self.db.begin_evaluation(&name, &commit, unix_now()) {
            Ok(eval) => eval,
            Err(e) => {
                // Nothing recorded, no stamp: the next poll tries again.
                log::error!(target: EVALUATION, "spec={spec} cannot start an evaluation: {e}");
                self.end_cycle(index);
                return;
            }
        };
        let work = &mut self.work[index];
        work.jobs.clear();
        work.jobs_registered = 0;
        work.tally = job::Tally::default();
        work.eval_error = None;
        work.eval_retry = false;
        work.evaluation = Some(eval);
        self.specs[index].set_state(State::Evaluating);
        log::info!(target: EVALUATION, "spec={spec} evaluation {eval} of {commit} started");
        if !self.spawn(
            index,
            Step::Evaluate,
            cmd,
            self.config.evaluation_timeout_secs,
        ) {
            self.work[index].eval_error = Some("cannot start the evaluator".into());
            self.close_evaluation(index);
        }
    }

    /// Registers the jobs read so far (one transaction per chunk) and
    /// queues their builds, so building starts before the evaluation ends.
    pub(super) fn flush_jobs(&mut self, index: usize) {
        let name = &self.specs[index].spec.name;
        let spec = shown(name);
        let work = &mut self.work[index];
        let Some(eval) = work.evaluation else {
            return;
        };
        if work.jobs.is_empty() || work.eval_error.is_some() {
            return;
        }
        match self.db.add_jobs(name, eval, &work.jobs, unix_now()) {
            Ok(added) => {
                work.jobs_registered += work.jobs.len();
                log::debug!(target: EVALUATION,
                    "spec={spec} evaluation {eval}: {} jobs registered so far",
                    work.jobs_registered
                );
                work.queue.extend(added);
                work.jobs.clear();
            }
            Err(e) => {
                log::error!(target: EVALUATION, "spec={spec} evaluation {eval}: {e}");
                work.eval_error = Some(format!("cannot register jobs: {e}"));
                work.eval_retry = true;
                if let Some((_, proc, _)) = work.proc.as_mut() {
                    proc.kill();
                }
            }
        }
    }

    pub(super) fn evaluation_done(&mut self, index: usize, ok: bool, proc: &Proc) {
        self.flush_jobs(index);
        let work = &mut self.work[index];
        if work.eval_error.is_none() {
            if !ok {
                work.eval_error = Some(format!("evaluator {}", proc.failure_reason()));
            } else if let Err(e) = work.tally.finish() {
                work.eval_error = Some(format!("bad evaluator output: {e}"));
            }
        }
        self.close_evaluation(index);
    }

    /// Records the evaluation's outcome and moves on to building.
    fn close_evaluation(&mut self, index: usize) {
        let name = self.specs[index].spec.name.clone();
        let spec = shown(&name);
        let work = &mut self.work[index];
        let commit = work.commit.clone().unwrap_or_default();
        let Some(eval) = work.evaluation.take() else {
            return;
        };
        let now = unix_now();
        if std::mem::take(&mut work.eval_retry) {
            // A full disk or a read-only file says nothing about the
            // commit: forget the evaluation and keep the stamp, so the
            // next poll evaluates the commit again.  Should this write
            // fail too, the next `begin_evaluation` rolls it back.
            let error = work.eval_error.take().unwrap_or_default();
            log::error!(target: EVALUATION,
                "spec={spec} evaluation {eval} of {commit} abandoned, to be retried: {error}"
            );
            if let Err(e) = self.db.abandon_evaluation(eval) {
                log::error!(target: EVALUATION, "spec={spec} cannot roll back evaluation {eval}: {e}");
            }
            self.start_building(index);
            return;
        }
        let result = match work.eval_error.take() {
            Some(error) => {
                log::error!(target: EVALUATION, "spec={spec} evaluation {eval} of {commit} failed: {error}");
                self.db.fail_evaluation(&name, eval, &commit, &error, now)
            }
            None => self
                .db
                .complete_evaluation(&name, eval, &commit, now)
                .map(|canceled| {
                    log::info!(target: EVALUATION,
                        "spec={spec} evaluation {eval} of {commit} done: {} jobs{}",
                        work.jobs_registered,
                        if canceled > 0 {
                            format!(", {canceled} superseded build(s) canceled")
                        } else {
                            String::new()
                        }
                    )
                }),
        };
        if let Err(e) = result {
            // The stamp did not move, so the next poll evaluates again.
            log::error!(target: EVALUATION, "spec={spec} cannot record evaluation {eval}: {e}");
        }
        self.start_building(index);
    }
}

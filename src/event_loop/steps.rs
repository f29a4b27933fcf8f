//! The subprocess steps of a cycle: fetch, compile, evaluate.

use super::*;

impl EventLoop {
    pub(super) fn start_fetch(&mut self, index: usize, now: Instant) {
        let spec = &self.specs[index].spec;
        let target = fetch::Target::of(spec);
        let dir = self.checkout_dir(index);
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                log::error!("cannot find the cuirass executable: {e}");
                return;
            }
        };
        let mut cmd = Command::new(exe);
        cmd.args(fetch::child_args(&spec.url, &dir, &target));
        let work = &mut self.work[index];
        work.fetch_stdout.clear();
        work.commit = None;
        self.specs[index].set_state(State::Fetching);
        if !self.spawn(index, Step::Fetch, cmd, self.config.fetch_timeout_secs) {
            self.end_cycle(index, now);
        }
    }

    pub(super) fn child_stdout(&mut self, index: usize) {
        let Some((step, proc, _)) = self.work[index].proc.as_mut() else {
            return;
        };
        let step = *step;
        let mut lines: Vec<Vec<u8>> = Vec::new();
        proc.read_stdout(self.poll.registry(), |l| lines.push(l.to_vec()));
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
                    log::info!("{label}: {}", String::from_utf8_lossy(&l));
                }
            }
            Step::Evaluate => {
                for l in lines {
                    self.evaluator_line(index, &l);
                }
            }
        }
    }

    /// One line of evaluator output; the first bad one fails the evaluation.
    pub(super) fn evaluator_line(&mut self, index: usize, line: &[u8]) {
        let name = self.specs[index].spec.name.clone();
        let work = &mut self.work[index];
        if work.eval_error.is_some() || line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = job::parse_line(line).and_then(|l| match l {
            job::Line::Job {
                name: job_name,
                derivation,
            } => {
                let bytes = std::fs::read(&derivation)
                    .map_err(|e| format!("job {job_name}: cannot read {derivation}: {e}"))?;
                work.jobs
                    .push(job::job_record(&job_name, &derivation, &bytes)?);
                Ok(())
            }
            job::Line::JobError {
                name: job_name,
                message,
            } => {
                log::warn!("spec={name} job {job_name} failed to evaluate: {message}");
                Ok(())
            }
            job::Line::Done(n) => {
                work.done_line = Some(n);
                Ok(())
            }
        });
        if let Err(e) = parsed {
            log::error!("spec={name} bad evaluator output: {e}");
            work.eval_error = Some(format!("bad evaluator output: {e}"));
            if let Some((_, proc, _)) = work.proc.as_mut() {
                proc.kill();
            }
        }
    }

    /// Notices a finished or timed-out child and moves its spec on.
    pub(super) fn reap_child(&mut self, index: usize, now: Instant) {
        let Some((step, proc, deadline)) = self.work[index].proc.as_mut() else {
            return;
        };
        let step = *step;
        let timed_out = now >= *deadline && proc.poll_exit().is_none();
        if timed_out {
            log::error!(
                "spec={} {step:?} timed out; killing it",
                self.specs[index].spec.name
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
        // Read what is left before deciding: the last lines may be there.
        if !proc.pipes_closed() {
            if timed_out {
                // A killed child's pipes close promptly; wait for EOF.
                return;
            }
            return;
        }
        let Some(exit) = proc.poll_exit() else {
            return;
        };
        let (_, proc, _) = self.work[index].proc.take().unwrap();
        let ok = exit.success();
        match step {
            Step::Fetch => self.fetch_done(index, ok, &proc, now),
            Step::Compile => {
                if ok {
                    self.start_evaluation(index, now);
                } else {
                    log::error!(
                        "spec={} compilation failed: {}",
                        self.specs[index].spec.name,
                        proc.failure_reason()
                    );
                    self.end_cycle(index, now);
                }
            }
            Step::Evaluate => self.evaluation_done(index, ok, &proc, now),
        }
    }

    pub(super) fn fetch_done(&mut self, index: usize, ok: bool, proc: &Proc, now: Instant) {
        let name = self.specs[index].spec.name.clone();
        let commit = if ok {
            fetch::parse_child_output(&self.work[index].fetch_stdout)
        } else {
            None
        };
        let Some(commit) = commit else {
            log::error!("spec={name} fetch failed: {}", proc.failure_reason());
            self.end_cycle(index, now);
            return;
        };
        let stamp = match self.db.stamp(&name) {
            Ok(s) => s,
            Err(e) => {
                log::error!("spec={name} {e}");
                self.end_cycle(index, now);
                return;
            }
        };
        if stamp.as_deref() == Some(commit.as_str()) {
            log::info!("spec={name} commit {commit} already evaluated");
            self.start_building(index);
            return;
        }
        log::info!("spec={name} new commit {commit}");
        self.work[index].commit = Some(commit);
        if self.specs[index].spec.no_compile {
            self.start_evaluation(index, now);
        } else {
            self.start_compile(index, now);
        }
    }

    pub(super) fn start_compile(&mut self, index: usize, now: Instant) {
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
            self.end_cycle(index, now);
        }
    }

    pub(super) fn start_evaluation(&mut self, index: usize, now: Instant) {
        let spec = &self.specs[index].spec;
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
        let work = &mut self.work[index];
        work.jobs.clear();
        work.done_line = None;
        work.eval_error = None;
        self.specs[index].set_state(State::Evaluating);
        if !self.spawn(
            index,
            Step::Evaluate,
            cmd,
            self.config.evaluation_timeout_secs,
        ) {
            let commit = self.work[index].commit.clone().unwrap_or_default();
            let name = self.specs[index].spec.name.clone();
            let _ = self.db.record_failed_evaluation(
                &name,
                &commit,
                "cannot start the evaluator",
                unix_now(),
            );
            self.end_cycle(index, now);
        }
    }

    pub(super) fn evaluation_done(&mut self, index: usize, ok: bool, proc: &Proc, now: Instant) {
        let name = self.specs[index].spec.name.clone();
        let work = &mut self.work[index];
        let commit = work.commit.clone().unwrap_or_default();
        let error = work.eval_error.take().or_else(|| {
            if !ok {
                Some(format!("evaluator {}", proc.failure_reason()))
            } else if work.done_line.is_none() {
                Some("evaluator output ended without (done N)".into())
            } else {
                None
            }
        });
        let jobs = std::mem::take(&mut work.jobs);
        let result = match &error {
            Some(e) => {
                log::error!("spec={name} evaluation of {commit} failed: {e}");
                self.db
                    .record_failed_evaluation(&name, &commit, e, unix_now())
            }
            None => self
                .db
                .register_evaluation(&name, &commit, &jobs, unix_now()),
        };
        match result {
            Ok(eval) if error.is_none() => {
                log::info!(
                    "spec={name} evaluation {eval} of {commit}: {} jobs registered",
                    jobs.len()
                )
            }
            Ok(_) => {}
            Err(e) => {
                // The commit stays unstamped, so the next poll tries again.
                log::error!("spec={name} cannot record the evaluation: {e}");
                self.end_cycle(index, now);
                return;
            }
        }
        self.start_building(index);
    }
}

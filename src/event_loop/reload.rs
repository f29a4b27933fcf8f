//! SIGHUP: the specification file is read again in a child process
//! (`cuirass internal-read-spec`), because a file of Guile code may take
//! any time, or loop forever; the child is killed after the evaluation
//! timeout, and the specifications in use stay as they are.

use super::*;

pub(super) struct Reload {
    proc: Proc,
    file: PathBuf,
    deadline: Instant,
    stdout: Vec<u8>,
}

impl Reload {
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(super) fn kill(mut self) {
        self.proc.kill();
        let _ = self.proc.child.wait();
    }
}

impl EventLoop {
    pub(super) fn start_reload(&mut self) {
        let Some(file) = self.config.specifications.clone() else {
            log::info!(target: logging::SPEC, "SIGHUP: no -S file to re-read");
            return;
        };
        if self.reload.is_some() {
            log::info!(target: logging::SPEC, "SIGHUP: {} is being re-read already", file.display());
            return;
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                log::error!(target: logging::SPEC, "SIGHUP: cannot find the cuirass executable: {e}");
                return;
            }
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(crate::spec::SUBCOMMAND)
            .arg(&file)
            .args(&self.config.evaluator);
        match child::spawn(cmd, self.poll.registry(), RELOAD_STDOUT, RELOAD_STDERR) {
            Ok(proc) => {
                log::info!(target: logging::SPEC, "SIGHUP: re-reading {}", file.display());
                let timeout = Duration::from_secs(self.config.evaluation_timeout_secs);
                self.reload = Some(Reload {
                    proc,
                    file,
                    deadline: Instant::now() + timeout,
                    stdout: Vec::new(),
                });
            }
            Err(e) => {
                log::error!(target: logging::SPEC, "SIGHUP: cannot start the reader of {}: {e}", file.display())
            }
        }
    }

    pub(super) fn reload_output(&mut self) {
        let Some(reload) = self.reload.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        let stdout = &mut reload.stdout;
        reload.proc.read_stdout(registry, |line| {
            stdout.extend_from_slice(line);
            stdout.push(b'\n');
        });
        reload
            .proc
            .read_stderr(registry, logging::SPEC, "SIGHUP reader");
    }

    /// Kills a reader past its deadline; takes the result of one that exited.
    pub(super) fn reap_reload(&mut self, now: Instant) {
        let Some(reload) = self.reload.as_mut() else {
            return;
        };
        if reload.proc.wants_read() != (false, false) {
            self.reload_output();
        }
        let Some(reload) = self.reload.as_mut() else {
            return;
        };
        if now >= reload.deadline && !reload.proc.killed && reload.proc.poll_exit().is_none() {
            let secs = self.config.evaluation_timeout_secs;
            log::error!(target: logging::SPEC,
                "SIGHUP: reading {} timed out after {secs} s; killed (keeping the current specifications)",
                reload.file.display()
            );
            reload.proc.kill();
        }
        let Some(exit) = reload.proc.poll_exit() else {
            return;
        };
        if !reload.proc.pipes_closed() && !reload.proc.killed {
            return;
        }
        let reload = self.reload.take().unwrap();
        if reload.proc.killed {
            return;
        }
        let file = reload.file.display().to_string();
        if !exit.success() {
            log::error!(target: logging::SPEC,
                "SIGHUP: {} (keeping the current specifications)",
                reload
                    .proc
                    .stderr_tail
                    .last()
                    .cloned()
                    .unwrap_or_else(|| format!("reading {file} {}", child::describe(exit)))
            );
            return;
        }
        let specs: Vec<crate::spec::Specification> = match serde_json::from_slice(&reload.stdout) {
            Ok(specs) => specs,
            Err(e) => {
                log::error!(target: logging::SPEC, "SIGHUP: the reader of {file} printed no specifications: {e}");
                return;
            }
        };
        if let Err(e) = self.db.add_specifications(&specs) {
            log::error!(target: logging::SPEC, "SIGHUP: {e}");
            return;
        }
        // Deactivated by an operator: stays so until reactivated.
        let inactive = self.db.inactive_specifications().unwrap_or_default();
        for spec in specs {
            if inactive.contains(&spec.name) {
                continue;
            }
            match self.live_slot(&spec.name) {
                Some(i) => {
                    if self.slots[i].cycle.spec != spec {
                        log::info!(
                            target: logging::SPEC,
                            "spec={:?} updated (from its next round; a commit already evaluated is not evaluated again)",
                            spec.name
                        );
                    }
                    self.slots[i].cycle.replace_spec(spec)
                }
                None => {
                    log::info!(target: logging::SPEC, "spec={:?} added", spec.name);
                    self.add_slot(spec, now);
                }
            }
        }
    }
}

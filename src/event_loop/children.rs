//! The children of a cycle's steps: spawning them, reading their pipes,
//! and turning their exits into inputs.

use super::*;
use std::process::Command as Process;

impl EventLoop {
    fn spawn(&mut self, index: usize, step: Step, cmd: Process, now: Instant) {
        let registry = self.poll.registry();
        match child::spawn(
            cmd,
            registry,
            Event::ChildStdout(index).token(),
            Event::ChildStderr(index).token(),
        ) {
            Ok(proc) => {
                self.slots[index].child = Some(Running {
                    step,
                    proc,
                    stdout: String::new(),
                });
            }
            Err(e) => {
                let why = format!("cannot start the {}: {e}", step.label());
                self.feed(index, Input::SpawnFailed(why), now);
            }
        }
    }

    pub(super) fn spawn_fetch(
        &mut self,
        index: usize,
        target: &crate::fetch::Target,
        now: Instant,
    ) {
        let spec = &self.slots[index].cycle.spec;
        let dir = self.config.cache_dir.join(&spec.name);
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                let why = format!("cannot find the cuirass executable: {e}");
                self.feed(index, Input::SpawnFailed(why), now);
                return;
            }
        };
        let mut cmd = Process::new(exe);
        match &spec.record {
            Some(record) => cmd.args(crate::fetch::channels_child_args(&dir, &record.channels)),
            None => cmd.args(crate::fetch::child_args(&spec.url, &dir, target)),
        };
        self.spawn(index, Step::Fetch, cmd, now);
    }

    pub(super) fn spawn_compile(&mut self, index: usize, now: Instant) {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cmd = Process::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "set -e; [ -f configure ] || ./bootstrap; \
                 [ -f Makefile ] || ./configure --localstatedir=/var; make -j {jobs}"
            ))
            .current_dir(
                self.config
                    .cache_dir
                    .join(&self.slots[index].cycle.spec.name),
            );
        self.spawn(index, Step::Compile, cmd, now);
    }

    /// With `time_machine` (a channels file's text), the Guix of those
    /// channels runs the evaluator: `guix time-machine -C FILE -- repl --`.
    pub(super) fn spawn_evaluator(
        &mut self,
        index: usize,
        arguments: &str,
        time_machine: Option<&str>,
        now: Instant,
    ) {
        let name = self.slots[index].cycle.spec.name.clone();
        let checkout = self.config.cache_dir.join(&name);
        let mut cmd = match time_machine {
            None => {
                let mut cmd = Process::new(&self.config.evaluator[0]);
                cmd.args(&self.config.evaluator[1..]);
                cmd
            }
            Some(channels) => {
                let file = self
                    .config
                    .cache_dir
                    .join(format!(".cuirass/channels-{name}.scm"));
                if let Err(e) = std::fs::write(&file, channels) {
                    let why = format!("cannot write {}: {e}", file.display());
                    self.feed(index, Input::SpawnFailed(why), now);
                    return;
                }
                let mut cmd = Process::new("guix");
                cmd.arg("time-machine")
                    .arg(format!("--channels={}", file.display()))
                    .args(["--", "repl", "--"]);
                cmd
            }
        };
        cmd.arg(&self.evaluator_script)
            .arg(arguments)
            .current_dir(&checkout)
            .env("GUIX_DAEMON_SOCKET", &self.config.daemon_socket);
        self.spawn(index, Step::Evaluate, cmd, now);
        if let Some(child) = self.slots[index].child.as_mut() {
            child.proc.error_prefix = Some(crate::job::EVALUATOR_ERROR_PREFIX);
            child.proc.stdout_cap = crate::job::EVALUATOR_READ_CAP;
        }
    }

    fn label(&self, index: usize) -> String {
        let step = self.slots[index]
            .child
            .as_ref()
            .map_or("builds", |c| c.step.label());
        format!("spec={:?} {step}", self.slots[index].cycle.spec.name)
    }

    /// Whether the last read of slot `index`'s child stdout stopped at
    /// its cap with bytes left.
    pub(super) fn stdout_pending(&self, index: usize) -> bool {
        self.slots[index]
            .child
            .as_ref()
            .is_some_and(|c| c.proc.wants_read().0)
    }

    pub(super) fn child_stdout(&mut self, index: usize) {
        let label = self.label(index);
        let Some(child) = self.slots[index].child.as_mut() else {
            return;
        };
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let too_long = child
            .proc
            .read_stdout(self.poll.registry(), |l| lines.push(l.to_vec()));
        match child.step {
            Step::Fetch => {
                for l in lines {
                    child.stdout.push_str(&String::from_utf8_lossy(&l));
                    child.stdout.push('\n');
                }
            }
            Step::Compile => {
                for l in lines {
                    log::info!(target: logging::COMPILE, "{label}: {}", String::from_utf8_lossy(&l));
                }
                if let Some(n) = too_long {
                    log::warn!(target: logging::COMPILE, "{label}: an output line over {n} bytes was dropped");
                }
            }
            Step::Evaluate => {
                let now = Instant::now();
                let more = child.proc.wants_read().0;
                // An empty read says the pipe is empty too: jobs waiting
                // for a batch go now.
                if !lines.is_empty() || !more {
                    self.feed(index, Input::EvaluatorLines { lines, more }, now);
                }
                if let Some(n) = too_long {
                    self.feed(index, Input::EvaluatorLineTooLong(n), now);
                }
            }
        }
    }

    pub(super) fn child_stderr(&mut self, index: usize) {
        let label = self.label(index);
        if let Some(child) = self.slots[index].child.as_mut() {
            let target = child.step.target();
            child.proc.read_stderr(self.poll.registry(), target, &label);
        }
    }

    /// Reads again from pipes whose last read stopped at the cap.
    pub(super) fn read_leftovers(&mut self, index: usize) {
        let Some(child) = self.slots[index].child.as_ref() else {
            return;
        };
        let (stdout, stderr) = child.proc.wants_read();
        if stdout {
            self.child_stdout(index);
        }
        if stderr {
            self.child_stderr(index);
        }
    }

    /// Notices a finished child and tells its cycle.
    pub(super) fn reap_child(&mut self, index: usize, now: Instant) {
        let Some(child) = self.slots[index].child.as_mut() else {
            return;
        };
        let Some(exit) = child.proc.poll_exit() else {
            return;
        };
        // Read what is left before deciding: the last lines may be there.
        // Once killed an exit is enough, since a grandchild that left the
        // process group could hold the pipes open forever.
        if !child.proc.pipes_closed() && !child.proc.killed {
            return;
        }
        let child = self.slots[index].child.take().unwrap();
        let ok = exit.success();
        // An exit that arrives after the cycle left the step (stopped)
        // is not news to it.
        if step_of(self.slots[index].cycle.state()) != Some(child.step) {
            return;
        }
        let input = match child.step {
            Step::Fetch => Input::FetchExited {
                ok,
                stdout: child.stdout,
                reason: child.proc.failure_reason(),
            },
            Step::Compile => Input::CompileExited {
                ok,
                reason: child.proc.failure_reason(),
            },
            Step::Evaluate => Input::EvaluatorExited {
                ok,
                reason: child.proc.failure_reason(),
                error_line: child.proc.error_line.clone(),
            },
        };
        self.feed(index, input, now);
    }
}

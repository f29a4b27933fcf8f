//! Subprocesses whose standard output and error the event loop watches:
//! the fetch child, the compile step, the evaluator and notification
//! commands.  Each runs in its
//! own process group so a timeout kills whatever it spawned as well.

use mio::unix::pipe::Receiver;
use mio::{Interest, Registry, Token};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

/// Bytes one turn of the loop reads from one pipe at most, so a chatty
/// child cannot starve everything else.
const READ_CAP: usize = 256 * 1024;

/// stderr lines longer than this are cut when logged.
const MAX_LOG_LINE: usize = 4096;

/// The longest stdout line kept.  The evaluator prints one short
/// S-expression per job, so a longer line is broken output; without a cap a
/// child printing megabytes without a newline would grow our buffer
/// without bound.
pub const MAX_STDOUT_LINE: usize = 1 << 20;

pub struct Proc {
    pub child: Child,
    pub stdout: Option<Receiver>,
    pub stderr: Option<Receiver>,
    stdout_buf: Vec<u8>,
    /// Dropping the rest of an over-long stdout line up to its newline.
    stdout_skipping: bool,
    stderr_buf: Vec<u8>,
    /// The last few stderr lines, kept to explain a failure.
    pub stderr_tail: Vec<String>,
    pub status: Option<ExitStatus>,
    /// A read stopped at READ_CAP with bytes left: mio is edge-triggered,
    /// so no new event will come for them and the loop must read again.
    stdout_more: bool,
    stderr_more: bool,
    /// Set once killed: the exit is then enough, pipes or not.
    pub killed: bool,
    /// Lines starting with this prefix are the child's own error report:
    /// the first is kept whole in `error_line`, however much follows it (a
    /// backtrace outgrows `stderr_tail`).
    pub error_prefix: Option<&'static str>,
    pub error_line: Option<String>,
    /// Bytes of stdout one turn reads at most: [`READ_CAP`] unless set
    /// (the evaluator's is smaller, see `job::EVALUATOR_READ_CAP`).
    pub stdout_cap: usize,
}

/// Makes the child killed when cuirass dies (`PR_SET_PDEATHSIG`), so that
/// a `kill -9` of cuirass leaves no evaluator or reader running on.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe, and the closure touches no
    // memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn spawn(cmd: Command, registry: &Registry, out: Token, err: Token) -> io::Result<Proc> {
    spawn_with_stdin(cmd, Stdio::null(), registry, out, err)
}

/// [`spawn`] with `stdin` as the child's standard input (a notification
/// command reads its event there).
pub fn spawn_with_stdin(
    mut cmd: Command,
    stdin: Stdio,
    registry: &Registry,
    out: Token,
    err: Token,
) -> io::Result<Proc> {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    let mut stdout = Receiver::from(child.stdout.take().expect("piped stdout"));
    let mut stderr = Receiver::from(child.stderr.take().expect("piped stderr"));
    stdout.set_nonblocking(true)?;
    stderr.set_nonblocking(true)?;
    registry.register(&mut stdout, out, Interest::READABLE)?;
    registry.register(&mut stderr, err, Interest::READABLE)?;
    Ok(Proc {
        child,
        stdout: Some(stdout),
        stderr: Some(stderr),
        stdout_buf: Vec::new(),
        stdout_skipping: false,
        stderr_buf: Vec::new(),
        stderr_tail: Vec::new(),
        status: None,
        stdout_more: false,
        stdout_cap: READ_CAP,
        stderr_more: false,
        killed: false,
        error_prefix: None,
        error_line: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Everything available was read.
    Empty,
    /// READ_CAP bytes were read and more may be waiting.
    Capped,
    Closed,
}

/// Reads what is available, at most READ_CAP bytes.
fn drain(pipe: &mut Receiver, buf: &mut Vec<u8>, cap: usize) -> Drained {
    let mut chunk = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return Drained::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                total += n;
                if total >= cap {
                    return Drained::Capped;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Drained::Closed,
        }
    }
}

fn take_lines(buf: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    let mut start = 0;
    while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
        each(&buf[start..start + i]);
        start += i + 1;
    }
    buf.drain(..start);
}

/// Hands out the complete lines of `buf` and keeps a partial one, unless
/// it is over `cap`: then it is dropped, and so is the rest of that line as
/// it arrives (`skipping`).  Returns whether a line went over the cap.
fn split_capped(
    buf: &mut Vec<u8>,
    skipping: &mut bool,
    cap: usize,
    mut each: impl FnMut(&[u8]),
) -> bool {
    let mut too_long = false;
    if *skipping {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                buf.drain(..=i);
                *skipping = false;
            }
            None => {
                buf.clear();
                return false;
            }
        }
    }
    let mut start = 0;
    while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
        if i > cap {
            too_long = true;
        } else {
            each(&buf[start..start + i]);
        }
        start += i + 1;
    }
    buf.drain(..start);
    if buf.len() > cap {
        buf.clear();
        *skipping = true;
        too_long = true;
    }
    too_long
}

impl Proc {
    /// Reads stdout; complete lines are handed to `line`.  A partial line
    /// stays buffered until its end arrives or the pipe closes.  A line
    /// longer than [`MAX_STDOUT_LINE`] is dropped and reported by returning
    /// `Some(MAX_STDOUT_LINE)`, once per such line.
    pub fn read_stdout(
        &mut self,
        registry: &Registry,
        mut line: impl FnMut(&[u8]),
    ) -> Option<usize> {
        let pipe = self.stdout.as_mut()?;
        let drained = drain(pipe, &mut self.stdout_buf, self.stdout_cap);
        self.stdout_more = drained == Drained::Capped;
        let open = drained != Drained::Closed;
        let too_long = split_capped(
            &mut self.stdout_buf,
            &mut self.stdout_skipping,
            MAX_STDOUT_LINE,
            &mut line,
        );
        if !open {
            if !self.stdout_buf.is_empty() && !self.stdout_skipping {
                line(&std::mem::take(&mut self.stdout_buf));
            }
            let mut pipe = self.stdout.take().unwrap();
            let _ = registry.deregister(&mut pipe);
        }
        too_long.then_some(MAX_STDOUT_LINE)
    }

    /// Logs stderr line by line under `target`, with `label` (the spec
    /// name and step).
    pub fn read_stderr(&mut self, registry: &Registry, target: &str, label: &str) {
        let Some(pipe) = self.stderr.as_mut() else {
            return;
        };
        let drained = drain(pipe, &mut self.stderr_buf, READ_CAP);
        self.stderr_more = drained == Drained::Capped;
        let open = drained != Drained::Closed;
        if !open && !self.stderr_buf.is_empty() && self.stderr_buf.last() != Some(&b'\n') {
            self.stderr_buf.push(b'\n');
        }
        let tail = &mut self.stderr_tail;
        let (prefix, error_line) = (self.error_prefix, &mut self.error_line);
        take_lines(&mut self.stderr_buf, |l| {
            let text = String::from_utf8_lossy(&l[..l.len().min(MAX_LOG_LINE)]);
            log::info!(target: target, "{label}: {text}");
            if error_line.is_none() && prefix.is_some_and(|p| text.starts_with(p)) {
                *error_line = Some(text.to_string());
            }
            if tail.len() == 20 {
                tail.remove(0);
            }
            tail.push(text.into_owned());
        });
        // A child printing megabytes without a newline must not grow us.
        if self.stderr_buf.len() > MAX_LOG_LINE {
            self.stderr_buf.clear();
        }
        if !open {
            let mut pipe = self.stderr.take().unwrap();
            let _ = registry.deregister(&mut pipe);
        }
    }

    /// Whether a pipe has bytes left over from a capped read.
    pub fn wants_read(&self) -> (bool, bool) {
        (self.stdout_more, self.stderr_more)
    }

    pub fn pipes_closed(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Non-blocking check for the child's exit.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Kills the whole process group (timeouts, shutdown).
    pub fn kill(&mut self) {
        self.killed = true;
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; a stale pid group at worst gets ESRCH.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
    }

    pub fn failure_reason(&self) -> String {
        let status = match self.status {
            Some(s) => describe(s),
            None => "did not exit".into(),
        };
        match self.stderr_tail.last() {
            Some(last) => format!("{status}: {last}"),
            None => status,
        }
    }
}

pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_partial_lines_kept() {
        let mut buf = b"a\nbc\npartial".to_vec();
        let mut seen = Vec::new();
        take_lines(&mut buf, |l| seen.push(l.to_vec()));
        assert_eq!(seen, vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn stdout_lines_over_the_cap_are_dropped_and_reported() {
        let (mut buf, mut skipping) = (b"ok\n0123456789".to_vec(), false);
        let mut seen = Vec::new();
        assert!(split_capped(&mut buf, &mut skipping, 4, |l| seen.push(l.to_vec())));
        assert_eq!(
            (seen.clone(), buf.len(), skipping),
            (vec![b"ok".to_vec()], 0, true)
        );
        // The rest of the long line goes too; the next line is kept.
        buf.extend_from_slice(b"more\nnext\n");
        assert!(!split_capped(&mut buf, &mut skipping, 4, |l| seen.push(l.to_vec())));
        assert_eq!(seen.last().unwrap(), b"next");
        // A complete line over the cap, arriving at once.
        buf.extend_from_slice(b"0123456789\nx\n");
        assert!(split_capped(&mut buf, &mut skipping, 4, |l| seen.push(l.to_vec())));
        assert_eq!(seen.last().unwrap(), b"x");
    }

    #[test]
    fn a_turn_reads_at_most_the_cap_and_says_more_is_left() {
        let poll = mio::Poll::new().unwrap();
        let mut cmd = Command::new("sh");
        // 2,000 lines of 99 bytes and a newline: 200,000 bytes.
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 2000 ]; do printf '%099d\\n' $i; i=$((i+1)); done",
        ]);
        let mut proc = spawn(cmd, poll.registry(), Token(1), Token(2)).unwrap();
        proc.stdout_cap = crate::job::EVALUATOR_READ_CAP;
        let (mut lines, mut reads) = (0, 0);
        while proc.stdout.is_some() {
            let mut now = 0;
            proc.read_stdout(poll.registry(), |l| {
                assert_eq!(l.len(), 99);
                now += 1;
            });
            // A turn's lines fit in the cap (plus one 16 KiB read).
            assert!(
                now * 100 <= crate::job::EVALUATOR_READ_CAP + 16 * 1024 + 100,
                "{now}"
            );
            if now > 0 {
                reads += 1;
            }
            lines += now;
            if !proc.wants_read().0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        assert_eq!(lines, 2000);
        assert!(
            reads >= 200_000 / (crate::job::EVALUATOR_READ_CAP + 16 * 1024),
            "{reads}"
        );
        proc.child.wait().unwrap();
    }
}

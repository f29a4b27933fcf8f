//! Build-trace lines (`@ build-started …`) and the splitter that cuts the
//! daemon's log stream into lines (pure: bytes in, events out).
//!
//! With `print-build-trace`, guix-daemon mixes these lines into its log
//! text. Formats as guix-daemon 1.2.0 prints them (fields are separated by
//! exactly one space; the log file of `build-started` may be empty):
//!
//! ```text
//! @ build-started DRV - SYSTEM LOGFILE PID
//! @ build-succeeded DRV -
//! @ build-failed DRV - STATUS MESSAGE...      (or `DRV - timeout`)
//! @ build-remote DRV HOST
//! @ substituter-started ITEM SUBSTITUTER
//! @ substituter-succeeded ITEM
//! @ substituter-failed ITEM STATUS MESSAGE... (or `ITEM timeout`)
//! @ build-log PID LENGTH                      (LENGTH raw bytes follow)
//! cannot build derivation `DRV': N dependencies couldn't be built
//! building of `DRV' timed out after N seconds[ of silence]
//! ```
//!
//! A build killed for its `build-timeout` or `build-max-silent-time` is
//! first announced by the `building of … timed out` message, then
//! reported as `@ build-failed DRV - timeout`; guix-daemon 1.5.0 prints
//! the first as `timed out after %2% seconds` for the timeout
//! (fixtures/trace/timeout-*.txt hold both daemons' lines).
//!
//! Two quirks seen with the real daemon shape the splitter. A builder's
//! last line need not end in a newline, and the daemon then writes its next
//! trace line straight after it (`no newline at end@ build-succeeded …`),
//! so the splitter cuts a line before an embedded, well-formed trace line.
//! With `multiplexed-build-output`, builder output arrives as `@ build-log`
//! frames whose payload is counted, not line-based, so the splitter hands
//! it out as [`Piece::Raw`] without looking for newlines in it.

use crate::drv::store_path_name;

/// One build-trace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    BuildStarted {
        drv: String,
        system: String,
        /// The build log's file name; empty when the daemon keeps no log.
        log: String,
        /// The builder's process id (absent in older daemons).
        pid: Option<u64>,
    },
    BuildSucceeded {
        drv: String,
    },
    /// `reason` is everything after `DRV - `: a status number and the
    /// daemon's message, or `timeout`.
    BuildFailed {
        drv: String,
        reason: String,
    },
    BuildRemote {
        drv: String,
        host: String,
    },
    SubstituterStarted {
        item: String,
    },
    SubstituterSucceeded {
        item: String,
    },
    /// `reason` is everything after the item, as for [`Event::BuildFailed`].
    SubstituterFailed {
        item: String,
        reason: String,
    },
    /// The daemon gave up on `drv` because `count` of its inputs failed; it
    /// never starts such a derivation, so this is its only event.
    DependenciesFailed {
        drv: String,
        count: u64,
    },
    /// The daemon killed `drv`'s builder for a limit; `message` is what it
    /// said, from `timed out after` on.  A `build-failed … timeout`
    /// follows.
    TimedOut {
        drv: String,
        message: String,
    },
    /// `len` raw bytes of output from builder `pid` follow this line.
    BuildLog {
        pid: u64,
        len: u64,
    },
}

/// What one line of the log stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Event(Event),
    /// The line looks like a trace line but is malformed; the string says
    /// why. Worth logging, never worth stopping for.
    Bogus(String),
    /// Ordinary log text.
    Text,
}

const DEPS_PREFIX: &[u8] = b"cannot build derivation `";
const DEPS_SUFFIX: &str = " dependencies couldn't be built";
const TIMEOUT_PREFIX: &[u8] = b"building of `";
const TIMEOUT_INFIX: &str = "' timed out after ";

/// Classifies one line of the log stream. A trailing `\n` or `\r\n` is
/// ignored.
pub fn parse_line(line: &[u8]) -> Line {
    let line = trim_eol(line);
    if let Some(rest) = line.strip_prefix(b"@ ") {
        match std::str::from_utf8(rest) {
            Ok(rest) => parse_trace(rest).map_or_else(Line::Bogus, Line::Event),
            Err(_) => Line::Bogus("trace line is not UTF-8".into()),
        }
    } else if let Some(rest) = line.strip_prefix(DEPS_PREFIX) {
        match std::str::from_utf8(rest) {
            Ok(rest) => parse_deps_failed(rest).map_or_else(Line::Bogus, Line::Event),
            Err(_) => Line::Bogus("dependency failure line is not UTF-8".into()),
        }
    } else if let Some(rest) = line.strip_prefix(TIMEOUT_PREFIX) {
        // Anything else that starts so is builder output, not the daemon.
        std::str::from_utf8(rest)
            .ok()
            .and_then(parse_timed_out)
            .map_or(Line::Text, Line::Event)
    } else {
        Line::Text
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Space-separated fields, cut one at a time so the remainder stays whole.
struct Fields<'a> {
    keyword: &'a str,
    rest: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let (field, more) = match rest.split_once(' ') {
            Some((f, more)) => (f, Some(more)),
            None => (rest, None),
        };
        self.rest = more;
        Some(field)
    }

    /// The next field, which must not be empty.
    fn required(&mut self, what: &str) -> Result<&'a str, String> {
        self.next()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| format!("{}: missing {what}", self.keyword))
    }

    fn remainder(&mut self) -> &'a str {
        self.rest.take().unwrap_or("")
    }
}

fn parse_trace(rest: &str) -> Result<Event, String> {
    let (keyword, args) = match rest.split_once(' ') {
        Some((k, a)) => (k, Some(a)),
        None => (rest, None),
    };
    // Single spaces, not runs: an empty field (the log file) is meaningful.
    let mut f = Fields {
        keyword,
        rest: args,
    };
    let event = match keyword {
        "build-started" => {
            let drv = drv_field(f.required("derivation")?)?;
            f.required("`-`")?;
            let system = f.required("system")?.to_owned();
            let log = f.next().unwrap_or("").to_owned();
            let pid = match f.next() {
                None | Some("") => None,
                Some(p) => Some(number(keyword, "pid", p)?),
            };
            Event::BuildStarted {
                drv,
                system,
                log,
                pid,
            }
        }
        "build-succeeded" => Event::BuildSucceeded {
            drv: drv_field(f.required("derivation")?)?,
        },
        "build-failed" => {
            let drv = drv_field(f.required("derivation")?)?;
            f.required("`-`")?;
            let reason = f.remainder().to_owned();
            Event::BuildFailed { drv, reason }
        }
        "build-remote" => Event::BuildRemote {
            drv: drv_field(f.required("derivation")?)?,
            host: f.required("host")?.to_owned(),
        },
        "substituter-started" => Event::SubstituterStarted {
            item: item_field(f.required("item")?)?,
        },
        "substituter-succeeded" => Event::SubstituterSucceeded {
            item: item_field(f.required("item")?)?,
        },
        "substituter-failed" => {
            let item = item_field(f.required("item")?)?;
            let reason = f.remainder().to_owned();
            Event::SubstituterFailed { item, reason }
        }
        "build-log" => {
            let pid = number(keyword, "pid", f.required("pid")?)?;
            let len = number(keyword, "length", f.required("length")?)?;
            if f.next().is_some() {
                return Err("build-log: extra fields".into());
            }
            Event::BuildLog { pid, len }
        }
        _ => return Err(format!("unknown trace keyword `{}`", truncate(keyword))),
    };
    Ok(event)
}

fn parse_deps_failed(rest: &str) -> Result<Event, String> {
    let bad = || format!("unrecognised dependency failure: `{}`", truncate(rest));
    let (drv, tail) = rest.split_once("': ").ok_or_else(bad)?;
    let count = tail.strip_suffix(DEPS_SUFFIX).ok_or_else(bad)?;
    Ok(Event::DependenciesFailed {
        drv: drv_field(drv)?,
        count: number("dependency failure", "count", count)?,
    })
}

fn parse_timed_out(rest: &str) -> Option<Event> {
    let (drv, after) = rest.split_once(TIMEOUT_INFIX)?;
    Some(Event::TimedOut {
        drv: drv_field(drv).ok()?,
        message: format!("timed out after {after}"),
    })
}

fn drv_field(s: &str) -> Result<String, String> {
    if is_store_drv(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("not a store derivation: `{}`", truncate(s)))
    }
}

fn item_field(s: &str) -> Result<String, String> {
    if store_path_name(s).is_some() {
        Ok(s.to_owned())
    } else {
        Err(format!("not a store path: `{}`", truncate(s)))
    }
}

fn number(keyword: &str, what: &str, s: &str) -> Result<u64, String> {
    // `parse` alone would accept a leading `+`.
    match s.parse() {
        Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{keyword}: bad {what} `{}`", truncate(s))),
    }
}

/// Keeps error messages short when a line is huge.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `path` is `/gnu/store/<32 base-32 chars>-<name>.drv` with a name
/// the daemon would accept.
pub fn is_store_drv(path: &str) -> bool {
    store_path_name(path)
        .and_then(|name| name.strip_suffix(".drv"))
        .is_some_and(|name| !name.is_empty())
}

/// Where, inside a line that is not itself a trace line, a well-formed trace
/// line starts (the daemon glues one onto output lacking a final newline).
fn glued_trace_start(line: &[u8]) -> Option<usize> {
    if line.starts_with(b"@ ") || line.starts_with(DEPS_PREFIX) {
        return None;
    }
    (1..line.len()).find(|&i| {
        let tail = &line[i..];
        (tail.starts_with(b"@ ") || tail.starts_with(DEPS_PREFIX))
            && matches!(parse_line(tail), Line::Event(_))
    })
}

/// The default cap on one line: longer lines are cut.
pub const MAX_LINE: usize = 64 * 1024;

/// A piece of the log stream, borrowed from the splitter until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A line without its `\n` (and `\r`). `truncated` means the line was
    /// longer than the cap; the rest of it was dropped.
    Line { line: &'a [u8], truncated: bool },
    /// Part of the payload of an `@ build-log` frame from builder `pid`; one
    /// frame may come out in several pieces.
    Raw { pid: u64, bytes: &'a [u8] },
}

/// Cuts the log stream into [`Piece`]s as bytes arrive in arbitrary chunks.
///
/// Memory stays bounded: what is kept between calls is at most one partial
/// line (up to the cap) plus the last chunk fed, provided the caller drains
/// [`LineSplitter::next_piece`] after each [`LineSplitter::feed`].
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    max_line: usize,
    follow_frames: bool,
    /// Bytes of the current `@ build-log` payload not yet handed out.
    raw_left: u64,
    raw_pid: u64,
    /// Dropping the tail of an over-long line up to its newline.
    skipping: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    /// A splitter that follows `@ build-log` frames, for a daemon asked for
    /// `multiplexed-build-output`.
    pub fn new() -> Self {
        Self::with_options(MAX_LINE, true)
    }

    /// `follow_frames: false` suits a daemon without multiplexed output,
    /// where a builder printing `@ build-log` must not make the splitter
    /// swallow the bytes that follow.
    pub fn with_options(max_line: usize, follow_frames: bool) -> Self {
        LineSplitter {
            buf: Vec::new(),
            start: 0,
            max_line: max_line.max(1),
            follow_frames,
            raw_left: 0,
            raw_pid: 0,
            skipping: false,
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Reuse the buffer: move the unconsumed tail (usually a short
            // partial line) to the front instead of growing.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete piece, or `None` until more bytes are fed.
    pub fn next_piece(&mut self) -> Option<Piece<'_>> {
        loop {
            let avail = self.buf.len() - self.start;
            if self.raw_left > 0 {
                if avail == 0 {
                    return None;
                }
                let n = avail.min(usize::try_from(self.raw_left).unwrap_or(usize::MAX));
                let s = self.start;
                self.start += n;
                self.raw_left -= n as u64;
                return Some(Piece::Raw {
                    pid: self.raw_pid,
                    bytes: &self.buf[s..s + n],
                });
            }
            let rest = &self.buf[self.start..];
            let newline = rest.iter().position(|&b| b == b'\n');
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.start += i + 1;
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.start = self.buf.len();
                        return None;
                    }
                }
            }
            let Some(i) = newline.filter(|&i| i <= self.max_line) else {
                if rest.len() <= self.max_line {
                    return None;
                }
                // Over-long: hand out the first `max_line` bytes now and
                // drop the rest of the line as it arrives.
                let s = self.start;
                self.start += self.max_line;
                self.skipping = true;
                let line = &self.buf[s..s + self.max_line];
                return Some(Piece::Line {
                    line,
                    truncated: true,
                });
            };
            let s = self.start;
            let line = trim_eol(&rest[..i]);
            if let Some(g) = glued_trace_start(line) {
                // Leave the trace part for the next call.
                self.start = s + g;
                return Some(Piece::Line {
                    line: &self.buf[s..s + g],
                    truncated: false,
                });
            }
            let len = line.len();
            self.start = s + i + 1;
            if self.follow_frames
                && line.starts_with(b"@ build-log ")
                && let Line::Event(Event::BuildLog { pid, len }) = parse_line(line)
            {
                self.raw_pid = pid;
                self.raw_left = len;
            }
            return Some(Piece::Line {
                line: &self.buf[s..s + len],
                truncated: false,
            });
        }
    }

    /// Marks the end of the stream: a final line that lacks its newline
    /// becomes complete, so keep calling [`LineSplitter::next_piece`] after
    /// this. A frame cut short simply ends.
    pub fn finish(&mut self) {
        if self.buf.len() > self.start {
            if self.raw_left == 0 && !self.skipping {
                self.buf.push(b'\n');
            }
        } else {
            self.raw_left = 0;
            self.skipping = false;
        }
    }
}

#[cfg(test)]
mod tests;

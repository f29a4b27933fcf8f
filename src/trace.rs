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
//! ```
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
mod tests {
    use super::*;

    /// Captured from `guix repl` with print-build-trace and keep-going (see
    /// fixtures/trace/README).
    const PLAIN: &[u8] = include_bytes!("../fixtures/trace/plain.txt");
    /// The same, with multiplexed-build-output and extended build traces.
    const MUX: &[u8] = include_bytes!("../fixtures/trace/multiplexed.txt");

    /// Parses `line` and compares the outcome's debug form with `expect`.
    fn check(line: &str, expect: &str) {
        assert_eq!(
            format!("{:?}", parse_line(line.as_bytes())),
            expect,
            "line: {line:?}"
        );
    }

    /// An owned form of [`Piece`], so runs can be compared.
    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Line(Vec<u8>, bool),
        Raw(u64, Vec<u8>),
    }

    /// Splits `stream` fed in chunks of `chunk` bytes, merging adjacent raw
    /// pieces of a frame (their boundaries depend on the chunking).
    fn split(stream: &[u8], chunk: usize, sp: &mut LineSplitter) -> Vec<Owned> {
        let mut out = Vec::new();
        let drain = |sp: &mut LineSplitter, out: &mut Vec<Owned>| {
            while let Some(p) = sp.next_piece() {
                match (p, out.last_mut()) {
                    (Piece::Raw { pid, bytes }, Some(Owned::Raw(last, acc))) if *last == pid => {
                        acc.extend_from_slice(bytes)
                    }
                    (Piece::Raw { pid, bytes }, _) => out.push(Owned::Raw(pid, bytes.to_vec())),
                    (Piece::Line { line, truncated }, _) => {
                        out.push(Owned::Line(line.to_vec(), truncated))
                    }
                }
            }
        };
        for c in stream.chunks(chunk) {
            sp.feed(c);
            drain(sp, &mut out);
        }
        sp.finish();
        drain(sp, &mut out);
        out
    }

    fn events(pieces: &[Owned]) -> Vec<Line> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Owned::Line(l, _) => Some(parse_line(l)),
                Owned::Raw(..) => None,
            })
            .filter(|l| *l != Line::Text)
            .collect()
    }

    fn drv(name: &str) -> String {
        format!("/gnu/store/{name}.drv")
    }

    #[test]
    fn plain_fixture() {
        let pieces = split(
            PLAIN,
            PLAIN.len(),
            &mut LineSplitter::with_options(MAX_LINE, false),
        );
        let fail = drv("6p75gwvx6wrd4mjp78w0cs3da3dm0ljy-fail-plain-1795608623");
        let ok = drv("kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok-plain-1795608623");
        let dep2 = drv("8y8ksb65pgviw886pmi7xfk0l5pam4kh-dep2-on-ok-plain-1795608623");
        let started = |d: &str, log: &str, pid| {
            Line::Event(Event::BuildStarted {
                drv: d.to_owned(),
                system: "x86_64-linux".into(),
                log: format!("/var/log/guix/drvs/{log}.drv.bz2"),
                pid: Some(pid),
            })
        };
        let expect = vec![
            started(
                &fail,
                "6p//75gwvx6wrd4mjp78w0cs3da3dm0ljy-fail-plain-1795608623",
                6272,
            ),
            Line::Event(Event::BuildFailed {
                drv: fail.clone(),
                reason: format!("1 builder for `{fail}' failed with exit code 1"),
            }),
            Line::Event(Event::DependenciesFailed {
                drv: drv("pzv6fm27agngnj6cr230pd96r242a1sm-dep-on-fail-plain-1795608623"),
                count: 1,
            }),
            started(
                &ok,
                "kf//c47jkdwz4zds6i6fg9k2bpgfjymznq-ok-plain-1795608623",
                6273,
            ),
            Line::Event(Event::BuildSucceeded { drv: ok }),
            started(
                &dep2,
                "8y//8ksb65pgviw886pmi7xfk0l5pam4kh-dep2-on-ok-plain-1795608623",
                6274,
            ),
            Line::Event(Event::BuildSucceeded { drv: dep2 }),
        ];
        assert_eq!(events(&pieces), expect);
        // The builder's unterminated last line is cut off the trace line
        // the daemon glued to it.
        assert!(pieces.contains(&Owned::Line(b"no newline at end".to_vec(), false)));
        assert!(pieces.contains(&Owned::Line(b"bad byte \xff here".to_vec(), false)));
        assert!(pieces.iter().all(|p| matches!(p, Owned::Line(_, false))));
    }

    #[test]
    fn multiplexed_fixture() {
        let pieces = split(MUX, MUX.len(), &mut LineSplitter::new());
        let raws: Vec<_> = pieces
            .iter()
            .filter(|p| matches!(p, Owned::Raw(..)))
            .collect();
        assert_eq!(
            raws,
            [
                &Owned::Raw(6365, b"about to fail\nbad byte \xff here\n".to_vec()),
                &Owned::Raw(6366, b"hello from ok\nno newline at end".to_vec()),
                &Owned::Raw(6367, b"after ok\n".to_vec()),
            ]
        );
        let evs = events(&pieces);
        assert_eq!(evs.len(), 10);
        assert_eq!(evs[1], Line::Event(Event::BuildLog { pid: 6365, len: 30 }));
        assert_eq!(
            evs[6],
            Line::Event(Event::BuildSucceeded {
                drv: drv("6yy01wqhii6v7b4mwzyv8r95g6gsr65f-ok-mux-1795608630")
            })
        );
        // The frame, not glue detection, separated the trace line here.
        assert!(!pieces.contains(&Owned::Line(b"no newline at end".to_vec(), false)));
    }

    #[test]
    fn every_chunk_size_gives_the_same_pieces() {
        for (stream, frames) in [(PLAIN, false), (MUX, true)] {
            let whole = split(
                stream,
                stream.len(),
                &mut LineSplitter::with_options(MAX_LINE, frames),
            );
            for chunk in 1..=stream.len() {
                let got = split(
                    stream,
                    chunk,
                    &mut LineSplitter::with_options(MAX_LINE, frames),
                );
                assert_eq!(got, whole, "chunk size {chunk}");
            }
        }
    }

    #[test]
    fn long_lines_are_cut_and_memory_stays_bounded() {
        let mut sp = LineSplitter::with_options(10, true);
        let mut got = Vec::new();
        for _ in 0..1000 {
            sp.feed(b"0123456789abcdef");
            while let Some(p) = sp.next_piece() {
                got.push(format!("{p:?}"));
            }
            assert!(sp.buf.capacity() < 64, "capacity {}", sp.buf.capacity());
        }
        sp.feed(b"tail\nnext\r\n");
        while let Some(p) = sp.next_piece() {
            got.push(format!("{p:?}"));
        }
        assert_eq!(
            got,
            [
                "Line { line: [48, 49, 50, 51, 52, 53, 54, 55, 56, 57], truncated: true }",
                "Line { line: [110, 101, 120, 116], truncated: false }",
            ]
        );
    }

    #[test]
    fn final_line_without_newline_and_crlf() {
        let mut sp = LineSplitter::new();
        let got = split(b"a\r\nb\n\nlast", 3, &mut sp);
        let lines: Vec<_> = got
            .iter()
            .map(|p| match p {
                Owned::Line(l, _) => String::from_utf8_lossy(l).into_owned(),
                Owned::Raw(..) => unreachable!(),
            })
            .collect();
        assert_eq!(lines, ["a", "b", "", "last"]);
    }

    #[test]
    fn frames_with_odd_lengths() {
        // A zero-length frame, a frame cut short by the end of the stream,
        // and a bogus frame header that must not start raw mode.
        let stream = b"@ build-log 1 0\n@ build-log 2 x\nnot raw\n@ build-log 3 100\nshort";
        let got = split(stream, 7, &mut LineSplitter::new());
        assert_eq!(
            got,
            [
                Owned::Line(b"@ build-log 1 0".to_vec(), false),
                Owned::Line(b"@ build-log 2 x".to_vec(), false),
                Owned::Line(b"not raw".to_vec(), false),
                Owned::Line(b"@ build-log 3 100".to_vec(), false),
                Owned::Raw(3, b"short".to_vec()),
            ]
        );
        // Without frame following, the same bytes are all lines.
        let got = split(stream, 7, &mut LineSplitter::with_options(MAX_LINE, false));
        assert_eq!(got.last(), Some(&Owned::Line(b"short".to_vec(), false)));
    }

    #[test]
    fn glued_lines_need_a_real_event() {
        let d = drv("kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok");
        let stream = format!(
            "x@ build-succeeded {d} -\ny@ nonsense\nzcannot build derivation `{d}': 2 dependencies couldn't be built\n"
        );
        let got = split(stream.as_bytes(), 5, &mut LineSplitter::new());
        let lines: Vec<_> = got
            .iter()
            .map(|p| match p {
                Owned::Line(l, _) => String::from_utf8_lossy(l).into_owned(),
                Owned::Raw(..) => unreachable!(),
            })
            .collect();
        assert_eq!(
            lines,
            [
                "x".to_owned(),
                format!("@ build-succeeded {d} -"),
                "y@ nonsense".to_owned(),
                "z".to_owned(),
                format!("cannot build derivation `{d}': 2 dependencies couldn't be built"),
            ]
        );
    }

    /// One case a line: `INPUT => EXPECTED` (the debug form of
    /// [`parse_line`]'s result), with `DRV` and `ITEM` standing for valid
    /// store paths.
    const CASES: &str = r#"
@ build-started DRV - x86_64-linux  42 => Event(BuildStarted { drv: "DRV", system: "x86_64-linux", log: "", pid: Some(42) })
@ build-started DRV - i686-linux /l => Event(BuildStarted { drv: "DRV", system: "i686-linux", log: "/l", pid: None })
@ build-succeeded DRV => Event(BuildSucceeded { drv: "DRV" })
@ build-failed DRV - timeout => Event(BuildFailed { drv: "DRV", reason: "timeout" })
@ build-failed DRV - => Event(BuildFailed { drv: "DRV", reason: "" })
@ build-remote DRV build-machine => Event(BuildRemote { drv: "DRV", host: "build-machine" })
@ substituter-started ITEM substitute => Event(SubstituterStarted { item: "ITEM" })
@ substituter-succeeded ITEM => Event(SubstituterSucceeded { item: "ITEM" })
@ substituter-failed ITEM 1 no  luck => Event(SubstituterFailed { item: "ITEM", reason: "1 no  luck" })
@ build-log 6366 31 => Event(BuildLog { pid: 6366, len: 31 })
cannot build derivation `DRV': 3 dependencies couldn't be built => Event(DependenciesFailed { drv: "DRV", count: 3 })
hello => Text
@build-log 1 2 => Text
builder for `DRV' failed with exit code 1 => Text
@  => Bogus("unknown trace keyword ``")
@ download-progress x => Bogus("unknown trace keyword `download-progress`")
@ build-succeeded => Bogus("build-succeeded: missing derivation")
@ build-succeeded  x => Bogus("build-succeeded: missing derivation")
@ build-succeeded foo.drv - => Bogus("not a store derivation: `foo.drv`")
@ build-succeeded ITEM - => Bogus("not a store derivation: `ITEM`")
@ build-succeeded /gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-.drv - => Bogus("not a store derivation: `/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-.drv`")
@ build-succeeded ITEM/../b.drv - => Bogus("not a store derivation: `ITEM/../b.drv`")
@ build-started DRV - => Bogus("build-started: missing system")
@ build-started DRV - x /l pid => Bogus("build-started: bad pid `pid`")
@ build-failed DRV => Bogus("build-failed: missing `-`")
@ build-remote DRV => Bogus("build-remote: missing host")
@ substituter-succeeded /tmp/x => Bogus("not a store path: `/tmp/x`")
@ build-log 1 => Bogus("build-log: missing length")
@ build-log +1 2 => Bogus("build-log: bad pid `+1`")
@ build-log 1 99999999999999999999 => Bogus("build-log: bad length `99999999999999999999`")
@ build-log 1 2 3 => Bogus("build-log: extra fields")
cannot build derivation `DRV': many dependencies couldn't be built => Bogus("dependency failure: bad count `many`")
cannot build derivation `x => Bogus("unrecognised dependency failure: `x`")
"#;

    #[test]
    fn cases() {
        let item = "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok";
        let expand = |s: &str| {
            s.replace("DRV", &format!("{item}.drv"))
                .replace("ITEM", item)
        };
        for case in CASES.lines().filter(|l| !l.is_empty()) {
            let (input, expect) = case.split_once(" => ").expect("malformed case");
            check(&expand(input), &expand(expect));
        }
        check("", "Text");
        check(
            &expand("@ build-succeeded DRV -\r\n"),
            &expand(r#"Event(BuildSucceeded { drv: "DRV" })"#),
        );
        assert_eq!(
            parse_line(b"@ build-succeeded \xff"),
            Line::Bogus("trace line is not UTF-8".into())
        );
    }

    #[test]
    fn every_prefix_and_garbage_is_handled() {
        for stream in [PLAIN, MUX] {
            for line in stream.split(|&b| b == b'\n') {
                for end in 0..=line.len() {
                    let _ = parse_line(&line[..end]);
                    let _ = parse_line(&line[end..]);
                }
            }
        }
        let mut sp = LineSplitter::with_options(16, true);
        let mut x: u32 = 1;
        let garbage: Vec<u8> = (0..20_000)
            .map(|_| {
                // xorshift: deterministic noise rich in the bytes that matter.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let alphabet = b"@ \n\r\xff0123build-log ";
                alphabet[x as usize % alphabet.len()]
            })
            .collect();
        let _ = split(&garbage, 13, &mut sp);
    }

    #[test]
    fn store_drv_paths() {
        let ok = ["/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok.drv"];
        let bad = [
            "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-.drv",
            "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq.drv",
            "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymzn-ok.drv",
            "gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok.drv",
            "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-ok.drv/x.drv",
            "/gnu/store/kfc47jkdwz4zds6i6fg9k2bpgfjymznq-o k.drv",
        ];
        assert!(ok.iter().all(|p| is_store_drv(p)));
        assert!(!bad.iter().any(|p| is_store_drv(p)));
    }
}

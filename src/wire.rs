//! The guix-daemon worker protocol (version 0x163), as a sans-I/O client.
//!
//! Two levels, as in smoltcp's wire code. The lower one is a set of
//! primitive codecs: `put_*` append a value to a byte vector, and `get_*`
//! read one from the front of a slice, answering [`Status::Partial`] when
//! the slice ends too early (like httparse) instead of reading more. The
//! upper one is [`Client`], which owns the connection's state: callers hand
//! it [`Request`]s and the bytes read from the socket, write out what
//! [`Client::pending_output`] holds, and collect [`Event`]s.
//!
//! The client sends one request at a time even when several are queued.
//! guix-daemon watches its socket with SIGPOLL while it works, and data
//! arriving then is taken for a hang-up: the daemon kills the running build
//! and drops the connection with "EOF expected (protocol error?)". Requests
//! are therefore released only once the previous reply is complete.

use std::collections::VecDeque;
use std::fmt;

/// The version this client speaks; the daemon parses every request by it.
pub const PROTOCOL_VERSION: u64 = 0x163;
/// The first word a client sends ("cxin").
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// The daemon's first word ("oixd").
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// Strings longer than this are taken as a corrupt stream, not allocated.
pub const MAX_STRING_LEN: u64 = 64 << 20;
/// A list can have at most one entry per eight bytes of a maximal string.
const MAX_LIST_LEN: u64 = MAX_STRING_LEN / 8;
/// Daemons older than this expect set-options fields we do not send.
const MIN_DAEMON_MINOR: u64 = 0x61;

/// The tags of log-stream messages, from the daemon's worker-protocol.hh.
pub mod tag {
    pub const NEXT: u64 = 0x6f6c_6d67;
    pub const READ: u64 = 0x6461_7461;
    pub const WRITE: u64 = 0x6461_7416;
    pub const LAST: u64 = 0x616c_7473;
    pub const ERROR: u64 = 0x6378_7470;
}

/// Operation numbers, from the daemon's worker-protocol.hh.
pub mod op {
    pub const IS_VALID_PATH: u64 = 1;
    pub const ADD_TEXT_TO_STORE: u64 = 8;
    pub const BUILD_PATHS: u64 = 9;
    pub const ADD_TEMP_ROOT: u64 = 11;
    pub const ADD_INDIRECT_ROOT: u64 = 12;
    pub const SYNC_WITH_GC: u64 = 13;
    pub const SET_OPTIONS: u64 = 19;
    pub const QUERY_DERIVATION_OUTPUTS: u64 = 22;
    pub const QUERY_VALID_PATHS: u64 = 31;
}

/// What went wrong, and where in the daemon→client stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// Offset of the offending word from the start of the stream, or from
    /// the start of the slice given to a `get_*` function.
    pub pos: u64,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The daemon's greeting was not [`WORKER_MAGIC_2`].
    BadMagic(u64),
    /// The daemon's major version is not 1, or its minor is too old.
    UnsupportedVersion(u64),
    /// A log-stream message began with an unknown tag.
    UnexpectedTag(u64),
    /// A string or list length above [`MAX_STRING_LEN`] / its list cap.
    TooLong(u64),
    /// The padding after a string was not zeros.
    NonZeroPadding,
    /// A store path or name was not UTF-8.
    InvalidUtf8,
    /// The daemon asked to read or write a data stream (tag given), which
    /// none of our requests can trigger.
    DataTransfer(u64),
    /// The daemon sent bytes while no request was outstanding.
    UnsolicitedData,
    /// The daemon refused the connection during the handshake.
    HandshakeFailed { message: String, status: u64 },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "daemon protocol error at byte {}: ", self.pos)?;
        match &self.kind {
            ErrorKind::BadMagic(m) => write!(f, "bad greeting magic {m:#x}"),
            ErrorKind::UnsupportedVersion(v) => {
                write!(f, "unsupported daemon protocol version {v:#x}")
            }
            ErrorKind::UnexpectedTag(t) => write!(f, "unexpected message tag {t:#x}"),
            ErrorKind::TooLong(n) => write!(f, "absurd length {n}"),
            ErrorKind::NonZeroPadding => write!(f, "non-zero string padding"),
            ErrorKind::InvalidUtf8 => write!(f, "string is not UTF-8"),
            ErrorKind::DataTransfer(t) => write!(f, "unexpected data transfer request {t:#x}"),
            ErrorKind::UnsolicitedData => write!(f, "data received with no request outstanding"),
            ErrorKind::HandshakeFailed { message, status } => {
                write!(f, "handshake refused (status {status}): {message}")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The result of decoding from a slice that may end too early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// More bytes are needed; nothing was consumed.
    Partial,
    /// The value and how many bytes it took.
    Complete(T, usize),
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out.resize(out.len() + padding(bytes.len()), 0);
}

pub fn put_strings<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    put_u64(out, items.len() as u64);
    for s in items {
        put_bytes(out, s.as_ref().as_bytes());
    }
}

pub fn put_string_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    put_u64(out, pairs.len() as u64);
    for (k, v) in pairs {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

pub fn get_u64(buf: &[u8]) -> Status<u64> {
    run(buf, Cursor::u64).unwrap_or(Status::Partial)
}

pub fn get_bytes(buf: &[u8]) -> Result<Status<Vec<u8>>, ProtocolError> {
    run(buf, Cursor::bytes)
}

pub fn get_strings(buf: &[u8]) -> Result<Status<Vec<String>>, ProtocolError> {
    run(buf, Cursor::strings)
}

/// One message of the daemon's log stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Log text: build output or daemon messages, in arbitrary pieces.
    Next(Vec<u8>),
    /// The operation is done; its reply follows.
    Last,
    /// The operation failed; no reply follows.
    Error { message: String, status: u64 },
    /// The daemon wants up to this many bytes of client data.
    Read(u64),
    /// The daemon sends a piece of a data stream.
    Write(Vec<u8>),
}

pub fn get_message(buf: &[u8]) -> Result<Status<Message>, ProtocolError> {
    run(buf, Cursor::message)
}

/// Why a cursor stopped: the slice ended, or the bytes are wrong.
enum Stop {
    More,
    Bad(ProtocolError),
}

/// A read position over a slice whose methods fail with [`Stop::More`]
/// rather than block, so that `?` threads "need more" through a decoder.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn run<'a, T>(
    buf: &'a [u8],
    f: impl FnOnce(&mut Cursor<'a>) -> Result<T, Stop>,
) -> Result<Status<T>, ProtocolError> {
    let mut c = Cursor { buf, pos: 0 };
    match f(&mut c) {
        Ok(v) => Ok(Status::Complete(v, c.pos)),
        Err(Stop::More) => Ok(Status::Partial),
        Err(Stop::Bad(e)) => Err(e),
    }
}

impl Cursor<'_> {
    fn bad(&self, at: usize, kind: ErrorKind) -> Stop {
        Stop::Bad(ProtocolError {
            pos: at as u64,
            kind,
        })
    }

    fn u64(&mut self) -> Result<u64, Stop> {
        let word = self.buf.get(self.pos..self.pos + 8).ok_or(Stop::More)?;
        self.pos += 8;
        Ok(u64::from_le_bytes(word.try_into().expect("8-byte slice")))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Stop> {
        let at = self.pos;
        let len = self.u64()?;
        if len > MAX_STRING_LEN {
            return Err(self.bad(at, ErrorKind::TooLong(len)));
        }
        let len = len as usize;
        let end = self.pos + len + padding(len);
        let body = self.buf.get(self.pos..end).ok_or(Stop::More)?;
        if body[len..].iter().any(|&b| b != 0) {
            return Err(self.bad(self.pos + len, ErrorKind::NonZeroPadding));
        }
        self.pos = end;
        Ok(body[..len].to_vec())
    }

    fn string(&mut self) -> Result<String, Stop> {
        let at = self.pos;
        String::from_utf8(self.bytes()?).map_err(|_| self.bad(at, ErrorKind::InvalidUtf8))
    }

    fn strings(&mut self) -> Result<Vec<String>, Stop> {
        let at = self.pos;
        let n = self.u64()?;
        if n > MAX_LIST_LEN {
            return Err(self.bad(at, ErrorKind::TooLong(n)));
        }
        // No capacity from `n`: the count is untrusted until the items arrive.
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(self.string()?);
        }
        Ok(items)
    }

    fn message(&mut self) -> Result<Message, Stop> {
        let at = self.pos;
        Ok(match self.u64()? {
            tag::NEXT => Message::Next(self.bytes()?),
            tag::LAST => Message::Last,
            // Messages quote file names and build output, which need not be
            // UTF-8; a lossy message beats a lost one. The daemon omits the
            // status word only when it is 0, and its errors default to 1.
            tag::ERROR => Message::Error {
                message: String::from_utf8_lossy(&self.bytes()?).into_owned(),
                status: self.u64()?,
            },
            tag::READ => Message::Read(self.u64()?),
            tag::WRITE => Message::Write(self.bytes()?),
            t => return Err(self.bad(at, ErrorKind::UnexpectedTag(t))),
        })
    }
}

/// Build settings sent with op 19, in the daemon's field order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub fallback: bool,
    pub verbosity: u64,
    /// Offloading to build machines; `guix-daemon` ignores it unless built
    /// with offload support.
    pub use_build_hook: bool,
    pub build_verbosity: u64,
    pub log_type: u64,
    pub print_build_trace: bool,
    pub use_substitutes: bool,
    /// Further settings such as ("build-timeout", "3600"),
    /// ("build-max-silent-time", "600"), ("print-extended-build-trace",
    /// "1"), ("multiplexed-build-output", "true"), ("user-name", "root").
    pub settings: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Op 1; replies `Bool`. A path outside the store fails with status 1.
    IsValidPath(String),
    /// Op 31; replies `Strings`, the valid subset. No substitute flag at
    /// this protocol version.
    QueryValidPaths(Vec<String>),
    /// Op 9: `.drv` files or `DRV!OUTPUT`, and a build mode (0 normal,
    /// 1 repair, 2 check); replies `Int(1)` or fails (status 100 for
    /// failed builds under keep-going).
    BuildPaths(Vec<String>, u64),
    /// Op 19; replies `Unit`: the daemon sends no value after "last".
    SetOptions(BuildOptions),
    /// Op 11; replies `Unit` (the daemon's constant 1 is dropped).
    AddTempRoot(String),
    /// Op 22; replies `Strings`, the output paths of a `.drv`.
    QueryDerivationOutputs(String),
    /// Op 12: makes the symlink at this absolute path an indirect GC
    /// root (the daemon links to it from its `gcroots/auto`); replies
    /// `Unit` (the daemon's constant 1 is dropped).  The symlink must
    /// exist before a collection looks: a dangling one is dropped.
    AddIndirectRoot(String),
    /// Op 13: waits until no garbage collection is running; replies
    /// `Unit`.  A collection that began before a root was added may
    /// not have seen it; once this returns, every later one does.
    SyncWithGc,
    /// Op 8: a store file `name` holding `text`, which refers to
    /// `references` (each must be valid, or the daemon fails with
    /// status 1); replies `Path`, the file's store path, a temporary
    /// root of this connection until it closes.
    AddTextToStore {
        name: String,
        text: String,
        references: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Unit,
    Bool(bool),
    Int(u64),
    Strings(Vec<String>),
    /// One store path.
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake is done; requests are now being sent.
    Connected { daemon_version: u64 },
    /// The payload of one "next" message: raw text that may be non-UTF-8
    /// and may hold several lines or part of one.
    Log(Vec<u8>),
    /// The oldest outstanding request finished.
    Reply(Reply),
    /// The oldest outstanding request ended with an "error" message.
    Failed { message: String, status: u64 },
}

/// The shape of the value that follows "last" for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unit,
    /// A word the daemon always sends as 1; read and dropped.
    Ignored,
    Bool,
    Int,
    Strings,
    Path,
}

impl Request {
    fn encode(&self, out: &mut Vec<u8>) -> Expect {
        match self {
            Request::IsValidPath(path) => {
                put_u64(out, op::IS_VALID_PATH);
                put_bytes(out, path.as_bytes());
                Expect::Bool
            }
            Request::QueryValidPaths(paths) => {
                put_u64(out, op::QUERY_VALID_PATHS);
                put_strings(out, paths);
                Expect::Strings
            }
            Request::BuildPaths(things, mode) => {
                put_u64(out, op::BUILD_PATHS);
                put_strings(out, things);
                put_u64(out, *mode);
                Expect::Int
            }
            Request::SetOptions(o) => {
                put_u64(out, op::SET_OPTIONS);
                // max-build-jobs, max-silent-time and build-cores have been
                // settings pairs since minor 0x61, so they are absent here.
                for v in [
                    o.keep_failed as u64,
                    o.keep_going as u64,
                    o.fallback as u64,
                    o.verbosity,
                    o.use_build_hook as u64,
                    o.build_verbosity,
                    o.log_type,
                    o.print_build_trace as u64,
                    o.use_substitutes as u64,
                ] {
                    put_u64(out, v);
                }
                put_string_pairs(out, &o.settings);
                Expect::Unit
            }
            Request::AddTempRoot(path) => {
                put_u64(out, op::ADD_TEMP_ROOT);
                put_bytes(out, path.as_bytes());
                Expect::Ignored
            }
            Request::QueryDerivationOutputs(drv) => {
                put_u64(out, op::QUERY_DERIVATION_OUTPUTS);
                put_bytes(out, drv.as_bytes());
                Expect::Strings
            }
            Request::AddIndirectRoot(link) => {
                put_u64(out, op::ADD_INDIRECT_ROOT);
                put_bytes(out, link.as_bytes());
                Expect::Ignored
            }
            Request::SyncWithGc => {
                put_u64(out, op::SYNC_WITH_GC);
                Expect::Ignored
            }
            Request::AddTextToStore {
                name,
                text,
                references,
            } => {
                put_u64(out, op::ADD_TEXT_TO_STORE);
                put_bytes(out, name.as_bytes());
                put_bytes(out, text.as_bytes());
                put_strings(out, references);
                Expect::Path
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our magic is queued; waiting for the daemon's magic and version.
    Greeting,
    /// Our version is queued; waiting for the daemon's startup log stream.
    Starting,
    /// Connected; `in_flight` is the request being answered, if any.
    Ready,
}

/// Where the answer to the request in flight has got to.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    expect: Expect,
    /// "last" arrived; the reply value is next.
    last_seen: bool,
}

/// A worker-protocol connection, without the socket.
#[derive(Debug)]
pub struct Client {
    state: State,
    daemon_version: Option<u64>,
    output: Vec<u8>,
    input: Vec<u8>,
    /// Bytes of `input` already decoded.
    input_pos: usize,
    /// Stream offset of `input[0]`, for error positions.
    input_base: u64,
    queued: VecDeque<Request>,
    in_flight: Option<InFlight>,
    events: VecDeque<Event>,
    /// Once the stream is corrupt, every later `receive` reports the same.
    broken: Option<ProtocolError>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let mut output = Vec::with_capacity(64);
        put_u64(&mut output, WORKER_MAGIC_1);
        Client {
            state: State::Greeting,
            daemon_version: None,
            output,
            input: Vec::new(),
            input_pos: 0,
            input_base: 0,
            queued: VecDeque::new(),
            in_flight: None,
            events: VecDeque::new(),
            broken: None,
        }
    }

    /// Queues a request. It is written once the handshake is done and every
    /// earlier request has its reply (see the module docs for why).
    pub fn request(&mut self, req: Request) {
        self.queued.push_back(req);
        self.send_next();
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// Requests without a reply yet, whether written or still queued.
    pub fn outstanding(&self) -> usize {
        self.queued.len() + usize::from(self.in_flight.is_some())
    }

    /// The daemon's protocol version, once it has greeted us.
    pub fn daemon_version(&self) -> Option<u64> {
        self.daemon_version
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Takes bytes read from the socket, in any chunking. Events decoded
    /// before an error stay available from `poll_event`.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        self.input.extend_from_slice(bytes);
        let result = self.decode_all();
        // Decoded bytes are dropped in bulk so a long build log does not
        // cost a copy per message.
        if self.input_pos == self.input.len() || self.input_pos > 4096 {
            self.input.drain(..self.input_pos);
            self.input_base += self.input_pos as u64;
            self.input_pos = 0;
        }
        if let Err(e) = &result {
            self.broken = Some(e.clone());
        }
        result
    }

    fn decode_all(&mut self) -> Result<(), ProtocolError> {
        while self.input_pos < self.input.len() {
            let pos = self.input_base + self.input_pos as u64;
            let step = self.step().map_err(|mut e| {
                e.pos += pos;
                e
            })?;
            match step {
                Some(n) => self.input_pos += n,
                None => break,
            }
        }
        Ok(())
    }

    /// Decodes one item at the front of the unread input: `Some(n)` when it
    /// took `n` bytes, `None` when more are needed.
    fn step(&mut self) -> Result<Option<usize>, ProtocolError> {
        let buf = &self.input[self.input_pos..];
        match self.state {
            State::Greeting => {
                let Status::Complete((magic, version), n) = run(buf, |c| Ok((c.u64()?, c.u64()?)))?
                else {
                    return Ok(None);
                };
                if magic != WORKER_MAGIC_2 {
                    return Err(error(0, ErrorKind::BadMagic(magic)));
                }
                if version >> 8 != PROTOCOL_VERSION >> 8 || version & 0xff < MIN_DAEMON_MINOR {
                    return Err(error(8, ErrorKind::UnsupportedVersion(version)));
                }
                self.daemon_version = Some(version);
                // The daemon reads these by our version, not its own. No CPU
                // affinity; reserve space so that the garbage collector can
                // still run on a full disk, as Guix's own client asks.
                put_u64(&mut self.output, PROTOCOL_VERSION);
                put_u64(&mut self.output, 0);
                put_u64(&mut self.output, 1);
                self.state = State::Starting;
                Ok(Some(n))
            }
            State::Starting => {
                let Status::Complete(msg, n) = get_message(buf)? else {
                    return Ok(None);
                };
                match msg {
                    Message::Next(text) => self.events.push_back(Event::Log(text)),
                    Message::Last => {
                        self.state = State::Ready;
                        self.events.push_back(Event::Connected {
                            daemon_version: self.daemon_version.unwrap_or(PROTOCOL_VERSION),
                        });
                        self.send_next();
                    }
                    Message::Error { message, status } => {
                        return Err(error(0, ErrorKind::HandshakeFailed { message, status }));
                    }
                    Message::Read(_) => return Err(error(0, ErrorKind::DataTransfer(tag::READ))),
                    Message::Write(_) => return Err(error(0, ErrorKind::DataTransfer(tag::WRITE))),
                }
                Ok(Some(n))
            }
            State::Ready => {
                let Some(flight) = self.in_flight else {
                    return Err(error(0, ErrorKind::UnsolicitedData));
                };
                if flight.last_seen {
                    return self.step_reply(flight.expect);
                }
                let Status::Complete(msg, n) = get_message(buf)? else {
                    return Ok(None);
                };
                match msg {
                    Message::Next(text) => self.events.push_back(Event::Log(text)),
                    Message::Last if flight.expect == Expect::Unit => self.finish(Reply::Unit),
                    Message::Last => {
                        self.in_flight = Some(InFlight {
                            last_seen: true,
                            ..flight
                        })
                    }
                    Message::Error { message, status } => {
                        self.in_flight = None;
                        self.events.push_back(Event::Failed { message, status });
                        self.send_next();
                    }
                    Message::Read(_) => return Err(error(0, ErrorKind::DataTransfer(tag::READ))),
                    Message::Write(_) => return Err(error(0, ErrorKind::DataTransfer(tag::WRITE))),
                }
                Ok(Some(n))
            }
        }
    }

    fn step_reply(&mut self, expect: Expect) -> Result<Option<usize>, ProtocolError> {
        let buf = &self.input[self.input_pos..];
        let status = match expect {
            Expect::Unit => Status::Complete(Reply::Unit, 0),
            Expect::Ignored => run(buf, |c| c.u64().map(|_| Reply::Unit))?,
            Expect::Bool => run(buf, |c| c.u64().map(|v| Reply::Bool(v != 0)))?,
            Expect::Int => run(buf, |c| c.u64().map(Reply::Int))?,
            Expect::Strings => run(buf, |c| c.strings().map(Reply::Strings))?,
            Expect::Path => run(buf, |c| c.string().map(Reply::Path))?,
        };
        Ok(match status {
            Status::Complete(reply, n) => {
                self.finish(reply);
                Some(n)
            }
            Status::Partial => None,
        })
    }

    fn finish(&mut self, reply: Reply) {
        self.in_flight = None;
        self.events.push_back(Event::Reply(reply));
        self.send_next();
    }

    fn send_next(&mut self) {
        if self.state != State::Ready || self.in_flight.is_some() {
            return;
        }
        if let Some(req) = self.queued.pop_front() {
            let expect = req.encode(&mut self.output);
            self.in_flight = Some(InFlight {
                expect,
                last_seen: false,
            });
        }
    }
}

fn error(pos: u64, kind: ErrorKind) -> ProtocolError {
    ProtocolError { pos, kind }
}

#[cfg(test)]
mod tests;

//! `/build/ID/log/raw`, streamed: the head goes out at once, then the
//! log a bounded chunk per loop turn, so that neither memory nor the
//! other clients' wait grows with the log's size.
//!
//! What is sent: the log's text, decompressed, as `text/plain` with no
//! charset (builders print bytes in any encoding, and they are sent as
//! they are) and `X-Content-Type-Options: nosniff`, so that a browser
//! never takes it for HTML.  A finished build's gzip log goes out as it is
//! stored, with `Content-Encoding: gzip`, to a client whose
//! `Accept-Encoding` admits gzip.  Plain and passed-through files have a
//! `Content-Length` (their size when opened); decompressed text is sent
//! chunked to HTTP/1.1 clients, and to HTTP/1.0 clients until the
//! connection closes.  A log found corrupt before anything was sent is a
//! 500 naming the file; found corrupt later, the connection is closed
//! without the body's end, so the client sees a broken transfer rather
//! than a log that looks complete.
//!
//! A running build's live log ([`super::live`]) is followed: sent chunked
//! as it grows, and ended once the build has ended and everything
//! written was sent.  The loop writes a build's last output before its
//! final status, so a finished build's file is complete.

use super::{Compression, Decoder, Places, Source};
use crate::db::Db;
use crate::http::{self, Length, Request, Response};
use crate::routes::Route;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

/// Compressed or plain bytes read from the file per turn.
pub const READ_CHUNK: usize = 64 * 1024;
/// Text decoded per turn at most.
pub const TEXT_CHUNK: usize = 256 * 1024;
/// The content type of a log's text: see the module's documentation.
pub const CONTENT_TYPE: &str = "text/plain";

/// A log being sent.
pub struct LogStream {
    file: File,
    path: PathBuf,
    /// None: the file's bytes are the body, as they are.
    decoder: Option<Decoder>,
    length: Length,
    /// File bytes still to read: the size when opened, so that a live log
    /// ends where it stood.
    left: u64,
    /// Read and not yet decoded.
    input: Vec<u8>,
    used: usize,
    live: bool,
    text: Vec<u8>,
    done: bool,
    /// The build whose live log this is, while it may still grow.
    follow: Option<i64>,
    /// The file's size as last seen, for a followed log.
    seen: u64,
}

/// What `/build/ID/log/raw` answers, decided before anything is sent.
pub enum Start {
    /// An answer with its body (an error, or HEAD).
    Whole(Response),
    /// The head and the first chunk, then the rest from the stream.
    Stream(Vec<u8>, LogStream),
}

/// Whose log a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOf<'a> {
    /// `/build/ID/log/raw`: that build's.
    Build(&'a str),
    /// `/log/ITEM` (today's Cuirass): that of the build that made the
    /// store item `/gnu/store/ITEM`.
    Item(&'a str),
    /// `/build/ID/attempt/N/log/raw`: that of build ID's earlier run N,
    /// kept when it was restarted.
    Attempt(&'a str, &'a str),
    /// `/download/ID`: not a log but build product ID's file, streamed
    /// the same way.
    Download(&'a str),
}

/// Whose log a `/build/ID/log/raw` or `/log/ITEM` request asks for, or
/// None for any other request.
pub fn log_request(req: &Request) -> Option<LogOf<'_>> {
    let m = crate::routes::of(req)?;
    match m.route {
        Route::BuildLog => Some(LogOf::Build(m.captures[0])),
        Route::LogOfItem => Some(LogOf::Item(m.captures[0])),
        Route::AttemptLog => Some(LogOf::Attempt(m.captures[0], m.captures[1])),
        Route::Download => Some(LogOf::Download(m.captures[0])),
        _ => None,
    }
}

fn not_found(message: String) -> Response {
    crate::api::error(404, &message)
}

/// The answer's head (a [`Response`] without body) and the stream of
/// its body, or the whole answer for an error; `chunked` allows chunked
/// framing.
fn prepare(
    db: &Db,
    places: &Places,
    req: &Request,
    chunked: bool,
) -> Result<(Response, LogStream, i64), Response> {
    let (b, attempt) = match log_request(req) {
        Some(LogOf::Download(id)) => return download(db, id),
        Some(LogOf::Build(id)) => (crate::api::find_build(db, id)?, None),
        Some(LogOf::Item(item)) => (crate::api::build_of_item(db, item)?, None),
        Some(LogOf::Attempt(id, n)) => {
            let n = n
                .parse::<i64>()
                .map_err(|_| crate::api::error(400, &format!("Invalid attempt: {n}.")))?;
            (crate::api::find_build(db, id)?, Some(n))
        }
        None => return Err(not_found(format!("Resource {} not found.", req.path))),
    };
    let no_log = || match attempt {
        Some(n) => not_found(format!("No log kept for attempt {n} of build {}.", b.id)),
        None => not_found(format!("No log for build {}.", b.id)),
    };
    let source = match attempt {
        Some(n) => places.attempt_copy(b.id, n),
        None => places.source(&b),
    }
    .ok_or_else(no_log)?;
    let pass_gzip = req.accept_gzip && source.compression == Compression::Gzip && !source.live;
    let follow = places.live_of(&b).is_some_and(|l| l.path == source.path);
    let opened = match follow {
        true => LogStream::follow(&source, b.id, chunked),
        false => LogStream::open(&source, pass_gzip, chunked),
    };
    let stream = match opened {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_log()),
        Err(e) => return Err(unreadable(b.id, &format!("{}: {e}", source.path.display()))),
    };
    let mut head = Response::new(200, CONTENT_TYPE, Vec::new());
    head.headers
        .push(("X-Content-Type-Options", "nosniff".into()));
    if source.compression == Compression::Gzip && !source.live {
        head.headers.push(("Vary", "Accept-Encoding".into()));
    }
    if pass_gzip {
        head.headers.push(("Content-Encoding", "gzip".into()));
    }
    Ok((head, stream, b.id))
}

/// The store, the only place `/download/ID` serves files from.
const STORE: &str = "/gnu/store/";

/// `/download/ID`: the file of build product ID, if it is (still) in the
/// store once every symbolic link is resolved, as
/// `application/octet-stream` named after the file.
fn download(db: &Db, id: &str) -> Result<(Response, LogStream, i64), Response> {
    let missing = || not_found(format!("Build product {id} doesn't exist."));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let product = db
        .product(id)
        .map_err(|e| crate::api::error(500, &e.to_string()))?
        .ok_or_else(missing)?;
    let real = std::fs::canonicalize(&product.path).map_err(|_| missing())?;
    if !product.path.starts_with(STORE) || !real.starts_with(STORE) || !real.is_file() {
        return Err(not_found(format!(
            "Build product {id} is not a file in the store."
        )));
    }
    let source = Source {
        path: real.clone(),
        compression: Compression::Plain,
        live: false,
    };
    let stream = LogStream::open(&source, true, false)
        .map_err(|e| unreadable(product.build, &format!("{}: {e}", real.display())))?;
    let mut head = Response::new(200, "application/octet-stream", Vec::new());
    let name = real
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let name: String = name
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .collect();
    head.headers.push((
        "Content-Disposition",
        format!("attachment; filename=\"{name}\""),
    ));
    Ok((head, stream, product.build))
}

/// Starts answering `req`, a `/build/ID/log/raw` request (see
/// [`log_request`]); `keep_alive` is whether the connection may stay.
pub fn start(db: &Db, places: &Places, req: &Request, keep_alive: bool) -> Start {
    let (head, mut stream, id) = match prepare(db, places, req, req.http11) {
        Ok(p) => p,
        Err(r) => return Start::Whole(r),
    };
    let mut out = head.encode_head(stream.length, keep_alive);
    if req.is_head() {
        return Start::Stream(out, stream.finished());
    }
    // The first chunk before the head is committed: a log that is not
    // what its name says is then a clear error, not a broken transfer.
    if let Err(e) = stream.next(&mut out) {
        return Start::Whole(unreadable(id, &e));
    }
    Start::Stream(out, stream)
}

/// The whole answer in one [`Response`], for callers without a loop to
/// come back to (tests, the fuzzer); the server streams with [`start`].
pub fn whole(db: &Db, places: &Places, req: &Request) -> Response {
    let (mut response, mut stream, id) = match prepare(db, places, req, false) {
        Ok(p) => p,
        Err(r) => return r,
    };
    while !stream.is_done() {
        // No loop to come back to: a live log is sent as it stands.
        if let Err(e) = stream
            .refresh(false)
            .and_then(|_| stream.next(&mut response.body))
        {
            return unreadable(id, &e);
        }
    }
    response
}

/// A 500 for a log that cannot be read; `why` names the file.
fn unreadable(id: i64, why: &str) -> Response {
    log::warn!(target: crate::logging::HTTP, "http: build {id}: log {why}");
    crate::api::error(500, &format!("Unreadable log of build {id}: {why}."))
}

impl LogStream {
    /// Opens `source`; `pass` sends the file's bytes as they are;
    /// `chunked` allows chunked framing (HTTP/1.1).
    pub fn open(source: &Source, pass: bool, chunked: bool) -> std::io::Result<LogStream> {
        let file = File::open(&source.path)?;
        let size = file.metadata()?.len();
        let as_is = pass || source.compression == Compression::Plain;
        let length = match (as_is, chunked) {
            (true, _) => Length::Known(size),
            (false, true) => Length::Chunked,
            (false, false) => Length::UntilClose,
        };
        Ok(LogStream {
            file,
            path: source.path.clone(),
            decoder: (!as_is).then(|| Decoder::new(source.compression)),
            length,
            left: size,
            input: Vec::new(),
            used: 0,
            live: source.live,
            text: Vec::new(),
            done: false,
            follow: None,
            seen: size,
        })
    }

    /// Opens the live log (plain) of running build `id`, to be followed
    /// as it grows: its length is unknown, so it goes chunked (or until
    /// the connection closes for HTTP/1.0).
    pub fn follow(source: &Source, id: i64, chunked: bool) -> std::io::Result<LogStream> {
        let mut s = LogStream::open(source, false, chunked)?;
        s.length = if chunked {
            Length::Chunked
        } else {
            Length::UntilClose
        };
        s.follow = Some(id);
        Ok(s)
    }

    /// The build a followed log belongs to, while it may grow.
    pub fn following(&self) -> Option<i64> {
        self.follow
    }

    /// For a followed log that has sent all it had: takes in what was
    /// appended since; when nothing was and `running` is false (the
    /// build ended, so the file is complete), stops following so that
    /// the next [`LogStream::next`] ends the body.  Returns whether the
    /// stream waits for more (nothing to send now).
    pub fn refresh(&mut self, running: bool) -> Result<bool, String> {
        if self.follow.is_none() || self.left > 0 || self.used < self.input.len() {
            return Ok(false);
        }
        let size = self
            .file
            .metadata()
            .map_err(|e| format!("{}: {e}", self.path.display()))?
            .len();
        if size > self.seen {
            self.left = size - self.seen;
            self.seen = size;
            return Ok(false);
        }
        if running {
            return Ok(true);
        }
        self.follow = None;
        Ok(false)
    }

    /// How the body is delimited.
    pub fn length(&self) -> Length {
        self.length
    }

    /// A stream with nothing more to send (a HEAD answer).
    fn finished(mut self) -> LogStream {
        self.done = true;
        self
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the next bounded piece of the body to `out` (at most
    /// [`READ_CHUNK`] bytes read, [`TEXT_CHUNK`] decoded), framed; after
    /// the last piece [`LogStream::is_done`] is true.  An error (the
    /// file's path and what is wrong) means the body cannot be completed.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        let name = self.path.display().to_string();
        if self.used == self.input.len() && self.left > 0 {
            let want = READ_CHUNK.min(self.left as usize);
            self.input.resize(want, 0);
            let n = self
                .file
                .read(&mut self.input)
                .map_err(|e| format!("{name}: {e}"))?;
            if n == 0 {
                return Err(format!("{name}: shorter than when it was opened"));
            }
            self.input.truncate(n);
            self.used = 0;
            self.left -= n as u64;
        }
        let text = match &mut self.decoder {
            None => {
                let from = std::mem::replace(&mut self.used, self.input.len());
                &self.input[from..]
            }
            Some(d) => {
                self.text.clear();
                self.used += d
                    .decode(&self.input[self.used..], &mut self.text, TEXT_CHUNK)
                    .map_err(|e| format!("{name}: {e}"))?;
                &self.text[..]
            }
        };
        match self.length {
            _ if text.is_empty() => {}
            Length::Chunked => http::push_chunk(out, text),
            _ => out.extend_from_slice(text),
        }
        if self.used == self.input.len() && self.left == 0 && self.follow.is_none() {
            if let Some(d) = &self.decoder
                && !self.live
            {
                d.finish().map_err(|e| format!("{name}: {e}"))?;
            }
            if self.length == Length::Chunked {
                http::push_chunk(out, &[]);
            }
            self.done = true;
        }
        Ok(())
    }
}

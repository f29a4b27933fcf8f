//! The HTTP server's shell: a listener and its connections inside the one
//! mio loop.  It moves bytes between sockets and the codec (`http`) and
//! the routes (`api`).  Nothing here waits: a slow or idle client costs a
//! buffer and a timer, never a turn of the loop.

use crate::admin::{Auth, Effect};
use crate::api;
use crate::buildlog::{self, serve::LogStream};
use crate::db::{Db, status};
use crate::http::{self, Parsed, Response};
use crate::routes;
use crate::web::{self, HttpCounters};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Beyond this many connections, new ones are accepted and closed at once,
/// which tells the client to come back instead of letting it wait.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time allowed from a request's first byte to its last.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an idle keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for a client to take any of the bytes we queued.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time given to a refused client to stop sending before we close, so the
/// error response is not lost to a TCP reset.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read from one connection per turn; the rest waits a turn.
const READ_CAP: usize = 64 * 1024;
/// Requests answered on one connection per turn.
const REQUESTS_PER_TURN: usize = 16;
/// While this much is queued for a client, its further requests wait.
const MAX_QUEUED: usize = 256 * 1024;

/// A build listing being answered a page per turn (see `step`).
struct Paging {
    pager: api::Pager,
    route: &'static str,
    head: bool,
    keep_alive: bool,
}

/// A build log being sent a chunk per turn (see `step`).
struct Streaming {
    log: LogStream,
    keep_alive: bool,
    /// A running build's log, all sent: when it was last looked at for
    /// more (it is looked at every [`FOLLOW_EVERY`]).
    waiting: Option<Instant>,
}

/// How often a followed live log is looked at for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// A client following a live log is kept this long without a byte: a
/// build may be silent for long (its max-silent-time decides).
const FOLLOW_IDLE: Duration = Duration::from_secs(3600);

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    input: Vec<u8>,
    /// Bytes queued for the peer; `output[sent..]` is still to go.
    output: Vec<u8>,
    sent: usize,
    /// Set by a readable event, cleared by `WouldBlock`: mio's events are
    /// edge-triggered, so unread bytes must be remembered here.
    readable: bool,
    writable_interest: bool,
    /// The peer sent EOF; answer what is buffered, then close.
    eof: bool,
    /// An event said the peer shut its side: the socket is read to its
    /// end (the 0 that sets `eof`), not stopped at a short read.
    read_closed: bool,
    /// Close once `output` is flushed.
    close_after_write: bool,
    /// Refused: output flushed and write side shut; drain until EOF.
    lingering: Option<Instant>,
    /// When the request now being received began, if one is.
    request_started: Option<Instant>,
    /// The last time a byte moved either way.
    last_progress: Instant,
    /// A build listing being answered a page per turn, with whether its
    /// request was HEAD and may keep the connection; later pipelined
    /// requests wait for it.
    paging: Option<Paging>,
    /// A build log being sent; later pipelined requests wait for it.
    streaming: Option<Streaming>,
}

impl Conn {
    /// An answer is being produced over several turns.
    fn busy(&self) -> bool {
        self.paging.is_some() || self.streaming.is_some()
    }

    fn queued(&self) -> usize {
        self.output.len() - self.sent
    }

    fn deadline(&self) -> Instant {
        if let Some(t) = self.lingering {
            return t + LINGER;
        }
        if self.queued() > 0 {
            return self.last_progress + WRITE_TIMEOUT;
        }
        if self.streaming.as_ref().is_some_and(|s| s.waiting.is_some()) {
            return self.last_progress + FOLLOW_IDLE;
        }
        match self.request_started {
            Some(t) => t + REQUEST_TIMEOUT,
            None => self.last_progress + IDLE_TIMEOUT,
        }
    }
}

pub struct HttpServer {
    listener: TcpListener,
    listener_token: Token,
    first_conn_token: usize,
    /// Connections by token offset; freed slots are reused.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    /// Connections with work left after their turn's cap.
    again: Vec<usize>,
    /// The loop's latest `now`: this layer does not read the clock.
    now: Instant,
    /// Requests answered, for `/metrics`.
    counters: HttpCounters,
    logs: buildlog::Places,
    /// Tokens, sessions and rate limits: who may write.
    auth: Auth,
    /// What answered actions ask of the loop, in order.
    effects: Vec<Effect>,
    /// Where people reach the server (`--base-url`), for absolute links.
    base_url: String,
}

/// What one turn of a connection needs beyond the connection.
struct Turn<'a> {
    db: &'a mut Db,
    now: Instant,
    counters: &'a mut HttpCounters,
    logs: &'a buildlog::Places,
    auth: &'a mut Auth,
    effects: &'a mut Vec<Effect>,
    base_url: &'a str,
}

impl HttpServer {
    pub fn bind(
        addr: &str,
        port: u16,
        registry: &Registry,
        listener: Token,
        first_conn_token: usize,
        logs: buildlog::Places,
        auth: Auth,
    ) -> Result<HttpServer, String> {
        let name = format!("{addr}:{port}");
        let mut addrs: Vec<SocketAddr> = (addr, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve HTTP listen address {name}: {e}"))?
            .collect();
        // `localhost` usually resolves to ::1 and 127.0.0.1; IPv4 is what
        // every client tries.
        addrs.sort_by_key(|a| !a.is_ipv4());
        let mut last = None;
        for a in addrs {
            match TcpListener::bind(a) {
                Ok(mut l) => {
                    registry
                        .register(&mut l, listener, Interest::READABLE)
                        .map_err(|e| format!("cannot watch the HTTP listener: {e}"))?;
                    let bound = l.local_addr().map_or(a, |b| b);
                    log::info!(target: crate::logging::HTTP, "HTTP API listening on http://{name}/ ({bound})");
                    return Ok(HttpServer {
                        listener: l,
                        listener_token: listener,
                        first_conn_token,
                        conns: Vec::new(),
                        free: Vec::new(),
                        open: 0,
                        again: Vec::new(),
                        now: Instant::now(),
                        counters: HttpCounters::default(),
                        logs,
                        auth,
                        effects: Vec::new(),
                        base_url: format!("http://{name}"),
                    });
                }
                Err(e) => last = Some(format!("cannot listen on {name} ({a}): {e}")),
            }
        }
        Err(last.unwrap_or_else(|| format!("cannot listen on {name}: no address")))
    }

    /// The server as people reach it, for the feed's absolute links.
    pub fn with_base_url(mut self, url: &str) -> HttpServer {
        self.base_url = url.to_string();
        self
    }

    /// What the actions answered since the last call asked of the loop.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Tokens and webhook secret, for SIGHUP.
    pub fn auth_mut(&mut self) -> &mut Auth {
        &mut self.auth
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token
            || (token.0 >= self.first_conn_token
                && token.0 - self.first_conn_token < self.conns.len())
    }

    pub fn handle(&mut self, registry: &Registry, event: &Event, db: &mut Db, now: Instant) {
        self.now = now;
        if event.token() == self.listener_token {
            self.accept(registry, now);
            return;
        }
        let slot = event.token().0 - self.first_conn_token;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            conn.readable = true;
        }
        if event.is_read_closed() || event.is_error() {
            conn.read_closed = true;
        }
        self.service(registry, slot, db, now);
    }

    /// The next time a connection times out, or now if one has work left.
    pub fn poll_at(&self) -> Option<Instant> {
        let mut next = self.conns.iter().flatten().map(Conn::deadline).min();
        let follow = self
            .conns
            .iter()
            .flatten()
            .filter_map(|c| c.streaming.as_ref()?.waiting)
            .min();
        if let Some(at) = follow {
            next = next.map_or(Some(at + FOLLOW_EVERY), |n| Some(n.min(at + FOLLOW_EVERY)));
        }
        if self.again.is_empty() {
            next
        } else {
            Some(self.now)
        }
    }

    /// Closes connections past their deadline; continues capped work.
    pub fn tick(&mut self, registry: &Registry, db: &mut Db, now: Instant) {
        self.now = now;
        for slot in std::mem::take(&mut self.again) {
            if self.conns.get(slot).is_some_and(Option::is_some) {
                self.service(registry, slot, db, now);
            }
        }
        for slot in 0..self.conns.len() {
            let Some(conn) = &self.conns[slot] else {
                continue;
            };
            let waited = conn.streaming.as_ref().and_then(|s| s.waiting);
            if waited.is_some_and(|at| now >= at + FOLLOW_EVERY) {
                self.service(registry, slot, db, now);
                continue;
            }
            if now >= conn.deadline() {
                log::debug!(target: crate::logging::HTTP, "http: {} timed out", conn.peer);
                self.close(registry, slot);
            }
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and the like: the next event retries.
                    log::warn!(target: crate::logging::HTTP, "http: accept: {e}");
                    return;
                }
            };
            if self.open >= MAX_CONNECTIONS {
                log::warn!(target: crate::logging::HTTP, "http: {MAX_CONNECTIONS} connections open, refusing {peer}");
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let token = Token(self.first_conn_token + slot);
            if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                log::warn!(target: crate::logging::HTTP, "http: cannot watch {peer}: {e}");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                // Bytes may have arrived before registration.
                readable: true,
                writable_interest: false,
                eof: false,
                read_closed: false,
                close_after_write: false,
                lingering: None,
                request_started: None,
                last_progress: now,
                paging: None,
                streaming: None,
            });
            self.open += 1;
            self.again.push(slot);
        }
    }

    /// One connection's turn: flush, read (capped), answer (capped), flush.
    fn service(&mut self, registry: &Registry, slot: usize, db: &mut Db, now: Instant) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let mut turn = Turn {
            db,
            now,
            counters: &mut self.counters,
            logs: &self.logs,
            auth: &mut self.auth,
            effects: &mut self.effects,
            base_url: &self.base_url,
        };
        let outcome = step(conn, &mut turn);
        match outcome {
            Step::Close => self.close(registry, slot),
            Step::Wait { more } => {
                if more && !self.again.contains(&slot) {
                    self.again.push(slot);
                }
                let conn = self.conns[slot].as_mut().unwrap();
                let want = conn.queued() > 0;
                if want != conn.writable_interest {
                    let interest = if want {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    let token = Token(self.first_conn_token + slot);
                    if registry
                        .reregister(&mut conn.stream, token, interest)
                        .is_err()
                    {
                        self.close(registry, slot);
                        return;
                    }
                    conn.writable_interest = want;
                }
            }
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            let _ = registry.deregister(&mut conn.stream);
            self.free.push(slot);
            self.open -= 1;
        }
    }
}

enum Step {
    Close,
    /// Keep the connection; `more` when the turn's cap left work undone.
    Wait {
        more: bool,
    },
}

fn step(conn: &mut Conn, turn: &mut Turn) -> Step {
    let now = turn.now;
    let logs = turn.logs;
    if flush(conn, now).is_err() {
        return Step::Close;
    }
    if conn.lingering.is_some() {
        return linger(conn);
    }
    // One page of a listing per turn: other connections get theirs in
    // between, so a large `nr` holds nobody up.
    if let Some(paging) = conn.paging.as_mut() {
        let Some(response) = paging.pager.step(&*turn.db) else {
            return Step::Wait { more: true };
        };
        let paging = conn.paging.take().unwrap();
        turn.counters.record(paging.route, response.status);
        conn.output
            .extend_from_slice(&response.encode(paging.head, paging.keep_alive));
        conn.close_after_write = !paging.keep_alive;
    }
    // One chunk of a log per turn, while the client keeps up: what waits
    // in its queue is bounded, and so is the turn.
    if let Some(streaming) = conn.streaming.as_mut() {
        if conn.output.len() - conn.sent >= MAX_QUEUED {
            return Step::Wait { more: false };
        }
        if let Some(id) = streaming.log.following() {
            // A database error ends the log where it stands rather than
            // keep the client waiting on a build no one can see.
            let running = turn
                .db
                .build_status(id)
                .is_ok_and(|s| s == Some(status::STARTED));
            match streaming.log.refresh(running) {
                Ok(true) => {
                    streaming.waiting = Some(now);
                    return match flush(conn, now) {
                        Ok(()) => Step::Wait { more: false },
                        Err(()) => Step::Close,
                    };
                }
                Ok(false) => streaming.waiting = None,
                Err(e) => {
                    log::warn!(target: crate::logging::HTTP, "http: {} log: {e}", conn.peer);
                    let _ = flush(conn, now);
                    return Step::Close;
                }
            }
        }
        if let Err(e) = streaming.log.next(&mut conn.output) {
            // Headers are gone: only a broken transfer can tell the
            // client that the body is not the whole log.
            log::warn!(target: crate::logging::HTTP, "http: {} log: {e}", conn.peer);
            let _ = flush(conn, now);
            return Step::Close;
        }
        if !streaming.log.is_done() {
            return match flush(conn, now) {
                Ok(()) => Step::Wait {
                    more: conn.queued() < MAX_QUEUED,
                },
                Err(()) => Step::Close,
            };
        }
        let keep =
            streaming.keep_alive && streaming.log.length() != crate::http::Length::UntilClose;
        conn.streaming = None;
        conn.close_after_write = !keep;
    }
    let mut read = 0;
    let mut answered = 0;
    // Whether the turn stopped at a cap (requests or queued output):
    // what is left buffered or unread then gets no readiness event.
    let mut capped;
    loop {
        // Answer what is buffered before reading more, so a pipelining
        // client cannot make us buffer without bound.
        while answered < REQUESTS_PER_TURN
            && conn.queued() < MAX_QUEUED
            && !conn.close_after_write
            && !conn.busy()
            && !conn.input.is_empty()
        {
            match http::parse_request(&conn.input) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete(req, used)) => {
                    conn.input.drain(..used);
                    // A peer that shut its side still gets every request
                    // it sent answered; the last one says it closes.
                    let keep = req.keep_alive && !(conn.eof && conn.input.is_empty());
                    if let Some((response, effects)) = write_request(turn, &req) {
                        turn.counters.record(routes::pattern(&req), response.status);
                        log::debug!(target: crate::logging::HTTP, "http: {} {} {:?} -> {}",
                            conn.peer,
                            req.method,
                            req.path,
                            response.status
                        );
                        turn.effects.extend(effects);
                        conn.output.extend_from_slice(&response.encode(false, keep));
                        conn.close_after_write = !keep;
                        answered += 1;
                        continue;
                    }
                    if let Some(Ok(pager)) = api::Pager::for_request(&req) {
                        conn.paging = Some(Paging {
                            pager,
                            route: routes::pattern(&req),
                            head: req.is_head(),
                            keep_alive: keep,
                        });
                        answered += 1;
                        continue;
                    }
                    if buildlog::serve::log_request(&req).is_some() {
                        answered += 1;
                        match buildlog::serve::start(&*turn.db, logs, &req, keep) {
                            buildlog::serve::Start::Whole(response) => {
                                turn.counters.record(routes::pattern(&req), response.status);
                                conn.output
                                    .extend_from_slice(&response.encode(req.is_head(), keep));
                                conn.close_after_write = !keep;
                            }
                            buildlog::serve::Start::Stream(head, log) => {
                                turn.counters.record(routes::pattern(&req), 200);
                                log::debug!(target: crate::logging::HTTP,
                                    "http: {} {} {} -> 200",
                                    conn.peer,
                                    req.method,
                                    req.path
                                );
                                conn.output.extend_from_slice(&head);
                                conn.streaming = Some(Streaming {
                                    log,
                                    keep_alive: keep,
                                    waiting: None,
                                });
                                // Ended here for HEAD: nothing to stream.
                                return step_again(conn, now);
                            }
                        }
                        continue;
                    }
                    let response = web::respond(
                        &*turn.db,
                        &req,
                        &web::Ctx {
                            now: wall_clock(),
                            logs,
                            counters: &*turn.counters,
                            session: web::session(turn.auth, &req, now),
                            base_url: turn.base_url,
                        },
                    );
                    turn.counters.record(routes::pattern(&req), response.status);
                    log::debug!(target: crate::logging::HTTP, "http: {} {} {:?} -> {}",
                        conn.peer,
                        req.method,
                        req.path,
                        response.status
                    );
                    conn.output
                        .extend_from_slice(&response.encode(req.is_head(), keep));
                    conn.close_after_write = !keep;
                    answered += 1;
                }
                Err(e) => {
                    log::debug!(target: crate::logging::HTTP, "http: {} refused: {} {}", conn.peer, e.status, e.message);
                    let response: Response = api::error(e.status, e.message);
                    turn.counters.record("invalid", e.status);
                    conn.output
                        .extend_from_slice(&response.encode(false, false));
                    conn.close_after_write = true;
                    conn.input.clear();
                    answered += 1;
                }
            }
        }
        conn.request_started = match conn.input.is_empty() {
            true => None,
            false => conn.request_started.or(Some(now)),
        };
        let blocked = answered >= REQUESTS_PER_TURN || conn.queued() >= MAX_QUEUED;
        capped = blocked;
        if blocked || conn.close_after_write || !conn.readable || conn.eof {
            break;
        }
        if read >= READ_CAP {
            return match flush(conn, now) {
                Ok(()) => Step::Wait { more: true },
                Err(()) => Step::Close,
            };
        }
        let mut buf = [0u8; 16 * 1024];
        match conn.stream.read(&mut buf) {
            Ok(0) => conn.eof = true,
            Ok(n) => {
                read += n;
                conn.input.extend_from_slice(&buf[..n]);
                conn.last_progress = now;
                // A short read emptied the socket: what comes later is a
                // new readiness event (mio is edge-triggered), so the
                // read that would say WouldBlock is saved: one system
                // call in three of a keep-alive request.  Not when the
                // peer has shut its side: the EOF behind the bytes came
                // with the same event, and only the next read sees it.
                if n < buf.len() && !conn.read_closed {
                    conn.readable = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
    if flush(conn, now).is_err() {
        return Step::Close;
    }
    let owed = capped && !conn.input.is_empty() && !conn.close_after_write;
    // A listing still being paged, or requests left for the next turn,
    // are answers owed, even to a peer that has shut its sending side.
    if conn.queued() == 0 && !conn.busy() && !owed {
        if conn.close_after_write {
            if conn.input.is_empty() && conn.eof {
                return Step::Close;
            }
            // Refused mid-stream: shut our side and drain theirs a while.
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.lingering = Some(now);
            return linger(conn);
        }
        if conn.eof {
            return Step::Close;
        }
    }
    // Stopped at a cap with the socket not read to its end: bytes, or
    // the peer's EOF, wait there, and no new event will say so.
    let unread = capped && conn.readable && !conn.eof;
    // Output still over the cap: the writable event brings the turn.
    let more = conn.busy() || ((owed || unread) && conn.queued() < MAX_QUEUED);
    Step::Wait { more }
}

/// A request that may change something (a POST, or any request to a
/// write route, which then gets its 405): answered by the actions, with
/// the effects they ask of the loop.
fn write_request(turn: &mut Turn, req: &http::Request) -> Option<api::admin::Outcome> {
    let writes = routes::of(req).is_some_and(|m| {
        routes::is_action(m.route)
            || routes::is_trigger(m.route)
            || m.route == routes::Route::Logout
    });
    if req.method != "POST" && !writes {
        return None;
    }
    turn.db.end_reads();
    let clock = api::admin::Now {
        now: turn.now,
        unix: wall_clock(),
    };
    if let Some(outcome) = web::respond_write(turn.db, req, turn.auth, clock, &random_bytes) {
        return Some(outcome);
    }
    Some((api::respond(turn.db, req), Vec::new()))
}

/// Session ids and CSRF tokens: the kernel's randomness.
fn random_bytes() -> [u8; 64] {
    let mut out = [0u8; 64];
    // SAFETY: getrandom(2) writes at most `out.len()` bytes into `out`.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), out.len(), 0) };
    assert_eq!(n, out.len() as isize, "getrandom failed");
    out
}

/// After a log stream began: the rest of the turn is the stream's.
fn step_again(conn: &mut Conn, now: Instant) -> Step {
    match flush(conn, now) {
        Ok(()) => Step::Wait { more: true },
        Err(()) => Step::Close,
    }
}

/// The pages' "3 minutes ago" needs calendar time, which the monotonic
/// `now` the loop hands down cannot give; read here, in the shell, it
/// reaches the pages as a plain number.
fn wall_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn linger(conn: &mut Conn) -> Step {
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..(READ_CAP / buf.len()) {
        match conn.stream.read(&mut buf) {
            Ok(0) => return Step::Close,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.readable = false;
                return Step::Wait { more: false };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
    Step::Wait { more: true }
}

fn flush(conn: &mut Conn, now: Instant) -> Result<(), ()> {
    while conn.sent < conn.output.len() {
        match conn.stream.write(&conn.output[conn.sent..]) {
            Ok(0) => return Err(()),
            Ok(n) => {
                conn.sent += n;
                conn.last_progress = now;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    conn.output.clear();
    conn.sent = 0;
    Ok(())
}

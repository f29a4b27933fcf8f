//! HTTP/1.1 requests and responses, sans-I/O: bytes in, a [`Request`] or
//! "need more" out; a [`Response`] in, bytes out.  The limits here are what
//! keep one client from holding memory hostage; the timeouts live in the
//! shell (`http_server`), which owns the clock.

/// Longest request line accepted; longer is 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest request head (request line and headers); longer is 431.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header fields accepted; more is 431.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted (an action's JSON, a login form, a push
/// webhook's payload); larger is 413.  Forges send whole commit lists in
/// a push payload, so this is not tiny, but a client cannot make us
/// buffer more than this per connection.
pub const MAX_BODY: usize = 256 * 1024;
/// Request headers kept for the routes (the rest are read and dropped):
/// credentials, the webhook signatures, and what a form or a payload is.
pub const KEPT_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "content-type",
    "x-hub-signature-256",
    "x-gitea-signature",
    "x-forgejo-signature",
    "x-gitlab-token",
    "x-github-event",
    "x-gitea-event",
    "x-forgejo-event",
    "x-gitlab-event",
];

/// Why a request was refused: the status to answer with, and a reason for
/// the client.  The connection is closed after the answer, since framing
/// can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: u16,
    pub message: &'static str,
}

fn error(status: u16, message: &'static str) -> Error {
    Error { status, message }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The percent-decoded path, always starting with `/`.
    pub path: String,
    /// The decoded path's non-empty segments.
    pub segments: Vec<String>,
    /// Decoded query pairs, in order, a `+` kept as a plus (see
    /// [`Request::param`]).
    pub query: Vec<(String, String)>,
    pub keep_alive: bool,
    /// HTTP/1.1 or later: chunked responses are understood.
    pub http11: bool,
    /// `Accept-Encoding` admits gzip (see [`accepts_gzip`]).
    pub accept_gzip: bool,
    /// The headers named in [`KEPT_HEADERS`], names in lower case,
    /// values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes, at most [`MAX_BODY`]).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a query parameter, `%XX` decoded and a `+` kept
    /// as a plus.  Parameters carry names (job, jobset, spec, project,
    /// names, system, derivation, and `query`, a part of a job name),
    /// names such as `gtk+-3.24.x86_64-linux` or `libsigc++` are common,
    /// and job and system names never contain a space: read as a space
    /// (the HTML-form convention), the `+` that clients such as Guix's
    /// `(guix ci)` send unencoded would find nothing.  A space is written
    /// `%20`; a plus `+` or `%2B`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The first value of a kept header (see [`KEPT_HEADERS`]); `name` in
    /// lower case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed; nothing was consumed.
    Partial,
    /// A request, and how many bytes it took (head and body).
    Complete(Request, usize),
}

/// Parses the request at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, Error> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    match line_end {
        Some(n) if n > MAX_REQUEST_LINE => return Err(error(414, "request line too long")),
        None if buf.len() > MAX_REQUEST_LINE => return Err(error(414, "request line too long")),
        _ => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(error(431, "request headers too large"));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(error(431, "request headers too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(error(431, "too many headers")),
        Err(httparse::Error::Version) => return Err(error(505, "HTTP version not supported")),
        Err(_) => return Err(error(400, "malformed request")),
    };
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let minor = req.version.unwrap_or(1);
    let mut keep_alive = minor >= 1;
    let mut body_len = 0usize;
    let mut seen_length = false;
    let mut accept_gzip = false;
    let mut kept = Vec::new();
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if let Some(name) = KEPT_HEADERS.iter().find(|k| h.name.eq_ignore_ascii_case(k)) {
            kept.push((name.to_string(), value.to_string()));
        }
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("accept-encoding") {
            accept_gzip |= accepts_gzip(value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| error(400, "bad Content-Length"))?;
            // Two different lengths are a request-smuggling attempt.
            if seen_length && n != body_len {
                return Err(error(400, "conflicting Content-Length"));
            }
            seen_length = true;
            body_len = n;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Clients of the actions and forges send Content-Length, so
            // chunked bodies are not worth a decoder; refusing them keeps
            // framing unambiguous.
            return Err(error(501, "Transfer-Encoding not supported"));
        }
    }
    if body_len > MAX_BODY {
        return Err(error(413, "request body too large"));
    }
    let (path, query) = split_target(target)?;
    let segments = segments(&path)?;
    if buf.len() < head_len + body_len {
        return Ok(Parsed::Partial);
    }
    Ok(Parsed::Complete(
        Request {
            method,
            path,
            segments,
            query,
            keep_alive,
            http11: minor >= 1,
            accept_gzip,
            headers: kept,
            body: buf[head_len..head_len + body_len].to_vec(),
        },
        head_len + body_len,
    ))
}

/// Whether an `Accept-Encoding` value admits gzip: `gzip`, `x-gzip` or
/// `*` with a non-zero quality (RFC 9110 section 12.5.3).
pub fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let named = ["gzip", "x-gzip", "*"]
            .iter()
            .any(|c| coding.eq_ignore_ascii_case(c));
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok());
        named && q.is_some_and(|q| q > 0.0)
    })
}

fn split_target(target: &str) -> Result<(String, Vec<(String, String)>), Error> {
    // Absolute form (`http://host/path`) is legal; only its path matters.
    let target = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => target,
    };
    if !target.starts_with('/') {
        return Err(error(400, "bad request target"));
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(raw_path).ok_or(error(400, "bad percent-encoding"))?;
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or(error(400, "bad percent-encoding"))?;
        // `query` is words, as an HTML form sends them (the dashboard's
        // search box, and links like `/search/latest?query=spec:guix+hello`):
        // there a bare `+` is a space.  Every other parameter carries a
        // name, where `+` is a plus (`gtk+`, `libsigc++`).
        let v = match k.as_str() {
            "query" => percent_decode(&v.replace('+', "%20")),
            _ => percent_decode(v),
        }
        .ok_or(error(400, "bad percent-encoding"))?;
        query.push((k, v));
    }
    Ok((path, query))
}

fn segments(path: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        // No route names files, but a dot segment is never meant well.
        if seg == "." || seg == ".." {
            return Err(error(400, "dot segment in path"));
        }
        out.push(seg.to_string());
    }
    Ok(out)
}

/// Decodes `%XX` escapes; a `+` is a plus (see [`Request::param`]).
/// `None` for a broken escape, a NUL byte or invalid UTF-8: such values
/// reach no database query.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                i += 2;
                u8::from_str_radix(hex, 16).ok()?
            }
            b => b,
        };
        if b == 0 {
            return None;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// The bytes to send.  A HEAD answer keeps the Content-Length of the
    /// GET answer but not its body.
    pub fn encode(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let length = Length::Known(self.body.len() as u64);
        let mut out = self.encode_head(length, keep_alive);
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// `Content-Length: N`.
    Known(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 clients only).
    Chunked,
    /// Neither: the body ends when the connection closes.
    UntilClose,
}

impl Response {
    /// The status line and headers, for a body delimited by `length`
    /// (the response's own `body` is not looked at).
    pub fn encode_head(&self, length: Length, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type
        );
        match length {
            Length::Known(n) => out.push_str(&format!("Content-Length: {n}\r\n")),
            Length::Chunked => out.push_str("Transfer-Encoding: chunked\r\n"),
            Length::UntilClose => {}
        }
        let keep_alive = keep_alive && length != Length::UntilClose;
        out.push_str(match keep_alive {
            true => "Connection: keep-alive\r\n",
            false => "Connection: close\r\n",
        });
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Appends `data` as one chunk of a chunked body (RFC 9112 section 7.1);
/// empty data is the last chunk.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests;

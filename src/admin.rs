//! Operators in control: who may change things, and what a change asks
//! of the rest of the daemon.  Sans-I/O: token files arrive as text, time
//! as `now`, requests as [`Request`]s; what the event loop must do after
//! an action comes back as [`Effect`]s.  The actions' database work is in
//! `db::admin`, their routes and JSON in `api::admin`.
//!
//! Write access is a bearer token (`Authorization: Bearer TOKEN`) from
//! the file `--admin-tokens` names, or a dashboard session opened with
//! one.  Tokens are compared by their SHA-256 digests in constant time,
//! so neither a token's bytes nor its length show in response times.

pub mod client;
pub mod webhook;

use crate::http::Request;
use crate::records::BuildId;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

#[cfg(test)]
mod tests;

/// Triggers of one specification allowed per [`TRIGGER_WINDOW`] (as in
/// today's Cuirass); more are refused with 429.
pub const TRIGGERS_PER_WINDOW: usize = 3;
pub const TRIGGER_WINDOW: Duration = Duration::from_secs(120);
/// Shortest token accepted in a token file: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// How long a dashboard session lasts from its log-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Dashboard sessions kept at most; the oldest goes first.
pub const MAX_SESSIONS: usize = 256;

/// What the event loop must do once an action's transaction committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Evaluate `spec` now; with a commit, that commit again even if it
    /// was evaluated already.
    Trigger {
        spec: String,
        commit: Option<String>,
    },
    /// `spec`'s pending builds changed: its queue is read again.
    Requeue { spec: String },
    /// Keep build `build`'s log copy as that of its attempt `attempt`
    /// (the next run's copy would replace it).
    KeepLog { build: BuildId, attempt: i64 },
    /// A specification was added or edited (and is active): poll it.
    SpecChanged(Box<crate::spec::Specification>),
    /// A specification was deactivated: stop its cycle.
    SpecStopped { spec: String },
    /// A specification was deleted: stop its cycle, and delete its
    /// history (its tombstone's rows) a chunk per turn.
    SpecDeleted { spec: String },
}

/// One valid token: a label for the logs, and the token's digest.
#[derive(Clone)]
struct Token {
    label: String,
    digest: [u8; 32],
}

/// Why a token file was refused: the line and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFileError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The valid tokens.  Several may be valid at once, so that a new one can
/// be handed out before the old one is removed.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// Reads a token file: one token a line, `LABEL:TOKEN` or a bare
    /// `TOKEN` (labelled `token-N`, N its line); blank lines and lines
    /// starting with `#` are skipped.  Errors: a token shorter than
    /// [`MIN_TOKEN_LEN`] or with spaces, an empty label, a repeated token.
    pub fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let err = |message: &str| TokenFileError {
                line: i + 1,
                message: message.to_string(),
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (label, token) = match line.split_once(':') {
                Some((label, token)) => (label.trim().to_string(), token.trim()),
                None => (format!("token-{}", i + 1), line),
            };
            if label.is_empty() {
                return Err(err("empty label before ':'"));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(&format!(
                    "token shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if token.chars().any(char::is_whitespace) {
                return Err(err("token contains white space"));
            }
            let digest = digest(token.as_bytes());
            if tokens.iter().any(|t| t.digest == digest) {
                return Err(err("token listed twice"));
            }
            tokens.push(Token { label, digest });
        }
        Ok(Tokens { tokens })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The label of `candidate` if it is a valid token.  Every token is
    /// compared, each in constant time.
    pub fn check(&self, candidate: &str) -> Option<&str> {
        let d = digest(candidate.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t.label.as_str());
            }
        }
        found
    }
}

/// A dashboard session: who opened it, its CSRF token, when it ends.
#[derive(Debug, Clone)]
pub struct Session {
    pub label: String,
    pub csrf: String,
    pub expires: Instant,
}

/// Who a request comes from, as far as writing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// No credentials (401).
    Anonymous,
    /// Credentials that are not valid (403).
    Refused,
    /// A valid token or session: its label.
    Operator(String),
}

/// The name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "cuirass_session";

/// Tokens, sessions and the trigger limiter: the server's state for writes.
#[derive(Default)]
pub struct Auth {
    pub tokens: Tokens,
    /// The shared secret of push webhooks, if configured.
    pub webhook_secret: Option<Vec<u8>>,
    sessions: HashMap<String, Session>,
    triggers: HashMap<String, VecDeque<Instant>>,
    /// The server speaks TLS (behind a proxy that says so): cookies get
    /// `Secure`.
    pub secure_cookies: bool,
}

impl Auth {
    pub fn new(tokens: Tokens, webhook_secret: Option<Vec<u8>>) -> Auth {
        Auth {
            tokens,
            webhook_secret,
            ..Auth::default()
        }
    }

    /// Who sent `req`: its bearer token, else its session cookie.  A
    /// session's writes also need its CSRF token, checked by the caller
    /// ([`Auth::session_of`]).
    pub fn who(&self, req: &Request, now: Instant) -> Who {
        if let Some(value) = req.header("authorization") {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "));
            return match token.and_then(|t| self.tokens.check(t.trim())) {
                Some(label) => Who::Operator(label.to_string()),
                None => Who::Refused,
            };
        }
        match cookie(req, SESSION_COOKIE) {
            None => Who::Anonymous,
            Some(id) => match self.session_of(id, now) {
                Some(s) => Who::Operator(s.label.clone()),
                None => Who::Refused,
            },
        }
    }

    /// The live session with id `id`.
    pub fn session_of(&self, id: &str, now: Instant) -> Option<&Session> {
        // Ids are random and secret: a hash map lookup by them leaks
        // nothing a guess could use.
        self.sessions.get(id).filter(|s| s.expires > now)
    }

    /// Opens a session for `label`; `random` gives the session id and its
    /// CSRF token (64 hex digits each).  The oldest session goes when
    /// there are [`MAX_SESSIONS`].
    pub fn open_session(
        &mut self,
        label: &str,
        random: [u8; 64],
        now: Instant,
    ) -> (String, String) {
        self.sessions.retain(|_, s| s.expires > now);
        if self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.sessions.remove(&k);
            }
        }
        let id = hex(&random[..32]);
        let csrf = hex(&random[32..]);
        self.sessions.insert(
            id.clone(),
            Session {
                label: label.to_string(),
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        (id, csrf)
    }

    pub fn close_session(&mut self, id: &str) {
        self.sessions.remove(id);
    }

    /// Counts a trigger of `spec` at `now`; false when the spec had
    /// [`TRIGGERS_PER_WINDOW`] already in the last [`TRIGGER_WINDOW`].
    pub fn allow_trigger(&mut self, spec: &str, now: Instant) -> bool {
        let recent = self.triggers.entry(spec.to_string()).or_default();
        while recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= TRIGGER_WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() >= TRIGGERS_PER_WINDOW {
            return false;
        }
        recent.push_back(now);
        true
    }
}

/// The value of cookie `name` in `req`'s `Cookie` header.
pub fn cookie<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.header("cookie")?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether two secrets are equal, in time that depends on neither.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    bool::from(digest(a).ct_eq(&digest(b)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Set-Cookie` value that opens (`Some(id)`) or ends (`None`) a
/// dashboard session.
pub fn session_cookie(id: Option<&str>, secure: bool) -> String {
    let (value, age) = match id {
        Some(id) => (id, SESSION_LIFETIME.as_secs()),
        None => ("", 0),
    };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

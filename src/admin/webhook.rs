//! Push webhooks from forges: the signature checked against the shared
//! secret, then the pushed repository's URLs read from the payload.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 of the body;
//! - Forgejo and Gitea: `X-Forgejo-Signature` / `X-Gitea-Signature: HEX`,
//!   the same HMAC without a prefix;
//! - GitLab: `X-Gitlab-Token: SECRET`, the secret itself.

use crate::http::Request;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Which forge's convention a webhook route follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    Gitea,
    GitLab,
}

/// Whether `req` is signed with `secret` the way `forge` signs.  Only
/// the signature's form is looked at before the constant-time check.
pub fn verify(forge: Forge, secret: &[u8], req: &Request) -> bool {
    let hmac_hex = |header: Option<&str>| {
        let Some(sig) = header.and_then(decode_hex) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(&req.body);
        mac.verify_slice(&sig).is_ok()
    };
    match forge {
        Forge::GitHub => hmac_hex(
            req.header("x-hub-signature-256")
                .and_then(|v| v.strip_prefix("sha256=")),
        ),
        Forge::Gitea => hmac_hex(
            req.header("x-forgejo-signature")
                .or_else(|| req.header("x-gitea-signature")),
        ),
        Forge::GitLab => req
            .header("x-gitlab-token")
            .is_some_and(|t| super::same_secret(t.as_bytes(), secret)),
    }
}

/// The hex signature of `body` with `secret`, as GitHub and Gitea send it
/// (for clients and tests).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    super::hex(&mac.finalize().into_bytes())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A repository URL reduced to what names the repository: no scheme, no
/// user, no `.git` or trailing slash, the host in lower case, and scp's
/// `host:path` read as `host/path`.  `https://Example.org/a/b.git`,
/// `git@example.org:a/b` and `ssh://git@example.org/a/b/` all give
/// `example.org/a/b`; a `file://` URL or a path gives its path.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let (rest, scp) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
            return trim_repo(rest).to_string();
        }
        Some((_, rest)) => (rest, false),
        None if url.starts_with('/') => return trim_repo(url).to_string(),
        None => (url, true),
    };
    let (authority, path) = match scp {
        // `user@host:path`
        true => rest.split_once(':').unwrap_or((rest, "")),
        false => rest.split_once('/').unwrap_or((rest, "")),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    // A default port names the same repository.
    let host = host
        .strip_suffix(":443")
        .or_else(|| host.strip_suffix(":80"))
        .unwrap_or(host);
    format!(
        "{}/{}",
        host.to_ascii_lowercase(),
        trim_repo(path.trim_start_matches('/'))
    )
}

fn trim_repo(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.strip_suffix(".git").unwrap_or(path)
}

/// Payload fields that hold the pushed repository's URLs, by forge:
/// GitHub's and Gitea's `repository`, GitLab's `project` (and its older
/// `repository`).
const URL_FIELDS: &[(&str, &str)] = &[
    ("repository", "clone_url"),
    ("repository", "html_url"),
    ("repository", "ssh_url"),
    ("repository", "git_url"),
    ("repository", "url"),
    ("repository", "git_http_url"),
    ("repository", "git_ssh_url"),
    ("repository", "homepage"),
    ("project", "git_http_url"),
    ("project", "git_ssh_url"),
    ("project", "web_url"),
    ("project", "http_url"),
    ("project", "ssh_url"),
];

/// The normalized URLs of the repository a push payload names.  Errors:
/// not JSON, or no URL in it, naming what was missing.
pub fn pushed_urls(payload: &serde_json::Value) -> Result<Vec<String>, String> {
    if !payload.is_object() {
        return Err("webhook payload: not a JSON object".into());
    }
    let mut urls: Vec<String> = URL_FIELDS
        .iter()
        .filter_map(|(obj, field)| payload.get(obj)?.get(field)?.as_str())
        .filter(|u| !u.is_empty())
        .map(normalize_url)
        .collect();
    urls.sort();
    urls.dedup();
    match urls.is_empty() {
        true => Err(
            "webhook payload: no repository URL (repository.clone_url, project.git_http_url, …)"
                .into(),
        ),
        false => Ok(urls),
    }
}

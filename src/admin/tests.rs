use super::webhook::{self, Forge, normalize_url, pushed_urls};
use super::*;
use crate::http::{Parsed, parse_request};

fn request(head: &str, body: &[u8]) -> Request {
    let mut bytes = format!(
        "POST /x HTTP/1.1\r\n{head}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    match parse_request(&bytes) {
        Ok(Parsed::Complete(req, _)) => req,
        other => panic!("{other:?}"),
    }
}

const A: &str = "alice:0123456789abcdef0123";
const B: &str = "fedcba9876543210fedcba";

#[test]
fn token_files_label_tokens_and_refuse_weak_ones() {
    let tokens = Tokens::parse(&format!("# operators\n\n{A}\n  {B}  \n")).unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens.check("0123456789abcdef0123"), Some("alice"));
    assert_eq!(tokens.check(B), Some("token-4"));
    assert_eq!(tokens.check("0123456789abcdef012"), None);
    assert_eq!(tokens.check(""), None);
    let err = |text: &str| Tokens::parse(text).err().unwrap().to_string();
    assert_eq!(
        err("\nbob:short"),
        "line 2: token shorter than 16 characters"
    );
    assert_eq!(
        err(":0123456789abcdef0123"),
        "line 1: empty label before ':'"
    );
    assert_eq!(
        err(&format!("{A}\nbob:0123456789abcdef0123")),
        "line 2: token listed twice"
    );
    assert_eq!(
        err("x:0123456789 abcdef0123"),
        "line 1: token contains white space"
    );
    assert!(Tokens::parse("").unwrap().is_empty());
}

#[test]
fn who_reads_bearer_tokens_and_sessions() {
    let now = Instant::now();
    let mut auth = Auth::new(Tokens::parse(A).unwrap(), None);
    let who = |auth: &Auth, head: &str| auth.who(&request(head, b""), now);
    assert_eq!(who(&auth, ""), Who::Anonymous);
    assert_eq!(
        who(&auth, "Authorization: Bearer 0123456789abcdef0123\r\n"),
        Who::Operator("alice".into())
    );
    assert_eq!(
        who(&auth, "Authorization: Bearer nope-nope-nope-nope\r\n"),
        Who::Refused
    );
    assert_eq!(
        who(&auth, "Authorization: Basic YWxpY2U=\r\n"),
        Who::Refused
    );
    let random: [u8; 64] = std::array::from_fn(|i| i as u8);
    let (id, csrf) = auth.open_session("alice", random, now);
    assert_eq!((id.len(), csrf.len()), (64, 64));
    assert_ne!(id, csrf);
    let cookie = format!("Cookie: a=b; {SESSION_COOKIE}={id}\r\n");
    assert_eq!(who(&auth, &cookie), Who::Operator("alice".into()));
    assert_eq!(
        who(&auth, &format!("Cookie: {SESSION_COOKIE}=forged\r\n")),
        Who::Refused
    );
    // Sessions end.
    let later = now + SESSION_LIFETIME;
    assert_eq!(auth.who(&request(&cookie, b""), later), Who::Refused);
    auth.close_session(&id);
    assert_eq!(who(&auth, &cookie), Who::Refused);
}

#[test]
fn session_cookies_are_http_only_strict_and_secure_on_tls() {
    let c = session_cookie(Some("abc"), false);
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    assert!(!c.contains("Secure"), "{c}");
    assert!(session_cookie(Some("abc"), true).ends_with("; Secure"));
    assert!(session_cookie(None, false).contains("Max-Age=0"));
}

#[test]
fn triggers_are_limited_per_spec_and_window() {
    let mut auth = Auth::default();
    let t0 = Instant::now();
    for i in 0..TRIGGERS_PER_WINDOW {
        assert!(auth.allow_trigger("a", t0 + Duration::from_secs(i as u64)));
    }
    assert!(!auth.allow_trigger("a", t0 + Duration::from_secs(10)));
    assert!(auth.allow_trigger("b", t0 + Duration::from_secs(10)));
    // The first trigger leaves the window: one more is allowed.
    assert!(auth.allow_trigger("a", t0 + TRIGGER_WINDOW));
    assert!(!auth.allow_trigger("a", t0 + TRIGGER_WINDOW));
}

#[test]
fn webhook_signatures_of_each_forge() {
    let secret = b"it's a secret to everybody";
    let body = br#"{"repository":{"clone_url":"https://example.org/a/b.git"}}"#;
    let sig = webhook::sign(secret, body);
    let ok = |forge, head: &str| webhook::verify(forge, secret, &request(head, body));
    assert!(ok(
        Forge::GitHub,
        &format!("X-Hub-Signature-256: sha256={sig}\r\n")
    ));
    assert!(!ok(
        Forge::GitHub,
        &format!("X-Hub-Signature-256: {sig}\r\n")
    ));
    assert!(ok(Forge::Gitea, &format!("X-Gitea-Signature: {sig}\r\n")));
    assert!(ok(Forge::Gitea, &format!("X-Forgejo-Signature: {sig}\r\n")));
    assert!(!ok(Forge::Gitea, ""));
    let wrong = webhook::sign(b"another secret", body);
    assert!(!ok(
        Forge::Gitea,
        &format!("X-Gitea-Signature: {wrong}\r\n")
    ));
    assert!(!ok(Forge::Gitea, "X-Gitea-Signature: zz\r\n"));
    assert!(ok(
        Forge::GitLab,
        "X-Gitlab-Token: it's a secret to everybody\r\n"
    ));
    assert!(!ok(Forge::GitLab, "X-Gitlab-Token: it's a secret\r\n"));
    // The body is what is signed.
    let other = webhook::verify(
        Forge::GitHub,
        secret,
        &request(&format!("X-Hub-Signature-256: sha256={sig}\r\n"), b"{}"),
    );
    assert!(!other);
}

#[test]
fn repository_urls_are_compared_by_what_names_the_repository() {
    for url in [
        "https://Example.org/a/b.git",
        "https://example.org/a/b/",
        "git@example.org:a/b.git",
        "ssh://git@example.org/a/b",
        "https://example.org:443/a/b",
        "http://user@example.org/a/b",
    ] {
        assert_eq!(normalize_url(url), "example.org/a/b", "{url}");
    }
    assert_eq!(normalize_url("file:///srv/x.git"), "/srv/x");
    assert_eq!(normalize_url("/srv/x/"), "/srv/x");
    assert_ne!(normalize_url("https://example.org/a/bc"), "example.org/a/b");
    let v: serde_json::Value = serde_json::from_str(
        r#"{"project": {"git_http_url": "https://gitlab.com/g/p.git",
                        "git_ssh_url": "git@gitlab.com:g/p.git"}}"#,
    )
    .unwrap();
    assert_eq!(pushed_urls(&v).unwrap(), ["gitlab.com/g/p"]);
    assert!(pushed_urls(&serde_json::json!({"repository": {}})).is_err());
    assert!(pushed_urls(&serde_json::json!([1])).is_err());
}

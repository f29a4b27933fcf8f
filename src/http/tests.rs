use super::*;

fn complete(input: &[u8]) -> (Request, usize) {
    match parse_request(input) {
        Ok(Parsed::Complete(req, n)) => (req, n),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

fn status_of(input: &[u8]) -> u16 {
    match parse_request(input) {
        Err(e) => e.status,
        other => panic!(
            "{:?}: expected an error, got {other:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

const SIMPLE: &[u8] =
    b"GET /api/latestbuilds?nr=10&job=hello%20world HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n";

#[test]
fn a_simple_request() {
    let (req, n) = complete(SIMPLE);
    assert_eq!(n, SIMPLE.len());
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/api/latestbuilds");
    assert_eq!(req.segments, vec!["api", "latestbuilds"]);
    assert_eq!(req.param("nr"), Some("10"));
    assert_eq!(req.param("job"), Some("hello world"));
    assert_eq!(req.param("none"), None);
    assert!(req.keep_alive);
}

#[test]
fn partial_input_at_every_split_point() {
    for cut in 0..SIMPLE.len() {
        assert_eq!(
            parse_request(&SIMPLE[..cut]),
            Ok(Parsed::Partial),
            "cut at {cut}"
        );
    }
    let body = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    for cut in 0..body.len() {
        assert_eq!(
            parse_request(&body[..cut]),
            Ok(Parsed::Partial),
            "cut at {cut}"
        );
    }
    assert_eq!(complete(body).1, body.len());
}

#[test]
fn pipelined_requests_are_consumed_one_at_a_time() {
    let mut two = SIMPLE.to_vec();
    two.extend_from_slice(b"HEAD /jobsets HTTP/1.1\r\n\r\n");
    let (_, n) = complete(&two);
    assert_eq!(n, SIMPLE.len());
    let (req, m) = complete(&two[n..]);
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), m),
        ("HEAD", "/jobsets", two.len() - n)
    );
    assert!(req.is_head());
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    let k = |s: &str| complete(s.as_bytes()).0.keep_alive;
    assert!(k("GET / HTTP/1.1\r\n\r\n"));
    assert!(!k("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!k("GET / HTTP/1.0\r\n\r\n"));
    assert!(k("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
}

#[test]
fn limits() {
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
    assert_eq!(status_of(long_line.as_bytes()), 414);
    // Still incomplete, but already past the limit: refuse without waiting.
    let long_start = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE + 1));
    assert_eq!(status_of(long_start.as_bytes()), 414);
    let big_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "b".repeat(MAX_HEAD));
    assert_eq!(status_of(big_header.as_bytes()), 431);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(many.as_bytes()), 431);
    let body = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_eq!(status_of(body.as_bytes()), 413);
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        501
    );
    assert_eq!(
        status_of(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        400
    );
    assert_eq!(
        status_of(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
        400
    );
}

#[test]
fn bad_request_lines() {
    for bad in [
        &b"GET\r\n\r\n"[..],
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"G E T / HTTP/1.1\r\n\r\n",
        b"GET nopath HTTP/1.1\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"\x00GET / HTTP/1.1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let status = status_of(bad);
        assert!(
            status == 400 || status == 505,
            "{:?}: {status}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n"), 505);
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
    assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(percent_decode("%zz"), None);
    assert_eq!(percent_decode("%+1"), None);
    assert_eq!(percent_decode("%00"), None, "NUL");
    assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    let (req, _) = complete(b"GET /build/%31?job=a%26b&x&y= HTTP/1.1\r\n\r\n");
    assert_eq!(req.segments, vec!["build", "1"]);
    assert_eq!(
        req.query,
        vec![
            ("job".into(), "a&b".into()),
            ("x".into(), String::new()),
            ("y".into(), String::new())
        ]
    );
    assert_eq!(status_of(b"GET /a?x=%00 HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET /a%00b HTTP/1.1\r\n\r\n"), 400);
}

/// Job names like `gtk+-3.24.x86_64-linux` are common and never contain
/// a space; Guix's `(guix ci)` sends them unencoded.
#[test]
fn a_plus_in_a_query_parameter_is_a_plus_written_bare_or_as_2b() {
    for target in [
        "/api/latestbuilds?nr=1&job=gtk+-3.24.x86_64-linux&jobset=libsigc++",
        "/api/latestbuilds?nr=1&job=gtk%2B-3.24.x86_64-linux&jobset=libsigc%2B%2B",
        "/api/latestbuilds?nr=1&job=gtk%2b-3.24.x86_64-linux&jobset=libsigc+%2B",
    ] {
        let (req, _) = complete(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(req.param("job"), Some("gtk+-3.24.x86_64-linux"), "{target}");
        assert_eq!(req.param("jobset"), Some("libsigc++"), "{target}");
    }
    // Except in `query`, words as a form sends them: `+` is a space there,
    // `%2B` a plus.
    let (req, _) =
        complete(b"GET /search?query=spec:guix+gtk%2B%20x&names=x+,y%2B HTTP/1.1\r\n\r\n");
    assert_eq!(req.param("query"), Some("spec:guix gtk+ x"));
    assert_eq!(req.param("names"), Some("x+,y+"));
    let (req, _) = complete(b"GET /jobset/libsigc++/badge.svg HTTP/1.1\r\n\r\n");
    assert_eq!(req.segments[1], "libsigc++");
}

#[test]
fn dot_segments_are_refused() {
    for bad in ["/..", "/build/../etc", "/%2e%2e/x", "/./jobsets"] {
        let req = format!("GET {bad} HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(req.as_bytes()), 400, "{bad}");
    }
    // Dots inside a segment are ordinary characters.
    let (req, _) = complete(b"GET /a..b/.x HTTP/1.1\r\n\r\n");
    assert_eq!(req.segments, vec!["a..b", ".x"]);
}

#[test]
fn absolute_form_targets_keep_only_the_path() {
    let (req, _) = complete(b"GET http://example.org:8080/jobsets?a=1 HTTP/1.1\r\n\r\n");
    assert_eq!((req.path.as_str(), req.param("a")), ("/jobsets", Some("1")));
}

#[test]
fn responses() {
    let r = Response::new(200, "application/json", b"[]".to_vec());
    assert_eq!(
        r.encode(false, true),
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n[]"
    );
    let mut r = Response::new(405, "application/json", b"{}".to_vec());
    r.headers.push(("Allow", "GET, HEAD".into()));
    assert_eq!(
        r.encode(true, false),
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n"
    );
}

#[test]
fn bodies_and_the_headers_routes_need_are_kept() {
    let input = b"POST /admin/build/1/restart HTTP/1.1\r\nauthorization: Bearer abc\r\n\
                  X-Unrelated: dropped\r\nContent-Type: application/json\r\n\
                  Content-Length: 7\r\n\r\n{\"a\":1}GET / HTTP/1.1\r\n\r\n";
    let (req, n) = complete(input);
    assert_eq!(
        &input[n..n + 3],
        b"GET",
        "the next request starts after the body"
    );
    assert_eq!(req.body, b"{\"a\":1}");
    assert_eq!(req.header("authorization"), Some("Bearer abc"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-unrelated"), None);
    assert_eq!(req.headers.len(), 2);
    // The body arrives in pieces: nothing until it is whole.
    let cut = input.len() - "GET / HTTP/1.1\r\n\r\n".len() - 1;
    assert_eq!(parse_request(&input[..cut]), Ok(Parsed::Partial));
    let (req, _) = complete(b"GET / HTTP/1.1\r\n\r\n");
    assert!(req.body.is_empty() && req.headers.is_empty());
    let big = format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
    assert_eq!(parse_request(big.as_bytes()), Ok(Parsed::Partial));
}

//! The `admin` target: the write routes' requests and bodies.

use super::Outcome;
use cuirass::spec;
use std::time::Instant;

/// The token and webhook secret the `admin` seeds use.
const FUZZ_TOKEN: &str = "fuzz-token-0123456789";
const FUZZ_SECRET: &[u8] = b"fuzz-secret-0123456789";

thread_local! {
    /// The actions change their database: a fresh one every so often, so
    /// that deletions do not leave nothing to act on.
    static ADMIN: std::cell::RefCell<(cuirass::db::Db, cuirass::admin::Auth, u32)> =
        std::cell::RefCell::new(admin_world());
}

fn admin_world() -> (cuirass::db::Db, cuirass::admin::Auth, u32) {
    let mut db = cuirass::db::Db::open_in_memory().expect("in-memory database");
    let spec = spec::Specification::new("hello", "https://example.org/hello.git", "ci.scm", "jobs");
    db.add_specifications(&[spec]).expect("spec");
    let jobs: Vec<cuirass::db::JobRecord> = ["a", "b"]
        .iter()
        .map(|n| cuirass::db::JobRecord {
            job_name: n.to_string(),
            derivation: format!("/gnu/store/{n:0<32}-{n}.drv"),
            inputs: vec!["/gnu/store/a0000000000000000000000000000000-a.drv".into()],
            ..Default::default()
        })
        .collect();
    db.register_evaluation("hello", "c0ffee", &jobs, 1)
        .expect("evaluation");
    db.finish_builds(
        &[
            (jobs[0].derivation.clone(), 1, None),
            (jobs[1].derivation.clone(), 2, None),
        ],
        2,
    )
    .expect("statuses");
    let tokens = cuirass::admin::Tokens::parse(&format!("fuzz:{FUZZ_TOKEN}")).expect("token");
    (
        db,
        cuirass::admin::Auth::new(tokens, Some(FUZZ_SECRET.to_vec())),
        0,
    )
}

/// A request to the write routes (actions with their JSON or form bodies,
/// the hook, webhooks signed with the right secret so that their payload
/// is read, log-in forms): it is answered with a real status, never 500,
/// and a refusal asks nothing of the loop.  Any input is also read as a
/// push payload and as a specification's fields.
pub fn fuzz(input: &[u8]) -> Outcome {
    use cuirass::admin::webhook;
    use cuirass::api::admin::{Body, Now, spec_of_body};
    use cuirass::http::{Parsed, parse_request};
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) {
        drop(webhook::pushed_urls(&v));
        if let serde_json::Value::Object(map) = v {
            drop(spec_of_body(&Body::Json(map), "fuzz", None));
        }
    }
    let Ok(Parsed::Complete(mut req, _)) = parse_request(input) else {
        return Ok(false);
    };
    if req.path.starts_with("/api/push-") {
        let sig = webhook::sign(FUZZ_SECRET, &req.body);
        req.headers
            .push(("x-hub-signature-256".into(), format!("sha256={sig}")));
        req.headers.push(("x-gitea-signature".into(), sig));
        req.headers.push((
            "x-gitlab-token".into(),
            String::from_utf8_lossy(FUZZ_SECRET).into_owned(),
        ));
    }
    ADMIN.with(|world| {
        let mut world = world.borrow_mut();
        world.2 += 1;
        if world.2 % 256 == 0 {
            *world = admin_world();
        }
        let (db, auth, _) = &mut *world;
        let now = Now {
            now: Instant::now(),
            unix: 1000,
        };
        let random = || [7u8; 64];
        let Some((response, effects)) = cuirass::web::respond_write(db, &req, auth, now, &random)
        else {
            return Ok(false);
        };
        if !(200..600).contains(&response.status) || response.status == 500 {
            return Err(format!(
                "{} {} answered {}",
                req.method, req.path, response.status
            ));
        }
        if response.status >= 400 && !effects.is_empty() {
            return Err(format!(
                "{} {} refused with effects {effects:?}",
                req.method, req.path
            ));
        }
        Ok(response.status < 400)
    })
}

/// Requests to each write route, with a valid token, session form or
/// payload, for mutations to start from.
pub fn seeds() -> Vec<Vec<u8>> {
    let post = |target: &str, head: &str, body: &str| {
        format!(
            "POST {target} HTTP/1.1\r\n{head}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let bearer =
        format!("Authorization: Bearer {FUZZ_TOKEN}\r\nContent-Type: application/json\r\n");
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    vec![
        post("/admin/build/1/restart", &bearer, ""),
        post("/admin/build/2/cancel", &bearer, "{}"),
        post("/admin/evaluation/1/restart", &bearer, ""),
        post("/admin/evaluation/1/cancel", "", ""),
        post("/admin/evaluation/1/retry", &bearer, ""),
        post(
            "/admin/specification/add",
            &bearer,
            r#"{"name": "x", "url": "https://example.org/x", "file": "ci.scm", "proc": "jobs", "arguments": "((a . 1))", "no-compile?": true}"#,
        ),
        post(
            "/admin/specification/hello/edit",
            &bearer,
            r#"{"branch": "next", "tag": null}"#,
        ),
        post("/admin/specification/hello/deactivate", &bearer, ""),
        post(
            "/admin/specification/hello/delete",
            &bearer,
            r#"{"confirm": "hello"}"#,
        ),
        post("/jobset/hello/hook/evaluate", "", ""),
        post(
            "/api/push-github",
            "X-GitHub-Event: push\r\n",
            r#"{"ref": "refs/heads/master", "repository": {"clone_url": "https://example.org/hello.git", "ssh_url": "git@example.org:hello.git"}}"#,
        ),
        post(
            "/api/push-gitlab",
            "",
            r#"{"project": {"git_http_url": "https://example.org/hello.git"}}"#,
        ),
        post(
            "/login",
            form,
            &format!("token={FUZZ_TOKEN}&next=%2Fbuild%2F1"),
        ),
        post(
            "/admin/build/1/restart",
            &format!("Cookie: cuirass_session=x\r\n{form}"),
            "csrf=a%2Bb&next=/",
        ),
    ]
}

//! The actions over an in-memory database: who may, what changes, what
//! the loop is asked to do.

use super::admin::{Now, respond as act};
use super::tests::{fixture, job, spec};
use super::*;
use crate::admin::{Auth, Effect, Tokens};
use crate::db::JobRecord;
use crate::http::{Parsed, parse_request};
use crate::records::BuildId;
use std::time::Instant;

const TOKEN: &str = "0123456789abcdef0123";

fn auth() -> Auth {
    Auth::new(Tokens::parse(&format!("ops:{TOKEN}")).unwrap(), None)
}

fn post(target: &str, head: &str, body: &str) -> Request {
    let text = format!(
        "POST {target} HTTP/1.1\r\n{head}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match parse_request(text.as_bytes()) {
        Ok(Parsed::Complete(req, _)) => req,
        other => panic!("{target}: {other:?}"),
    }
}

fn now() -> Now {
    Now {
        now: Instant::now(),
        unix: 1000,
    }
}

/// An authenticated action: its status, JSON answer and effects.
fn call(db: &mut Db, auth: &mut Auth, target: &str, body: &str) -> (u16, Value, Vec<Effect>) {
    let head = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let (r, effects) = act(db, &post(target, &head, body), auth, now()).expect(target);
    (r.status, serde_json::from_slice(&r.body).unwrap(), effects)
}

fn status_of(db: &Db, id: i64) -> i64 {
    db.build(BuildId(id)).unwrap().unwrap().status.code()
}

/// `hello`'s evaluation 3: base fails, mid and top failed-dependency
/// (top depends on mid and base, mid on base), lone failed on its own.
fn chain(db: &mut Db) -> [BuildId; 4] {
    let mut base = job("base");
    let mut mid = job("mid");
    let mut top = job("top");
    let lone = job("lone");
    mid.inputs = vec![base.derivation.clone()];
    top.inputs = vec![mid.derivation.clone(), base.derivation.clone()];
    // Registered dependents first: ids do not give the order.
    let jobs: Vec<JobRecord> = vec![top.clone(), mid.clone(), lone.clone(), base.clone()];
    let eval = db.register_evaluation("hello", "c3", &jobs, 400).unwrap();
    base.job_name.clear();
    db.build_started(&jobs[3].derivation, "/var/log/guix/drvs/ab/base", 410)
        .unwrap();
    db.build_finished(&jobs[3].derivation, status::FAILED, None, 420)
        .unwrap();
    for j in &jobs[..2] {
        db.build_finished(&j.derivation, status::FAILED_DEPENDENCY, None, 420)
            .unwrap();
    }
    db.build_finished(&lone.derivation, status::FAILED, None, 420)
        .unwrap();
    let id = |d: &str| {
        db.jobs(
            &crate::db::read::JobFilter {
                evaluation: eval,
                ..Default::default()
            },
            100,
        )
        .unwrap()
        .into_iter()
        .find(|j| j.name == d)
        .unwrap()
        .build
    };
    [id("base"), id("mid"), id("top"), id("lone")]
}

#[test]
fn restart_follows_failed_dependencies_in_order_and_keeps_attempts() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    let [base, mid, top, lone] = chain(&mut db);
    let (code, v, effects) = call(
        &mut db,
        &mut auth,
        &format!("/admin/build/{base}/restart"),
        "",
    );
    assert_eq!(code, 200, "{v}");
    let order: Vec<i64> = v["restarted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["build"].as_i64().unwrap())
        .collect();
    assert_eq!(order, [base, mid, top]);
    assert_eq!(v["restarted"][0]["attempt"], 2);
    for id in [base, mid, top] {
        assert_eq!(status_of(&db, id.0), status::SCHEDULED);
    }
    assert_eq!(status_of(&db, lone.0), status::FAILED);
    assert_eq!(
        effects,
        [
            Effect::Requeue {
                spec: "hello".into()
            },
            Effect::KeepLog {
                build: base,
                attempt: 1
            },
            Effect::KeepLog {
                build: mid,
                attempt: 1
            },
            Effect::KeepLog {
                build: top,
                attempt: 1
            },
        ]
    );
    let attempts = db.build_attempts(base).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].status,
            attempts[0].stoptime,
            attempts[0].log.as_str()
        ),
        (status::FAILED, 420, "/var/log/guix/drvs/ab/base")
    );
    // The API lists it, with the URL of its log.
    let r = respond(
        &db,
        &tests::request(&format!("/build/{base}/attempts"), "GET"),
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v[0]["buildstatus"], 1);
    assert_eq!(v[0]["log"], format!("/build/{base}/attempt/1/log/raw"));
    // Not finished: refused.
    let (code, v, effects) = call(
        &mut db,
        &mut auth,
        &format!("/admin/build/{base}/restart"),
        "",
    );
    assert_eq!((code, effects.len()), (409, 0), "{v}");
    let (code, _, _) = call(&mut db, &mut auth, "/admin/build/999/restart", "");
    assert_eq!(code, 404);
    let (code, v, _) = call(&mut db, &mut auth, "/admin/build/x/restart", "");
    assert_eq!(code, 400, "{v}");
    // Who did it is recorded.
    let who: String = db
        .connection()
        .query_row("SELECT who FROM AdminLog ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(who, "ops");
}

#[test]
fn evaluation_actions_cancel_restart_and_retry() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    let [base, mid, top, lone] = chain(&mut db);
    let eval = db.build(base).unwrap().unwrap().evaluation;
    let (code, v, effects) = call(
        &mut db,
        &mut auth,
        &format!("/admin/evaluation/{eval}/restart"),
        "",
    );
    assert_eq!(code, 200, "{v}");
    let order: Vec<i64> = v["restarted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["build"].as_i64().unwrap())
        .collect();
    let at = |b: i64| order.iter().position(|&x| x == b).unwrap();
    assert!(at(base.0) < at(mid.0) && at(mid.0) < at(top.0), "{order:?}");
    assert!(order.contains(&lone.0));
    assert!(effects.contains(&Effect::Requeue {
        spec: "hello".into()
    }));
    let (code, v, effects) = call(
        &mut db,
        &mut auth,
        &format!("/admin/evaluation/{eval}/cancel"),
        "",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["canceled"].as_array().unwrap().len(), 4);
    for id in [base, mid, top, lone] {
        assert_eq!(status_of(&db, id.0), status::CANCELED);
    }
    assert_eq!(
        effects,
        [Effect::Requeue {
            spec: "hello".into()
        }]
    );
    let (code, v, effects) = call(
        &mut db,
        &mut auth,
        &format!("/admin/evaluation/{eval}/retry"),
        "",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        effects,
        [Effect::Trigger {
            spec: "hello".into(),
            commit: Some("c3".into())
        }]
    );
    // Evaluation 2's one build is scheduled: canceled alone.
    let (code, v, _) = call(&mut db, &mut auth, "/admin/build/5/cancel", "");
    assert_eq!((code, v["canceled"].clone()), (200, json!([5])));
    let (code, v, _) = call(&mut db, &mut auth, "/admin/build/5/cancel", "");
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        call(&mut db, &mut auth, "/admin/evaluation/77/cancel", "").0,
        404
    );
}

#[test]
fn specification_actions() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    let body = r#"{"name": "new", "url": "https://example.org/new.git", "file": "ci.scm",
                   "proc": "jobs", "arguments": "((a . 1))", "branch": "main"}"#;
    let (code, v, effects) = call(&mut db, &mut auth, "/admin/specification/add", body);
    assert_eq!(code, 200, "{v}");
    let added = db
        .specifications()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "new")
        .unwrap();
    assert_eq!(
        (added.url.as_str(), added.branch.as_deref()),
        ("https://example.org/new.git", Some("main"))
    );
    assert_eq!(effects, [Effect::SpecChanged(Box::new(added))]);
    // The log names the specification added (the path does not).
    let target: String = db
        .connection()
        .query_row(
            "SELECT target FROM AdminLog WHERE action = 'AddSpec' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(target, "new");
    assert_eq!(
        call(&mut db, &mut auth, "/admin/specification/add", body).0,
        409
    );
    let bad = [
        (
            r#"{"name": "x/y", "url": "u", "file": "f", "proc": "p"}"#,
            "field \"name\"",
        ),
        (
            r#"{"name": "z", "file": "f", "proc": "p"}"#,
            "field \"url\": required",
        ),
        (
            r#"{"name": "z", "url": 3}"#,
            "field \"url\": a string is required",
        ),
        (
            r#"{"name": "z", "url": "u", "file": "f", "proc": "p", "arguments": "(("}"#,
            "field \"arguments\"",
        ),
        (r#"[1]"#, "a JSON object is required"),
        (r#"{"#, "not JSON"),
    ];
    for (body, why) in bad {
        let (code, v, _) = call(&mut db, &mut auth, "/admin/specification/add", body);
        assert_eq!(code, 400, "{body}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let (code, _, effects) = call(
        &mut db,
        &mut auth,
        "/admin/specification/new/edit",
        r#"{"branch": "next"}"#,
    );
    assert_eq!(code, 200);
    let Effect::SpecChanged(edited) = &effects[0] else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (edited.branch.as_deref(), edited.file.as_str()),
        (Some("next"), "ci.scm")
    );
    assert_eq!(
        call(&mut db, &mut auth, "/admin/specification/nope/edit", "{}").0,
        404
    );

    let (code, _, effects) = call(
        &mut db,
        &mut auth,
        "/admin/specification/hello/deactivate",
        "",
    );
    assert_eq!(code, 200);
    assert_eq!(
        effects,
        [Effect::SpecStopped {
            spec: "hello".into()
        }]
    );
    assert_eq!(db.specification_active("hello").unwrap(), Some(false));
    assert_eq!(
        call(&mut db, &mut auth, "/admin/specification/hello/trigger", "").0,
        409
    );
    // Its history stays.
    assert!(db.build(BuildId(1)).unwrap().is_some());
    let (code, _, effects) = call(
        &mut db,
        &mut auth,
        "/admin/specification/hello/reactivate",
        "",
    );
    assert_eq!(code, 200);
    assert!(matches!(&effects[..], [Effect::SpecChanged(s)] if s.name == "hello"));
    let (code, _, effects) = call(&mut db, &mut auth, "/admin/specification/hello/trigger", "");
    assert_eq!(code, 200);
    assert_eq!(
        effects,
        [Effect::Trigger {
            spec: "hello".into(),
            commit: None
        }]
    );

    // Deleting asks for the name.
    for body in ["", r#"{"confirm": "other"}"#] {
        let (code, v, _) = call(
            &mut db,
            &mut auth,
            "/admin/specification/hello/delete",
            body,
        );
        assert_eq!(code, 400, "{v}");
    }
    assert!(db.build(BuildId(1)).unwrap().is_some());
    let (code, v, effects) = call(
        &mut db,
        &mut auth,
        "/admin/specification/hello/delete",
        r#"{"confirm": "hello"}"#,
    );
    assert_eq!((code, v["builds"].clone()), (200, json!(4)), "{v}");
    assert_eq!(
        effects,
        [Effect::SpecDeleted {
            spec: "hello".into()
        }]
    );
    // The name is gone at once; the history waits for the loop's chunks,
    // under the tombstone, which no listing shows.
    assert_eq!(db.specification_active("hello").unwrap(), None);
    let names: Vec<String> = db
        .specifications()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["new", "other"]);
    let evals_of = |db: &Db, spec: &str| -> i64 {
        db.connection()
            .query_row(
                "SELECT count(*) FROM Evaluations WHERE specification = ?1",
                [spec],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(evals_of(&db, "hello"), 0);
    assert_eq!(evals_of(&db, "hello/(deleted)"), 1);
    assert!(db.build(BuildId(1)).unwrap().is_some());
    // A tombstone is not a specification to act on.
    assert!(db.delete_specification("hello/(deleted)").is_err());
    assert_eq!(db.specification_active("hello/(deleted)").unwrap(), None);
    // The name may be used again before the old history is gone, and
    // deleted again: the second history joins the first tombstone.
    db.add_specifications(&[spec("hello", Some("master"))])
        .unwrap();
    db.register_evaluation("hello", "eee000", &[job("second")], 300)
        .unwrap();
    let (code, v, _) = call(
        &mut db,
        &mut auth,
        "/admin/specification/hello/delete",
        r#"{"confirm": "hello"}"#,
    );
    assert_eq!((code, v["builds"].clone()), (200, json!(1)), "{v}");
    assert_eq!(evals_of(&db, "hello/(deleted)"), 2);
    // A third time, kept.
    db.add_specifications(&[spec("hello", Some("master"))])
        .unwrap();
    db.register_evaluation("hello", "fff000", &[job("again")], 400)
        .unwrap();
    // A live specification whose name is the tombstone's (a 2018
    // database may have one) is not taken for it.
    db.add_specifications(&[spec("other/(deleted)", None)])
        .unwrap();
    let (code, v, _) = call(
        &mut db,
        &mut auth,
        "/admin/specification/other/delete",
        r#"{"confirm": "other"}"#,
    );
    assert_eq!(code, 409, "{v}");
    assert_eq!(db.specification_active("other").unwrap(), Some(true));
    assert_eq!(
        db.specification_active("other/(deleted)").unwrap(),
        Some(true)
    );
    let mut chunks = 0;
    while let Some(c) = db.spec_deletion_chunk(2).unwrap() {
        chunks += 1;
        assert_eq!(c.tombstone, "hello/(deleted)");
        // The budget, or one build's rows past it (a build, its output).
        assert!(c.chunk.rows <= 2 + 2, "{c:?}");
        assert!(chunks < 100, "{c:?}");
    }
    assert!(chunks > 2, "{chunks} chunks");
    for id in 1..=4 {
        assert!(db.build(BuildId(id)).unwrap().is_none(), "build {id}");
    }
    assert_eq!(evals_of(&db, "hello/(deleted)"), 0);
    assert_eq!(evals_of(&db, "hello"), 1, "the new spec's evaluation stays");
    assert_eq!(db.specification_active("hello").unwrap(), Some(true));
    let tombstones: i64 = db
        .connection()
        .query_row(
            "SELECT count(*) FROM Specifications WHERE deleting = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tombstones, 0);
    assert!(
        db.build(BuildId(5)).unwrap().is_some(),
        "other's builds stay"
    );
}

#[test]
fn every_action_wants_post_and_a_valid_token() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    let actions = crate::routes::ROUTES
        .iter()
        .filter(|(_, r)| crate::routes::is_action(*r))
        .map(|(p, _)| p.replace(":id", "1").replace(":name", "hello"));
    let mut n = 0;
    for target in actions {
        n += 1;
        let before = db.build(BuildId(1)).unwrap();
        let (r, e) = act(&mut db, &post(&target, "", ""), &mut auth, now()).unwrap();
        assert_eq!((r.status, e.len()), (401, 0), "{target}");
        assert!(r.headers.contains(&("WWW-Authenticate", "Bearer".into())));
        let head = "Authorization: Bearer wrong-wrong-wrong-wrong\r\n";
        let (r, e) = act(&mut db, &post(&target, head, ""), &mut auth, now()).unwrap();
        assert_eq!((r.status, e.len()), (403, 0), "{target}");
        for method in ["GET", "HEAD", "PUT"] {
            let (r, e) = act(&mut db, &tests::request(&target, method), &mut auth, now()).unwrap();
            assert_eq!((r.status, e.len()), (405, 0), "{method} {target}");
            assert!(r.headers.contains(&("Allow", "POST".into())));
            // The read API says the same.
            assert_eq!(respond(&db, &tests::request(&target, method)).status, 405);
        }
        assert_eq!(db.build(BuildId(1)).unwrap(), before, "{target}");
    }
    assert_eq!(n, 11);
    // Without a token file, every token is wrong.
    let mut none = Auth::default();
    let head = format!("Authorization: Bearer {TOKEN}\r\n");
    let (r, _) = act(
        &mut db,
        &post("/admin/build/1/restart", &head, ""),
        &mut none,
        now(),
    )
    .unwrap();
    assert_eq!(r.status, 403);
    // Reads are not writes.
    assert!(
        act(
            &mut db,
            &tests::request("/build/1", "GET"),
            &mut auth,
            now()
        )
        .is_none()
    );
}

#[test]
fn dashboard_forms_need_the_session_csrf_token_and_come_back() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    let random: [u8; 64] = std::array::from_fn(|i| i as u8);
    let (id, csrf) = auth.open_session("ops", random, Instant::now());
    let form = |csrf: &str| {
        post(
            "/admin/evaluation/1/cancel",
            &format!(
                "Cookie: cuirass_session={id}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            ),
            &format!("csrf={csrf}&next=%2Feval%2F1"),
        )
    };
    let (r, e) = act(&mut db, &form("forged"), &mut auth, now()).unwrap();
    assert_eq!((r.status, e.len()), (403, 0));
    assert_eq!(status_of(&db, 4), status::SCHEDULED);
    let (r, e) = act(&mut db, &form(&csrf), &mut auth, now()).unwrap();
    assert_eq!(r.status, 303);
    assert!(r.headers.contains(&("Location", "/eval/1".into())));
    assert_eq!(e.len(), 1);
    assert_eq!(status_of(&db, 4), status::CANCELED);
    assert_eq!(admin::redirect(Some("//evil.example/")).headers[0].1, "/");
}

#[test]
fn the_hook_is_rate_limited_and_webhooks_are_signed() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    let hook = |db: &mut Db, auth: &mut Auth, head: &str| {
        let (r, e) = act(
            db,
            &post("/jobset/hello/hook/evaluate", head, ""),
            auth,
            now(),
        )
        .unwrap();
        (r.status, e)
    };
    for _ in 0..crate::admin::TRIGGERS_PER_WINDOW {
        let (code, e) = hook(&mut db, &mut auth, "");
        assert_eq!(code, 200);
        assert_eq!(
            e,
            [Effect::Trigger {
                spec: "hello".into(),
                commit: None
            }]
        );
    }
    assert_eq!(hook(&mut db, &mut auth, ""), (429, vec![]));
    assert_eq!(
        hook(
            &mut db,
            &mut auth,
            "Authorization: Bearer wrong-wrong-wrong-wrong\r\n"
        )
        .0,
        403
    );
    let (r, _) = act(
        &mut db,
        &post("/jobset/nope/hook/evaluate", "", ""),
        &mut auth,
        now(),
    )
    .unwrap();
    assert_eq!(r.status, 404);

    let payload =
        r#"{"ref": "refs/heads/main", "repository": {"clone_url": "file:///srv/other.git/"}}"#;
    let signed = |secret: &[u8]| {
        format!(
            "X-Hub-Signature-256: sha256={}\r\n",
            crate::admin::webhook::sign(secret, payload.as_bytes())
        )
    };
    let push = |db: &mut Db, auth: &mut Auth, head: &str| {
        act(db, &post("/api/push-github", head, payload), auth, now()).unwrap()
    };
    // No secret configured: refused whatever the signature.
    assert_eq!(push(&mut db, &mut auth, &signed(b"s")).0.status, 403);
    auth.webhook_secret = Some(b"0123456789abcdef-secret".to_vec());
    let (r, e) = push(&mut db, &mut auth, &signed(b"0123456789abcdef-wrong"));
    assert_eq!((r.status, e.len()), (401, 0));
    let (r, e) = push(&mut db, &mut auth, "");
    assert_eq!((r.status, e.len()), (401, 0));
    let (r, e) = push(&mut db, &mut auth, &signed(b"0123456789abcdef-secret"));
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["triggered"], json!(["other"]));
    assert_eq!(
        e,
        [Effect::Trigger {
            spec: "other".into(),
            commit: None
        }]
    );
}

#[test]
fn spec_urls_match_the_fixture() {
    assert_eq!(spec("other", None).url, "file:///srv/other.git");
}

#[test]
fn a_push_to_another_branch_triggers_no_spec_that_follows_one() {
    let (mut db, _root) = fixture();
    let mut auth = auth();
    auth.webhook_secret = Some(b"0123456789abcdef-secret".to_vec());
    let mut spec = spec("follows", Some("main"));
    spec.url = "file:///srv/other.git".into();
    db.add_specifications(&[spec]).unwrap();
    let push = |db: &mut Db, auth: &mut Auth, payload: &str| {
        let head = format!(
            "X-Gitea-Signature: {}\r\n",
            crate::admin::webhook::sign(b"0123456789abcdef-secret", payload.as_bytes())
        );
        let (r, _) = act(db, &post("/api/push-gitea", &head, payload), auth, now()).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["triggered"].clone()
    };
    let url = r#""repository": {"clone_url": "file:///srv/other.git"}"#;
    // `other` follows no branch; `follows` follows main.
    let to = |branch: &str| format!(r#"{{"ref": "refs/heads/{branch}", {url}}}"#);
    assert_eq!(push(&mut db, &mut auth, &to("dev")), json!(["other"]));
    assert_eq!(
        push(&mut db, &mut auth, &to("main")),
        json!(["follows", "other"])
    );
    // Without a ref, both; then `other` is over its limit.
    let no_ref = format!("{{{url}}}");
    assert_eq!(
        push(&mut db, &mut auth, &no_ref),
        json!(["follows", "other"])
    );
    assert_eq!(push(&mut db, &mut auth, &no_ref), json!(["follows"]));
}

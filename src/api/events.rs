//! An event as the notification command reads it on its standard input:
//! one JSON object (man page, NOTIFICATIONS).

use crate::db::events::EventView;
use crate::db::read::weather;
use serde_json::{Value, json};

/// The event's JSON: `{"id", "kind", "timestamp", "specification",
/// "evaluation", "commit", "build", "job", "derivation", "status",
/// "weather", "error", "url", "notifications"}`; fields that do not apply
/// to its kind are null, and `notifications` lists the specification's
/// `email` and `mastodon` records as `/specifications` does.
pub fn event_json(e: &EventView, base_url: &str) -> Value {
    let notifications = e
        .record
        .as_deref()
        .and_then(|text| crate::spec::record::from_text(text).ok())
        .and_then(|spec| spec.record)
        .map_or_else(Vec::new, |r| super::records::notifications_json(&r));
    json!({
        "id": e.id,
        "kind": e.kind,
        "timestamp": e.timestamp,
        "specification": e.specification,
        "evaluation": e.evaluation,
        "commit": e.revision,
        "build": e.build,
        "job": e.job_name,
        "derivation": e.derivation,
        "status": e.status,
        "weather": e.weather.map(weather::name),
        "error": e.error,
        "url": format!("{base_url}{}", crate::notify::page_path(e)),
        "notifications": notifications,
    })
}

/// The bytes the command reads: the JSON and a newline.
pub fn event_bytes(e: &EventView, base_url: &str) -> Vec<u8> {
    let mut out = event_json(e, base_url).to_string().into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{BuildId, EvalId};

    /// A record spec with an email notification, as the database keeps it.
    fn stored_record() -> String {
        let text = r#"(list (specification (name "r") (build 'hello)
             (notifications (list (email (from "ci@x") (to "dev@x") (server "s"))))
             (channels (list (channel (name 'a) (url "file:///a"))))))"#;
        let Ok(crate::spec::Parsed::Specs(specs)) = crate::spec::read_spec_text("t.scm", text)
        else {
            panic!("not read")
        };
        specs[0].record.as_ref().unwrap().to_text("r")
    }

    #[test]
    fn a_weather_change_and_a_failed_evaluation_as_json() {
        let change = EventView {
            id: 3,
            timestamp: 1_700_000_000,
            kind: "new-failure".into(),
            specification: "r".into(),
            evaluation: EvalId(7),
            revision: "abc".into(),
            build: Some(BuildId(42)),
            job_name: Some("hello".into()),
            derivation: Some("/gnu/store/x-hello.drv".into()),
            status: Some(crate::db::status::FAILED),
            weather: Some(1),
            error: None,
            delivery: 0,
            attempts: 0,
            record: Some(stored_record()),
        };
        assert_eq!(
            event_json(&change, "https://ci.example.org"),
            json!({"id": 3, "kind": "new-failure", "timestamp": 1_700_000_000,
                   "specification": "r", "evaluation": 7, "commit": "abc", "build": 42,
                   "job": "hello", "derivation": "/gnu/store/x-hello.drv", "status": 1,
                   "weather": "new-failure", "error": null,
                   "url": "https://ci.example.org/build/42/details",
                   "notifications": [{"type": "email", "from": "ci@x", "to": "dev@x",
                                      "server": "s"}]})
        );
        let failed = EventView {
            kind: "evaluation-failed".into(),
            build: None,
            job_name: None,
            derivation: None,
            status: None,
            weather: None,
            error: Some("no \"ci.scm\"\n".into()),
            record: None,
            ..change
        };
        let v = event_json(&failed, "http://localhost:8080");
        assert_eq!(
            (&v["url"], &v["error"], &v["build"], &v["notifications"]),
            (
                &json!("http://localhost:8080/eval/7"),
                &json!("no \"ci.scm\"\n"),
                &Value::Null,
                &json!([])
            )
        );
        // One line: the newline in the error is escaped.
        let bytes = event_bytes(&failed, "http://h");
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}

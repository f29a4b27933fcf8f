//! Today's specification object, for specs read from `specification`
//! records: the fields Cuirass 1.3's `specification->json-object` gives
//! (`name`, `build`, `channels`, `build-outputs`, `notifications`,
//! `priority`, `systems`), plus `period` and `is-active?`.

use crate::sexp::{self, Datum, Kind};
use crate::spec::Record;
use serde_json::{Map, Value, json};

/// A datum as Cuirass's JSON writer gives it: symbols and strings as
/// strings, lists as arrays.
fn datum_json(d: &Datum) -> Value {
    match &d.kind {
        Kind::Symbol(s) | Kind::Str(s) | Kind::Keyword(s) => json!(s),
        Kind::Int(n) => json!(n),
        Kind::Bool(b) => json!(b),
        Kind::List(items) => Value::Array(items.iter().map(datum_json).collect()),
        _ => json!(d.to_string()),
    }
}

fn parsed(text: &str) -> Option<Datum> {
    sexp::parse_all(text).ok()?.pop()
}

/// `(<email> (from . "a") ...)` → `{"type": "email", "from": "a", ...}`.
fn notification_json(d: &Datum) -> Value {
    let mut out = Map::new();
    if let Some([head, fields @ ..]) = d.as_list() {
        let tag = head.as_symbol().unwrap_or_default();
        out.insert("type".into(), json!(tag.trim_matches(['<', '>'])));
        for f in fields {
            if let Some((k, v)) = f.as_pair() {
                out.insert(k.to_string(), datum_json(&v));
            }
        }
    }
    Value::Object(out)
}

pub(super) fn record_json(name: &str, r: &Record) -> Value {
    let channels: Vec<Value> = r
        .channels
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "url": c.url,
                "branch": c.branch,
                "commit": c.commit,
                "introduction": c.introduction.as_ref().map(|i| json!({
                    "commit": i.commit,
                    "signer": i.signer,
                })),
            })
        })
        .collect();
    let outputs: Vec<Value> = r
        .build_outputs
        .iter()
        .map(|o| json!({"job": o.job, "type": o.kind, "output": o.output, "path": o.path}))
        .collect();
    let notifications: Vec<Value> = parsed(&r.notifications)
        .and_then(|d| {
            d.as_list()
                .map(|l| l.iter().map(notification_json).collect())
        })
        .unwrap_or_default();
    json!({
        "name": name,
        "build": parsed(&r.build).map_or(Value::Null, |d| datum_json(&d)),
        "channels": channels,
        "build-outputs": outputs,
        "notifications": notifications,
        "period": r.period,
        "priority": r.priority,
        "systems": r.systems,
        "is-active?": r.is_active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Parsed, read_spec_text};

    #[test]
    fn todays_specification_object() {
        let text = r#"(list (specification (name "r") (build '(custom (a ci)))
             (notifications (list (email (from "a@b") (to "c@d") (server "s")) (mastodon)))
             (channels (list (channel (name 'a) (url "file:///a") (commit "c1"))))
             (systems '("x86_64-linux"))))"#;
        let Ok(Parsed::Specs(specs)) = read_spec_text("t.scm", text) else {
            panic!("not read")
        };
        let r = specs[0].record.as_ref().unwrap();
        assert_eq!(
            record_json("r", r),
            json!({
                "name": "r",
                "build": ["custom", ["a", "ci"]],
                "channels": [{"name": "a", "url": "file:///a", "branch": "master",
                              "commit": "c1", "introduction": null}],
                "build-outputs": [],
                "notifications": [{"type": "email", "from": "a@b", "to": "c@d", "server": "s"},
                                  {"type": "mastodon"}],
                "period": 0,
                "priority": 9,
                "systems": ["x86_64-linux"],
                "is-active?": true,
            })
        );
    }
}

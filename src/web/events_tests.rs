//! Weather and events on the dashboard: the newly-failed filter, the
//! build page, `/metrics` and the Atom feed.

use super::tests::{NOW, fixture, get_with, job, page, parse_prometheus, rows};
use super::*;
use std::path::PathBuf;

/// The fixture, then a second evaluation of `hello` where `ok` fails (a
/// new failure) and the `<script>` job succeeds (it failed a dependency:
/// fixed), `bad` still fails.
fn weathered() -> (Db, PathBuf) {
    let (mut db, root) = fixture();
    let jobs: Vec<_> = ["ok", "bad", "<script>alert(1)</script>"]
        .iter()
        .map(|n| job(n, "2"))
        .collect();
    let eval = db.begin_evaluation("hello", "c2", NOW - 600).unwrap();
    db.add_jobs("hello", eval, &jobs, NOW - 600).unwrap();
    db.complete_evaluation("hello", eval, "c2", NOW - 590)
        .unwrap();
    db.build_finished(
        &jobs[0].derivation,
        crate::db::status::FAILED,
        None,
        NOW - 500,
    )
    .unwrap();
    db.build_finished(
        &jobs[1].derivation,
        crate::db::status::FAILED,
        None,
        NOW - 400,
    )
    .unwrap();
    db.build_finished(
        &jobs[2].derivation,
        crate::db::status::SUCCEEDED,
        None,
        NOW - 300,
    )
    .unwrap();
    (db, root)
}

#[test]
fn an_evaluation_filters_its_new_failures() {
    let (db, root) = weathered();
    let body = page(&db, &root, "/eval/3?status=newly-failed");
    assert!(
        body.contains("<a class=\"on\" href=\"/eval/3?status=newly-failed\">newly-failed (1)</a>"),
        "{body}"
    );
    let found = rows(&body);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("<td>ok</td>"), "{}", found[0]);
    assert!(page(&db, &root, "/eval/3?status=failed").contains("failed (2)"));
    // The first evaluation had nothing to compare with.
    assert!(rows(&page(&db, &root, "/eval/1?status=newly-failed")).is_empty());
    let ok = page(&db, &root, "/build/5/details");
    assert!(ok.contains("<dt>Weather</dt><dd>new-failure</dd>"), "{ok}");
    let bad = page(&db, &root, "/build/6/details");
    assert!(bad.contains("<dd>still-failing</dd>"), "{bad}");
}

#[test]
fn metrics_count_weathers_by_specification_and_events_by_delivery() {
    let (db, root) = weathered();
    let (_, _, text) = get_with(&db, &root, "/metrics", &HttpCounters::default());
    let (samples, typed) = parse_prometheus(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&(k.to_string(), v.to_string())))
            })
            .unwrap_or_else(|| panic!("{name} {labels:?}\n{text}"))
            .2
    };
    let weather = |w| {
        value(
            "cuirass_build_weather_total",
            &[("spec", "hello"), ("weather", w)],
        )
    };
    assert_eq!(weather("new-failure"), 1.0);
    assert_eq!(weather("new-success"), 1.0);
    assert_eq!(weather("still-failing"), 1.0);
    assert_eq!(weather("unknown"), 3.0);
    // Two weather changes and the failed evaluation of `quiet`; no
    // notification command in this database.
    assert_eq!(value("cuirass_events", &[("delivery", "none")]), 3.0);
    assert_eq!(value("cuirass_events", &[("delivery", "queued")]), 0.0);
    for family in ["cuirass_build_weather_total", "cuirass_events"] {
        assert!(typed.contains(&family.to_string()), "{family}");
    }
}

#[test]
fn the_feed_lists_events_newest_first_escaped_with_absolute_links() {
    let (db, root) = weathered();
    let (code, ct, xml) = get_with(&db, &root, "/events/rss", &HttpCounters::default());
    assert_eq!((code, ct.as_str()), (200, feed::CONTENT_TYPE));
    assert!(xml.starts_with(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">"
    ));
    assert!(xml.ends_with("</feed>\n"));
    let titles: Vec<&str> = xml
        .split("<title>")
        .skip(2)
        .map(|t| t.split("</title>").next().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "&quot;hello&quot;: job &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot; fixed (build 7)",
            "&quot;hello&quot;: job &quot;ok&quot; newly failed (build 5)",
            "&quot;quiet&quot;: evaluation 2 failed",
        ]
    );
    assert!(!xml.contains("<script>"));
    assert!(xml.contains("<link href=\"http://ci.example.org/build/7/details\"/>"));
    assert!(xml.contains("<link href=\"http://ci.example.org/eval/2\"/>"));
    assert!(xml.contains("Error: boom &lt;oops&gt;</content>"));
    assert!(
        xml.contains("<updated>2023-11-14T22:08:20Z</updated>"),
        "{xml}"
    );
    // Every element opened is closed, in order (a small well-formedness
    // check: no XML parser among the dependencies).
    let mut open: Vec<String> = Vec::new();
    for tag in xml.split('<').skip(2) {
        let tag = tag.split('>').next().unwrap();
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "{xml}");
        } else if !tag.ends_with('/') {
            open.push(tag.split(' ').next().unwrap().to_string());
        }
    }
    assert!(open.is_empty(), "{open:?}");
}

#[test]
fn the_feed_is_bounded_and_valid_when_empty() {
    let db = Db::open_in_memory().unwrap();
    let xml = feed::render(&db.latest_events(10).unwrap(), "https://ci", NOW);
    assert!(!xml.contains("<entry>"));
    assert!(xml.contains("<updated>2023-11-14T22:13:20Z</updated>"));
    assert!(xml.contains("<id>https://ci/events/rss</id>"));
    assert_eq!(feed::FEED_ENTRIES, 50);
}

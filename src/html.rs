//! HTML for the dashboard, pure: escaping, URL components, the page
//! layout with its one stylesheet, and the little formatters (statuses,
//! relative times, durations).  Every byte of text that comes from the
//! database or the request reaches a page through [`esc`] or [`url`].

use crate::db::status;

/// Escapes text for HTML (and XML) content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment or query value: a specification named
/// `a/b?c` must still link to its own page.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Hydra's status names, as the API's `status` filter spells them.
pub fn status_name(s: i64) -> &'static str {
    match s {
        status::SCHEDULED => "scheduled",
        status::STARTED => "started",
        status::SUCCEEDED => "succeeded",
        status::FAILED => "failed",
        status::FAILED_DEPENDENCY => "failed-dependency",
        status::FAILED_OTHER => "failed-other",
        status::CANCELED => "canceled",
        _ => "unknown",
    }
}

/// A status as a coloured label; the class carries the colour.
pub fn status_badge(s: i64) -> String {
    let name = status_name(s);
    format!("<span class=\"st st-{name}\">{name}</span>")
}

/// "3 minutes ago" from Unix times; `now` is a parameter so that a page
/// renders the same in a test every time.
pub fn ago(now: i64, t: i64) -> String {
    if t <= 0 {
        return "never".into();
    }
    let d = now - t;
    if d < 0 {
        return "in the future".into();
    }
    let (n, unit) = match d {
        0..=59 => {
            return if d < 5 {
                "just now".into()
            } else {
                format!("{d} seconds ago")
            };
        }
        60..=3599 => (d / 60, "minute"),
        3600..=86_399 => (d / 3600, "hour"),
        86_400..=2_591_999 => (d / 86_400, "day"),
        2_592_000..=31_535_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// A relative time with the absolute UTC time as its tooltip.
pub fn time(now: i64, t: i64) -> String {
    if t <= 0 {
        return "—".into();
    }
    format!("<time title=\"{}\">{}</time>", utc(t), ago(now, t))
}

/// `2024-05-01 12:00:00 UTC`, by the days-to-civil algorithm, so that no
/// time-zone database is needed.
pub fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `1h 2m`, `3m 4s`, `5s`.
pub fn duration(secs: i64) -> String {
    match secs {
        s if s < 0 => "—".into(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, s / 60 % 60),
    }
}

/// A whole page: `crumbs` are (href, label) pairs leading to this page,
/// whose own title comes last without a link.  Both are escaped here;
/// `body` is HTML already.
pub fn page(title: &str, crumbs: &[(String, String)], body: &str) -> String {
    let mut nav = String::from("<a href=\"/\">cuirass</a>");
    for (href, label) in crumbs {
        nav.push_str(&format!(
            " <span>›</span> <a href=\"{}\">{}</a>",
            esc(href),
            esc(label)
        ));
    }
    nav.push_str(&format!(" <span>›</span> {}", esc(title)));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} — cuirass</title><style>{STYLE}</style></head>\n\
         <body><header><nav>{nav}</nav>\
         <form action=\"/search\" method=\"get\"><input type=\"search\" name=\"query\" \
         placeholder=\"Search jobs\" aria-label=\"Search jobs\"></form></header>\n\
         <main><h1>{}</h1>\n{body}</main></body></html>\n",
        esc(title),
        esc(title)
    )
}

/// A table, or a sentence when there are no rows.  A heading that starts
/// with `~` names a column hidden on a phone (its cells say `hide-s`).
pub fn table(head: &[&str], rows: &[String], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", esc(empty));
    }
    let th: String = head
        .iter()
        .map(|h| match h.strip_prefix('~') {
            Some(h) => format!("<th class=\"hide-s\">{}</th>", esc(h)),
            None => format!("<th>{}</th>", esc(h)),
        })
        .collect();
    format!(
        "<div class=\"scroll\"><table><thead><tr>{th}</tr></thead><tbody>\n{}</tbody></table></div>",
        rows.concat()
    )
}

/// Previous/next links for page `page` (from 1); `href` makes the link of
/// a page number.
pub fn pager(page: u32, has_next: bool, href: impl Fn(u32) -> String) -> String {
    let prev = match page > 1 {
        true => format!(
            "<a rel=\"prev\" href=\"{}\">← newer</a>",
            esc(&href(page - 1))
        ),
        false => "<span class=\"dim\">← newer</span>".into(),
    };
    let next = match has_next {
        true => format!(
            "<a rel=\"next\" href=\"{}\">older →</a>",
            esc(&href(page + 1))
        ),
        false => "<span class=\"dim\">older →</span>".into(),
    };
    format!("<p class=\"pager\">{prev} <span>page {page}</span> {next}</p>")
}

/// The one stylesheet: system fonts, a table that scrolls sideways on a
/// phone rather than squeezing, and one colour per status.
const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2430;background:#f5f6f8}\
header{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:center;justify-content:space-between;\
padding:.6em 1em;background:#22304a;color:#cfd8e6}\
header a{color:#fff;text-decoration:none}header nav a:first-child{font-weight:700}\
header input{padding:.3em .6em;border:0;border-radius:4px;min-width:12em}\
main{max-width:72em;margin:0 auto;padding:1em}\
h1{font-size:1.35em;margin:.3em 0 .8em;word-break:break-all}h2{font-size:1.1em;margin-top:1.6em}\
a{color:#1f5fbf}.dim{color:#8a93a3}.empty{color:#5b6474;font-style:italic}\
.scroll{overflow-x:auto;background:#fff;border:1px solid #dde1e7;border-radius:6px}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.45em .7em;border-bottom:1px solid #eceff3;vertical-align:top}\
th{font-size:.8em;text-transform:uppercase;letter-spacing:.04em;color:#5b6474;background:#fafbfc}\
tbody tr:last-child td{border-bottom:0}\
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}\
td code{word-break:break-all}\
pre{background:#161b22;color:#d8dee9;padding:.8em;border-radius:6px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em;background:#fff;\
border:1px solid #dde1e7;border-radius:6px;padding:.8em}dt{color:#5b6474}dd{margin:0;word-break:break-all}\
.st{display:inline-block;padding:.05em .5em;border-radius:3px;font-size:.85em;font-weight:600;color:#fff;white-space:nowrap}\
.st-succeeded{background:#2e8540}.st-failed,.st-failed-other{background:#c62828}\
.st-failed-dependency{background:#e67e00}.st-scheduled{background:#7b8494}\
.st-started{background:#1f6fd1}.st-canceled{background:#c9ced6;color:#4a5160}.st-unknown{background:#555}\
.n-ok{color:#2e8540;font-weight:600}.n-fail{color:#c62828;font-weight:600}.n-pending{color:#5b6474}\
.filters{display:flex;flex-wrap:wrap;gap:.4em;align-items:center;margin:.5em 0 1em}\
.filters a{padding:.2em .7em;border:1px solid #c9ced6;border-radius:999px;text-decoration:none;background:#fff}\
.filters a.on{background:#22304a;color:#fff;border-color:#22304a}\
.filters input{padding:.25em .5em}.pager{display:flex;gap:1em;justify-content:center}\
.actions{display:flex;flex-wrap:wrap;gap:.5em;margin:.5em 0 1em}.actions form{margin:0}\
.actions button{padding:.3em .8em;border:1px solid #b8c0cc;border-radius:4px;background:#fff;cursor:pointer}\
@media (max-width:600px){body{font-size:14px}main{padding:.6em}th,td{padding:.35em .45em}.hide-s{display:none}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(url("a b&c/d?é"), "a%20b%26c%2Fd%3F%C3%A9");
    }

    #[test]
    fn times() {
        let now = 1_700_000_000;
        assert_eq!(ago(now, now - 2), "just now");
        assert_eq!(ago(now, now - 30), "30 seconds ago");
        assert_eq!(ago(now, now - 60), "1 minute ago");
        assert_eq!(ago(now, now - 180), "3 minutes ago");
        assert_eq!(ago(now, now - 7200), "2 hours ago");
        assert_eq!(ago(now, now - 86_400 * 3), "3 days ago");
        assert_eq!(ago(now, 0), "never");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m 5s");
        assert_eq!(duration(3725), "1h 2m");
    }
}

//! What log lines share: the target naming the part of cuirass a line
//! comes from, and names shown so that they cannot break a line (pure).
//!
//! env_logger prints the target beside the level, `RUST_LOG` filters on
//! it (`RUST_LOG=info,cuirass::building=debug`), and it says which part
//! spoke even when the line comes from code shared between parts (the
//! build events of a batch submitted while the evaluator still runs are
//! `building`, not `evaluation`).

use std::fmt;

/// Git fetches and their child process.
pub const FETCH: &str = "cuirass::fetch";
/// `./bootstrap`, `./configure`, `make` in a checkout.
pub const COMPILE: &str = "cuirass::compile";
/// The evaluator, its output, and the evaluations recorded.
pub const EVALUATION: &str = "cuirass::evaluation";
/// Batches handed to guix-daemon and the build events it sends back.
pub const BUILDING: &str = "cuirass::building";
/// The HTTP server, the API and the dashboard.
pub const HTTP: &str = "cuirass::http";
/// Specification files read at start-up or on SIGHUP.
pub const SPEC: &str = "cuirass::spec";

/// A name (of a spec, a job, a derivation, a ref) as a log line shows it:
/// bare when it is one plain word, as nearly all are, else quoted with
/// Rust's escapes, so that a newline or a space in it can neither split
/// the line nor pass for the next field.
pub struct Shown<'a>(pub &'a str);

pub fn shown(name: &str) -> Shown<'_> {
    Shown(name)
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && !self
                .0
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\\');
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_break_a_log_line_are_quoted() {
        for (name, expect) in [
            ("hello", "hello"),
            ("gtk+-3.24.x86_64-linux", "gtk+-3.24.x86_64-linux"),
            ("/gnu/store/abc-x.drv", "/gnu/store/abc-x.drv"),
            ("été", "été"),
            ("", r#""""#),
            ("a\nb", r#""a\nb""#),
            ("a b", r#""a b""#),
            ("a\u{2028}b", r#""a\u{2028}b""#),
            ("a\rb\x1b[31m", r#""a\rb\u{1b}[31m""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("back\\slash", r#""back\\slash""#),
        ] {
            let line = format!("spec={} new commit", shown(name));
            assert_eq!(line, format!("spec={expect} new commit"), "{name:?}");
            assert!(!line.contains(['\n', '\r']), "{line}");
        }
    }
}

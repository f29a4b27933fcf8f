//! The binary's options and its man page stay in step.

use std::collections::BTreeSet;
use std::process::Command;

fn long_options(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("--") {
        let start = i + pos + 2;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(text.len() - start);
        if end > start && bytes[start].is_ascii_alphabetic() {
            found.insert(text[start..end].to_string());
        }
        i = end.max(start);
    }
    found
}

#[test]
fn help_and_man_page_name_the_same_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_cuirass"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = long_options(&String::from_utf8(out.stdout).unwrap());
    let man_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/cuirass.1"))
        .unwrap()
        .replace("\\-", "-");
    // Options the man page documents: the tag line after each .TP.
    let lines: Vec<&str> = man_text.lines().collect();
    let man: BTreeSet<String> = lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .flat_map(|w| long_options(w[1]))
        .collect();
    assert!(help.len() >= 14, "{help:?}");
    assert_eq!(help, man, "--help and man/cuirass.1 disagree");
}

#[test]
fn version_and_bad_options() {
    let bin = env!("CARGO_BIN_EXE_cuirass");
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cuirass "));
    let out = Command::new(bin).arg("--interval=soon").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));
}

//! Fuzzes the routing path normaliser: it must never panic, and every path it accepts must come
//! out normal (rooted, no `//`, no `.` or `..` segment) and stay put when normalised again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;

#[path = "../../src/route/path.rs"]
mod path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    // Most raw inputs lack the leading '/' and stop at the first check; this one always has it.
    check(&format!("/{text}"));
});

fn check(input: &str) {
    let Ok(normal) = path::normalize(input) else {
        return;
    };
    assert!(normal.starts_with('/'), "{input:?} -> {normal:?}");
    assert!(!normal.contains("//"), "{input:?} -> {normal:?}");
    let segments: Vec<&str> = normal[1..].split('/').collect();
    assert!(
        !segments.iter().any(|s| matches!(*s, "." | "..")),
        "{input:?} -> {normal:?}"
    );
    let mut again = normal.as_bytes().to_vec();
    assert_eq!(path::resolve(&mut again), Ok(()), "{input:?}");
    assert_eq!(
        again,
        normal.as_bytes(),
        "resolve is not idempotent on {input:?}"
    );
    // A decoded '%' would be decoded again, so normalize itself is a fixed point only without one.
    if !normal.contains('%') {
        let twice = path::normalize(&normal);
        assert!(
            matches!(twice, Ok(Cow::Borrowed(p)) if p == normal),
            "{input:?} -> {normal:?} -> {twice:?}"
        );
    }
}

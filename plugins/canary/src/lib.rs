//! Built-in plugin `canary`: ingress-nginx's canary annotations: `canary` (a boolean),
//! `canary-by-header`, `canary-by-header-value`, `canary-by-header-pattern`,
//! `canary-by-cookie`, `canary-weight` (default 0) and `canary-weight-total` (default 100).
//!
//! Owns only these keys and only states the rule, as one [`Directive::Canary`]; the host
//! executes the split natively (header, then cookie, then weight, as ingress-nginx does), so a
//! canary route costs no Wasm call per request. Finding the main Ingress (same host, path and
//! path type in the same namespace) and attaching the canary's backends to it is the host's
//! job too. Where ingress-nginx silently falls back to a default (a bad weight, a header name
//! it cannot use) this plugin reports an error instead; where it quietly reinterprets a value
//! (a total below 100, a pattern next to a value) it does the same, with a warning.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::validate::is_header_name;
use wasmgress_plugin_sdk::{
    Canary, Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Settings, export_plugin,
    info, parse_bool,
};

/// `canary`
pub const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
/// `canary-by-header`
pub const BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
/// `canary-by-header-value`
pub const BY_HEADER_VALUE: &str = "nginx.ingress.kubernetes.io/canary-by-header-value";
/// `canary-by-header-pattern`
pub const BY_HEADER_PATTERN: &str = "nginx.ingress.kubernetes.io/canary-by-header-pattern";
/// `canary-by-cookie`
pub const BY_COOKIE: &str = "nginx.ingress.kubernetes.io/canary-by-cookie";
/// `canary-weight`
pub const WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
/// `canary-weight-total`
pub const WEIGHT_TOTAL: &str = "nginx.ingress.kubernetes.io/canary-weight-total";

const KEYS: [&str; 7] = [
    CANARY,
    BY_HEADER,
    BY_HEADER_VALUE,
    BY_HEADER_PATTERN,
    BY_COOKIE,
    WEIGHT,
    WEIGHT_TOTAL,
];

/// The weight total ingress-nginx's balancer uses unless a larger one is given.
pub const DEFAULT_WEIGHT_TOTAL: u32 = 100;

/// ingress-nginx's `BasicChars`: what `canary-by-header-value` may contain.
fn is_basic_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_' | b'~' | b':')
}

/// A non-negative decimal integer that fits a `u32`.
fn parse_u32(value: &str) -> Option<u32> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// `canary`: Go's `strconv.ParseBool`; `None` (with an error recorded) when it is not one.
fn enabled(settings: &Settings, diags: &mut Diagnostics) -> Option<bool> {
    match settings.get(CANARY) {
        None => Some(false),
        Some(v) => {
            let parsed = parse_bool(v);
            if parsed.is_none() {
                diags.error(
                    CANARY,
                    format!(
                        "`{v}` is not a boolean (accepted: 1, t, T, TRUE, true, True, \
                         0, f, F, FALSE, false, False)"
                    ),
                );
            }
            parsed
        }
    }
}

/// `canary-weight`: default 0.
fn weight(settings: &Settings, diags: &mut Diagnostics) -> u32 {
    match settings.get(WEIGHT) {
        None => 0,
        Some(v) => parse_u32(v).unwrap_or_else(|| {
            diags.error(
                WEIGHT,
                format!("`{v}` is not a non-negative whole number (for example \"10\")"),
            );
            0
        }),
    }
}

/// `canary-weight-total`: default 100; below 100 reads as 100, as ingress-nginx's balancer
/// does.
fn weight_total(settings: &Settings, diags: &mut Diagnostics) -> u32 {
    match settings.get(WEIGHT_TOTAL) {
        None => DEFAULT_WEIGHT_TOTAL,
        Some(v) => match parse_u32(v) {
            Some(0) | None => {
                diags.error(
                    WEIGHT_TOTAL,
                    format!("`{v}` is not a positive whole number (for example \"1000\")"),
                );
                DEFAULT_WEIGHT_TOTAL
            }
            Some(n) if n < DEFAULT_WEIGHT_TOTAL => {
                diags.warning(
                    WEIGHT_TOTAL,
                    format!(
                        "{n} is below {DEFAULT_WEIGHT_TOTAL}: it is read as \
                         {DEFAULT_WEIGHT_TOTAL}, as ingress-nginx does (weights are out of \
                         {DEFAULT_WEIGHT_TOTAL})"
                    ),
                );
                DEFAULT_WEIGHT_TOTAL
            }
            Some(n) => n,
        },
    }
}

/// `canary-by-header`: an RFC 9110 field name, lowercased.
fn by_header(settings: &Settings, diags: &mut Diagnostics) -> Option<String> {
    let v = settings.get(BY_HEADER)?;
    let name = v.trim();
    // Empty is not set, as in ingress-nginx.
    if name.is_empty() {
        None
    } else if !is_header_name(name) {
        diags.error(
            BY_HEADER,
            format!("`{v}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
        None
    } else {
        Some(name.to_ascii_lowercase())
    }
}

/// `canary-by-header-value`: ingress-nginx's basic characters; empty is not set.
fn by_header_value(settings: &Settings, diags: &mut Diagnostics) -> Option<String> {
    let v = settings.get(BY_HEADER_VALUE)?;
    let value = v.trim();
    if value.is_empty() {
        None
    } else if !value.bytes().all(is_basic_char) {
        diags.error(
            BY_HEADER_VALUE,
            format!("`{v}` may only contain letters, digits and / . - _ ~ : (as in ingress-nginx)"),
        );
        None
    } else {
        Some(value.to_string())
    }
}

/// `canary-by-cookie`: an RFC 6265 cookie name (a token).
fn by_cookie(settings: &Settings, diags: &mut Diagnostics) -> Option<String> {
    let v = settings.get(BY_COOKIE)?;
    let name = v.trim();
    if name.is_empty() {
        None
    } else if is_header_name(name) {
        Some(name.to_string())
    } else {
        diags.error(
            BY_COOKIE,
            format!("`{v}` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
        None
    }
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let enabled = enabled(settings, &mut diags);
    // Checked whether or not the canary is enabled, so that every problem shows at once.
    let weight = weight(settings, &mut diags);
    let weight_total = weight_total(settings, &mut diags);
    let by_header = by_header(settings, &mut diags);
    let header_given = settings.get(BY_HEADER).is_some();
    let mut by_header_value = by_header_value(settings, &mut diags);
    let mut by_header_pattern = settings
        .get(BY_HEADER_PATTERN)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let by_cookie = by_cookie(settings, &mut diags);

    if !header_given {
        for (key, given) in [
            (BY_HEADER_VALUE, by_header_value.is_some()),
            (BY_HEADER_PATTERN, by_header_pattern.is_some()),
        ] {
            if given {
                diags.warning(
                    key,
                    format!("has no effect without {BY_HEADER}; it is ignored"),
                );
            }
        }
        by_header_value = None;
        by_header_pattern = None;
    } else if by_header_value.is_some() && by_header_pattern.is_some() {
        diags.warning(
            BY_HEADER_PATTERN,
            format!("is ignored because {BY_HEADER_VALUE} is set (as in ingress-nginx)"),
        );
        by_header_pattern = None;
    }

    match enabled {
        Some(true) => {
            policy.push(Directive::Canary(Canary {
                by_header,
                by_header_value,
                by_header_pattern,
                by_cookie,
                weight,
                weight_total,
            }));
        }
        Some(false) => {
            // As ingress-nginx: only settings that would route something make the Ingress
            // "configured but not enabled"; a zero weight or an empty name is inert.
            let configuring = [
                (WEIGHT, weight > 0),
                (
                    BY_HEADER,
                    settings
                        .get(BY_HEADER)
                        .is_some_and(|v| !v.trim().is_empty()),
                ),
                (
                    BY_HEADER_VALUE,
                    settings
                        .get(BY_HEADER_VALUE)
                        .is_some_and(|v| !v.trim().is_empty()),
                ),
                (
                    BY_HEADER_PATTERN,
                    settings
                        .get(BY_HEADER_PATTERN)
                        .is_some_and(|v| !v.is_empty()),
                ),
                (
                    BY_COOKIE,
                    settings
                        .get(BY_COOKIE)
                        .is_some_and(|v| !v.trim().is_empty()),
                ),
            ];
            for (key, _) in configuring.iter().filter(|(_, on)| *on) {
                diags.error(
                    key,
                    format!(
                        "canary configured but not enabled: set {CANARY}: \"true\" to make \
                         this Ingress a canary, or remove the canary-* annotations \
                         (ingress-nginx rejects this too)"
                    ),
                );
            }
        }
        // The bad boolean is already reported.
        None => {}
    }
    diags.finish(policy)
}

struct CanaryPlugin;

impl Plugin for CanaryPlugin {
    type Config = ();

    fn info() -> Info {
        info("canary", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(CanaryPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::Severity;

    fn canary(pairs: &[(&str, &str)]) -> (Canary, Vec<Diagnostic>) {
        let p = policy(&Settings::from_pairs(pairs)).expect("valid");
        let mut canaries = p.directives.into_iter().map(|d| match d {
            Directive::Canary(c) => c,
            other => panic!("unexpected directive {other:?}"),
        });
        let c = canaries.next().expect("a canary directive");
        assert!(canaries.next().is_none(), "exactly one directive");
        (c, p.notes)
    }

    fn refused(pairs: &[(&str, &str)]) -> Vec<Diagnostic> {
        let e = policy(&Settings::from_pairs(pairs)).expect_err("refused");
        assert!(e.iter().any(|d| d.severity == Severity::Error), "{e:?}");
        e
    }

    fn warned(notes: &[Diagnostic], key: &str, words: &str) -> bool {
        notes
            .iter()
            .any(|d| d.severity == Severity::Warning && d.key == key && d.message.contains(words))
    }

    #[test]
    fn owns_the_seven_keys() {
        let i = <CanaryPlugin as Plugin>::info();
        assert_eq!(i.name, "canary");
        assert_eq!(i.keys.len(), 7);
        assert!(i.hooks.is_empty(), "no Wasm call per request");
    }

    #[test]
    fn enabled_alone_has_the_defaults() {
        let (c, notes) = canary(&[(CANARY, "true")]);
        assert_eq!(
            c,
            Canary {
                by_header: None,
                by_header_value: None,
                by_header_pattern: None,
                by_cookie: None,
                weight: 0,
                weight_total: 100,
            }
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn canary_is_a_go_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            canary(&[(CANARY, t)]);
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            let p = policy(&Settings::from_pairs(&[(CANARY, f)])).expect("valid");
            assert_eq!(p, Policy::default(), "{f}");
        }
        for bad in ["yes", "on", "", "tRuE"] {
            let e = refused(&[(CANARY, bad)]);
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].key, CANARY);
            assert!(
                e[0].message.contains("TRUE, true, True"),
                "{}",
                e[0].message
            );
        }
    }

    #[test]
    fn configured_but_not_enabled() {
        for canary in [None, Some("false")] {
            let configuring = [
                (WEIGHT, "10"),
                (BY_HEADER, "x"),
                (BY_HEADER_VALUE, "x"),
                (BY_HEADER_PATTERN, "x"),
                (BY_COOKIE, "x"),
            ];
            for (key, value) in &configuring {
                let mut pairs = alloc::vec![(*key, *value)];
                if let Some(v) = canary {
                    pairs.push((CANARY, v));
                }
                let e = refused(&pairs);
                assert!(
                    e.iter().any(|d| d.key == *key
                        && d.message.contains("configured but not enabled")
                        && d.message
                            .contains(r#"nginx.ingress.kubernetes.io/canary: "true""#)),
                    "{pairs:?}: {e:?}"
                );
            }
        }
        // Inert settings are not "configured", as in ingress-nginx.
        let inert = [
            (CANARY, "false"),
            (WEIGHT, "0"),
            (WEIGHT_TOTAL, "100"),
            (BY_HEADER, ""),
        ];
        let p = policy(&Settings::from_pairs(&inert)).expect("inert settings are accepted");
        assert_eq!(p, Policy::default());
        // Every offending key is named, and bad values are reported in the same pass.
        let e = refused(&[(CANARY, "false"), (WEIGHT, "10"), (BY_COOKIE, "bad cookie")]);
        assert!(e.iter().any(|d| d.key == WEIGHT));
        assert_eq!(e.iter().filter(|d| d.key == BY_COOKIE).count(), 2);
    }

    #[test]
    fn weights() {
        let (c, _) = canary(&[(CANARY, "true"), (WEIGHT, "30")]);
        assert_eq!((c.weight, c.weight_total), (30, 100));
        let (c, notes) = canary(&[(CANARY, "true"), (WEIGHT, " 7 "), (WEIGHT_TOTAL, "1000")]);
        assert_eq!((c.weight, c.weight_total), (7, 1000));
        assert!(notes.is_empty());
        let (c, _) = canary(&[(CANARY, "true"), (WEIGHT, "0"), (WEIGHT_TOTAL, "100")]);
        assert_eq!((c.weight, c.weight_total), (0, 100));
        for bad in ["-1", "1.5", "ten", "", "+5", "99999999999"] {
            let e = refused(&[(CANARY, "true"), (WEIGHT, bad)]);
            assert!(
                e.iter().any(|d| d.key == WEIGHT && d.message.contains(bad)),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn weight_total_below_100_reads_as_100() {
        let (c, notes) = canary(&[(CANARY, "true"), (WEIGHT, "5"), (WEIGHT_TOTAL, "10")]);
        assert_eq!((c.weight, c.weight_total), (5, 100));
        assert!(warned(&notes, WEIGHT_TOTAL, "read as 100"), "{notes:?}");
        for bad in ["0", "-100", "lots", ""] {
            let e = refused(&[(CANARY, "true"), (WEIGHT_TOTAL, bad)]);
            assert!(e.iter().any(|d| d.key == WEIGHT_TOTAL), "{bad}: {e:?}");
        }
    }

    #[test]
    fn by_header_is_a_lowercased_field_name() {
        let (c, _) = canary(&[(CANARY, "true"), (BY_HEADER, "X-Canary")]);
        assert_eq!(c.by_header.as_deref(), Some("x-canary"));
        // Empty is not set, as in ingress-nginx.
        let (c, _) = canary(&[(CANARY, "true"), (BY_HEADER, "  ")]);
        assert_eq!(c.by_header, None);
        for bad in ["X Canary", "x:canary", "x-canäry", "x\r\ny"] {
            let e = refused(&[(CANARY, "true"), (BY_HEADER, bad)]);
            assert!(e.iter().any(|d| d.key == BY_HEADER), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn by_header_value_uses_basic_chars() {
        let (c, notes) = canary(&[
            (CANARY, "true"),
            (BY_HEADER, "x-canary"),
            (BY_HEADER_VALUE, "v2/blue.green-1_a~b:c"),
        ]);
        assert_eq!(c.by_header_value.as_deref(), Some("v2/blue.green-1_a~b:c"));
        assert!(notes.is_empty());
        let (c, _) = canary(&[
            (CANARY, "true"),
            (BY_HEADER, "x-canary"),
            (BY_HEADER_VALUE, ""),
        ]);
        assert_eq!(c.by_header_value, None);
        for bad in ["a b", "a;b", "a=b", "ü", "a,b"] {
            let e = refused(&[
                (CANARY, "true"),
                (BY_HEADER, "x-canary"),
                (BY_HEADER_VALUE, bad),
            ]);
            assert!(e.iter().any(|d| d.key == BY_HEADER_VALUE), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn by_header_pattern_passes_through_unless_a_value_is_set() {
        let (c, notes) = canary(&[
            (CANARY, "true"),
            (BY_HEADER, "x-canary"),
            (BY_HEADER_PATTERN, "^(v2|v3)$"),
        ]);
        assert_eq!(c.by_header_pattern.as_deref(), Some("^(v2|v3)$"));
        assert!(notes.is_empty());
        let (c, _) = canary(&[
            (CANARY, "true"),
            (BY_HEADER, "x-canary"),
            (BY_HEADER_PATTERN, ""),
        ]);
        assert_eq!(c.by_header_pattern, None);
        let (c, notes) = canary(&[
            (CANARY, "true"),
            (BY_HEADER, "x-canary"),
            (BY_HEADER_VALUE, "v2"),
            (BY_HEADER_PATTERN, "^v"),
        ]);
        assert_eq!(c.by_header_value.as_deref(), Some("v2"));
        assert_eq!(c.by_header_pattern, None);
        assert!(warned(&notes, BY_HEADER_PATTERN, "ignored"), "{notes:?}");
    }

    #[test]
    fn value_and_pattern_need_a_header() {
        let (c, notes) = canary(&[
            (CANARY, "true"),
            (BY_HEADER_VALUE, "v2"),
            (BY_HEADER_PATTERN, "^v"),
        ]);
        assert_eq!((c.by_header_value, c.by_header_pattern), (None, None));
        for key in [BY_HEADER_VALUE, BY_HEADER_PATTERN] {
            assert!(warned(&notes, key, "no effect without"), "{key}: {notes:?}");
        }
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn by_cookie_is_a_token() {
        let (c, _) = canary(&[(CANARY, "true"), (BY_COOKIE, "Canary_Cookie")]);
        assert_eq!(c.by_cookie.as_deref(), Some("Canary_Cookie"));
        let (c, _) = canary(&[(CANARY, "true"), (BY_COOKIE, "")]);
        assert_eq!(c.by_cookie, None, "empty is not set");
        for bad in ["a b", "a=b", "a;b", "a\"b", "a,b"] {
            let e = refused(&[(CANARY, "true"), (BY_COOKIE, bad)]);
            assert!(e.iter().any(|d| d.key == BY_COOKIE), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn everything_at_once() {
        let (c, notes) = canary(&[
            (CANARY, "true"),
            (BY_HEADER, "X-Canary"),
            (BY_HEADER_VALUE, "always-v2"),
            (BY_COOKIE, "canary"),
            (WEIGHT, "20"),
            (WEIGHT_TOTAL, "200"),
        ]);
        assert_eq!(
            c,
            Canary {
                by_header: Some("x-canary".into()),
                by_header_value: Some("always-v2".into()),
                by_header_pattern: None,
                by_cookie: Some("canary".into()),
                weight: 20,
                weight_total: 200,
            }
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn every_problem_in_one_pass() {
        let e = refused(&[
            (CANARY, "true"),
            (BY_HEADER, "bad header"),
            (BY_HEADER_VALUE, "bad value"),
            (BY_COOKIE, "bad cookie"),
            (WEIGHT, "-1"),
            (WEIGHT_TOTAL, "0"),
        ]);
        let mut keys: Vec<&str> = e
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.key.as_str())
            .collect();
        keys.sort_unstable();
        let mut want = [BY_HEADER, BY_HEADER_VALUE, BY_COOKIE, WEIGHT, WEIGHT_TOTAL];
        want.sort_unstable();
        assert_eq!(keys, want);
        // A bad boolean does not hide the other problems either.
        let e = refused(&[(CANARY, "yes"), (WEIGHT, "x")]);
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn nothing_set_is_an_empty_policy() {
        assert_eq!(
            policy(&Settings::from_pairs(&[])).expect("valid"),
            Policy::default()
        );
    }
}

//! Built-in plugin `retries`: ingress-nginx's `proxy-next-upstream`,
//! `proxy-next-upstream-tries` and `proxy-next-upstream-timeout` (nginx's
//! `proxy_next_upstream`, `proxy_next_upstream_tries` and `proxy_next_upstream_timeout`).
//!
//! Owns only these keys and only states the rule, as one [`Directive::NextUpstream`]; the host
//! executes retries natively, so a route with retries costs no Wasm call per request. As in
//! nginx, a failed attempt is passed to the next endpoint only when one of the listed
//! conditions holds, and only while nothing of the answer has been sent to the client; only
//! when the request's body can be sent again (a request that never connected always can, one
//! whose body was already streamed to the upstream cannot); only for idempotent methods unless
//! `non_idempotent` is listed (POST, LOCK and PATCH are otherwise never retried once sent); and
//! each retry goes to another endpoint of the backend.
//!
//! Values follow ingress-nginx: `proxy-next-upstream` is nginx's space-separated list
//! (`error timeout` when absent), `proxy-next-upstream-tries` a whole number of attempts in all
//! (3 when absent, 0 for no limit), `proxy-next-upstream-timeout` whole seconds (0, no limit,
//! when absent; an optional `s` suffix is tolerated, as by the `timeouts` plugin). Where
//! ingress-nginx silently falls back to its default (a tries or timeout that is not a number)
//! or hands nginx a value it then refuses (a negative number, an unknown condition), this
//! plugin reports an error instead; every problem is reported in the same pass.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, NextUpstream, NextUpstreamOn, Plugin, Policy,
    Settings, export_plugin, info,
};

/// `proxy-next-upstream`
pub const NEXT_UPSTREAM: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream";
/// `proxy-next-upstream-tries`
pub const TRIES: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream-tries";
/// `proxy-next-upstream-timeout`
pub const TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream-timeout";

const KEYS: [&str; 3] = [NEXT_UPSTREAM, TRIES, TIMEOUT];

/// ingress-nginx's default conditions (`error timeout`).
pub fn default_on() -> NextUpstreamOn {
    NextUpstreamOn::ERROR | NextUpstreamOn::TIMEOUT
}
/// ingress-nginx's default number of attempts, the first included.
pub const DEFAULT_TRIES: u32 = 3;
/// ingress-nginx's default time limit: none.
pub const DEFAULT_TIMEOUT_MS: u32 = 0;

/// The largest timeout a policy can carry (milliseconds in a `u32`): about 49 days.
const MAX_SECONDS: u32 = u32::MAX / 1000;

/// The word that disables retries; it must stand alone.
const OFF: &str = "off";

/// nginx's condition words, in its documentation's order, with their flags.
const CONDITIONS: [(&str, NextUpstreamOn); 11] = [
    ("error", NextUpstreamOn::ERROR),
    ("timeout", NextUpstreamOn::TIMEOUT),
    ("invalid_header", NextUpstreamOn::INVALID_HEADER),
    ("http_500", NextUpstreamOn::HTTP_500),
    ("http_502", NextUpstreamOn::HTTP_502),
    ("http_503", NextUpstreamOn::HTTP_503),
    ("http_504", NextUpstreamOn::HTTP_504),
    ("http_403", NextUpstreamOn::HTTP_403),
    ("http_404", NextUpstreamOn::HTTP_404),
    ("http_429", NextUpstreamOn::HTTP_429),
    ("non_idempotent", NextUpstreamOn::NON_IDEMPOTENT),
];

/// "error, timeout, ..., off": for messages.
fn valid_words() -> String {
    let mut out = String::new();
    for (word, _) in CONDITIONS {
        out.push_str(word);
        out.push_str(", ");
    }
    out.push_str(OFF);
    out
}

/// The flag of an exact condition word (`off` is not one).
fn condition(word: &str) -> Option<NextUpstreamOn> {
    CONDITIONS
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, flag)| *flag)
}

/// What a parsed `proxy-next-upstream` value says.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditions {
    /// The conditions listed; empty for `off`.
    pub on: NextUpstreamOn,
    /// Reasons for warnings (a word listed twice, `non_idempotent` alone): the value is still
    /// accepted.
    pub warnings: Vec<String>,
}

/// Parse `proxy-next-upstream`: nginx's condition words separated by spaces (repeated spaces
/// and tabs are tolerated), or `off` alone. `Err` carries every problem found.
pub fn parse_conditions(value: &str) -> Result<Conditions, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if value.trim().is_empty() {
        errors.push(format!(
            "is empty: list the conditions to retry on (for example \"error timeout\"), write \
             \"{OFF}\" to never retry, or remove the annotation for the default (error timeout)"
        ));
        return Err(errors);
    }
    // Split on commas too, so that the words around a comma are still checked in this pass.
    let words: Vec<&str> = value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    if value.contains(',') {
        errors.push(format!(
            "`{value}`: conditions are separated by spaces, not commas (nginx syntax): write \
             \"{}\"",
            words.join(" ")
        ));
    }
    let mut on = NextUpstreamOn::empty();
    let mut seen: Vec<&str> = Vec::new();
    let mut repeated: Vec<&str> = Vec::new();
    let mut off = false;
    for &word in &words {
        if seen.contains(&word) {
            // nginx warns about a repeated value and goes on; so does this plugin (once a word).
            if !repeated.contains(&word) {
                warnings.push(format!("`{word}` is listed more than once"));
                repeated.push(word);
            }
            continue;
        }
        seen.push(word);
        if word == OFF {
            off = true;
        } else if let Some(flag) = condition(word) {
            on = on | flag;
        } else {
            // Say what was probably meant: ingress-nginx only takes the lowercase words with
            // underscores, exactly as nginx writes them.
            let guess = word.to_ascii_lowercase().replace('-', "_");
            let hint = if guess == OFF || condition(&guess).is_some() {
                format!(" (did you mean `{guess}`?)")
            } else {
                String::new()
            };
            errors.push(format!(
                "`{word}` is not a proxy_next_upstream condition{hint}; valid: {}",
                valid_words()
            ));
        }
    }
    if off && words.iter().any(|w| *w != OFF) {
        errors.push(format!(
            "`{value}`: \"{OFF}\" turns retries off and must stand alone; remove it or the \
             other conditions"
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if on == NextUpstreamOn::NON_IDEMPOTENT {
        warnings.push(
            "`non_idempotent` alone retries nothing: it only widens the other conditions to \
             POST, LOCK and PATCH (for example \"error timeout non_idempotent\")"
                .to_string(),
        );
    }
    Ok(Conditions { on, warnings })
}

/// A non-negative decimal integer that fits a `u32` (surrounding spaces tolerated).
fn parse_u32(value: &str) -> Option<u32> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parse `proxy-next-upstream-tries`: attempts in all, the first included; 0 is no limit.
pub fn parse_tries(value: &str) -> Result<u32, String> {
    parse_u32(value).ok_or_else(|| {
        format!(
            "`{value}` is not a non-negative whole number of attempts (for example \"3\"; \
             0 means no limit)"
        )
    })
}

/// Parse `proxy-next-upstream-timeout`, whole seconds (optional `s`), into milliseconds; 0 is
/// no limit.
pub fn parse_timeout(value: &str) -> Result<u32, String> {
    let trimmed = value.trim();
    let digits = trimmed.strip_suffix('s').unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{value}` is not a whole number of seconds (for example \"10\"; 0 means no limit)"
        ));
    }
    match digits.parse::<u32>() {
        Ok(s) if s <= MAX_SECONDS => Ok(s * 1000),
        _ => Err(format!(
            "`{value}` is too large (at most {MAX_SECONDS} seconds)"
        )),
    }
}

/// Turn the owned settings into a policy: nothing when none is set, otherwise exactly one
/// [`Directive::NextUpstream`] with the missing settings at ingress-nginx's defaults.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    if KEYS.iter().all(|k| settings.get(k).is_none()) {
        return diags.finish(policy);
    }

    let on = match settings.get(NEXT_UPSTREAM) {
        None => default_on(),
        Some(v) => match parse_conditions(v) {
            Ok(c) => {
                for w in c.warnings {
                    diags.warning(NEXT_UPSTREAM, w);
                }
                c.on
            }
            Err(errors) => {
                for e in errors {
                    diags.error(NEXT_UPSTREAM, e);
                }
                default_on()
            }
        },
    };
    let tries = match settings.get(TRIES) {
        None => DEFAULT_TRIES,
        Some(v) => parse_tries(v).unwrap_or_else(|why| {
            diags.error(TRIES, why);
            DEFAULT_TRIES
        }),
    };
    let timeout_ms = match settings.get(TIMEOUT) {
        None => DEFAULT_TIMEOUT_MS,
        Some(v) => parse_timeout(v).unwrap_or_else(|why| {
            diags.error(TIMEOUT, why);
            DEFAULT_TIMEOUT_MS
        }),
    };

    if on == NextUpstreamOn::empty() {
        for key in [TRIES, TIMEOUT] {
            if settings.get(key).is_some() {
                diags.warning(
                    key,
                    format!("has no effect while {NEXT_UPSTREAM} is \"{OFF}\""),
                );
            }
        }
    }

    policy.push(Directive::NextUpstream(NextUpstream {
        on,
        tries,
        timeout_ms,
    }));
    diags.finish(policy)
}

struct Retries;

impl Plugin for Retries {
    type Config = ();

    fn info() -> Info {
        info("retries", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(Retries);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::Severity;

    fn next_upstream(pairs: &[(&str, &str)]) -> (NextUpstream, Vec<Diagnostic>) {
        let p = policy(&Settings::from_pairs(pairs)).expect("valid");
        let mut found = p.directives.into_iter().map(|d| match d {
            Directive::NextUpstream(n) => n,
            other => panic!("unexpected directive {other:?}"),
        });
        let n = found.next().expect("a next-upstream directive");
        assert!(found.next().is_none(), "exactly one directive");
        (n, p.notes)
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

    fn on(value: &str) -> NextUpstreamOn {
        parse_conditions(value).expect("valid").on
    }

    #[test]
    fn owns_the_three_keys_without_hooks() {
        let i = <Retries as Plugin>::info();
        assert_eq!(i.name, "retries");
        assert_eq!(i.keys, [NEXT_UPSTREAM, TRIES, TIMEOUT]);
        assert!(i.prefixes.is_empty());
        assert!(i.hooks.is_empty(), "no Wasm call per request");
    }

    #[test]
    fn nothing_set_is_an_empty_policy() {
        assert_eq!(
            policy(&Settings::from_pairs(&[])).expect("valid"),
            Policy::default()
        );
        // Someone else's keys do not count.
        assert_eq!(
            policy(&Settings::from_pairs(&[(
                "nginx.ingress.kubernetes.io/proxy-read-timeout",
                "5"
            )]))
            .expect("valid"),
            Policy::default()
        );
    }

    #[test]
    fn any_key_alone_fills_in_the_defaults() {
        let (n, notes) = next_upstream(&[(NEXT_UPSTREAM, "http_502")]);
        assert_eq!(
            n,
            NextUpstream {
                on: NextUpstreamOn::HTTP_502,
                tries: 3,
                timeout_ms: 0,
            }
        );
        assert!(notes.is_empty());
        let (n, _) = next_upstream(&[(TRIES, "5")]);
        assert_eq!(
            n,
            NextUpstream {
                on: NextUpstreamOn::ERROR | NextUpstreamOn::TIMEOUT,
                tries: 5,
                timeout_ms: 0,
            }
        );
        let (n, _) = next_upstream(&[(TIMEOUT, "10")]);
        assert_eq!(
            n,
            NextUpstream {
                on: default_on(),
                tries: DEFAULT_TRIES,
                timeout_ms: 10_000,
            }
        );
    }

    #[test]
    fn everything_at_once() {
        let (n, notes) = next_upstream(&[
            (NEXT_UPSTREAM, "error timeout http_503 non_idempotent"),
            (TRIES, "2"),
            (TIMEOUT, "30s"),
        ]);
        assert_eq!(
            n,
            NextUpstream {
                on: NextUpstreamOn::ERROR
                    | NextUpstreamOn::TIMEOUT
                    | NextUpstreamOn::HTTP_503
                    | NextUpstreamOn::NON_IDEMPOTENT,
                tries: 2,
                timeout_ms: 30_000,
            }
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn every_condition_word() {
        let mut all = NextUpstreamOn::empty();
        for (word, flag) in CONDITIONS {
            assert_eq!(on(word), flag, "{word}");
            all = all | flag;
        }
        assert_eq!(all.bits().count_ones(), 11, "one distinct flag per word");
        assert_eq!(
            on(
                "error timeout invalid_header http_500 http_502 http_503 http_504 http_403 \
                http_404 http_429 non_idempotent"
            ),
            all
        );
    }

    #[test]
    fn repeated_spaces_and_tabs_are_tolerated() {
        let want = NextUpstreamOn::ERROR | NextUpstreamOn::HTTP_502;
        assert_eq!(on("error http_502"), want);
        assert_eq!(on("  error    http_502 "), want);
        assert_eq!(on("error\thttp_502"), want);
        assert_eq!(on("http_502 error"), want, "order does not matter");
    }

    #[test]
    fn off_disables_and_must_be_alone() {
        let (n, notes) = next_upstream(&[(NEXT_UPSTREAM, " off ")]);
        assert!(n.on == NextUpstreamOn::empty());
        assert_eq!((n.tries, n.timeout_ms), (3, 0));
        assert!(notes.is_empty());
        for bad in ["off error", "error off", "timeout off http_502"] {
            let e = refused(&[(NEXT_UPSTREAM, bad)]);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].key, NEXT_UPSTREAM);
            assert!(e[0].message.contains("must stand alone"), "{e:?}");
        }
        // Tries and timeout next to `off` are accepted but pointless.
        let (n, notes) = next_upstream(&[(NEXT_UPSTREAM, "off"), (TRIES, "5"), (TIMEOUT, "3")]);
        assert!(n.on == NextUpstreamOn::empty());
        assert!(warned(&notes, TRIES, "no effect"), "{notes:?}");
        assert!(warned(&notes, TIMEOUT, "no effect"), "{notes:?}");
    }

    #[test]
    fn unknown_words_are_named_with_the_valid_list() {
        let e = refused(&[(NEXT_UPSTREAM, "error http_418")]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, NEXT_UPSTREAM);
        assert!(e[0].message.contains("`http_418`"), "{}", e[0].message);
        assert!(
            e[0].message.contains(
                "error, timeout, invalid_header, http_500, http_502, \
                 http_503, http_504, http_403, http_404, http_429, non_idempotent, off"
            ),
            "{}",
            e[0].message
        );
        // Each unknown word is its own error.
        let e = refused(&[(NEXT_UPSTREAM, "sometimes error never")]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("`sometimes`") && e[1].message.contains("`never`"));
        // Near misses get a suggestion; nginx's words are lowercase, with underscores.
        for (bad, meant) in [
            ("http-502", "http_502"),
            ("HTTP_502", "http_502"),
            ("Error", "error"),
            ("OFF", "off"),
            ("non-idempotent", "non_idempotent"),
        ] {
            let e = refused(&[(NEXT_UPSTREAM, bad)]);
            assert!(
                e.iter()
                    .any(|d| d.message.contains(&format!("did you mean `{meant}`"))),
                "{bad}: {e:?}"
            );
        }
        // `on` (the stream module's word) is not an http condition.
        refused(&[(NEXT_UPSTREAM, "on")]);
    }

    #[test]
    fn commas_are_refused_with_the_fix() {
        let e = refused(&[(NEXT_UPSTREAM, "error,timeout, http_502")]);
        assert_eq!(e.len(), 1, "only the comma is wrong: {e:?}");
        assert!(e[0].message.contains("not commas"), "{}", e[0].message);
        assert!(
            e[0].message.contains("\"error timeout http_502\""),
            "{}",
            e[0].message
        );
        // The words between the commas are still checked in the same pass.
        let e = refused(&[(NEXT_UPSTREAM, "error,bogus")]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|d| d.message.contains("`bogus`")));
    }

    #[test]
    fn empty_conditions_are_refused() {
        for bad in ["", "   "] {
            let e = refused(&[(NEXT_UPSTREAM, bad)]);
            assert_eq!(e.len(), 1);
            assert!(e[0].message.contains("is empty"), "{}", e[0].message);
        }
    }

    #[test]
    fn repeats_and_a_lone_non_idempotent_warn() {
        let (n, notes) = next_upstream(&[(NEXT_UPSTREAM, "error error timeout error")]);
        assert_eq!(n.on, NextUpstreamOn::ERROR | NextUpstreamOn::TIMEOUT);
        assert_eq!(notes.len(), 1, "one warning per repeated word: {notes:?}");
        assert!(warned(
            &notes,
            NEXT_UPSTREAM,
            "`error` is listed more than once"
        ));
        let (n, notes) = next_upstream(&[(NEXT_UPSTREAM, "off off")]);
        assert!(n.on == NextUpstreamOn::empty());
        assert!(warned(&notes, NEXT_UPSTREAM, "more than once"), "{notes:?}");
        let (n, notes) = next_upstream(&[(NEXT_UPSTREAM, "non_idempotent")]);
        assert_eq!(n.on, NextUpstreamOn::NON_IDEMPOTENT);
        assert!(
            warned(&notes, NEXT_UPSTREAM, "retries nothing"),
            "{notes:?}"
        );
    }

    #[test]
    fn tries() {
        assert_eq!(parse_tries("3"), Ok(3));
        assert_eq!(parse_tries(" 10 "), Ok(10));
        assert_eq!(parse_tries("0"), Ok(0), "0 is no limit, passed as is");
        assert_eq!(parse_tries("4294967295"), Ok(u32::MAX));
        for bad in ["", "-1", "+3", "1.5", "three", "3s", "4294967296"] {
            let e = parse_tries(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        let (n, _) = next_upstream(&[(TRIES, "0")]);
        assert_eq!(n.tries, 0);
        let e = refused(&[(TRIES, "-1")]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, TRIES);
    }

    #[test]
    fn timeout() {
        assert_eq!(parse_timeout("0"), Ok(0), "0 is no limit");
        assert_eq!(parse_timeout("10"), Ok(10_000));
        assert_eq!(parse_timeout(" 5s "), Ok(5_000));
        assert_eq!(parse_timeout("0s"), Ok(0));
        assert_eq!(parse_timeout("4294967"), Ok(4_294_967_000));
        for bad in [
            "",
            "s",
            "-1",
            "1.5",
            "1m",
            "500ms",
            "soon",
            "4294968",
            "99999999999",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        let e = refused(&[(TIMEOUT, "1m")]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, TIMEOUT);
    }

    #[test]
    fn every_problem_in_one_pass() {
        let e = refused(&[
            (NEXT_UPSTREAM, "error,nope off"),
            (TRIES, "many"),
            (TIMEOUT, "-5"),
        ]);
        let errors: Vec<&Diagnostic> = e.iter().filter(|d| d.severity == Severity::Error).collect();
        assert_eq!(
            errors.iter().filter(|d| d.key == NEXT_UPSTREAM).count(),
            3,
            "comma, unknown word and `off` not alone: {e:?}"
        );
        assert_eq!(errors.iter().filter(|d| d.key == TRIES).count(), 1);
        assert_eq!(errors.iter().filter(|d| d.key == TIMEOUT).count(), 1);
    }
}

//! Built-in plugin `load-balance`: ingress-nginx's `load-balance` annotation, how a route
//! chooses among its backend's endpoints.
//!
//! Owns only this key and only parses it, into one [`Directive::LoadBalance`]; the host picks
//! endpoints natively, so balancing costs no Wasm call per request. With `round_robin` the
//! host takes the endpoints in turn; with `ewma` it takes the better of two endpoints drawn at
//! random, scored by the peak-EWMA of their response times (decaying over 10 s) times the
//! requests each has in flight, as ingress-nginx's Lua balancer (`balancer/ewma.lua`) with
//! Finagle's in-flight factor. Absent, the policy is empty and the host's default
//! (round-robin, ingress-nginx's default too) applies.
//!
//! Values follow ingress-nginx's documented ones, `round_robin` and `ewma`, matched exactly
//! (its validator is case-sensitive) after trimming surrounding whitespace. ingress-nginx also
//! accepts its balancer's other names: `chash` and `chashsubset` (consistent hashing, which it
//! configures with `upstream-hash-by`) and `sticky_balanced` and `sticky_persistent` (cookie
//! session affinity, configured with `affinity`); this plugin refuses them, saying so. Where
//! ingress-nginx silently falls back to the global algorithm (any other value) this plugin
//! reports an error instead.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Balance, Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Settings, export_plugin,
    info,
};

/// `load-balance`
pub const LOAD_BALANCE: &str = "nginx.ingress.kubernetes.io/load-balance";
/// `upstream-hash-by`: ingress-nginx's consistent hashing.
pub const UPSTREAM_HASH_BY: &str = "nginx.ingress.kubernetes.io/upstream-hash-by";
/// `affinity`: ingress-nginx's cookie session affinity.
pub const AFFINITY: &str = "nginx.ingress.kubernetes.io/affinity";

const KEYS: [&str; 1] = [LOAD_BALANCE];

/// The values this plugin accepts, with their algorithms, in ingress-nginx's documentation's
/// order.
const ALGORITHMS: [(&str, Balance); 2] = [
    ("round_robin", Balance::RoundRobin),
    ("ewma", Balance::Ewma),
];

/// "`round_robin` or `ewma`": for messages.
fn valid_values() -> String {
    let names: Vec<String> = ALGORITHMS
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    names.join(" or ")
}

/// The algorithm of an exact value.
fn algorithm(value: &str) -> Option<Balance> {
    ALGORITHMS
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, balance)| *balance)
}

/// Parse a `load-balance` value (surrounding whitespace tolerated); `Err` says why it is
/// refused, naming the value and the valid ones.
pub fn parse(value: &str) -> Result<Balance, String> {
    let v = value.trim();
    if let Some(balance) = algorithm(v) {
        return Ok(balance);
    }
    let valid = valid_values();
    Err(match v {
        "" => format!(
            "is empty: valid values are {valid}; remove the annotation for the default \
             (round_robin)"
        ),
        "chash" | "chashsubset" => format!(
            "`{v}` (consistent hashing) is not supported as a load-balance value; wasmgress \
             supports {valid}: for consistent hashing use {UPSTREAM_HASH_BY} instead"
        ),
        "sticky_balanced" | "sticky_persistent" => format!(
            "`{v}` (cookie session affinity) is not supported as a load-balance value; \
             wasmgress supports {valid}: for session affinity use {AFFINITY} instead"
        ),
        _ => {
            // Say what was probably meant: ingress-nginx only takes the lowercase names with
            // underscores.
            let guess = v.to_ascii_lowercase().replace(['-', ' '], "_");
            let hint = match algorithm(&guess) {
                Some(_) => format!(" (did you mean `{guess}`?)"),
                None => String::new(),
            };
            format!("`{v}` is not a load-balance algorithm{hint}; valid values are {valid}")
        }
    })
}

/// Turn the owned setting into a policy: nothing when it is absent, otherwise exactly one
/// [`Directive::LoadBalance`].
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    if let Some(value) = settings.get(LOAD_BALANCE) {
        match parse(value) {
            Ok(balance) => {
                policy.push(Directive::LoadBalance(balance));
            }
            Err(why) => diags.error(LOAD_BALANCE, why),
        }
    }
    diags.finish(policy)
}

struct LoadBalance;

impl Plugin for LoadBalance {
    type Config = ();

    fn info() -> Info {
        info("load-balance", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(LoadBalance);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::Severity;

    fn balance(value: &str) -> Balance {
        let p = policy(&Settings::from_pairs(&[(LOAD_BALANCE, value)])).expect("valid");
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert!(p.hooks.is_empty(), "no Wasm call per request");
        match p.directives.as_slice() {
            [Directive::LoadBalance(b)] => *b,
            other => panic!("expected exactly one load-balance directive, got {other:?}"),
        }
    }

    /// The one error for `value`, checked to name the key, the value and the valid values.
    fn refused(value: &str) -> String {
        let e = policy(&Settings::from_pairs(&[(LOAD_BALANCE, value)])).expect_err("refused");
        assert_eq!(e.len(), 1, "{e:?}");
        let d = &e[0];
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.key, LOAD_BALANCE);
        assert!(
            d.message.contains("`round_robin` or `ewma`"),
            "{}",
            d.message
        );
        if !value.trim().is_empty() {
            assert!(d.message.contains(value.trim()), "{}", d.message);
        }
        d.message.clone()
    }

    #[test]
    fn owns_the_key_without_hooks() {
        let i = <LoadBalance as Plugin>::info();
        assert_eq!(i.name, "load-balance");
        assert_eq!(i.keys, [LOAD_BALANCE]);
        assert!(i.prefixes.is_empty());
        assert!(i.hooks.is_empty(), "no Wasm call per request");
        assert!(i.metrics.is_empty());
    }

    #[test]
    fn absent_is_an_empty_policy() {
        assert_eq!(
            policy(&Settings::from_pairs(&[])).expect("valid"),
            Policy::default()
        );
        // Someone else's keys do not count.
        assert_eq!(
            policy(&Settings::from_pairs(&[(UPSTREAM_HASH_BY, "$request_uri")])).expect("valid"),
            Policy::default()
        );
    }

    #[test]
    fn documented_values() {
        assert_eq!(balance("round_robin"), Balance::RoundRobin);
        assert_eq!(balance("ewma"), Balance::Ewma);
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(balance("  ewma\n"), Balance::Ewma);
        assert_eq!(balance("\tround_robin "), Balance::RoundRobin);
    }

    #[test]
    fn consistent_hashing_points_at_upstream_hash_by() {
        for v in ["chash", "chashsubset", " chash "] {
            let m = refused(v);
            assert!(m.contains("consistent hashing"), "{m}");
            assert!(m.contains(UPSTREAM_HASH_BY), "{m}");
        }
    }

    #[test]
    fn sticky_points_at_affinity() {
        for v in ["sticky_balanced", "sticky_persistent"] {
            let m = refused(v);
            assert!(m.contains("session affinity"), "{m}");
            assert!(m.contains(AFFINITY), "{m}");
        }
    }

    #[test]
    fn near_misses_get_a_hint() {
        // ingress-nginx's validator is case-sensitive and wants underscores.
        for (v, meant) in [
            ("round-robin", "round_robin"),
            ("Round_Robin", "round_robin"),
            ("round robin", "round_robin"),
            ("EWMA", "ewma"),
        ] {
            let m = refused(v);
            assert!(m.contains(&format!("did you mean `{meant}`?")), "{m}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for v in ["least_conn", "random", "ewma round_robin", "1"] {
            let m = refused(v);
            assert!(m.contains("not a load-balance algorithm"), "{m}");
            assert!(!m.contains("did you mean"), "{m}");
        }
        let m = refused("");
        assert!(m.contains("is empty"), "{m}");
        let m = refused("   ");
        assert!(m.contains("is empty"), "{m}");
    }

    #[test]
    fn parse_matches_policy() {
        assert_eq!(parse(" ewma "), Ok(Balance::Ewma));
        assert!(parse("chash").is_err());
    }
}

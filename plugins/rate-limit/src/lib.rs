//! Built-in plugin `rate-limit`: ingress-nginx's per-client limits:
//!
//! - `limit-rps`, `limit-rpm`: requests per second / minute per client address, with a burst
//!   of rate x `limit-burst-multiplier` (default 5) served at once (nginx `limit_req ...
//!   burst=N nodelay`); over it the host answers `--limit-req-status-code` (503);
//! - `limit-connections`: requests in progress per client (`--limit-conn-status-code`, 503);
//! - `limit-allowlist` (old name `limit-whitelist`): CIDRs exempt from those limits;
//! - `limit-rate`, `limit-rate-after`: response bandwidth in KiB/s after the first KiB
//!   (nginx `limit_rate`, `limit_rate_after`).
//!
//! Owns only these keys and only states the limits; the host counts, per replica, by the
//! client address its request edge computed. A value that is not a number is an error (a
//! limit silently dropped would remove the backend's protection), as in ingress-nginx.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::refs::parse_address_list;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, RateLimit, ResponseRate, Settings,
    export_plugin, info,
};

pub const RPS: &str = "nginx.ingress.kubernetes.io/limit-rps";
pub const RPM: &str = "nginx.ingress.kubernetes.io/limit-rpm";
pub const BURST: &str = "nginx.ingress.kubernetes.io/limit-burst-multiplier";
pub const CONNECTIONS: &str = "nginx.ingress.kubernetes.io/limit-connections";
pub const ALLOWLIST: &str = "nginx.ingress.kubernetes.io/limit-allowlist";
/// Old name of `ALLOWLIST`, which wins when both are set (as in ingress-nginx).
pub const WHITELIST: &str = "nginx.ingress.kubernetes.io/limit-whitelist";
pub const RATE: &str = "nginx.ingress.kubernetes.io/limit-rate";
pub const RATE_AFTER: &str = "nginx.ingress.kubernetes.io/limit-rate-after";

const KEYS: [&str; 8] = [
    RPS,
    RPM,
    BURST,
    CONNECTIONS,
    ALLOWLIST,
    WHITELIST,
    RATE,
    RATE_AFTER,
];

/// ingress-nginx's default burst multiplier.
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;

fn number(settings: &Settings, key: &str, diags: &mut Diagnostics) -> Option<u32> {
    let v = settings.get(key)?.trim();
    match v.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            diags.error(key, format!("`{v}` is not a whole number"));
            None
        }
    }
}

fn exempt(settings: &Settings, diags: &mut Diagnostics) -> Vec<String> {
    let key = if settings.get(ALLOWLIST).is_some() {
        if settings.get(WHITELIST).is_some() {
            diags.warning(
                WHITELIST,
                format!("ignored: {ALLOWLIST} is also set and wins"),
            );
        }
        ALLOWLIST
    } else {
        WHITELIST
    };
    match settings.get(key).map(parse_address_list) {
        None => Vec::new(),
        Some(Ok(list)) => list,
        Some(Err(why)) => {
            diags.error(key, why);
            Vec::new()
        }
    }
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let rps = number(settings, RPS, &mut diags).unwrap_or(0);
    let rpm = number(settings, RPM, &mut diags).unwrap_or(0);
    let connections = number(settings, CONNECTIONS, &mut diags).unwrap_or(0);
    let burst_multiplier = number(settings, BURST, &mut diags).unwrap_or(DEFAULT_BURST_MULTIPLIER);
    let exempt = exempt(settings, &mut diags);
    if rps > 0 || rpm > 0 || connections > 0 {
        policy.push(Directive::RateLimit(RateLimit {
            rps,
            rpm,
            burst_multiplier,
            connections,
            exempt,
        }));
    } else if let Some(key) = [BURST, ALLOWLIST, WHITELIST]
        .into_iter()
        .find(|k| settings.get(k).is_some())
    {
        diags.warning(
            key,
            format!("has no effect without {RPS}, {RPM} or {CONNECTIONS}"),
        );
    }
    let kib = |n: u32| u64::from(n) * 1024;
    let rate = number(settings, RATE, &mut diags).unwrap_or(0);
    let after = number(settings, RATE_AFTER, &mut diags).unwrap_or(0);
    if rate > 0 {
        policy.push(Directive::ResponseRate(ResponseRate {
            bytes_per_second: kib(rate),
            after_bytes: kib(after),
        }));
    } else if settings.get(RATE_AFTER).is_some() {
        diags.warning(RATE_AFTER, format!("has no effect without {RATE}"));
    }
    diags.finish(policy)
}

struct RateLimitPlugin;

impl Plugin for RateLimitPlugin {
    type Config = ();

    fn info() -> Info {
        info("rate-limit", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(RateLimitPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn limits_with_ingress_nginx_defaults() {
        let p = policy(&s(&[
            (RPS, "5"),
            (CONNECTIONS, "2"),
            (WHITELIST, "10.0.0.0/8, 192.0.2.1"),
        ]))
        .expect("valid");
        assert_eq!(
            p.directives,
            [Directive::RateLimit(RateLimit {
                rps: 5,
                rpm: 0,
                burst_multiplier: 5,
                connections: 2,
                exempt: alloc::vec!["10.0.0.0/8".into(), "192.0.2.1".into()],
            })]
        );
    }

    #[test]
    fn bandwidth_in_kib() {
        let p = policy(&s(&[(RATE, "100"), (RATE_AFTER, "1024")])).expect("valid");
        assert_eq!(
            p.directives,
            [Directive::ResponseRate(ResponseRate {
                bytes_per_second: 100 * 1024,
                after_bytes: 1 << 20,
            })]
        );
    }

    #[test]
    fn bad_numbers_and_ranges_are_errors() {
        for (key, value) in [
            (RPS, "ten"),
            (RPM, "-1"),
            (CONNECTIONS, "1.5"),
            (RATE, "1m"),
        ] {
            let e = policy(&s(&[(key, value)])).expect_err(value);
            assert_eq!(e[0].key, key);
        }
        let e = policy(&s(&[(RPS, "1"), (ALLOWLIST, "10.0.0.0/8, nope")])).expect_err("bad cidr");
        assert!(e[0].message.contains("`nope`"), "{}", e[0].message);
    }

    #[test]
    fn tuning_without_a_limit_is_a_warning() {
        let p = policy(&s(&[(BURST, "3")])).expect("valid");
        assert!(p.directives.is_empty());
        assert_eq!(p.notes[0].key, BURST);
    }
}

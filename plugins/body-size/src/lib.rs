//! Built-in plugin `body-size`: ingress-nginx's `nginx.ingress.kubernetes.io/proxy-body-size`
//! (nginx `client_max_body_size`).
//!
//! Owns only that key and only sets the route's request body limit; the host enforces it (a
//! declared `Content-Length` above it gets 413 before the upstream is contacted, a streamed
//! body that crosses it is cut off with 413). Sizes use nginx's syntax: a number of bytes
//! with an optional `k`, `m` or `g` suffix (either case); `0` lifts the limit.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Settings, export_plugin, info,
};

/// The annotation this plugin owns.
pub const KEY: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

/// Parse an nginx size (`8m`, `512k`, `1g`, `1024`, `0`) into bytes.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let (digits, unit) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let bad = || format!("`{value}` is not a size (bytes, or a number with k, m or g: 8m)");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(bad)
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    if let Some(value) = settings.get(KEY) {
        match parse_size(value) {
            Ok(bytes) => {
                policy.push(Directive::BodySizeLimit(bytes));
            }
            Err(why) => diags.error(KEY, why),
        }
    }
    diags.finish(policy)
}

struct BodySize;

impl Plugin for BodySize {
    type Config = ();

    fn info() -> Info {
        info("body-size", env!("CARGO_PKG_VERSION"), &[KEY], &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(BodySize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size(" 512K "), Ok(512 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        for bad in ["", "m", "1.5m", "-1", "8mb", "1t", "99999999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_sets_the_limit_or_names_the_key() {
        let p = policy(&Settings::from_pairs(&[(KEY, "16m")])).expect("valid");
        assert_eq!(p.directives, [Directive::BodySizeLimit(16 << 20)]);
        let e = policy(&Settings::from_pairs(&[(KEY, "big")])).expect_err("refused");
        assert_eq!(e[0].key, KEY);
    }
}

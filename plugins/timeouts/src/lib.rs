//! Built-in plugin `timeouts`: ingress-nginx's `proxy-connect-timeout`, `proxy-read-timeout`,
//! `proxy-send-timeout` and `proxy-http-version`.
//!
//! Values are whole seconds, as in ingress-nginx (an optional `s` suffix is tolerated, nginx
//! accepts it in its own config). Read and send timeouts keep nginx's meaning: the longest idle
//! time between two successive reads (writes) from (to) the upstream, not a total for the
//! request; the host enforces them that way. This crate owns only the parsing.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, HttpVersion, Info, Plugin, Policy, Settings, export_plugin,
    info,
};

/// `proxy-connect-timeout`
pub const CONNECT: &str = "nginx.ingress.kubernetes.io/proxy-connect-timeout";
/// `proxy-read-timeout`
pub const READ: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
/// `proxy-send-timeout`
pub const SEND: &str = "nginx.ingress.kubernetes.io/proxy-send-timeout";
/// `proxy-http-version`
pub const HTTP_VERSION: &str = "nginx.ingress.kubernetes.io/proxy-http-version";

/// The largest timeout a policy can carry (milliseconds in a `u32`): about 49 days.
const MAX_SECONDS: u32 = u32::MAX / 1000;

/// Parse a timeout in whole seconds into milliseconds.
pub fn parse_seconds(value: &str) -> Result<u32, String> {
    let trimmed = value.trim();
    let digits = trimmed.strip_suffix('s').unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{value}` is not a whole number of seconds (for example \"60\")"
        ));
    }
    match digits.parse::<u32>() {
        Ok(0) => Err(format!("`{value}`: a timeout must be at least 1 second")),
        Ok(s) if s <= MAX_SECONDS => Ok(s * 1000),
        _ => Err(format!(
            "`{value}` is too large (at most {MAX_SECONDS} seconds)"
        )),
    }
}

/// Parse `proxy-http-version`: "1.0" or "1.1".
pub fn parse_http_version(value: &str) -> Result<HttpVersion, String> {
    match value.trim() {
        "1.0" => Ok(HttpVersion::Http10),
        "1.1" => Ok(HttpVersion::Http11),
        _ => Err(format!(
            "`{value}` is not an upstream HTTP version (expected 1.0 or 1.1)"
        )),
    }
}

/// Turn the owned annotations into a policy.
pub fn policy(annotations: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    type Timeout = fn(u32) -> Directive;
    let timeouts: [(&str, Timeout); 3] = [
        (CONNECT, Directive::ConnectTimeoutMs),
        (READ, Directive::ReadTimeoutMs),
        (SEND, Directive::SendTimeoutMs),
    ];
    for (key, directive) in timeouts {
        if let Some(value) = annotations.get(key) {
            match parse_seconds(value) {
                Ok(ms) => {
                    policy.push(directive(ms));
                }
                Err(why) => diags.error(key, why),
            }
        }
    }
    if let Some(value) = annotations.get(HTTP_VERSION) {
        match parse_http_version(value) {
            Ok(v) => {
                policy.push(Directive::UpstreamHttpVersion(v));
            }
            Err(why) => diags.error(HTTP_VERSION, why),
        }
    }
    diags.finish(policy)
}

struct Timeouts;

impl Plugin for Timeouts {
    type Config = ();

    fn info() -> Info {
        info(
            "timeouts",
            env!("CARGO_PKG_VERSION"),
            &[CONNECT, READ, SEND, HTTP_VERSION],
            &[],
            &[],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(annotations).map(|p| (p, ()))
    }
}

export_plugin!(Timeouts);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("60"), Ok(60_000));
        assert_eq!(parse_seconds(" 5s "), Ok(5_000));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("1.5").is_err());
        assert!(parse_seconds("1m").is_err());
        assert!(parse_seconds("99999999999").is_err());
        assert_eq!(parse_seconds("4294967"), Ok(4_294_967_000));
        assert!(parse_seconds("4294968").is_err());
    }

    #[test]
    fn full_policy() {
        let p = policy(&Settings::from_pairs(&[
            (CONNECT, "5"),
            (READ, "3600"),
            (SEND, "30"),
            (HTTP_VERSION, "1.0"),
        ]))
        .expect("valid");
        assert_eq!(
            p.directives,
            [
                Directive::ConnectTimeoutMs(5_000),
                Directive::ReadTimeoutMs(3_600_000),
                Directive::SendTimeoutMs(30_000),
                Directive::UpstreamHttpVersion(HttpVersion::Http10),
            ]
        );
    }

    #[test]
    fn every_bad_key_is_named() {
        let err = policy(&Settings::from_pairs(&[
            (CONNECT, "soon"),
            (HTTP_VERSION, "2"),
        ]))
        .expect_err("invalid");
        let keys: Vec<&str> = err.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [CONNECT, HTTP_VERSION]);
    }
}

//! Built-in plugin `backend-protocol`: ingress-nginx's
//! `nginx.ingress.kubernetes.io/backend-protocol` (HTTP, HTTPS, GRPC, GRPCS, AUTO_HTTP).
//!
//! Owns only that key and only sets the policy's upstream protocol; the host speaks the
//! protocol. FCGI and AJP, which ingress-nginx also accepts, are refused with a diagnostic:
//! wasmgress has no such upstream clients.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Settings, UpstreamProtocol,
    export_plugin, info,
};

/// The annotation this plugin owns.
pub const KEY: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// Parse a backend-protocol value. ingress-nginx trims and upper-cases it first.
pub fn parse_protocol(value: &str) -> Result<UpstreamProtocol, alloc::string::String> {
    let upper = value.trim().to_ascii_uppercase();
    match upper.as_str() {
        "HTTP" => Ok(UpstreamProtocol::Http),
        "HTTPS" => Ok(UpstreamProtocol::Https),
        "GRPC" => Ok(UpstreamProtocol::Grpc),
        "GRPCS" => Ok(UpstreamProtocol::Grpcs),
        "AUTO_HTTP" => Ok(UpstreamProtocol::AutoHttp),
        "FCGI" | "AJP" => Err(format!(
            "backend protocol {upper} is not supported by wasmgress (use HTTP, HTTPS, GRPC, GRPCS or AUTO_HTTP)"
        )),
        _ => Err(format!(
            "`{value}` is not a backend protocol (expected HTTP, HTTPS, GRPC, GRPCS or AUTO_HTTP)"
        )),
    }
}

/// Turn the owned annotations into a policy.
pub fn policy(annotations: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    if let Some(value) = annotations.get(KEY) {
        match parse_protocol(value) {
            Ok(proto) => {
                policy.push(Directive::UpstreamProtocol(proto));
            }
            Err(why) => diags.error(KEY, why),
        }
    }
    diags.finish(policy)
}

struct BackendProtocol;

impl Plugin for BackendProtocol {
    type Config = ();

    fn info() -> Info {
        info(
            "backend-protocol",
            env!("CARGO_PKG_VERSION"),
            &[KEY],
            &[],
            &[],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(annotations).map(|p| (p, ()))
    }
}

export_plugin!(BackendProtocol);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(parse_protocol("GRPC"), Ok(UpstreamProtocol::Grpc));
        assert_eq!(parse_protocol(" grpcs "), Ok(UpstreamProtocol::Grpcs));
        assert_eq!(parse_protocol("AUTO_HTTP"), Ok(UpstreamProtocol::AutoHttp));
        assert!(
            parse_protocol("FCGI")
                .expect_err("refused")
                .contains("FCGI")
        );
        assert!(parse_protocol("AJP").is_err());
        assert!(parse_protocol("SPDY").is_err());
    }

    #[test]
    fn policy_sets_protocol_or_rejects() {
        let ok = policy(&Settings::from_pairs(&[(KEY, "HTTPS")])).expect("valid");
        assert_eq!(
            ok.directives,
            [Directive::UpstreamProtocol(UpstreamProtocol::Https)]
        );
        let err = policy(&Settings::from_pairs(&[(KEY, "FCGI")])).expect_err("refused");
        assert_eq!(err[0].key, KEY);
        assert!(
            policy(&Settings::default())
                .expect("empty")
                .directives
                .is_empty()
        );
    }
}

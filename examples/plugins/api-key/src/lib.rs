//! Example wasmgress plugin `api-key`: requests without a valid API key get 401.
//!
//! Attach it to an Ingress and configure it with annotations:
//!
//! ```yaml
//! wasmgress.io/plugins: "api-key"
//! wasmgress.io/plugin.api-key.keys: "s3cret-1, s3cret-2"   # required
//! wasmgress.io/plugin.api-key.header: "X-Api-Key"          # optional, this is the default
//! wasmgress.io/plugin.api-key.strip: "true"                # optional: drop the key upstream
//! ```
//!
//! It shows the three things a plugin does: own annotations (`describe`), validate them at
//! compile time (`configure`, with diagnostics naming the key), and hook requests
//! (`on_request_headers`) through the host's header handle. Keys in annotations are readable
//! by anyone who can read the Ingress: fine for an example, use a Secret-backed scheme for real.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::validate::is_header_name;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Diagnostics, Headers, Hook, Info, Plugin, Policy, Request, Settings,
    export_plugin, info, parse_bool,
};

/// Annotation prefix owned by this plugin (the host hands it every key under it).
pub const PREFIX: &str = "wasmgress.io/plugin.api-key.";
const KEYS: &str = "wasmgress.io/plugin.api-key.keys";
const HEADER: &str = "wasmgress.io/plugin.api-key.header";
const STRIP: &str = "wasmgress.io/plugin.api-key.strip";

/// The parsed configuration, kept in the instance for the request hook.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Lower-case header name carrying the key.
    pub header: String,
    /// Accepted keys.
    pub keys: Vec<String>,
    /// Remove the key header before the request goes upstream.
    pub strip: bool,
}

/// Parse and validate the plugin's annotations.
pub fn parse(annotations: &Settings) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let header = annotations.get(HEADER).unwrap_or("x-api-key").trim();
    if !is_header_name(header) {
        diags.error(HEADER, format!("`{header}` is not a valid header name"));
    }
    let keys: Vec<String> = annotations
        .get(KEYS)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(ToString::to_string)
        .collect();
    if keys.is_empty() {
        diags.error(KEYS, "at least one API key is required (comma-separated)");
    }
    let strip = match annotations.get(STRIP) {
        None => true,
        Some(v) => parse_bool(v).unwrap_or_else(|| {
            diags.error(STRIP, format!("`{v}` is not a boolean"));
            true
        }),
    };
    for (key, _) in annotations.iter() {
        if ![KEYS, HEADER, STRIP].contains(&key) {
            diags.warning(
                key,
                "unknown api-key setting (expected keys, header or strip)",
            );
        }
    }
    if diags.has_errors() {
        return Err(diags.into_vec());
    }
    Ok(Config {
        header: header.to_ascii_lowercase(),
        keys,
        strip,
    })
}

/// Compare without an early exit on the first differing byte (no timing oracle on the key).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is `presented` one of the configured keys?
pub fn accepted(config: &Config, presented: Option<&[u8]>) -> bool {
    presented.is_some_and(|p| {
        config
            .keys
            .iter()
            .fold(false, |ok, k| ok | same(k.as_bytes(), p))
    })
}

struct ApiKey;

impl Plugin for ApiKey {
    type Config = Config;

    fn info() -> Info {
        info(
            "api-key",
            env!("CARGO_PKG_VERSION"),
            &[],
            &[PREFIX],
            &[Hook::RequestHeaders],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let config = parse(annotations)?;
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders],
            ..Policy::default()
        };
        Ok((policy, config))
    }

    fn on_request_headers(config: &Config, _head: &Request<'_>, headers: &Headers<'_>) -> Action {
        if !accepted(config, headers.get(&config.header).as_deref()) {
            let mut deny = Action::respond_text(401, "missing or invalid API key\n");
            if let Action::RespondNow(r) = &mut deny {
                r.headers
                    .push(("www-authenticate".to_string(), b"ApiKey".to_vec()));
            }
            return deny;
        }
        if config.strip {
            // Never hand the credential to the upstream; a failure here only means the name
            // was refused, which `configure` already ruled out.
            let _ = headers.remove(&config.header);
        }
        Action::Continue
    }
}

export_plugin!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_defaults_and_errors() {
        let c = parse(&Settings::from_pairs(&[(KEYS, "a, b,,")])).expect("valid");
        assert_eq!(c.header, "x-api-key");
        assert_eq!(c.keys, ["a", "b"]);
        assert!(c.strip);
        let e = parse(&Settings::from_pairs(&[(HEADER, "bad header")])).expect_err("invalid");
        let keys: Vec<&str> = e.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [HEADER, KEYS]);
    }

    #[test]
    fn key_check() {
        let c = parse(&Settings::from_pairs(&[(KEYS, "k1,k2")])).expect("valid");
        assert!(accepted(&c, Some(b"k2")));
        assert!(!accepted(&c, Some(b"k3")));
        assert!(!accepted(&c, Some(b"k")));
        assert!(!accepted(&c, None));
    }
}

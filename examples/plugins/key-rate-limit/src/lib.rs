//! Example wasmgress plugin `key-rate-limit`: a token bucket per API key, shared by every
//! instance of the plugin on the replica (the `counters` capability), with the standard
//! rate-limit headers on every response.
//!
//! ```yaml
//! wasmgress.io/plugins: "key-rate-limit"
//! wasmgress.io/plugin.key-rate-limit.capabilities: "counters"  # the grant: required
//! wasmgress.io/plugin.key-rate-limit.rate: "10"                # tokens per second: required
//! wasmgress.io/plugin.key-rate-limit.burst: "20"               # default: the rate
//! wasmgress.io/plugin.key-rate-limit.header: "X-Api-Key"       # default
//! wasmgress.io/plugin.key-rate-limit.anonymous: "client"       # "client" (default): keyless
//!                                                             # requests share one bucket per
//!                                                             # client address; "deny": 401
//! ```
//!
//! Over the limit a request gets `429 Too Many Requests` with `Retry-After` (seconds) before it
//! reaches the upstream. Every response of the route (the upstream's and the 429) carries
//! `X-RateLimit-Limit` and `X-RateLimit-Remaining`: the request hook keeps the remaining count
//! in the request's values and the response hook reads it back. Buckets are per replica, as
//! ingress-nginx's `limit-rps` is; two namespaces never share one.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::validate::is_header_name;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Diagnostics, Headers, Hook, Info, Plugin, Policy, Request, Settings,
    counters, export_plugin, info, metrics,
};

const RATE: &str = "wasmgress.io/plugin.key-rate-limit.rate";
const BURST: &str = "wasmgress.io/plugin.key-rate-limit.burst";
const HEADER: &str = "wasmgress.io/plugin.key-rate-limit.header";
const ANONYMOUS: &str = "wasmgress.io/plugin.key-rate-limit.anonymous";

/// Keys longer than this share one bucket per client address (the host refuses counter keys
/// over 256 bytes, and a client must not dodge its limit by sending a huge key).
const MAX_KEY: usize = 200;

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub rate: u32,
    pub burst: u32,
    /// Lower-case header name carrying the key.
    pub header: String,
    /// Keyless requests are refused (401) instead of limited per client address.
    pub deny_anonymous: bool,
}

fn number(settings: &Settings, key: &str, diags: &mut Diagnostics) -> Option<u32> {
    let value = settings.get(key)?;
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            diags.error(key, format!("`{value}` is not a whole number above 0"));
            None
        }
    }
}

/// Parse and validate the plugin's annotations.
pub fn parse(settings: &Settings) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let rate = number(settings, RATE, &mut diags);
    if settings.get(RATE).is_none() {
        diags.error(RATE, "required: tokens per second for each key");
    }
    let burst = number(settings, BURST, &mut diags);
    let header = settings
        .get(HEADER)
        .unwrap_or("x-api-key")
        .trim()
        .to_ascii_lowercase();
    if !is_header_name(&header) {
        diags.error(HEADER, format!("`{header}` is not a valid header name"));
    }
    let deny_anonymous = match settings.get(ANONYMOUS).map(str::trim) {
        None | Some("client") => false,
        Some("deny") => true,
        Some(other) => {
            diags.error(ANONYMOUS, format!("`{other}` is not `client` or `deny`"));
            false
        }
    };
    let config = Config {
        rate: rate.unwrap_or(1),
        burst: burst.or(rate).unwrap_or(1),
        header,
        deny_anonymous,
    };
    diags.finish(Policy::default()).map(|_| config)
}

/// The bucket a request draws from: its key, or its client address.
pub fn bucket(config: &Config, key: Option<&[u8]>, client: &str) -> Option<String> {
    match key {
        Some(k) if !k.is_empty() && k.len() <= MAX_KEY => {
            Some(format!("key:{}", String::from_utf8_lossy(k)))
        }
        _ if config.deny_anonymous => None,
        _ => Some(format!("client:{client}")),
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(ms: u32) -> u32 {
    ms.div_ceil(1000).max(1)
}

struct KeyRateLimit;

impl Plugin for KeyRateLimit {
    type Config = Config;

    fn info() -> Info {
        let mut info = info(
            "key-rate-limit",
            "0.1.0",
            &[],
            &[],
            &[Hook::RequestHeaders, Hook::ResponseHeaders],
        );
        // Index 0: `wasmgress_plugin_key_rate_limit_decisions_total{decision=...}`.
        info.metrics = alloc::vec![metrics::counter(
            "decisions",
            "Requests admitted or limited, by decision.",
            "decision",
        )];
        info
    }

    fn configure(settings: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let config = parse(settings)?;
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders, Hook::ResponseHeaders],
            ..Policy::default()
        };
        Ok((policy, config))
    }

    fn on_request_headers(config: &Config, request: &Request<'_>, headers: &Headers<'_>) -> Action {
        let key = headers.get(&config.header);
        let Some(bucket) = bucket(config, key.as_deref(), &request.client_addr()) else {
            return Action::respond_text(401, "an API key is required\n");
        };
        let taken = counters::take(&bucket, config.rate, config.burst, 1);
        let _ = request.set_value("remaining", taken.remaining.to_string().as_bytes());
        let decision = if taken.admitted {
            "admitted"
        } else {
            "limited"
        };
        metrics::add(0, decision, 1);
        if taken.admitted {
            return Action::Continue;
        }
        let mut answer = Action::respond_text(429, "too many requests for this key\n");
        if let Action::RespondNow(r) = &mut answer {
            let wait = retry_after_secs(taken.retry_after_ms).to_string();
            r.headers
                .push(("retry-after".to_string(), wait.into_bytes()));
        }
        answer
    }

    fn on_response_headers(
        config: &Config,
        request: &Request<'_>,
        _status: u16,
        headers: &Headers<'_>,
    ) -> Action {
        // Responses the request hook never saw (a 401 from another plugin) carry no count.
        if let Some(remaining) = request.get_value("remaining") {
            let _ = headers.set("x-ratelimit-limit", config.burst.to_string().as_bytes());
            let _ = headers.set("x-ratelimit-remaining", &remaining);
        }
        Action::Continue
    }
}

export_plugin!(KeyRateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_defaults_and_errors() {
        let c = parse(&Settings::from_pairs(&[(RATE, "5")])).expect("valid");
        assert_eq!((c.rate, c.burst), (5, 5));
        assert_eq!(c.header, "x-api-key");
        assert!(!c.deny_anonymous);
        let e = parse(&Settings::from_pairs(&[(BURST, "0"), (ANONYMOUS, "maybe")]))
            .expect_err("invalid");
        let keys: Vec<&str> = e.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [RATE, BURST, ANONYMOUS]);
    }

    #[test]
    fn buckets() {
        let c = parse(&Settings::from_pairs(&[(RATE, "5")])).expect("valid");
        assert_eq!(
            bucket(&c, Some(b"k1"), "10.0.0.1").as_deref(),
            Some("key:k1")
        );
        assert_eq!(
            bucket(&c, None, "10.0.0.1").as_deref(),
            Some("client:10.0.0.1")
        );
        let huge = "k".repeat(MAX_KEY + 1);
        assert_eq!(
            bucket(&c, Some(huge.as_bytes()), "10.0.0.1").as_deref(),
            Some("client:10.0.0.1"),
            "a huge key does not escape the client's bucket"
        );
        let deny = parse(&Settings::from_pairs(&[(RATE, "5"), (ANONYMOUS, "deny")])).unwrap();
        assert_eq!(bucket(&deny, None, "10.0.0.1"), None);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1500), 2);
    }
}

//! Test plugin `caps`: calls every capability, so it imports `clock`, `random`, `counters` and
//! `secrets`, and attaches only where a route grants all four.
//!
//! Request hook: sets `x-caps-wall-secs` (wall clock), `x-caps-mono-ns` (monotonic clock),
//! `x-caps-random` (16 hex digits), `x-caps-count` (requests in the current minute, per
//! replica and namespace); with `wasmgress.io/plugin.caps.rate` (and `.burst`, default 1) it
//! takes a token from the bucket named by the `x-client-key` header and answers 429 with
//! `retry-after-ms` when there is none; with `.secret` and `.key` it reads that Secret value
//! in `configure` and again per request, and answers 403 unless `x-token` carries it.
//! Response hook: appends `caps` to `x-hook-order`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Headers, Hook, Info, Plugin, Policy, Request, Settings, clock, counters,
    export_plugin, info, random, secrets,
};

struct Caps;

const PREFIX: &str = "wasmgress.io/plugin.caps.";

struct Config {
    rate: Option<(u32, u32)>,
    secret: Option<(String, String, Vec<u8>)>,
}

fn number(settings: &Settings, key: &str) -> Result<Option<u32>, Vec<Diagnostic>> {
    let full = format!("{PREFIX}{key}");
    match settings.get(&full) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| alloc::vec![Diagnostic::error(&full, "not a number")]),
    }
}

impl Plugin for Caps {
    type Config = Config;

    fn info() -> Info {
        info(
            "caps",
            "0.1.0",
            &[],
            &[],
            &[Hook::RequestHeaders, Hook::ResponseHeaders],
        )
    }

    fn configure(settings: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let rate = number(settings, "rate")?
            .map(|r| Ok::<_, Vec<Diagnostic>>((r, number(settings, "burst")?.unwrap_or(1))))
            .transpose()?;
        let name = settings.get(&format!("{PREFIX}secret"));
        let key = settings.get(&format!("{PREFIX}key")).unwrap_or("token");
        let secret = match name {
            None => None,
            Some(name) => match secrets::get(name, key) {
                Some(value) => Some((name.to_string(), key.to_string(), value)),
                None => {
                    let annotation = format!("{PREFIX}secret");
                    let why = format!("Secret `{name}` has no key `{key}` this route can read");
                    return Err(alloc::vec![Diagnostic::error(&annotation, why)]);
                }
            },
        };
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders, Hook::ResponseHeaders],
            ..Policy::default()
        };
        Ok((policy, Config { rate, secret }))
    }

    fn on_request_headers(config: &Config, _: &Request<'_>, headers: &Headers<'_>) -> Action {
        let random: String = random::bytes(8)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let count = counters::add("requests", 1, 60_000).map_or("-".to_string(), |c| c.to_string());
        let set = [
            ("x-caps-wall-secs", clock::unix_seconds().to_string()),
            ("x-caps-mono-ns", clock::monotonic_ns().to_string()),
            ("x-caps-random", random),
            ("x-caps-count", count),
        ];
        for (name, value) in set {
            let _ = headers.set(name, value.as_bytes());
        }
        if let Some((rate, burst)) = config.rate {
            let key = headers
                .get_str("x-client-key")
                .unwrap_or_else(|| "anon".into());
            let taken = counters::take(&key, rate, burst, 1);
            if !taken.admitted {
                let mut answer = Action::respond_text(429, "slow down\n");
                if let Action::RespondNow(r) = &mut answer {
                    let wait = taken.retry_after_ms.to_string().into_bytes();
                    r.headers.push(("retry-after-ms".into(), wait));
                }
                return answer;
            }
        }
        if let Some((name, key, configured)) = &config.secret {
            let now = secrets::get(name, key);
            let sent = headers.get("x-token");
            if now.as_ref() != Some(configured) || sent.as_ref() != Some(configured) {
                return Action::respond_text(403, "bad token\n");
            }
        }
        Action::Continue
    }

    fn on_response_headers(_: &Config, _: &Request<'_>, _: u16, headers: &Headers<'_>) -> Action {
        let _ = headers.append("x-hook-order", b"caps");
        Action::Continue
    }
}

export_plugin!(Caps);

//! Test plugin `outbound`: outbound HTTP calls, the `http` capability (so it imports `http`
//! and attaches only where a route grants `http(HOST[:PORT])`), `wait` and
//! `on-http-responses`.
//!
//! Settings (under `wasmgress.io/plugin.outbound.`):
//! - `url` (required): the URL every call GETs. Only its presence is checked here, so the
//!   host's refusals (`invalid`, `not-granted`) can be tested;
//! - `calls` (default 1, 1 to 8): calls queued per round. More than the host's 4 per call is
//!   accepted on purpose: the fifth is refused (`too-many`);
//! - `rounds` (default 1, 1 to 8): how many times the calls are made, each round a `wait`
//!   (more than the host's 4 waits per request fails the hook);
//! - `timeout-ms` (default 0, the host's default): each call's deadline.
//!
//! Request hook: queues `calls` GETs of `url`, each with `x-call: <i>` (0, 1...) and the
//! request's id as `x-request-id`, keeps the round number in the request value `round` and
//! waits. A call refused at once answers 502 `send refused: <error>\n` (the error's WIT name,
//! `not-granted`...).
//!
//! `on-http-responses`: for each result, in order, appends request headers: an answer adds
//! `x-outbound-status: <status>` and `x-outbound-body: <body>` (UTF-8, invalid sequences
//! replaced, control characters as spaces, trimmed, at most 100 bytes); a failure adds
//! `x-outbound-error: <error>` (`timeout`, `failed`...). Any answer with status 403 answers
//! 403 `denied by outbound\n`. Otherwise the next round is queued (and waited for) until
//! `rounds` rounds are done, then the request goes on with those headers.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Diagnostics, Headers, Hook, HttpError, HttpResponse, Info, Plugin, Policy,
    Request, Settings, export_plugin, http, info,
};

const PREFIX: &str = "wasmgress.io/plugin.outbound.";
const URL: &str = "wasmgress.io/plugin.outbound.url";
const CALLS: &str = "wasmgress.io/plugin.outbound.calls";
const ROUNDS: &str = "wasmgress.io/plugin.outbound.rounds";
const TIMEOUT: &str = "wasmgress.io/plugin.outbound.timeout-ms";

/// The request value holding the round in progress (1, 2...).
const ROUND: &str = "round";

/// What `configure` parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The URL every call GETs.
    pub url: String,
    /// Calls per round.
    pub calls: u32,
    /// Rounds per request.
    pub rounds: u32,
    /// Each call's deadline (0: the host's default).
    pub timeout_ms: u32,
}

/// Parse the settings; every problem names its key.
pub fn parse(settings: &Settings) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let url = settings.get(URL).unwrap_or("").trim();
    if url.is_empty() {
        diags.error(URL, "required: the URL the calls GET");
    }
    let mut number = |key: &str, default: u32, range: core::ops::RangeInclusive<u32>| {
        let Some(value) = settings.get(key) else {
            return default;
        };
        match value.trim().parse::<u32>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let why = format!("must be a number from {} to {}", range.start(), range.end());
                diags.error(key, why);
                default
            }
        }
    };
    let calls = number(CALLS, 1, 1..=8);
    let rounds = number(ROUNDS, 1, 1..=8);
    let timeout_ms = number(TIMEOUT, 0, 0..=u32::MAX);
    for (key, _) in settings.iter() {
        if key.starts_with(PREFIX) && ![URL, CALLS, ROUNDS, TIMEOUT].contains(&key) {
            diags.warning(
                key,
                "unknown setting (expected url, calls, rounds or timeout-ms)",
            );
        }
    }
    if diags.has_errors() {
        return Err(diags.into_vec());
    }
    Ok(Config {
        url: url.to_string(),
        calls,
        rounds,
        timeout_ms,
    })
}

/// An answer's body as a header value: UTF-8 with invalid sequences replaced, control
/// characters (CR, LF, tab...) as spaces, trimmed, then cut to at most 100 bytes on a
/// character boundary.
pub fn body_summary(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut text = text.trim();
    if text.len() > 100 {
        let mut end = 100;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text = text[..end].trim_end();
    }
    text.to_string()
}

/// Queues one round of calls and waits for them, remembering `round`.
fn send_round(config: &Config, request: &Request<'_>, round: u32) -> Action {
    let id = request.id();
    for i in 0..config.calls {
        let call = i.to_string();
        let headers: [(&str, &[u8]); 2] =
            [("x-call", call.as_bytes()), ("x-request-id", id.as_bytes())];
        if let Err(e) = http::get(&config.url, &headers, config.timeout_ms) {
            return Action::respond_text(502, &format!("send refused: {}\n", e.name()));
        }
    }
    if let Err(e) = request.set_value(ROUND, round.to_string().as_bytes()) {
        // Without the round the rounds could not end: fail closed.
        return Action::respond_text(500, &format!("cannot keep the round: {}\n", e.name()));
    }
    Action::Wait
}

struct Outbound;

impl Plugin for Outbound {
    type Config = Config;

    fn info() -> Info {
        info("outbound", "0.1.0", &[], &[], &[Hook::RequestHeaders])
    }

    fn configure(settings: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let config = parse(settings)?;
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders],
            ..Policy::default()
        };
        Ok((policy, config))
    }

    fn on_request_headers(config: &Config, request: &Request<'_>, _: &Headers<'_>) -> Action {
        send_round(config, request, 1)
    }

    fn on_http_responses(
        config: &Config,
        request: &Request<'_>,
        headers: &Headers<'_>,
        responses: Vec<Result<HttpResponse, HttpError>>,
    ) -> Action {
        let mut denied = false;
        for response in &responses {
            // A refused value cannot happen for these headers (the body is cleaned up above);
            // going on without one is the test's visible failure.
            match response {
                Ok(r) => {
                    denied |= r.status == 403;
                    let _ = headers.append("x-outbound-status", r.status.to_string().as_bytes());
                    let _ = headers.append("x-outbound-body", body_summary(&r.body).as_bytes());
                }
                Err(e) => {
                    let _ = headers.append("x-outbound-error", e.name().as_bytes());
                }
            }
        }
        if denied {
            return Action::respond_text(403, "denied by outbound\n");
        }
        let round = request
            .get_value(ROUND)
            .and_then(|v| core::str::from_utf8(&v).ok()?.parse::<u32>().ok())
            .unwrap_or(1);
        if round < config.rounds {
            return send_round(config, request, round + 1);
        }
        Action::Continue
    }
}

export_plugin!(Outbound);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let c = parse(&Settings::from_pairs(&[(URL, " http://auth:8080/check ")])).expect("ok");
        assert_eq!(
            c,
            Config {
                url: "http://auth:8080/check".into(),
                calls: 1,
                rounds: 1,
                timeout_ms: 0,
            }
        );
        let c = parse(&Settings::from_pairs(&[
            (URL, "http://a/"),
            (CALLS, "5"),
            (ROUNDS, "3"),
            (TIMEOUT, "250"),
        ]))
        .expect("ok");
        assert_eq!((c.calls, c.rounds, c.timeout_ms), (5, 3, 250));
    }

    #[test]
    fn refuses_bad_settings() {
        let errors = parse(&Settings::from_pairs(&[(CALLS, "9"), (ROUNDS, "0")])).expect_err("bad");
        let keys: Vec<&str> = errors.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [URL, CALLS, ROUNDS]);
        let errors = parse(&Settings::from_pairs(&[
            (URL, "http://a/"),
            (TIMEOUT, "-1"),
        ]))
        .expect_err("bad");
        assert_eq!(errors[0].key, TIMEOUT);
    }

    #[test]
    fn bodies_become_header_values() {
        assert_eq!(body_summary(b"  ok\r\n"), "ok");
        assert_eq!(body_summary(b"a\nb\tc"), "a b c");
        assert_eq!(body_summary(b"\xffok"), "\u{fffd}ok");
        let long = "é".repeat(60);
        let cut = body_summary(long.as_bytes());
        assert_eq!(cut.len(), 100);
        let cut = body_summary(format!("x{long}").as_bytes());
        assert_eq!(cut.len(), 99);
    }

    #[test]
    fn error_names_are_the_wit_names() {
        assert_eq!(HttpError::NotGranted.name(), "not-granted");
        assert_eq!(HttpError::TooMany.name(), "too-many");
    }
}

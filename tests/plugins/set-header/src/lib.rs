//! Test plugin `set-header`: the smallest useful request hook, for the benchmark. Reads one
//! header (`user-agent`) and sets one (`x-seen-by`, to the configured
//! `wasmgress.io/plugin.set-header.value`, default `wasm`, with the agent's length appended).
//! With `wasmgress.io/plugin.set-header.response: "true"` it also hooks responses, setting
//! `x-response-seen-by: <value>-<status>` and appending `set-header` to `x-hook-order`, and
//! answers 502 itself for upstream 5xx responses.
//! With `wasmgress.io/plugin.set-header.route: "true"` its policy also sets the static request
//! header `x-route: <kind> <namespace>/<name>`: the route `configure` was told about.
//!
//! The `request` handle, each only when configured (so the benchmark's hook stays minimal):
//! - `...facts: "true"`: request headers `x-facts-client`, `x-facts-id`, `x-facts-scheme`,
//!   `x-facts-route` (`kind ns/name service`), `x-facts-sni`, `x-facts-subject`,
//!   `x-facts-issuer`; it keeps the request's path and the response hook (with `response`)
//!   answers `x-kept-path` and `x-kept-id` from what the request hook kept.
//! - `...set-path`, `...set-query` (`-` removes it), `...set-method`: request changes; a
//!   refused change answers 400 with the error's name.
//! - `...late-change: "true"`: the response hook tries `set-path` and reports the refusal in
//!   `x-late-change`.
//! - `...choose-backend: "true"`: a request header `x-set-backend: SERVICE:PORT` makes the
//!   request hook call `set-backend` with it (the route must grant it:
//!   `backends(SERVICE:PORT)`); a refusal answers 400 with `set-backend refused: <error>\n`
//!   (the error's WIT name: `not-granted`, `invalid`...). Off by default, so the benchmark's
//!   hook reads one header and sets one.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Directive, HeaderEdit, HeaderValue, Headers, Hook, Info, Plugin, Policy,
    Request, RequestError, Settings, export_plugin, info,
};

struct SetHeader;

impl Plugin for SetHeader {
    type Config = Config;

    fn info() -> Info {
        info(
            "set-header",
            "0.1.0",
            &[],
            &[],
            &[Hook::RequestHeaders, Hook::ResponseHeaders],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let value = annotations
            .get("wasmgress.io/plugin.set-header.value")
            .unwrap_or("wasm")
            .to_string();
        let mut hooks = alloc::vec![Hook::RequestHeaders];
        if annotations.get("wasmgress.io/plugin.set-header.response") == Some("true") {
            hooks.push(Hook::ResponseHeaders);
        }
        let mut policy = Policy {
            hooks,
            ..Policy::default()
        };
        if annotations.get("wasmgress.io/plugin.set-header.route") == Some("true")
            && let Some(r) = annotations.route()
        {
            let route = format!("{} {}/{}", r.kind, r.namespace, r.name);
            let edit = HeaderEdit::set("x-route", HeaderValue::text(route));
            policy.push(Directive::RequestHeader(edit));
        }
        let flag = |k: &str| annotations.get(&format!("{PREFIX}{k}")) == Some("true");
        let text = |k: &str| annotations.get(&format!("{PREFIX}{k}")).map(String::from);
        let config = Config {
            value,
            facts: flag("facts"),
            late_change: flag("late-change"),
            choose_backend: flag("choose-backend"),
            set_path: text("set-path"),
            set_query: text("set-query"),
            set_method: text("set-method"),
        };
        Ok((policy, config))
    }

    fn on_request_headers(config: &Config, request: &Request<'_>, headers: &Headers<'_>) -> Action {
        let agent_len = headers.get("user-agent").map_or(0, |v| v.len());
        let mut out = config.value.clone();
        out.push('-');
        out.push_str(&agent_len.to_string());
        // A refused value cannot happen for this ASCII text; continuing is the safe choice.
        let _ = headers.set("x-seen-by", out.as_bytes());
        if config.facts {
            facts(request, headers);
        }
        if let Err(e) = changes(config, request) {
            return Action::respond_text(400, &format!("refused: {e:?}\n"));
        }
        // Not UTF-8: still tried (lossily), so the host's refusal shows.
        if config.choose_backend
            && let Some(backend) = headers.get("x-set-backend")
            && let Err(e) = request.set_backend(&String::from_utf8_lossy(&backend))
        {
            let body = format!("set-backend refused: {}\n", e.name());
            return Action::respond_text(400, &body);
        }
        Action::Continue
    }

    fn on_response_headers(
        config: &Config,
        request: &Request<'_>,
        status: u16,
        headers: &Headers<'_>,
    ) -> Action {
        if status >= 500 {
            return Action::respond_text(502, "upstream failed\n");
        }
        let mut out = config.value.clone();
        out.push('-');
        out.push_str(&status.to_string());
        let _ = headers.set("x-response-seen-by", out.as_bytes());
        let _ = headers.append("x-hook-order", b"set-header");
        if config.facts {
            let kept = request.get_value("path").unwrap_or_default();
            let _ = headers.set("x-kept-path", &kept);
            let _ = headers.set("x-kept-id", request.id().as_bytes());
        }
        if config.late_change {
            let answer = format!("{:?}", request.set_path("/late"));
            let _ = headers.set("x-late-change", answer.as_bytes());
        }
        Action::Continue
    }
}

const PREFIX: &str = "wasmgress.io/plugin.set-header.";

/// What `configure` parsed.
struct Config {
    value: String,
    facts: bool,
    late_change: bool,
    /// Honour `x-set-backend`.
    choose_backend: bool,
    set_path: Option<String>,
    set_query: Option<String>,
    set_method: Option<String>,
}

fn facts(request: &Request<'_>, headers: &Headers<'_>) {
    let route = request.route();
    let tls = request.tls();
    let sni = tls.as_ref().and_then(|t| t.sni.clone()).unwrap_or_default();
    let subject = tls.as_ref().and_then(|t| t.client_subject.clone());
    let issuer = tls.as_ref().and_then(|t| t.client_issuer.clone());
    let route = format!(
        "{} {}/{} {}",
        route.kind, route.namespace, route.name, route.service
    );
    let set = [
        ("x-facts-client", request.client_addr()),
        ("x-facts-id", request.id()),
        ("x-facts-scheme", request.scheme()),
        ("x-facts-route", route),
        ("x-facts-sni", sni),
        ("x-facts-subject", subject.unwrap_or_else(|| "-".into())),
        ("x-facts-issuer", issuer.unwrap_or_else(|| "-".into())),
    ];
    for (name, value) in set {
        let _ = headers.set(name, value.as_bytes());
    }
    let _ = request.set_value("path", request.path().as_bytes());
}

fn changes(config: &Config, request: &Request<'_>) -> Result<(), RequestError> {
    if let Some(path) = &config.set_path {
        request.set_path(path)?;
    }
    match config.set_query.as_deref() {
        Some("-") => request.set_query(None)?,
        Some(q) => request.set_query(Some(q))?,
        None => {}
    }
    if let Some(method) = &config.set_method {
        request.set_method(method)?;
    }
    Ok(())
}

export_plugin!(SetHeader);

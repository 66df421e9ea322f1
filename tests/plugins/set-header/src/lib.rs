//! Test plugin `set-header`: the smallest useful request hook, for the benchmark. Reads one
//! header (`user-agent`) and sets one (`x-seen-by`, to the configured
//! `wasmgress.io/plugin.set-header.value`, default `wasm`, with the agent's length appended).
//! With `wasmgress.io/plugin.set-header.response: "true"` it also hooks responses, setting
//! `x-response-seen-by: <value>-<status>`, and answers 502 itself for upstream 5xx responses.
//! With `wasmgress.io/plugin.set-header.route: "true"` its policy also sets the static request
//! header `x-route: <kind> <namespace>/<name>`: the route `configure` was told about.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Directive, HeaderEdit, HeaderValue, Headers, Hook, Info, Plugin, Policy,
    RequestHead, Settings, export_plugin, info,
};

struct SetHeader;

impl Plugin for SetHeader {
    type Config = String;

    fn info() -> Info {
        info(
            "set-header",
            "0.1.0",
            &[],
            &[],
            &[Hook::RequestHeaders, Hook::ResponseHeaders],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, String), Vec<Diagnostic>> {
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
        Ok((policy, value))
    }

    fn on_request_headers(value: &String, _: &RequestHead, headers: &Headers<'_>) -> Action {
        let agent_len = headers.get("user-agent").map_or(0, |v| v.len());
        let mut out = value.clone();
        out.push('-');
        out.push_str(&agent_len.to_string());
        // A refused value cannot happen for this ASCII text; continuing is the safe choice.
        let _ = headers.set("x-seen-by", out.as_bytes());
        Action::Continue
    }

    fn on_response_headers(value: &String, status: u16, headers: &Headers<'_>) -> Action {
        if status >= 500 {
            return Action::respond_text(502, "upstream failed\n");
        }
        let mut out = value.clone();
        out.push('-');
        out.push_str(&status.to_string());
        let _ = headers.set("x-response-seen-by", out.as_bytes());
        Action::Continue
    }
}

export_plugin!(SetHeader);

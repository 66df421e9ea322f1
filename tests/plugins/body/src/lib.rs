//! Test plugin `body`: the body and trailer hooks.
//!
//! `wasmgress.io/plugin.body.hooks` picks the hooks its policy asks for: a comma-separated list
//! of `request-body`, `response-body`, `request-trailers` and `response-trailers` (default: all
//! four; any other word is an error).
//!
//! - `on-request-body`: a chunk containing `BLOCK` aborts the body; any other chunk is
//!   replaced by itself ASCII-uppercased, with `|req-end` appended to the last one. It counts
//!   its calls in the request value `chunks` (the body's copy of the request handle).
//! - `on-response-body`: a chunk containing `ABORT` aborts the body; any other chunk is
//!   replaced by itself ASCII-uppercased, with `|resp-end` appended to the last one.
//! - `on-request-trailers`: sets the trailer `x-trailer-seen: request`.
//! - `on-response-trailers`: sets the trailer `x-plugin-trailer: seen`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    BodyAction, Diagnostic, Diagnostics, Headers, Hook, Info, Plugin, Policy, Request, Settings,
    debug, export_plugin, info,
};

const PREFIX: &str = "wasmgress.io/plugin.body.";
const HOOKS: &str = "wasmgress.io/plugin.body.hooks";

/// Every hook the plugin has, by its WIT name.
const ALL: [(&str, Hook); 4] = [
    ("request-body", Hook::RequestBody),
    ("response-body", Hook::ResponseBody),
    ("request-trailers", Hook::RequestTrailers),
    ("response-trailers", Hook::ResponseTrailers),
];

/// The hooks `wasmgress.io/plugin.body.hooks` asks for, in the order given, without repeats.
pub fn parse(settings: &Settings) -> Result<Vec<Hook>, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let Some(list) = settings.get(HOOKS) else {
        return Ok(ALL.iter().map(|(_, h)| *h).collect());
    };
    let mut hooks = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match ALL.iter().find(|(name, _)| *name == word) {
            Some((_, hook)) if !hooks.contains(hook) => hooks.push(*hook),
            Some(_) => {}
            None => diags.error(
                HOOKS,
                format!(
                    "unknown hook `{word}` (expected request-body, response-body, \
                     request-trailers or response-trailers)"
                ),
            ),
        }
    }
    for (key, _) in settings.iter() {
        if key.starts_with(PREFIX) && key != HOOKS {
            diags.warning(key, "unknown setting (expected hooks)");
        }
    }
    if diags.has_errors() {
        return Err(diags.into_vec());
    }
    Ok(hooks)
}

/// What a body hook makes of a chunk: `Abort` when it contains `stop`, else the chunk
/// ASCII-uppercased, with `suffix` appended to the last one.
pub fn rewrite(chunk: &[u8], end: bool, stop: &[u8], suffix: &[u8]) -> BodyAction {
    if chunk.windows(stop.len()).any(|w| w == stop) {
        return BodyAction::Abort;
    }
    let mut out = chunk.to_ascii_uppercase();
    if end {
        out.extend_from_slice(suffix);
    }
    BodyAction::Replace(out)
}

struct Body;

impl Plugin for Body {
    type Config = ();

    fn info() -> Info {
        let hooks: Vec<Hook> = ALL.iter().map(|(_, h)| *h).collect();
        info("body", "0.1.0", &[], &[], &hooks)
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        let policy = Policy {
            hooks: parse(settings)?,
            ..Policy::default()
        };
        Ok((policy, ()))
    }

    fn on_request_body(_: &(), request: &Request<'_>, chunk: Vec<u8>, end: bool) -> BodyAction {
        let chunks = request
            .get_value("chunks")
            .and_then(|v| core::str::from_utf8(&v).ok()?.parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        let _ = request.set_value("chunks", chunks.to_string().as_bytes());
        if end {
            debug!("request body: {chunks} chunks");
        }
        rewrite(&chunk, end, b"BLOCK", b"|req-end")
    }

    fn on_response_body(_: &(), _: &Request<'_>, chunk: Vec<u8>, end: bool) -> BodyAction {
        rewrite(&chunk, end, b"ABORT", b"|resp-end")
    }

    fn on_request_trailers(_: &(), _: &Request<'_>, trailers: &Headers<'_>) {
        let _ = trailers.set("x-trailer-seen", b"request");
    }

    fn on_response_trailers(_: &(), _: &Request<'_>, trailers: &Headers<'_>) {
        let _ = trailers.set("x-plugin-trailer", b"seen");
    }
}

export_plugin!(Body);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_default_to_all_four() {
        let hooks = parse(&Settings::default()).expect("ok");
        assert_eq!(hooks.len(), 4);
        let hooks = parse(&Settings::from_pairs(&[(
            HOOKS,
            " response-trailers, request-body,,request-body ",
        )]))
        .expect("ok");
        assert_eq!(hooks, [Hook::ResponseTrailers, Hook::RequestBody]);
    }

    #[test]
    fn unknown_hooks_are_errors() {
        let errors = parse(&Settings::from_pairs(&[(
            HOOKS,
            "request-body, request-headers",
        )]))
        .expect_err("bad");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, HOOKS);
    }

    #[test]
    fn chunks_are_uppercased_or_aborted() {
        assert_eq!(
            rewrite(b"hi there", false, b"BLOCK", b"|req-end"),
            BodyAction::Replace(b"HI THERE".to_vec())
        );
        assert_eq!(
            rewrite(b"", true, b"BLOCK", b"|req-end"),
            BodyAction::Replace(b"|req-end".to_vec())
        );
        assert_eq!(
            rewrite(b"x BLOCK y", true, b"BLOCK", b"|req-end"),
            BodyAction::Abort
        );
        // Only the exact word stops it: the chunk is looked at before uppercasing.
        assert_eq!(
            rewrite(b"abort", true, b"ABORT", b"|resp-end"),
            BodyAction::Replace(b"ABORT|resp-end".to_vec())
        );
    }
}

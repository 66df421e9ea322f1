//! Example wasmgress plugin `ws-guard`: inspects every WebSocket message of a route (the
//! `websocket-message` hook) and enforces a small contract on what clients send, and redacts
//! what they receive.
//!
//! ```yaml
//! wasmgress.io/plugins: "ws-guard"
//! wasmgress.io/plugin.ws-guard.max-bytes: "4096"     # client messages above: close 1009
//! wasmgress.io/plugin.ws-guard.json-fields: "type"  # client text messages must be JSON
//!                                                     # objects with these fields, else dropped
//! wasmgress.io/plugin.ws-guard.binary: "deny"        # client binary messages: close 1003
//! wasmgress.io/plugin.ws-guard.redact: "secret"      # words replaced by *** towards clients
//! ```
//!
//! Messages are whole (the host joins fragments, at most 1 MiB) and the plugin decides per
//! message: forward, replace, drop or close. The count of dropped messages is kept per tunnel
//! in the request's values and logged. Tunnels through routes without this plugin are untouched
//! byte tunnels.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Direction, Hook, Info, MessageAction, MessageKind, Plugin, Policy,
    Request, Settings, export_plugin, info, metrics, warn,
};

const MAX_BYTES: &str = "wasmgress.io/plugin.ws-guard.max-bytes";
const JSON_FIELDS: &str = "wasmgress.io/plugin.ws-guard.json-fields";
const BINARY: &str = "wasmgress.io/plugin.ws-guard.binary";
const REDACT: &str = "wasmgress.io/plugin.ws-guard.redact";

/// What `configure` parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub max_bytes: Option<usize>,
    /// Required fields of client text messages; `None`: text is not checked.
    pub json_fields: Option<Vec<String>>,
    pub deny_binary: bool,
    pub redact: Vec<String>,
}

/// Parse and validate the annotations.
pub fn parse(settings: &Settings) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut config = Config::default();
    if let Some(v) = settings.get(MAX_BYTES) {
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => config.max_bytes = Some(n),
            _ => diags.error(MAX_BYTES, format!("`{v}` is not a number of bytes above 0")),
        }
    }
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(ToString::to_string)
            .collect()
    };
    config.json_fields = settings.get(JSON_FIELDS).map(list);
    config.deny_binary = match settings.get(BINARY).map(str::trim) {
        None | Some("allow") => false,
        Some("deny") => true,
        Some(other) => {
            diags.error(BINARY, format!("`{other}` is not `allow` or `deny`"));
            false
        }
    };
    config.redact = settings.get(REDACT).map(list).unwrap_or_default();
    diags.finish(Policy::default()).map(|_| config)
}

/// Is `text` a JSON object with every field of `fields`?
pub fn json_object_with(text: &str, fields: &[String]) -> bool {
    match miniserde::json::from_str::<miniserde::json::Value>(text) {
        Ok(miniserde::json::Value::Object(object)) => {
            fields.iter().all(|f| object.contains_key(f.as_str()))
        }
        _ => false,
    }
}

/// `text` with every word of `words` replaced by `***`; `None` when nothing changed.
pub fn redacted(text: &str, words: &[String]) -> Option<String> {
    let mut out = String::from(text);
    for w in words {
        if out.contains(w.as_str()) {
            out = out.replace(w.as_str(), "***");
        }
    }
    (out != text).then_some(out)
}

/// What the guard does with one message.
pub fn judge(
    config: &Config,
    direction: Direction,
    kind: MessageKind,
    payload: &[u8],
) -> MessageAction {
    match direction {
        Direction::ToUpstream => {
            if config.max_bytes.is_some_and(|max| payload.len() > max) {
                return MessageAction::Close((1009, "message too big".into()));
            }
            match kind {
                MessageKind::Binary if config.deny_binary => {
                    MessageAction::Close((1003, "binary messages are not accepted".into()))
                }
                MessageKind::Text => match &config.json_fields {
                    Some(fields) => {
                        let ok = core::str::from_utf8(payload)
                            .is_ok_and(|t| json_object_with(t, fields));
                        if ok {
                            MessageAction::Forward
                        } else {
                            MessageAction::Drop
                        }
                    }
                    None => MessageAction::Forward,
                },
                MessageKind::Binary => MessageAction::Forward,
            }
        }
        Direction::ToClient => match (kind, core::str::from_utf8(payload)) {
            (MessageKind::Text, Ok(text)) => match redacted(text, &config.redact) {
                Some(clean) => MessageAction::Replace(clean.into_bytes()),
                None => MessageAction::Forward,
            },
            _ => MessageAction::Forward,
        },
    }
}

struct WsGuard;

impl Plugin for WsGuard {
    type Config = Config;

    fn info() -> Info {
        let mut info = info("ws-guard", "0.1.0", &[], &[], &[Hook::WebsocketMessage]);
        // Index 0: `wasmgress_plugin_ws_guard_messages_total{action=...}`; index 1: sizes.
        info.metrics = alloc::vec![
            metrics::counter("messages", "Messages judged, by action.", "action"),
            metrics::histogram(
                "message_bytes",
                "Sizes of the messages judged, by direction.",
                "direction",
                &[64.0, 1024.0, 16384.0, 262144.0],
            ),
        ];
        info
    }

    fn configure(settings: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let config = parse(settings)?;
        let policy = Policy {
            hooks: alloc::vec![Hook::WebsocketMessage],
            ..Policy::default()
        };
        Ok((policy, config))
    }

    fn on_websocket_message(
        config: &Config,
        request: &Request<'_>,
        direction: Direction,
        kind: MessageKind,
        payload: Vec<u8>,
    ) -> MessageAction {
        let action = judge(config, direction, kind, &payload);
        let name = match &action {
            MessageAction::Forward => "forward",
            MessageAction::Replace(_) => "replace",
            MessageAction::Drop => "drop",
            MessageAction::Close(_) => "close",
        };
        metrics::add(0, name, 1);
        let towards = match direction {
            Direction::ToUpstream => "to-upstream",
            Direction::ToClient => "to-client",
        };
        metrics::observe(1, towards, payload.len() as f64);
        if action == MessageAction::Drop {
            // The tunnel's request values last as long as the tunnel: count per connection.
            let dropped = request
                .get_value("dropped")
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            let _ = request.set_value("dropped", dropped.to_string().as_bytes());
            warn!("dropped message {dropped} from {}", request.client_addr());
        }
        action
    }
}

export_plugin!(WsGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        parse(&Settings::from_pairs(&[
            (MAX_BYTES, "32"),
            (JSON_FIELDS, "type, id"),
            (BINARY, "deny"),
            (REDACT, "secret, token"),
        ]))
        .expect("valid")
    }

    #[test]
    fn client_messages_must_fit_the_contract() {
        let c = config();
        let up = |kind, p: &[u8]| judge(&c, Direction::ToUpstream, kind, p);
        assert_eq!(
            up(MessageKind::Text, br#"{"type":"a","id":1}"#),
            MessageAction::Forward
        );
        assert_eq!(
            up(MessageKind::Text, br#"{"type":"a"}"#),
            MessageAction::Drop
        );
        assert_eq!(up(MessageKind::Text, b"[1,2]"), MessageAction::Drop);
        assert_eq!(up(MessageKind::Text, b"not json"), MessageAction::Drop);
        assert!(matches!(
            up(MessageKind::Text, &[b' '; 33]),
            MessageAction::Close((1009, _))
        ));
        assert!(matches!(
            up(MessageKind::Binary, b"\x00"),
            MessageAction::Close((1003, _))
        ));
    }

    #[test]
    fn server_messages_are_redacted() {
        let c = config();
        let down = |p: &[u8]| judge(&c, Direction::ToClient, MessageKind::Text, p);
        assert_eq!(down(b"hello"), MessageAction::Forward);
        assert_eq!(
            down(b"my secret token"),
            MessageAction::Replace(b"my *** ***".to_vec())
        );
        assert_eq!(
            judge(&c, Direction::ToClient, MessageKind::Binary, b"secret"),
            MessageAction::Forward
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let e = parse(&Settings::from_pairs(&[
            (MAX_BYTES, "0"),
            (BINARY, "maybe"),
        ]))
        .expect_err("invalid");
        let keys: Vec<&str> = e.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [MAX_BYTES, BINARY]);
    }
}

//! The wasmgress plugin SDK: write a plugin as one [`Plugin`] impl and one [`export_plugin!`].
//!
//! A plugin is a WebAssembly component for the `wasmgress:plugin/filter` world (`wit/` at the
//! repository root). This crate owns the Rust side of that ABI for plugins: the generated
//! bindings, typed helpers over them, and the glue that keeps a plugin's parsed configuration
//! between `configure` and the request hooks. It must not grow capabilities the world does not
//! grant: it is `no_std` (with `alloc`) so a plugin imports nothing but the filter world's
//! interfaces, no WASI; the host refuses components that import anything else. A capability
//! ([`clock`], [`random`], [`counters`], [`secrets`], [`http`]) is imported only by a plugin
//! that calls it, and a route must grant it (`wasmgress.io/plugin.<name>.capabilities`).
//!
//! ```ignore
//! #![cfg_attr(target_arch = "wasm32", no_std)]
//! extern crate alloc;
//! use wasmgress_plugin_sdk::*;
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     type Config = ();
//!     fn info() -> Info { info("hello", "0.1.0", &[], &[], &[]) }
//!     fn configure(_: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
//!         Ok((Policy::default(), ()))
//!     }
//! }
//! export_plugin!(Hello);
//! ```
//!
//! Lifecycle, as the host drives it: `configure` runs on a fresh instance for one Ingress. If
//! the returned policy asks for hooks, the host keeps that instance (and creates more the same
//! way under load) for that Ingress only, so [`Plugin::Config`] is safe to keep per instance:
//! it never mixes two Ingresses.
//!
//! The hooks are [`Plugin`]'s default methods; implement the ones the policy asks for:
//! [`on_request_headers`](Plugin::on_request_headers) (and
//! [`on_http_responses`](Plugin::on_http_responses) when it returns [`Action::Wait`] after
//! queueing [`http`] calls), [`on_response_headers`](Plugin::on_response_headers),
//! [`on_request_body`](Plugin::on_request_body), [`on_response_body`](Plugin::on_response_body),
//! [`on_request_trailers`](Plugin::on_request_trailers),
//! [`on_response_trailers`](Plugin::on_response_trailers) and
//! [`on_websocket_message`](Plugin::on_websocket_message).
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// The raw bindings generated from `wit/` by wit-bindgen. Prefer the re-exports and helpers.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "filter",
        pub_export_macro: true,
        default_bindings_module: "wasmgress_plugin_sdk::bindings",
        additional_derives: [Clone, PartialEq],
    });
}

pub use bindings::wasmgress::plugin::log::Level;
pub use bindings::wasmgress::plugin::types::{
    Action, Affinity, AffinityMode, AuthCacheDuration, AuthSecretFormat, Balance, BasicAuth,
    BodyAction, Canary, ClientTls, ClientVerify, Config, Cors, Diagnostic, DigestAuth, Direction,
    Directive, ExternalAuth, Fields, FixedResponse, HashBy, HashPart, Header, HeaderEdit,
    HeaderError, HeaderValue, Hook, HttpError, HttpRequest, HttpResponse, HttpVersion, Info,
    MessageAction, MessageKind, Mirror, NextUpstream, NextUpstreamOn, ObjectRef, Policy, RateLimit,
    Redirect, RequestError, RequestVariable, Response, ResponseRate, RouteInfo, RouteRef, SameSite,
    Satisfy, Severity, StaticResponse, TemplatePart, TlsInfo, UpstreamProtocol,
};

pub mod capabilities;
pub mod refs;
mod request;

pub use capabilities::{clock, counters, http, random, secrets};

/// The plugin's own metrics, declared in [`Info::metrics`] and exported on the host's
/// `/metrics` as `wasmgress_plugin_<plugin>_<name>` with labels `plugin`, `namespace` and the
/// metric's own. Always available (no grant); bounded by the host (32 label values per metric
/// and namespace).
pub mod metrics {
    pub use crate::bindings::wasmgress::plugin::types::{Metric, MetricKind};
    use alloc::string::ToString;
    use alloc::vec::Vec;

    /// A counter declaration; `label` is the name of its one label, or `""`.
    pub fn counter(name: &str, help: &str, label: &str) -> Metric {
        Metric {
            name: name.to_string(),
            help: help.to_string(),
            kind: MetricKind::Counter,
            buckets: Vec::new(),
            label: label.to_string(),
        }
    }

    /// A histogram declaration with ascending bucket bounds.
    pub fn histogram(name: &str, help: &str, label: &str, buckets: &[f64]) -> Metric {
        Metric {
            kind: MetricKind::Histogram,
            buckets: buckets.to_vec(),
            ..counter(name, help, label)
        }
    }

    /// Adds `value` to the counter at `index` of the declared list.
    pub fn add(index: u32, label: &str, value: u64) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::wasmgress::plugin::metrics::add(index, label, value);
        #[cfg(not(target_arch = "wasm32"))]
        let _ = (index, label, value);
    }

    /// Records `value` in the histogram at `index` of the declared list.
    pub fn observe(index: u32, label: &str, value: f64) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::wasmgress::plugin::metrics::observe(index, label, value);
        #[cfg(not(target_arch = "wasm32"))]
        let _ = (index, label, value);
    }
}
pub use request::Request;
pub mod template;
pub mod validate;

#[doc(hidden)]
pub mod __rt;

/// A plugin: describe yourself, turn annotations into a policy, optionally hook requests.
pub trait Plugin: 'static {
    /// What `configure` parsed and the hooks need (for example an API key). Kept in the
    /// instance's memory; an instance only ever serves the Ingress it was configured for.
    type Config: 'static;

    /// Name, version, owned annotation keys and prefixes, possible hooks. Must be constant.
    fn info() -> Info;

    /// Turn this route's settings (for an Ingress: the annotations this plugin owns) into a
    /// policy and the configuration the hooks need, or explain with at least one error
    /// diagnostic why not.
    fn configure(settings: &Settings) -> Result<(Policy, Self::Config), Vec<Diagnostic>>;

    /// Called per request when the policy asked for [`Hook::RequestHeaders`].
    /// `request` reads the request's line, id, client, TLS facts and route, keeps values for
    /// this plugin's later hooks, and changes the method, path, query or backend the request
    /// goes to. Continue, answer ([`Action::RespondNow`]), or queue outbound calls with
    /// [`http::send`] and return [`Action::Wait`]: [`on_http_responses`](Plugin::on_http_responses)
    /// then decides.
    fn on_request_headers(
        _config: &Self::Config,
        _request: &Request<'_>,
        _headers: &Headers<'_>,
    ) -> Action {
        Action::Continue
    }

    /// Called per response when the policy asked for [`Hook::ResponseHeaders`]: every response
    /// of the route (the upstream's and the proxy's own), in reverse attach order. `request`
    /// is the same request the request hook saw, with the values it kept.
    fn on_response_headers(
        _config: &Self::Config,
        _request: &Request<'_>,
        _status: u16,
        _headers: &Headers<'_>,
    ) -> Action {
        Action::Continue
    }

    /// Called per WebSocket data message when the policy asked for
    /// [`Hook::WebsocketMessage`]: fragments are joined (at most 1 MiB), control frames are the
    /// host's. Return [`MessageAction::Forward`], a replacement payload (same kind), `Drop`, or
    /// `Close((code, reason))` to end the tunnel.
    fn on_websocket_message(
        _config: &Self::Config,
        _request: &Request<'_>,
        _direction: Direction,
        _kind: MessageKind,
        _payload: Vec<u8>,
    ) -> MessageAction {
        MessageAction::Forward
    }

    /// Called when the outbound calls a request hook queued with [`http::send`] and then
    /// waited for ([`Action::Wait`]) are done, on any instance configured for the route (keep
    /// what it needs with [`Request::set_value`]): `headers` are the
    /// request's again, `responses` each call's result in the order they were queued. Decides
    /// as [`on_request_headers`](Plugin::on_request_headers) does; returning
    /// [`Action::Wait`] again (after queueing more calls) starts another round, at most 4 waits
    /// per request and plugin. Only called for a plugin that waits; a plugin that waits must
    /// implement it: the default answers 500 (a plugin that asked a service before deciding
    /// must not let the request through undecided).
    fn on_http_responses(
        _config: &Self::Config,
        _request: &Request<'_>,
        _headers: &Headers<'_>,
        _responses: Vec<Result<HttpResponse, HttpError>>,
    ) -> Action {
        crate::log(
            Level::Error,
            "the plugin waited for outbound calls but does not implement on_http_responses",
        );
        Action::respond_text(500, "plugin cannot decide\n")
    }

    /// Called per chunk of the request body (at most 64 KiB; `end` marks the last call, whose
    /// chunk may be empty) when the policy asked for [`Hook::RequestBody`], in attach order, as
    /// the body streams to the upstream. Return [`BodyAction::Forward`], `Replace(bytes)` (what
    /// the next plugin, then the upstream, sees; the upstream then gets the body chunked), or
    /// `Abort` to cut the body off. `request` is a copy taken when the body started: values
    /// set here are seen by this plugin's later body calls only.
    fn on_request_body(
        _config: &Self::Config,
        _request: &Request<'_>,
        _chunk: Vec<u8>,
        _end: bool,
    ) -> BodyAction {
        BodyAction::Forward
    }

    /// Called per chunk of the upstream's response body when the policy asked for
    /// [`Hook::ResponseBody`], in reverse attach order, as
    /// [`on_request_body`](Plugin::on_request_body) is for requests. Answers made by the proxy
    /// or by plugins do not pass through it. `request` is a copy taken after the response hooks
    /// ran.
    fn on_response_body(
        _config: &Self::Config,
        _request: &Request<'_>,
        _chunk: Vec<u8>,
        _end: bool,
    ) -> BodyAction {
        BodyAction::Forward
    }

    /// Called with the request's trailers, when it has some, after the body's last chunk, when
    /// the policy asked for [`Hook::RequestTrailers`] (attach order); edit them in place.
    fn on_request_trailers(
        _config: &Self::Config,
        _request: &Request<'_>,
        _trailers: &Headers<'_>,
    ) {
    }

    /// Called with the upstream response's trailers (gRPC's status travels in them), when it
    /// has some, after the body's last chunk, when the policy asked for
    /// [`Hook::ResponseTrailers`] (reverse attach order); edit them in place.
    fn on_response_trailers(
        _config: &Self::Config,
        _request: &Request<'_>,
        _trailers: &Headers<'_>,
    ) {
    }
}

/// Export a [`Plugin`] impl as the component's `filter` world. Use once, at the crate root.
///
/// Expands to nothing on non-wasm targets, so a plugin crate's native unit tests build.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __WasmgressExport;
            impl $crate::bindings::Guest for __WasmgressExport {
                fn describe() -> $crate::Info {
                    $crate::__rt::describe::<$plugin>()
                }
                fn configure(
                    config: $crate::Config,
                ) -> ::core::result::Result<$crate::Policy, $crate::__rt::Vec<$crate::Diagnostic>>
                {
                    $crate::__rt::configure::<$plugin>(config)
                }
                fn on_request_headers(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    headers: &$crate::Fields,
                ) -> $crate::Action {
                    $crate::__rt::on_request_headers::<$plugin>(request, headers)
                }
                fn on_response_headers(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    status: u16,
                    headers: &$crate::Fields,
                ) -> $crate::Action {
                    $crate::__rt::on_response_headers::<$plugin>(request, status, headers)
                }
                fn on_websocket_message(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    direction: $crate::Direction,
                    kind: $crate::MessageKind,
                    payload: $crate::__rt::Vec<u8>,
                ) -> $crate::MessageAction {
                    $crate::__rt::on_websocket_message::<$plugin>(request, direction, kind, payload)
                }
                fn on_http_responses(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    headers: &$crate::Fields,
                    responses: $crate::__rt::Vec<
                        ::core::result::Result<$crate::HttpResponse, $crate::HttpError>,
                    >,
                ) -> $crate::Action {
                    $crate::__rt::on_http_responses::<$plugin>(request, headers, responses)
                }
                fn on_request_body(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    chunk: $crate::__rt::Vec<u8>,
                    end: bool,
                ) -> $crate::BodyAction {
                    $crate::__rt::on_request_body::<$plugin>(request, chunk, end)
                }
                fn on_response_body(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    chunk: $crate::__rt::Vec<u8>,
                    end: bool,
                ) -> $crate::BodyAction {
                    $crate::__rt::on_response_body::<$plugin>(request, chunk, end)
                }
                fn on_request_trailers(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    trailers: &$crate::Fields,
                ) {
                    $crate::__rt::on_request_trailers::<$plugin>(request, trailers)
                }
                fn on_response_trailers(
                    request: &$crate::bindings::wasmgress::plugin::types::Request,
                    trailers: &$crate::Fields,
                ) {
                    $crate::__rt::on_response_trailers::<$plugin>(request, trailers)
                }
            }
    $crate::bindings::export!(__WasmgressExport with_types_in $crate::bindings);
        };
        // Natively there is nothing to export; still type-check the impl and mark it used so
        // the crate's unit tests build without dead-code noise.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$plugin as $crate::Plugin>::info;
            let _ = <$plugin as $crate::Plugin>::configure;
            let _ = <$plugin as $crate::Plugin>::on_request_headers;
            let _ = <$plugin as $crate::Plugin>::on_response_headers;
            let _ = <$plugin as $crate::Plugin>::on_websocket_message;
            let _ = <$plugin as $crate::Plugin>::on_http_responses;
            let _ = <$plugin as $crate::Plugin>::on_request_body;
            let _ = <$plugin as $crate::Plugin>::on_response_body;
            let _ = <$plugin as $crate::Plugin>::on_request_trailers;
            let _ = <$plugin as $crate::Plugin>::on_response_trailers;
        };
    };
}

/// Build an [`Info`] from borrowed parts.
pub fn info(name: &str, version: &str, keys: &[&str], prefixes: &[&str], hooks: &[Hook]) -> Info {
    Info {
        name: name.to_string(),
        version: version.to_string(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        hooks: hooks.to_vec(),
        metrics: Vec::new(),
    }
}

impl Default for Policy {
    /// A policy that changes nothing and asks for no hooks.
    fn default() -> Self {
        Policy {
            directives: Vec::new(),
            hooks: Vec::new(),
            notes: Vec::new(),
        }
    }
}

impl Policy {
    /// Add a directive; the host applies them in order.
    pub fn push(&mut self, directive: Directive) -> &mut Self {
        self.directives.push(directive);
        self
    }

    /// The request header edits, in order (handy in unit tests).
    pub fn request_headers(&self) -> impl Iterator<Item = &HeaderEdit> {
        self.directives.iter().filter_map(|d| match d {
            Directive::RequestHeader(e) => Some(e),
            _ => None,
        })
    }

    /// The response header edits, in order.
    pub fn response_headers(&self) -> impl Iterator<Item = &HeaderEdit> {
        self.directives.iter().filter_map(|d| match d {
            Directive::ResponseHeader(e) => Some(e),
            _ => None,
        })
    }
}

impl Diagnostic {
    fn new(severity: Severity, key: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            key: key.to_string(),
            severity,
            message: message.into(),
        }
    }

    /// An error about `key`: the Ingress is rejected.
    pub fn error(key: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, key, message)
    }

    /// A warning about `key`: reported, the Ingress is served.
    pub fn warning(key: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, key, message)
    }

    /// An informational note about `key`.
    pub fn info(key: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Info, key, message)
    }
}

impl HeaderValue {
    /// A literal text value.
    pub fn text(value: impl Into<String>) -> Self {
        HeaderValue::Text(value.into())
    }
}

impl HeaderEdit {
    /// Replace every value of `name` with `value`.
    pub fn set(name: impl Into<String>, value: HeaderValue) -> Self {
        HeaderEdit::Set(Header {
            name: name.into(),
            value,
        })
    }

    /// Add `value` to `name`, keeping existing values.
    pub fn append(name: impl Into<String>, value: HeaderValue) -> Self {
        HeaderEdit::Append(Header {
            name: name.into(),
            value,
        })
    }

    /// Remove every value of `name`.
    pub fn remove(name: impl Into<String>) -> Self {
        HeaderEdit::Remove(name.into())
    }
}

impl Action {
    /// Answer now with `status`, a `text/plain` body and no other headers.
    pub fn respond_text(status: u16, body: &str) -> Self {
        Action::RespondNow(Response {
            status,
            headers: alloc::vec![(
                "content-type".to_string(),
                b"text/plain; charset=utf-8".to_vec(),
            )],
            body: body.as_bytes().to_vec(),
        })
    }
}

/// What `configure` is handed: the route it configures and the settings this plugin owns,
/// sorted by key. For an Ingress the settings are its annotations; a Gateway API route hands
/// over its `ExtensionRef` filter's pairs under the same keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    route: Option<RouteRef>,
    entries: Vec<(String, String)>,
}

impl Settings {
    /// Wrap a list of `(key, value)` pairs (sorted here; duplicate keys keep the last value).
    pub fn new(mut entries: Vec<(String, String)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // A map cannot hold duplicates; the host never sends them, but keep `get` unambiguous.
        let mut out: Vec<(String, String)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Settings {
            route: None,
            entries: out,
        }
    }

    /// The settings and route the host handed to `configure`.
    pub fn from_config(config: Config) -> Self {
        let mut settings = Self::new(config.settings);
        settings.route = Some(config.route);
        settings
    }

    /// The route being configured (`None` only in unit tests built with [`Settings::new`]).
    pub fn route(&self) -> Option<&RouteRef> {
        self.route.as_ref()
    }

    /// Build from borrowed pairs (handy in unit tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.entries[i].1.as_str())
    }

    /// Every `(key, value)`, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True when no setting was handed over.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Collects diagnostics while parsing, then decides between a policy and a rejection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Record an error about `key` (rejects the Ingress).
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(Diagnostic::error(key, message));
    }

    /// Record a warning about `key`.
    pub fn warning(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(Diagnostic::warning(key, message));
    }

    /// Record an informational note about `key`.
    pub fn info(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(Diagnostic::info(key, message));
    }

    /// Record an already built diagnostic.
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.list.push(diagnostic);
    }

    /// True when at least one error was recorded.
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }

    /// What was recorded so far.
    pub fn as_slice(&self) -> &[Diagnostic] {
        &self.list
    }

    /// Everything recorded, in order.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.list
    }

    /// `Err(all diagnostics)` if any is an error, else `Ok(policy)` carrying the warnings and
    /// infos as the policy's notes.
    pub fn finish(self, mut policy: Policy) -> Result<Policy, Vec<Diagnostic>> {
        if self.has_errors() {
            Err(self.list)
        } else {
            policy.notes.extend(self.list);
            Ok(policy)
        }
    }
}

/// Parse a boolean annotation the way ingress-nginx does (Go's `strconv.ParseBool`).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The header map handed to a hook. Values are bytes; the `_str` helpers are for UTF-8 text.
pub struct Headers<'a> {
    fields: &'a Fields,
}

impl<'a> Headers<'a> {
    /// Wrap the host's handle (done by the export glue).
    pub fn new(fields: &'a Fields) -> Self {
        Headers { fields }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.fields.get(name)
    }

    /// The first value of `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.fields
            .get(name)
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of `name`.
    pub fn get_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.fields.get_all(name)
    }

    /// Replace every value of `name`.
    pub fn set(&self, name: &str, value: &[u8]) -> Result<(), HeaderError> {
        self.fields.set(name, value)
    }

    /// Add a value to `name`.
    pub fn append(&self, name: &str, value: &[u8]) -> Result<(), HeaderError> {
        self.fields.append(name, value)
    }

    /// Remove every value of `name`.
    pub fn remove(&self, name: &str) -> Result<(), HeaderError> {
        self.fields.remove(name)
    }
}

/// Log a line through the host (prefixed with the plugin's name; the host caps volume).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::wasmgress::plugin::log::log(level, message);
    // Natively (unit tests) there is no host to log to.
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// `info!("...", args)`: format and log at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &$crate::__rt::format!($($arg)*)) };
}

/// `warn!("...", args)`: format and log at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &$crate::__rt::format!($($arg)*)) };
}

/// `debug!("...", args)`: format and log at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &$crate::__rt::format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_follow_go_parse_bool() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool(" False "), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }

    #[test]
    fn annotations_sorted_and_deduplicated() {
        let a = Settings::from_pairs(&[("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(a.get("b"), Some("3"));
        assert_eq!(a.get("a"), Some("2"));
        assert_eq!(a.get("c"), None);
        assert_eq!(a.iter().count(), 2);
    }

    #[test]
    fn diagnostics_split_errors_from_notes() {
        let mut d = Diagnostics::default();
        d.warning("k", "careful");
        let p = d.clone().finish(Policy::default()).expect("no errors");
        assert_eq!(p.notes.len(), 1);
        d.error("k", "bad");
        assert_eq!(d.finish(Policy::default()).expect_err("errors").len(), 2);
    }
}

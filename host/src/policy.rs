//! The executable policy of a route: everything compile decided about how to serve it.
//!
//! Plugins' `configure` results are turned into this once per Ingress at compile time, with
//! header names and values already validated and parsed, so the request path only executes
//! data. This module describes and evaluates policies; it does not decide them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::access::Access;
use crate::access::limit::Limits;
use crate::cors::Cors;
use crate::plugin::HookChain;

/// How fast a response may go out once its first bytes have (nginx `limit_rate_after`,
/// `limit_rate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseRate {
    pub bytes_per_second: u64,
    pub after_bytes: u64,
}

/// What the upstream speaks (ingress-nginx `backend-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
    /// HTTP/1.1, or h2c for gRPC requests when the Service port declares an h2c-capable
    /// `appProtocol`.
    AutoHttp,
}

impl Protocol {
    pub fn is_grpc(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::Grpcs)
    }
}

/// HTTP version towards an HTTP/1 upstream (ingress-nginx `proxy-http-version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    #[default]
    Http11,
}

/// A request property substituted into header values and redirect locations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variable {
    Host,
    RemoteAddr,
    Scheme,
    RequestUri,
    /// `$escaped_request_uri`: the request URI as a query component.
    EscapedRequestUri,
    /// `$http_host`: host and port as sent.
    Authority,
    /// `$request_method`.
    Method,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Variable(Variable),
    /// `$http_<name>`: a request header's value (empty without one, or without headers).
    Header(HeaderName),
}

/// The request facts templates may use.
#[derive(Clone, Copy, Debug)]
pub struct RequestVars<'a> {
    pub host: &'a str,
    pub remote: SocketAddr,
    pub secure: bool,
    pub request_uri: &'a str,
    /// Host and port as the client sent them.
    pub authority: &'a str,
    pub method: &'a str,
    /// The request's headers, where a template may read them.
    pub headers: Option<&'a HeaderMap>,
}

/// Renders template parts for one request.
pub fn render(parts: &[Part], vars: &RequestVars<'_>) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Variable(Variable::Host) => out.push_str(vars.host),
            Part::Variable(Variable::RemoteAddr) => out.push_str(&vars.remote.ip().to_string()),
            Part::Variable(Variable::Scheme) => {
                out.push_str(if vars.secure { "https" } else { "http" })
            }
            Part::Variable(Variable::RequestUri) => out.push_str(vars.request_uri),
            Part::Variable(Variable::EscapedRequestUri) => {
                escape_component(vars.request_uri, &mut out)
            }
            Part::Variable(Variable::Authority) => out.push_str(vars.authority),
            Part::Variable(Variable::Method) => out.push_str(vars.method),
            Part::Header(name) => {
                let value = vars.headers.and_then(|h| h.get(name));
                // Header bytes that are not text render as nothing rather than as garbage.
                out.push_str(value.and_then(|v| v.to_str().ok()).unwrap_or(""));
            }
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as ngx_set_misc's
/// `set_escape_uri` does for `$escaped_request_uri`.
pub fn escape_component(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A header value known at compile time, or a template rendered per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Static(HeaderValue),
    Template(Box<[Part]>),
}

impl Value {
    fn resolve(&self, vars: &RequestVars<'_>) -> Option<HeaderValue> {
        match self {
            Value::Static(v) => Some(v.clone()),
            Value::Template(parts) => HeaderValue::try_from(render(parts, vars)).ok(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    Set(HeaderName, Value),
    Append(HeaderName, Value),
    Remove(HeaderName),
}

/// Applies edits in order. A template that renders to an invalid value (a client-controlled
/// variable with a control character) is skipped rather than failing the request.
pub fn apply_edits(edits: &[HeaderEdit], headers: &mut HeaderMap, vars: &RequestVars<'_>) {
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, value) => {
                if let Some(v) = value.resolve(vars) {
                    headers.insert(name.clone(), v);
                }
            }
            HeaderEdit::Append(name, value) => {
                if let Some(v) = value.resolve(vars) {
                    headers.append(name.clone(), v);
                }
            }
            HeaderEdit::Remove(name) => {
                headers.remove(name);
            }
        }
    }
}

/// An answer made without contacting the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaticResponse {
    Redirect {
        status: StatusCode,
        location: Box<[Part]>,
    },
    Fixed {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// How a route chooses among its backend's endpoints (ingress-nginx `load-balance`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Peak-EWMA over two random choices (see `route::load`).
    Ewma,
}

/// When a failed attempt goes to another endpoint (ingress-nginx `proxy-next-upstream`,
/// `-tries`, `-timeout`); executed by `proxy::forward`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextUpstream {
    /// Conditions, as [`NextUpstream`]'s `ON_*` bits.
    pub on: u16,
    /// Attempts in all, the first included; 0 is as many as the backend has endpoints.
    pub tries: u32,
    /// No new attempt after this long since the first; `None` is no limit.
    pub timeout: Option<Duration>,
}

impl NextUpstream {
    pub const ON_ERROR: u16 = 1;
    pub const ON_TIMEOUT: u16 = 1 << 1;
    pub const ON_INVALID_HEADER: u16 = 1 << 2;
    pub const ON_NON_IDEMPOTENT: u16 = 1 << 3;
    /// The statuses that may be retried, each with its bit (`1 << (4 + index)`).
    pub const STATUSES: [u16; 7] = [500, 502, 503, 504, 403, 404, 429];

    /// The bit of a retried status, if it is one.
    pub fn status_bit(status: u16) -> Option<u16> {
        Self::STATUSES
            .iter()
            .position(|s| *s == status)
            .map(|i| 1 << (4 + i))
    }

    pub fn on(&self, bit: u16) -> bool {
        self.on & bit != 0
    }

    /// Whether a response with this status is retried.
    pub fn on_status(&self, status: http::StatusCode) -> bool {
        Self::status_bit(status.as_u16()).is_some_and(|bit| self.on(bit))
    }

    /// The conditions by nginx's names, for `/debug/routes`.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (bit, name) in [
            (Self::ON_ERROR, "error"),
            (Self::ON_TIMEOUT, "timeout"),
            (Self::ON_INVALID_HEADER, "invalid_header"),
        ] {
            if self.on(bit) {
                out.push(name.to_owned());
            }
        }
        for status in Self::STATUSES {
            if Self::status_bit(status).is_some_and(|bit| self.on(bit)) {
                out.push(format!("http_{status}"));
            }
        }
        if self.on(Self::ON_NON_IDEMPOTENT) {
            out.push("non_idempotent".to_owned());
        }
        out
    }
}

impl Default for NextUpstream {
    /// ingress-nginx's: `error timeout`, 3 tries, no time limit.
    fn default() -> Self {
        Self {
            on: Self::ON_ERROR | Self::ON_TIMEOUT,
            tries: 3,
            timeout: None,
        }
    }
}

/// What the proxy does for a route, decided at compile time so requests pay nothing to decide it.
#[derive(Clone, Debug)]
pub struct Policy {
    pub protocol: Protocol,
    pub http_version: HttpVersion,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream response head, and between two reads of the upstream.
    pub read_timeout: Duration,
    /// Longest the upstream may leave a piece of the request body untaken
    /// (`proxy-send-timeout`); client silence is `client-body-timeout`, controller-wide.
    pub send_timeout: Duration,
    /// Largest request body in bytes (`proxy-body-size`); 0 is no limit.
    pub body_size: u64,
    /// Plain-HTTP requests get a 308 to HTTPS (compile sets it only on hosts with TLS, or
    /// everywhere with `force-ssl-redirect`).
    pub ssl_redirect: bool,
    pub request_headers: Arc<[HeaderEdit]>,
    pub response_headers: Arc<[HeaderEdit]>,
    pub respond: Option<Arc<StaticResponse>>,
    /// Requests for exactly `/` are redirected here with 302.
    pub app_root: Option<Arc<str>>,
    /// ingress-nginx `rewrite-target`: on a regex route, the request path becomes this, with
    /// `$1`.. replaced by the path regex's captures (the query is kept).
    pub rewrite_target: Option<Arc<str>>,
    /// Who may reach the route (phase 4); `None` restricts nothing.
    pub access: Option<Arc<Access>>,
    /// The route's Ingress path is under `--no-auth-locations`: external auth does not apply.
    pub skip_external_auth: bool,
    /// Cross-origin resource sharing: preflights answered, grants added to responses.
    pub cors: Option<Arc<Cors>>,
    /// Per-client request limits, shared by every route of the Ingress.
    pub limits: Option<Arc<Limits>>,
    /// Client certificates the route's requests must (or may) carry.
    pub client_tls: Option<Arc<crate::tls::ClientTls>>,
    /// Response bandwidth per request (`limit-rate`, `limit-rate-after`).
    pub response_rate: Option<ResponseRate>,
    /// Retries on another endpoint.
    pub next_upstream: NextUpstream,
    /// How endpoints are chosen.
    pub balance: Balance,
    /// Consistent hashing on a request key, instead of `balance`.
    pub hash_by: Option<Arc<crate::route::hash::HashBy>>,
    /// Requests go to the Service's cluster IP, not its endpoints.
    pub service_upstream: bool,
    /// Cookie session affinity (per route: its cookie path is the route's).
    pub affinity: Option<Arc<crate::affinity::Affinity>>,
    /// A copy of each request goes there.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    /// Per-request plugin hooks; empty for a static policy (zero Wasm calls per request).
    pub hooks: HookChain,
    /// The backends the hooks may choose instead of the route's (`request.set-backend`), by
    /// the name their grant gives (`SERVICE:PORT`).
    pub backends: Arc<[Alternate]>,
}

/// A backend a plugin may send a request to instead of the route's.
#[derive(Debug, Clone)]
pub struct Alternate {
    /// `SERVICE:PORT` as the grant wrote it.
    pub name: Arc<str>,
    pub backend: Arc<crate::route::Backend>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            protocol: Protocol::Http,
            http_version: HttpVersion::Http11,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            body_size: 1 << 20,
            ssl_redirect: false,
            request_headers: Arc::new([]),
            response_headers: Arc::new([]),
            respond: None,
            app_root: None,
            rewrite_target: None,
            access: None,
            skip_external_auth: false,
            cors: None,
            limits: None,
            client_tls: None,
            response_rate: None,
            next_upstream: NextUpstream::default(),
            balance: Balance::RoundRobin,
            hash_by: None,
            service_upstream: false,
            affinity: None,
            mirror: None,
            hooks: HookChain::default(),
            backends: Arc::new([]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order_with_templates() {
        let vars = RequestVars {
            host: "a.test",
            remote: "192.0.2.1:4000".parse().expect("addr"),
            secure: true,
            request_uri: "/x?y=1",
            authority: "a.test:8443",
            method: "GET",
            headers: None,
        };
        let name = |n: &'static str| HeaderName::from_static(n);
        let edits = [
            HeaderEdit::Set(name("x-one"), Value::Static(HeaderValue::from_static("1"))),
            HeaderEdit::Append(name("x-one"), Value::Static(HeaderValue::from_static("2"))),
            HeaderEdit::Remove(name("x-gone")),
            HeaderEdit::Set(
                name("x-from"),
                Value::Template(
                    [
                        Part::Variable(Variable::Scheme),
                        Part::Literal("://".into()),
                        Part::Variable(Variable::Host),
                        Part::Variable(Variable::RequestUri),
                        Part::Literal(" ".into()),
                        Part::Variable(Variable::RemoteAddr),
                    ]
                    .into(),
                ),
            ),
        ];
        let mut h = HeaderMap::new();
        h.insert("x-gone", HeaderValue::from_static("bye"));
        apply_edits(&edits, &mut h, &vars);
        let ones: Vec<_> = h.get_all("x-one").iter().collect();
        assert_eq!(ones, ["1", "2"]);
        assert!(!h.contains_key("x-gone"));
        assert_eq!(h["x-from"], "https://a.test/x?y=1 192.0.2.1");
    }
}

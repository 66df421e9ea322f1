//! [`PluginPolicy`]: what the plugins attached to one Ingress decided, converted from their WIT
//! policies into the proxy's own types ([`crate::policy`]), validated, and merged.
//!
//! Owns the conversion rules (every header name, value and status a plugin returns is checked
//! here, once, at compile time, so the proxy never sees an invalid one) and the merge rule:
//!
//! - scalar fields (`Option`s): the later plugin in attach order wins when it sets the field;
//! - header edits: concatenated in attach order and applied in that order;
//! - hooks: concatenated in attach order (each plugin's hooks run in that order).
//!
//! Executing a policy is [`crate::policy`]'s job; this module must not run plugins either: it
//! only holds and transforms their results.

use super::bindings::{RESERVED_HEADERS, wit};
use super::hooks::HookChain;
use crate::access;
use crate::policy::{self as exec, HeaderEdit, HttpVersion, Part, Protocol, StaticResponse, Value};
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use std::sync::Arc;
use std::time::Duration;

/// A complete response made by a plugin (a `respond-now` from a hook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the plugins attached to one Ingress want. `None` / empty means "not set by any
/// plugin": the route keeps its default.
#[derive(Debug, Clone, Default)]
pub struct PluginPolicy {
    pub protocol: Option<Protocol>,
    pub http_version: Option<HttpVersion>,
    pub connect_timeout: Option<Duration>,
    /// Longest idle time between two reads from the upstream (nginx semantics, not a total).
    pub read_timeout: Option<Duration>,
    /// Longest idle time between two writes to the upstream (nginx semantics, not a total).
    pub send_timeout: Option<Duration>,
    /// Applied to the request before it goes upstream, in order.
    pub request_headers: Vec<HeaderEdit>,
    /// Applied to the response before it goes to the client, in order.
    pub response_headers: Vec<HeaderEdit>,
    /// Answer every request without proxying.
    pub respond: Option<StaticResponse>,
    /// Redirect `/` here (302).
    pub app_root: Option<String>,
    /// ingress-nginx `ssl-redirect` as written (the host defaults it to true on TLS hosts).
    pub ssl_redirect: Option<bool>,
    /// Redirect to HTTPS even on hosts without TLS.
    pub force_ssl_redirect: Option<bool>,
    /// Replacement for the matched path; `$1`..`$9` are capture groups of the Ingress path.
    pub rewrite_target: Option<String>,
    /// Ingress paths are regular expressions.
    pub use_regex: Option<bool>,
    /// Largest request body in bytes; 0 is no limit.
    pub body_size: Option<u64>,
    /// Who may reach the route, as the plugins stated it (Secrets still unresolved).
    pub access: AccessRules,
    /// Cross-origin resource sharing.
    pub cors: Option<crate::cors::CorsRule>,
    /// Per-client request limits.
    pub limits: Option<crate::access::limit::LimitRule>,
    /// Client certificates for the route's hosts.
    pub client_tls: Option<ClientTlsRule>,
    /// Whether the controller-wide external authentication applies (`None`: yes).
    pub global_auth: Option<bool>,
    /// Response bandwidth per request.
    pub response_rate: Option<exec::ResponseRate>,
    /// This route is a canary of the main route with the same host and path.
    pub canary: Option<Arc<crate::canary::Rule>>,
    /// Retries on another endpoint.
    pub next_upstream: Option<exec::NextUpstream>,
    /// How endpoints are chosen.
    pub balance: Option<exec::Balance>,
    /// Consistent hashing on a request key.
    pub hash_by: Option<Arc<crate::route::hash::HashBy>>,
    /// Send to the Service's cluster IP.
    pub service_upstream: Option<bool>,
    /// Cookie session affinity.
    pub affinity: Option<crate::affinity::RuleText>,
    /// Request mirroring (compile sets whether loopback may be reached).
    pub mirror: Option<crate::mirror::Mirror>,
    /// Per-request plugin hooks, in order. Empty: zero Wasm calls per request.
    pub hooks: HookChain,
}

/// A Kubernetes object a directive names; `namespace: None` is the route's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub namespace: Option<String>,
    pub name: String,
}

/// HTTP Basic authentication against a Secret's htpasswd hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuthRule {
    pub realm: String,
    pub secret: ObjectRef,
    pub format: access::SecretFormat,
}

/// HTTP Digest authentication against a Secret's htdigest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAuthRule {
    pub realm: String,
    pub secret: ObjectRef,
}

/// Access rules before compile resolves what they reference ([`crate::access`] executes
/// them). Empty lists and `None`s restrict nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Source ranges admitted (empty: every address).
    pub allow: Vec<IpNet>,
    /// Source ranges refused, checked first.
    pub deny: Vec<IpNet>,
    pub basic_auth: Option<BasicAuthRule>,
    pub digest_auth: Option<DigestAuthRule>,
    pub external: Option<ExternalAuthRule>,
    /// The ConfigMap of headers for the external auth subrequests.
    pub external_headers: Option<ObjectRef>,
    pub satisfy: Option<access::Satisfy>,
}

pub use crate::access::external::ExternalAuthRule;

/// nginx's `ssl_verify_client` modes that ask for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientVerify {
    On,
    Optional,
    OptionalNoCa,
}

/// Client certificate authentication as a plugin stated it (its Secret still unread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsRule {
    pub secret: ObjectRef,
    pub verify: ClientVerify,
    pub depth: u32,
    pub error_page: Option<String>,
    pub pass_certificate: bool,
    pub match_cn: Option<String>,
}

impl PluginPolicy {
    /// Merge `later` into `self` (see the module doc). Returns the names of scalar fields that
    /// `later` overrode with a different value, for a diagnostic.
    pub fn merge(&mut self, later: PluginPolicy) -> Vec<&'static str> {
        fn take<T: PartialEq>(
            slot: &mut Option<T>,
            new: Option<T>,
            name: &'static str,
            overridden: &mut Vec<&'static str>,
        ) {
            if let Some(v) = new {
                if slot.as_ref().is_some_and(|old| *old != v) {
                    overridden.push(name);
                }
                *slot = Some(v);
            }
        }
        let mut overridden = Vec::new();
        let o = &mut overridden;
        take(&mut self.protocol, later.protocol, "upstream protocol", o);
        take(
            &mut self.http_version,
            later.http_version,
            "upstream HTTP version",
            o,
        );
        take(
            &mut self.connect_timeout,
            later.connect_timeout,
            "connect timeout",
            o,
        );
        take(
            &mut self.read_timeout,
            later.read_timeout,
            "read timeout",
            o,
        );
        take(
            &mut self.send_timeout,
            later.send_timeout,
            "send timeout",
            o,
        );
        take(
            &mut self.respond,
            later.respond,
            "fixed response or redirect",
            o,
        );
        take(&mut self.app_root, later.app_root, "app-root", o);
        take(
            &mut self.ssl_redirect,
            later.ssl_redirect,
            "ssl-redirect",
            o,
        );
        take(
            &mut self.force_ssl_redirect,
            later.force_ssl_redirect,
            "force-ssl-redirect",
            o,
        );
        take(
            &mut self.rewrite_target,
            later.rewrite_target,
            "rewrite-target",
            o,
        );
        take(&mut self.use_regex, later.use_regex, "use-regex", o);
        take(&mut self.body_size, later.body_size, "body size limit", o);
        take(
            &mut self.access.basic_auth,
            later.access.basic_auth,
            "basic-auth",
            o,
        );
        take(&mut self.access.satisfy, later.access.satisfy, "satisfy", o);
        take(
            &mut self.access.digest_auth,
            later.access.digest_auth,
            "digest-auth",
            o,
        );
        take(
            &mut self.access.external,
            later.access.external,
            "external auth",
            o,
        );
        take(
            &mut self.access.external_headers,
            later.access.external_headers,
            "external auth headers",
            o,
        );
        take(&mut self.cors, later.cors, "CORS rules", o);
        take(&mut self.limits, later.limits, "rate limits", o);
        take(
            &mut self.global_auth,
            later.global_auth,
            "enable-global-auth",
            o,
        );
        take(
            &mut self.client_tls,
            later.client_tls,
            "client certificate rules",
            o,
        );
        take(
            &mut self.response_rate,
            later.response_rate,
            "response rate",
            o,
        );
        take(&mut self.canary, later.canary, "canary rule", o);
        take(&mut self.balance, later.balance, "load-balance", o);
        take(&mut self.hash_by, later.hash_by, "upstream-hash-by", o);
        take(&mut self.affinity, later.affinity, "session affinity", o);
        take(&mut self.mirror, later.mirror, "mirror", o);
        take(
            &mut self.service_upstream,
            later.service_upstream,
            "service-upstream",
            o,
        );
        take(
            &mut self.next_upstream,
            later.next_upstream,
            "proxy-next-upstream",
            o,
        );
        self.access.allow.extend(later.access.allow);
        self.access.deny.extend(later.access.deny);
        self.request_headers.extend(later.request_headers);
        self.response_headers.extend(later.response_headers);
        self.hooks.extend(later.hooks);
        overridden
    }

    /// True when requests need no plugin call.
    pub fn is_static(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Copy what maps one-to-one onto a route's executable policy: protocol, HTTP version,
    /// timeouts, header edits (appended after the route's own), fixed response or redirect,
    /// app-root, body size. The rest (`ssl_redirect`, `force_ssl_redirect`, `rewrite_target`,
    /// `use_regex`, `hooks`) depends on the route (TLS, path), and `access` needs its Secrets
    /// read, so the compile step decides it.
    pub fn apply_to(&self, route: &mut exec::Policy) {
        if let Some(p) = self.protocol {
            route.protocol = p;
        }
        if let Some(v) = self.http_version {
            route.http_version = v;
        }
        if let Some(t) = self.connect_timeout {
            route.connect_timeout = t;
        }
        if let Some(t) = self.read_timeout {
            route.read_timeout = t;
        }
        if let Some(t) = self.send_timeout {
            route.send_timeout = t;
        }
        if !self.request_headers.is_empty() {
            route.request_headers = route
                .request_headers
                .iter()
                .chain(&self.request_headers)
                .cloned()
                .collect();
        }
        if !self.response_headers.is_empty() {
            route.response_headers = route
                .response_headers
                .iter()
                .chain(&self.response_headers)
                .cloned()
                .collect();
        }
        if let Some(r) = &self.respond {
            route.respond = Some(Arc::new(r.clone()));
        }
        if let Some(root) = &self.app_root {
            route.app_root = Some(Arc::from(root.as_str()));
        }
        if let Some(limit) = self.body_size {
            route.body_size = limit;
        }
        if let Some(rate) = self.response_rate {
            route.response_rate = Some(rate);
        }
        if let Some(next) = self.next_upstream {
            route.next_upstream = next;
        }
        if let Some(balance) = self.balance {
            route.balance = balance;
        }
        if let Some(hash) = &self.hash_by {
            route.hash_by = Some(hash.clone());
        }
        if let Some(on) = self.service_upstream {
            route.service_upstream = on;
        }
    }
}

fn name(n: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(n.as_bytes())
        .map_err(|_| format!("`{n}` is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "header `{n}` is managed by the proxy and cannot be edited"
        ));
    }
    Ok(name)
}

/// Template parts for a header value or redirect location. `$http_*` parts are refused there:
/// an edit may change the very headers they would read, so only external auth's templates (see
/// [`request_template`]) may read headers.
fn parts(list: Vec<wit::TemplatePart>) -> Result<Box<[Part]>, String> {
    let parts = request_template(list)?;
    if parts.iter().any(|p| matches!(p, Part::Header(_))) {
        return Err("a header value or redirect cannot use request headers ($http_*)".into());
    }
    Ok(parts)
}

/// Template parts that may also read request headers.
fn request_template(list: Vec<wit::TemplatePart>) -> Result<Box<[Part]>, String> {
    list.into_iter()
        .map(|p| {
            Ok(match p {
                wit::TemplatePart::Literal(s) => Part::Literal(s),
                wit::TemplatePart::Variable(v) => Part::Variable(match v {
                    wit::RequestVariable::Host => exec::Variable::Host,
                    wit::RequestVariable::RemoteAddr => exec::Variable::RemoteAddr,
                    wit::RequestVariable::Scheme => exec::Variable::Scheme,
                    wit::RequestVariable::RequestUri => exec::Variable::RequestUri,
                    wit::RequestVariable::EscapedRequestUri => exec::Variable::EscapedRequestUri,
                    wit::RequestVariable::Authority => exec::Variable::Authority,
                    wit::RequestVariable::RequestMethod => exec::Variable::Method,
                }),
                wit::TemplatePart::Header(name) => Part::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("`{name}` is not a header name"))?,
                ),
            })
        })
        .collect()
}

fn edit_value(name: &HeaderName, v: wit::HeaderValue) -> Result<Value, String> {
    let bad = || format!("the value for `{name}` is not a valid header value");
    match v {
        wit::HeaderValue::Text(s) => HeaderValue::from_str(&s)
            .map(Value::Static)
            .map_err(|_| bad()),
        wit::HeaderValue::Bytes(b) => HeaderValue::from_bytes(&b)
            .map(Value::Static)
            .map_err(|_| bad()),
        wit::HeaderValue::Template(list) => {
            let ps = parts(list)?;
            // Literal parts must be valid on their own; variables are the host's own values.
            let mut literal = String::new();
            let mut only_literals = true;
            for p in ps.iter() {
                match p {
                    Part::Literal(s) if HeaderValue::from_str(s).is_err() => return Err(bad()),
                    Part::Literal(s) => literal.push_str(s),
                    Part::Variable(_) | Part::Header(_) => only_literals = false,
                }
            }
            if only_literals {
                HeaderValue::from_str(&literal)
                    .map(Value::Static)
                    .map_err(|_| bad())
            } else {
                Ok(Value::Template(ps))
            }
        }
    }
}

fn edit(e: wit::HeaderEdit) -> Result<HeaderEdit, String> {
    Ok(match e {
        wit::HeaderEdit::Set(h) => {
            let n = name(&h.name)?;
            let v = edit_value(&n, h.value)?;
            HeaderEdit::Set(n, v)
        }
        wit::HeaderEdit::Append(h) => {
            let n = name(&h.name)?;
            let v = edit_value(&n, h.value)?;
            HeaderEdit::Append(n, v)
        }
        wit::HeaderEdit::Remove(n) => HeaderEdit::Remove(name(&n)?),
    })
}

#[cfg(test)]
fn edits(list: Vec<wit::HeaderEdit>) -> Result<Vec<HeaderEdit>, String> {
    list.into_iter().map(edit).collect()
}

/// Convert a guest-built response (fixed response or `respond-now`), validating every part.
pub(crate) fn fixed_response(
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) -> Result<FixedResponse, String> {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| format!("status {status} is not a final HTTP status (200 to 599)"))?;
    let mut map = HeaderMap::with_capacity(headers.len());
    for (n, v) in headers {
        let n = name(&n)?;
        let v = HeaderValue::from_bytes(&v)
            .map_err(|_| format!("the value for `{n}` is not a valid header value"))?;
        map.append(n, v);
    }
    Ok(FixedResponse {
        status,
        headers: map,
        body: Bytes::from(body),
    })
}

fn redirect(r: wit::Redirect) -> Result<StaticResponse, String> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| (300..=308).contains(&s.as_u16()))
        .ok_or_else(|| format!("redirect status {} is not 300 to 308", r.status))?;
    let location = parts(r.location)?;
    let literal_ok = location.iter().all(|p| match p {
        Part::Literal(s) => HeaderValue::from_str(s).is_ok(),
        Part::Variable(_) | Part::Header(_) => true,
    });
    if location.is_empty() || !literal_ok {
        return Err("redirect location is empty or not a valid header value".into());
    }
    Ok(StaticResponse::Redirect { status, location })
}

fn respond(r: wit::StaticResponse) -> Result<StaticResponse, String> {
    match r {
        wit::StaticResponse::Redirect(r) => redirect(r),
        wit::StaticResponse::Fixed(f) => {
            let r = fixed_response(f.status, f.headers, f.body)?;
            Ok(StaticResponse::Fixed {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
        }
    }
}

fn protocol(u: wit::UpstreamProtocol) -> Protocol {
    match u {
        wit::UpstreamProtocol::Http => Protocol::Http,
        wit::UpstreamProtocol::Https => Protocol::Https,
        wit::UpstreamProtocol::Grpc => Protocol::Grpc,
        wit::UpstreamProtocol::Grpcs => Protocol::Grpcs,
        wit::UpstreamProtocol::AutoHttp => Protocol::AutoHttp,
    }
}

/// Parse a source-address list: CIDRs or plain addresses (a plain address is a /32 or /128).
fn sources(list: Vec<String>, what: &str) -> Result<Vec<IpNet>, String> {
    if list.is_empty() {
        return Err(format!("the {what} list is empty"));
    }
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("`{s}` in the {what} list is not an IP address or CIDR"))
        })
        .collect()
}

fn basic_auth(b: wit::BasicAuth) -> Result<BasicAuthRule, String> {
    if b.secret.name.is_empty() {
        return Err("basic-auth names no Secret".into());
    }
    // The realm is sent inside a quoted header value: it must be a valid one.
    if HeaderValue::from_str(&b.realm).is_err() {
        return Err("the basic-auth realm is not a valid header value".into());
    }
    Ok(BasicAuthRule {
        realm: b.realm,
        secret: ObjectRef {
            namespace: b.secret.namespace.filter(|n| !n.is_empty()),
            name: b.secret.name,
        },
        format: match b.format {
            wit::AuthSecretFormat::AuthFile => access::SecretFormat::AuthFile,
            wit::AuthSecretFormat::AuthMap => access::SecretFormat::AuthMap,
        },
    })
}

fn canary(c: wit::Canary) -> Result<crate::canary::Rule, String> {
    crate::canary::Rule::new(crate::canary::RuleText {
        by_header: c.by_header,
        by_header_value: c.by_header_value,
        by_header_pattern: c.by_header_pattern,
        by_cookie: c.by_cookie,
        weight: c.weight,
        total: c.weight_total,
    })
}

fn affinity(a: wit::Affinity) -> Result<crate::affinity::RuleText, String> {
    use crate::affinity::{Mode, SameSite};
    let token = |s: &str| !s.is_empty() && HeaderName::from_bytes(s.as_bytes()).is_ok();
    if !token(&a.name) {
        return Err(format!("session cookie name `{}` is not a token", a.name));
    }
    // Attributes go into a Set-Cookie value: no separators or controls.
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    };
    for (what, v) in [("path", &a.path), ("domain", &a.domain)] {
        if let Some(v) = v
            && !plain(v)
        {
            return Err(format!(
                "session cookie {what} `{v}` cannot go into a cookie"
            ));
        }
    }
    Ok(crate::affinity::RuleText {
        mode: match a.mode {
            wit::AffinityMode::Balanced => Mode::Balanced,
            wit::AffinityMode::Persistent => Mode::Persistent,
        },
        name: a.name,
        path: a.path,
        domain: a.domain,
        max_age: a.max_age,
        expires: a.expires,
        secure: a.secure,
        same_site: a.same_site.map(|s| match s {
            wit::SameSite::None => SameSite::None,
            wit::SameSite::Lax => SameSite::Lax,
            wit::SameSite::Strict => SameSite::Strict,
        }),
        conditional_same_site_none: a.conditional_same_site_none,
        change_on_failure: a.change_on_failure,
        canary_sticky: a.canary_sticky,
    })
}

fn hash_by(h: wit::HashBy) -> Result<crate::route::hash::HashBy, String> {
    use crate::route::hash::Part;
    if h.key.is_empty() {
        return Err("upstream-hash-by has an empty key".into());
    }
    let key = h
        .key
        .into_iter()
        .map(|p| {
            Ok(match p {
                wit::HashPart::Literal(s) => Part::Literal(s.into_bytes().into()),
                wit::HashPart::RequestUri => Part::RequestUri,
                wit::HashPart::Uri => Part::Uri,
                wit::HashPart::Host => Part::Host,
                wit::HashPart::RemoteAddr => Part::RemoteAddr,
                wit::HashPart::BinaryRemoteAddr => Part::BinaryRemoteAddr,
                wit::HashPart::Header(n) => Part::Header(
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("`{n}` is not a valid header name"))?,
                ),
                wit::HashPart::Cookie(n) => Part::Cookie(n.into()),
                wit::HashPart::Arg(n) => Part::Arg(n.into()),
            })
        })
        .collect::<Result<_, String>>()?;
    if h.subset_size == Some(0) {
        return Err("upstream-hash-by-subset-size must be at least 1".into());
    }
    Ok(crate::route::hash::HashBy {
        key,
        subset: h.subset_size,
    })
}

fn next_upstream(n: wit::NextUpstream) -> exec::NextUpstream {
    use exec::NextUpstream as N;
    use wit::NextUpstreamOn as W;
    let mut on = 0;
    for (flag, bit) in [
        (W::ERROR, N::ON_ERROR),
        (W::TIMEOUT, N::ON_TIMEOUT),
        (W::INVALID_HEADER, N::ON_INVALID_HEADER),
        (W::NON_IDEMPOTENT, N::ON_NON_IDEMPOTENT),
    ] {
        if n.on.contains(flag) {
            on |= bit;
        }
    }
    for (flag, status) in [
        (W::HTTP_500, 500),
        (W::HTTP_502, 502),
        (W::HTTP_503, 503),
        (W::HTTP_504, 504),
        (W::HTTP_403, 403),
        (W::HTTP_404, 404),
        (W::HTTP_429, 429),
    ] {
        if n.on.contains(flag) {
            on |= N::status_bit(status).unwrap_or(0);
        }
    }
    N {
        on,
        tries: n.tries,
        timeout: (n.timeout_ms > 0).then(|| Duration::from_millis(u64::from(n.timeout_ms))),
    }
}

fn client_tls(c: wit::ClientTls) -> Result<ClientTlsRule, String> {
    if c.secret.name.is_empty() {
        return Err("client-tls names no Secret".into());
    }
    let error_page = match c.error_page {
        Some(page) if HeaderValue::from_str(&page).is_err() => {
            return Err(format!("the error page `{page}` is not a valid Location"));
        }
        other => other,
    };
    Ok(ClientTlsRule {
        secret: ObjectRef {
            namespace: c.secret.namespace.filter(|n| !n.is_empty()),
            name: c.secret.name,
        },
        verify: match c.verify {
            wit::ClientVerify::On => ClientVerify::On,
            wit::ClientVerify::Optional => ClientVerify::Optional,
            wit::ClientVerify::OptionalNoCa => ClientVerify::OptionalNoCa,
        },
        depth: c.depth.max(1),
        error_page,
        pass_certificate: c.pass_certificate,
        match_cn: c.match_cn,
    })
}

fn external_auth(a: wit::ExternalAuth) -> Result<ExternalAuthRule, String> {
    let url = request_template(a.url)?;
    // The scheme must be literal: a variable must never pick the protocol.
    match url.first() {
        Some(Part::Literal(s)) if s.starts_with("http://") || s.starts_with("https://") => {}
        _ => return Err("the external auth URL must start with http:// or https://".into()),
    }
    let method = http::Method::from_bytes(a.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", a.method))?;
    let response_headers = a
        .response_headers
        .iter()
        .map(|h| {
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| format!("`{h}` is not a header name"))
        })
        .collect::<Result<_, _>>()?;
    let signin = a.signin.map(request_template).transpose()?;
    if let Some(Part::Literal(s)) = signin.as_ref().and_then(|s| s.first())
        && !(s.starts_with("http://") || s.starts_with("https://") || s.starts_with('/'))
    {
        return Err("the sign-in URL must be absolute (http://, https://) or a path".into());
    }
    Ok(ExternalAuthRule {
        url,
        method,
        signin,
        signin_redirect_param: a.signin_redirect_param,
        response_headers,
        request_redirect: a.request_redirect.map(request_template).transpose()?,
        cache_key: a.cache_key.map(request_template).transpose()?,
        cache_durations: a
            .cache_durations
            .into_iter()
            .map(|d| (d.statuses, Duration::from_secs(u64::from(d.seconds))))
            .collect(),
        always_set_cookie: a.always_set_cookie,
    })
}

/// Convert a plugin's policy (hooks excepted: `configure` binds them), applying its
/// directives in order (within one plugin a later directive replaces an earlier one of the
/// same kind; lists and header edits accumulate). `Err` names what was refused.
pub(crate) fn from_wit(p: wit::Policy) -> Result<PluginPolicy, String> {
    use wit::Directive as D;
    let ms = |ms: u32| Some(Duration::from_millis(u64::from(ms)));
    let mut out = PluginPolicy::default();
    for d in p.directives {
        match d {
            D::UpstreamProtocol(u) => out.protocol = Some(protocol(u)),
            D::ConnectTimeoutMs(t) => out.connect_timeout = ms(t),
            D::ReadTimeoutMs(t) => out.read_timeout = ms(t),
            D::SendTimeoutMs(t) => out.send_timeout = ms(t),
            D::UpstreamHttpVersion(v) => {
                out.http_version = Some(match v {
                    wit::HttpVersion::Http10 => HttpVersion::Http10,
                    wit::HttpVersion::Http11 => HttpVersion::Http11,
                })
            }
            D::RequestHeader(e) => out.request_headers.push(edit(e)?),
            D::ResponseHeader(e) => out.response_headers.push(edit(e)?),
            D::Respond(r) => out.respond = Some(respond(r)?),
            D::AppRoot(root) => {
                if !root.starts_with('/') || HeaderValue::from_str(&root).is_err() {
                    return Err(format!("app-root `{root}` is not an absolute path"));
                }
                out.app_root = Some(root);
            }
            D::SslRedirect(b) => out.ssl_redirect = Some(b),
            D::ForceSslRedirect(b) => out.force_ssl_redirect = Some(b),
            D::RewriteTarget(t) => out.rewrite_target = Some(t),
            D::UseRegex(b) => out.use_regex = Some(b),
            D::BodySizeLimit(n) => out.body_size = Some(n),
            D::AllowSource(list) => out.access.allow.extend(sources(list, "allow")?),
            D::DenySource(list) => out.access.deny.extend(sources(list, "deny")?),
            D::BasicAuth(b) => out.access.basic_auth = Some(basic_auth(b)?),
            D::DigestAuth(d) => {
                if d.secret.name.is_empty() {
                    return Err("digest-auth names no Secret".into());
                }
                out.access.digest_auth = Some(DigestAuthRule {
                    realm: d.realm,
                    secret: ObjectRef {
                        namespace: d.secret.namespace.filter(|n| !n.is_empty()),
                        name: d.secret.name,
                    },
                })
            }
            D::Cors(c) => {
                out.cors = Some(crate::cors::CorsRule {
                    allow_origins: c.allow_origins,
                    allow_methods: c.allow_methods,
                    allow_headers: c.allow_headers,
                    expose_headers: c.expose_headers,
                    allow_credentials: c.allow_credentials,
                    max_age_seconds: c.max_age_seconds,
                })
            }
            D::RateLimit(r) => {
                out.limits = Some(crate::access::limit::LimitRule {
                    rps: r.rps,
                    rpm: r.rpm,
                    burst_multiplier: r.burst_multiplier,
                    connections: r.connections,
                    exempt: if r.exempt.is_empty() {
                        Vec::new()
                    } else {
                        sources(r.exempt, "rate-limit exemption")?
                    },
                })
            }
            D::ResponseRate(r) => {
                out.response_rate = (r.bytes_per_second > 0).then_some(exec::ResponseRate {
                    bytes_per_second: r.bytes_per_second,
                    after_bytes: r.after_bytes,
                })
            }
            D::ExternalAuth(mut a) => {
                out.access.external_headers = a.proxy_set_headers.take().map(|r| ObjectRef {
                    namespace: r.namespace.filter(|n| !n.is_empty()),
                    name: r.name,
                });
                out.access.external = Some(external_auth(a)?);
            }
            D::ClientTls(c) => out.client_tls = Some(client_tls(c)?),
            D::GlobalAuth(b) => out.global_auth = Some(b),
            D::Canary(c) => out.canary = Some(Arc::new(canary(c)?)),
            D::NextUpstream(n) => out.next_upstream = Some(next_upstream(n)),
            D::HashBy(h) => out.hash_by = Some(Arc::new(hash_by(h)?)),
            D::ServiceUpstream(on) => out.service_upstream = Some(on),
            D::Affinity(a) => out.affinity = Some(affinity(a)?),
            D::Mirror(m) => {
                out.mirror = Some(crate::mirror::Mirror {
                    target: parts(m.target)?,
                    host: m
                        .host
                        .map(|h| {
                            HeaderValue::from_str(&h)
                                .map_err(|_| format!("mirror host `{h}` is not a valid Host"))
                        })
                        .transpose()?,
                    body: m.body,
                    allow_loopback: false,
                })
            }
            D::LoadBalance(b) => {
                out.balance = Some(match b {
                    wit::Balance::RoundRobin => exec::Balance::RoundRobin,
                    wit::Balance::Ewma => exec::Balance::Ewma,
                })
            }
            D::Satisfy(s) => {
                out.access.satisfy = Some(match s {
                    wit::Satisfy::All => access::Satisfy::All,
                    wit::Satisfy::Any => access::Satisfy::Any,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{RequestVars, apply_edits};

    fn vars() -> RequestVars<'static> {
        RequestVars {
            host: "example.com",
            remote: "10.0.0.1:5555".parse().expect("addr"),
            secure: true,
            request_uri: "/a?b=1",
            authority: "example.com",
            method: "GET",
            headers: None,
        }
    }

    #[test]
    fn merge_later_wins_and_edits_concatenate() {
        let mut a = PluginPolicy {
            read_timeout: Some(Duration::from_secs(1)),
            ssl_redirect: Some(true),
            request_headers: vec![HeaderEdit::Remove(HeaderName::from_static("x-a"))],
            ..PluginPolicy::default()
        };
        let b = PluginPolicy {
            read_timeout: Some(Duration::from_secs(2)),
            ssl_redirect: Some(true),
            request_headers: vec![HeaderEdit::Remove(HeaderName::from_static("x-b"))],
            ..PluginPolicy::default()
        };
        let overridden = a.merge(b);
        assert_eq!(overridden, ["read timeout"]);
        assert_eq!(a.read_timeout, Some(Duration::from_secs(2)));
        assert_eq!(a.request_headers.len(), 2);
        assert!(a.is_static());
    }

    #[test]
    fn converted_edits_apply_in_order_with_templates() {
        let edits = edits(vec![
            wit::HeaderEdit::Set(wit::Header {
                name: "X-Where".into(),
                value: wit::HeaderValue::Template(vec![
                    wit::TemplatePart::Variable(wit::RequestVariable::Scheme),
                    wit::TemplatePart::Literal("://".into()),
                    wit::TemplatePart::Variable(wit::RequestVariable::Host),
                    wit::TemplatePart::Variable(wit::RequestVariable::RequestUri),
                ]),
            }),
            wit::HeaderEdit::Append(wit::Header {
                name: "x-tag".into(),
                value: wit::HeaderValue::Bytes(b"b".to_vec()),
            }),
            wit::HeaderEdit::Set(wit::Header {
                name: "x-lit".into(),
                value: wit::HeaderValue::Template(vec![wit::TemplatePart::Literal("v".into())]),
            }),
            wit::HeaderEdit::Remove("x-gone".into()),
        ])
        .expect("valid");
        assert!(matches!(&edits[2], HeaderEdit::Set(_, Value::Static(_))));
        let mut map = HeaderMap::new();
        map.insert("x-tag", HeaderValue::from_static("a"));
        map.insert("x-gone", HeaderValue::from_static("1"));
        apply_edits(&edits, &mut map, &vars());
        assert_eq!(map["x-where"], "https://example.com/a?b=1");
        assert_eq!(map.get_all("x-tag").iter().count(), 2);
        assert!(!map.contains_key("x-gone"));
    }

    #[test]
    fn invalid_plugin_output_refused() {
        let set = |n: &str, v: wit::HeaderValue| {
            edits(vec![wit::HeaderEdit::Set(wit::Header {
                name: n.into(),
                value: v,
            })])
        };
        assert!(set("bad name", wit::HeaderValue::Text("x".into())).is_err());
        assert!(set("x-a", wit::HeaderValue::Text("a\r\nb".into())).is_err());
        assert!(set("connection", wit::HeaderValue::Text("close".into())).is_err());
        assert!(fixed_response(99, vec![], vec![]).is_err());
        assert!(fixed_response(200, vec![("x-a".into(), b"\n".to_vec())], vec![]).is_err());
        let ok = fixed_response(401, vec![("x-a".into(), b"1".to_vec())], b"no".to_vec())
            .expect("valid");
        assert_eq!(ok.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn apply_to_overrides_only_what_is_set() {
        let mut route = exec::Policy::default();
        let edit = HeaderEdit::Remove(HeaderName::from_static("x-a"));
        route.request_headers = Arc::new([edit.clone()]);
        let p = PluginPolicy {
            protocol: Some(Protocol::Grpc),
            read_timeout: Some(Duration::from_secs(3600)),
            request_headers: vec![HeaderEdit::Remove(HeaderName::from_static("x-b"))],
            app_root: Some("/app".into()),
            ..PluginPolicy::default()
        };
        p.apply_to(&mut route);
        assert_eq!(route.protocol, Protocol::Grpc);
        assert_eq!(route.read_timeout, Duration::from_secs(3600));
        assert_eq!(
            route.connect_timeout,
            exec::Policy::default().connect_timeout
        );
        assert_eq!(route.request_headers.len(), 2);
        assert_eq!(route.request_headers[0], edit);
        assert_eq!(route.app_root.as_deref(), Some("/app"));
    }
}

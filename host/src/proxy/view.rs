//! Phase 2, read and normalise: the one canonical view of a request, computed once.
//!
//! A request is judged by what it means, not by its bytes. This module owns that meaning: the
//! host (exactly one, from the right place, syntactically valid), the path routing matches
//! (decoded, dot segments resolved, slashes merged: [`path`]), the client's address (after
//! PROXY protocol, which the listener read, and trusted forwarding headers) and the header
//! hygiene every later phase relies on (hop-by-hop headers gone, the proxy's forwarding headers
//! set, client copies of them overwritten). Routing, access checks, plugins, redirects and the
//! access log read the [`RequestView`], never the raw request.
//!
//! It never changes what the request *means* to the upstream: the request target keeps its
//! original bytes (as ingress-nginx's `proxy_pass` without a URI does); only `forward` builds
//! what goes upstream.

pub mod host;

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, TE, UPGRADE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, Version};

use super::websocket;
use super::{Conn, forward};
use crate::route::path;
pub use host::HostError;
pub use path::PathError;

/// Controller-wide rules for trusting what a client says about itself
/// (`--use-forwarded-headers`, `--proxy-real-ip-cidr`).
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Peers whose `X-Forwarded-*` headers are believed; empty: nobody's.
    pub forwarded_from: Vec<ipnet::IpNet>,
}

impl Trust {
    fn trusts(&self, addr: IpAddr) -> bool {
        self.forwarded_from.iter().any(|net| net.contains(&addr))
    }
}

/// What kind of request this is, read from its head before hop-by-hop headers go (a WebSocket
/// upgrade is announced in them).
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub grpc: bool,
    pub websocket: Option<websocket::Kind>,
    /// `TE: trailers` (hop-by-hop, so read before it goes): passed on to HTTP/2 upstreams.
    pub te_trailers: bool,
}

impl Kind {
    fn of(parts: &Parts) -> Self {
        let grpc = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let te_trailers = parts
            .headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        Kind {
            grpc,
            websocket: websocket::kind(parts),
            te_trailers,
        }
    }

    /// The request's protocol, as an index into [`crate::metrics::PROTOCOLS`].
    pub fn protocol(self, version: Version) -> usize {
        if self.websocket.is_some() {
            3
        } else if self.grpc {
            GRPC
        } else if version == Version::HTTP_2 {
            1
        } else {
            0
        }
    }
}

/// Index of "grpc" in [`crate::metrics::PROTOCOLS`].
pub const GRPC: usize = 2;

/// Where the request's host came from: `:authority` (HTTP/2, absolute-form) or `Host`.
#[derive(Clone, Debug)]
enum HostSource {
    Uri(Authority),
    Header(HeaderValue),
    /// HTTP/1.0 may leave the host out.
    None,
}

impl HostSource {
    fn as_str(&self) -> &str {
        match self {
            HostSource::Uri(a) => a.as_str(),
            // Checked to be ASCII when the view was made.
            HostSource::Header(v) => v.to_str().unwrap_or(""),
            HostSource::None => "",
        }
    }
}

/// The canonical request: everything later phases judge a request by.
#[derive(Debug)]
pub struct RequestView {
    pub kind: Kind,
    /// The client's HTTP version: the answer goes out in it, whatever the upstream spoke.
    pub version: Version,
    /// The request target as received (moved out of the request, so nothing reads it by
    /// mistake); the upstream gets these bytes unless a rewrite changes them.
    pub uri: Uri,
    authority: HostSource,
    /// `host` as routing sees it: the authority's host, lowercased, without port or final dot.
    host: host::Host,
    /// The normalised path, when it differs from `uri.path()`.
    normalised: Option<Box<str>>,
    /// The client: the connection's peer (or its PROXY protocol source), or the address a
    /// trusted peer forwarded.
    pub client: IpAddr,
    /// `client` as a header value.
    pub client_ip: HeaderValue,
    /// Whether the client reached us over TLS (or a trusted peer says it did).
    pub secure: bool,
    pub request_id: HeaderValue,
}

impl RequestView {
    /// The host routing matches: lowercase, no port, no final dot; empty when there is none.
    pub fn host(&self) -> &str {
        self.host.as_str(self.authority.as_str())
    }

    /// The authority as received (host and port), validated: `Host` upstream, `$http_host`.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The authority as a header value (one reference count when it came as `Host`).
    pub fn authority_value(&self) -> Option<HeaderValue> {
        match &self.authority {
            HostSource::Header(v) => Some(v.clone()),
            HostSource::Uri(a) => HeaderValue::from_str(a.as_str()).ok(),
            HostSource::None => None,
        }
    }

    /// The path routing matches: decoded, dot segments resolved, slashes merged.
    pub fn path(&self) -> &str {
        self.normalised
            .as_deref()
            .unwrap_or_else(|| self.uri.path())
    }

    /// The path and query as received (`$request_uri`).
    pub fn request_uri(&self) -> &str {
        self.uri.path_and_query().map_or("/", PathAndQuery::as_str)
    }

    /// The normalised path with the original query: what plugins and redirects see. Borrowed
    /// unless the path was normalised; re-encoded so it is a valid request target again.
    pub fn target(&self) -> Cow<'_, str> {
        match &self.normalised {
            None => Cow::Borrowed(self.request_uri()),
            Some(p) => {
                let mut out = encode(p);
                if let Some(q) = self.uri.query() {
                    out.push('?');
                    out.push_str(q);
                }
                Cow::Owned(out)
            }
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.secure { "https" } else { "http" }
    }
}

/// `path` percent-encoded where a request target cannot carry it as is (controls, spaces,
/// `%`, `?`, `#`, non-ASCII), so a normalised path can be sent or redirected to again.
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b);
        if plain {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Why a request was refused before routing; each is a 400 to the client.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("invalid host: {0}")]
    Host(#[from] HostError),
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
}

impl BadRequest {
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Reads the request head into its canonical view and cleans its headers: hop-by-hop headers
/// (and those `Connection` names) removed, the proxy's forwarding headers set, an
/// `X-Request-Id` ensured. The request id is returned even when the request is refused, so the
/// refusal can name it.
pub fn read(
    parts: &mut Parts,
    conn: &Conn,
    trust: &Trust,
) -> (Kind, HeaderValue, Result<RequestView, BadRequest>) {
    let kind = Kind::of(parts);
    strip_on_arrival(&mut parts.headers);
    // After the strip: `Connection: x-request-id` can no longer drop the id set here.
    let request_id = forward::ensure_request_id(&mut parts.headers).clone();
    let view = view(parts, conn, trust, kind, request_id.clone());
    if let Ok(view) = &view {
        set_forwarding_headers(&mut parts.headers, view, conn, trust);
    }
    (kind, request_id, view)
}

fn view(
    parts: &mut Parts,
    conn: &Conn,
    trust: &Trust,
    kind: Kind,
    request_id: HeaderValue,
) -> Result<RequestView, BadRequest> {
    let authority = authority(parts)?;
    let host = host::check(authority.as_str())?;
    let normalised = match path::normalize(parts.uri.path())? {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p.into_boxed_str()),
    };
    // Taken only for a request that will be served: a refused one keeps its target for the log.
    let uri = std::mem::take(&mut parts.uri);
    let (client, client_ip, secure) = client(&parts.headers, conn, trust);
    Ok(RequestView {
        kind,
        version: parts.version,
        uri,
        authority,
        host,
        normalised,
        client,
        client_ip,
        secure,
        request_id,
    })
}

/// The one host of a request (RFC 9112 section 3.2, RFC 9113 section 8.3.1): an absolute-form
/// target's authority wins over `Host`; HTTP/1.1 needs exactly one `Host`; HTTP/2's `host`, if
/// sent, must agree with `:authority`.
fn authority(parts: &Parts) -> Result<HostSource, HostError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Several);
    }
    match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => match (parts.uri.authority(), header) {
            (Some(a), Some(h)) if a.as_str().as_bytes() != h.as_bytes() => Err(HostError::Disagree),
            (Some(a), _) => Ok(HostSource::Uri(a.clone())),
            (None, Some(h)) => host_header(h),
            (None, None) => Err(HostError::Missing),
        },
        version => match (parts.uri.authority(), header) {
            (_, None) if version == Version::HTTP_11 => Err(HostError::Missing),
            (Some(a), _) => Ok(HostSource::Uri(a.clone())),
            (None, Some(h)) => host_header(h),
            (None, None) => Ok(HostSource::None),
        },
    }
}

/// A `Host` header as the authority; it must be ASCII (`host::check` does the rest).
fn host_header(value: &HeaderValue) -> Result<HostSource, HostError> {
    match value.to_str() {
        Ok(_) => Ok(HostSource::Header(value.clone())),
        Err(_) => Err(HostError::Character),
    }
}

/// The client's address and scheme: the connection's, unless a trusted peer forwarded them.
fn client(headers: &HeaderMap, conn: &Conn, trust: &Trust) -> (IpAddr, HeaderValue, bool) {
    let peer = conn.remote.ip();
    if trust.forwarded_from.is_empty() || !trust.trusts(peer) {
        return (peer, conn.client_ip.clone(), conn.secure);
    }
    let secure = match headers.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
        Some(b"https") => true,
        Some(b"http") => false,
        _ => conn.secure,
    };
    match forwarded_client(headers, trust) {
        Some(ip) => {
            let value = HeaderValue::try_from(ip.to_string())
                .expect("a formatted IP address is a valid header value");
            (ip, value, secure)
        }
        None => (peer, conn.client_ip.clone(), secure),
    }
}

/// nginx's `real_ip_recursive on`: walking `X-Forwarded-For` from the right, the first address
/// that is not a trusted proxy is the client (the leftmost, if all are trusted).
fn forwarded_client(headers: &HeaderMap, trust: &Trust) -> Option<IpAddr> {
    let mut found = None;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let list = value.to_str().ok()?;
        for item in list.rsplit(',') {
            let ip: IpAddr = item.trim().parse().ok()?;
            found = Some(ip);
            if !trust.trusts(ip) {
                return found;
            }
        }
    }
    found
}

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
static X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static PROXY: HeaderName = HeaderName::from_static("proxy");

/// Headers meaningful only on one connection (RFC 9110 section 7.6.1), never forwarded.
/// `Trailer` is not among them: it describes the message, and HTTP/1.1 trailers survive.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
];

/// Removes hop-by-hop headers and any `Connection` names, except the few whose loss would
/// change what the request is (`Host`, its framing): a client cannot make the proxy drop those.
/// `Proxy` goes too (httpoxy: CGI backends read it as their outbound proxy).
pub fn strip_on_arrival(headers: &mut HeaderMap) {
    // One pass over the names decides whether anything needs a (hashed) removal at all.
    if !headers.keys().any(|n| is_hop_by_hop(n) || n == PROXY) {
        return;
    }
    strip_hop_by_hop(headers);
    headers.remove(&PROXY);
}

/// Removes hop-by-hop headers, including any the `Connection` header names (never `Host` or
/// `Content-Length`). Used on requests on arrival and on upstream responses.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass comparing names (no hashing) is cheaper than
    // the hashed removals below, which run only when there is something to remove.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::try_from(t.trim()).ok())
            .filter(|n| n != HOST && n != CONTENT_LENGTH)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // Upgrade is hop-by-hop too; WebSocket tunnelling re-adds it deliberately.
    headers.remove(UPGRADE);
    debug_assert!(!headers.contains_key(TE));
}

/// Whether `name` is one of [`HOP_BY_HOP`] or `Upgrade`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION || name == UPGRADE || HOP_BY_HOP.contains(&name.as_str())
}

/// The forwarding headers ingress-nginx sets by default, always from the view: a client's own
/// copies are overwritten (the view already took what a trusted peer said).
fn set_forwarding_headers(headers: &mut HeaderMap, view: &RequestView, conn: &Conn, trust: &Trust) {
    let trusted = !trust.forwarded_from.is_empty() && trust.trusts(conn.remote.ip());
    // Forwarded host and port from a trusted peer are kept; otherwise ours.
    let forwarded_host = trusted
        .then(|| headers.get(&X_FORWARDED_HOST).cloned())
        .flatten()
        .or_else(|| view.authority_value());
    let forwarded_port = trusted
        .then(|| headers.get(&X_FORWARDED_PORT).cloned())
        .flatten()
        .unwrap_or_else(|| conn.port.clone());
    let scheme = HeaderValue::from_static(view.scheme());
    headers.reserve(9);
    headers.insert(X_FORWARDED_FOR.clone(), view.client_ip.clone());
    headers.insert(X_REAL_IP.clone(), view.client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), scheme.clone());
    headers.insert(X_FORWARDED_SCHEME.clone(), scheme.clone());
    headers.insert(X_SCHEME.clone(), scheme);
    match forwarded_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers.insert(X_FORWARDED_PORT.clone(), forwarded_port);
    if let Ok(uri) = HeaderValue::from_str(view.request_uri()) {
        headers.insert(X_ORIGINAL_URI.clone(), uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn parts(version: Version, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).expect("request").into_parts().0
    }

    fn conn(addr: &str) -> Conn {
        Conn::new(addr.parse::<SocketAddr>().expect("addr"), false, 8080)
    }

    fn read_view(p: &mut Parts, c: &Conn, t: &Trust) -> Result<RequestView, BadRequest> {
        read(p, c, t).2
    }

    #[test]
    fn the_host_comes_from_one_place() {
        let c = conn("192.0.2.1:5000");
        let t = Trust::default();
        let ok = |p: &mut Parts| read_view(p, &c, &t).map(|v| v.host().to_owned());
        let mut abs = parts(
            Version::HTTP_11,
            "http://App.Test/admin",
            &[("host", "evil.test")],
        );
        assert_eq!(ok(&mut abs).expect("absolute form"), "app.test");
        let mut two = parts(
            Version::HTTP_11,
            "/",
            &[("host", "a.test"), ("host", "b.test")],
        );
        assert!(matches!(
            ok(&mut two),
            Err(BadRequest::Host(HostError::Several))
        ));
        let mut none = parts(Version::HTTP_11, "/", &[]);
        assert!(matches!(
            ok(&mut none),
            Err(BadRequest::Host(HostError::Missing))
        ));
        let mut old = parts(Version::HTTP_10, "/", &[]);
        assert_eq!(ok(&mut old).expect("HTTP/1.0 may omit Host"), "");
        let mut userinfo = parts(Version::HTTP_11, "/", &[("host", "app.test:1@other.test")]);
        assert!(ok(&mut userinfo).is_err());
        let mut h2 = parts(Version::HTTP_2, "https://a.test/", &[("host", "b.test")]);
        assert!(matches!(
            ok(&mut h2),
            Err(BadRequest::Host(HostError::Disagree))
        ));
        let mut h2 = parts(Version::HTTP_2, "https://a.test:8443/", &[]);
        assert_eq!(ok(&mut h2).expect("h2"), "a.test");
    }

    #[test]
    fn client_forwarding_headers_are_overwritten_and_hop_by_hop_ones_dropped() {
        let c = conn("192.0.2.1:5000");
        let mut p = parts(
            Version::HTTP_11,
            "/a/../b?x=1",
            &[
                ("host", "a.test"),
                ("x-forwarded-for", "10.9.9.9"),
                ("x-forwarded-port", "1"),
                ("x-real-ip", "10.9.9.9"),
                ("proxy", "http://evil.test"),
                ("connection", "keep-alive, x-request-id, host, x-private"),
                ("x-private", "1"),
                ("x-request-id", "client-id"),
                ("trailer", "x-checksum"),
            ],
        );
        let view = read_view(&mut p, &c, &Trust::default()).expect("view");
        let h = &p.headers;
        assert_eq!(view.path(), "/b");
        assert_eq!(view.request_uri(), "/a/../b?x=1");
        assert_eq!(view.target(), "/b?x=1");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["x-original-uri"], "/a/../b?x=1");
        assert_eq!(h["host"], "a.test", "Connection cannot name Host away");
        assert_eq!(h["trailer"], "x-checksum", "Trailer is end to end");
        assert!(!h.contains_key("proxy") && !h.contains_key("x-private"));
        assert!(!h.contains_key("connection"));
        let id = h["x-request-id"].to_str().expect("id");
        assert_eq!(
            id.len(),
            32,
            "the client's id went with Connection; a new one is made"
        );
        assert_eq!(view.request_id, id);
    }

    #[test]
    fn only_trusted_peers_forward_the_client_address() {
        let trust = Trust {
            forwarded_from: vec!["10.0.0.0/8".parse().expect("cidr")],
        };
        let headers = [
            ("host", "a.test"),
            ("x-forwarded-for", "198.51.100.7, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ];
        let mut p = parts(Version::HTTP_11, "/", &headers);
        let view = read_view(&mut p, &conn("10.0.0.2:1"), &trust).expect("view");
        assert_eq!(view.client.to_string(), "198.51.100.7");
        assert!(view.secure);
        assert_eq!(p.headers["x-forwarded-for"], "198.51.100.7");
        let mut p = parts(Version::HTTP_11, "/", &headers);
        let view = read_view(&mut p, &conn("192.0.2.1:1"), &trust).expect("view");
        assert_eq!(
            view.client.to_string(),
            "192.0.2.1",
            "an untrusted peer is the client"
        );
        assert!(!view.secure);
    }
}

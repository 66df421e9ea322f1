//! The proxy: serving requests from the current generation of routes and certificates.
//!
//! A request loads the generation once and holds it to the end, so a configuration swap never
//! changes a request, stream or connection already under way. This module owns the request
//! path (route lookup, redirects, executing the route's policy, forwarding, local error
//! responses); it never reads configuration sources and never compiles anything.

pub mod access;
pub mod body;
pub mod forward;
pub mod h1pool;
pub mod h2pool;
pub mod listener;
pub mod respond;
pub mod upstream;
pub mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::plugin::{self, HookOutcome};
use crate::policy::{self, HttpVersion, RequestVars, StaticResponse};
use crate::route::{RouteTable, normalize_host};
use crate::tls::CertStore;
use body::{Idle, OnIdle};
use respond::GrpcCode;
use upstream::UpstreamError;

/// Response bodies: streamed from an upstream (logged when they end), or made here.
pub type ProxyBody = Either<access::Logged<Idle<upstream::ResponseBody>>, Full<Bytes>>;
/// Response bodies before the access log wraps them.
pub(crate) type InnerBody = Either<Idle<upstream::ResponseBody>, Full<Bytes>>;

/// One compiled configuration, swapped in whole.
#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    pub routes: RouteTable,
    pub certs: CertStore,
}

/// Settings that are not per route.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The port HTTPS redirects point at (443 is left out of the URL).
    pub redirect_https_port: u16,
}

/// What every connection shares: the current generation.
#[derive(Debug)]
pub struct Proxy {
    generation: ArcSwap<Generation>,
    settings: Settings,
    pub tunnels: Arc<websocket::Stats>,
    pub tls: Arc<crate::metrics::TlsStats>,
}

/// Facts about the downstream connection a request came in on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub remote: SocketAddr,
    pub secure: bool,
    /// The client's IP as a header value (`X-Forwarded-For`, `X-Real-IP`), formatted once per
    /// connection instead of once per request.
    pub client_ip: HeaderValue,
}

impl Conn {
    pub fn new(remote: SocketAddr, secure: bool) -> Self {
        let client_ip = HeaderValue::try_from(remote.ip().to_string())
            .expect("a formatted IP address is a valid header value");
        Conn {
            remote,
            secure,
            client_ip,
        }
    }
}

impl Proxy {
    pub fn new(first: Generation, settings: Settings) -> Self {
        Self {
            generation: ArcSwap::from_pointee(first),
            settings,
            tunnels: Arc::default(),
            tls: Arc::default(),
        }
    }

    /// Publishes a new generation; requests already running keep the one they loaded.
    pub fn publish(&self, generation: Generation) {
        self.generation.store(Arc::new(generation));
    }

    pub fn current(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &Conn,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = tokio::time::Instant::now();
        let mut req = req;
        let method = req.method().clone();
        let kind = Kind::of(&req);
        let protocol = kind.protocol(req.version());
        // Before anything else, so hooks, the upstream and the log all see the same id.
        forward::ensure_request_id(req.headers_mut());
        let mut record = access::enabled().then(|| Box::new(start_record(&req, conn, protocol)));
        let mut stats = None;
        let Ok(resp) = self.serve(req, kind, conn, &mut record, &mut stats).await;
        let (parts, body) = resp.into_parts();
        // Trailers-only gRPC answers carry their status in the headers.
        let grpc_status = if kind.grpc {
            parts.headers.get(&respond::GRPC_STATUS)
        } else {
            None
        };
        if let Some(s) = &stats {
            s.record(protocol, &method, parts.status, started.elapsed());
            if let Some(code) = grpc_status {
                s.grpc_status(code);
            }
        }
        if let Some(r) = record.as_mut() {
            r.status = parts.status.as_u16();
            r.grpc_status = grpc_status.cloned();
        }
        let body = match body {
            Either::Left(streamed) => {
                // gRPC statuses usually come in trailers, at the end of the stream.
                let trailers_to = stats.filter(|_| protocol == GRPC && grpc_status.is_none());
                Either::Left(access::Logged::new(streamed, record, trailers_to))
            }
            Either::Right(made) => {
                if let Some(r) = record {
                    r.finish();
                }
                Either::Right(made)
            }
        };
        Ok(Response::from_parts(parts, body))
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        kind: Kind,
        conn: &Conn,
        record: &mut Option<Box<access::Record>>,
        stats: &mut Option<Arc<crate::metrics::RouteStats>>,
    ) -> Result<Response<InnerBody>, Infallible> {
        let generation = self.generation.load_full();
        // Cheap reference-counted clones, so the host can outlive taking the request apart.
        let authority = match req.uri().authority() {
            Some(a) => HostSource::Uri(a.clone()),
            None => match req.headers().get(HOST) {
                Some(v) => HostSource::Header(v.clone()),
                None => HostSource::None,
            },
        };
        let host_value = authority.header_value();
        let authority = authority.as_str();
        let host = normalize_host(authority);
        let path = req.uri().path();
        // gRPC clients only understand gRPC statuses, so errors for them are gRPC errors.
        let grpc = kind.grpc;
        let Some(route) = generation.routes.find(&host, path) else {
            let why = format!("no route for host {host:?} and path {path:?}");
            return Ok(if grpc {
                respond::grpc_error(GrpcCode::Unimplemented, &why)
            } else {
                respond::text(StatusCode::NOT_FOUND, why)
            });
        };
        let policy = &route.policy;
        *stats = Some(route.stats.clone());
        if let Some(r) = record.as_mut() {
            r.ingress = Some(route.ingress.clone());
        }
        let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        if policy.ssl_redirect && !conn.secure {
            let location = match self.settings.redirect_https_port {
                443 => format!("https://{host}{pq}"),
                port => format!("https://{host}:{port}{pq}"),
            };
            return Ok(respond::redirect(StatusCode::PERMANENT_REDIRECT, &location));
        }
        let vars = RequestVars {
            host: &host,
            remote: conn.remote,
            secure: conn.secure,
            request_uri: pq,
        };
        if let Some(answer) = &policy.respond {
            return Ok(static_response(answer, &vars));
        }
        if let Some(root) = &policy.app_root
            && path == "/"
        {
            return Ok(respond::redirect(StatusCode::FOUND, root));
        }
        let req = if policy.hooks.is_empty() {
            req
        } else {
            let (mut parts, body) = req.into_parts();
            let head = plugin::RequestHead {
                method: parts.method.as_str(),
                scheme: if conn.secure { "https" } else { "http" },
                authority,
                path: parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
            };
            if let HookOutcome::Respond(answer) =
                policy.hooks.run_request(&head, &mut parts.headers)
            {
                return Ok(fixed(answer));
            }
            Request::from_parts(parts, body)
        };
        let Some(endpoint) = route.backend.pick() else {
            let why = format!("no ready endpoints for service {}", route.backend.name);
            return Ok(if grpc {
                respond::grpc_error(GrpcCode::Unavailable, &why)
            } else {
                respond::text(StatusCode::SERVICE_UNAVAILABLE, why)
            });
        };
        let client = match &route.grpc_client {
            Some(h2c) if grpc => h2c,
            _ => &route.client,
        };
        let h2 = client.transport.is_h2();

        if let Some(r) = record.as_mut() {
            r.upstream = Some(endpoint.addr);
        }
        if let Some(kind) = kind.websocket {
            // Boxed: the tunnel's handshake state is large and rare; inline, it would make every
            // request's future (moved and copied on each request) that much bigger.
            let tunnel = Box::pin(self.tunnel(req, kind, route, endpoint, &host, conn));
            return Ok(tunnel.await);
        }

        let mut head_timeout = policy.read_timeout;
        if grpc && let Some(deadline) = req.headers().get(&GRPC_TIMEOUT).and_then(grpc_timeout) {
            head_timeout = head_timeout.min(deadline);
        }
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        let wants_trailers = parts
            .headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        // HTTP/2 upstreams take `:scheme` and `:authority` from an absolute URI; HTTP/1.1 ones
        // are sent origin-form (`Host` is already set).
        (uri.scheme, uri.authority) = if h2 {
            (
                Some(client.transport.scheme()),
                Some(endpoint.authority.clone()),
            )
        } else {
            (None, None)
        };
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if let (Some(target), Some(re)) = (&policy.rewrite_target, &route.path_regex)
            && let Some(rewritten) = uri
                .path_and_query
                .as_ref()
                .and_then(|pq| rewrite(re, target, pq))
        {
            uri.path_and_query = Some(rewritten);
        }
        parts.uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(e) => {
                return Ok(respond::text(
                    StatusCode::BAD_REQUEST,
                    format!("bad request target: {e}"),
                ));
            }
        };
        parts.version = match (h2, policy.http_version) {
            (true, _) => Version::HTTP_2,
            (false, HttpVersion::Http11) => Version::HTTP_11,
            (false, HttpVersion::Http10) => Version::HTTP_10,
        };
        forward::strip_hop_by_hop(&mut parts.headers);
        if h2 && wants_trailers {
            // The one TE value HTTP/2 allows; gRPC servers may require it.
            parts
                .headers
                .insert(TE, HeaderValue::from_static("trailers"));
        }
        forward::add_forwarded(
            &mut parts.headers,
            &conn.client_ip,
            conn.secure,
            host_value.as_ref(),
        );
        policy::apply_edits(
            &policy.request_headers,
            &mut parts.headers,
            &RequestVars {
                host: &host,
                remote: conn.remote,
                secure: conn.secure,
                request_uri: parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
            },
        );

        let counter = record.as_ref().map(|r| r.bytes_in.clone());
        let body = Idle::new(body, policy.send_timeout, OnIdle::Fail).counting(counter);
        let sent_at = tokio::time::Instant::now();
        let result = client
            .send(
                Request::from_parts(parts, body),
                endpoint,
                &route.backend.name,
                head_timeout,
            )
            .await;
        let upstream_took = sent_at.elapsed();
        route.stats.upstream(upstream_took);
        if let Some(r) = record.as_mut() {
            r.upstream_duration = Some(upstream_took);
        }
        if let Err(UpstreamError::Connect { .. }) = &result {
            route.stats.connect_error();
        }
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                // The upstream's version is its connection's business: an HTTP/1.0 backend
                // must not turn the client's HTTP/1.1 answer into an HTTP/1.0 one (which
                // ends the client's keep-alive).
                parts.version = client_version;
                forward::strip_hop_by_hop(&mut parts.headers);
                if !policy.response_headers.is_empty() {
                    let vars = RequestVars {
                        host: &host,
                        remote: conn.remote,
                        secure: conn.secure,
                        request_uri: "",
                    };
                    policy::apply_edits(&policy.response_headers, &mut parts.headers, &vars);
                }
                if !policy.hooks.is_empty()
                    && let HookOutcome::Respond(answer) =
                        policy.hooks.run_response(parts.status, &mut parts.headers)
                {
                    return Ok(fixed(answer));
                }
                let on_idle = if grpc {
                    OnIdle::GrpcDeadline
                } else {
                    OnIdle::Fail
                };
                let body = Idle::new(body, policy.read_timeout, on_idle);
                Ok(Response::from_parts(parts, Either::Left(body)))
            }
            Err(e) => {
                tracing::warn!(ingress = %route.ingress, error = %e, "upstream request failed");
                Ok(if grpc {
                    let code = match e {
                        UpstreamError::Timeout { .. } => GrpcCode::DeadlineExceeded,
                        _ => GrpcCode::Unavailable,
                    };
                    respond::grpc_error(code, &e.to_string())
                } else {
                    respond::text(e.status(), e.to_string())
                })
            }
        }
    }
}

/// Where the request's host came from: `:authority` (HTTP/2, absolute-form) or `Host`.
enum HostSource {
    Uri(http::uri::Authority),
    Header(HeaderValue),
    None,
}

impl HostSource {
    fn as_str(&self) -> &str {
        match self {
            HostSource::Uri(a) => a.as_str(),
            HostSource::Header(v) => v.to_str().unwrap_or(""),
            HostSource::None => "",
        }
    }

    /// [`HostSource::as_str`] as a header value (`Host`, `X-Forwarded-Host`); a header is
    /// reused as is (a reference count, no copy).
    fn header_value(&self) -> Option<HeaderValue> {
        match self {
            HostSource::Header(v) if v.to_str().is_ok() => Some(v.clone()),
            other => HeaderValue::from_str(other.as_str()).ok(),
        }
    }
}

impl Proxy {
    /// Opens a WebSocket tunnel for `req`; the request headers get the same treatment as a
    /// proxied request's.
    async fn tunnel(
        &self,
        req: Request<Incoming>,
        kind: websocket::Kind,
        route: &crate::route::Route,
        endpoint: &crate::route::Endpoint,
        host: &str,
        conn: &Conn,
    ) -> Response<InnerBody> {
        let policy = &route.policy;
        let mut headers = req.headers().clone();
        forward::strip_hop_by_hop(&mut headers);
        let host_value = HeaderValue::from_str(host).ok();
        forward::add_forwarded(
            &mut headers,
            &conn.client_ip,
            conn.secure,
            host_value.as_ref(),
        );
        let request_uri = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let vars = RequestVars {
            host,
            remote: conn.remote,
            secure: conn.secure,
            request_uri,
        };
        policy::apply_edits(&policy.request_headers, &mut headers, &vars);
        let timeouts = websocket::Timeouts {
            connect: policy.connect_timeout,
            read: policy.read_timeout,
            send: policy.send_timeout,
        };
        let backend = websocket::Backend {
            endpoint,
            tls: (route.client.transport == upstream::Transport::TlsHttp1)
                .then(upstream::http1_tls),
            timeouts,
        };
        match websocket::open(req, kind, backend, headers, host, self.tunnels.clone()).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(ingress = %route.ingress, error = %e, "WebSocket tunnel failed");
                respond::text(StatusCode::BAD_GATEWAY, e.to_string())
            }
        }
    }
}

fn static_response(answer: &StaticResponse, vars: &RequestVars<'_>) -> Response<InnerBody> {
    match answer {
        StaticResponse::Redirect { status, location } => {
            respond::redirect(*status, &policy::render(location, vars))
        }
        StaticResponse::Fixed {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(Either::Right(Full::new(body.clone())));
            *resp.status_mut() = *status;
            *resp.headers_mut() = headers.clone();
            resp
        }
    }
}

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Index of "grpc" in [`crate::metrics::PROTOCOLS`].
const GRPC: usize = 2;

/// What kind of request this is, read from its head once.
#[derive(Clone, Copy)]
struct Kind {
    grpc: bool,
    websocket: Option<websocket::Kind>,
}

impl Kind {
    fn of(req: &Request<Incoming>) -> Self {
        let grpc = req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Kind {
            grpc,
            websocket: websocket::kind(req),
        }
    }

    /// The request's protocol, as an index into [`crate::metrics::PROTOCOLS`].
    fn protocol(self, version: Version) -> usize {
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

/// The access-log record of a request, before routing fills in the rest.
fn start_record(req: &Request<Incoming>, conn: &Conn, protocol: usize) -> access::Record {
    let host = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    };
    access::Record {
        start: tokio::time::Instant::now(),
        time: std::time::SystemTime::now(),
        client: conn.remote.ip(),
        host: host.to_owned(),
        method: req.method().as_str().to_owned(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
            .to_owned(),
        protocol: crate::metrics::PROTOCOLS[protocol],
        ingress: None,
        request_id: req.headers().get(&forward::X_REQUEST_ID).cloned(),
        upstream: None,
        upstream_duration: None,
        status: 0,
        grpc_status: None,
        bytes_in: Arc::default(),
        bytes_out: 0,
    }
}

/// A plugin's answer as a response.
fn fixed(answer: plugin::FixedResponse) -> Response<InnerBody> {
    let mut resp = Response::new(Either::Right(Full::new(answer.body)));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    resp
}

/// ingress-nginx `rewrite-target`: when the path regex matches, the path becomes the target
/// with `$1`.. expanded from its captures; the query string is kept.
fn rewrite(re: &regex::Regex, target: &str, pq: &PathAndQuery) -> Option<PathAndQuery> {
    let caps = re.captures(pq.path())?;
    let mut out = String::with_capacity(target.len() + pq.as_str().len());
    caps.expand(target, &mut out);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if let Some(q) = pq.query() {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::try_from(out).ok()
}

/// Parses `grpc-timeout` (`1-8 digits` + unit H, M, S, m, u, n).
fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_target_expands_captures_and_keeps_the_query() {
        let re = crate::route::path_regex("/something(/|$)(.*)").expect("regex");
        let pq = |s: &'static str| PathAndQuery::from_static(s);
        assert_eq!(
            rewrite(&re, "/$2", &pq("/something/new/x?a=1")).map(|p| p.to_string()),
            Some("/new/x?a=1".to_owned())
        );
        assert_eq!(
            rewrite(&re, "/$2", &pq("/something")).map(|p| p.to_string()),
            Some("/".to_owned())
        );
        assert_eq!(rewrite(&re, "/$2", &pq("/other")), None);
    }

    #[test]
    fn parses_grpc_timeouts() {
        let t = |s: &'static str| grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5x"), None);
        assert_eq!(t("123456789S"), None, "at most 8 digits");
    }
}

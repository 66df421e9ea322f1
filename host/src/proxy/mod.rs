//! The proxy: serving requests from the current generation of routes and certificates.
//!
//! A request meets these phases, in this order (Pingora's `ProxyHttp` is the anchor); each is a
//! module or a function named for it, and each either answers the request or passes it on:
//!
//! 1. accept and TLS ([`listener`]): connection limits and timeouts, PROXY protocol, SNI
//!    (which also decides whether the handshake asks for a client certificate).
//! 2. read and normalise ([`view`]): the one canonical request view and header hygiene.
//! 3. route ([`routing`]): host and path to a route; its client certificate rules
//!    ([`client_tls`]); CORS preflights; what a route answers by itself (HTTPS redirects,
//!    static responses, `app-root`).
//! 4. access ([`access`]): rate limits, then who may reach the route (source ranges, basic
//!    and external authentication, `satisfy`).
//! 5. request hooks ([`hooks`]): the route's Wasm plugins, in attach order; they may change
//!    the method, path and query that go upstream.
//! 6. upstream pick ([`forward::pick`]): the backend (a hook's choice, else the canary's when
//!    its rule takes the request, else the route's) and its endpoint.
//! 7. forward ([`forward`], [`websocket`] for tunnels): the upstream request and its wait.
//! 8. response ([`response`]): native header edits; then the response hooks ([`hooks`], in
//!    reverse attach order) over whatever the route answered, the proxy's own answers included.
//! 9. log ([`log`]): access log and metrics, when the response ends.
//!
//! A request loads the generation once and holds it to the end, so a configuration swap never
//! changes a request, stream or connection already under way. This module never reads
//! configuration sources and never compiles anything.

mod access;
mod client_tls;
mod forward;
mod hooks;
pub mod listener;
pub mod local;
pub mod log;
mod messages;
pub mod proxy_protocol;
mod response;
mod retry;
mod routing;
pub mod view;
pub mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::body::{Hooked, Idle};
use crate::route::RouteTable;
use crate::tls::CertStore;
use crate::upstream;
use view::RequestView;

/// Response bodies: streamed from an upstream (logged when they end), or made here.
pub type ProxyBody = Either<log::Logged<Streamed>, Full<Bytes>>;
/// Response bodies before the access log wraps them.
pub(crate) type InnerBody = Either<Streamed, Full<Bytes>>;
/// An upstream's response body: timed, and through the route's body hooks if it has any.
pub type Streamed = Hooked<Idle<upstream::ResponseBody>, crate::plugin::BodyHooks>;

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
    /// Whose forwarding headers are believed.
    pub trust: view::Trust,
    /// Longest wait between two reads of a request body from the client (then 408).
    pub client_body_timeout: Duration,
    /// Answer to a request over `limit-rps`/`limit-rpm` (`--limit-req-status-code`).
    pub limit_req_status: http::StatusCode,
    /// Answer to a request over `limit-connections` (`--limit-conn-status-code`).
    pub limit_conn_status: http::StatusCode,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            redirect_https_port: 443,
            trust: view::Trust::default(),
            client_body_timeout: Duration::from_secs(60),
            limit_req_status: http::StatusCode::SERVICE_UNAVAILABLE,
            limit_conn_status: http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What every connection shares: the current generation.
#[derive(Debug)]
pub struct Proxy {
    generation: ArcSwap<Generation>,
    settings: Settings,
    pub tunnels: Arc<crate::metrics::TunnelStats>,
    pub tls: Arc<crate::metrics::TlsStats>,
}

/// Facts about the downstream connection a request came in on.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The peer, or the source a PROXY protocol header named.
    pub remote: SocketAddr,
    pub secure: bool,
    /// The client's IP as a header value (`X-Forwarded-For`, `X-Real-IP`), formatted once per
    /// connection instead of once per request.
    pub client_ip: HeaderValue,
    /// The listener's port (`X-Forwarded-Port`).
    pub port: HeaderValue,
    /// The connection's `--max-connections` slot; a WebSocket tunnel the connection becomes
    /// keeps it until the tunnel ends.
    pub slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// What the TLS handshake established; `None` on the plain listener.
    pub tls: Option<Box<TlsFacts>>,
}

/// What a TLS handshake established about the client.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// The server name the client asked for (lowercase), if any.
    pub sni: Option<Arc<str>>,
    /// The client certificate verdict, when the handshake asked for one.
    pub client: Option<crate::tls::client::ClientCert>,
    /// The trust the handshake asked under: a route requiring another (another Ingress's CA
    /// on the same host, or a CA rotated since) must not accept this connection's verdict.
    pub client_auth: Option<Arc<crate::tls::client::ClientAuth>>,
}

impl Conn {
    pub fn new(remote: SocketAddr, secure: bool, port: u16) -> Self {
        let client_ip = HeaderValue::try_from(remote.ip().to_string())
            .expect("a formatted IP address is a valid header value");
        Conn {
            remote,
            secure,
            client_ip,
            port: HeaderValue::from(port),
            slot: None,
            tls: None,
        }
    }
}

/// What the phases after routing share about one request.
pub(crate) struct Exchange<'a> {
    pub view: &'a RequestView,
    pub conn: &'a Conn,
    pub route: &'a crate::route::Route,
    pub settings: &'a Settings,
    pub record: &'a mut Option<Box<log::Record>>,
    /// What the route's hooks see and change; `None` on routes without hooks.
    pub request: Option<Box<crate::plugin::HookRequest>>,
    /// Phase 6 sent this request to the route's canary.
    pub canary: bool,
    /// Phase 6 gave the client a session affinity cookie: it goes on the response.
    pub set_cookie: Option<HeaderValue>,
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

    /// One request through every phase.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &Conn,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = tokio::time::Instant::now();
        let (mut parts, body) = req.into_parts();
        let (kind, request_id, view) = view::read(&mut parts, conn, &self.settings.trust);
        let protocol = kind.protocol(parts.version);
        let method = parts.method.clone();
        let mut record = log::enabled().then(|| Box::new(log::Record::start(&parts, conn)));
        let mut stats = None;
        let resp = match view {
            Ok(view) => {
                if let Some(r) = record.as_mut() {
                    r.seen(&view);
                }
                self.serve(parts, body, &view, conn, &mut record, &mut stats)
                    .await
            }
            Err(bad) => {
                tracing::debug!(id = ?request_id, error = %bad, "bad request");
                local::bad_request(&bad, kind.grpc, &request_id)
            }
        };
        Ok(log::finish(resp, record, stats, protocol, &method, started))
    }

    /// Phases 3 to 8 for a request with a valid view.
    async fn serve(
        &self,
        parts: Parts,
        body: Incoming,
        view: &RequestView,
        conn: &Conn,
        record: &mut Option<Box<log::Record>>,
        stats: &mut Option<Arc<crate::metrics::RouteStats>>,
    ) -> Response<InnerBody> {
        let generation = self.generation.load_full();
        let Some(route) = routing::find(&generation.routes, view) else {
            return local::failure(local::NO_ROUTE, view.kind.grpc, &view.request_id);
        };
        *stats = Some(route.stats.clone());
        if let Some(r) = record.as_mut() {
            r.ingress = Some(route.ingress.clone());
        }
        // Before anything else the route does, as nginx checks the certificate before any
        // location runs; except that plain HTTP bound for HTTPS gets its redirect first (there
        // is no handshake to check, and the client can present its certificate over HTTPS).
        let redirecting = !view.secure && route.policy.ssl_redirect;
        if !redirecting && let Some(refused) = client_tls::check(route, view, conn) {
            return refused;
        }
        let Some(cors) = route.policy.cors.as_deref() else {
            return self
                .serve_route(route, parts, body, view, conn, record)
                .await;
        };
        // CORS wraps every answer of the route, the proxy's own included (a browser must be
        // able to read a 401); a preflight is answered before anything else runs.
        let grant = cors.grant(parts.headers.get(http::header::ORIGIN));
        let mut resp = if grant.is_some() && parts.method == http::Method::OPTIONS {
            local::no_content()
        } else {
            self.serve_route(route, parts, body, view, conn, record)
                .await
        };
        cors.decorate(grant, resp.headers_mut());
        resp
    }

    /// Phases 3 (route's own answers) to 8, once the route is known; the response hooks see
    /// whatever the route answers.
    async fn serve_route(
        &self,
        route: &crate::route::Route,
        parts: Parts,
        body: Incoming,
        view: &RequestView,
        conn: &Conn,
        record: &mut Option<Box<log::Record>>,
    ) -> Response<InnerBody> {
        let mut exchange = Exchange {
            view,
            conn,
            route,
            settings: &self.settings,
            record,
            request: hooks::request(route, view, conn, &parts),
            canary: false,
            set_cookie: None,
        };
        let resp = self.answer(&mut exchange, parts, body).await;
        hooks::on_response(&mut exchange, resp)
    }

    /// The route's answer: its own (redirects, static responses), access control's refusal, or
    /// what phases 5 to 8 make of it.
    async fn answer(
        &self,
        exchange: &mut Exchange<'_>,
        mut parts: Parts,
        body: Incoming,
    ) -> Response<InnerBody> {
        let (route, view) = (exchange.route, exchange.view);
        if let Some(answer) = routing::answer(route, view, self.settings.redirect_https_port) {
            return answer;
        }
        let admitted = match access::check(exchange, &mut parts).await {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
        client_tls::headers(route, exchange.conn, &mut parts.headers);
        let mut resp = self.forward(exchange, parts, body, admitted.slot).await;
        if let Some(cookies) = &admitted.cookies {
            cookies.add_to(&mut resp);
        }
        resp
    }

    /// Phases 5 to 8: hooks, upstream pick, forward, response.
    async fn forward(
        &self,
        exchange: &mut Exchange<'_>,
        mut parts: Parts,
        body: Incoming,
        slot: Option<crate::access::limit::Slot>,
    ) -> Response<InnerBody> {
        let (route, view) = (exchange.route, exchange.view);
        let grpc = view.kind.grpc;
        match hooks::on_request(exchange, &mut parts) {
            hooks::RequestHooks::Proceed => {}
            hooks::RequestHooks::Answer(answer) => return *answer,
            hooks::RequestHooks::Wait(suspended) => {
                // Boxed: rare, and its calls' state would otherwise enlarge every request's
                // future.
                let resumed = Box::pin(hooks::resume(exchange, &mut parts, suspended));
                if let Some(answer) = resumed.await {
                    return answer;
                }
            }
        }
        let Some(endpoint) = forward::pick(exchange, &parts.headers) else {
            tracing::warn!(ingress = %route.ingress, service = %forward::backend(exchange).name,
                id = ?view.request_id, "no ready endpoints");
            return local::failure(local::NO_ENDPOINTS, grpc, &view.request_id);
        };
        if let Some(r) = exchange.record.as_mut() {
            r.upstream = Some(endpoint.addr);
        }
        if let Some(kind) = view.kind.websocket {
            // Boxed: the tunnel's handshake state is large and rare; inline, it would make every
            // request's future (moved and copied on each request) that much bigger.
            let req = Request::from_parts(parts, body);
            let tunnel = Box::pin(forward::tunnel(
                exchange,
                req,
                kind,
                endpoint,
                &self.tunnels,
                slot,
            ));
            let mut resp = tunnel.await;
            if let Some(cookie) = exchange.set_cookie.take() {
                resp.headers_mut().append(http::header::SET_COOKIE, cookie);
            }
            return resp;
        }
        let mut resp = match forward::send(exchange, parts, body, endpoint).await {
            Ok(resp) => response::filter(exchange, resp, slot),
            Err(failed) => failed,
        };
        if let Some(cookie) = exchange.set_cookie.take() {
            resp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        resp
    }
}

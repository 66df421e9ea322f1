//! The proxy: serving requests from the current generation of routes and certificates.
//!
//! A request loads the generation once and holds it to the end, so a configuration swap never
//! changes a request, stream or connection already under way. This module owns the request
//! path (route lookup, redirects, forwarding, local error responses); it never reads
//! configuration sources and never compiles anything.

pub mod forward;
pub mod listener;
pub mod respond;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::route::{RouteTable, normalize_host};
use crate::tls::CertStore;
use upstream::Upstream;

/// Response bodies: streamed from an upstream, or made here.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

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

/// What every connection shares: the current generation and the upstream pools.
#[derive(Debug)]
pub struct Proxy {
    generation: ArcSwap<Generation>,
    upstream: Upstream,
    settings: Settings,
}

/// Facts about the downstream connection a request came in on.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub remote: SocketAddr,
    pub secure: bool,
}

impl Proxy {
    pub fn new(first: Generation, upstream: Upstream, settings: Settings) -> Self {
        Self {
            generation: ArcSwap::from_pointee(first),
            upstream,
            settings,
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
        conn: Conn,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let generation = self.generation.load_full();
        let authority = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => req
                .headers()
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        };
        let host = normalize_host(authority);
        let path = req.uri().path();
        let Some(route) = generation.routes.find(&host, path) else {
            return Ok(respond::text(
                StatusCode::NOT_FOUND,
                format!("no route for host {host:?} and path {path:?}"),
            ));
        };
        if route.policy.ssl_redirect && !conn.secure {
            let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
            let location = match self.settings.redirect_https_port {
                443 => format!("https://{host}{pq}"),
                port => format!("https://{host}:{port}{pq}"),
            };
            return Ok(respond::redirect(&location));
        }
        let Some(endpoint) = route.backend.pick() else {
            return Ok(respond::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no ready endpoints for service {}", route.backend.name),
            ));
        };

        let authority = authority.to_owned();
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
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
        parts.version = Version::HTTP_11;
        forward::strip_hop_by_hop(&mut parts.headers);
        forward::add_forwarded(&mut parts.headers, conn.remote, conn.secure, &authority);

        let policy = &route.policy;
        match self
            .upstream
            .send(
                Request::from_parts(parts, body),
                endpoint,
                &route.backend.name,
                policy.read_timeout,
            )
            .await
        {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                forward::strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Either::Left(body)))
            }
            Err(e) => {
                tracing::warn!(ingress = %route.ingress, error = %e, "upstream request failed");
                Ok(respond::text(e.status(), e.to_string()))
            }
        }
    }
}

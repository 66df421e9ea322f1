//! The admin listener: liveness and readiness for kubelet probes, `/metrics` for Prometheus,
//! `/debug/routes` for people (the compiled route table as JSON).
//!
//! Kept apart from the proxy listeners so probes and (later) metrics never compete with traffic
//! and are never exposed on the public ports. It reads process state; it changes nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// Process state the probes and scrapes report.
#[derive(Debug)]
pub struct Admin {
    ready: AtomicBool,
    draining: AtomicBool,
    metrics: prometheus_client::registry::Registry,
    proxy: Arc<Proxy>,
}

impl Admin {
    pub fn new(metrics: prometheus_client::registry::Registry, proxy: Arc<Proxy>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics,
            proxy,
        }
    }

    /// Ready once the first configuration has been compiled and published.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Shutting down: `/readyz` fails from now on, so load balancers stop sending traffic.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn answer(&self, path: &str, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
        let (status, body, content_type) = match path {
            "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok\n"), "text/plain"),
            "/readyz" if self.draining.load(Ordering::Acquire) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"not ready: shutting down\n"),
                "text/plain",
            ),
            "/readyz" if self.ready.load(Ordering::Acquire) => {
                (StatusCode::OK, Bytes::from_static(b"ready\n"), "text/plain")
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"not ready: no configuration compiled yet\n"),
                "text/plain",
            ),
            "/metrics" => (
                StatusCode::OK,
                Bytes::from(crate::metrics::encode(&self.metrics)),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            // The route table names every Service and pod address: loopback only, wherever the
            // admin listener is bound (probes and /metrics stay reachable for deploy/).
            "/debug/routes" if !peer.ip().to_canonical().is_loopback() => (
                StatusCode::FORBIDDEN,
                Bytes::from_static(b"/debug/routes answers only on loopback\n"),
                "text/plain",
            ),
            "/debug/routes" => {
                let generation = self.proxy.current();
                let doc = serde_json::json!({
                    "generation": generation.number,
                    "routes": generation.routes.describe(),
                });
                (
                    StatusCode::OK,
                    Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default()),
                    "application/json",
                )
            }
            _ => (
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"not found\n"),
                "text/plain",
            ),
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        resp
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = admin.answer(req.uri().path(), peer);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let generation = crate::proxy::Generation {
            number: 1,
            routes: crate::route::RouteTable::default(),
            certs: crate::tls::CertStore::new(Arc::new(
                crate::tls::default_certificate().expect("default certificate"),
            )),
        };
        let proxy = Arc::new(Proxy::new(generation, Default::default()));
        Admin::new(prometheus_client::registry::Registry::default(), proxy)
    }

    #[test]
    fn debug_routes_answers_only_on_loopback_and_probes_answer_anywhere() {
        let admin = admin();
        let peer = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        for local in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            let r = admin.answer("/debug/routes", peer(local));
            assert_eq!(r.status(), StatusCode::OK, "{local}");
        }
        let r = admin.answer("/debug/routes", peer("10.1.2.3:5000"));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = admin.answer("/healthz", peer("10.1.2.3:5000"));
        assert_eq!(r.status(), StatusCode::OK);
        let r = admin.answer("/metrics", peer("10.1.2.3:5000"));
        assert_eq!(r.status(), StatusCode::OK);
    }
}

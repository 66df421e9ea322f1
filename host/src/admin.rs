//! The admin listener: liveness and readiness for kubelet probes.
//!
//! Kept apart from the proxy listeners so probes and (later) metrics never compete with traffic
//! and are never exposed on the public ports. It reads process state; it changes nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Process state the probes report.
#[derive(Debug, Default)]
pub struct Admin {
    ready: AtomicBool,
}

impl Admin {
    /// Ready once the first configuration has been compiled and published.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, body) = match req.uri().path() {
            "/healthz" => (StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => (StatusCode::OK, "ready\n"),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration compiled yet\n",
            ),
            _ => (StatusCode::NOT_FOUND, "not found\n"),
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        resp
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = admin.answer(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

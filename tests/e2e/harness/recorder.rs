//! Backends that show more than the echo backend: [`Recorder`] answers with the echo backend's
//! JSON plus the request's HTTP/1.1 trailers, and counts every request that arrives (so a test
//! can say a request never reached it); [`Silent`] accepts connections and never answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::manifests::{self, NS, Port, ServicePort};

/// A Service `service` in [`NS`] (port 80 named `http`, targetPort `addr`'s port) and an
/// EndpointSlice with `addr` as its one ready endpoint.
pub fn objects_at(service: &str, addr: SocketAddr) -> Vec<Value> {
    vec![
        manifests::service(
            NS,
            service,
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(addr.port()),
            }],
        ),
        manifests::endpoint_slice(
            NS,
            service,
            &format!("{service}-slice"),
            &[(Some("http"), addr.port())],
            &[manifests::ready(&addr.ip().to_string())],
        ),
    ]
}

#[derive(Default)]
struct Seen {
    /// Requests whose head arrived.
    arrived: AtomicUsize,
    /// What each request looked like once its body ended (or failed).
    finished: Mutex<Vec<Value>>,
}

/// An echo-like backend that remembers what it saw; stopped when dropped.
pub struct Recorder {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Starts a recorder called `name` on 127.0.0.1 and an ephemeral port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a recording backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("recorder local address");
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(serve(listener, name.to_owned(), seen.clone()));
        Self {
            name: name.to_owned(),
            addr,
            seen,
            task,
        }
    }

    /// Its Service (named after it) and EndpointSlice, as [`objects_at`].
    pub fn objects(&self) -> Vec<Value> {
        objects_at(&self.name, self.addr)
    }

    /// How many requests reached it (their head arrived).
    pub fn arrived(&self) -> usize {
        self.seen.arrived.load(Ordering::SeqCst)
    }

    /// Each request it saw to the end of its body (or to a body error), as answered: the echo
    /// backend's fields plus `trailers` (name to values) and `complete` (the body ended cleanly).
    pub fn finished(&self) -> Vec<Value> {
        self.seen.finished.lock().expect("recorder lock").clone()
    }
}

async fn serve(listener: TcpListener, name: String, seen: Arc<Seen>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (name, seen) = (name.clone(), seen.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, name.clone(), seen.clone(), peer));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn header_json(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in headers {
        let entry = map.entry(k.as_str()).or_insert_with(|| json!([]));
        if let Value::Array(list) = entry {
            list.push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
        }
    }
    Value::Object(map)
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    seen: Arc<Seen>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    seen.arrived.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0usize;
    let mut trailers = HeaderMap::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => body_bytes += data.len(),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers.extend(t);
                    }
                }
            },
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let doc = json!({
        "backend": &*name,
        "peer": peer.to_string(),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "version": format!("{:?}", parts.version),
        "headers": header_json(&parts.headers),
        "trailers": header_json(&trailers),
        "body_bytes": body_bytes,
        "complete": complete,
    });
    seen.finished
        .lock()
        .expect("recorder lock")
        .push(doc.clone());
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A backend that accepts every connection, reads whatever comes and never answers; stopped
/// when dropped.
pub struct Silent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a silent backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("silent backend local address");
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        Self { addr, task }
    }

    /// Its Service `service` and EndpointSlice, as [`objects_at`].
    pub fn objects(&self, service: &str) -> Vec<Value> {
        objects_at(service, self.addr)
    }
}

/// Sends `req` and asserts an answer with `status` that never reached the backend.
pub async fn refused(
    gw: &super::Wasmgress,
    rec: &Recorder,
    label: &str,
    status: u16,
    req: &super::Req,
) -> super::Resp {
    let before = rec.arrived();
    let r = gw.send(req).await;
    assert_eq!(r.status, status, "{label}: {}", r.summary());
    assert_eq!(r.backend(), None, "{label}: the backend answered");
    assert_eq!(
        rec.arrived(),
        before,
        "{label}: the backend must not be reached"
    );
    r
}

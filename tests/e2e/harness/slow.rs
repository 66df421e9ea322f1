//! A backend for tests that need a request to stay in progress, or a large answer: [`Slow`]
//! counts every request that arrives, holds a request whose path starts with `/hold` until
//! [`Slow::release`] (or [`HOLD_LIMIT`], so a failing test never hangs on it), and answers
//! `?bytes=N` with an N-byte body of [`pattern`] in one piece; anything else gets a small JSON
//! naming the backend (as the echo backend's, so [`super::Resp::backend`] works).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::recorder::objects_at;

/// The longest a `/hold` request waits for [`Slow::release`].
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

struct State {
    arrived: AtomicUsize,
    holding: AtomicUsize,
    released: watch::Sender<bool>,
}

/// The holding, counting, large-answering backend; stopped when dropped.
pub struct Slow {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Byte `i` of every `?bytes=N` body: a pattern that shows a missing or repeated piece.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

impl Slow {
    /// Starts it, called `name`, on 127.0.0.1 and an ephemeral port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a slow backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("slow backend local address");
        let state = Arc::new(State {
            arrived: AtomicUsize::new(0),
            holding: AtomicUsize::new(0),
            released: watch::Sender::new(false),
        });
        let task = tokio::spawn(serve(listener, name.to_owned(), state.clone()));
        Self {
            name: name.to_owned(),
            addr,
            state,
            task,
        }
    }

    /// Its Service (named after it) and EndpointSlice.
    pub fn objects(&self) -> Vec<Value> {
        objects_at(&self.name, self.addr)
    }

    /// How many requests reached it.
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(Ordering::SeqCst)
    }

    /// How many `/hold` requests it is holding now.
    pub fn holding(&self) -> usize {
        self.state.holding.load(Ordering::SeqCst)
    }

    /// Waits (within [`HOLD_LIMIT`]) until it holds `n` requests; panics otherwise.
    pub async fn wait_holding(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + HOLD_LIMIT;
        while self.holding() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the backend holds {} requests, not {n}, after {HOLD_LIMIT:?}",
                self.holding()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answers every held request, and from now on `/hold` requests at once.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }
}

async fn serve(listener: TcpListener, name: String, state: Arc<State>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, state) = (name.clone(), state.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, name.clone(), state.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.arrived.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    if path.starts_with("/hold") {
        let mut released = state.released.subscribe();
        state.holding.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(HOLD_LIMIT, released.wait_for(|r| *r)).await;
        state.holding.fetch_sub(1, Ordering::SeqCst);
    }
    let bytes = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|n| n.parse::<usize>().ok())
    });
    let (body, content_type) = match bytes {
        Some(n) => (pattern(n), "application/octet-stream"),
        None => (
            json!({ "backend": &*name, "path": path })
                .to_string()
                .into_bytes(),
            "application/json",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    Ok(resp)
}

//! HTTP/1.1 upstream connections: one request at a time per connection, kept alive between
//! requests.
//!
//! Each endpoint keeps a stack of idle connections; a request takes the most recently used
//! (warmest) one or opens a new one, and its response body puts the connection back the moment
//! the body's last byte has been read, so the next request can reuse it without a task or a
//! timer of its own. A response that is not read to the end takes its connection with it
//! (HTTP/1.1 cannot resume a half-read message). Idle connections older than [`IDLE_TIMEOUT`]
//! are closed, by the requests that pass by and by a sweeper for endpoints nobody asks for any
//! more. A request that failed on a reused connection before any of it was written (the
//! upstream had closed that idle connection) is retried once per stale connection, as
//! browsers and hyper-util's pool do.
//!
//! This module owns connection reuse only; errors become `UpstreamError`s in `upstream`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::Instant;

use super::{PerEndpoint, UpstreamBody, dial};

/// How long an unused connection is kept, as hyper-util's pool and nginx's
/// `keepalive_timeout` (60 s) do.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request could not be sent.
pub enum SendError {
    /// No connection: the request was not sent and comes back.
    Connect(super::ConnectError, Box<Request<UpstreamBody>>),
    Protocol(hyper::Error),
}

impl std::fmt::Debug for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e, _) => f.debug_tuple("Connect").field(&e.cause).finish(),
            SendError::Protocol(e) => f.debug_tuple("Protocol").field(e).finish(),
        }
    }
}

type Sender = http1::SendRequest<UpstreamBody>;

struct IdleConn {
    sender: Sender,
    since: Instant,
}

/// The idle connections of one endpoint, oldest first.
#[derive(Default)]
pub struct Endpoint {
    idle: Mutex<VecDeque<IdleConn>>,
}

impl Endpoint {
    /// The warmest idle connection that is still usable. Expiry is left to [`Endpoint::put`]
    /// and the sweeper: the warmest connection is the one least likely to have expired, and
    /// a request spared a clock read.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop_back() {
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut idle, now);
        idle.push_back(IdleConn { sender, since: now });
    }
}

fn expire(idle: &mut VecDeque<IdleConn>, now: Instant) {
    while idle
        .front()
        .is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT || c.sender.is_closed())
    {
        idle.pop_front();
    }
}

/// A connection lent to one request, given back to its endpoint when the response body has
/// been read to the end (see [`Lent::give_back`]), closed when dropped before that.
pub struct Lent {
    sender: Option<Sender>,
    endpoint: Arc<Endpoint>,
}

impl Lent {
    /// Returns the connection to the idle stack. When the connection is still finishing the
    /// exchange (the upstream answered before reading the whole request body), a task waits
    /// for it, so the next request never queues behind this one's upload.
    pub fn give_back(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_ready() {
            self.endpoint.put(sender);
        } else if !sender.is_closed() {
            let endpoint = self.endpoint.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    endpoint.put(sender);
                }
            });
        }
    }
}

/// The HTTP/1.1 connections of one transport (plain, or TLS with ALPN http/1.1) to every
/// endpoint.
pub struct H1Pool {
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    endpoints: PerEndpoint<Endpoint>,
    sweeper: OnceLock<()>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl H1Pool {
    pub fn new(tls: Option<tokio_rustls::TlsConnector>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            endpoints: PerEndpoint::default(),
            sweeper: OnceLock::new(),
        }
    }

    /// Sends `req` (origin-form URI) to `addr`, on an idle connection when there is one.
    /// `authority` fills `Host` when the request has none.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        addr: SocketAddr,
        authority: &http::uri::Authority,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        if !req.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(HOST, host);
        }
        let endpoint = self.endpoints.get(addr);
        loop {
            let (mut sender, reused) = match endpoint.take() {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, maybe TLS, the handshake) is rare and its state
                // large; inline, it would grow every request's future.
                None => match Box::pin(self.connect(addr)).await {
                    Ok(sender) => (sender, false),
                    Err(cause) => return Err(SendError::Connect(cause, Box::new(req))),
                },
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lent = Lent {
                        sender: Some(sender),
                        endpoint,
                    };
                    return Ok((resp, lent));
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was written: the idle connection had been closed under us.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Protocol(e.into_error())),
                },
            }
        }
    }

    /// A new connection; `Err` says why not.
    async fn connect(self: &Arc<Self>, addr: SocketAddr) -> Result<Sender, super::ConnectError> {
        self.sweeper.get_or_init(|| {
            tokio::spawn(sweep(Arc::downgrade(self)));
        });
        let connected = async {
            let io = dial(addr, self.tls.as_ref()).await?;
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1: {e}"))?;
            tokio::spawn(conn);
            Ok(sender)
        };
        match tokio::time::timeout(self.connect_timeout, connected).await {
            Ok(connected) => connected.map_err(super::ConnectError::failed),
            Err(_) => Err(super::ConnectError::timed_out(self.connect_timeout)),
        }
    }
}

/// Closes expired idle connections of every endpoint, also of those no request reaches any
/// more, and forgets endpoints with nothing left; ends with the pool.
async fn sweep(pool: Weak<H1Pool>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        pool.endpoints.retain(|endpoint| {
            let mut idle = endpoint.idle.lock().unwrap_or_else(|e| e.into_inner());
            expire(&mut idle, now);
            // Still lent out somewhere (the Arc is shared) or still has idle connections.
            !idle.is_empty() || Arc::strong_count(endpoint) > 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    /// An HTTP/1.1 server on loopback counting the connections it accepts; with `close_after`
    /// it answers that many requests per connection and then closes it, as an upstream with
    /// a short keep-alive does.
    async fn server(close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let body = req.collect().await?.to_bytes();
                            let mut resp = Response::new(Full::new(body));
                            if close_after == Some(n) {
                                resp.headers_mut()
                                    .insert("connection", HeaderValue::from_static("close"));
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// Proxies one request through `pool` the way the proxy does: a real client connection
    /// whose body becomes the upstream request body (`Incoming` cannot be made otherwise).
    async fn through(
        pool: &Arc<H1Pool>,
        upstream: SocketAddr,
        body: &'static str,
        read_all: bool,
    ) -> Bytes {
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let pool = pool.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = front.accept().await.expect("accept");
            let tx = std::sync::Mutex::new(Some(tx));
            let svc = service_fn(move |req: Request<Incoming>| {
                let pool = pool.clone();
                let tx = tx.lock().expect("lock").take();
                async move {
                    let (parts, body) = req.into_parts();
                    let upload = crate::body::Upload::new(
                        crate::body::Idle::new(
                            body,
                            Duration::from_secs(5),
                            crate::body::OnIdle::Fail,
                        ),
                        0,
                        None,
                    );
                    let mut up = Request::from_parts(parts, crate::body::Hooked::new(upload, None));
                    *up.uri_mut() = http::Uri::from_static("/");
                    let authority = http::uri::Authority::from_static("upstream.test");
                    let (resp, mut lent) = pool
                        .send(up, upstream, &authority)
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    let bytes = if read_all {
                        let b = resp
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| e.to_string())?;
                        lent.give_back();
                        b.to_bytes()
                    } else {
                        Bytes::new()
                    };
                    if let Some(tx) = tx {
                        let _ = tx.send(bytes.clone());
                    }
                    Ok::<_, String>(Response::new(Empty::<Bytes>::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        let tcp = TcpStream::connect(front_addr).await.expect("connect");
        let (mut send, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post("/")
            .header(HOST, "front.test")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert!(resp.status().is_success(), "{resp:?}");
        rx.await.expect("the proxy answered")
    }

    #[tokio::test]
    async fn reuses_a_connection_once_its_response_was_read() {
        let (addr, accepted) = server(None).await;
        let pool = Arc::new(H1Pool::new(None, Duration::from_secs(2)));
        for n in 0..5 {
            let got = through(&pool, addr, "hello", true).await;
            assert_eq!(got, "hello", "request {n}");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five requests"
        );
    }

    #[tokio::test]
    async fn a_response_not_read_to_the_end_takes_its_connection_along() {
        let (addr, accepted) = server(None).await;
        let pool = Arc::new(H1Pool::new(None, Duration::from_secs(2)));
        through(&pool, addr, "first", false).await;
        assert_eq!(through(&pool, addr, "second", true).await, "second");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_upstream_closes_are_not_reused() {
        // Every connection serves one request and closes (`Connection: close`): the next
        // request must not be sent on it, and must succeed on a new one.
        let (addr, accepted) = server(Some(1)).await;
        let pool = Arc::new(H1Pool::new(None, Duration::from_secs(2)));
        for n in 0..4 {
            assert_eq!(
                through(&pool, addr, "again", true).await,
                "again",
                "request {n}"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn connect_failures_are_named_as_such() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = Arc::new(H1Pool::new(None, Duration::from_secs(2)));
        let err = pool.connect(addr).await.expect_err("nothing listens");
        assert!(
            err.cause.contains("refused") && !err.timed_out,
            "{}",
            err.cause
        );
    }
}

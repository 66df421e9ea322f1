//! Phase 1, accept and TLS: accepting connections within limits, PROXY protocol, TLS
//! handshakes, and HTTP/1.1 + HTTP/2 serving with nginx's connection timeouts.
//!
//! Both listeners speak HTTP/1.1 and HTTP/2 (h2c with prior knowledge on the plain one, ALPN on
//! the TLS one). Every connection is bounded: at most `--max-connections` at once (beyond that
//! new ones wait in the kernel's accept queue rather than being accepted and starved), a
//! complete request head within `--client-header-timeout` of the connection's start, and no
//! more than `--keepalive-timeout` idle between requests (HTTP/2 connections then end with
//! GOAWAY). On shutdown the listeners stop accepting and open connections finish gracefully.
//! This module decides nothing about requests: it hands each one to [`Proxy::handle`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::task::TaskTracker;

use super::{Conn, Proxy, ProxyBody, TlsFacts, proxy_protocol};

/// A slow or silent client must not hold a handshake slot forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection limits and timeouts, with nginx's names and defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    /// From accept (or the end of the TLS handshake) to a complete request head; also bounds
    /// telling HTTP/1 from HTTP/2, the HTTP/2 preface and a PROXY protocol header.
    pub client_header_timeout: Duration,
    /// Longest idle time between requests on a kept-alive connection.
    pub keepalive_timeout: Duration,
    /// Largest request head in bytes (HTTP/1.1: 431 beyond it; HTTP/2: the header list size).
    pub max_header_size: usize,
    /// HTTP/2 streams a client may have open at once (nginx `http2_max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Connections served at once over both listeners.
    pub max_connections: usize,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            client_header_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            max_header_size: 32 << 10,
            max_concurrent_streams: 128,
            max_connections: 16384,
            proxy_protocol: false,
        }
    }
}

/// HTTP/2 flow-control windows towards clients: what one connection, and one stream, may have
/// in flight unread, so what a client whose upstream stalls can park in the proxy. Chosen by
/// measurement (`bench/h2-windows/`): 2 MiB per connection parks ~0.7 MiB per stalled
/// single-stream client (8 MiB parked ~2.1 MiB) while one stream still uploads ~9 MiB/s at
/// 50 ms RTT; smaller windows saved little more memory and cut that 2-8 times, and hyper's
/// adaptive window grows to 16 MiB under a client's control.
pub const H2_CONNECTION_WINDOW: u32 = 2 << 20;
pub const H2_STREAM_WINDOW: u32 = 512 << 10;

/// What both listeners share.
#[derive(Clone)]
pub struct Shared {
    pub proxy: Arc<Proxy>,
    pub limits: Arc<Limits>,
    /// One permit per open connection, over both listeners.
    pub slots: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    pub tracker: TaskTracker,
}

impl Shared {
    pub fn new(
        proxy: Arc<Proxy>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            proxy,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits: Arc::new(limits),
            shutdown,
            tracker,
        }
    }
}

/// The HTTP servers: one that tells HTTP/1 from HTTP/2 by the first bytes (plain connections,
/// TLS without ALPN or with `http/1.1`), and an HTTP/2-only one for TLS connections that
/// negotiated `h2`, so a bad preface there is an HTTP/2 error (GOAWAY), not an HTTP/1.1 400.
struct Servers {
    auto: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

/// The two listeners: plain HTTP (HTTP/1.1 and h2c), and TLS.
pub struct Listeners {
    pub http: TcpListener,
    pub https: TcpListener,
    pub tls: Arc<TlsSetup>,
}

/// How a TLS handshake is configured: by the ClientHello's SNI, a host whose Ingress asks for
/// client certificates gets a config that requests one; every other handshake the default.
pub struct TlsSetup {
    /// No client certificates.
    pub default: Arc<rustls::ServerConfig>,
    /// The certificate resolver every config shares (the current generation's certificates).
    pub resolver: Arc<dyn rustls::server::ResolvesServerCert>,
}

/// Serves both listeners until shutdown flips; open connections are left to the tracker.
///
/// One loop accepts for both, so one free slot is all it waits with: at the limit neither
/// listener accepts, and a freed slot goes to whichever has a connection waiting.
pub async fn serve(listeners: Listeners, shared: Shared) {
    let servers = Arc::new(Servers {
        auto: http_builder(&shared.limits),
        h2: http_builder(&shared.limits).http2_only(),
    });
    let port = |l: &TcpListener| l.local_addr().map_or(0, |a| a.port());
    let (http_port, https_port) = (port(&listeners.http), port(&listeners.https));
    let mut shutdown = shared.shutdown.clone();
    loop {
        // A slot first: at the limit, connections wait in the kernel's queue, unaccepted.
        let permit = tokio::select! {
            permit = shared.slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (accepted, tls, port) = tokio::select! {
            a = listeners.http.accept() => (a, None, http_port),
            a = listeners.https.accept() => (a, Some(listeners.tls.clone()), https_port),
            _ = shutdown.changed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (servers, shared2) = (servers.clone(), shared.clone());
        shared.tracker.spawn(async move {
            accept(stream, remote, port, tls, &servers, shared2, permit).await;
        });
    }
}

/// The HTTP server settings both listeners use.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_header_timeout)
        .max_buf_size(limits.max_header_size.max(8192));
    // Extended CONNECT (RFC 8441) lets HTTP/2 clients open WebSockets on a shared connection.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW);
    builder
}

/// One accepted connection: its PROXY protocol header, its TLS handshake, then HTTP.
async fn accept(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    port: u16,
    tls: Option<Arc<TlsSetup>>,
    servers: &Servers,
    shared: Shared,
    permit: OwnedSemaphorePermit,
) {
    let mut remote = peer;
    if shared.limits.proxy_protocol {
        let within = shared.limits.client_header_timeout;
        match tokio::time::timeout(within, proxy_protocol::read(&mut stream)).await {
            Ok(Ok(Some(source))) => remote = source,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad PROXY protocol header");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY protocol header in time");
                return;
            }
        }
    }
    let mut conn = Conn::new(remote, tls.is_some(), port);
    conn.slot = Some(Arc::new(permit));
    let Some(setup) = tls else {
        let this = ConnShared::new(&shared, conn);
        let service = ConnService(this.clone());
        let connection = servers
            .auto
            .serve_connection_with_upgrades(Closing::new(stream), service);
        return drive(connection, |c| c.graceful_shutdown(), &this, shared).await;
    };
    let stats = &shared.proxy.tls;
    let handshake = handshake(stream, &setup, &shared.proxy);
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok((stream, facts))) => {
            stats.handshakes.fetch_add(1, Ordering::Relaxed);
            conn.tls = Some(Box::new(facts));
            let this = ConnShared::new(&shared, conn);
            let service = ConnService(this.clone());
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                let connection = servers.h2.serve_connection(Closing::h2(stream), service);
                drive(connection, |c| c.graceful_shutdown(), &this, shared).await
            } else {
                let io = Closing::new(stream);
                let connection = servers.auto.serve_connection_with_upgrades(io, service);
                drive(connection, |c| c.graceful_shutdown(), &this, shared).await
            }
        }
        Ok(Err(e)) => {
            stats.failed_error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            stats.failed_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "TLS handshake timed out");
        }
    }
}

/// The TLS handshake, configured by the ClientHello's SNI; what it established about the
/// client comes back with the stream.
async fn handshake(
    stream: TcpStream,
    setup: &TlsSetup,
    proxy: &Proxy,
) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsFacts)> {
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = acceptor.await?;
    let sni = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let client_auth = proxy.current().certs.client_auth(sni.as_deref());
    let config = match &client_auth {
        Some(host) => host.server_config(&setup.resolver),
        None => setup.default.clone(),
    };
    let stream = start.into_stream(config).await?;
    // Judged once per connection: every request on it carries the same certificate.
    let client = client_auth
        .as_ref()
        .map(|host| host.auth.verify(stream.get_ref().1.peer_certificates()));
    let facts = TlsFacts {
        sni: sni.map(Arc::from),
        client,
        client_auth: client_auth.map(|host| host.auth.clone()),
    };
    Ok((stream, facts))
}

/// What a connection's requests share: the proxy, the connection's facts, its activity.
struct ConnShared {
    proxy: Arc<Proxy>,
    conn: Conn,
    activity: Activity,
}

impl ConnShared {
    fn new(shared: &Shared, conn: Conn) -> Arc<Self> {
        Arc::new(ConnShared {
            proxy: shared.proxy.clone(),
            conn,
            activity: Activity::new(),
        })
    }
}

/// The service for one connection's requests. One reference count per request for
/// everything the connection's requests share.
#[derive(Clone)]
struct ConnService(Arc<ConnShared>);

type Answer = Result<http::Response<Tracked>, std::convert::Infallible>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnService {
    type Response = http::Response<Tracked>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.0.clone();
        // Boxed once here: hyper moves the service future several times (into its dispatcher,
        // and on HTTP/2 into a spawned task per stream), and `handle`'s state machine is large
        // enough that those moves were the biggest memcpy in the profile.
        Box::pin(async move {
            // Ends the request when dropped: with the response body, or here if the client
            // gives up (an HTTP/2 reset) before the answer is ready.
            let in_flight = InFlight::begin(this);
            let conn = &in_flight.0;
            let resp = conn.proxy.handle(req, &conn.conn).await?;
            Ok(resp.map(|inner| Tracked { inner, in_flight }))
        })
    }
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Drives `connection` to its end: closes it (`graceful`: GOAWAY on HTTP/2, a close on an idle
/// HTTP/1.1 connection) when idle too long or when the proxy shuts down.
async fn drive<C>(connection: C, graceful: fn(Pin<&mut C>), this: &ConnShared, shared: Shared)
where
    C: std::future::Future<Output = ConnResult>,
{
    let limits = shared.limits.clone();
    tokio::pin!(connection);
    let mut shutdown = shared.shutdown.clone();
    // Timers fire at most once per keep-alive period; each looks at when the connection was
    // last busy, so an idle connection closes on time without a wake-up per request.
    let period = limits.keepalive_timeout.min(limits.client_header_timeout);
    let mut check = this.activity.start + period;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = tokio::time::sleep_until(check) => match this.activity.idle_until(&limits) {
                Some(until) if until > Instant::now() => check = until,
                Some(_) => {
                    graceful(connection.as_mut());
                    let bound = limits.client_header_timeout;
                    break tokio::time::timeout(bound, connection.as_mut())
                        .await
                        .unwrap_or(Ok(()));
                }
                None => check = Instant::now() + period,
            },
            _ = shutdown.changed() => {
                graceful(connection.as_mut());
                break connection.await;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(remote = %this.conn.remote, error = %e, "connection ended with an error");
    }
}

/// When a connection was last busy, so it can be closed when idle too long.
struct Activity {
    start: Instant,
    /// Requests whose response has not ended.
    in_flight: AtomicU32,
    /// Milliseconds from `start` to the end of the last response; `u64::MAX` before the first
    /// request.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            last: AtomicU64::new(u64::MAX),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(ms, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Release);
    }

    /// When the connection's idle time runs out, or `None` while a request is under way.
    fn idle_until(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.last.load(Ordering::Relaxed) {
            u64::MAX => self.start + limits.client_header_timeout,
            ms => self.start + Duration::from_millis(ms) + limits.keepalive_timeout,
        })
    }
}

/// A request under way on its connection, from its arrival to the end of its response.
struct InFlight(Arc<ConnShared>);

impl InFlight {
    fn begin(conn: Arc<ConnShared>) -> Self {
        conn.activity.begin();
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

/// A response body that keeps its request in flight (and the connection's slot taken) until
/// it is done or dropped.
pub struct Tracked {
    inner: ProxyBody,
    #[allow(dead_code, reason = "held for its Drop")]
    in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's IO, shut down cleanly however the connection ends: when hyper drops it
/// without shutting it down (a protocol error, an idle close), a task sends the TLS
/// close_notify and the TCP FIN, so a client can tell an orderly end from a cut connection.
///
/// On a TLS connection that negotiated `h2` it also watches the client's first 24 bytes: the
/// h2 crate refuses a bad preface without telling the client why, so here a bad preface ends
/// with GOAWAY PROTOCOL_ERROR before the close (RFC 9113 section 3.4).
struct Closing<IO: AsyncWrite + Unpin + Send + 'static> {
    io: Option<IO>,
    shut: bool,
    /// Preface bytes checked so far, while checking.
    preface: Option<usize>,
    /// Written before the close when the connection ends abruptly.
    farewell: &'static [u8],
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// GOAWAY, last stream 0, PROTOCOL_ERROR.
const H2_GOAWAY_PROTOCOL_ERROR: &[u8] = &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

impl<IO: AsyncWrite + Unpin + Send + 'static> Closing<IO> {
    fn new(io: IO) -> TokioIo<Self> {
        TokioIo::new(Self {
            io: Some(io),
            shut: false,
            preface: None,
            farewell: &[],
        })
    }

    /// [`Closing::new`] for a connection that must start with the HTTP/2 preface.
    fn h2(io: IO) -> TokioIo<Self> {
        let mut this = Self::new(io);
        this.inner_mut().preface = Some(0);
        this
    }

    fn io(&mut self) -> &mut IO {
        self.io.as_mut().expect("present until dropped")
    }

    /// Checks newly read bytes against the preface; `false` on a mismatch.
    fn preface_ok(&mut self, new: &[u8]) -> bool {
        let Some(seen) = self.preface else {
            return true;
        };
        let take = new.len().min(H2_PREFACE.len() - seen);
        if new[..take] != H2_PREFACE[seen..seen + take] {
            self.farewell = H2_GOAWAY_PROTOCOL_ERROR;
            return false;
        }
        self.preface = Some(seen + take).filter(|&n| n < H2_PREFACE.len());
        true
    }
}

impl<IO: AsyncWrite + Unpin + Send + 'static> Drop for Closing<IO> {
    fn drop(&mut self) {
        if let Some(mut io) = self.io.take()
            && !self.shut
        {
            let farewell = self.farewell;
            // Dropped outside the runtime (at its shutdown): the socket just closes.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            // Bounded: a peer that reads nothing cannot keep the task.
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = io.write_all(farewell).await;
                    io.shutdown().await
                })
                .await;
            });
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Closing<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(this.io()).poll_read(cx, buf))?;
        if !this.preface_ok(&buf.filled()[before..]) {
            let bad = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP/2 preface");
            return Poll::Ready(Err(bad));
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Closing<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.get_mut().io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.get_mut().io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().io()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(this.io()).poll_shutdown(cx);
        if done.is_ready() {
            this.shut = true;
        }
        done
    }
}

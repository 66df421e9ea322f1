//! WebSocket tunnels: an HTTP/1.1 Upgrade or an RFC 8441 extended CONNECT (WebSocket over
//! HTTP/2) from the client, bridged to an HTTP/1.1 Upgrade to the backend, then bytes copied
//! both ways. The backend connection is TLS when the route's backend protocol is HTTPS.
//!
//! The handshake is forwarded (Sec-WebSocket-* headers, subprotocols, extensions) and the
//! backend's answer decides: a 101 opens the tunnel, anything else is returned as is. On
//! routes whose plugins hook messages, `messages` relays the tunnel instead (and no extension
//! is negotiated). Otherwise frames are never parsed: close frames, pings and data are bytes. Copying reads into a buffer on the
//! stack of the poll, so an idle tunnel holds no buffer; only bytes a slow peer has not taken
//! yet are kept on the heap. Each direction has its own idle timeout (the route's read timeout
//! for bytes from the backend, its send timeout for bytes from the client). A tunnel holds no
//! reference to the configuration, so config swaps never touch it.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::InnerBody as ProxyBody;
use crate::body::{Idle, OnIdle};
use crate::metrics::TunnelStats;
use crate::route::Endpoint;

/// Which kind of WebSocket request this is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET` with `Connection: upgrade` and `Upgrade: websocket`.
    Http1,
    /// `CONNECT` with `:protocol websocket` (RFC 8441).
    Http2,
}

pub fn kind(req: &http::request::Parts) -> Option<Kind> {
    if req.method == Method::CONNECT {
        let protocol = req.extensions.get::<hyper::ext::Protocol>()?;
        return protocol
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then_some(Kind::Http2);
    }
    let headers = &req.headers;
    let upgrade = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let connection = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (upgrade && connection && req.method == Method::GET).then_some(Kind::Http1)
}

/// Per-tunnel settings from the route's policy.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest silence from the backend.
    pub read: Duration,
    /// Longest silence from the client.
    pub send: Duration,
}

/// Where a tunnel goes and how.
#[derive(Clone, Copy)]
pub struct Backend<'a> {
    pub endpoint: &'a Endpoint,
    /// Set for HTTPS backends.
    pub tls: Option<&'a tokio_rustls::TlsConnector>,
    pub timeouts: Timeouts,
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot connect to upstream {endpoint}: {cause}")]
    Connect { endpoint: String, cause: String },
    #[error("upstream {endpoint} failed the WebSocket handshake: {cause}")]
    Handshake { endpoint: String, cause: String },
    #[error("upstream {endpoint} did not answer the WebSocket handshake within {after:?}")]
    Timeout { endpoint: String, after: Duration },
}

/// Forwards the handshake and, on a 101 from the backend, answers the client and spawns the
/// tunnel. `headers` are the request headers already prepared for the upstream (hop-by-hop
/// removed, forwarding headers set).
/// What a tunnel keeps taken while it lasts: the client connection's slot
/// (`--max-connections`) and the request's `limit-connections` slot.
pub struct Held {
    pub connection: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    pub request: Option<crate::access::limit::Slot>,
}

/// The route's message hooks and the request they see, when it has any: the tunnel then
/// relays messages through them instead of copying bytes.
pub struct Hooked {
    pub hooks: crate::plugin::HookChain,
    pub request: Option<Box<crate::plugin::HookRequest>>,
}

pub async fn open(
    mut req: Request<Incoming>,
    kind: Kind,
    backend: Backend<'_>,
    mut headers: HeaderMap,
    stats: Arc<TunnelStats>,
    slot: Held,
    hooked: Option<Hooked>,
) -> Result<Response<ProxyBody>, TunnelError> {
    let Backend {
        endpoint,
        tls,
        timeouts,
    } = backend;
    let endpoint_name = || endpoint.addr.to_string();
    let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(endpoint.addr))
        .await
        .map_err(|_| TunnelError::Connect {
            endpoint: endpoint_name(),
            cause: format!("timed out after {:?}", timeouts.connect),
        })?
        .map_err(|e| TunnelError::Connect {
            endpoint: endpoint_name(),
            cause: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    let handshake_failed = |e: String| TunnelError::Handshake {
        endpoint: endpoint_name(),
        cause: e,
    };
    let mut sender = match tls {
        None => handshake(stream).await,
        Some(tls) => {
            // Pods are addressed by IP, as ingress-nginx does (no SNI name).
            let name = rustls::pki_types::ServerName::IpAddress(endpoint.addr.ip().into());
            let stream = tokio::time::timeout(timeouts.connect, tls.connect(name, stream))
                .await
                .map_err(|_| {
                    handshake_failed(format!("TLS timed out after {:?}", timeouts.connect))
                })?
                .map_err(|e| handshake_failed(format!("TLS: {e}")))?;
            handshake(stream).await
        }
    }
    .map_err(|e| handshake_failed(e.to_string()))?;

    // The backend always gets an HTTP/1.1 Upgrade; HTTP/2 clients send no key (RFC 8441), so
    // make one.
    if kind == Kind::Http2 || !headers.contains_key(SEC_WEBSOCKET_KEY) {
        headers.insert(SEC_WEBSOCKET_KEY, new_key());
    }
    headers
        .entry(SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if hooked.is_some() {
        // The proxy reads every payload: no compression may be negotiated.
        headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream_req = Request::new(Empty::<Bytes>::new());
    *upstream_req.method_mut() = Method::GET;
    *upstream_req.uri_mut() = path.parse().unwrap_or_default();
    *upstream_req.version_mut() = Version::HTTP_11;
    *upstream_req.headers_mut() = headers;

    // The backend's answer is bounded like any upstream response head (proxy-read-timeout).
    let mut resp = tokio::time::timeout(timeouts.read, sender.send_request(upstream_req))
        .await
        .map_err(|_| TunnelError::Timeout {
            endpoint: endpoint_name(),
            after: timeouts.read,
        })?
        .map_err(|e| TunnelError::Handshake {
            endpoint: endpoint_name(),
            cause: e.to_string(),
        })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused (auth, wrong path...): its answer is the client's answer.
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            Either::Left(crate::body::Hooked::new(
                Idle::new(
                    crate::upstream::ResponseBody::plain(body),
                    timeouts.read,
                    OnIdle::Fail,
                ),
                None,
            )),
        ));
    }

    let backend_upgrade = hyper::upgrade::on(&mut resp);
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut answer = Response::new(Either::Right(Full::new(Bytes::new())));
    let out = answer.headers_mut();
    for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
        if let Some(v) = resp.headers().get(name) {
            out.insert(name, v.clone());
        }
    }
    match kind {
        Kind::Http1 => {
            if let Some(accept) = resp.headers().get("sec-websocket-accept")
                && req.headers().contains_key(SEC_WEBSOCKET_KEY)
            {
                // The backend answered the client's own key, which was forwarded unchanged.
                out.insert("sec-websocket-accept", accept.clone());
            }
            out.insert(UPGRADE, HeaderValue::from_static("websocket"));
            out.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        }
        Kind::Http2 => *answer.status_mut() = StatusCode::OK,
    }

    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.opened.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        // The client's connection slot and request slot stay taken while the tunnel lasts.
        let _slot = slot;
        let ended = match (client_upgrade.await, backend_upgrade.await, hooked) {
            (Ok(client), Ok(backend), None) => {
                Tunnel::new(
                    TokioIo::new(client),
                    TokioIo::new(backend),
                    timeouts,
                    &stats,
                )
                .await
            }
            (Ok(client), Ok(backend), Some(h)) => {
                let (client, backend) = (TokioIo::new(client), TokioIo::new(backend));
                super::messages::relay(client, backend, h.hooks, h.request, timeouts).await
            }
            _ => End::Error,
        };
        stats.open.fetch_sub(1, Ordering::Relaxed);
        let counter = match ended {
            End::Closed => &stats.closed_normally,
            End::Idle => &stats.closed_idle,
            End::Error => &stats.closed_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(?ended, "WebSocket tunnel ended");
    });
    Ok(answer)
}

/// An HTTP/1.1 client connection that allows upgrades, driven by its own task.
async fn handshake<IO>(
    io: IO,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

fn new_key() -> HeaderValue {
    let mut nonce = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::try_from(key).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed (each direction reached end of stream).
    Closed,
    /// A direction was silent longer than its timeout.
    Idle,
    /// A read or write failed (reset, broken pipe...).
    Error,
}

/// One direction of a tunnel.
#[derive(Default)]
struct Pump {
    /// Bytes read but not yet accepted by the writer (empty almost always).
    pending: Vec<u8>,
    sent: usize,
    flush: bool,
    eof: bool,
    done: bool,
}

/// How many reads one poll may do before yielding, so a busy tunnel cannot starve others.
const READS_PER_POLL: usize = 16;
/// The stack buffer one read fills.
const CHUNK: usize = 16 * 1024;

impl Pump {
    /// Moves bytes from `r` to `w` until `r` ends (then shuts `w` down) or a side blocks.
    /// `Ready(Ok(()))` means this direction is finished.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        activity: &mut Instant,
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..READS_PER_POLL {
            while self.sent < self.pending.len() {
                match w.as_mut().poll_write(cx, &self.pending[self.sent..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => self.sent += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                // Give the memory back: a tunnel that was slow once should not keep it idle.
                self.pending = Vec::new();
                self.sent = 0;
                self.flush = true;
            }
            if self.flush {
                match w.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flush = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof {
                return match w.as_mut().poll_shutdown(cx) {
                    Poll::Ready(_) => {
                        // A peer that already went away cannot be shut down politely; the
                        // direction is finished either way.
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            match r.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            *activity = Instant::now();
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            let mut off = 0;
            while off < data.len() {
                match w.as_mut().poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if off < data.len() {
                self.pending.extend_from_slice(&data[off..]);
            } else {
                self.flush = true;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Both directions plus their idle timers.
struct Tunnel<'a, C, B> {
    client: C,
    backend: B,
    up: Pump,
    down: Pump,
    from_client: Instant,
    from_backend: Instant,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
    stats: &'a TunnelStats,
}

impl<'a, C, B> Tunnel<'a, C, B> {
    fn new(client: C, backend: B, timeouts: Timeouts, stats: &'a TunnelStats) -> Self {
        let now = Instant::now();
        let first = now + timeouts.read.min(timeouts.send);
        Self {
            client,
            backend,
            up: Pump::default(),
            down: Pump::default(),
            from_client: now,
            from_backend: now,
            timeouts,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            stats,
        }
    }
}

impl<C, B> Future for Tunnel<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        let up = this.up.poll(
            cx,
            Pin::new(&mut this.client),
            Pin::new(&mut this.backend),
            &mut this.from_client,
            &this.stats.bytes_from_client,
        );
        let down = this.down.poll(
            cx,
            Pin::new(&mut this.backend),
            Pin::new(&mut this.client),
            &mut this.from_backend,
            &this.stats.bytes_from_backend,
        );
        match (up, down) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(End::Error),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
            _ => {}
        }
        loop {
            // A finished direction is not idle: it waits for the other side's close.
            let due_up = (!this.up.done).then(|| this.from_client + this.timeouts.send);
            let due_down = (!this.down.done).then(|| this.from_backend + this.timeouts.read);
            let Some(due) = due_up.into_iter().chain(due_down).min() else {
                return Poll::Pending;
            };
            if Instant::now() >= due {
                return Poll::Ready(End::Idle);
            }
            // Activity only moves deadlines later, so the timer is re-armed when it fires
            // rather than on every byte; it is moved earlier only when a direction finishes.
            if this.sleep.deadline() > due {
                this.sleep.as_mut().reset(due);
            }
            match this.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => this.sleep.as_mut().reset(due),
            }
        }
    }
}

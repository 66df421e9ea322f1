//! Upstream connections and their failures.
//!
//! One pooled client per transport (HTTP/1.1, h2c, TLS + HTTP/1.1, TLS + h2) and connect
//! timeout, shared by every route and every configuration generation that uses it, so
//! keep-alive and multiplexed HTTP/2 connections survive config swaps. HTTP/1.1 pools are
//! [`H1Pool`]s (idle keep-alive connections per endpoint, returned when a response body ends);
//! HTTP/2 ones are [`H2Pool`]s (few multiplexed connections per endpoint, with a cap). Compile
//! picks the client for each route once;
//! requests never look one up. Upstream TLS does not verify certificates, as ingress-nginx
//! (`proxy-ssl-verify: off`) does by default: the upstream is addressed by pod IP.

pub mod h1pool;
pub mod h2pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::body::{Progress, Upload};
use crate::route::Endpoint;
use h1pool::H1Pool;
use h2pool::H2Pool;

/// HTTP/2 flow-control windows towards upstreams (responses from h2 and gRPC backends): what
/// one connection, and one stream, may have in flight unread. They bound the proxy's buffering
/// per upstream connection. (Client-facing windows are `proxy::listener`'s.)
pub const H2_CONNECTION_WINDOW: u32 = 8 << 20;
pub const H2_STREAM_WINDOW: u32 = 2 << 20;

/// Request bodies towards upstreams: the client's body, limited and timed, through the
/// route's body hooks if it has any.
pub type UpstreamBody = crate::body::Hooked<Upload<Incoming>, crate::plugin::BodyHooks>;

/// How bytes reach an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Http1,
    H2c,
    TlsHttp1,
    TlsH2,
}

impl Transport {
    pub fn scheme(self) -> http::uri::Scheme {
        match self {
            Transport::Http1 | Transport::H2c => http::uri::Scheme::HTTP,
            Transport::TlsHttp1 | Transport::TlsH2 => http::uri::Scheme::HTTPS,
        }
    }

    pub fn is_h2(self) -> bool {
        matches!(self, Transport::H2c | Transport::TlsH2)
    }
}

#[derive(Clone, Debug)]
enum Inner {
    H1(Arc<H1Pool>),
    H2(Arc<H2Pool>),
}

/// An upstream response body. It keeps its connection's place while it lasts: an HTTP/2 call
/// counted against its connection, an HTTP/1.1 connection lent until the body's end, when it
/// goes back to its pool.
pub struct ResponseBody {
    inner: Incoming,
    hold: Hold,
}

enum Hold {
    Nothing,
    H2(#[allow(dead_code, reason = "held for its Drop")] h2pool::InFlight),
    H1(h1pool::Lent),
}

impl ResponseBody {
    /// A body that holds no pooled connection (a WebSocket handshake's answer).
    pub fn plain(inner: Incoming) -> Self {
        Self {
            inner,
            hold: Hold::Nothing,
        }
    }

    fn h1(inner: Incoming, lent: h1pool::Lent) -> Self {
        let mut body = Self {
            inner,
            hold: Hold::H1(lent),
        };
        // Empty bodies (HEAD, 204, 304, `Content-Length: 0`) are never polled.
        body.give_back_at_end();
        body
    }

    fn give_back_at_end(&mut self) {
        if let Hold::H1(lent) = &mut self.hold
            && self.inner.is_end_stream()
        {
            lent.give_back();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            // The last frame of a body with a length: its reader may never poll again.
            Poll::Ready(Some(Ok(_))) => this.give_back_at_end(),
            Poll::Ready(None) => {
                if let Hold::H1(lent) = &mut this.hold {
                    lent.give_back();
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A pooled client for one transport.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Inner,
    pub transport: Transport,
}

/// A connection to an upstream endpoint, TLS or not, ready for an HTTP handshake.
pub(super) type Stream = TokioIo<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>>;

/// Opens TCP to `addr`, and TLS over it when `tls` is set; the error is the cause, for a
/// `Connect` failure. Both pools' connections start here.
pub(super) async fn dial(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Stream, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(TokioIo::new(Either::Left(tcp)));
    };
    // Pods are addressed by IP, as ingress-nginx does (no SNI name).
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(TokioIo::new(Either::Right(stream)))
}

/// A pool's state per endpoint, made on first use and shared by every request to it.
pub(super) struct PerEndpoint<E>(RwLock<HashMap<SocketAddr, Arc<E>>>);

impl<E> Default for PerEndpoint<E> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<E: Default> PerEndpoint<E> {
    pub(super) fn get(&self, addr: SocketAddr) -> Arc<E> {
        if let Some(e) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(&addr) {
            return e.clone();
        }
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Keeps the endpoints for which `keep` is true.
    pub(super) fn retain(&self, mut keep: impl FnMut(&Arc<E>) -> bool) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, e| keep(e));
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {endpoint} of {backend}: {cause}")]
    Connect {
        endpoint: String,
        backend: String,
        cause: String,
        /// The connect timeout ran out.
        timed_out: bool,
    },
    #[error("upstream {endpoint} of {backend} failed: {cause}")]
    Protocol {
        endpoint: String,
        backend: String,
        cause: String,
    },
    #[error("upstream {endpoint} of {backend} timed out after {after:?} waiting for a response")]
    Timeout {
        endpoint: String,
        backend: String,
        after: Duration,
    },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// How long a send may wait for the upstream's response head, with nginx's semantics.
#[derive(Clone, Debug)]
pub struct Wait {
    /// `proxy-connect-timeout`, while the connection is made.
    pub connect: Duration,
    /// `proxy-send-timeout`: the longest the upstream may leave a piece of the body untaken.
    pub send: Duration,
    /// `proxy-read-timeout`: the longest wait for the head once the whole request was sent.
    pub read: Duration,
    /// How far the request body got; `None` for a request without one.
    pub progress: Option<Arc<Progress>>,
    /// A hard deadline (a gRPC client's `grpc-timeout`).
    pub deadline: Option<tokio::time::Instant>,
}

impl Wait {
    /// When the wait ends as things stand; `None` while the client is the slow side.
    fn until(&self, started: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let ours = match &self.progress {
            None => Some(started + self.read),
            Some(p) => p.deadline(self.connect, self.send, self.read),
        };
        match (ours, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Client {
    /// Sends `req` and waits for the response head as `wait` allows. HTTP/1.1 requests carry
    /// an origin-form URI (`/path?query`), HTTP/2 ones an absolute one.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        endpoint: &Endpoint,
        backend: &str,
        wait: &Wait,
    ) -> Result<Response<ResponseBody>, Failed> {
        let sent = async {
            match &self.inner {
                Inner::H1(pool) => match pool.send(req, endpoint.addr, &endpoint.authority).await {
                    Ok((resp, lent)) => Ok(resp.map(|body| ResponseBody::h1(body, lent))),
                    Err(h1pool::SendError::Connect(cause, req)) => {
                        Err(SendError::Connect(cause, req))
                    }
                    Err(h1pool::SendError::Protocol(e)) => Err(SendError::Other(root_cause(&e))),
                },
                Inner::H2(pool) => match pool.send(req, endpoint.addr).await {
                    Ok((resp, in_flight)) => Ok(resp.map(|inner| ResponseBody {
                        inner,
                        hold: Hold::H2(in_flight),
                    })),
                    Err(h2pool::SendError::Connect(cause, req)) => {
                        Err(SendError::Connect(cause, req))
                    }
                    Err(h2pool::SendError::Protocol(e)) => Err(SendError::Other(root_cause(&e))),
                },
            }
        };
        let started = tokio::time::Instant::now();
        // Formatted only on failure: the success path allocates nothing here.
        let endpoint = || endpoint.addr.to_string();
        let timeout = || UpstreamError::Timeout {
            endpoint: endpoint(),
            backend: backend.to_owned(),
            after: started.elapsed(),
        };
        let result = match timed(sent, wait, started).await {
            Some(result) => result,
            None => return Err(timeout().into()),
        };
        match result {
            // A task polled late sees the upstream's answer and the expired timer together;
            // a hard deadline that has passed wins (a gRPC backend that enforced the same
            // forwarded deadline answers CANCELLED, which is not what the client asked for).
            Ok(_)
                if wait
                    .deadline
                    .is_some_and(|d| tokio::time::Instant::now() >= d) =>
            {
                Err(timeout().into())
            }
            Ok(resp) => Ok(resp),
            Err(e) => {
                let (endpoint, backend) = (endpoint(), backend.to_owned());
                Err(match e {
                    SendError::Connect(e, req) => Failed {
                        error: UpstreamError::Connect {
                            endpoint,
                            backend,
                            cause: e.cause,
                            timed_out: e.timed_out,
                        },
                        unsent: Some(req),
                    },
                    SendError::Other(cause) => UpstreamError::Protocol {
                        endpoint,
                        backend,
                        cause,
                    }
                    .into(),
                })
            }
        }
    }
}

/// Drives `sent` until it finishes or `wait` runs out (`None`). The deadline moves with the
/// request body's progress, so it is looked at again whenever its timer fires.
async fn timed<F: std::future::Future>(
    sent: F,
    wait: &Wait,
    started: tokio::time::Instant,
) -> Option<F::Output> {
    let mut sent = std::pin::pin!(sent);
    loop {
        // While the client is the slow side, its own body timeout ends the send; look again
        // later in case the body moves on.
        let until = wait.until(started);
        let check = until.unwrap_or_else(|| tokio::time::Instant::now() + wait.send.max(wait.read));
        match tokio::time::timeout_at(check, sent.as_mut()).await {
            Ok(out) => return Some(out),
            Err(_) => {
                if wait
                    .until(started)
                    .is_some_and(|d| d <= tokio::time::Instant::now())
                {
                    return None;
                }
            }
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub struct ConnectError {
    pub cause: String,
    /// The connect timeout ran out (nginx's `timeout`, not `error`, for retries).
    pub timed_out: bool,
}

impl ConnectError {
    fn failed(cause: String) -> Self {
        Self {
            cause,
            timed_out: false,
        }
    }

    fn timed_out(after: Duration) -> Self {
        Self {
            cause: format!("timed out after {after:?}"),
            timed_out: true,
        }
    }
}

/// A failed send, before it is named for the client.
enum SendError {
    Connect(ConnectError, Box<Request<UpstreamBody>>),
    Other(String),
}

/// A request the upstream did not answer: why, and the request itself when none of it was
/// sent (it could not connect), so it can go to another endpoint as it is.
pub struct Failed {
    pub error: UpstreamError,
    pub unsent: Option<Box<Request<UpstreamBody>>>,
}

impl From<UpstreamError> for Failed {
    fn from(error: UpstreamError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// Hands out shared clients and round-robin positions; used at compile time only.
#[derive(Debug, Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<(Transport, Duration), Client>>,
    /// Round-robin positions, kept across generations.
    pub rotations: crate::route::Rotations,
    /// Passive health by address, kept across generations.
    pub health: crate::route::HealthRegistry,
    /// EWMA load by address, kept across generations.
    pub loads: crate::route::PerAddress<crate::route::Load>,
}

impl Upstreams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn client(&self, transport: Transport, connect_timeout: Duration) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((transport, connect_timeout))
            .or_insert_with(|| build(transport, connect_timeout))
            .clone()
    }
}

fn build(transport: Transport, connect_timeout: Duration) -> Client {
    let inner = match transport {
        Transport::H2c => Inner::H2(Arc::new(H2Pool::new(None, connect_timeout))),
        Transport::TlsH2 => Inner::H2(Arc::new(H2Pool::new(
            Some(Arc::new(tls_config(b"h2"))),
            connect_timeout,
        ))),
        Transport::Http1 => Inner::H1(Arc::new(H1Pool::new(None, connect_timeout))),
        Transport::TlsHttp1 => Inner::H1(Arc::new(H1Pool::new(
            Some(http1_tls().clone()),
            connect_timeout,
        ))),
    };
    Client { inner, transport }
}

/// TLS to HTTPS backends speaking HTTP/1.1: pooled connections and WebSocket tunnels.
pub fn http1_tls() -> &'static tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR.get_or_init(|| Arc::new(tls_config(b"http/1.1")).into())
}

/// Upstream TLS offering one ALPN protocol, without certificate verification (see the module
/// doc).
pub(crate) fn tls_config(alpn: &[u8]) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(NoVerify))
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// Accepts any upstream certificate but still checks handshake signatures, so the connection is
/// encrypted to whoever holds the presented key.
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

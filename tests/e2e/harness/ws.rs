//! WebSocket pieces: the example echo backend (`wasmgress_examples::ws_echo`) or a test's own
//! WebSocket server on a loopback port with its Service and EndpointSlice, a tokio-tungstenite
//! client over any stream (plain TCP or a rustls stream to the TLS listener), an
//! `AsyncRead + AsyncWrite` view of an HTTP/2 stream for RFC 8441 tunnels, and the process
//! figures (resident memory, open-file limit) the load tests look at.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::manifests::{self, NS, Port, ServicePort};

/// The handshake response a client gets (the backend's 101, as the proxy relays it).
pub use tokio_tungstenite::tungstenite::handshake::client::Response;

/// Upper bound for a WebSocket handshake through the proxy.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

/// Any byte stream a WebSocket can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client WebSocket over some stream.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// A WebSocket backend on 127.0.0.1, stopped when dropped.
pub struct WsBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsBackend {
    /// The example echo server (`wasmgress_examples::ws_echo`).
    pub async fn echo() -> Self {
        Self::custom(wasmgress_examples::ws_echo::serve).await
    }

    /// A test's own server: `serve` gets the bound listener and runs until aborted.
    pub async fn custom<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a WebSocket backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend local address");
        let task = tokio::spawn(serve(listener));
        Self { addr, task }
    }

    /// A Service `service` in [`NS`] with port `port` (named `ws`) targeting this backend, and
    /// an EndpointSlice with the backend as its one ready endpoint.
    pub fn objects(&self, service: &str, port: u16) -> Vec<Value> {
        vec![
            manifests::service(
                NS,
                service,
                &[ServicePort {
                    name: Some("ws"),
                    port,
                    target: Port::Number(self.addr.port()),
                }],
            ),
            manifests::endpoint_slice(
                NS,
                service,
                &format!("{service}-slice"),
                &[(Some("ws"), self.addr.port())],
                &[manifests::ready(&self.addr.ip().to_string())],
            ),
        ]
    }
}

/// Client settings that allow the large messages the echo backend allows (64 MiB).
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// The opening handshake for `ws://host/path`-style `url` over `stream`, offering `protocols`
/// (in order), within [`HANDSHAKE_LIMIT`]. The error says what came back instead of a 101.
pub async fn handshake(
    stream: Box<dyn Io>,
    url: &str,
    protocols: &[&str],
) -> Result<(Ws, Response), String> {
    let mut request = url
        .into_client_request()
        .unwrap_or_else(|e| panic!("WebSocket request for {url}: {e}"));
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&protocols.join(", ")).expect("valid subprotocol list"),
        );
    }
    let shake = tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()));
    match tokio::time::timeout(HANDSHAKE_LIMIT, shake).await {
        Err(_) => Err(format!(
            "no handshake answer for {url} within {HANDSHAKE_LIMIT:?}"
        )),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            Err(format!(
                "{url}: expected 101 Switching Protocols, got {} {:?} body={body:?}",
                resp.status(),
                resp.headers()
            ))
        }
        Ok(Err(e)) => Err(format!("{url}: WebSocket handshake failed: {e}")),
        Ok(Ok(pair)) => Ok(pair),
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/{pid}/status:\n{status}"))
}

/// Makes sure this process (and so every child it starts from now on) may open at least
/// `wanted` files: raises the soft limit towards the hard one only when it is lower. Returns
/// the soft limit in force afterwards.
pub fn ensure_open_files(wanted: libc::rlim_t) -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(
        got,
        0,
        "getrlimit(RLIMIT_NOFILE): {}",
        io::Error::last_os_error()
    );
    if limit.rlim_cur >= wanted {
        return limit.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit we own; raising the soft limit up to the hard limit
    // needs no privilege.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    assert_eq!(
        set,
        0,
        "setrlimit(RLIMIT_NOFILE) to the hard limit {}: {}",
        limit.rlim_max,
        io::Error::last_os_error()
    );
    raised.rlim_cur
}

/// One HTTP/2 stream (an RFC 8441 tunnel) as a byte stream, the way hyper exposes upgraded
/// HTTP/2 streams: writes wait for flow-control capacity, reads give the capacity back.
pub struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    unread: Bytes,
}

impl H2Stream {
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
        }
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().expect("an I/O error")
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.unread = data;
                }
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        match ready!(self.send.poll_capacity(cx)) {
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Some(Err(e)) => Poll::Ready(Err(h2_io(e))),
            Some(Ok(0)) => {
                // No capacity after all; ask again when the peer's WINDOW_UPDATE arrives.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Ok(n)) => {
                let n = n.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_io)?;
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_io))
    }
}

//! The WebSocket client (tokio-tungstenite, plain HTTP/1.1 Upgrade on the proxy's plain port):
//! echo round trips on N connections for a round's duration, and sets of idle tunnels held
//! open while the proxy's memory is read. It runs on a current-thread runtime inside the
//! harness, which is pinned to the load CPU.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::load::{Run, percentile};

/// The most round trips one connection makes in a round, whatever its duration.
const MAX_ROUND_TRIPS_PER_CONN: u64 = 5_000_000;
/// How long one round trip, connect or handshake may take before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

/// Where the client connects: `addr`, with `Host: host` and the request path `path`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// A client with its own single-threaded runtime.
pub struct Client {
    rt: Runtime,
}

/// Open, idle tunnels; closed when dropped.
pub struct Tunnels {
    pub open: Vec<Ws>,
}

impl Client {
    pub fn new() -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the WebSocket client's runtime")?;
        Ok(Client { rt })
    }

    /// `conns` connections, each doing sequential echo round trips of a 32-byte binary
    /// message for `secs` seconds (at most [`MAX_ROUND_TRIPS_PER_CONN`] each).
    pub fn echo_round_trips(&self, t: &Target, conns: usize, secs: u64) -> Result<Run> {
        self.rt.block_on(async {
            let mut socks = Vec::with_capacity(conns);
            for _ in 0..conns {
                socks.push(connect(t).await?);
            }
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let mut set = tokio::task::JoinSet::new();
            for ws in socks {
                set.spawn(echo_loop(ws, deadline));
            }
            let (mut ok, mut errors, mut lat, mut detail) = (0u64, 0u64, Vec::new(), None);
            while let Some(r) = set.join_next().await {
                let (n, e, l) = r.context("a WebSocket client task panicked")?;
                ok += n;
                lat.extend(l);
                if let Some(e) = e {
                    errors += 1;
                    detail.get_or_insert(format!("a connection stopped: {e:#}"));
                }
            }
            let secs = start.elapsed().as_secs_f64();
            Ok(Run {
                ok,
                errors,
                secs,
                rps: ok as f64 / secs,
                p50_us: percentile(&mut lat, 50.0),
                p99_us: percentile(&mut lat, 99.0),
                error_detail: detail,
            })
        })
    }

    /// Opens `n` tunnels (each with one echo round trip, so the proxy's upstream side is up
    /// too) and returns them open and idle.
    pub fn open_idle(&self, t: &Target, n: usize) -> Result<Tunnels> {
        self.rt.block_on(async {
            let mut open = Vec::with_capacity(n);
            while open.len() < n {
                let batch = (n - open.len()).min(100);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..batch {
                    let t = t.clone();
                    set.spawn(async move {
                        let mut ws = connect(&t).await?;
                        round_trip(&mut ws, Bytes::from_static(b"hello")).await?;
                        anyhow::Ok(ws)
                    });
                }
                while let Some(r) = set.join_next().await {
                    open.push(r.context("a WebSocket client task panicked")??);
                }
            }
            Ok(Tunnels { open })
        })
    }

    /// Closes `tunnels` politely (close frames), within a bounded time.
    pub fn close(&self, tunnels: Tunnels) {
        self.rt.block_on(async {
            for mut ws in tunnels.open {
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
            }
        });
    }
}

async fn connect(t: &Target) -> Result<Ws> {
    let req = format!("ws://{}{}", t.host, t.path)
        .into_client_request()
        .context("building the WebSocket request")?;
    let step = async {
        let tcp = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to {}", t.addr))?;
        tcp.set_nodelay(true)?;
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .with_context(|| format!("WebSocket handshake with {}{}", t.addr, t.path))?;
        if resp.status().as_u16() != 101 {
            bail!("WebSocket handshake answered {}", resp.status());
        }
        anyhow::Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .context("WebSocket connect timed out")?
}

async fn round_trip(ws: &mut Ws, payload: Bytes) -> Result<()> {
    let step = async {
        ws.send(Message::Binary(payload.clone())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b == payload => return Ok(()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => bail!("unexpected WebSocket message {other:?}"),
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the WebSocket closed"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .context("WebSocket round trip timed out")?
}

/// Round trips until `deadline`: (good, the failure, latencies in µs). Stops at the first
/// failure.
async fn echo_loop(mut ws: Ws, deadline: Instant) -> (u64, Option<anyhow::Error>, Vec<f64>) {
    let payload = Bytes::from_static(&[b'x'; 32]);
    let (mut ok, mut lat) = (0u64, Vec::new());
    while ok < MAX_ROUND_TRIPS_PER_CONN && Instant::now() < deadline {
        let t = Instant::now();
        if let Err(e) = round_trip(&mut ws, payload.clone()).await {
            return (ok, Some(e), lat);
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        ok += 1;
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    (ok, None, lat)
}

//! WebSocket through the real binary (issue #5), with a real client (tokio-tungstenite) over
//! `ws://` on the plain listener and `wss://` on the TLS listener (SNI `demo.kubesre.com`,
//! verified against the test CA), against the example echo backend and small WebSocket servers
//! of the tests' own:
//!
//! - text and binary echo, ping/pong, a 16 MiB message, subprotocol negotiation;
//! - close codes both ways (a client close 4000 reaches the backend and its answer comes back;
//!   the backend's `close:4001` reaches the client), the example echo backend answering a
//!   client close, and a TCP close on either side reaching the other side promptly;
//! - 1,000 concurrent tunnels each echoing once, with the proxy's resident memory growth per
//!   tunnel bounded (and printed);
//! - per-direction idle timeouts from `--proxy-read-timeout`/`--proxy-send-timeout`: a silent
//!   tunnel closes after its seconds, a tunnel whose one side keeps talking still closes when
//!   the other side is silent, an active tunnel stays up; and the same from per-Ingress
//!   annotations;
//! - RFC 8441: an HTTP/2 client (h2 crate, over TLS with ALPN h2 and over h2c) opens WebSockets
//!   with extended CONNECT `:protocol websocket` and echoes through to the HTTP/1.1 backend,
//!   two tunnels and a plain request sharing one connection;
//! - 100 configuration swaps (editing the tunnels' own Ingress) while 50 tunnels keep echoing:
//!   no message lost, no tunnel closed, not even when the Ingress is then removed;
//! - the seed article's three manifests (plain with timeouts, legacy class + configuration
//!   snippet, NGINX Inc's `nginx.org/websocket-services`), with our class name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::backend::Backend;
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::manifests::PathRule;
use crate::harness::process::{RELOAD_LIMIT, validate};
use crate::harness::ws::{self, H2Stream, Io, Ws, WsBackend};
use crate::harness::{Ingress, Manifests, Wasmgress, prefix};

/// The TLS host of these tests (the seed article's host): `wss://` and h2.
const DEMO: &str = "demo.kubesre.com";
/// A host without TLS, so `ws://` is not redirected to HTTPS.
const PLAIN: &str = "plain.kubesre.com";
/// The seed article's Service name and port.
const SVC: &str = "demo-ws-svc";
const SVC_PORT: u16 = 8090;
/// Upper bound for one message to come back; nothing here should take this long.
const MESSAGE_LIMIT: Duration = Duration::from_secs(30);
/// How soon a close on one side must reach the other ("promptly").
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// `ws://` on the plain listener or `wss://` on the TLS listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Ws,
    Wss,
}

const BOTH: [Via; 2] = [Via::Ws, Via::Wss];

impl Via {
    fn host(self) -> &'static str {
        match self {
            Via::Ws => PLAIN,
            Via::Wss => DEMO,
        }
    }

    fn url(self, path: &str) -> String {
        match self {
            Via::Ws => format!("ws://{PLAIN}{path}"),
            Via::Wss => format!("wss://{DEMO}{path}"),
        }
    }
}

/// What `ingress.yaml` holds when the binary starts.
enum Ingresses {
    /// [`standard_ingresses`] with `/page` on `page-a`.
    Standard,
    Docs(Vec<Value>),
    Text(String),
}

/// The echo backend as `demo-ws-svc:8090` at `/` of [`DEMO`] (TLS) and [`PLAIN`]; HTTP echo
/// backends `page-a`/`page-b` for plain requests at `/page`; a ticker (talks, never listens)
/// at `/ticker`; a probe (echoes, reports how its connections end) at `/probe`.
struct Setup {
    gw: Wasmgress,
    m: Manifests,
    /// Trusts only the test CA; ALPN http/1.1.
    tls: Arc<rustls::ClientConfig>,
    ca: TestCa,
    /// `"ID closed CODE"` when a probe connection whose first message was `hello:ID` got a
    /// close frame (answered with the same code, as tungstenite does), `"ID ended"` when that
    /// connection ended, and `"ID dropped"` when the probe dropped it on request (text `drop`).
    probe_events: Mutex<mpsc::UnboundedReceiver<String>>,
    _ws: Vec<WsBackend>,
    _pages: Vec<Backend>,
}

fn standard_ingresses(page: &str) -> Vec<Value> {
    let paths = |page: &str| -> Vec<PathRule> {
        vec![
            prefix("/", SVC).port(SVC_PORT),
            prefix("/page", page),
            prefix("/ticker", "ticker-svc"),
            prefix("/probe", "probe-svc"),
        ]
    };
    vec![
        Ingress::new("demo-ws")
            .tls(&[DEMO], "demo-tls")
            .rule(Some(DEMO), &paths(page))
            .build(),
        Ingress::new("plain-ws")
            .rule(Some(PLAIN), &paths(page))
            .build(),
    ]
}

impl Setup {
    async fn start(extra: &[&str], ingresses: Ingresses) -> Self {
        let ca = TestCa::new();
        let leaf = ca.leaf(&[DEMO]);
        let echo = WsBackend::echo().await;
        let ticker = WsBackend::custom(ticker).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let probe = WsBackend::custom(move |l| probe(l, tx)).await;
        let page_a = Backend::start("page-a").await;
        let page_b = Backend::start("page-b").await;
        let mut objects = echo.objects(SVC, SVC_PORT);
        objects.extend(ticker.objects("ticker-svc", 80));
        objects.extend(probe.objects("probe-svc", 80));
        objects.extend(page_a.objects());
        objects.extend(page_b.objects());
        objects.push(leaf.secret("demo-tls", false));
        let m = Manifests::new();
        m.write("backends.yaml", &objects);
        match ingresses {
            Ingresses::Standard => m.write("ingress.yaml", &standard_ingresses("page-a")),
            Ingresses::Docs(docs) => m.write("ingress.yaml", &docs),
            Ingresses::Text(text) => m.write_text("ingress.yaml", &text),
        }
        let gw = Wasmgress::start(&m, extra).await;
        let tls = certs::client_config(ca.roots(), &[b"http/1.1"], BOTH_VERSIONS);
        Self {
            gw,
            m,
            tls,
            ca,
            probe_events: Mutex::new(rx),
            _ws: vec![echo, ticker, probe],
            _pages: vec![page_a, page_b],
        }
    }

    /// A fresh connection to the listener `via` uses (TLS verified against the test CA).
    async fn stream(&self, via: Via) -> Box<dyn Io> {
        match via {
            Via::Ws => Box::new(
                TcpStream::connect(self.gw.http)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {}: {e}", self.gw.http)),
            ),
            Via::Wss => Box::new(
                self.gw
                    .tls(DEMO, self.tls.clone())
                    .await
                    .unwrap_or_else(|e| {
                        panic!("TLS handshake with {DEMO} verified against the test CA: {e}")
                    }),
            ),
        }
    }

    async fn try_open_on(
        &self,
        via: Via,
        host: &str,
        path: &str,
        protocols: &[&str],
    ) -> Result<(Ws, ws::Response), String> {
        let scheme = match via {
            Via::Ws => "ws",
            Via::Wss => "wss",
        };
        let url = format!("{scheme}://{host}{path}");
        ws::handshake(self.stream(via).await, &url, protocols).await
    }

    /// Opens a WebSocket to `path` on `via`'s host, or panics saying what came back.
    async fn open(&self, via: Via, path: &str) -> Ws {
        self.open_with(via, path, &[]).await.0
    }

    async fn open_with(&self, via: Via, path: &str, protocols: &[&str]) -> (Ws, ws::Response) {
        self.try_open_on(via, via.host(), path, protocols)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", via.url(path)))
    }

    async fn open_on(&self, via: Via, host: &str, path: &str) -> Ws {
        self.try_open_on(via, host, path, &[])
            .await
            .unwrap_or_else(|e| panic!("opening {host}{path} over {via:?}: {e}"))
            .0
    }

    /// The next probe event, within [`CLOSE_LIMIT`].
    async fn probe_event(&self, waiting_for: &str) -> String {
        let mut rx = self.probe_events.lock().await;
        match timeout(CLOSE_LIMIT, rx.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the probe backend stopped"),
            Err(_) => panic!("waited {CLOSE_LIMIT:?} for the probe backend to see {waiting_for}"),
        }
    }

    /// Rewrites `ingress.yaml` with `/page` on `page` and waits until plain requests see it.
    async fn swap_to(&self, page: &str, docs: &[Value]) {
        self.m.write("ingress.yaml", docs);
        let deadline = Instant::now() + RELOAD_LIMIT;
        loop {
            let r = self.gw.get(PLAIN, "/page").await;
            if r.backend().as_deref() == Some(page) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {RELOAD_LIMIT:?} for the edit sending /page to {page}; last: {}",
                r.summary()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A backend that sends `tick` every 250 ms and never reads: bytes only flow backend -> client.
async fn ticker(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while ws.send(Message::text("tick")).await.is_ok() {
                sleep(Duration::from_millis(250)).await;
            }
        });
    }
}

/// An echo backend that reports how each connection ended (see [`Setup::probe_events`]).
async fn probe(listener: TcpListener, events: mpsc::UnboundedSender<String>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let events = events.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let mut id = String::from("?");
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = &msg {
                    if let Some(rest) = t.as_str().strip_prefix("hello:") {
                        id = rest.to_owned();
                    } else if t.as_str() == "drop" {
                        // Gone without a close frame: the TCP connection just closes.
                        drop(ws);
                        let _ = events.send(format!("{id} dropped"));
                        return;
                    }
                }
                if let Message::Close(frame) = &msg {
                    let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                    let _ = events.send(format!("{id} closed {code}"));
                    // Reading on flushes tungstenite's close reply, then the stream ends.
                    continue;
                }
                if matches!(msg, Message::Text(_) | Message::Binary(_))
                    && ws.send(msg).await.is_err()
                {
                    break;
                }
            }
            let _ = events.send(format!("{id} ended"));
        });
    }
}

/// The next message (data, pong or close) within [`MESSAGE_LIMIT`]; panics if the WebSocket
/// fails or ends first.
async fn next(ws: &mut Ws, what: &str) -> Message {
    match timeout(MESSAGE_LIMIT, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => panic!("{what}: the WebSocket failed: {e}"),
        Ok(None) => panic!("{what}: the WebSocket ended"),
        Err(_) => panic!("{what}: nothing came back within {MESSAGE_LIMIT:?}"),
    }
}

/// Sends `msg` and expects the same message back.
async fn echo(ws: &mut Ws, msg: Message, what: &str) {
    ws.send(msg.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
    let back = next(ws, what).await;
    assert!(
        back == msg,
        "{what}: sent {}, got back {}",
        show(&msg),
        show(&back)
    );
}

/// A message for failure output, without megabytes of payload.
fn show(m: &Message) -> String {
    match m {
        Message::Text(t) if t.len() <= 200 => format!("text {:?}", t.as_str()),
        Message::Text(t) => format!("text of {} bytes", t.len()),
        Message::Binary(b) if b.len() <= 64 => format!("binary {b:?}"),
        Message::Binary(b) => format!("binary of {} bytes", b.len()),
        other => format!("{other:?}"),
    }
}

/// Waits (ignoring data) until the WebSocket ends in any way (close frame, EOF, reset) and
/// returns how long after `since` that was, or `None` if it was still open at `since + limit`.
async fn ended_within(ws: &mut Ws, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = since + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return Some(since.elapsed()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// After a completed close handshake: the proxy must also close the TCP (or TLS) connection,
/// within [`CLOSE_LIMIT`]; panics saying what happened instead.
async fn connection_closes(ws: Ws, what: &str) {
    let mut raw = ws.into_inner();
    let mut buf = [0u8; 64];
    match timeout(CLOSE_LIMIT, raw.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{what}: after the close handshake, {n} more bytes arrived: {:?}",
            &buf[..n]
        ),
        Err(_) => panic!(
            "{what}: the close handshake completed but the proxy kept the connection open for \
             {CLOSE_LIMIT:?}"
        ),
    }
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }
}

/// Text, binary (every byte value, and empty) and ping/pong, over `ws://` and `wss://`; the
/// TLS connection is verified against the test CA with SNI `demo.kubesre.com`.
#[tokio::test]
async fn text_binary_and_ping_pong_echo_over_ws_and_wss() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    for via in BOTH {
        let mut ws = s.open(via, "/echo").await;
        let what = |m: &str| format!("{m} over {}", via.url("/echo"));
        echo(&mut ws, Message::text("hello, wasmgress"), &what("text")).await;
        echo(&mut ws, Message::text("héllo ✓ 你好"), &what("UTF-8 text")).await;
        let every_byte: Vec<u8> = (0..=255u8).collect();
        echo(&mut ws, Message::binary(every_byte), &what("binary")).await;
        echo(&mut ws, Message::binary(Vec::new()), &what("empty binary")).await;
        ws.send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", what("ping")));
        let pong = next(&mut ws, &what("ping")).await;
        assert_eq!(
            pong,
            Message::Pong(Bytes::from_static(b"are you there")),
            "{}: a ping must be answered by a pong with the same payload",
            what("ping")
        );
        // Several messages in flight at once come back in order.
        for i in 0..20 {
            ws.feed(Message::text(format!("burst {i}"))).await.unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..20 {
            let got = next(&mut ws, &what("burst")).await;
            assert_eq!(
                got,
                Message::text(format!("burst {i}")),
                "{}",
                what("burst")
            );
        }
        ws.close(None).await.unwrap();
    }
}

/// A 16 MiB binary message and a 16 MiB text message come back whole, both transports.
#[tokio::test]
async fn sixteen_mib_messages_echo_whole() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    const SIZE: usize = 16 << 20;
    let binary: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let text: String = (0..SIZE)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for via in BOTH {
        let mut ws = s.open(via, "/big").await;
        let what = |m: &str| format!("16 MiB {m} message over {}", via.url("/big"));
        echo(&mut ws, Message::binary(binary.clone()), &what("binary")).await;
        echo(&mut ws, Message::text(text.clone()), &what("text")).await;
        echo(
            &mut ws,
            Message::text("small after big"),
            &what("follow-up"),
        )
        .await;
        ws.close(None).await.unwrap();
    }
}

/// The client offers two subprotocols and gets the first (the backend's choice) back in the
/// 101; a client offering none gets none.
#[tokio::test]
async fn subprotocol_negotiation() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    for via in BOTH {
        let (mut ws, resp) = s.open_with(via, "/chat", &["chat.v2", "chat.v1"]).await;
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap_or("<binary>")),
            Some("chat.v2"),
            "{}: offered `chat.v2, chat.v1`; response headers {:?}",
            via.url("/chat"),
            resp.headers()
        );
        echo(&mut ws, Message::text("on chat.v2"), &via.url("/chat")).await;
        ws.close(None).await.unwrap();

        let (mut ws, resp) = s.open_with(via, "/chat", &[]).await;
        assert!(
            resp.headers().get("sec-websocket-protocol").is_none(),
            "{}: no subprotocol offered, yet the 101 names one: {:?}",
            via.url("/chat"),
            resp.headers()
        );
        echo(&mut ws, Message::text("no subprotocol"), &via.url("/chat")).await;
        ws.close(None).await.unwrap();
    }
}

/// Client-initiated close of `sock` (opened to `url`): close 4000 must come back as 4000, then the
/// proxy closes the connection promptly.
async fn client_close_comes_back(mut sock: Ws, url: &str) {
    sock.close(Some(close_frame(4000, "client says bye")))
        .await
        .unwrap_or_else(|e| panic!("{url}: sending a close frame: {e}"));
    let back = next(
        &mut sock,
        &format!("{url}: the answer to a client close 4000"),
    )
    .await;
    match &back {
        Message::Close(Some(f)) => assert_eq!(
            u16::from(f.code),
            4000,
            "{url}: the client closed with 4000, the close that came back was {f:?}"
        ),
        other => panic!("{url}: sent close 4000, got {other:?}"),
    }
    connection_closes(sock, &format!("{url} (client-initiated close)")).await;
}

/// A client close with code 4000 reaches the backend as 4000 (the probe backend reports it)
/// and the backend's answer comes back with 4000; the echo backend's close with 4001 (asked
/// with `close:4001`) reaches the client with 4001 and its reason. After each close handshake
/// the proxy closes the client connection promptly, and the backend sees its connection end.
#[tokio::test]
async fn close_codes_propagate_both_ways() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    for via in BOTH {
        let id = format!("close-{via:?}");
        let mut ws = s.open(via, "/probe").await;
        echo(&mut ws, Message::text(format!("hello:{id}")), &id).await;
        client_close_comes_back(ws, &via.url("/probe")).await;
        assert_eq!(
            s.probe_event(&format!("{id}'s close frame")).await,
            format!("{id} closed 4000"),
            "{}: the client closed with 4000; what the backend received",
            via.url("/probe")
        );
        assert_eq!(
            s.probe_event(&format!("{id}'s connection end")).await,
            format!("{id} ended")
        );

        let url = via.url("/close");
        let mut ws = s.open(via, "/close").await;
        ws.send(Message::text("close:4001")).await.unwrap();
        let got = next(&mut ws, &format!("{url}: the backend's close 4001")).await;
        match &got {
            Message::Close(Some(f)) => {
                assert_eq!(
                    u16::from(f.code),
                    4001,
                    "{url}: the backend closed with 4001, the client got {f:?}"
                );
                assert_eq!(f.reason.as_str(), "closing as asked", "{url}: close reason");
            }
            other => panic!("{url}: the backend closed with 4001, the client got {other:?}"),
        }
        // tungstenite answers the close; then the stream ends.
        assert!(
            matches!(
                timeout(CLOSE_LIMIT, ws.next()).await,
                Ok(None | Some(Err(_)))
            ),
            "{url}: after the backend's close the WebSocket did not end"
        );
        connection_closes(ws, &format!("{url} (backend-initiated close)")).await;
    }
}

/// The example echo backend (the quickstart's, `examples/src/ws_echo.rs`) answers a client's
/// close 4000 with 4000, as its documentation says, through the proxy.
#[tokio::test]
async fn example_echo_backend_answers_a_client_close() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    for via in BOTH {
        let mut ws = s.open(via, "/close").await;
        echo(&mut ws, Message::text("before closing"), &via.url("/close")).await;
        client_close_comes_back(ws, &via.url("/close")).await;
    }
}

/// No close frame at all: a client that just drops its connection ends the backend's
/// connection promptly, and a backend that drops its connection ends the client's.
#[tokio::test]
async fn tcp_close_on_either_side_reaches_the_other() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    for via in BOTH {
        let id = format!("client-drop-{via:?}");
        let mut ws = s.open(via, "/probe").await;
        echo(&mut ws, Message::text(format!("hello:{id}")), &id).await;
        drop(ws);
        let event = s.probe_event(&format!("{id} end")).await;
        assert_eq!(
            event,
            format!("{id} ended"),
            "{}: the client dropped its connection",
            via.url("/probe")
        );

        let id = format!("backend-drop-{via:?}");
        let mut ws = s.open(via, "/probe").await;
        echo(&mut ws, Message::text(format!("hello:{id}")), &id).await;
        ws.send(Message::text("drop")).await.unwrap();
        assert_eq!(
            s.probe_event(&format!("{id} drop")).await,
            format!("{id} dropped")
        );
        let ended = ended_within(&mut ws, Instant::now(), CLOSE_LIMIT).await;
        assert!(
            ended.is_some(),
            "{}: the backend dropped its connection, the client's stayed open {CLOSE_LIMIT:?}",
            via.url("/probe")
        );
    }
}

/// 1,000 tunnels open at once through the plain listener, each echoing once; the proxy's
/// resident memory grows by a bounded amount per tunnel (printed), and all still echo at the
/// end.
#[tokio::test]
async fn thousand_concurrent_tunnels_with_bounded_proxy_memory() {
    const TUNNELS: usize = 1000;
    const BOUND_KIB: u64 = 64;
    // Each tunnel is two sockets in this process (client, backend) and two in the proxy.
    let limit = ws::ensure_open_files(4 * TUNNELS as u64 + 1024);
    assert!(
        limit >= 2 * TUNNELS as u64 + 256,
        "open-file limit {limit} is too low for {TUNNELS} tunnels (hard limit reached)"
    );
    let s = Arc::new(Setup::start(&[], Ingresses::Standard).await);
    let pid = s.gw.pid().expect("wasmgress pid");

    // Warm up: the first tunnels pay for one-time allocations (pools, buffers, task slabs).
    let mut warm = Vec::new();
    for i in 0..50 {
        let mut ws = s.open(Via::Ws, "/warm").await;
        echo(&mut ws, Message::text(format!("warm {i}")), "warm-up").await;
        warm.push(ws);
    }
    for mut ws in warm {
        let _ = ws.close(None).await;
        let _ = ended_within(&mut ws, Instant::now(), CLOSE_LIMIT).await;
    }
    sleep(Duration::from_millis(300)).await;
    let before = ws::rss_kib(pid);

    let gate = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for i in 0..TUNNELS {
        let s = s.clone();
        let gate = gate.clone();
        set.spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore");
            let (mut ws, _) = s.try_open_on(Via::Ws, PLAIN, "/many", &[]).await?;
            drop(permit);
            let msg = Message::text(format!("tunnel {i}"));
            ws.send(msg.clone())
                .await
                .map_err(|e| format!("tunnel {i}: send: {e}"))?;
            match timeout(MESSAGE_LIMIT, ws.next()).await {
                Ok(Some(Ok(back))) if back == msg => Ok((i, ws)),
                other => Err(format!("tunnel {i}: echo: {other:?}")),
            }
        });
    }
    let mut open = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined.expect("tunnel task") {
            Ok(pair) => open.push(pair),
            Err(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {TUNNELS} tunnels failed to open or echo; first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    sleep(Duration::from_millis(300)).await;
    let after = ws::rss_kib(pid);
    assert!(s.gw.pid() == Some(pid), "same wasmgress process");

    // All 1,000 are still open and still echo while they are all held.
    for (i, ws) in open.iter_mut() {
        ws.feed(Message::text(format!("again {i}"))).await.unwrap();
    }
    for (i, ws) in open.iter_mut() {
        ws.flush().await.unwrap();
        let back = next(ws, &format!("tunnel {i}, second echo")).await;
        assert_eq!(back, Message::text(format!("again {i}")));
    }

    let growth = after.saturating_sub(before);
    let per_tunnel = growth as f64 / TUNNELS as f64;
    println!(
        "wasmgress RSS: {before} KiB before, {after} KiB with {TUNNELS} open tunnels: \
         {per_tunnel:.1} KiB per tunnel"
    );
    assert!(
        growth <= BOUND_KIB * TUNNELS as u64,
        "the proxy's resident memory grew by {growth} KiB for {TUNNELS} open tunnels \
         ({per_tunnel:.1} KiB each; bound {BOUND_KIB} KiB each): {before} KiB -> {after} KiB"
    );
    for (_, mut ws) in open {
        let _ = ws.close(None).await;
    }
}

/// Keeps `ws` busy: a message every 300 ms for `busy`, each echoed; then one more echo.
async fn keep_active(ws: &mut Ws, busy: Duration, what: &str) {
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < busy {
        echo(ws, Message::text(format!("active {i}")), what).await;
        i += 1;
        sleep(Duration::from_millis(300)).await;
    }
    echo(ws, Message::text("still here"), what).await;
}

/// Opens a tunnel whose client keeps sending bytes (one byte every 200 ms of a 1,000-byte
/// frame the backend waits to complete, so the backend stays silent) until the connection
/// closes; returns when it closed after the handshake, or `None` if open after `limit`.
async fn trickle_until_closed(s: &Setup, via: Via, limit: Duration) -> Option<Duration> {
    let ws = s.open(via, "/trickle").await;
    let since = Instant::now();
    let raw = ws.into_inner();
    let (mut rd, mut wr) = tokio::io::split(raw);
    // FIN + binary, masked, 16-bit length 1000, mask key.
    wr.write_all(&[0x82, 0xFE, 0x03, 0xE8, 1, 2, 3, 4])
        .await
        .expect("write a frame header");
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            if flag.load(Ordering::Relaxed) || wr.write_all(&[0x55]).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = [0u8; 256];
    let ended = loop {
        match tokio::time::timeout_at(since + limit, rd.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0) | Err(_)) => break Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    };
    closed.store(true, Ordering::Relaxed);
    writer.abort();
    ended
}

/// Checks that a tunnel `what` ended between `timeout - slack` and the bound after its start.
fn assert_idle_close(ended: Option<Duration>, secs: u64, what: &str) {
    let early = Duration::from_millis(secs * 1000 * 3 / 4);
    match ended {
        None => panic!(
            "{what}: still open after {:?}; the idle timeout is {secs} s",
            idle_bound(secs)
        ),
        Some(t) => assert!(
            t >= early,
            "{what}: closed after {t:?}, before its {secs} s idle timeout"
        ),
    }
}

/// How long a tunnel with a `secs` idle timeout may take to be closed, generously.
fn idle_bound(secs: u64) -> Duration {
    Duration::from_secs(secs + 6)
}

/// `--proxy-read-timeout 2`: a silent tunnel closes after about 2 s; a tunnel whose client
/// keeps sending while the backend stays silent also closes (the read timeout counts silence
/// from the backend only); a tunnel that keeps echoing stays up well past 2 s.
#[tokio::test]
async fn read_timeout_closes_silent_tunnels_while_active_ones_stay_up() {
    let s = Setup::start(
        &["--proxy-read-timeout", "2", "--proxy-send-timeout", "60"],
        Ingresses::Standard,
    )
    .await;
    let silent = async {
        let mut ws = s.open(Via::Ws, "/silent").await;
        let since = Instant::now();
        ended_within(&mut ws, since, idle_bound(2)).await
    };
    let silent_tls = async {
        let mut ws = s.open(Via::Wss, "/silent").await;
        let since = Instant::now();
        ended_within(&mut ws, since, idle_bound(2)).await
    };
    let trickle = trickle_until_closed(&s, Via::Ws, idle_bound(2));
    let active = async {
        let mut ws = s.open(Via::Ws, "/active").await;
        keep_active(
            &mut ws,
            Duration::from_secs(5),
            "active tunnel (read timeout 2 s)",
        )
        .await;
        ws.close(None).await.unwrap();
    };
    let (silent, silent_tls, trickle, ()) = tokio::join!(silent, silent_tls, trickle, active);
    assert_idle_close(silent, 2, "silent ws:// tunnel");
    assert_idle_close(silent_tls, 2, "silent wss:// tunnel");
    assert_idle_close(
        trickle,
        2,
        "tunnel whose client keeps sending while the backend is silent",
    );
}

/// `--proxy-send-timeout 2`: a tunnel whose client is silent closes after about 2 s, even while
/// its backend keeps sending (the send timeout counts silence from the client only); a tunnel
/// that keeps echoing stays up well past 2 s.
#[tokio::test]
async fn send_timeout_closes_tunnels_with_a_silent_client() {
    let s = Setup::start(
        &["--proxy-read-timeout", "60", "--proxy-send-timeout", "2"],
        Ingresses::Standard,
    )
    .await;
    let silent = async {
        let mut ws = s.open(Via::Ws, "/silent").await;
        let since = Instant::now();
        ended_within(&mut ws, since, idle_bound(2)).await
    };
    let ticking = async {
        let mut ws = s.open(Via::Wss, "/ticker").await;
        let since = Instant::now();
        let first = next(&mut ws, "the ticker backend's first tick").await;
        assert_eq!(first, Message::text("tick"));
        ended_within(&mut ws, since, idle_bound(2)).await
    };
    let active = async {
        let mut ws = s.open(Via::Wss, "/active").await;
        keep_active(
            &mut ws,
            Duration::from_secs(5),
            "active tunnel (send timeout 2 s)",
        )
        .await;
        ws.close(None).await.unwrap();
    };
    let (silent, ticking, ()) = tokio::join!(silent, ticking, active);
    assert_idle_close(silent, 2, "silent ws:// tunnel");
    assert_idle_close(
        ticking,
        2,
        "tunnel whose backend keeps sending while the client is silent",
    );
}

/// Per-Ingress `proxy-read-timeout`/`proxy-send-timeout` annotations (controller defaults 60 s):
/// on an Ingress with `proxy-read-timeout: "2"` a silent tunnel closes after about 2 s, while on
/// the seed's Ingress with `"3600"` a silent tunnel is still open and echoing after 5 s.
#[tokio::test]
async fn per_ingress_timeout_annotations() {
    let short = Ingress::new("short-ws")
        .annotation("nginx.ingress.kubernetes.io/proxy-read-timeout", "2")
        .annotation("nginx.ingress.kubernetes.io/proxy-send-timeout", "60")
        .rule(Some(PLAIN), &[prefix("/", SVC).port(SVC_PORT)])
        .build();
    let long = Ingress::new("long-ws")
        .annotation("nginx.ingress.kubernetes.io/proxy-http-version", "1.1")
        .annotation("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600")
        .annotation("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600")
        .rule(Some(DEMO), &[prefix("/", SVC).port(SVC_PORT)])
        .build();
    let s = Setup::start(&[], Ingresses::Docs(vec![short, long])).await;
    let short_silent = async {
        let mut ws = s.open_on(Via::Ws, PLAIN, "/silent").await;
        let since = Instant::now();
        ended_within(&mut ws, since, idle_bound(2)).await
    };
    let long_silent = async {
        let mut ws = s.open_on(Via::Ws, DEMO, "/silent").await;
        let since = Instant::now();
        let ended = ended_within(&mut ws, since, Duration::from_secs(5)).await;
        assert!(
            ended.is_none(),
            "a silent tunnel on the Ingress with proxy-read-timeout 3600 closed after {ended:?}"
        );
        echo(
            &mut ws,
            Message::text("after 5 s of silence"),
            "3600 s tunnel",
        )
        .await;
    };
    let (short_silent, ()) = tokio::join!(short_silent, long_silent);
    assert_idle_close(
        short_silent,
        2,
        "silent tunnel on the Ingress annotated proxy-read-timeout: \"2\" (flags at 60 s)",
    );
}

/// Sends an extended CONNECT for a WebSocket on `client`; the 200 and its tunnel.
async fn extended_connect(
    client: &mut h2::client::SendRequest<Bytes>,
    uri: &str,
    protocols: &str,
) -> (Ws, http::Response<()>) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", protocols)
        .body(())
        .expect("extended CONNECT request");
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let ready = timeout(MESSAGE_LIMIT, client.clone().ready())
        .await
        .unwrap_or_else(|_| panic!("{uri}: HTTP/2 connection not ready"))
        .unwrap_or_else(|e| panic!("{uri}: HTTP/2 connection not ready: {e}"));
    *client = ready;
    let (resp, send) = client
        .send_request(req, false)
        .unwrap_or_else(|e| panic!("{uri}: send extended CONNECT: {e}"));
    let resp = timeout(MESSAGE_LIMIT, resp)
        .await
        .unwrap_or_else(|_| panic!("{uri}: no answer to extended CONNECT within {MESSAGE_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{uri}: extended CONNECT failed: {e}"));
    let (parts, recv) = resp.into_parts();
    assert_eq!(
        parts.status,
        StatusCode::OK,
        "{uri}: extended CONNECT :protocol websocket must get 200; headers {:?}",
        parts.headers
    );
    let io: Box<dyn Io> = Box::new(H2Stream::new(send, recv));
    let ws = WebSocketStream::from_raw_socket(io, Role::Client, Some(ws::client_config())).await;
    (ws, http::Response::from_parts(parts, ()))
}

/// Two WebSockets (RFC 8441; one to the probe backend, one to the echo backend) and a plain
/// GET on one HTTP/2 connection over `io`.
async fn rfc8441_on<S>(s: &Setup, io: S, scheme: &str, host: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = timeout(MESSAGE_LIMIT, h2::client::handshake(io))
        .await
        .expect("HTTP/2 handshake in time")
        .unwrap_or_else(|e| panic!("HTTP/2 handshake ({scheme}): {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("HTTP/2 connection ready");
    let deadline = Instant::now() + CLOSE_LIMIT;
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "{scheme}: the server's SETTINGS never enabled extended CONNECT \
             (SETTINGS_ENABLE_CONNECT_PROTOCOL)"
        );
        sleep(Duration::from_millis(10)).await;
    }

    let uri = |path: &str| format!("{scheme}://{host}{path}");
    // `first` goes to the probe backend (which reports the close code it gets), `second` to
    // the echo backend (which picks the first offered subprotocol).
    let (mut first, _) = extended_connect(&mut client, &uri("/probe/h2"), "chat.v1").await;
    let (mut second, resp) =
        extended_connect(&mut client, &uri("/h2/two"), "chat.v2, chat.v1").await;
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("chat.v2"),
        "{}: subprotocol in the 200 (offered `chat.v2, chat.v1`); headers {:?}",
        uri("/h2/two"),
        resp.headers()
    );

    // A plain request on the same connection while both tunnels are open.
    let get = Request::builder()
        .method(Method::GET)
        .uri(uri("/page"))
        .body(())
        .expect("GET request");
    let (resp, _) = client
        .send_request(get, true)
        .unwrap_or_else(|e| panic!("GET {}: {e}", uri("/page")));
    let resp = timeout(MESSAGE_LIMIT, resp)
        .await
        .expect("GET /page answered in time")
        .expect("GET /page");
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = timeout(MESSAGE_LIMIT, body.data())
        .await
        .expect("body in time")
    {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let echo_json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(
        (status, echo_json["backend"].as_str()),
        (StatusCode::OK, Some("page-a")),
        "GET {} on the connection carrying the tunnels: {}",
        uri("/page"),
        String::from_utf8_lossy(&bytes)
    );

    let what = |n: &str| format!("RFC 8441 tunnel {n} ({scheme})");
    let id = format!("h2-{scheme}");
    echo(
        &mut first,
        Message::text(format!("hello:{id}")),
        &what("one"),
    )
    .await;
    echo(&mut second, Message::text("over h2, two"), &what("two")).await;
    echo(
        &mut first,
        Message::binary(vec![7u8; 100_000]),
        &what("one"),
    )
    .await;
    first
        .send(Message::Ping(Bytes::from_static(b"h2 ping")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut first, &what("one")).await,
        Message::Pong(Bytes::from_static(b"h2 ping"))
    );
    first
        .close(Some(close_frame(4000, "h2 bye")))
        .await
        .unwrap();
    match next(&mut first, &what("one")).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4000, "{}", what("one")),
        other => panic!("{}: sent close 4000, got {other:?}", what("one")),
    }
    assert_eq!(
        s.probe_event(&format!("{id}'s close frame")).await,
        format!("{id} closed 4000"),
        "{}: what the backend received for the client's close 4000",
        what("one")
    );
    assert_eq!(
        s.probe_event(&format!("{id}'s connection end")).await,
        format!("{id} ended")
    );
    // The second tunnel is untouched by the first one's close.
    echo(&mut second, Message::text("still open"), &what("two")).await;
    second.send(Message::text("close:4001")).await.unwrap();
    match next(&mut second, &what("two")).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4001, "{}", what("two")),
        other => panic!("{}: backend closed with 4001, got {other:?}", what("two")),
    }
}

/// RFC 8441: over TLS with ALPN h2 (SNI demo.kubesre.com) and over h2c on the plain listener,
/// the server enables extended CONNECT, answers `CONNECT :protocol websocket` with 200, and
/// the tunnel echoes through to the HTTP/1.1 echo backend; two tunnels and a GET share the
/// connection.
#[tokio::test]
async fn rfc8441_extended_connect_over_h2_echoes_through_to_http1_backend() {
    let s = Setup::start(&[], Ingresses::Standard).await;
    let h2_tls = certs::client_config(s.ca.roots(), &[b"h2"], BOTH_VERSIONS);
    let tls =
        s.gw.tls(DEMO, h2_tls)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {DEMO}: {e}"));
    assert_eq!(
        certs::negotiated(&tls).0.as_deref(),
        Some(&b"h2"[..]),
        "ALPN h2 offered alone must be negotiated"
    );
    rfc8441_on(&s, tls, "https", DEMO).await;

    let tcp = TcpStream::connect(s.gw.http).await.expect("connect");
    rfc8441_on(&s, tcp, "http", PLAIN).await;
}

/// 50 tunnels (half `ws://`, half `wss://`, to the probe backend) echo non-stop while their own Ingress is rewritten
/// 100 times (each edit waited for); every message comes back in order and no tunnel closes.
/// Then the Ingress is removed: the open tunnels still echo.
#[tokio::test]
async fn config_swaps_lose_no_message_and_close_no_tunnel() {
    const TUNNELS: usize = 50;
    const SWAPS: usize = 100;
    let s = Arc::new(Setup::start(&[], Ingresses::Standard).await);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for i in 0..TUNNELS {
        let via = if i % 2 == 0 { Via::Ws } else { Via::Wss };
        let mut ws = s.open(via, &format!("/probe/swap/{i}")).await;
        let (stop, total) = (stop.clone(), total.clone());
        set.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = Message::text(format!("tunnel {i} message {n}"));
                ws.send(msg.clone())
                    .await
                    .map_err(|e| format!("tunnel {i} ({via:?}) send #{n}: {e}"))?;
                match timeout(MESSAGE_LIMIT, ws.next()).await {
                    Ok(Some(Ok(back))) if back == msg => {}
                    other => {
                        return Err(format!(
                            "tunnel {i} ({via:?}) message #{n}: expected it back, got {other:?}"
                        ));
                    }
                }
                n += 1;
                total.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, String>((i, n, ws))
        });
    }

    let mut counts = Vec::with_capacity(SWAPS);
    for swap in 0..SWAPS {
        let page = if swap % 2 == 0 { "page-b" } else { "page-a" };
        let mut docs = standard_ingresses(page);
        for doc in &mut docs {
            doc["metadata"]["annotations"] =
                serde_json::json!({ "example.com/swap": swap.to_string() });
        }
        s.swap_to(page, &docs).await;
        counts.push(total.load(Ordering::Relaxed));
    }
    stop.store(true, Ordering::Relaxed);
    let mut tunnels = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined.expect("tunnel task") {
            Ok(t) => tunnels.push(t),
            Err(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {TUNNELS} tunnels lost a message or closed during {SWAPS} swaps:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    let sum: u64 = tunnels.iter().map(|(_, n, _)| n).sum();
    println!(
        "{SWAPS} swaps applied while {TUNNELS} tunnels echoed {sum} messages; \
         messages echoed by swap 25/50/75/100: {}/{}/{}/{}",
        counts[24], counts[49], counts[74], counts[99]
    );
    assert!(
        counts[0] < counts[SWAPS - 1],
        "the tunnels echoed nothing while the swaps were applied: {counts:?}"
    );

    // Removing their Ingress does not close them either (no grace period by default).
    s.m.remove("ingress.yaml");
    s.gw.poll_until(PLAIN, "/page", "the removed Ingress to stop serving", |r| {
        r.status == 404
    })
    .await;
    for (i, _, ws) in tunnels.iter_mut() {
        echo(
            ws,
            Message::text("after the Ingress was removed"),
            &format!("tunnel {i} after its Ingress was removed"),
        )
        .await;
    }
    for (i, _, mut ws) in tunnels {
        ws.close(Some(close_frame(1000, "done"))).await.unwrap();
        match next(&mut ws, &format!("tunnel {i} closing")).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000),
            other => panic!("tunnel {i}: sent close 1000, got {other:?}"),
        }
    }
}

/// The seed article's Service is `demo-ws-svc` port 8090; each of its Ingresses is written
/// as a user would paste it (our class name instead of `nginx`).
const SEED_PLAIN: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: demo-ws-ingress
  annotations:
    nginx.ingress.kubernetes.io/proxy-http-version: "1.1"
    nginx.ingress.kubernetes.io/proxy-read-timeout: "3600"
    nginx.ingress.kubernetes.io/proxy-send-timeout: "3600"
spec:
  ingressClassName: wasmgress
  rules:
  - host: demo.kubesre.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: demo-ws-svc
            port:
              number: 8090
"#;

const SEED_SNIPPET: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: demo-ws-ingress
  annotations:
    kubernetes.io/ingress.class: "wasmgress"
    nginx.ingress.kubernetes.io/configuration-snippet: |
      proxy_set_header Upgrade "websocket";
      proxy_set_header Connection "Upgrade";
spec:
  rules:
  - host: demo.kubesre.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: demo-ws-svc
            port:
              number: 8090
"#;

const SEED_NGINX_ORG: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: demo-ws-ingress
  annotations:
    nginx.org/websocket-services: "demo-ws-svc"
spec:
  ingressClassName: wasmgress
  rules:
  - host: demo.kubesre.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: demo-ws-svc
            port:
              number: 8090
"#;

/// Starts the binary on the seed manifest `text` (plus `extra` flags), checks `wasmgress
/// validate` accepts the folder (exit 0, no `error:` line), and echoes through
/// `ws://demo.kubesre.com/`. Returns the setup and validate's stdout.
async fn seed(text: &str, extra: &[&str]) -> (Setup, String) {
    let s = Setup::start(extra, Ingresses::Text(text.to_owned())).await;
    let (code, stdout, stderr) = validate(&s.m, &[]).await;
    assert!(
        code == 0 && !stdout.contains("error:"),
        "`wasmgress validate` must accept the seed manifest; exit {code}\nstdout:\n{stdout}\n\
         stderr:\n{stderr}\nmanifest:\n{text}"
    );
    let mut ws = s.open_on(Via::Ws, DEMO, "/").await;
    echo(
        &mut ws,
        Message::text("hello from the seed"),
        "seed manifest, text",
    )
    .await;
    echo(
        &mut ws,
        Message::binary(vec![1u8, 2, 3]),
        "seed manifest, binary",
    )
    .await;
    ws.close(None).await.unwrap();
    (s, stdout)
}

/// The seed's plain manifest (proxy-http-version 1.1, read/send timeouts 3600): accepted,
/// echoes, and its 3600 s timeouts override the controller's 2 s flags, so a silent tunnel is
/// still open after 5 s.
#[tokio::test]
async fn seed_manifest_with_timeout_annotations() {
    let (s, stdout) = seed(
        SEED_PLAIN,
        &["--proxy-read-timeout", "2", "--proxy-send-timeout", "2"],
    )
    .await;
    let noisy: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:") && l.contains("nginx.ingress.kubernetes.io/proxy-"))
        .collect();
    assert!(
        noisy.is_empty(),
        "the seed's proxy-* annotations are known ones, yet validate warns:\n{}",
        noisy.join("\n")
    );
    let mut ws = s.open_on(Via::Ws, DEMO, "/quiet").await;
    let ended = ended_within(&mut ws, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        ended.is_none(),
        "with proxy-read-timeout/proxy-send-timeout \"3600\" on the Ingress (flags at 2 s), a \
         silent tunnel closed after {ended:?}"
    );
    echo(
        &mut ws,
        Message::text("after 5 s of silence"),
        "3600 s tunnel",
    )
    .await;
}

/// The seed's legacy manifest (`kubernetes.io/ingress.class` + a configuration-snippet setting
/// `Upgrade`/`Connection`): accepted (the snippet's two headers are what WebSocket needs
/// anyway), and echoes.
#[tokio::test]
async fn seed_manifest_with_configuration_snippet() {
    let (_s, stdout) = seed(SEED_SNIPPET, &[]).await;
    let snippet: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("configuration-snippet"))
        .collect();
    assert!(
        snippet.iter().all(|l| !l.starts_with("error:")),
        "validate rejects the seed's configuration-snippet:\n{}",
        snippet.join("\n")
    );
}

/// NGINX Inc's `nginx.org/websocket-services`: accepted as a no-op with an info diagnostic
/// naming it, and echoes.
#[tokio::test]
async fn seed_manifest_with_nginx_org_websocket_services() {
    let (_s, stdout) = seed(SEED_NGINX_ORG, &[]).await;
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("info:") && l.contains("nginx.org/websocket-services")),
        "`nginx.org/websocket-services` should be accepted with an info diagnostic naming it; \
         validate printed:\n{stdout}"
    );
}

/// `proxy-http-version: "1.0"` on an Ingress serving WebSockets gets a diagnostic naming the
/// annotation (Upgrade needs HTTP/1.1); the tunnel itself still works, as the backend
/// handshake is always HTTP/1.1.
#[tokio::test]
async fn proxy_http_version_1_0_gets_a_diagnostic() {
    let ingress = Ingress::new("ws-http10")
        .annotation("nginx.ingress.kubernetes.io/proxy-http-version", "1.0")
        .rule(Some(PLAIN), &[prefix("/", SVC).port(SVC_PORT)])
        .build();
    let s = Setup::start(&[], Ingresses::Docs(vec![ingress])).await;
    let (code, stdout, stderr) = validate(&s.m, &[]).await;
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("Ingress default/ws-http10") && l.contains("proxy-http-version")),
        "no diagnostic names proxy-http-version \"1.0\" on a WebSocket Ingress; exit {code}\n\
         stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let mut ws = s.open(Via::Ws, "/http10").await;
    echo(
        &mut ws,
        Message::text("over 1.0?"),
        "proxy-http-version 1.0 route",
    )
    .await;
}

/// A backend that speaks WebSocket over TLS (`backend-protocol: HTTPS`) gets a TLS connection
/// from the proxy (without certificate verification, as ingress-nginx by default), and the
/// tunnel echoes through it.
#[tokio::test]
async fn websocket_to_an_https_backend() {
    let leaf = TestCa::new().leaf(&["backend.internal"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config());
    let backend = WsBackend::custom(move |listener: TcpListener| async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
    .await;
    let mut docs = backend.objects("secure-svc", 443);
    docs.push(
        Ingress::new("secure-ws")
            .annotation("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS")
            .rule(Some(PLAIN), &[prefix("/secure", "secure-svc").port(443)])
            .build(),
    );
    let s = Setup::start(&[], Ingresses::Docs(docs)).await;
    let mut sock = s.open(Via::Ws, "/secure").await;
    echo(
        &mut sock,
        Message::text("through TLS to the backend"),
        "echo via an HTTPS backend",
    )
    .await;
    sock.close(None).await.expect("close");
}

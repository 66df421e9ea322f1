//! WebSocket message hooks (`websocket-message`) through the real binary, with the example
//! plugin `ws-guard` loaded from `--plugin-dir`, against the example WebSocket echo backend
//! (`wasmgress_examples::ws_echo`) and small backends of the tests' own:
//!
//! - the client contract: JSON text messages with the required field are echoed, others are
//!   dropped before the backend; `max-bytes` closes with 1009, `binary: deny` with 1003;
//! - redaction of what the backend sends towards the client (text only);
//! - the host's 1 MiB message limit on hooked tunnels (1009), while an unhooked route still
//!   passes a 1.5 MiB message through its zero-copy tunnel;
//! - pings answered and the close handshake completed through a hooked tunnel;
//! - RFC 8441 (HTTP/2 extended CONNECT over h2c) on a hooked route filters too;
//! - permessage-deflate is never negotiated on a hooked route (raw HTTP/1.1 handshake);
//! - plain HTTP requests on a hooked route are untouched.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::HeaderValue as WsHeaderValue;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::backend::Backend;
use crate::harness::plugins::{Metrics, PluginDir};
use crate::harness::ws::{self, H2Stream, Io, Ws, WsBackend};
use crate::harness::{Ingress, Manifests, Req, Wasmgress, prefix};

const PLUGINS: &str = "wasmgress.io/plugins";
const MAX_BYTES: &str = "wasmgress.io/plugin.ws-guard.max-bytes";
const JSON_FIELDS: &str = "wasmgress.io/plugin.ws-guard.json-fields";
const BINARY: &str = "wasmgress.io/plugin.ws-guard.binary";
const REDACT: &str = "wasmgress.io/plugin.ws-guard.redact";

/// ws-guard with the client contract: JSON objects with `type`, at most 64 bytes, no binary.
/// `/` goes to the example echo backend, `/probe` to the probe (reports what it receives).
const GUARD: &str = "guard.example";
/// ws-guard redacting `secret` towards the client, nothing else (any client message passes).
const REDACTING: &str = "redact.example";
/// No plugin: the zero-copy byte tunnel.
const OPEN: &str = "open.example";
/// ws-guard (redact) in front of the extension probe, which accepts permessage-deflate.
const EXT_HOOKED: &str = "ext-guard.example";
/// No plugin in front of the extension probe.
const EXT_OPEN: &str = "ext-open.example";
/// ws-guard (JSON contract) in front of one backend port that serves both plain HTTP (the
/// example HTTP echo backend) and WebSocket (the example WebSocket echo backend).
const DUAL: &str = "dual.example";

/// Upper bound for one message to come back; nothing here should take this long.
const MESSAGE_LIMIT: Duration = Duration::from_secs(30);
/// How soon a close must reach the client.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);
/// The host's largest message on a hooked tunnel (1 MiB).
const MAX_MESSAGE: usize = 1 << 20;

/// An Ingress `name` for `host` with `annotations` and `paths`.
fn ingress(
    name: &str,
    host: &str,
    annotations: &[(&str, &str)],
    paths: &[crate::harness::manifests::PathRule],
) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(host), paths)
        .build()
}

/// The binary with ws-guard loaded, and every backend these tests talk to.
struct Setup {
    gw: Wasmgress,
    /// `"text T"`, `"binary N"` for each data message the probe backend received, `"closed
    /// CODE"` for a close frame and `"ended"` when its connection ended.
    probe_events: Mutex<mpsc::UnboundedReceiver<String>>,
    /// The `Sec-WebSocket-Extensions` offer (if any) each handshake to the extension probe
    /// carried.
    ext_offers: Mutex<mpsc::UnboundedReceiver<Option<String>>>,
    _m: Manifests,
    _plugins: PluginDir,
    _ws: Vec<WsBackend>,
    _http: Vec<Backend>,
}

impl Setup {
    async fn start() -> Self {
        let plugins = PluginDir::with(&["ws-guard"]);
        let echo = WsBackend::echo().await;
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let probe = WsBackend::custom(move |l| probe(l, probe_tx)).await;
        let (ext_tx, ext_rx) = mpsc::unbounded_channel();
        let ext = WsBackend::custom(move |l| extension_probe(l, ext_tx)).await;
        let dual_http = Backend::start("dual-http").await;
        let dual_ws = WsBackend::echo().await;
        let (http_addr, ws_addr) = (dual_http.addr, dual_ws.addr);
        let dual = WsBackend::custom(move |l| demux(l, http_addr, ws_addr)).await;

        let mut objects = echo.objects("echo-svc", 80);
        objects.extend(probe.objects("probe-svc", 80));
        objects.extend(ext.objects("ext-svc", 80));
        objects.extend(dual.objects("dual-svc", 80));
        let m = Manifests::new();
        m.write("backends.yaml", &objects);
        let contract = [
            (PLUGINS, "ws-guard"),
            (JSON_FIELDS, "type"),
            (MAX_BYTES, "64"),
            (BINARY, "deny"),
        ];
        let redact = [(PLUGINS, "ws-guard"), (REDACT, "secret")];
        m.write(
            "ingress.yaml",
            &[
                ingress(
                    "guard",
                    GUARD,
                    &contract,
                    &[prefix("/", "echo-svc"), prefix("/probe", "probe-svc")],
                ),
                ingress("redact", REDACTING, &redact, &[prefix("/", "echo-svc")]),
                ingress("open", OPEN, &[], &[prefix("/", "echo-svc")]),
                ingress("ext-guard", EXT_HOOKED, &redact, &[prefix("/", "ext-svc")]),
                ingress("ext-open", EXT_OPEN, &[], &[prefix("/", "ext-svc")]),
                ingress("dual", DUAL, &contract, &[prefix("/", "dual-svc")]),
            ],
        );
        let gw = Wasmgress::start(&m, &plugins.args()).await;
        Self {
            gw,
            probe_events: Mutex::new(probe_rx),
            ext_offers: Mutex::new(ext_rx),
            _m: m,
            _plugins: plugins,
            _ws: vec![echo, probe, ext, dual, dual_ws],
            _http: vec![dual_http],
        }
    }

    /// Opens `ws://host/path` on the plain listener, or panics saying what came back.
    async fn open(&self, host: &str, path: &str) -> Ws {
        let tcp = TcpStream::connect(self.gw.http)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.gw.http));
        let url = format!("ws://{host}{path}");
        ws::handshake(Box::new(tcp), &url, &[])
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"))
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

    /// The extension offer of the next handshake the extension probe got.
    async fn ext_offer(&self, what: &str) -> Option<String> {
        let mut rx = self.ext_offers.lock().await;
        match timeout(CLOSE_LIMIT, rx.recv()).await {
            Ok(Some(offer)) => offer,
            Ok(None) => panic!("the extension probe stopped"),
            Err(_) => panic!("{what}: the extension probe saw no handshake within {CLOSE_LIMIT:?}"),
        }
    }
}

/// An echo backend that reports every message and close it receives (see
/// [`Setup::probe_events`]).
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
            while let Some(Ok(msg)) = ws.next().await {
                match &msg {
                    Message::Text(t) => {
                        let _ = events.send(format!("text {}", t.as_str()));
                    }
                    Message::Binary(b) => {
                        let _ = events.send(format!("binary {}", b.len()));
                    }
                    Message::Close(frame) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        let _ = events.send(format!("closed {code}"));
                        // Reading on flushes tungstenite's close reply, then the stream ends.
                        continue;
                    }
                    _ => continue,
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = events.send("ended".to_owned());
        });
    }
}

/// A WebSocket echo backend that reports the `Sec-WebSocket-Extensions` offer of each
/// handshake and accepts `permessage-deflate` whenever it is offered (as a compressing backend
/// would), so a proxy that forwards the offer gets an extension in the 101.
async fn extension_probe(listener: TcpListener, offers: mpsc::UnboundedSender<Option<String>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let offers = offers.clone();
        tokio::spawn(async move {
            #[allow(clippy::result_large_err)]
            let callback =
                move |req: &WsRequest, mut resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
                    let offer = req
                        .headers()
                        .get("sec-websocket-extensions")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                    if offer
                        .as_deref()
                        .is_some_and(|o| o.contains("permessage-deflate"))
                    {
                        resp.headers_mut().insert(
                            "sec-websocket-extensions",
                            WsHeaderValue::from_static("permessage-deflate"),
                        );
                    }
                    let _ = offers.send(offer);
                    Ok(resp)
                };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One backend port for plain HTTP and WebSocket: each connection is spliced, by its first
/// request's `Upgrade: websocket`, to the example WebSocket echo backend at `ws` or to the
/// example HTTP echo backend at `http`.
async fn demux(listener: TcpListener, http: SocketAddr, ws: SocketAddr) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut head = [0u8; 8192];
            let deadline = Instant::now() + MESSAGE_LIMIT;
            let upgrade = loop {
                let Ok(n) = tcp.peek(&mut head).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                let seen = &head[..n];
                let complete = seen.windows(4).any(|w| w == b"\r\n\r\n");
                if complete || n == head.len() || Instant::now() >= deadline {
                    break String::from_utf8_lossy(seen).lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("upgrade")
                                && v.trim().eq_ignore_ascii_case("websocket")
                        })
                    });
                }
                sleep(Duration::from_millis(5)).await;
            };
            let target = if upgrade { ws } else { http };
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
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

async fn send(ws: &mut Ws, msg: Message, what: &str) {
    timeout(MESSAGE_LIMIT, ws.send(msg))
        .await
        .unwrap_or_else(|_| panic!("{what}: send took longer than {MESSAGE_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
}

/// Sends `msg` and expects `want` back as the very next message.
async fn exchange(ws: &mut Ws, msg: Message, want: Message, what: &str) {
    send(ws, msg.clone(), what).await;
    let back = next(ws, what).await;
    assert!(
        back == want,
        "{what}: sent {}, expected {} back, got {}",
        show(&msg),
        show(&want),
        show(&back)
    );
}

/// Sends `msg` and expects the same message back.
async fn echo(ws: &mut Ws, msg: Message, what: &str) {
    exchange(ws, msg.clone(), msg, what).await;
}

/// Nothing arrives within [`QUIET`], and the WebSocket is still open.
async fn nothing_more(ws: &mut Ws, what: &str) {
    match timeout(QUIET, ws.next()).await {
        Err(_) => {}
        Ok(Some(Ok(m))) => panic!(
            "{what}: expected nothing more within {QUIET:?}, got {}",
            show(&m)
        ),
        Ok(Some(Err(e))) => panic!("{what}: expected nothing more, the WebSocket failed: {e}"),
        Ok(None) => panic!("{what}: expected nothing more, the WebSocket ended"),
    }
}

/// The client receives a close frame with `code` within [`CLOSE_LIMIT`] (data before it is
/// a failure too: the message that caused the close must not have been echoed).
async fn closes_with(ws: &mut Ws, code: u16, what: &str) {
    match timeout(CLOSE_LIMIT, ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(
            u16::from(f.code),
            code,
            "{what}: the client got close code {} (reason {:?}), expected {code}",
            u16::from(f.code),
            f.reason.as_str()
        ),
        Ok(Some(Ok(other))) => panic!("{what}: expected a close {code}, got {}", show(&other)),
        Ok(Some(Err(e))) => {
            panic!("{what}: expected a close {code}, the WebSocket failed instead: {e}")
        }
        Ok(None) => panic!("{what}: expected a close {code}, the WebSocket ended without one"),
        Err(_) => panic!("{what}: expected a close {code}, nothing came within {CLOSE_LIMIT:?}"),
    }
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

/// After a completed close handshake the proxy closes the TCP connection, within
/// [`CLOSE_LIMIT`], without sending anything more.
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

// ---------------------------------------------------------------------------------------------
// 1. The client contract

/// On a route with `json-fields: "type"`, a client's `{"type":"hi"}` is echoed back, while
/// `not json` and `{"x":1}` never reach the backend: the next valid message's echo is the first
/// thing to come back, and nothing else follows.
#[tokio::test]
async fn messages_outside_the_json_contract_are_dropped_before_the_backend() {
    let s = Setup::start().await;
    let mut ws = s.open(GUARD, "/chat").await;
    echo(
        &mut ws,
        Message::text(r#"{"type":"hi"}"#),
        "a JSON object with `type`",
    )
    .await;
    send(&mut ws, Message::text("not json"), "`not json`").await;
    send(&mut ws, Message::text(r#"{"x":1}"#), "`{\"x\":1}`").await;
    let after = Message::text(r#"{"type":"after"}"#);
    send(&mut ws, after.clone(), "the next valid message").await;
    let back = next(&mut ws, "the next valid message").await;
    assert!(
        back == after,
        "the first message back after `not json` and `{{\"x\":1}}` must be the echo of the next \
         valid message {}; got {} (a dropped message reached the backend)",
        show(&after),
        show(&back)
    );
    nothing_more(&mut ws, "after the valid message's echo").await;
    // The tunnel is still usable: drops do not close it.
    echo(
        &mut ws,
        Message::text(r#"{"type":"still open"}"#),
        "after the drops",
    )
    .await;
}

/// The same, seen from the backend: the probe behind the guarded route receives only the
/// valid messages.
#[tokio::test]
async fn the_backend_receives_only_the_valid_messages() {
    let s = Setup::start().await;
    let mut ws = s.open(GUARD, "/probe/contract").await;
    send(&mut ws, Message::text("not json"), "`not json`").await;
    send(
        &mut ws,
        Message::text(r#"{"type":"ok"}"#),
        "a valid message",
    )
    .await;
    let back = next(&mut ws, "a valid message").await;
    assert_eq!(
        back,
        Message::text(r#"{"type":"ok"}"#),
        "the echo of the valid message"
    );
    assert_eq!(
        s.probe_event("the first message it received").await,
        r#"text {"type":"ok"}"#,
        "the first message the backend received must be the valid one (`not json` is dropped)"
    );
}

/// With `max-bytes: "64"`, a 100-byte client message closes the connection, and the client
/// sees close code 1009 (message too big); the message is not echoed.
#[tokio::test]
async fn a_client_message_over_max_bytes_closes_with_1009() {
    let s = Setup::start().await;
    let mut ws = s.open(GUARD, "/big").await;
    echo(
        &mut ws,
        Message::text(r#"{"type":"small"}"#),
        "a message under 64 bytes",
    )
    .await;
    let hundred = format!(r#"{{"type":"{}"}}"#, "x".repeat(100 - 11));
    assert_eq!(hundred.len(), 100);
    send(&mut ws, Message::text(hundred), "a 100-byte message").await;
    closes_with(
        &mut ws,
        1009,
        "a 100-byte message on a route with max-bytes 64",
    )
    .await;
}

/// With `binary: "deny"`, a client's binary message closes the connection with close code
/// 1003 (unsupported data); the message is not echoed.
#[tokio::test]
async fn a_binary_client_message_closes_with_1003_when_binary_is_denied() {
    let s = Setup::start().await;
    let mut ws = s.open(GUARD, "/bin").await;
    send(
        &mut ws,
        Message::binary(vec![1u8, 2, 3]),
        "a binary message",
    )
    .await;
    closes_with(
        &mut ws,
        1003,
        "a binary message on a route with binary: deny",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Redaction towards the client

/// With `redact: "secret"`, the echo backend sends back `my secret` and the client receives
/// `my ***`; text without the word and a binary echo of the same bytes come back untouched.
#[tokio::test]
async fn text_towards_the_client_is_redacted_and_binary_is_not() {
    let s = Setup::start().await;
    let mut ws = s.open(REDACTING, "/").await;
    exchange(
        &mut ws,
        Message::text("my secret"),
        Message::text("my ***"),
        "text echo of `my secret` on a route with redact: secret",
    )
    .await;
    echo(
        &mut ws,
        Message::text("nothing to hide"),
        "text without the word",
    )
    .await;
    echo(
        &mut ws,
        Message::binary(b"my secret".to_vec()),
        "binary echo of `my secret`",
    )
    .await;
    // The same text on an unhooked route is not redacted (the plugin, not the backend, did it).
    let mut open = s.open(OPEN, "/").await;
    echo(
        &mut open,
        Message::text("my secret"),
        "`my secret` on a route without ws-guard",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. The host's 1 MiB limit

/// On a hooked route a 1.5 MiB message closes the tunnel with 1009 (the host's 1 MiB limit);
/// on a route without ws-guard the same 1.5 MiB message passes through its zero-copy tunnel
/// unchanged.
#[tokio::test]
async fn messages_over_1_mib_close_hooked_tunnels_only() {
    let s = Setup::start().await;
    let big: Vec<u8> = (0..MAX_MESSAGE * 3 / 2).map(|i| (i % 251) as u8).collect();

    let mut open = s.open(OPEN, "/").await;
    echo(
        &mut open,
        Message::binary(big.clone()),
        "1.5 MiB on a route without ws-guard",
    )
    .await;
    echo(
        &mut open,
        Message::text("small after big"),
        "unhooked follow-up",
    )
    .await;

    let mut hooked = s.open(REDACTING, "/").await;
    echo(
        &mut hooked,
        Message::text("small first"),
        "hooked route before the big message",
    )
    .await;
    // The proxy may stop reading the oversized message, so its send may fail; the close must
    // still reach the client.
    let _ = timeout(MESSAGE_LIMIT, hooked.send(Message::binary(big))).await;
    closes_with(&mut hooked, 1009, "1.5 MiB on a hooked route").await;
}

/// Messages up to the documented 1 MiB limit pass a hooked tunnel: eight 1 MiB binary
/// messages in a row each come back whole (the hook runs on each, both directions). On
/// failure the ws-guard deadline-hit counter from `/metrics` is shown.
#[tokio::test]
async fn messages_up_to_1_mib_pass_a_hooked_tunnel() {
    let s = Setup::start().await;
    let mut ws = s.open(REDACTING, "/").await;
    let at_limit: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 253) as u8).collect();
    for i in 0..8 {
        let msg = Message::binary(at_limit.clone());
        send(&mut ws, msg.clone(), "a 1 MiB message").await;
        let back = timeout(MESSAGE_LIMIT, ws.next()).await;
        if matches!(&back, Ok(Some(Ok(m))) if *m == msg) {
            continue;
        }
        let metrics = Metrics::scrape(&s.gw).await;
        let hits = metrics.plugin("wasmgress_plugin_deadline_hits_total", "ws-guard");
        let got = match &back {
            Ok(Some(Ok(m))) => show(m),
            other => format!("{other:?}"),
        };
        panic!(
            "1 MiB message #{} (the documented limit) through a hooked tunnel: expected it back \
             whole, got {got}; ws-guard deadline hits so far: {hits:?}",
            i + 1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Control frames

/// Through a hooked tunnel a client ping gets a pong with the same payload, and messages still
/// flow around it.
#[tokio::test]
async fn pings_are_answered_through_a_hooked_tunnel() {
    let s = Setup::start().await;
    let mut ws = s.open(GUARD, "/ping").await;
    send(
        &mut ws,
        Message::Ping(Bytes::from_static(b"are you there")),
        "ping",
    )
    .await;
    assert_eq!(
        next(&mut ws, "ping").await,
        Message::Pong(Bytes::from_static(b"are you there")),
        "a ping through a hooked tunnel must be answered by a pong with its payload"
    );
    echo(
        &mut ws,
        Message::text(r#"{"type":"after ping"}"#),
        "after the ping",
    )
    .await;
}

/// A client close (4000) through a hooked tunnel: the client receives the close reply, the
/// backend receives the close code, both connections end, and the proxy closes the client's
/// TCP connection.
#[tokio::test]
async fn a_client_close_completes_through_a_hooked_tunnel() {
    let s = Setup::start().await;
    let mut ws = s.open(GUARD, "/probe/close").await;
    echo(
        &mut ws,
        Message::text(r#"{"type":"hello"}"#),
        "before closing",
    )
    .await;
    assert_eq!(
        s.probe_event("the first message").await,
        r#"text {"type":"hello"}"#
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    }))
    .await
    .expect("send the close");
    closes_with(&mut ws, 4000, "the close reply to the client's close 4000").await;
    match timeout(CLOSE_LIMIT, ws.next()).await {
        Ok(None) => {}
        Ok(Some(Ok(m))) => panic!("after the close handshake, got {}", show(&m)),
        Ok(Some(Err(e))) => panic!("after the close handshake the WebSocket failed: {e}"),
        Err(_) => panic!("the WebSocket did not end within {CLOSE_LIMIT:?} of the close reply"),
    }
    assert_eq!(
        s.probe_event("the client's close").await,
        "closed 4000",
        "what the backend received for the client's close 4000"
    );
    assert_eq!(s.probe_event("its connection end").await, "ended");
    connection_closes(ws, "client close through a hooked tunnel").await;
}

// ---------------------------------------------------------------------------------------------
// 5. RFC 8441

/// Sends an extended CONNECT for a WebSocket on `client`; the tunnel.
async fn extended_connect(client: &mut h2::client::SendRequest<Bytes>, uri: &str) -> Ws {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
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
    WebSocketStream::from_raw_socket(io, Role::Client, Some(ws::client_config())).await
}

/// A WebSocket opened with HTTP/2 extended CONNECT (h2c) on the guarded route is filtered too:
/// `not json` is dropped and the next valid message's echo is the first and only thing back.
#[tokio::test]
async fn rfc8441_tunnels_on_a_hooked_route_are_filtered() {
    let s = Setup::start().await;
    let tcp = TcpStream::connect(s.gw.http).await.expect("connect");
    let (client, conn) = timeout(MESSAGE_LIMIT, h2::client::handshake(tcp))
        .await
        .expect("HTTP/2 handshake in time")
        .unwrap_or_else(|e| panic!("h2c handshake: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("HTTP/2 connection ready");
    let deadline = Instant::now() + CLOSE_LIMIT;
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "the server's SETTINGS never enabled extended CONNECT"
        );
        sleep(Duration::from_millis(10)).await;
    }
    let mut ws = extended_connect(&mut client, &format!("http://{GUARD}/h2")).await;
    let what = "RFC 8441 tunnel on the guarded route";
    send(&mut ws, Message::text("not json"), what).await;
    let valid = Message::text(r#"{"type":"over h2"}"#);
    send(&mut ws, valid.clone(), what).await;
    let back = next(&mut ws, what).await;
    assert!(
        back == valid,
        "{what}: the first message back after `not json` must be the echo of {}; got {}",
        show(&valid),
        show(&back)
    );
    nothing_more(&mut ws, what).await;
}

// ---------------------------------------------------------------------------------------------
// 6. No compression on hooked routes

/// A raw HTTP/1.1 upgrade to `host` offering permessage-deflate: the connection, the status
/// and the response headers (names in lower case).
async fn raw_upgrade(gw: &Wasmgress, host: &str) -> (TcpStream, u16, Vec<(String, String)>) {
    let mut tcp = TcpStream::connect(gw.http).await.expect("connect");
    let request = format!(
        "GET /ext HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("send the upgrade");
    // Byte by byte, so nothing after the head is consumed.
    let mut head = Vec::new();
    let read_head = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
            assert!(
                head.len() < 16 * 1024,
                "{host}: a response head over 16 KiB"
            );
        }
    };
    timeout(MESSAGE_LIMIT, read_head)
        .await
        .unwrap_or_else(|_| panic!("{host}: no response head within {MESSAGE_LIMIT:?}"));
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{host}: no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (tcp, status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A client offering `Sec-WebSocket-Extensions: permessage-deflate` on a hooked route gets a
/// 101 without `Sec-WebSocket-Extensions` (the backend, which accepts compression whenever
/// offered, never sees the offer), and the uncompressed tunnel works and is hooked. On the same
/// backend without ws-guard, the offer and the backend's acceptance pass through.
#[tokio::test]
async fn permessage_deflate_is_not_negotiated_on_a_hooked_route() {
    let s = Setup::start().await;

    let (_tcp, status, headers) = raw_upgrade(&s.gw, EXT_OPEN).await;
    assert_eq!(status, 101, "unhooked route: {headers:?}");
    assert_eq!(
        s.ext_offer("unhooked route").await.as_deref(),
        Some("permessage-deflate; client_max_window_bits"),
        "without ws-guard the client's offer reaches the backend"
    );
    assert_eq!(
        header(&headers, "sec-websocket-extensions"),
        Some("permessage-deflate"),
        "without ws-guard the backend's acceptance reaches the client: {headers:?}"
    );

    let (tcp, status, headers) = raw_upgrade(&s.gw, EXT_HOOKED).await;
    assert_eq!(status, 101, "hooked route: {headers:?}");
    assert_eq!(
        header(&headers, "sec-websocket-extensions"),
        None,
        "a hooked route's 101 must not negotiate an extension: {headers:?}"
    );
    assert_eq!(
        s.ext_offer("hooked route").await,
        None,
        "on a hooked route the client's extension offer must not reach the backend"
    );
    let io: Box<dyn Io> = Box::new(tcp);
    let mut ws =
        WebSocketStream::from_raw_socket(io, Role::Client, Some(ws::client_config())).await;
    exchange(
        &mut ws,
        Message::text("a secret"),
        Message::text("a ***"),
        "the uncompressed tunnel on the hooked route",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Plain HTTP on a hooked route

/// Plain HTTP requests on a route with ws-guard reach the backend unchanged (a GET with its
/// query, a POST whose body would be dropped as a WebSocket message), while a WebSocket on the
/// very same route is filtered.
#[tokio::test]
async fn plain_http_on_a_hooked_route_is_untouched() {
    let s = Setup::start().await;
    let r = s.gw.get(DUAL, "/page?q=1").await;
    assert_eq!(r.status, 200, "GET on the hooked route: {}", r.summary());
    let echo_json = r.expect_echo();
    assert_eq!(
        (
            echo_json["backend"].as_str(),
            echo_json["path"].as_str(),
            echo_json["method"].as_str()
        ),
        (Some("dual-http"), Some("/page"), Some("GET")),
        "GET on the hooked route: {}",
        r.summary()
    );

    let body = "not json";
    let r =
        s.gw.send(
            &Req::get(DUAL, "/form")
                .method(Method::POST)
                .header("content-type", "text/plain")
                .body(body),
        )
        .await;
    assert_eq!(r.status, 200, "POST on the hooked route: {}", r.summary());
    let echo_json = r.expect_echo();
    assert_eq!(
        (
            echo_json["method"].as_str(),
            echo_json["body_bytes"].as_u64()
        ),
        (Some("POST"), Some(body.len() as u64)),
        "POST on the hooked route: {}",
        r.summary()
    );

    // The same route's WebSocket is hooked.
    let mut ws = s.open(DUAL, "/ws").await;
    send(
        &mut ws,
        Message::text("not json"),
        "WebSocket on the same route",
    )
    .await;
    echo(
        &mut ws,
        Message::text(r#"{"type":"ws"}"#),
        "WebSocket on the same route, after a dropped message",
    )
    .await;
    nothing_more(&mut ws, "WebSocket on the same route").await;
}

//! A WebSocket echo backend (tokio-tungstenite), HTTP/1.1 Upgrade only, as most backends are.
//!
//! Text and binary messages come back unchanged; pings are answered with pongs by the library;
//! a close from the client is answered with the same close code (by tungstenite). The first
//! subprotocol a client offers is accepted. Messages up to 64 MiB are allowed so tests can send
//! large ones. A text message `close:CODE` makes the server close with that code, so tests can
//! check that a backend-initiated close reaches the client.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{WebSocketConfig, frame::coding::CloseCode};

/// Serves WebSocket echo on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(echo(stream));
    }
}

/// Accepts the first subprotocol the client offers. The signature is tungstenite's callback's,
/// whose error type is a whole HTTP response.
#[allow(clippy::result_large_err)]
fn pick_protocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned());
    if let Some(p) = offered.and_then(|p| p.parse().ok()) {
        resp.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, pick_protocol, Some(config)).await
    else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.starts_with("close:") => {
                let code = t[6..].parse::<u16>().unwrap_or(1000);
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "closing as asked".into(),
                };
                let _ = ws.close(Some(frame)).await;
                continue;
            }
            Message::Text(_) | Message::Binary(_) => msg,
            // tungstenite answers a close with the same code by itself; keep reading until
            // the stream ends so that answer is flushed.
            Message::Close(_) => continue,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

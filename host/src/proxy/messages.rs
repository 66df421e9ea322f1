//! WebSocket tunnels whose route's plugins hook messages (`websocket-message`): the proxy ends
//! the WebSocket on both sides, joins each data message (at most [`MAX_MESSAGE`]), runs the
//! hooks over it, and sends what they decide to the other side.
//!
//! Owns the message path only; tunnels without message hooks never come here and keep the
//! zero-copy byte tunnel of `websocket`. Control frames are per hop: pings are answered by
//! whichever side of the proxy receives them (not forwarded), a close from one side is passed
//! to the other and both close handshakes complete. A message over the limit closes both sides
//! with 1009, a plugin's close with its code, a failed fail-closed plugin with 1011. Each
//! direction keeps its idle timeout, for reads and for the other side taking what is sent (a
//! peer that stops reading cannot hold the tunnel), and the bytes queued towards a side are
//! bounded (a ping flood cannot grow them). Extensions (compression) are never negotiated on such
//! tunnels: `websocket::open` removes the offer, since the proxy must read every payload.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};

use super::websocket::{End, Timeouts};
use crate::plugin::{Direction, HookChain, HookRequest, MessageOutcome};

/// Largest data message (also the largest frame) a message-hooked tunnel accepts.
pub const MAX_MESSAGE: usize = crate::plugin::MAX_MESSAGE_BYTES;

/// Bytes queued towards one side before writing waits (tungstenite's default).
const WRITE_BUFFER: usize = 128 << 10;
/// Most bytes ever queued towards one side: one whole message beyond the write buffer. Without
/// it, pongs to a ping flood from a client that does not read would pile up without bound.
const MAX_WRITE_BUFFER: usize = WRITE_BUFFER + MAX_MESSAGE + 4096;

/// What one side sent, as the relay sees it.
enum Read {
    Message(Message),
    /// The side's stream ended (after its close, or abruptly).
    Ended,
    /// The side was silent longer than its timeout.
    Idle,
    TooBig,
    Failed,
}

/// The next message from `side`, or `Idle` once `deadline` (its last message plus its idle
/// timeout) passes: a side's silence is measured from its own last message, whatever the
/// other side does meanwhile.
async fn read<S>(side: &mut WebSocketStream<S>, deadline: tokio::time::Instant) -> Read
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout_at(deadline, side.next()).await {
        Err(_) => Read::Idle,
        Ok(None) | Ok(Some(Err(Error::ConnectionClosed | Error::AlreadyClosed))) => Read::Ended,
        Ok(Some(Err(Error::Capacity(_)))) => Read::TooBig,
        Ok(Some(Err(_))) => Read::Failed,
        Ok(Some(Ok(m))) => Read::Message(m),
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }))
}

/// Relays messages between `client` and `backend` (both already upgraded) through `hooks`.
pub async fn relay<C, B>(
    client: C,
    backend: B,
    hooks: HookChain,
    mut request: Option<Box<HookRequest>>,
    timeouts: Timeouts,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER);
    let mut client = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
    let mut backend = WebSocketStream::from_raw_socket(backend, Role::Client, Some(config)).await;
    let (mut client_open, mut backend_open) = (true, true);
    let now = tokio::time::Instant::now();
    let (mut client_idle, mut backend_idle) = (now + timeouts.send, now + timeouts.read);
    while client_open || backend_open {
        let (direction, read) = tokio::select! {
            r = read(&mut client, client_idle), if client_open => (Direction::ToUpstream, r),
            r = read(&mut backend, backend_idle), if backend_open => (Direction::ToClient, r),
        };
        if matches!(read, Read::Message(_)) {
            let now = tokio::time::Instant::now();
            match direction {
                Direction::ToUpstream => client_idle = now + timeouts.send,
                Direction::ToClient => backend_idle = now + timeouts.read,
            }
        }
        let (from_open, to) = match direction {
            Direction::ToUpstream => (&mut client_open, Side::Backend),
            Direction::ToClient => (&mut backend_open, Side::Client),
        };
        let message = match read {
            Read::Message(m) => m,
            Read::Ended => {
                *from_open = false;
                continue;
            }
            Read::Idle => return closing(&mut client, &mut backend, 1001, "idle", End::Idle).await,
            Read::TooBig => {
                return closing(
                    &mut client,
                    &mut backend,
                    1009,
                    "message too big",
                    End::Error,
                )
                .await;
            }
            Read::Failed => return closing(&mut client, &mut backend, 1002, "", End::Error).await,
        };
        let outcome = match message {
            Message::Text(text) => hooks.run_message(
                &mut request,
                direction,
                crate::plugin::Message {
                    text: true,
                    payload: text.into(),
                },
            ),
            Message::Binary(payload) => hooks.run_message(
                &mut request,
                direction,
                crate::plugin::Message {
                    text: false,
                    payload,
                },
            ),
            // Answered (pings) or consumed (pongs) by this hop's WebSocket.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            close @ Message::Close(_) => {
                // Pass the close on; each side completes its own handshake.
                let _ = send(&mut client, &mut backend, to, close, &timeouts).await;
                continue;
            }
        };
        let forwarded = match outcome {
            MessageOutcome::Drop => continue,
            MessageOutcome::Close(code, reason) => {
                return closing(&mut client, &mut backend, code, &reason, End::Closed).await;
            }
            MessageOutcome::Forward(m) if m.text => match Utf8Bytes::try_from(m.payload) {
                Ok(text) => Message::Text(text),
                Err(_) => return closing(&mut client, &mut backend, 1011, "", End::Error).await,
            },
            MessageOutcome::Forward(m) => Message::Binary(m.payload),
        };
        match send(&mut client, &mut backend, to, forwarded, &timeouts).await {
            Ok(()) => {}
            Err(Sent::Idle) => {
                return closing(&mut client, &mut backend, 1001, "idle", End::Idle).await;
            }
            Err(Sent::Failed) => {
                return closing(&mut client, &mut backend, 1011, "", End::Error).await;
            }
        }
    }
    End::Closed
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

/// Why a send did not complete.
enum Sent {
    /// The side did not take the message within its timeout (it stopped reading).
    Idle,
    Failed,
}

/// Sends `message` to one side, waiting at most that side's timeout for it to be taken: a
/// peer that stops reading must not hold the tunnel (and its connection slots) forever.
async fn send<C, B>(
    client: &mut WebSocketStream<C>,
    backend: &mut WebSocketStream<B>,
    to: Side,
    message: Message,
    timeouts: &Timeouts,
) -> Result<(), Sent>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let sent = match to {
        Side::Client => tokio::time::timeout(timeouts.read, client.send(message)).await,
        Side::Backend => tokio::time::timeout(timeouts.send, backend.send(message)).await,
    };
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Sent::Failed),
        Err(_) => Err(Sent::Idle),
    }
}

/// Sends a close to both sides (best effort) and ends the tunnel as `end`.
async fn closing<C, B>(
    client: &mut WebSocketStream<C>,
    backend: &mut WebSocketStream<B>,
    code: u16,
    reason: &str,
    end: End,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let bound = std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, client.send(close_frame(code, reason))).await;
    let _ = tokio::time::timeout(bound, backend.send(close_frame(code, reason))).await;
    end
}

//! HTTP/2 upstream connections: many calls share few connections, with a cap.
//!
//! Each endpoint gets connections on demand: a call goes to the least busy open connection
//! that carries fewer than [`STREAMS_PER_CONNECTION`] calls; when every connection is that busy,
//! a new one is opened, up to [`MAX_CONNECTIONS`] per endpoint, beyond which calls share the
//! least busy connection (HTTP/2 then queues them until streams free up). A call counts as
//! carried until its response body ends or is dropped (the body holds its [`InFlight`]).
//! Connections that close are forgotten.
//! This module owns connection reuse only; errors become `UpstreamError`s in `upstream`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, PerEndpoint, UpstreamBody, dial};

/// Calls one connection carries before another is opened. Below the usual servers' limit on
/// concurrent streams (100 to 128), so calls rarely queue behind a full connection.
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Connections per endpoint at most.
pub const MAX_CONNECTIONS: usize = 8;

/// Why a call could not be sent.
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

struct Connection {
    sender: http2::SendRequest<UpstreamBody>,
    in_flight: AtomicUsize,
}

#[derive(Default)]
struct Endpoint {
    connections: Mutex<Vec<Arc<Connection>>>,
    /// One caller opens a connection at a time; the others wait and then use it, so a burst of
    /// calls opens the connections it needs, not one each.
    opening: tokio::sync::Mutex<()>,
}

/// The HTTP/2 connections of one transport (h2c, or TLS with ALPN h2) to every endpoint.
pub struct H2Pool {
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    endpoints: PerEndpoint<Endpoint>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Marks a call as carried by its connection until dropped.
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl H2Pool {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, connect_timeout: Duration) -> Self {
        Self {
            tls: tls.map(tokio_rustls::TlsConnector::from),
            connect_timeout,
            endpoints: PerEndpoint::default(),
        }
    }

    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        addr: SocketAddr,
    ) -> Result<(Response<Incoming>, InFlight), SendError> {
        let endpoint = self.endpoints.get(addr);
        let in_flight = match pick(&endpoint) {
            Some(taken) => taken,
            None => {
                let _opener = endpoint.opening.lock().await;
                // Whoever opened before us may have made room.
                match pick(&endpoint) {
                    Some(taken) => taken,
                    None => {
                        // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is rare and its state
                        // large; inline, it would grow every call's future.
                        let c = match Box::pin(self.connect(addr)).await {
                            Ok(c) => Arc::new(c),
                            Err(cause) => return Err(SendError::Connect(cause, Box::new(req))),
                        };
                        c.in_flight.fetch_add(1, Ordering::Relaxed);
                        let mut list = endpoint
                            .connections
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        list.push(c.clone());
                        InFlight(c)
                    }
                }
            }
        };
        let mut sender = in_flight.0.sender.clone();
        let resp = sender
            .send_request(req)
            .await
            .map_err(SendError::Protocol)?;
        Ok((resp, in_flight))
    }

    /// A new connection; `Err` says why not.
    async fn connect(&self, addr: SocketAddr) -> Result<Connection, super::ConnectError> {
        let connected = async {
            let io = dial(addr, self.tls.as_ref()).await?;
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .initial_stream_window_size(H2_STREAM_WINDOW);
            let (sender, conn) = builder
                .handshake(io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok::<_, String>(sender)
        };
        let sender = match tokio::time::timeout(self.connect_timeout, connected).await {
            Ok(connected) => connected.map_err(super::ConnectError::failed)?,
            Err(_) => return Err(super::ConnectError::timed_out(self.connect_timeout)),
        };
        Ok(Connection {
            sender,
            in_flight: AtomicUsize::new(0),
        })
    }
}

/// Takes a place on the connection for the next call, or `None` when a new one should be
/// opened. Counting happens under the lock, so concurrent callers see each other's calls.
fn pick(endpoint: &Endpoint) -> Option<InFlight> {
    let mut list = endpoint
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    list.retain(|c| !c.sender.is_closed());
    let least = list
        .iter()
        .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))?
        .clone();
    let busy = least.in_flight.load(Ordering::Relaxed);
    if busy >= STREAMS_PER_CONNECTION && list.len() < MAX_CONNECTIONS {
        return None;
    }
    least.in_flight.fetch_add(1, Ordering::Relaxed);
    Some(InFlight(least))
}

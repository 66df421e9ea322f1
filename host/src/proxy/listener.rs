//! Listeners: accepting connections, TLS handshakes, and HTTP/1.1 + HTTP/2 serving.
//!
//! Both listeners speak HTTP/1.1 and HTTP/2 (h2c with prior knowledge on the plain one, ALPN on
//! the TLS one). On shutdown they stop accepting and let open connections finish gracefully.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::upstream::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use super::{Conn, Proxy};

/// A slow or silent client must not hold a handshake slot forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` flips, then waits for open connections in `tracker`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    // Extended CONNECT (RFC 8441) lets HTTP/2 clients open WebSockets on a shared connection.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(remote, tls.is_some());
        let (proxy, builder, tls, shutdown) = (
            proxy.clone(),
            builder.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            match tls {
                None => serve_connection(&builder, stream, conn, proxy, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            proxy.tls.handshakes.fetch_add(1, Ordering::Relaxed);
                            serve_connection(&builder, stream, conn, proxy, shutdown).await
                        }
                        Ok(Err(e)) => {
                            proxy.tls.failed_error.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            proxy.tls.failed_timeout.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    conn: Conn,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn.remote;
    // One reference count per request for everything the connection's requests share.
    let shared = Arc::new((proxy, conn));
    let service = service_fn(move |req| {
        let shared = shared.clone();
        // Boxed once here: hyper moves the service future several times (into its dispatcher,
        // and on HTTP/2 into a spawned task per stream), and `handle`'s state machine is large
        // enough that those moves were the biggest memcpy in the profile.
        Box::pin(async move {
            let (proxy, conn) = &*shared;
            proxy.handle(req, conn).await
        })
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

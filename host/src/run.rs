//! The `run` command: wires source -> compile -> publish -> proxy, and keeps it going.
//!
//! Data flows one way: the file source produces snapshots, compile turns each into a
//! generation, the proxy serves whichever generation is current. This module owns that loop,
//! the listeners' lifetimes and shutdown; it makes no routing decisions itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::compile::{self, Compiled, LastGood, Options};
use crate::diagnostic::{Diagnostic, Severity};
use crate::proxy::{Generation, Proxy, Settings, listener};
use crate::source::files::{self, FileSource};
use crate::tls::{self, SniResolver};

/// How long a folder must be quiet after a change before it is re-read.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long open connections get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub manifests: PathBuf,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub compile: Options,
    pub settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] files::Error),
    #[error("cannot listen on {addr} ({listener} listener): {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Compiles what a folder holds once, for `validate` and for startup.
pub fn compile_folder(
    source: &mut FileSource,
    options: &Options,
    previous: &LastGood,
) -> Result<Compiled, files::Error> {
    let snapshot = source.load()?;
    Ok(compile::compile(&snapshot, options, previous))
}

/// Runs the proxy until `stop` resolves, then drains open connections.
pub async fn run(
    options: RunOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let mut source = FileSource::new(&options.manifests);
    let compiled = compile_folder(&mut source, &options.compile, &LastGood::default())?;
    let mut reported = report(&compiled.diagnostics, &HashSet::new());
    let (generation, mut last_good) = split(compiled, 1);
    let proxy = Arc::new(Proxy::new(generation, options.settings.clone()));

    let bind = |listener: &'static str, addr: SocketAddr| async move {
        let bound = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind {
                listener,
                addr,
                source,
            })?;
        let local = bound.local_addr().map_err(|source| RunError::Bind {
            listener,
            addr,
            source,
        })?;
        tracing::info!(listener, addr = %local, "listening");
        Ok::<_, RunError>(bound)
    };
    let http = bind("http", options.http_addr).await?;
    let https = bind("https", options.https_addr).await?;
    let admin_listener = bind("admin", options.admin_addr).await?;

    let admin = Arc::new(Admin::default());
    tokio::spawn(admin::serve(admin_listener, admin.clone()));

    let certs_from = proxy.clone();
    let resolver = SniResolver::new(move |name| certs_from.current().certs.resolve(name));
    let acceptor = TlsAcceptor::from(tls::server_config(Arc::new(resolver)));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let servers = [
        tokio::spawn(listener::serve(
            http,
            None,
            proxy.clone(),
            shutdown_rx.clone(),
            tracker.clone(),
        )),
        tokio::spawn(listener::serve(
            https,
            Some(acceptor),
            proxy.clone(),
            shutdown_rx.clone(),
            tracker.clone(),
        )),
    ];
    admin.set_ready();

    let (_watcher, mut changes) = source.watch(DEBOUNCE)?;
    let reload = async {
        let mut number = 1;
        while changes.recv().await.is_some() {
            let compiled = match compile_folder(&mut source, &options.compile, &last_good) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-read manifests; keeping the current configuration");
                    continue;
                }
            };
            number += 1;
            reported = report(&compiled.diagnostics, &reported);
            let (accepted, rejected) = (compiled.accepted, compiled.rejected);
            let (generation, kept) = split(compiled, number);
            last_good = kept;
            proxy.publish(generation);
            tracing::info!(
                generation = number,
                accepted,
                rejected,
                "configuration applied"
            );
        }
    };
    tokio::select! {
        _ = reload => {}
        _ = stop => tracing::info!("shutting down: no new connections, draining open ones"),
    }
    let _ = shutdown_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after the drain period; closing"
        );
    }
    Ok(())
}

fn split(compiled: Compiled, number: u64) -> (Generation, LastGood) {
    (
        Generation {
            number,
            routes: compiled.routes,
            certs: compiled.certs,
        },
        compiled.last_good,
    )
}

/// Logs the diagnostics that were not logged last time, so an unchanged problem is said once.
fn report(diagnostics: &[Diagnostic], already: &HashSet<Diagnostic>) -> HashSet<Diagnostic> {
    for d in diagnostics.iter().filter(|d| !already.contains(*d)) {
        match d.severity {
            Severity::Error => tracing::error!("{d}"),
            Severity::Warning => tracing::warn!("{d}"),
            Severity::Info => tracing::info!("{d}"),
        }
    }
    diagnostics.iter().cloned().collect()
}

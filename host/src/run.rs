//! The `run` command: wires source -> compile -> publish -> proxy, and keeps it going.
//!
//! Data flows one way: the file source produces snapshots, compile turns each into a
//! generation, the proxy serves whichever generation is current. This module owns that loop,
//! the listeners' lifetimes and shutdown; it makes no routing decisions itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::compile::{self, Compiled, LastGood, Options};
use crate::diagnostic::{Diagnostic, Severity};
use crate::metrics::{self, ConfigStats};
use crate::plugin::Registry;
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
    /// Extra plugins (`*.wasm`), watched and reloaded like manifests.
    pub plugin_dir: Option<PathBuf>,
    /// The built-in plugins, loaded once; reloads start from them.
    pub builtins: Arc<Registry>,
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

/// The built-ins plus every `*.wasm` of `dir`. Plugins that fail to load are left out and
/// described in the returned messages; Ingresses that attach them are then rejected by name.
pub fn load_plugins(builtins: &Registry, dir: Option<&Path>) -> (Registry, Vec<String>) {
    let mut registry = builtins.clone();
    let Some(dir) = dir else {
        return (registry, Vec::new());
    };
    match registry.load_dir(dir) {
        Ok(errors) => (registry, errors.iter().map(ToString::to_string).collect()),
        Err(e) => (registry, vec![e.to_string()]),
    }
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
    mut options: RunOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let mut source = FileSource::new(&options.manifests);
    let compiled = compile_folder(&mut source, &options.compile, &LastGood::default())?;
    let mut reported = report(&compiled.diagnostics, &HashSet::new());
    let first_counts = (compiled.accepted, compiled.rejected);
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

    let config_stats = Arc::new(ConfigStats::default());
    config_stats.applied(1, first_counts.0, first_counts.1);
    let admin = Arc::new(Admin::new(
        metrics::registry(
            config_stats.clone(),
            proxy.tunnels.clone(),
            options.compile.route_stats.clone(),
            proxy.tls.clone(),
        ),
        proxy.clone(),
    ));
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
    let mut plugin_changes = match &options.plugin_dir {
        Some(dir) => Some(files::watch(dir, DEBOUNCE)?),
        None => None,
    };
    let reload = async {
        let mut number = 1;
        loop {
            let plugins_changed = tokio::select! {
                change = changes.recv() => match change {
                    Some(()) => false,
                    None => return,
                },
                Some(()) = async {
                    match &mut plugin_changes {
                        Some((_, rx)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if plugins_changed {
                let (registry, problems) =
                    load_plugins(&options.builtins, options.plugin_dir.as_deref());
                for p in &problems {
                    tracing::error!("{p}");
                }
                options.compile.plugins = Arc::new(registry);
                tracing::info!("plugins reloaded");
            }
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
            config_stats.applied(number, accepted, rejected);
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

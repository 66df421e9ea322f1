//! The `run` and `webhook` commands: wire source -> compile -> publish -> proxy (or ->
//! admission webhook), and keep it going.
//!
//! Data flows one way: a source (a folder, or the Kubernetes API) produces snapshots, compile
//! turns each into a generation, the proxy serves whichever generation is current. This module
//! owns that loop, the plugin registry's rebuilds, the listeners' lifetimes and shutdown; it
//! makes no routing decisions itself. In Kubernetes mode it also hands every compile's outcome
//! to [`cluster`](crate::cluster), which writes status and Events back.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::cluster::{Cluster, ClusterOptions, Outcome};
use crate::compile::{self, Compiled, LastGood, Options};
use crate::diagnostic::{Diagnostic, Severity};
use crate::metrics::{self, ConfigStats};
use crate::plugin::Registry;
use crate::proxy::{Generation, Proxy, Settings, listener};
use crate::route::RouteTable;
use crate::source::files::{self, FileSource};
use crate::source::kube::{self as kube_source, KubeOptions};
use crate::source::{Snapshot, Snapshots};
use crate::tls::{self, SniResolver};
use crate::webhook::{self, View, WebhookOptions};

/// How long a folder must be quiet after a change before it is re-read.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long open connections get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// Where the objects come from.
#[derive(Clone)]
pub enum Source {
    /// A folder of Kubernetes YAML, watched.
    Files { manifests: PathBuf },
    /// The Kubernetes API through reflectors.
    Kube {
        client: ::kube::Client,
        options: KubeOptions,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Files { manifests } => write!(f, "Files({})", manifests.display()),
            Source::Kube { options, .. } => write!(f, "Kube({options:?})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: Source,
    /// Leader election, status and Events; Kubernetes mode only.
    pub cluster: Option<ClusterOptions>,
    /// Extra plugins (`*.wasm`), watched and reloaded like manifests.
    pub plugin_dir: Option<PathBuf>,
    /// The built-in plugins, loaded once; reloads start from them.
    pub builtins: Arc<Registry>,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub compile: Options,
    pub settings: Settings,
    pub limits: listener::Limits,
    /// How long the listeners keep accepting after a shutdown signal, `/readyz` failing.
    pub shutdown_grace: Duration,
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
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    #[error("the source of objects stopped (its folder watch or Kubernetes watches ended)")]
    SourceEnded,
}

/// The built-ins plus every `*.wasm` of `dir`. Plugins that fail to load are left out and
/// described in the returned messages; Ingresses that attach them are then rejected by name.
pub fn load_plugins(builtins: &Registry, dir: Option<&Path>) -> (Registry, Vec<String>) {
    load_all(builtins, dir, &[])
}

/// The built-ins, the plugin folder's and the plugin ConfigMaps' components.
fn load_all(
    builtins: &Registry,
    dir: Option<&Path>,
    blobs: &[(String, Vec<u8>)],
) -> (Registry, Vec<String>) {
    let mut registry = builtins.clone();
    let mut problems = Vec::new();
    if let Some(dir) = dir {
        match registry.load_dir(dir) {
            Ok(errors) => problems.extend(errors.iter().map(ToString::to_string)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    for (origin, bytes) in blobs {
        if let Err(e) = registry.add(origin, bytes) {
            problems.push(e.to_string());
        }
    }
    (registry, problems)
}

/// Builds the plugin registry on the first snapshot, then again when the plugin folder or the
/// plugin ConfigMaps change, and only then: loading instantiates every plugin to ask it to
/// describe itself.
struct Plugins {
    builtins: Arc<Registry>,
    dir: Option<PathBuf>,
    /// The ConfigMap plugins the current registry was built with; `None` before the first.
    blobs: Option<Vec<(String, Vec<u8>)>>,
}

impl Plugins {
    fn new(builtins: Arc<Registry>, dir: Option<PathBuf>) -> Self {
        Self {
            builtins,
            dir,
            blobs: None,
        }
    }

    /// A new registry the first time, and then if `blobs` differ from the last ones or
    /// `dir_changed`.
    fn refresh(&mut self, blobs: Vec<(String, Vec<u8>)>, dir_changed: bool) -> Option<Registry> {
        if !dir_changed && self.blobs.as_ref() == Some(&blobs) {
            return None;
        }
        let blobs = self.blobs.insert(blobs);
        let (registry, problems) = load_all(&self.builtins, self.dir.as_deref(), blobs);
        for p in &problems {
            tracing::error!("{p}");
        }
        tracing::info!(plugins = registry.plugins().len(), "plugins loaded");
        Some(registry)
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

/// Turns snapshots into published generations: rebuilds the plugin registry when plugins
/// changed, compiles against the last good versions and swaps the proxy to the result.
struct Publisher {
    proxy: Arc<Proxy>,
    stats: Arc<ConfigStats>,
    plugins: Plugins,
    compile: Options,
    last_good: LastGood,
    reported: HashSet<Diagnostic>,
    number: u64,
}

impl Publisher {
    /// Compiles `snapshot` and serves it; returns what the cluster is told about it.
    fn publish(&mut self, snapshot: Arc<Snapshot>, dir_changed: bool) -> Outcome {
        if let Some(registry) = self
            .plugins
            .refresh(kube_source::plugin_blobs(&snapshot), dir_changed)
        {
            self.compile.plugins = Arc::new(registry);
        }
        let compiled = compile::compile(&snapshot, &self.compile, &self.last_good);
        self.number += 1;
        self.reported = report(&compiled.diagnostics, &self.reported);
        let (accepted, rejected) = (compiled.accepted, compiled.rejected);
        let served = compiled.last_good.served().map(str::to_string).collect();
        let diagnostics = Arc::new(compiled.diagnostics);
        self.last_good = compiled.last_good;
        self.proxy.publish(Generation {
            number: self.number,
            routes: compiled.routes,
            certs: compiled.certs,
        });
        self.stats.applied(self.number, accepted, rejected);
        tracing::info!(
            generation = self.number,
            accepted,
            rejected,
            "configuration applied"
        );
        Outcome {
            snapshot,
            served,
            diagnostics,
        }
    }
}

/// A source's snapshots: `None` until it has a complete first one, then the newest. The tasks
/// feeding it stop when the returned set is dropped. A folder is read once before this returns,
/// so a broken path fails the start; a folder that later fails to read keeps its last snapshot.
fn snapshots_of(source: &Source) -> Result<(Snapshots, JoinSet<()>), RunError> {
    match source {
        Source::Kube { client, options } => Ok(kube_source::start(client.clone(), options.clone())),
        Source::Files { manifests } => {
            let mut source = FileSource::new(manifests);
            let first = source.load()?;
            let (watcher, mut changes) = source.watch(DEBOUNCE)?;
            let (tx, rx) = watch::channel(Some(Arc::new(first)));
            let mut tasks = JoinSet::new();
            tasks.spawn(async move {
                let _watcher = watcher;
                while changes.recv().await.is_some() {
                    match source.load() {
                        Ok(snapshot) => {
                            if tx.send(Some(Arc::new(snapshot))).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "cannot re-read manifests; keeping the current configuration"
                        ),
                    }
                }
            });
            Ok((rx, tasks))
        }
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    let failed = |source| RunError::Bind {
        listener,
        addr,
        source,
    };
    let bound = TcpListener::bind(addr).await.map_err(failed)?;
    let local = bound.local_addr().map_err(failed)?;
    tracing::info!(listener, addr = %local, "listening");
    Ok(bound)
}

/// Runs the proxy until `stop` resolves, then drains open connections.
pub async fn run(
    options: RunOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let (mut snapshots, _feeding) = snapshots_of(&options.source)?;
    let config_stats = Arc::new(ConfigStats::default());
    let proxy = Arc::new(Proxy::new(
        Generation {
            number: 0,
            routes: RouteTable::default(),
            certs: tls::CertStore::new(options.compile.default_certificate.clone()),
        },
        options.settings.clone(),
    ));
    let mut publisher = Publisher {
        proxy: proxy.clone(),
        stats: config_stats.clone(),
        plugins: Plugins::new(options.builtins.clone(), options.plugin_dir.clone()),
        compile: options.compile.clone(),
        last_good: LastGood::default(),
        reported: HashSet::new(),
        number: 0,
    };
    // A folder's first snapshot is served from the moment the listeners open; the API's comes
    // after every initial list.
    let mut outcome = snapshots
        .borrow_and_update()
        .clone()
        .map(|s| publisher.publish(s, false));

    let http = bind("http", options.http_addr).await?;
    let https = bind("https", options.https_addr).await?;
    let admin_listener = bind("admin", options.admin_addr).await?;

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
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> =
        Arc::new(SniResolver::new(move |name| {
            certs_from.current().certs.resolve(name)
        }));
    let tls_setup = Arc::new(listener::TlsSetup {
        default: tls::server_config(resolver.clone()),
        resolver,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let shared = listener::Shared::new(
        proxy.clone(),
        options.limits.clone(),
        shutdown_rx,
        tracker.clone(),
    );
    let listeners = listener::Listeners {
        http,
        https,
        tls: tls_setup,
    };
    let server = tokio::spawn(listener::serve(listeners, shared));

    let mut plugin_changes = match &options.plugin_dir {
        Some(dir) => Some(files::watch(dir, DEBOUNCE)?),
        None => None,
    };
    let mut cluster = match (&options.source, options.cluster) {
        (Source::Kube { client, .. }, Some(o)) => Some(Cluster::start(client.clone(), o)),
        _ => None,
    };
    let reload = async {
        let mut dir_changed = false;
        loop {
            if let Some(outcome) = outcome.take() {
                admin.set_ready();
                if let Some(cluster) = &cluster {
                    cluster.publish(outcome);
                }
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() {
                    return Err(RunError::SourceEnded);
                },
                Some(()) = next_change(&mut plugin_changes) => dir_changed = true,
            }
            if let Some(snapshot) = snapshots.borrow_and_update().clone() {
                outcome = Some(publisher.publish(snapshot, std::mem::take(&mut dir_changed)));
            }
        }
    };
    let ended = tokio::select! {
        r = reload => r,
        _ = stop => {
            admin.set_draining();
            if !options.shutdown_grace.is_zero() {
                tracing::info!(grace = ?options.shutdown_grace,
                    "shutting down: not ready, still accepting for the grace period");
                tokio::time::sleep(options.shutdown_grace).await;
            }
            tracing::info!("shutting down: no new connections, draining open ones");
            Ok(())
        }
    };
    if let Some(cluster) = cluster.take() {
        cluster.shutdown().await;
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after the drain period; closing"
        );
    }
    ended
}

/// The next change of an optional watched folder; pending forever without one.
async fn next_change(
    changes: &mut Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)>,
) -> Option<()> {
    match changes {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the `webhook` command needs.
#[derive(Clone, Debug)]
pub struct WebhookRunOptions {
    pub source: Source,
    pub plugin_dir: Option<PathBuf>,
    pub builtins: Arc<Registry>,
    pub compile: Options,
    pub webhook: WebhookOptions,
}

/// Runs the admission webhook until `stop` resolves. It listens only once the source has
/// produced its first snapshot (for the API: after every initial list), so a TCP readiness
/// probe means "can judge against the cluster as it is".
pub async fn webhook(
    options: WebhookRunOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let (mut snapshots, _feeding) = snapshots_of(&options.source)?;
    let mut plugins = Plugins::new(options.builtins.clone(), options.plugin_dir.clone());
    let mut compile_options = options.compile.clone();
    let mut plugin_changes = match &options.plugin_dir {
        Some(dir) => Some(files::watch(dir, DEBOUNCE)?),
        None => None,
    };
    let mut view_of = move |snapshot: Arc<Snapshot>, dir_changed: bool| {
        let blobs = kube_source::plugin_blobs(&snapshot);
        if let Some(registry) = plugins.refresh(blobs, dir_changed) {
            compile_options.plugins = Arc::new(registry);
        }
        Arc::new(View {
            snapshot,
            options: Arc::new(compile_options.clone()),
        })
    };
    let first = loop {
        if let Some(s) = snapshots.borrow_and_update().clone() {
            break s;
        }
        if snapshots.changed().await.is_err() {
            return Err(RunError::SourceEnded);
        }
    };
    let (tx, rx) = watch::channel(view_of(first, false));
    let follow = async {
        let mut dir_changed = false;
        loop {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() {
                    return;
                },
                Some(()) = next_change(&mut plugin_changes) => dir_changed = true,
            }
            if let Some(snapshot) = snapshots.borrow_and_update().clone() {
                let _ = tx.send(view_of(snapshot, std::mem::take(&mut dir_changed)));
            }
        }
    };
    tokio::select! {
        r = webhook::serve(options.webhook, rx, stop) => r?,
        _ = follow => return Err(RunError::SourceEnded),
    }
    Ok(())
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

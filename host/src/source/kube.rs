//! The Kubernetes API source: one kube-runtime reflector per kind the controller reads,
//! merged into a [`Snapshot`] after a short batching window.
//!
//! Owns the watches (list, watch, back off and resync on errors, relist on 410 Gone: all
//! kube-runtime's `watcher`) and the decision of *when* the world is worth compiling: never
//! before every reflector finished its initial list, then at most once per window after a
//! change. It must not interpret objects (which Ingress is ours, which Secret is referenced):
//! that is compile's job, exactly as for the file source. While a watch is broken its store
//! keeps the last objects it saw, so routes keep serving what they served.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Api, Client, Resource, ResourceExt};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Snapshot, Snapshots, Sourced};

/// Label that marks a ConfigMap as carrying plugins (`*.wasm` keys of `binaryData`).
pub const PLUGIN_LABEL: &str = "wasmgress.io/plugin";

/// What to watch and how often to compile.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Namespace to watch for namespaced kinds; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Namespace whose labelled ConfigMaps may carry plugins. Plugins are global (any Ingress
    /// can name one), so they come from the controller's own namespace only: a tenant who can
    /// create ConfigMaps in their namespace must not be able to publish code others run.
    pub plugin_namespace: String,
    /// How long after the first change of a batch the snapshot is taken. Bounded latency
    /// rather than a quiet period, so constant endpoint churn cannot starve compiles.
    pub debounce: Duration,
}

/// The stores of every reflector; a snapshot is a copy of them at one moment.
#[derive(Clone)]
struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    plugins: Store<ConfigMap>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingresses: copy(&self.ingresses),
            ingress_classes: copy(&self.classes),
            services: copy(&self.services),
            endpoint_slices: copy(&self.slices),
            endpoints: Vec::new(),
            secrets: copy(&self.secrets),
            config_maps: copy(&self.config_maps),
            plugin_config_maps: copy(&self.plugins),
            problems: Vec::new(),
        }
    }
}

/// The store's objects, in namespace/name order so that equal worlds give equal snapshots.
fn copy<K>(store: &Store<K>) -> Vec<Sourced<K>>
where
    K: Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut objects: Vec<Arc<K>> = store.state();
    objects.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    objects
        .into_iter()
        .map(|o| Sourced {
            origin: None,
            object: (*o).clone(),
        })
        .collect()
}

/// What a reflector task tells the batcher.
enum Signal {
    /// Its initial list completed (again, after a relist).
    Listed(&'static str),
    /// An object changed.
    Changed,
}

/// Starts every reflector and returns the snapshots: `None` until every kind has been listed
/// once, then the newest snapshot after each batch of changes. The tasks stop when the
/// returned set is dropped.
pub fn start(client: Client, options: KubeOptions) -> (Snapshots, JoinSet<()>) {
    let (signal_tx, signal_rx) = mpsc::channel(1024);
    let mut tasks = JoinSet::new();
    let ns = options.namespace.as_deref();
    let scoped =
        |client: &Client| -> (Api<Ingress>, Api<Service>, Api<EndpointSlice>, Api<Secret>) {
            match ns {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                ),
            }
        };
    let (ingresses, services, slices, secrets) = scoped(&client);
    let config_maps: Api<ConfigMap> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let plain = watcher::Config::default;
    let stores = Stores {
        ingresses: reflect(&mut tasks, "Ingress", ingresses, plain(), &signal_tx),
        classes: reflect(
            &mut tasks,
            "IngressClass",
            Api::all(client.clone()),
            plain(),
            &signal_tx,
        ),
        services: reflect(&mut tasks, "Service", services, plain(), &signal_tx),
        slices: reflect(&mut tasks, "EndpointSlice", slices, plain(), &signal_tx),
        secrets: reflect(&mut tasks, "Secret", secrets, plain(), &signal_tx),
        config_maps: reflect(&mut tasks, "ConfigMap", config_maps, plain(), &signal_tx),
        plugins: reflect(
            &mut tasks,
            "ConfigMap (plugins)",
            Api::namespaced(client, &options.plugin_namespace),
            plain().labels(PLUGIN_LABEL),
            &signal_tx,
        ),
    };
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    tasks.spawn(batch(stores, signal_rx, snapshot_tx, options.debounce));
    (snapshot_rx, tasks)
}

/// Kinds a snapshot waits for.
const KINDS: usize = 7;

/// One reflector: keeps `Store<K>` current and reports to the batcher. Watch errors are
/// logged; `default_backoff` spaces the retries and the watcher relists after 410 Gone.
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    signals: &mpsc::Sender<Signal>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let signals = signals.clone();
    let stream = watcher(api, config)
        .default_backoff()
        // Nobody reads managedFields; for Secrets and Services it is most of the object.
        .modify(|o: &mut K| {
            o.meta_mut().managed_fields = None;
        })
        .reflect(writer);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let signal = match event {
                Ok(watcher::Event::InitDone) => {
                    if failing {
                        tracing::info!(kind, "watch recovered");
                        failing = false;
                    }
                    Signal::Listed(kind)
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
                Err(e) => {
                    tracing::warn!(kind, error = %e, "watch failed; serving the last objects seen while retrying");
                    failing = true;
                    continue;
                }
            };
            if signals.send(signal).await.is_err() {
                return;
            }
        }
    });
    store
}

/// Collects signals into snapshots: the first after every kind's initial list, then one per
/// `window` after a change.
async fn batch(
    stores: Stores,
    mut signals: mpsc::Receiver<Signal>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    window: Duration,
) {
    let mut listed: Vec<&'static str> = Vec::with_capacity(KINDS);
    while listed.len() < KINDS {
        match signals.recv().await {
            Some(Signal::Listed(kind)) if !listed.contains(&kind) => {
                tracing::debug!(kind, "initial list done");
                listed.push(kind);
            }
            Some(_) => {}
            None => return,
        }
    }
    tracing::info!("every watch has listed; compiling the first snapshot");
    let _ = snapshots.send(Some(Arc::new(stores.snapshot())));
    loop {
        // Any signal (a change, or a relist that may have replaced objects) starts a window.
        if signals.recv().await.is_none() {
            return;
        }
        tokio::time::sleep(window).await;
        while signals.try_recv().is_ok() {}
        if snapshots.send(Some(Arc::new(stores.snapshot()))).is_err() {
            return;
        }
    }
}

/// The plugins of the labelled ConfigMaps: (origin for messages, bytes) per `*.wasm` key of
/// `binaryData`, in a stable order. Other keys are ignored (a README beside the plugin is fine).
pub fn plugin_blobs(snapshot: &Snapshot) -> Vec<(String, Vec<u8>)> {
    let mut blobs = Vec::new();
    for cm in &snapshot.plugin_config_maps {
        let cm = &cm.object;
        let Some(data) = &cm.binary_data else {
            continue;
        };
        for (key, bytes) in data {
            if key.ends_with(".wasm") {
                blobs.push((
                    format!(
                        "ConfigMap {}/{} key {key}",
                        cm.namespace().unwrap_or_default(),
                        cm.name_any()
                    ),
                    bytes.0.clone(),
                ));
            }
        }
    }
    blobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn plugin_blobs_take_wasm_keys_only() {
        let mut data = BTreeMap::new();
        data.insert("auth.wasm".to_string(), ByteString(vec![0, 97, 115, 109]));
        data.insert("README".to_string(), ByteString(b"docs".to_vec()));
        let mut cm = ConfigMap {
            binary_data: Some(data),
            ..Default::default()
        };
        cm.metadata.name = Some("auth".into());
        cm.metadata.namespace = Some("wasmgress".into());
        let snapshot = Snapshot {
            plugin_config_maps: vec![Sourced {
                origin: None,
                object: cm,
            }],
            ..Default::default()
        };
        let blobs = plugin_blobs(&snapshot);
        assert_eq!(blobs.len(), 1);
        assert_eq!(blobs[0].0, "ConfigMap wasmgress/auth key auth.wasm");
        assert_eq!(blobs[0].1, vec![0, 97, 115, 109]);
    }
}

//! Writing back to the cluster: leader election, Ingress status and Events.
//!
//! Every replica compiles and serves the same Ingresses; one of them, the holder of a
//! `coordination.k8s.io` Lease ([`leader`]), also tells the cluster about them: the addresses
//! they are reachable at in `status.loadBalancer.ingress` ([`status`]) and what compile said
//! about each one as Events ([`events`]). The run loop hands each compile's [`Outcome`] to
//! [`Cluster::publish`] and goes on; the writes happen on tasks owned by [`Cluster`].
//!
//! This module owns the Lease named by `election_id`, that one status field, and the Events it
//! posts. It must not touch anything that affects serving (routes, certificates, the
//! snapshot), nor any Ingress's spec or metadata: losing the Lease or the API server changes
//! nothing about traffic, only what the cluster is told.

mod events;
mod leader;
mod status;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::diagnostic::Diagnostic;
use crate::source::Snapshot;

/// client-go's default `LeaseDuration`.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Who we are and what to publish.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `reportingController` of our Events, e.g. `wasmgress.io/ingress-controller`.
    pub controller_name: String,
    /// This replica's name (the pod name): the Lease holder identity and the Events'
    /// `reportingInstance`. Must be unique among replicas; when empty this replica never
    /// leads (an empty holder means "free" to everyone).
    pub identity: String,
    /// The Lease's name.
    pub election_id: String,
    /// The Lease's namespace.
    pub election_namespace: String,
    /// How long a Lease holds without renewal ([`DEFAULT_LEASE_DURATION`]). The leader renews
    /// every third of it and stops acting as leader two thirds after its last renewal; others
    /// look every 2 s.
    pub lease_duration: Duration,
    /// `--publish-service` (namespace, name): its load-balancer addresses, else its
    /// externalIPs, go into Ingress status. It must be in the snapshot.
    pub publish_service: Option<(String, String)>,
    /// `--publish-status-address`: wins over the Service. IPs become `{ip}`, anything else
    /// `{hostname}`; an element may hold several, comma-separated.
    pub publish_addresses: Vec<String>,
}

/// What one compile produced, as far as the cluster is concerned.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The snapshot compiled: the Ingresses (with uid, resourceVersion and current status)
    /// and the Services (for the publish Service).
    pub snapshot: Arc<Snapshot>,
    /// `namespace/name` of every Ingress served: accepted ones plus rejected ones still
    /// serving their last good version.
    pub served: BTreeSet<String>,
    /// Every diagnostic of that compile.
    pub diagnostics: Arc<Vec<Diagnostic>>,
}

/// Aborts a task when dropped, so dropping [`Cluster`] stops everything it started.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The cluster writer: leader election plus the status and Event tasks.
///
/// Dropping it stops the tasks at once (the Lease then expires on its own);
/// [`Cluster::shutdown`] also releases the Lease so another replica takes over within its
/// retry period. Neither clears Ingress status: the other replicas keep serving.
pub struct Cluster {
    leadership: watch::Receiver<bool>,
    outcomes: watch::Sender<Option<Arc<Outcome>>>,
    stop: watch::Sender<bool>,
    election: Option<Task>,
    /// How long the election may take to release the Lease.
    release_wait: Duration,
    writers: Vec<Task>,
}

impl Cluster {
    /// Starts leader election and the writers. Must be called inside a Tokio runtime.
    pub fn start(client: kube::Client, options: ClusterOptions) -> Cluster {
        let (leader_tx, leadership) = watch::channel(false);
        let (outcomes, _) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &options.election_namespace);
        let settings = leader::Settings {
            identity: options.identity.clone(),
            name: options.election_id.clone(),
            lease_duration: options.lease_duration,
        };
        let release_wait = settings.release_timeout();
        let election = Task(tokio::spawn(leader::run(
            leases, settings, leader_tx, stop_rx,
        )));
        let source = status::AddressSource {
            fixed: options.publish_addresses.clone(),
            service: options.publish_service.clone(),
        };
        let reporter = Reporter {
            controller: options.controller_name.clone(),
            instance: (!options.identity.is_empty()).then(|| options.identity.clone()),
        };
        let writers = vec![
            Task(tokio::spawn(status::run(
                client.clone(),
                source,
                outcomes.subscribe(),
                leadership.clone(),
            ))),
            Task(tokio::spawn(events::run(
                client,
                reporter,
                outcomes.subscribe(),
                leadership.clone(),
            ))),
        ];
        Cluster {
            leadership,
            outcomes,
            stop,
            election: Some(election),
            release_wait,
            writers,
        }
    }

    /// Whether this replica holds the Lease right now.
    pub fn is_leader(&self) -> bool {
        *self.leadership.borrow()
    }

    /// Leadership as it changes (`true` while leading).
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.clone()
    }

    /// Hands over the latest compile. Never blocks: the writers pick up the newest outcome
    /// when they are ready, skipping any they did not get to.
    pub fn publish(&self, outcome: Outcome) {
        self.outcomes.send_replace(Some(Arc::new(outcome)));
    }

    /// Stops the writers, then steps down and releases the Lease if we hold it (waiting at
    /// most a few seconds for the API).
    pub async fn shutdown(mut self) {
        for mut writer in self.writers.drain(..) {
            writer.0.abort();
            let _ = (&mut writer.0).await;
        }
        let _ = self.stop.send(true);
        if let Some(mut election) = self.election.take() {
            // The election bounds its own release; this only guards against it hanging.
            let wait = self.release_wait + Duration::from_secs(1);
            if tokio::time::timeout(wait, &mut election.0).await.is_err() {
                tracing::warn!(
                    "leader election did not stop in time; the Lease expires on its own"
                );
            }
        }
    }
}

//! Sources turn the outside world into a [`Snapshot`]: the typed Kubernetes objects the
//! controller cares about, and nothing else.
//!
//! A source never interprets objects (which Ingress is ours, what a path means): that is
//! `compile`'s job. Downstream code must not know which source produced a snapshot. Today there
//! are two: [`files`], a folder of Kubernetes YAML, and [`kube`], reflectors on the Kubernetes API.

pub mod files;
pub mod kube;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::diagnostic::Diagnostic;

/// A source's snapshots as they come: `None` until it has a complete first one, then the
/// newest.
pub type Snapshots = tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;

/// An object plus where it came from, so diagnostics can point at a file.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub origin: Option<Arc<str>>,
    pub object: T,
}

/// Everything compile needs, as of one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingresses: Vec<Sourced<Ingress>>,
    pub ingress_classes: Vec<Sourced<IngressClass>>,
    pub services: Vec<Sourced<Service>>,
    pub endpoint_slices: Vec<Sourced<EndpointSlice>>,
    pub endpoints: Vec<Sourced<Endpoints>>,
    pub secrets: Vec<Sourced<Secret>>,
    /// Every ConfigMap in scope, for the objects routes name (`auth-proxy-set-headers`).
    pub config_maps: Vec<Sourced<ConfigMap>>,
    /// ConfigMaps carrying plugins (labelled `wasmgress.io/plugin`); compile ignores them, the
    /// run loop turns them into the plugin registry compile uses.
    pub plugin_config_maps: Vec<Sourced<ConfigMap>>,
    /// Problems reading the source itself (an unparsable file, an object of the wrong shape).
    pub problems: Vec<Diagnostic>,
}

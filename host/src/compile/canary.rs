//! Canary Ingresses (ingress-nginx `canary: "true"`): what a canary Ingress may carry, and
//! attaching its paths to the main routes with the same host, path and path type.
//!
//! A canary never serves on its own and never decides its hosts' certificates or policy: the
//! requests it takes are served under the main route's policy, as in ingress-nginx, so a canary
//! cannot open what its main route restricts. It attaches only to a main route of its own
//! namespace: a tenant cannot take a share of another tenant's traffic. Whatever the two
//! Ingresses' ages, the canary attaches to whichever main route won its host and path.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::ingress::{Unit, UnitPath};
use crate::canary::Canary;
use crate::compat::NGINX_PREFIX;
use crate::diagnostic::Diagnostic;
use crate::route::{HostMatch, PathKind};

/// What a canary Ingress carries that it must not: `(field, message, rejects)`.
pub(super) fn check_unit(
    annotations: &BTreeMap<String, String>,
    has_default_backend: bool,
    certificates: &mut Vec<(String, Arc<CertifiedKey>)>,
) -> Vec<(String, String, bool)> {
    let mut found = Vec::new();
    if has_default_backend {
        found.push((
            "spec.defaultBackend".into(),
            "a canary Ingress cannot have a defaultBackend here: it attaches only to the main routes with the same host and path; put the canary's paths in rules".into(),
            true,
        ));
    }
    if !certificates.is_empty() {
        certificates.clear();
        found.push((
            "spec.tls".into(),
            "not used: a canary Ingress's hosts are served with the main Ingress's certificates"
                .into(),
            false,
        ));
    }
    let ignored: Vec<&str> = annotations
        .keys()
        .filter_map(|k| k.strip_prefix(NGINX_PREFIX))
        .filter(|k| !k.starts_with("canary"))
        .collect();
    if !ignored.is_empty() {
        found.push((
            "metadata.annotations".into(),
            format!(
                "ignored on a canary Ingress, whose requests are served under the main Ingress's policy (as in ingress-nginx): {}",
                ignored.join(", ")
            ),
            false,
        ));
    }
    found
}

/// A main route's identity: host, path kind and the path as the route table keys it.
type RouteKey = (HostMatch, PathKind, String);

fn route_key(p: &UnitPath) -> RouteKey {
    let path = match p.kind {
        PathKind::Prefix => p.path.trim_end_matches('/').to_owned(),
        _ => p.path.clone(),
    };
    (p.host.clone(), p.kind, path)
}

/// One canary path waiting for its main route.
struct Pending<'u> {
    unit: &'u Unit,
    path: &'u UnitPath,
    canary: Arc<Canary>,
    /// The main Ingress it attached to.
    attached: bool,
    /// Why a main route with this host and path could not take it.
    refused: Option<String>,
}

/// The canary paths of a generation, by the main route they belong to.
pub(super) struct Canaries<'u> {
    pending: HashMap<RouteKey, Pending<'u>>,
}

impl<'u> Canaries<'u> {
    /// The canary units' paths (units in precedence order: the oldest canary of a route wins,
    /// a younger one is reported).
    pub fn collect(units: &'u [Arc<Unit>], diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut pending: HashMap<RouteKey, Pending<'u>> = HashMap::new();
        for unit in units {
            let Some(rule) = &unit.canary else { continue };
            for path in &unit.paths {
                let key = route_key(path);
                if let Some(first) = pending.get(&key) {
                    diagnostics.push(
                        Diagnostic::error(
                            format!("Ingress {}", unit.key),
                            &path.field,
                            format!(
                                "host {} path {} already has a canary, the older Ingress {}; a main route takes at most one canary",
                                path.host, path.path, first.unit.key
                            ),
                        )
                        .at(unit.origin.clone()),
                    );
                    continue;
                }
                let canary = Arc::new(Canary {
                    rule: rule.clone(),
                    backend: path.backend.clone(),
                    ingress: unit.key.clone(),
                });
                pending.insert(
                    key,
                    Pending {
                        unit,
                        path,
                        canary,
                        attached: false,
                        refused: None,
                    },
                );
            }
        }
        Self { pending }
    }

    /// The canary for a main route about to be added by `main` (not a canary itself).
    pub fn for_main(&mut self, main: &Unit, path: &UnitPath) -> Option<Arc<Canary>> {
        let pending = self.pending.get_mut(&route_key(path))?;
        if namespace(&main.key) != namespace(&pending.unit.key) {
            pending.refused.get_or_insert_with(|| {
                format!(
                    "the main route for host {} path {} belongs to Ingress {} of another namespace; a canary attaches only to a main Ingress of its own namespace",
                    path.host, path.path, main.key
                )
            });
            return None;
        }
        Some(pending.canary.clone())
    }

    /// Records that the main route for `path` won its place in the table.
    pub fn attached(&mut self, path: &UnitPath) {
        if let Some(pending) = self.pending.get_mut(&route_key(path)) {
            pending.attached = true;
        }
    }

    /// Reports the canary paths no main route took; returns the canary Ingresses that have
    /// one (they are rejected: a canary never serves on its own).
    pub fn finish(self, diagnostics: &mut Vec<Diagnostic>) -> Vec<Arc<str>> {
        let mut rejected: Vec<Arc<str>> = Vec::new();
        let mut unattached: Vec<_> = self.pending.into_values().filter(|p| !p.attached).collect();
        unattached.sort_by(|a, b| (&a.unit.key, &a.path.field).cmp(&(&b.unit.key, &b.path.field)));
        for p in unattached {
            let why = p.refused.unwrap_or_else(|| {
                format!(
                    "no main Ingress in namespace {} serves host {} path {} ({:?}): a canary never serves on its own",
                    namespace(&p.unit.key),
                    p.path.host,
                    p.path.path,
                    p.path.kind
                )
            });
            diagnostics.push(
                Diagnostic::error(format!("Ingress {}", p.unit.key), &p.path.field, why)
                    .at(p.unit.origin.clone()),
            );
            if !rejected.contains(&p.unit.key) {
                rejected.push(p.unit.key.clone());
            }
        }
        rejected
    }
}

fn namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

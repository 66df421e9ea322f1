//! Canary Ingresses (ingress-nginx `canary: "true"`): what a canary Ingress may carry, and
//! attaching its paths to the main routes with the same host, path and path type.
//!
//! A canary never serves on its own and never decides its hosts' certificates or policy: the
//! requests it takes are served under the main route's policy, as in ingress-nginx, so a canary
//! cannot open what its main route restricts. It attaches only to a main route of its own
//! namespace: a tenant cannot take a share of another tenant's traffic. Whatever the two
//! Ingresses' ages, the canary attaches to whichever main route won its host and path.

use std::collections::{BTreeMap, HashMap};
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

/// The canary paths of a generation, by the main route they attach to. A canary Ingress
/// attaches whole or not at all: every one of its paths must find a main route of its own
/// namespace that no older canary took, else it is rejected and none of its paths serve.
pub(super) struct Canaries {
    by_route: HashMap<RouteKey, Arc<Canary>>,
    rejected: Vec<Arc<str>>,
}

impl Canaries {
    /// Matches the canary units' paths with the main routes (`units` in precedence order, the
    /// order in which the route table lets the first Ingress of a host and path win).
    pub fn collect(units: &[Arc<Unit>], diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut mains: HashMap<RouteKey, &Unit> = HashMap::new();
        for unit in units.iter().filter(|u| u.canary.is_none()) {
            for path in &unit.paths {
                mains.entry(route_key(path)).or_insert(unit);
            }
        }
        let mut by_route: HashMap<RouteKey, (Arc<Canary>, &Unit)> = HashMap::new();
        let mut rejected = Vec::new();
        for unit in units {
            let Some(rule) = &unit.canary else { continue };
            let mut found = Vec::new();
            for path in &unit.paths {
                let key = route_key(path);
                let why = match (mains.get(&key), by_route.get(&key)) {
                    (_, Some((_, older))) => Some(format!(
                        "host {} path {} already has a canary, the older Ingress {}; a main route takes at most one canary",
                        path.host, path.path, older.key
                    )),
                    (None, None) => Some(format!(
                        "no main Ingress in namespace {} serves host {} path {} ({:?}): a canary never serves on its own",
                        namespace(&unit.key),
                        path.host,
                        path.path,
                        path.kind
                    )),
                    (Some(main), None) if namespace(&main.key) != namespace(&unit.key) => {
                        Some(format!(
                            "the main route for host {} path {} belongs to Ingress {} of another namespace; a canary attaches only to a main Ingress of its own namespace",
                            path.host, path.path, main.key
                        ))
                    }
                    (Some(_), None) => None,
                };
                found.push((path, key, why));
            }
            if found.iter().all(|(_, _, why)| why.is_none()) {
                for (path, key, _) in found {
                    let canary = Arc::new(Canary {
                        rule: rule.clone(),
                        backend: path.backend.clone(),
                        ingress: unit.key.clone(),
                    });
                    by_route.insert(key, (canary, unit));
                }
                continue;
            }
            for (path, _, why) in found {
                let Some(why) = why else { continue };
                diagnostics.push(
                    Diagnostic::error(format!("Ingress {}", unit.key), &path.field, why)
                        .at(unit.origin.clone()),
                );
            }
            diagnostics.push(
                Diagnostic::error(
                    format!("Ingress {}", unit.key),
                    "",
                    "canary rejected: none of its paths take traffic",
                )
                .at(unit.origin.clone()),
            );
            rejected.push(unit.key.clone());
        }
        Self {
            by_route: by_route.into_iter().map(|(k, (c, _))| (k, c)).collect(),
            rejected,
        }
    }

    /// The canary of the main route `main` is about to add for `path`, if it has one.
    pub fn for_main(&self, main: &Unit, path: &UnitPath) -> Option<Arc<Canary>> {
        let canary = self.by_route.get(&route_key(path))?;
        // Only the winning main route keeps it; a younger loser's route is dropped anyway,
        // and one of another namespace never gets it.
        (namespace(&main.key) == namespace(&canary.ingress)).then(|| canary.clone())
    }

    /// The canary Ingresses rejected (they serve nothing).
    pub fn rejected(self) -> Vec<Arc<str>> {
        self.rejected
    }
}

fn namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

//! Compile: a [`Snapshot`] to what the proxy serves (route table and certificates) plus the
//! diagnostics a user needs.
//!
//! A pure function of the snapshot, the options and the previous result: no I/O, no clocks.
//! Each Ingress is validated on its own, so one broken Ingress is reported and left out while
//! the rest serve; an Ingress that compiled before and is now broken keeps its last good
//! version. Precedence between Ingresses (conflicting paths, certificates, default backends) is
//! oldest creationTimestamp first, then namespace/name, and every conflict is reported.

mod backend;
pub mod class;
mod ingress;

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

pub use class::Identity;

use crate::diagnostic::{Diagnostic, Severity};
use crate::route::{HostMatch, Policy, Route, RouteTable, RouteTableBuilder};
use crate::source::Snapshot;
use crate::tls::CertStore;
use ingress::Unit;

/// What compile needs besides the snapshot.
#[derive(Clone, Debug)]
pub struct Options {
    pub identity: Identity,
    /// Policy every route starts from (the controller-wide defaults).
    pub defaults: Policy,
    pub default_certificate: Arc<CertifiedKey>,
}

/// One compiled generation.
#[derive(Debug)]
pub struct Compiled {
    pub routes: RouteTable,
    pub certs: CertStore,
    pub diagnostics: Vec<Diagnostic>,
    /// Ingresses of ours that compiled cleanly.
    pub accepted: usize,
    /// Ingresses of ours that were rejected (some may still serve their last good version).
    pub rejected: usize,
    /// What the next compile falls back to for Ingresses that break.
    pub last_good: LastGood,
}

/// The last good compiled form of each Ingress, carried from one compile to the next.
#[derive(Debug, Default)]
pub struct LastGood(HashMap<Arc<str>, Arc<Unit>>);

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.rejected > 0
    }
}

pub fn compile(snapshot: &Snapshot, options: &Options, previous: &LastGood) -> Compiled {
    let mut diagnostics = snapshot.problems.clone();
    let mut resolver = backend::Resolver::new(snapshot);
    let secrets = snapshot
        .secrets
        .iter()
        .map(|s| {
            let m = &s.object.metadata;
            (
                (
                    m.namespace.as_deref().unwrap_or("default"),
                    m.name.as_deref().unwrap_or(""),
                ),
                &s.object,
            )
        })
        .collect();
    let mut cx = ingress::Context {
        resolver: &mut resolver,
        secrets: &secrets,
        defaults: &options.defaults,
    };

    let (mut accepted, mut rejected) = (0, 0);
    let mut units: Vec<Arc<Unit>> = Vec::new();
    for sourced in &snapshot.ingresses {
        let ingress = &sourced.object;
        let meta = &ingress.metadata;
        let label = format!(
            "Ingress {}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        );
        if let Err(why) = options.identity.claims(ingress, &snapshot.ingress_classes) {
            diagnostics.push(
                Diagnostic::info(label, "", format!("ignored: {why}")).at(sourced.origin.clone()),
            );
            continue;
        }
        match ingress::compile(ingress, sourced.origin.clone(), &mut cx) {
            Ok((unit, notes)) => {
                accepted += 1;
                diagnostics.extend(notes);
                units.push(Arc::new(unit));
            }
            Err(errors) => {
                rejected += 1;
                diagnostics.extend(errors);
                let key = format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or("default"),
                    meta.name.as_deref().unwrap_or("")
                );
                let fallback = previous.0.get(key.as_str());
                let note = match fallback {
                    Some(unit) => {
                        units.push(unit.clone());
                        "rejected; still serving its last good version"
                    }
                    None => "rejected; not serving",
                };
                diagnostics.push(Diagnostic::error(label, "", note).at(sourced.origin.clone()));
            }
        }
    }

    units.sort_by(|a, b| a.order.cmp(&b.order));
    let certs = certificates(&units, options, &mut diagnostics);
    let routes = routes(&units, &certs, &mut diagnostics);
    let last_good = LastGood(units.into_iter().map(|u| (u.key.clone(), u)).collect());
    Compiled {
        routes,
        certs,
        diagnostics,
        accepted,
        rejected,
        last_good,
    }
}

fn certificates(units: &[Arc<Unit>], options: &Options, diagnostics: &mut Vec<Diagnostic>) -> CertStore {
    let mut store = CertStore::new(options.default_certificate.clone());
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for unit in units {
        for (host, key) in &unit.certificates {
            if store.insert(host, key.clone()) {
                owner.insert(host, &unit.key);
            } else if owner.get(host.as_str()) != Some(&&*unit.key) {
                diagnostics.push(
                    Diagnostic::warning(
                        format!("Ingress {}", unit.key),
                        "spec.tls",
                        format!(
                            "host {host} already has a certificate from Ingress {}; that one is served",
                            owner.get(host.as_str()).copied().unwrap_or("?")
                        ),
                    )
                    .at(unit.origin.clone()),
                );
            }
        }
    }
    store
}

fn routes(units: &[Arc<Unit>], certs: &CertStore, diagnostics: &mut Vec<Diagnostic>) -> RouteTable {
    let mut table = RouteTableBuilder::default();
    for unit in units {
        let conflict = |field: &str, winner: &Route| {
            Diagnostic::warning(
                format!("Ingress {}", unit.key),
                field,
                format!(
                    "the same host and path is already served by the older Ingress {}; that one wins",
                    winner.ingress
                ),
            )
            .at(unit.origin.clone())
        };
        for p in &unit.paths {
            let mut policy = unit.policy.clone();
            policy.ssl_redirect &= match &p.host {
                HostMatch::Exact(h) => certs.covers(h),
                HostMatch::Wildcard(s) => certs.covers(&format!("*.{s}")),
                HostMatch::Any => false,
            };
            let route = Arc::new(Route {
                ingress: unit.key.clone(),
                backend: p.backend.clone(),
                policy,
            });
            if let Err(winner) = table.add(&p.host, p.kind, &p.path, route) {
                if winner.ingress != unit.key {
                    diagnostics.push(conflict(&p.field, &winner));
                }
            }
        }
        if let Some(backend) = &unit.default_backend {
            let mut policy = unit.policy.clone();
            policy.ssl_redirect = false;
            let route = Arc::new(Route {
                ingress: unit.key.clone(),
                backend: backend.clone(),
                policy,
            });
            if let Err(winner) = table.set_default_backend(route) {
                diagnostics.push(Diagnostic::warning(
                    format!("Ingress {}", unit.key),
                    "spec.defaultBackend",
                    format!("the default backend of the older Ingress {} wins", winner.ingress),
                ).at(unit.origin.clone()));
            }
        }
    }
    table.build()
}

/// Severity counts, for a one-line summary.
pub fn count(diagnostics: &[Diagnostic], severity: Severity) -> usize {
    diagnostics.iter().filter(|d| d.severity == severity).count()
}

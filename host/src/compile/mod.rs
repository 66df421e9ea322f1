//! Compile: a [`Snapshot`] to what the proxy serves (route table and certificates) plus the
//! diagnostics a user needs.
//!
//! A pure function of the snapshot, the options and the previous result: no I/O, no clocks.
//! Each Ingress is validated on its own, so one broken Ingress is reported and left out while
//! the rest serve; an Ingress that compiled before and is now broken keeps its last good
//! version. Precedence between Ingresses (conflicting paths, certificates, default backends) is
//! oldest creationTimestamp first, then namespace/name, and every conflict is reported.

mod access;

pub use access::LimitsRegistry;
pub mod backend;
mod canary;
pub mod class;
mod ingress;

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

pub use backend::EndpointGuard;
pub use class::Identity;

use crate::diagnostic::{Diagnostic, Severity};
use crate::metrics::{RouteLabels, RouteStatsRegistry};
use crate::plugin;
use crate::policy::Protocol;
use crate::route::{Backend, HostMatch, Policy, Route, RouteTable, RouteTableBuilder};
use crate::source::Snapshot;
use crate::tls::CertStore;
use crate::upstream::{Transport, Upstreams};
use ingress::{Mode, Unit};

/// What compile needs besides the snapshot.
#[derive(Clone, Debug)]
pub struct Options {
    pub identity: Identity,
    /// Policy every route starts from (the controller-wide defaults).
    pub defaults: Policy,
    pub default_certificate: Arc<CertifiedKey>,
    /// Shared upstream clients, so connection pools outlive generations.
    pub upstreams: Arc<Upstreams>,
    /// The plugins Ingresses can use: built-ins and loaded ones.
    pub plugins: Arc<plugin::Registry>,
    /// Per-route counters, kept across generations.
    pub route_stats: Arc<RouteStatsRegistry>,
    /// The controller's own default backend (`--default-backend-service NS/NAME`).
    pub default_backend_service: Option<(String, String)>,
    /// Endpoint addresses refused (cluster mode without `--allow-local-endpoints`).
    pub endpoint_guard: Option<EndpointGuard>,
    /// Routes may reference Secrets of other namespaces (`--allow-cross-namespace-resources`).
    pub allow_cross_namespace_resources: bool,
    /// Rate-limit state per Ingress, kept across generations.
    pub limits: Arc<LimitsRegistry>,
    /// Controller-wide external authentication (`--global-auth-url` and friends), for
    /// Ingresses without their own that do not set `enable-global-auth: "false"`.
    pub global_auth: Option<crate::plugin::ExternalAuthRule>,
    /// Paths external authentication never covers (`--no-auth-locations`).
    pub no_auth_locations: Arc<[String]>,
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

/// The last good *spec* of each Ingress served, carried from one compile to the next. A
/// rejected Ingress is compiled again from it against the current snapshot (Services,
/// endpoints and Secrets as they are now), so its last good version never pins pod addresses
/// or certificates that have since moved or gone.
#[derive(Debug, Default)]
pub struct LastGood(HashMap<Arc<str>, Arc<GoodSpec>>);

/// An Ingress as it last compiled, and the file it came from.
type GoodSpec = (k8s_openapi::api::networking::v1::Ingress, Option<Arc<str>>);

impl LastGood {
    /// The `namespace/name` of every Ingress this generation serves: the accepted ones and the
    /// rejected ones still serving their last good version.
    pub fn served(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| &**k)
    }
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.rejected > 0
    }
}

/// Objects by (namespace, name), for the references routes make.
fn by_name<K>(objects: &[crate::source::Sourced<K>]) -> HashMap<(&str, &str), &K>
where
    K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    objects
        .iter()
        .map(|o| {
            let m = o.object.metadata();
            let key = (
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or(""),
            );
            (key, &o.object)
        })
        .collect()
}

pub fn compile(snapshot: &Snapshot, options: &Options, previous: &LastGood) -> Compiled {
    let mut diagnostics = snapshot.problems.clone();
    let mut resolver = backend::Resolver::new(
        snapshot,
        options.endpoint_guard.as_ref(),
        &options.upstreams,
    );
    let secrets = by_name(&snapshot.secrets);
    let config_maps = by_name(&snapshot.config_maps);
    let mut cx = ingress::Context {
        resolver: &mut resolver,
        guard: options.endpoint_guard.as_ref(),
        refs: access::Refs {
            secrets: &secrets,
            config_maps: &config_maps,
            allow_cross_namespace: options.allow_cross_namespace_resources,
            limits: &options.limits,
            allow_loopback: options.endpoint_guard.is_none(),
        },
        global_auth: options.global_auth.as_ref(),
        defaults: &options.defaults,
        plugins: &options.plugins,
    };

    let (mut accepted, mut rejected) = (0, 0);
    let mut units: Vec<Arc<Unit>> = Vec::new();
    let mut good = HashMap::new();
    for sourced in &snapshot.ingresses {
        let ingress = &sourced.object;
        let meta = &ingress.metadata;
        let label = format!(
            "Ingress {}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        );
        if let Err(not) = options.identity.claims(ingress, &snapshot.ingress_classes) {
            let why = format!("ignored: {}", not.why);
            let d = if not.namesake {
                Diagnostic::warning(label, "spec.ingressClassName", why)
            } else {
                Diagnostic::info(label, "", why)
            };
            diagnostics.push(d.at(sourced.origin.clone()));
            continue;
        }
        let key: Arc<str> = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        )
        .into();
        match ingress::compile(ingress, sourced.origin.clone(), &mut cx, Mode::Fresh) {
            Ok((unit, notes)) => {
                accepted += 1;
                diagnostics.extend(notes);
                units.push(Arc::new(unit));
                good.insert(key, Arc::new((ingress.clone(), sourced.origin.clone())));
            }
            Err(errors) => {
                rejected += 1;
                diagnostics.extend(errors);
                let fallback = previous.0.get(&key).and_then(|spec| {
                    let (old, origin) = &**spec;
                    let (unit, notes) =
                        ingress::compile(old, origin.clone(), &mut cx, Mode::LastGood).ok()?;
                    Some((spec.clone(), unit, notes))
                });
                let note = match fallback {
                    Some((spec, unit, notes)) => {
                        diagnostics.extend(notes);
                        units.push(Arc::new(unit));
                        good.insert(key, spec);
                        "rejected; still serving its last good version"
                    }
                    None => "rejected; not serving",
                };
                diagnostics.push(Diagnostic::error(label, "", note).at(sourced.origin.clone()));
            }
        }
    }

    units.sort_by(|a, b| a.order.cmp(&b.order));
    let fallback = options
        .default_backend_service
        .as_ref()
        .and_then(|(ns, name)| match resolver.resolve_service(ns, name) {
            Ok(resolved) => Some(resolved.backend),
            Err((_, why)) => {
                diagnostics.push(Diagnostic::error(
                    "controller",
                    "--default-backend-service",
                    format!("{why}; unmatched requests get 404"),
                ));
                None
            }
        });
    let certs = certificates(&units, options, &mut diagnostics);
    let (routes, lone_canaries) =
        routes(&units, &certs, fallback.as_ref(), options, &mut diagnostics);
    // A canary that cannot attach whole serves nothing: it counts as rejected.
    accepted -= lone_canaries.len().min(accepted);
    rejected += lone_canaries.len();
    let last_good = LastGood(good);
    Compiled {
        routes,
        certs,
        diagnostics,
        accepted,
        rejected,
        last_good,
    }
}

/// Each host's certificate: from the oldest Ingress with a rule for the host whose `spec.tls`
/// covers it (compile/ingress already left out entries an Ingress may not serve). Ingresses
/// without rules come last and only for hosts no Ingress routes, as for default backends.
fn certificates(
    units: &[Arc<Unit>],
    options: &Options,
    diagnostics: &mut Vec<Diagnostic>,
) -> CertStore {
    let mut store = CertStore::new(options.default_certificate.clone());
    let routed: std::collections::HashSet<String> = units
        .iter()
        .flat_map(|u| &u.hosts)
        .filter(|h| **h != HostMatch::Any)
        .map(ToString::to_string)
        .collect();
    let mut owner: HashMap<&str, &str> = HashMap::new();
    // A canary's hosts are its main Ingress's: it binds no certificate.
    let units: Vec<&Arc<Unit>> = units.iter().filter(|u| u.canary.is_none()).collect();
    let with_rules = units.iter().filter(|u| !u.hosts.is_empty());
    let without = units.iter().filter(|u| u.hosts.is_empty());
    for unit in with_rules.chain(without) {
        let warn = |message: String| {
            Diagnostic::warning(format!("Ingress {}", unit.key), "spec.tls", message)
                .at(unit.origin.clone())
        };
        for (host, key) in &unit.certificates {
            if unit.hosts.is_empty() && routed.contains(host) {
                diagnostics.push(warn(format!(
                    "host {host} is routed by another Ingress; this Ingress has no rules, so its certificate is not served for it"
                )));
                continue;
            }
            match store.insert(host, key.clone()) {
                Ok(()) => {
                    owner.insert(host, &unit.key);
                }
                // The same certificate listed by several Ingresses (one Secret shared by a
                // host's Ingresses) is no conflict.
                Err(kept) if kept.cert == key.cert => {}
                Err(_) => diagnostics.push(warn(format!(
                    "host {host} already has a different certificate from Ingress {}; that one is served",
                    owner.get(host.as_str()).copied().unwrap_or("?")
                ))),
            }
        }
    }
    client_auth(&units, &mut store, diagnostics);
    store
}

/// Hosts whose handshakes ask for a client certificate: those of Ingresses with
/// `auth-tls-*`, oldest Ingress first. Requests are checked per route, so another Ingress on
/// the same host is not bound by these rules (only asked for a certificate it may ignore).
fn client_auth(units: &[&Arc<Unit>], store: &mut CertStore, diagnostics: &mut Vec<Diagnostic>) {
    for unit in units {
        let Some(client_tls) = &unit.policy.client_tls else {
            continue;
        };
        for host in &unit.hosts {
            let name = match host {
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Wildcard(suffix) => format!("*.{suffix}"),
                HostMatch::Any => {
                    diagnostics.push(
                        Diagnostic::warning(
                            format!("Ingress {}", unit.key),
                            "metadata.annotations[nginx.ingress.kubernetes.io/auth-tls-secret]",
                            "a rule without a host never asks for a client certificate (no server name selects it), so its requests can only pass without one",
                        )
                        .at(unit.origin.clone()),
                    );
                    continue;
                }
            };
            if let Err(kept) = store.insert_client_auth(&name, client_tls.auth.clone())
                && !Arc::ptr_eq(&kept, &client_tls.auth)
            {
                diagnostics.push(
                    Diagnostic::warning(
                        format!("Ingress {}", unit.key),
                        "metadata.annotations[nginx.ingress.kubernetes.io/auth-tls-secret]",
                        format!("host {name} already asks for client certificates under another Ingress's CA; that CA is the one offered in handshakes"),
                    )
                    .at(unit.origin.clone()),
                );
            }
        }
    }
}

/// The name routes of the controller's own default backend carry instead of an Ingress's.
const CONTROLLER: &str = "(controller)";

/// A route for `backend` under `policy`, with the upstream clients its protocol needs.
fn route(
    unit: &Unit,
    backend: &Arc<Backend>,
    policy: Policy,
    options: &Options,
    rule: (&HostMatch, &str),
    path_regex: Option<regex::Regex>,
    canary: Option<Arc<crate::canary::Canary>>,
) -> Arc<Route> {
    let host: Arc<str> = match rule.0 {
        HostMatch::Exact(h) => h.as_str().into(),
        HostMatch::Wildcard(s) => format!("*.{s}").into(),
        HostMatch::Any => "*".into(),
    };
    let stats = options.route_stats.get(RouteLabels {
        ingress: unit.key.clone(),
        host,
        path: rule.1.into(),
        service: backend.name.clone(),
    });
    let mut route = routed(unit.key.clone(), backend, policy, options, stats);
    route.path_regex = path_regex;
    route.canary = canary;
    Arc::new(route)
}

fn routed(
    ingress: Arc<str>,
    backend: &Arc<Backend>,
    mut policy: Policy,
    options: &Options,
    stats: Arc<crate::metrics::RouteStats>,
) -> Route {
    if !policy.hooks.is_empty() {
        policy.hooks.set_route(hook_route(&ingress, &backend.name));
    }
    let upstreams = &options.upstreams;
    let transport = match policy.protocol {
        Protocol::Http | Protocol::AutoHttp => Transport::Http1,
        Protocol::Https => Transport::TlsHttp1,
        Protocol::Grpc => Transport::H2c,
        Protocol::Grpcs => Transport::TlsH2,
    };
    let grpc_client = (transport == Transport::Http1 && backend.h2c)
        .then(|| upstreams.client(Transport::H2c, policy.connect_timeout));
    Route {
        ingress,
        backend: backend.clone(),
        client: upstreams.client(transport, policy.connect_timeout),
        grpc_client,
        policy,
        path_regex: None,
        stats,
        canary: None,
    }
}

/// What hooks are told about their route: the Ingress `namespace/name` and the backend
/// `namespace/service:port`.
fn hook_route(ingress: &str, backend: &str) -> crate::plugin::RouteInfo {
    let (namespace, name) = ingress.split_once('/').unwrap_or(("", ingress));
    let service = backend.split_once('/').map_or(backend, |(_, s)| s);
    crate::plugin::RouteInfo {
        kind: "Ingress",
        namespace: namespace.to_string(),
        name: name.to_string(),
        service: service.to_string(),
    }
}

/// An Ingress's `spec.defaultBackend`: for the hosts of its own rules, or, for an Ingress
/// without rules, for the hosts nobody names. Never for another Ingress's hosts.
fn default_backend(
    table: &mut RouteTableBuilder,
    unit: &Unit,
    backend: &Arc<Backend>,
    options: &Options,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut policy = unit.policy.clone();
    policy.ssl_redirect = false;
    let route = route(
        unit,
        backend,
        policy,
        options,
        (&HostMatch::Any, "(default backend)"),
        None,
        None,
    );
    let lost = |winner: Arc<Route>, what: String| {
        Diagnostic::warning(
            format!("Ingress {}", unit.key),
            "spec.defaultBackend",
            format!("{what}: the older Ingress {}'s wins", winner.ingress),
        )
        .at(unit.origin.clone())
    };
    if unit.hosts.is_empty() {
        if let Err(winner) = table.set_catch_all(route) {
            diagnostics.push(lost(
                winner,
                "another Ingress without rules is the catch-all".into(),
            ));
        }
        return;
    }
    for host in &unit.hosts {
        if let Err(winner) = table.set_host_default(host, route.clone())
            && winner.ingress != unit.key
        {
            diagnostics.push(lost(
                winner,
                format!("host {host} already has a default backend"),
            ));
        }
    }
}

/// The route table, and the canary Ingresses left without a main route (rejected).
fn routes(
    units: &[Arc<Unit>],
    certs: &CertStore,
    fallback: Option<&Arc<Backend>>,
    options: &Options,
    diagnostics: &mut Vec<Diagnostic>,
) -> (RouteTable, Vec<Arc<str>>) {
    let mut table = RouteTableBuilder::default();
    let canaries = canary::Canaries::collect(units, diagnostics);
    for unit in units.iter().filter(|u| u.canary.is_none()) {
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
            let has_tls = match &p.host {
                HostMatch::Exact(h) => certs.covers(h),
                HostMatch::Wildcard(s) => certs.covers(&format!("*.{s}")),
                HostMatch::Any => false,
            };
            policy.ssl_redirect = unit.force_ssl_redirect || (policy.ssl_redirect && has_tls);
            // ingress-nginx's no-auth-locations match the Ingress's path (its location), never
            // the request's: a request cannot talk its way out of authentication.
            policy.skip_external_auth = options
                .no_auth_locations
                .iter()
                .any(|l| p.path.starts_with(l.as_str()));
            policy.affinity = unit.affinity.as_ref().map(|(rule, key)| {
                Arc::new(crate::affinity::Affinity::new(rule.clone(), key, &p.path))
            });
            let route = route(
                unit,
                &p.backend,
                policy,
                options,
                (&p.host, &p.path),
                p.regex.clone(),
                canaries.for_main(unit, p),
            );
            if let Err(winner) = table.add(&p.host, p.kind, &p.path, route)
                && winner.ingress != unit.key
            {
                diagnostics.push(conflict(&p.field, &winner));
            }
        }
        if let Some(backend) = &unit.default_backend {
            default_backend(&mut table, unit, backend, options, diagnostics);
        }
    }
    if let Some(backend) = fallback {
        let policy = options.defaults.clone();
        let label = (&HostMatch::Any, "(controller default backend)");
        let stats = options.route_stats.get(RouteLabels {
            ingress: CONTROLLER.into(),
            host: "*".into(),
            path: label.1.into(),
            service: backend.name.clone(),
        });
        table.set_fallback(Arc::new(routed(
            CONTROLLER.into(),
            backend,
            policy,
            options,
            stats,
        )));
    }
    (table.build(), canaries.rejected())
}

/// Severity counts, for a one-line summary.
pub fn count(diagnostics: &[Diagnostic], severity: Severity) -> usize {
    diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::FileSource;

    const BACKEND: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80, targetPort: web}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\n\
        addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}, {addresses: [10.0.0.2], conditions: {ready: false}}]\n\
        ports: [{name: http, port: 8080}]\n";

    fn ingress(
        name: &str,
        extra_meta: &str,
        class: &str,
        host: &str,
        path: &str,
        service: &str,
    ) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n{extra_meta}spec:\n{class}  rules:\n  - host: {host}\n    http:\n      paths:\n      - path: {path}\n        pathType: Prefix\n        backend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n"
        )
    }

    fn options() -> Options {
        Options {
            identity: Identity {
                class: "wasmgress".into(),
                controller: "wasmgress.io/ingress-controller".into(),
            },
            defaults: Policy::default(),
            default_certificate: Arc::new(crate::tls::default_certificate().expect("default cert")),
            upstreams: Upstreams::new(),
            plugins: test_plugins(),
            route_stats: RouteStatsRegistry::new(),
            default_backend_service: None,
            allow_cross_namespace_resources: false,
            limits: LimitsRegistry::new(),
            global_auth: None,
            no_auth_locations: Arc::from([]),
            endpoint_guard: None,
        }
    }

    /// The built-in plugins, compiled once per test process.
    fn test_plugins() -> Arc<plugin::Registry> {
        static REGISTRY: std::sync::OnceLock<Arc<plugin::Registry>> = std::sync::OnceLock::new();
        REGISTRY
            .get_or_init(|| {
                Arc::new(
                    plugin::Registry::with_builtins(Default::default())
                        .expect("built-in plugins load"),
                )
            })
            .clone()
    }

    /// Compiles a folder holding `files`, as `run` would.
    fn compile_files(
        dir: &tempfile::TempDir,
        files: &[(&str, String)],
        previous: &LastGood,
    ) -> Compiled {
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write manifest");
        }
        let snapshot = FileSource::new(dir.path()).load().expect("load");
        compile(&snapshot, &options(), previous)
    }

    fn served_by(c: &Compiled, host: &str, path: &str) -> Option<String> {
        c.routes.find(host, path).map(|r| r.ingress.to_string())
    }

    /// Three ready pods behind `web`.
    const THREE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80, targetPort: web}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\n\
        addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]\n\
        ports: [{name: http, port: 8080}]\n";

    fn picks(c: &Compiled, n: usize) -> Vec<String> {
        let route = c.routes.find("rr.test", "/").expect("route");
        (0..n)
            .map(|_| {
                route
                    .backend
                    .pick(crate::policy::Balance::RoundRobin)
                    .expect("endpoint")
                    .addr
                    .to_string()
            })
            .collect()
    }

    /// An EndpointSlice change recompiles the route; the round-robin goes on where it was
    /// (before, every recompile restarted it at the first address, on every replica).
    #[test]
    fn round_robin_survives_recompiles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [
            ("backend.yaml", THREE.to_string()),
            (
                "rr.yaml",
                ingress(
                    "rr",
                    "",
                    "  ingressClassName: wasmgress\n",
                    "rr.test",
                    "/",
                    "web",
                ),
            ),
        ];
        for (name, text) in &files {
            std::fs::write(dir.path().join(name), text).expect("write manifest");
        }
        let opts = options();
        let snapshot = FileSource::new(dir.path()).load().expect("load");
        let first = compile(&snapshot, &opts, &LastGood::default());
        let before = picks(&first, 4);
        let distinct: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(distinct.len(), 3, "three addresses in turn: {before:?}");
        let second = compile(&snapshot, &opts, &first.last_good);
        // The fifth and sixth picks of one rotation (period 3): what the first generation
        // would have picked next, not the rotation's start again.
        let after = picks(&second, 2);
        assert_eq!(after, before[1..3].to_vec(), "before: {before:?}");
        // Another replica (its own upstream state) has a rotation of its own: its picks do
        // not move this one.
        let replica = compile(&snapshot, &options(), &LastGood::default());
        let _ = picks(&replica, 5);
        assert_eq!(
            picks(&second, 1),
            before[..1].to_vec(),
            "before: {before:?}"
        );
    }

    #[test]
    fn claims_ingresses_by_class_name_legacy_annotation_and_default_class() {
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = "  annotations: {kubernetes.io/ingress.class: wasmgress}\n";
        let c = compile_files(
            &dir,
            &[
                ("backend.yaml", BACKEND.into()),
                (
                    "a.yaml",
                    ingress(
                        "by-name",
                        "",
                        "  ingressClassName: wasmgress\n",
                        "a.test",
                        "/",
                        "web",
                    ),
                ),
                (
                    "b.yaml",
                    ingress("legacy", legacy, "", "b.test", "/", "web"),
                ),
                (
                    "c.yaml",
                    ingress(
                        "other",
                        "",
                        "  ingressClassName: nginx\n",
                        "c.test",
                        "/",
                        "web",
                    ),
                ),
                ("d.yaml", ingress("classless", "", "", "d.test", "/", "web")),
            ],
            &LastGood::default(),
        );
        assert_eq!(
            served_by(&c, "a.test", "/").as_deref(),
            Some("default/by-name")
        );
        assert_eq!(
            served_by(&c, "b.test", "/").as_deref(),
            Some("default/legacy")
        );
        assert_eq!(
            served_by(&c, "c.test", "/"),
            None,
            "another controller's class"
        );
        assert_eq!(
            served_by(&c, "d.test", "/"),
            None,
            "no default IngressClass yet"
        );

        let default_class = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: mine\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: wasmgress.io/ingress-controller}\n";
        let c = compile_files(
            &dir,
            &[("class.yaml", default_class.into())],
            &LastGood::default(),
        );
        assert_eq!(
            served_by(&c, "d.test", "/").as_deref(),
            Some("default/classless")
        );
    }

    #[test]
    fn a_class_named_like_ours_but_of_another_controller_is_not_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let foreign = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: wasmgress\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: k8s.io/ingress-nginx}\n";
        let legacy = "  annotations: {kubernetes.io/ingress.class: wasmgress}\n";
        let c = compile_files(
            &dir,
            &[
                ("backend.yaml", BACKEND.into()),
                ("class.yaml", foreign.into()),
                (
                    "a.yaml",
                    ingress(
                        "a",
                        "",
                        "  ingressClassName: wasmgress\n",
                        "a.test",
                        "/",
                        "web",
                    ),
                ),
                ("b.yaml", ingress("b", legacy, "", "b.test", "/", "web")),
                ("c.yaml", ingress("c", "", "", "c.test", "/", "web")),
            ],
            &LastGood::default(),
        );
        for host in ["a.test", "b.test", "c.test"] {
            assert_eq!(served_by(&c, host, "/"), None, "{host}");
        }
        let d = c
            .diagnostics
            .iter()
            .find(|d| d.object == "Ingress default/a")
            .expect("a diagnostic for a");
        assert_eq!(d.severity, Severity::Warning, "{d}");
        assert!(d.message.contains("k8s.io/ingress-nginx"), "{d}");
    }

    /// Each documented annotation the table calls owned is owned by a built-in plugin, and
    /// every ingress-nginx key a built-in owns is called owned.
    #[test]
    fn owned_annotations_are_the_builtins_keys() {
        use crate::compat::{Fate, NGINX_PREFIX, all};
        let registry = test_plugins();
        let builtin_keys: Vec<String> = registry
            .builtins()
            .iter()
            .flat_map(|p| p.info().keys.clone())
            .filter_map(|k| k.strip_prefix(NGINX_PREFIX).map(str::to_owned))
            .collect();
        for (key, entry) in all() {
            let owned = builtin_keys.iter().any(|k| k == key);
            assert_eq!(entry.fate == Fate::Owned, owned, "{key}: {entry:?}");
        }
    }

    /// An Ingress carrying any refused annotation is rejected and never routable; one carrying
    /// an ignored annotation is served with the reason as a warning.
    #[test]
    fn refused_annotations_reject_the_ingress_and_ignored_ones_warn() {
        use crate::compat::{Fate, all};
        let dir = tempfile::tempdir().expect("tempdir");
        let class = "  ingressClassName: wasmgress\n";
        let mut checked = (0, 0);
        for (key, entry) in all() {
            let meta = format!("  annotations: {{nginx.ingress.kubernetes.io/{key}: \"on\"}}\n");
            let c = compile_files(
                &dir,
                &[
                    ("backend.yaml", BACKEND.into()),
                    ("a.yaml", ingress("a", &meta, class, "a.test", "/", "web")),
                ],
                &LastGood::default(),
            );
            let about_key = c
                .diagnostics
                .iter()
                .find(|d| d.field.contains(key) && d.message.contains(entry.reason));
            match entry.fate {
                Fate::Refused => {
                    assert_eq!(c.rejected, 1, "{key}: {:?}", c.diagnostics);
                    assert_eq!(
                        served_by(&c, "a.test", "/"),
                        None,
                        "{key} must not be served"
                    );
                    let d = about_key.unwrap_or_else(|| panic!("{key}: {:?}", c.diagnostics));
                    assert_eq!(d.severity, Severity::Error, "{d}");
                    checked.0 += 1;
                }
                Fate::Ignored => {
                    assert_eq!(c.rejected, 0, "{key}: {:?}", c.diagnostics);
                    assert!(served_by(&c, "a.test", "/").is_some(), "{key}");
                    let d = about_key.unwrap_or_else(|| panic!("{key}: {:?}", c.diagnostics));
                    assert_eq!(d.severity, Severity::Warning, "{d}");
                    checked.1 += 1;
                }
                Fate::Owned => {}
            }
        }
        // Both fates are exercised widely (the refused ones shrink as plugins land).
        assert!(checked.0 > 20 && checked.1 > 10, "{checked:?}");
    }

    #[test]
    fn paths_that_no_normalised_request_can_match_are_warned_about() {
        let dir = tempfile::tempdir().expect("tempdir");
        let class = "  ingressClassName: wasmgress\n";
        let c = compile_files(
            &dir,
            &[
                ("backend.yaml", BACKEND.into()),
                (
                    "a.yaml",
                    ingress("a", "", class, "a.test", "/api//v1", "web"),
                ),
                (
                    "b.yaml",
                    ingress("b", "", class, "b.test", "/caf%C3%A9", "web"),
                ),
                ("c.yaml", ingress("c", "", class, "c.test", "/fine/", "web")),
            ],
            &LastGood::default(),
        );
        let warned = |name: &str, write: &str| {
            c.diagnostics.iter().any(|d| {
                d.object == format!("Ingress default/{name}")
                    && d.severity == Severity::Warning
                    && d.message.contains("never matches")
                    && d.message.contains(write)
            })
        };
        assert!(warned("a", "\"/api/v1\""), "{:?}", c.diagnostics);
        assert!(warned("b", "\"/café\""), "{:?}", c.diagnostics);
        assert!(
            !c.diagnostics
                .iter()
                .any(|d| d.object == "Ingress default/c" && d.message.contains("never matches")),
            "{:?}",
            c.diagnostics
        );
        assert_eq!(c.accepted, 3, "a warning, not a rejection");
    }

    #[test]
    fn resolves_named_target_ports_to_ready_endpoints_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = compile_files(
            &dir,
            &[
                ("backend.yaml", BACKEND.into()),
                (
                    "a.yaml",
                    ingress(
                        "a",
                        "",
                        "  ingressClassName: wasmgress\n",
                        "a.test",
                        "/",
                        "web",
                    ),
                ),
            ],
            &LastGood::default(),
        );
        let route = c.routes.find("a.test", "/x").expect("route");
        let addrs: Vec<_> = route
            .backend
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(addrs, vec!["10.0.0.1:8080"]);
    }

    #[test]
    fn a_broken_ingress_is_rejected_alone_and_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let class = "  ingressClassName: wasmgress\n";
        let first = compile_files(
            &dir,
            &[
                ("backend.yaml", BACKEND.into()),
                ("a.yaml", ingress("a", "", class, "a.test", "/", "web")),
                ("b.yaml", ingress("b", "", class, "b.test", "/", "web")),
            ],
            &LastGood::default(),
        );
        assert_eq!((first.accepted, first.rejected), (2, 0));

        let second = compile_files(
            &dir,
            &[
                ("a.yaml", ingress("a", "", class, "a.test", "/", "missing")),
                ("c.yaml", ingress("c", "", class, "c.test", "/", "missing")),
            ],
            &first.last_good,
        );
        assert_eq!((second.accepted, second.rejected), (1, 2));
        assert_eq!(
            served_by(&second, "a.test", "/").as_deref(),
            Some("default/a"),
            "last good kept"
        );
        assert_eq!(
            served_by(&second, "b.test", "/").as_deref(),
            Some("default/b")
        );
        assert_eq!(
            served_by(&second, "c.test", "/"),
            None,
            "never good, never served"
        );
        let d = second
            .diagnostics
            .iter()
            .find(|d| d.object == "Ingress default/c" && d.severity == Severity::Error)
            .expect("diagnostic for c");
        assert_eq!(d.field, "spec.rules[0].http.paths[0].backend.service.name");
        assert!(
            d.message.contains("Service default/missing not found"),
            "{d}"
        );
        assert!(
            d.origin.as_deref().is_some_and(|o| o.ends_with("c.yaml")),
            "{d}"
        );
    }

    #[test]
    fn identical_paths_go_to_the_oldest_ingress_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let class = "  ingressClassName: wasmgress\n";
        let old = "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n";
        let new = "  creationTimestamp: \"2025-01-01T00:00:00Z\"\n";
        let c = compile_files(
            &dir,
            &[
                ("backend.yaml", BACKEND.into()),
                (
                    "a.yaml",
                    ingress("a-newer", new, class, "a.test", "/app", "web"),
                ),
                (
                    "z.yaml",
                    ingress("z-older", old, class, "a.test", "/app/", "web"),
                ),
            ],
            &LastGood::default(),
        );
        assert_eq!(
            served_by(&c, "a.test", "/app").as_deref(),
            Some("default/z-older")
        );
        assert!(
            c.diagnostics
                .iter()
                .any(|d| d.object == "Ingress default/a-newer"
                    && d.message.contains("default/z-older")),
            "{:?}",
            c.diagnostics
        );
    }
}

//! The route table: which route answers a request, by host and path.
//!
//! Built by `compile`, published whole by the proxy and never mutated after `build`, so a request
//! can hold the table it started with while a newer one is swapped in. Matching follows the
//! Kubernetes Ingress spec: hosts exact, then `*.suffix` matching exactly one label, then rules
//! without a host; within a host, Exact paths beat Prefix paths, Prefix matches whole path
//! elements, the longest prefix wins, and paths are case-sensitive. This module knows nothing of
//! Kubernetes objects or of how a route is served.

pub mod hash;
pub mod health;
pub mod load;
pub mod path;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::policy::Policy;
use crate::upstream::Client;
pub use health::{Health, HealthRegistry, PerAddress};
pub use load::Load;

/// One address serving a backend, with its URI authority prepared once at compile time.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub authority: http::uri::Authority,
    /// Passive health, shared with other generations and backends listing the address.
    pub health: Arc<Health>,
    /// Response times and requests in flight (EWMA routes), shared likewise.
    pub load: Arc<Load>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        let authority = http::uri::Authority::try_from(addr.to_string())
            .expect("a socket address is a valid URI authority");
        Self {
            addr,
            authority,
            health: Arc::default(),
            load: Arc::default(),
        }
    }
}

/// Round-robin positions by backend (`namespace/service:port`), kept across generations: an
/// EndpointSlice change recompiles every route to the Service, and the rotation goes on where
/// it was instead of starting again at the first address. A backend seen for the first time
/// starts at a position drawn from a per-process random hash, so replicas do not all send
/// their first requests to the same pod. Positions of backends no generation holds are
/// forgotten.
#[derive(Debug, Default)]
pub struct Rotations {
    positions: std::sync::Mutex<std::collections::HashMap<Arc<str>, std::sync::Weak<AtomicUsize>>>,
    seed: std::hash::RandomState,
}

impl Rotations {
    /// The position of backend `key`.
    pub fn get(&self, key: &str) -> Arc<AtomicUsize> {
        use std::hash::BuildHasher;
        let mut map = self
            .positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(live) = map.get(key).and_then(std::sync::Weak::upgrade) {
            return live;
        }
        let start = usize::try_from(self.seed.hash_one(key) % (1 << 16)).unwrap_or(0);
        let position = Arc::new(AtomicUsize::new(start));
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key.into(), Arc::downgrade(&position));
        position
    }
}

/// A Service port resolved to the addresses that serve it.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for messages and metrics.
    pub name: Arc<str>,
    endpoints: Box<[Endpoint]>,
    /// The round-robin position, shared with this backend's earlier and later generations.
    next: Arc<AtomicUsize>,
    /// The Service port declares `appProtocol` `kubernetes.io/h2c` or `grpc`.
    pub h2c: bool,
    /// The consistent-hash ring of the endpoints, built by the first hashed request.
    ring: std::sync::OnceLock<hash::Ring>,
    /// Groups and their ring for `upstream-hash-by-subset`, by the first subset size asked.
    subsets: std::sync::OnceLock<(u32, Subsets)>,
}

/// Endpoint groups (by index) and the ring over them.
type Subsets = (Vec<Vec<usize>>, hash::Ring);

impl Backend {
    pub fn new(name: impl Into<Arc<str>>, addrs: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            endpoints: addrs.into_iter().map(Endpoint::new).collect(),
            next: Arc::default(),
            h2c: false,
            ring: std::sync::OnceLock::new(),
            subsets: std::sync::OnceLock::new(),
        }
    }

    /// Continues the round-robin at `position` (see [`Rotations`]).
    pub fn with_rotation(mut self, position: Arc<AtomicUsize>) -> Self {
        self.next = position;
        self
    }

    /// Shares the endpoints' health and load with every generation (see [`PerAddress`]); new
    /// endpoints start at the others' average load ([`load::slow_start`]).
    pub fn with_memory(mut self, health: &HealthRegistry, loads: &PerAddress<Load>) -> Self {
        for e in &mut self.endpoints {
            e.health = health.get(e.addr);
            e.load = loads.get(e.addr);
        }
        load::slow_start(self.endpoints.iter().map(|e| &*e.load), load::now_us());
        self
    }

    pub fn with_h2c(mut self, h2c: bool) -> Self {
        self.h2c = h2c;
        self
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Round-robin over the ready endpoints; `None` when there are none.
    pub fn pick(&self, balance: crate::policy::Balance) -> Option<&Endpoint> {
        match balance {
            crate::policy::Balance::RoundRobin => self.pick_at(health::now_ms),
            crate::policy::Balance::Ewma => self.pick_ewma(load::now_us(), fastrand::usize),
        }
    }

    /// The better of two random endpoints by [`Load::score`] at `now`, an ejected one only if
    /// both are (then round-robin over the rest decides).
    fn pick_ewma(
        &self,
        now: u64,
        draw: impl FnMut(std::ops::RangeTo<usize>) -> usize,
    ) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.first();
        }
        let mut draw = draw;
        let (a, b) = load::two_of(n, |below| draw(..below));
        let (a, b) = (&self.endpoints[a], &self.endpoints[b]);
        let up = |e: &Endpoint| e.health.is_up(health::now_ms);
        match (up(a), up(b)) {
            (true, true) if b.load.score(now) < a.load.score(now) => Some(b),
            (true, _) => Some(a),
            (false, true) => Some(b),
            (false, false) => self.pick_at(health::now_ms),
        }
    }

    /// [`pick`](Self::pick) on a given clock: round-robin, skipping ejected endpoints unless
    /// every one is (the clock is read only when an endpoint on the way failed).
    fn pick_at(&self, now: impl Fn() -> u64) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.first();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let at = |i: usize| &self.endpoints[(start + i) % n];
        (0..n)
            .map(at)
            .find(|e| e.health.is_up(&now))
            .or_else(|| Some(at(0)))
    }

    /// The endpoint a hash maps to on the endpoints' consistent-hash ring (built on first use).
    pub fn endpoint_for_hash(&self, hash: u32) -> Option<&Endpoint> {
        if self.endpoints.len() <= 1 {
            return self.endpoints.first();
        }
        let ring = self.ring.get_or_init(|| {
            hash::endpoint_ring(&self.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>())
        });
        ring.member(hash).and_then(|i| self.endpoints.get(i))
    }

    /// The endpoint the request's key maps to (`upstream-hash-by`); when it is ejected, the
    /// round-robin over the others.
    pub fn pick_hashed(&self, rule: &hash::HashBy, facts: &hash::Facts<'_>) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.first();
        }
        let key = rule.hash(facts);
        let addrs = || self.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>();
        let chosen = match rule.subset {
            None => self.endpoint_for_hash(key),
            Some(size) => {
                let (built, (groups, ring)) = self
                    .subsets
                    .get_or_init(|| (size, hash::subset_ring(&addrs(), size)));
                // Another route asking another size of the same backend: built for this
                // request (rare; routes of one Service rarely disagree).
                let other;
                let (groups, ring) = if *built == size {
                    (groups, ring)
                } else {
                    other = hash::subset_ring(&addrs(), size);
                    (&other.0, &other.1)
                };
                ring.member(key)
                    .and_then(|g| groups.get(g))
                    .filter(|g| !g.is_empty())
                    .and_then(|g| self.endpoints.get(g[fastrand::usize(..g.len())]))
            }
        };
        match chosen {
            Some(e) if e.health.is_up(health::now_ms) => Some(e),
            _ => self.pick_at(health::now_ms),
        }
    }

    /// Another endpoint than `failed` for a retry, if the backend has one that is up: the
    /// next one after it in address order (the shared round-robin position is left alone, so
    /// retries do not skew the first attempts of other requests).
    pub fn pick_other(&self, failed: SocketAddr) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        let from = self.endpoints.iter().position(|e| e.addr == failed)?;
        (1..n)
            .map(|i| &self.endpoints[(from + i) % n])
            .find(|e| e.health.is_up(health::now_ms))
    }
}

/// Where a matched request goes and how.
#[derive(Debug)]
pub struct Route {
    /// `namespace/name` of the Ingress that defined the route.
    pub ingress: Arc<str>,
    pub backend: Arc<Backend>,
    pub policy: Policy,
    /// The pooled client for the policy's protocol.
    pub client: Client,
    /// For gRPC requests on an HTTP route whose Service port declares an h2c `appProtocol`.
    pub grpc_client: Option<Client>,
    /// The path's regular expression, on regex routes (for `rewrite-target` captures).
    pub path_regex: Option<regex::Regex>,
    /// Request counters and histograms, shared with earlier generations of the same route.
    pub stats: Arc<crate::metrics::RouteStats>,
    /// The canary Ingress taking a share of this route's requests.
    pub canary: Option<Arc<crate::canary::Canary>>,
}

/// Which hosts a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// A full host name, lowercase.
    Exact(String),
    /// `*.suffix`: holds the suffix without `*.`.
    Wildcard(String),
    /// A rule without a host.
    Any,
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
            HostMatch::Any => f.write_str("(any host)"),
        }
    }
}

impl HostMatch {
    /// Parses an Ingress rule host (already validated as a DNS name or `*.` wildcard).
    pub fn parse(host: Option<&str>) -> Self {
        match host {
            None | Some("") => HostMatch::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => HostMatch::Wildcard(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        }
    }
}

/// Kubernetes path types; ImplementationSpecific is matched as Prefix, or as a regular
/// expression when the Ingress asks for it (ingress-nginx `use-regex`, `rewrite-target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    Exact,
    Prefix,
    /// Case-insensitive, anchored at the start of the path, as ingress-nginx's `~*` locations.
    Regex,
}

/// Compiles an Ingress path as ingress-nginx does for `use-regex`: case-insensitive and
/// anchored at the start.
pub fn path_regex(path: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{path})"))
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}

/// Up to this many paths of one kind, a lookup compares them in turn (cheaper than hashing for
/// the few paths most hosts have); beyond it, through an index, so a host with thousands of
/// paths neither compiles in quadratic time nor scans them all on every request.
const SCAN_UP_TO: usize = 8;

/// Paths of one kind and their routes, in the order added; a key is added once.
#[derive(Debug, Default)]
struct Paths {
    list: Vec<(Box<str>, Arc<Route>)>,
    /// Positions in `list` by key, consulted once `list` is longer than [`SCAN_UP_TO`].
    index: HashMap<Box<str>, usize>,
}

impl Paths {
    fn get(&self, key: &str) -> Option<&Arc<Route>> {
        if self.list.len() <= SCAN_UP_TO {
            self.list.iter().find(|(p, _)| **p == *key).map(|(_, r)| r)
        } else {
            self.index.get(key).map(|&i| &self.list[i].1)
        }
    }

    /// Adds `route` under `key`; if the key is taken, the route holding it is returned.
    fn insert(&mut self, key: &str, route: Arc<Route>) -> Result<(), Arc<Route>> {
        if let Some(existing) = self.get(key) {
            return Err(existing.clone());
        }
        self.index.insert(key.into(), self.list.len());
        self.list.push((key.into(), route));
        Ok(())
    }

    /// Orders the paths longest first; equal lengths keep the order they were added in.
    fn sort_longest_first(&mut self) {
        self.list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (i, (p, _)) in self.list.iter().enumerate() {
            self.index.insert(p.clone(), i);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Route>)> {
        self.list.iter().map(|(p, r)| (&**p, r))
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[derive(Debug, Default)]
struct HostRoutes {
    exact: Paths,
    /// Regex routes (their `path_regex`), tried longest pattern first after `build`, as
    /// ingress-nginx orders its regex locations.
    regex: Paths,
    /// Normalised prefixes (no trailing `/`, so `/` is empty).
    prefix: Paths,
    /// The `spec.defaultBackend` of the oldest Ingress with rules for this host: what its
    /// unmatched paths get.
    default: Option<Arc<Route>>,
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        if let Some((_, route)) = self
            .regex
            .iter()
            .find(|(_, r)| r.path_regex.as_ref().is_some_and(|re| re.is_match(path)))
        {
            return Some(route);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // A prefix matches whole elements: it is the request path itself or the path cut
        // before one of its `/`s (the empty prefix, `/`, last). The longest such one wins.
        let mut candidate = path;
        loop {
            if let Some(route) = self.prefix.get(candidate) {
                return Some(route);
            }
            candidate = &candidate[..candidate.rfind('/')?];
        }
    }
}

fn first_wins(slot: &mut Option<Arc<Route>>, route: Arc<Route>) -> Result<(), Arc<Route>> {
    match slot {
        Some(existing) => Err(existing.clone()),
        None => {
            *slot = Some(route);
            Ok(())
        }
    }
}

/// The immutable table the proxy consults on every request.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, HostRoutes>,
    wildcard: HashMap<Box<str>, HostRoutes>,
    any: Option<HostRoutes>,
    /// The `spec.defaultBackend` of the oldest Ingress without rules: hosts nobody names.
    catch_all: Option<Arc<Route>>,
    /// The controller's own default backend (`--default-backend-service`): whatever nothing
    /// else takes.
    fallback: Option<Arc<Route>>,
}

impl RouteTable {
    /// Finds the route for a normalised host and path. A host some Ingress names gets its own
    /// paths, then its Ingress's default backend: never another tenant's catch-all. Hosts
    /// nobody names get the rules without a host, then the catch-all Ingress. The controller's
    /// default backend takes the rest.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let named = self.exact.get(host).or_else(|| {
            let (_, suffix) = host.split_once('.')?;
            self.wildcard.get(suffix)
        });
        let found = match named {
            Some(group) => group.find(path).or(group.default.as_ref()),
            None => self
                .any
                .as_ref()
                .and_then(|g| g.find(path).or(g.default.as_ref()))
                .or(self.catch_all.as_ref()),
        };
        found.or(self.fallback.as_ref())
    }

    /// The table as JSON, for `/debug/routes`: what the proxy actually does, host by host.
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        let group = |g: &HostRoutes| {
            // Prefixes longest first: the order in which they are preferred.
            let mut prefixes: Vec<_> = g.prefix.iter().collect();
            prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            let paths = g
                .exact
                .iter()
                .map(|(p, r)| ("Exact", p.to_string(), r))
                .chain(g.regex.iter().map(|(p, r)| ("Regex", p.to_string(), r)))
                .chain(prefixes.into_iter().map(|(p, r)| {
                    let p = if p.is_empty() {
                        "/".to_owned()
                    } else {
                        p.to_string()
                    };
                    ("Prefix", p, r)
                }))
                .map(|(kind, path, route)| {
                    let mut entry = route.describe();
                    entry["pathType"] = json!(kind);
                    entry["path"] = json!(path);
                    entry
                })
                .collect::<Vec<_>>();
            json!(paths)
        };
        let mut hosts = serde_json::Map::new();
        let mut names: Vec<_> = self.exact.keys().collect();
        names.sort();
        for name in names {
            hosts.insert(name.to_string(), group(&self.exact[name]));
        }
        let mut names: Vec<_> = self.wildcard.keys().collect();
        names.sort();
        for name in names {
            hosts.insert(format!("*.{name}"), group(&self.wildcard[name]));
        }
        if let Some(any) = &self.any {
            hosts.insert("*".to_owned(), group(any));
        }
        let defaults = self
            .exact
            .iter()
            .map(|(h, g)| (h.to_string(), g))
            .chain(self.wildcard.iter().map(|(h, g)| (format!("*.{h}"), g)))
            .chain(self.any.iter().map(|g| ("*".to_owned(), g)))
            .filter_map(|(h, g)| Some((h, g.default.as_ref()?.describe())))
            .collect::<serde_json::Map<_, _>>();
        json!({
            "hosts": hosts,
            "hostDefaultBackends": defaults,
            "catchAll": self.catch_all.as_ref().map(|r| r.describe()),
            "controllerDefaultBackend": self.fallback.as_ref().map(|r| r.describe()),
        })
    }
}

impl Route {
    fn describe(&self) -> serde_json::Value {
        let p = &self.policy;
        let edits = |edits: &[crate::policy::HeaderEdit]| -> Vec<String> {
            edits.iter().map(|e| format!("{e:?}")).collect()
        };
        serde_json::json!({
            "ingress": &*self.ingress,
            "backend": &*self.backend.name,
            "endpoints": self.backend.endpoints().iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            "policy": {
                "protocol": format!("{:?}", p.protocol),
                "httpVersion": format!("{:?}", p.http_version),
                "connectTimeoutMs": p.connect_timeout.as_millis() as u64,
                "readTimeoutMs": p.read_timeout.as_millis() as u64,
                "sendTimeoutMs": p.send_timeout.as_millis() as u64,
                "sslRedirect": p.ssl_redirect,
                "requestHeaders": edits(&p.request_headers),
                "responseHeaders": edits(&p.response_headers),
                "respond": p.respond.as_ref().map(|r| format!("{r:?}")),
                "appRoot": p.app_root.as_deref(),
                "rewriteTarget": p.rewrite_target.as_deref(),
                "loadBalance": match p.balance {
                    crate::policy::Balance::RoundRobin => "round_robin",
                    crate::policy::Balance::Ewma => "ewma",
                },
                "hashBy": p.hash_by.as_ref().map(|h| format!("{:?}", h.key)),
                "hashBySubsetSize": p.hash_by.as_ref().and_then(|h| h.subset),
                "serviceUpstream": p.service_upstream,
                "affinity": p.affinity.as_ref().map(|a| serde_json::json!({
                    "mode": match a.rule.mode {
                        crate::affinity::Mode::Balanced => "balanced",
                        crate::affinity::Mode::Persistent => "persistent",
                    },
                    "cookie": a.rule.name,
                    "canaryBehavior": if a.rule.canary_sticky { "sticky" } else { "legacy" },
                    "changeOnFailure": a.rule.change_on_failure,
                })),
                "mirror": p.mirror.as_ref().map(|m| serde_json::json!({
                    "target": format!("{:?}", m.target),
                    "requestBody": m.body,
                })),
                "nextUpstream": {
                    "on": p.next_upstream.names(),
                    "tries": p.next_upstream.tries,
                    "timeoutMs": p.next_upstream.timeout.map(|t| t.as_millis() as u64),
                },
            },
            "ejectedEndpoints": self.backend.endpoints().iter().filter(|e| e.health.ejected()).map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            "plugins": p.hooks.plugins().iter().map(|h| h.name().to_owned()).collect::<Vec<_>>(),
            "canary": self.canary.as_ref().map(|c| {
                let mut c = c.describe();
                c["requests"] = self.stats.canary_requests().into();
                c
            }),
        })
    }
}

/// Collects routes; the first route added for a host, path and kind wins.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    hosts: HashMap<HostMatch, HostRoutes>,
    catch_all: Option<Arc<Route>>,
    fallback: Option<Arc<Route>>,
}

impl RouteTableBuilder {
    /// Adds a route. On a conflict the existing route is kept and returned, so the caller can
    /// name the winner in a diagnostic.
    pub fn add(
        &mut self,
        host: &HostMatch,
        kind: PathKind,
        path: &str,
        route: Arc<Route>,
    ) -> Result<(), Arc<Route>> {
        let group = self.hosts.entry(host.clone()).or_default();
        match kind {
            PathKind::Exact => group.exact.insert(path, route),
            PathKind::Prefix => group.prefix.insert(path.trim_end_matches('/'), route),
            PathKind::Regex => group.regex.insert(path, route),
        }
    }

    /// Sets the default backend of `host` (an Ingress's `spec.defaultBackend`, for the hosts of
    /// its rules); the first one set wins, like [`add`](Self::add).
    pub fn set_host_default(
        &mut self,
        host: &HostMatch,
        route: Arc<Route>,
    ) -> Result<(), Arc<Route>> {
        first_wins(
            &mut self.hosts.entry(host.clone()).or_default().default,
            route,
        )
    }

    /// Sets the catch-all (the default backend of an Ingress without rules); first one wins.
    pub fn set_catch_all(&mut self, route: Arc<Route>) -> Result<(), Arc<Route>> {
        first_wins(&mut self.catch_all, route)
    }

    /// Sets the controller's default backend.
    pub fn set_fallback(&mut self, route: Arc<Route>) {
        self.fallback = Some(route);
    }

    pub fn build(self) -> RouteTable {
        let mut table = RouteTable {
            catch_all: self.catch_all,
            fallback: self.fallback,
            ..RouteTable::default()
        };
        for (host, mut routes) in self.hosts {
            routes.regex.sort_longest_first();
            match host {
                HostMatch::Exact(h) => {
                    table.exact.insert(h.into(), routes);
                }
                HostMatch::Wildcard(s) => {
                    table.wildcard.insert(s.into(), routes);
                }
                HostMatch::Any => table.any = Some(routes),
            }
        }
        table
    }
}

/// Lowercases a request host and strips its port (and an IPv6 literal's brackets stay), without
/// allocating in the common already-lowercase case.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hashed_picks_agree_across_backends_and_skip_ejected_endpoints() {
        let addrs: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}:80").parse().expect("addr"))
            .collect();
        let (a, b) = (
            Backend::new("ns/svc:80", addrs.clone()),
            Backend::new("ns/svc:80", addrs.clone()),
        );
        let rule = hash::HashBy {
            key: vec![hash::Part::Arg("user".into())].into(),
            subset: None,
        };
        let headers = http::HeaderMap::new();
        let facts = |uri: &'static str| hash::Facts {
            request_uri: uri,
            path: "/",
            host: "a.test",
            client: "192.0.2.1".parse().expect("ip"),
            headers: &headers,
        };
        let uris = ["/?user=1", "/?user=2", "/?user=3", "/?user=4", "/?user=5"];
        let on_a: Vec<SocketAddr> = uris
            .iter()
            .map(|u| a.pick_hashed(&rule, &facts(u)).expect("endpoint").addr)
            .collect();
        let on_b: Vec<SocketAddr> = uris
            .iter()
            .map(|u| b.pick_hashed(&rule, &facts(u)).expect("endpoint").addr)
            .collect();
        assert_eq!(on_a, on_b, "another generation or replica agrees");
        let again = a.pick_hashed(&rule, &facts(uris[0])).expect("endpoint");
        assert_eq!(again.addr, on_a[0], "the same key, the same endpoint");
        // The key's endpoint ejected: another one answers.
        let owner = a
            .endpoints()
            .iter()
            .find(|e| e.addr == on_a[0])
            .expect("listed");
        for _ in 0..health::MAX_FAILS {
            owner.health.failed(health::now_ms());
        }
        let moved = a.pick_hashed(&rule, &facts(uris[0])).expect("endpoint");
        assert_ne!(moved.addr, on_a[0]);
        // Subsets: the key's group, a random member of it.
        let subset = hash::HashBy {
            subset: Some(2),
            ..rule.clone()
        };
        let members: std::collections::HashSet<SocketAddr> = (0..50)
            .map(|_| {
                b.pick_hashed(&subset, &facts(uris[1]))
                    .expect("endpoint")
                    .addr
            })
            .collect();
        assert_eq!(members.len(), 2, "{members:?}");
    }

    #[test]
    fn ewma_takes_the_cheaper_of_two_and_avoids_ejected_ones() {
        let addrs: Vec<SocketAddr> = (1..=2)
            .map(|i| format!("10.0.0.{i}:80").parse().expect("addr"))
            .collect();
        let backend = Backend::new("ns/svc:80", addrs.clone());
        let (fast, slow) = (&backend.endpoints()[0], &backend.endpoints()[1]);
        fast.load.observe(Duration::from_millis(5), 1);
        slow.load.observe(Duration::from_millis(50), 1);
        // Whichever of the two is drawn first, the fast one wins.
        for first in 0..2 {
            let mut draws = [first, 0].into_iter();
            let picked = backend
                .pick_ewma(2, |_| draws.next().expect("two draws"))
                .expect("an endpoint");
            assert_eq!(picked.addr, addrs[0]);
        }
        // Busy enough, the fast one loses: 5 ms x 11 in flight > 50 ms x 1.
        let busy: Vec<_> = (0..10).map(|_| fast.load.begin()).collect();
        let mut draws = [0, 0].into_iter();
        let picked = backend.pick_ewma(2, |_| draws.next().expect("two draws"));
        assert_eq!(picked.expect("an endpoint").addr, addrs[1]);
        drop(busy);
        // An ejected endpoint is passed over whatever its score.
        for _ in 0..health::MAX_FAILS {
            fast.health.failed(health::now_ms());
        }
        let mut draws = [0, 0].into_iter();
        let picked = backend.pick_ewma(2, |_| draws.next().expect("two draws"));
        assert_eq!(picked.expect("an endpoint").addr, addrs[1]);
    }

    #[test]
    fn picks_skip_ejected_endpoints_but_never_all() {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:80").parse().expect("addr"))
            .collect();
        let backend = Backend::new("ns/svc:80", addrs.clone());
        let eject = |e: &Endpoint| {
            for _ in 0..health::MAX_FAILS {
                e.health.failed(1_000);
            }
        };
        eject(&backend.endpoints()[1]);
        let now = || 2_000;
        let picked: Vec<SocketAddr> = (0..6)
            .map(|_| backend.pick_at(now).expect("an endpoint").addr)
            .collect();
        assert!(!picked.contains(&addrs[1]), "{picked:?}");
        assert!(picked.contains(&addrs[0]) && picked.contains(&addrs[2]));
        // Every endpoint ejected: the round-robin goes on over all of them.
        eject(&backend.endpoints()[0]);
        eject(&backend.endpoints()[2]);
        let picked: std::collections::HashSet<SocketAddr> = (0..6)
            .map(|_| backend.pick_at(now).expect("an endpoint").addr)
            .collect();
        assert_eq!(picked.len(), 3);
        // After the fail timeout they are back.
        let later = || 1_000 + health::FAIL_TIMEOUT.as_millis() as u64;
        assert!(backend.endpoints().iter().all(|e| e.health.is_up(later)));
    }

    fn route(name: &str) -> Arc<Route> {
        Arc::new(Route {
            ingress: name.into(),
            backend: Arc::new(Backend::new(name, Vec::new())),
            policy: Policy::default(),
            client: crate::upstream::Upstreams::default()
                .client(crate::upstream::Transport::Http1, Duration::from_secs(1)),
            grpc_client: None,
            path_regex: None,
            stats: crate::metrics::RouteStatsRegistry::default().get(crate::metrics::RouteLabels {
                ingress: name.into(),
                host: "*".into(),
                path: "/".into(),
                service: name.into(),
            }),
            canary: None,
        })
    }

    fn table(paths: &[(&str, PathKind, &str)]) -> RouteTable {
        let mut b = RouteTableBuilder::default();
        for (host, kind, path) in paths {
            let host = HostMatch::parse(Some(host));
            b.add(&host, *kind, path, route(&format!("{kind:?} {path}")))
                .expect("no conflict");
        }
        b.build()
    }

    fn hit(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        t.find(host, path).map(|r| r.ingress.to_string())
    }

    use PathKind::{Exact, Prefix};

    /// The examples table of the Kubernetes Ingress documentation, row by row.
    #[test]
    fn kubernetes_path_matching_table() {
        let h = "foo.example.com";
        // (the Ingress paths, the request path, which path should answer)
        type Row<'a> = (&'a [(PathKind, &'a str)], &'a str, Option<&'a str>);
        let rows: &[Row] = &[
            (&[(Prefix, "/")], "/anything/at/all", Some("Prefix /")),
            (&[(Exact, "/foo")], "/foo", Some("Exact /foo")),
            (&[(Exact, "/foo")], "/bar", None),
            (&[(Exact, "/foo")], "/foo/", None),
            (&[(Exact, "/foo/")], "/foo", None),
            (&[(Prefix, "/foo")], "/foo", Some("Prefix /foo")),
            (&[(Prefix, "/foo")], "/foo/", Some("Prefix /foo")),
            (&[(Prefix, "/aaa/bb")], "/aaa/bbb", None),
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbb", Some("Prefix /aaa/bbb")),
            (
                &[(Prefix, "/aaa/bbb/")],
                "/aaa/bbb",
                Some("Prefix /aaa/bbb/"),
            ),
            (
                &[(Prefix, "/aaa/bbb")],
                "/aaa/bbb/",
                Some("Prefix /aaa/bbb"),
            ),
            (
                &[(Prefix, "/aaa/bbb")],
                "/aaa/bbb/ccc",
                Some("Prefix /aaa/bbb"),
            ),
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbbxyz", None),
            (
                &[(Prefix, "/"), (Prefix, "/aaa")],
                "/aaa/ccc",
                Some("Prefix /aaa"),
            ),
            (
                &[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")],
                "/aaa/bbb",
                Some("Prefix /aaa/bbb"),
            ),
            (
                &[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")],
                "/ccc",
                Some("Prefix /"),
            ),
            (&[(Prefix, "/aaa")], "/ccc", None),
            (
                &[(Prefix, "/foo"), (Exact, "/foo")],
                "/foo",
                Some("Exact /foo"),
            ),
            (&[(Prefix, "/foo")], "/FOO", None),
        ];
        // Each row alone (paths compared in turn), then among enough other paths that lookups
        // go through the index; the answers must not differ.
        let fillers: Vec<String> = (0..=SCAN_UP_TO).map(|i| format!("/zz-fill-{i}")).collect();
        for (paths, request, want) in rows {
            let spec: Vec<_> = paths.iter().map(|(k, p)| (h, *k, *p)).collect();
            let t = table(&spec);
            assert_eq!(
                hit(&t, h, request).as_deref(),
                *want,
                "paths {paths:?}, request {request}"
            );
            let mut crowded = spec.clone();
            for f in &fillers {
                crowded.extend([(h, Exact, f.as_str()), (h, Prefix, f.as_str())]);
            }
            let t = table(&crowded);
            assert_eq!(
                hit(&t, h, request).as_deref(),
                *want,
                "paths {paths:?} among {} others, request {request}",
                fillers.len() * 2
            );
        }
    }

    /// A host with thousands of paths: the longest prefix still wins, whole elements only, and
    /// a conflict found through the index names the first route.
    #[test]
    fn many_paths_on_one_host() {
        let h = "big.example.com";
        let paths: Vec<String> = (0..2000).map(|i| format!("/svc{i}")).collect();
        let mut spec = vec![(h, Prefix, "/"), (h, Prefix, "/svc7/admin")];
        spec.extend(paths.iter().map(|p| (h, Prefix, p.as_str())));
        spec.extend(paths.iter().map(|p| (h, Exact, p.as_str())));
        let mut b = RouteTableBuilder::default();
        let host = HostMatch::parse(Some(h));
        for (_, kind, path) in &spec {
            b.add(&host, *kind, path, route(&format!("{kind:?} {path}")))
                .expect("no conflict");
        }
        let winner = b
            .add(&host, Prefix, "/svc1500/", route("late"))
            .expect_err("conflict");
        assert_eq!(&*winner.ingress, "Prefix /svc1500");
        let t = b.build();
        for (request, want) in [
            ("/svc1999", "Exact /svc1999"),
            ("/svc1999/", "Prefix /svc1999"),
            ("/svc42/a/b", "Prefix /svc42"),
            ("/svc7/admin/users", "Prefix /svc7/admin"),
            ("/svc7/administrator", "Prefix /svc7"),
            ("/svc20000", "Prefix /"),
            ("/", "Prefix /"),
        ] {
            assert_eq!(hit(&t, h, request).as_deref(), Some(want), "{request}");
        }
    }

    fn regex_route(path: &str) -> Arc<Route> {
        let mut r = Arc::try_unwrap(route(&format!("Regex {path}"))).expect("a fresh route");
        r.path_regex = Some(path_regex(path).expect("a valid test regex"));
        Arc::new(r)
    }

    /// Regex paths are tried longest first, as ingress-nginx orders them, whatever order the
    /// Ingress lists them in.
    #[test]
    fn regex_paths_longest_first() {
        for extra in [0, SCAN_UP_TO + 1] {
            let mut b = RouteTableBuilder::default();
            let host = HostMatch::parse(Some("r.test"));
            for path in ["/api", "/api/v2/.*"]
                .into_iter()
                .map(String::from)
                .chain((0..extra).map(|i| format!("/zz{i}")))
            {
                b.add(&host, PathKind::Regex, &path, regex_route(&path))
                    .expect("no conflict");
            }
            assert!(
                b.add(&host, PathKind::Regex, "/api", regex_route("/api"))
                    .is_err(),
                "a regex path is added once"
            );
            let t = b.build();
            assert_eq!(
                hit(&t, "r.test", "/api/v2/users").as_deref(),
                Some("Regex /api/v2/.*"),
                "with {extra} other regex paths"
            );
            assert_eq!(hit(&t, "r.test", "/API/v1").as_deref(), Some("Regex /api"));
            assert_eq!(hit(&t, "r.test", "/other"), None);
        }
    }

    #[test]
    fn hosts_exact_then_one_label_wildcard_then_any() {
        let t = table(&[
            ("a.example.com", Prefix, "/"),
            ("*.example.com", Prefix, "/wild"),
            ("", Prefix, "/any"),
        ]);
        assert_eq!(hit(&t, "a.example.com", "/x").as_deref(), Some("Prefix /"));
        assert_eq!(
            hit(&t, "b.example.com", "/wild").as_deref(),
            Some("Prefix /wild")
        );
        assert_eq!(hit(&t, "b.c.example.com", "/wild"), None, "one label only");
        assert_eq!(hit(&t, "example.com", "/wild"), None);
        assert_eq!(hit(&t, "other.org", "/any").as_deref(), Some("Prefix /any"));
    }

    #[test]
    fn default_backends_are_scoped_to_their_hosts() {
        let mut b = RouteTableBuilder::default();
        let a = HostMatch::parse(Some("a.test"));
        b.add(&a, Prefix, "/app", route("app")).expect("add");
        b.set_host_default(&a, route("a-default"))
            .expect("a default");
        assert!(
            b.set_host_default(&a, route("a-second")).is_err(),
            "first default of a host wins"
        );
        let c = HostMatch::parse(Some("c.test"));
        b.add(&c, Prefix, "/app", route("c-app")).expect("add");
        b.set_catch_all(route("catch-all")).expect("catch-all");
        assert!(
            b.set_catch_all(route("second")).is_err(),
            "first catch-all wins"
        );
        let t = b.build();
        assert_eq!(hit(&t, "a.test", "/app/x").as_deref(), Some("app"));
        assert_eq!(hit(&t, "a.test", "/other").as_deref(), Some("a-default"));
        assert_eq!(
            hit(&t, "c.test", "/other"),
            None,
            "a named host never falls to another Ingress's catch-all"
        );
        assert_eq!(hit(&t, "b.test", "/").as_deref(), Some("catch-all"));

        let mut b = RouteTableBuilder::default();
        b.add(&c, Prefix, "/app", route("c-app")).expect("add");
        b.set_fallback(route("controller"));
        let t = b.build();
        assert_eq!(hit(&t, "c.test", "/other").as_deref(), Some("controller"));
        assert_eq!(hit(&t, "b.test", "/").as_deref(), Some("controller"));
    }

    #[test]
    fn first_route_wins_a_conflict() {
        let mut b = RouteTableBuilder::default();
        let host = HostMatch::parse(Some("a.test"));
        b.add(&host, Prefix, "/x", route("old")).expect("add");
        let winner = b
            .add(&host, Prefix, "/x/", route("new"))
            .expect_err("conflict");
        assert_eq!(&*winner.ingress, "old");
        b.add(&host, Exact, "/x", route("exact"))
            .expect("different kind");
    }

    #[test]
    fn round_robin_over_endpoints() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let c: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let backend = Backend::new("b", vec![a, c]);
        let picks: Vec<_> = (0..4)
            .filter_map(|_| {
                backend
                    .pick(crate::policy::Balance::RoundRobin)
                    .map(|e| e.addr)
            })
            .collect();
        assert_eq!(picks, vec![a, c, a, c]);
        assert!(
            Backend::new("none", Vec::new())
                .pick(crate::policy::Balance::RoundRobin)
                .is_none()
        );
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Foo.Example.com:8443"), "foo.example.com");
        assert_eq!(normalize_host("foo.example.com."), "foo.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert!(matches!(normalize_host("plain.test"), Cow::Borrowed(_)));
    }
}

//! Prometheus metrics, read at scrape time from the counters the rest of the process keeps.
//!
//! Counters live where the work happens (plugin calls in `plugin`, tunnels in
//! [`TunnelStats`] kept by `proxy::websocket`, reloads here in [`ConfigStats`]) as plain atomics; this module only
//! reads and encodes them, so a scrape never takes a lock on the request path. Per-route
//! request counters ([`RouteStats`]) are atomics the route holds, handed out at compile time by
//! [`RouteStatsRegistry`] so they survive configuration swaps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::plugin;

/// Configuration reloads, kept by the run loop.
#[derive(Debug, Default)]
pub struct ConfigStats {
    pub generation: AtomicU64,
    pub accepted_ingresses: AtomicU64,
    pub rejected_ingresses: AtomicU64,
    /// Unix seconds of the last configuration applied.
    pub last_reload: AtomicU64,
}

impl ConfigStats {
    pub fn applied(&self, generation: u64, accepted: usize, rejected: usize) {
        self.generation.store(generation, Ordering::Relaxed);
        self.accepted_ingresses
            .store(accepted as u64, Ordering::Relaxed);
        self.rejected_ingresses
            .store(rejected as u64, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_reload.store(now, Ordering::Relaxed);
    }
}

/// Protocol label values, indexed by [`RouteStats::record`]'s `protocol`.
pub const PROTOCOLS: [&str; 4] = ["http1", "h2", "grpc", "websocket"];
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Histogram upper bounds, seconds (the last bucket is +Inf).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A lock-free histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(b, n)| (b, n.load(Ordering::Relaxed)))
            .collect();
        (
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            self.count.load(Ordering::Relaxed),
            buckets,
        )
    }
}

/// What identifies a route in metrics: bounded by the configuration, not by traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub ingress: Arc<str>,
    /// The rule's host (`*.example.com`, or `*` for rules without a host and the default
    /// backend), not the request's.
    pub host: Arc<str>,
    pub path: Arc<str>,
    pub service: Arc<str>,
}

/// Counters of one route.
#[derive(Debug)]
pub struct RouteStats {
    labels: RouteLabels,
    /// By protocol, method and status class.
    requests: [AtomicU64; PROTOCOLS.len() * METHODS.len() * CLASSES.len()],
    /// Until the response head is sent.
    duration: Histogram,
    upstream_duration: Histogram,
    grpc_status: [AtomicU64; 17],
    connect_errors: AtomicU64,
    /// Requests its canary took.
    canary: AtomicU64,
    /// Attempts sent again to another endpoint.
    retries: AtomicU64,
}

impl RouteStats {
    fn new(labels: RouteLabels) -> Self {
        Self {
            labels,
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::default(),
            upstream_duration: Histogram::default(),
            grpc_status: std::array::from_fn(|_| AtomicU64::new(0)),
            connect_errors: AtomicU64::new(0),
            canary: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Counts one request by protocol index (see [`PROTOCOLS`]), method and status.
    pub fn record(
        &self,
        protocol: usize,
        method: &http::Method,
        status: http::StatusCode,
        took: Duration,
    ) {
        let m = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let c = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let i = (protocol.min(PROTOCOLS.len() - 1) * METHODS.len() + m) * CLASSES.len() + c;
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took);
    }

    pub fn upstream(&self, took: Duration) {
        self.upstream_duration.observe(took);
    }

    pub fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request sent to the route's canary.
    pub fn canary(&self) {
        self.canary.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attempt sent again to another endpoint.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn canary_requests(&self) -> u64 {
        self.canary.load(Ordering::Relaxed)
    }

    /// Counts a gRPC status seen in a response's headers or trailers.
    pub fn grpc_status(&self, value: &http::HeaderValue) {
        if let Some(code) = value.to_str().ok().and_then(|v| v.parse::<usize>().ok())
            && let Some(counter) = self.grpc_status.get(code)
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hands out one [`RouteStats`] per route identity, so counters outlive generations.
#[derive(Debug, Default)]
pub struct RouteStatsRegistry {
    routes: Mutex<HashMap<RouteLabels, Arc<RouteStats>>>,
}

impl RouteStatsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Used at compile time only.
    pub fn get(&self, labels: RouteLabels) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(labels.clone())
            .or_insert_with(|| Arc::new(RouteStats::new(labels)))
            .clone()
    }

    fn all(&self) -> Vec<Arc<RouteStats>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = routes.values().cloned().collect();
        all.sort_by(|a, b| {
            let key = |r: &RouteStats| {
                (
                    r.labels.ingress.clone(),
                    r.labels.host.clone(),
                    r.labels.path.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        all
    }
}

/// WebSocket tunnel counters, kept by `proxy::websocket`.
#[derive(Debug, Default)]
pub struct TunnelStats {
    pub open: AtomicU64,
    pub opened: AtomicU64,
    pub bytes_from_client: AtomicU64,
    pub bytes_from_backend: AtomicU64,
    pub closed_normally: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_error: AtomicU64,
}

/// TLS handshakes on the HTTPS listener.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub handshakes: AtomicU64,
    pub failed_error: AtomicU64,
    pub failed_timeout: AtomicU64,
}

#[derive(Debug)]
struct Process {
    config: Arc<ConfigStats>,
    tunnels: Arc<TunnelStats>,
    routes: Arc<RouteStatsRegistry>,
    tls: Arc<TlsStats>,
}

impl Process {
    fn encode_routes(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let routes = self.routes.all();
        let base = |r: &RouteStats| {
            vec![
                ("ingress", r.labels.ingress.to_string()),
                ("host", r.labels.host.to_string()),
                ("path", r.labels.path.to_string()),
                ("service", r.labels.service.to_string()),
            ]
        };
        let mut requests = Vec::new();
        for r in &routes {
            for (i, n) in r.requests.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let (pm, c) = (i / CLASSES.len(), i % CLASSES.len());
                let (p, m) = (pm / METHODS.len(), pm % METHODS.len());
                let mut labels = base(r);
                labels.push(("method", METHODS[m].to_owned()));
                labels.push(("status_class", CLASSES[c].to_owned()));
                labels.push(("protocol", PROTOCOLS[p].to_owned()));
                requests.push((labels, n));
            }
        }
        counter(
            encoder,
            "wasmgress_requests",
            "Requests by route, method, status class and protocol.",
            &requests,
        )?;
        let mut grpc = Vec::new();
        let mut connect = Vec::new();
        let mut canary = Vec::new();
        let mut retries = Vec::new();
        for r in &routes {
            for (code, n) in r.grpc_status.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let mut labels = base(r);
                    labels.push(("grpc_status", code.to_string()));
                    grpc.push((labels, n));
                }
            }
            connect.push((base(r), r.connect_errors.load(Ordering::Relaxed)));
            let retried = r.retries.load(Ordering::Relaxed);
            if retried > 0 {
                retries.push((base(r), retried));
            }
            let taken = r.canary.load(Ordering::Relaxed);
            if taken > 0 {
                canary.push((base(r), taken));
            }
        }
        counter(
            encoder,
            "wasmgress_grpc_responses",
            "gRPC responses by route and grpc-status.",
            &grpc,
        )?;
        counter(
            encoder,
            "wasmgress_upstream_connect_errors",
            "Upstream connections that failed, by route.",
            &connect,
        )?;
        counter(
            encoder,
            "wasmgress_canary_requests",
            "Requests a route's canary Ingress took, by main route.",
            &canary,
        )?;
        counter(
            encoder,
            "wasmgress_upstream_retries",
            "Attempts sent again to another endpoint (proxy-next-upstream), by route.",
            &retries,
        )?;
        for (name, help, pick) in [
            (
                "wasmgress_request_duration_seconds",
                "Time from the request to its response head, by route.",
                (|r: &RouteStats| &r.duration) as fn(&RouteStats) -> &Histogram,
            ),
            (
                "wasmgress_upstream_duration_seconds",
                "Time the upstream took to send its response head, by route.",
                |r: &RouteStats| &r.upstream_duration,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for r in &routes {
                let (sum, count, buckets) = pick(r).snapshot();
                if count == 0 {
                    continue;
                }
                let labels = base(r);
                family
                    .encode_family(&labels)?
                    .encode_histogram::<Vec<(&str, String)>>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The metrics plugins declared: `wasmgress_plugin_<plugin>_<name>`, labelled `plugin`,
/// `namespace` and the metric's own label.
fn encode_plugin_metrics(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    use plugin::metrics::Series;
    use prometheus_client::metrics::MetricType;
    // Loading refuses colliding names; a family is still written once at most, so a scrape
    // can never be refused for a duplicate.
    let mut written = std::collections::HashSet::new();
    for pm in plugin::metrics::all() {
        for (i, decl) in pm.decls.iter().enumerate() {
            let kind = match decl.buckets {
                None => MetricType::Counter,
                Some(_) => MetricType::Histogram,
            };
            let name = plugin::metrics::family(&pm.plugin, &decl.name);
            if !written.insert(name.clone()) {
                continue;
            }
            let mut family = encoder.encode_descriptor(&name, &decl.help, None, kind)?;
            for (namespace, value, series) in pm.snapshot(i) {
                let mut labels = vec![
                    ("plugin".to_string(), pm.plugin.clone()),
                    ("namespace".to_string(), namespace.to_string()),
                ];
                if !decl.label.is_empty() {
                    labels.push((decl.label.clone(), value.to_string()));
                }
                let mut metric = family.encode_family(&labels)?;
                match (series, &decl.buckets) {
                    (Series::Counter(n), _) => ConstCounter::new(n).encode(metric)?,
                    (Series::Histogram { sum, count, counts }, Some(bounds)) => {
                        let buckets: Vec<(f64, u64)> = bounds
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(counts)
                            .collect();
                        metric
                            .encode_histogram::<Vec<(String, String)>>(sum, count, &buckets, None)?
                    }
                    (Series::Histogram { .. }, None) => {}
                }
            }
        }
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    for (labels, value) in values {
        if labels.is_empty() {
            ConstCounter::new(*value).encode(family)?;
            return Ok(());
        }
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.config;
        gauge(
            &mut encoder,
            "wasmgress_config_generation",
            "Number of the configuration being served.",
            load(&c.generation) as i64,
        )?;
        gauge(
            &mut encoder,
            "wasmgress_config_last_reload_timestamp_seconds",
            "When the configuration being served was applied.",
            load(&c.last_reload) as i64,
        )?;
        gauge(
            &mut encoder,
            "wasmgress_ingresses_accepted",
            "Ingresses of our class that compiled cleanly.",
            load(&c.accepted_ingresses) as i64,
        )?;
        gauge(
            &mut encoder,
            "wasmgress_ingresses_rejected",
            "Ingresses of our class that were rejected (some may serve their last good version).",
            load(&c.rejected_ingresses) as i64,
        )?;

        let mirrors = crate::mirror::counts();
        counter(
            &mut encoder,
            "wasmgress_mirror_requests",
            "Request copies (mirror-target) by outcome: sent (answered), failed, or dropped (too many at once, or too slow for the request body).",
            &[
                (vec![("outcome", "sent".to_owned())], load(&mirrors.sent)),
                (
                    vec![("outcome", "failed".to_owned())],
                    load(&mirrors.failed),
                ),
                (
                    vec![("outcome", "dropped".to_owned())],
                    load(&mirrors.dropped),
                ),
            ],
        )?;

        let plugins = plugin::all_stats();
        let per_plugin = |f: fn(&plugin::StatsSnapshot) -> u64| -> Vec<_> {
            plugins
                .iter()
                .map(|(name, s)| (vec![("plugin", name.clone())], f(s)))
                .collect()
        };
        counter(
            &mut encoder,
            "wasmgress_plugin_calls",
            "Calls into a plugin (compile time and request time).",
            &per_plugin(|s| s.calls),
        )?;
        counter(
            &mut encoder,
            "wasmgress_plugin_hook_calls",
            "Request-time hook calls into a plugin.",
            &per_plugin(|s| s.hook_calls),
        )?;
        counter(
            &mut encoder,
            "wasmgress_plugin_traps",
            "Plugin calls that trapped.",
            &per_plugin(|s| s.traps),
        )?;
        counter(
            &mut encoder,
            "wasmgress_plugin_deadline_hits",
            "Plugin calls stopped at their deadline.",
            &per_plugin(|s| s.deadline_hits),
        )?;
        counter(
            &mut encoder,
            "wasmgress_plugin_memory_failures",
            "Plugin calls that hit the memory cap.",
            &per_plugin(|s| s.memory_failures),
        )?;
        encode_plugin_metrics(&mut encoder)?;

        self.encode_routes(&mut encoder)?;
        let tls = &self.tls;
        counter(
            &mut encoder,
            "wasmgress_tls_handshakes",
            "Completed TLS handshakes.",
            &[(Vec::new(), load(&tls.handshakes))],
        )?;
        counter(
            &mut encoder,
            "wasmgress_tls_handshake_failures",
            "Failed TLS handshakes, by reason.",
            &[
                (
                    vec![("reason", "error".to_owned())],
                    load(&tls.failed_error),
                ),
                (
                    vec![("reason", "timeout".to_owned())],
                    load(&tls.failed_timeout),
                ),
            ],
        )?;

        let t = &self.tunnels;
        gauge(
            &mut encoder,
            "wasmgress_websocket_tunnels_open",
            "WebSocket tunnels open now.",
            load(&t.open) as i64,
        )?;
        counter(
            &mut encoder,
            "wasmgress_websocket_tunnels_opened",
            "WebSocket tunnels opened.",
            &[(Vec::new(), load(&t.opened))],
        )?;
        counter(
            &mut encoder,
            "wasmgress_websocket_bytes",
            "Bytes carried by WebSocket tunnels, by direction.",
            &[
                (
                    vec![("direction", "from_client".to_owned())],
                    load(&t.bytes_from_client),
                ),
                (
                    vec![("direction", "from_backend".to_owned())],
                    load(&t.bytes_from_backend),
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "wasmgress_websocket_tunnels_closed",
            "WebSocket tunnels closed, by reason.",
            &[
                (
                    vec![("reason", "closed".to_owned())],
                    load(&t.closed_normally),
                ),
                (vec![("reason", "idle".to_owned())], load(&t.closed_idle)),
                (vec![("reason", "error".to_owned())], load(&t.closed_error)),
            ],
        )?;
        Ok(())
    }
}

/// The registry the admin listener encodes on `/metrics`.
pub fn registry(
    config: Arc<ConfigStats>,
    tunnels: Arc<TunnelStats>,
    routes: Arc<RouteStatsRegistry>,
    tls: Arc<TlsStats>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process {
        config,
        tunnels,
        routes,
        tls,
    }));
    registry
}

/// Text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

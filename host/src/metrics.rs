//! Prometheus metrics, read at scrape time from the counters the rest of the process keeps.
//!
//! Counters live where the work happens (plugin calls in `plugin`, tunnels in
//! `proxy::websocket`, reloads here in [`ConfigStats`]) as plain atomics; this module only
//! reads and encodes them, so a scrape never takes a lock on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::plugin;
use crate::proxy::websocket;

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

#[derive(Debug)]
struct Process {
    config: Arc<ConfigStats>,
    tunnels: Arc<websocket::Stats>,
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
pub fn registry(config: Arc<ConfigStats>, tunnels: Arc<websocket::Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process { config, tunnels }));
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

//! Plugins' own metrics: what a plugin declares in `describe` ([`MetricDecl`], checked at
//! load by [`check`]) and the series it updates through the `metrics` interface
//! ([`PluginMetrics`]), read by `crate::metrics` at scrape time.
//!
//! Owns the cardinality bounds: series are keyed by the route's namespace and the metric's one
//! label; at most [`MAX_LABEL_VALUES`] label values per metric and namespace are kept, later
//! ones are counted under `_other`, and a label value that could not be a clean Prometheus
//! label (over 64 bytes, control characters, quotes, backslashes) is counted as `_invalid`.
//! Series are kept per plugin name for the life of the process, so reloads do not reset them
//! (a new binary declaring different metrics starts a new set). This module must not encode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Metrics one plugin may declare.
pub const MAX_METRICS: usize = 32;
/// Histogram buckets one metric may declare.
pub const MAX_BUCKETS: usize = 16;
/// Label values kept per metric and namespace.
pub const MAX_LABEL_VALUES: usize = 32;
const MAX_LABEL_BYTES: usize = 64;

/// A declared metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDecl {
    pub name: String,
    pub help: String,
    /// Histogram bucket bounds; `None` for a counter.
    pub buckets: Option<Vec<f64>>,
    /// The label's name; empty: none.
    pub label: String,
}

fn is_metric_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The family a plugin's metric is exported as.
pub fn family(plugin: &str, metric: &str) -> String {
    format!("wasmgress_plugin_{}_{metric}", plugin.replace('-', "_"))
}

/// The host's own families under the same prefix (per-plugin call counters).
const HOST_FAMILIES: &[&str] = &[
    "wasmgress_plugin_calls",
    "wasmgress_plugin_hook_calls",
    "wasmgress_plugin_traps",
    "wasmgress_plugin_deadline_hits",
    "wasmgress_plugin_memory_failures",
];

/// Why `plugin`'s declarations cannot be used, if they cannot: a bad declaration, or a family
/// name the host already exports.
pub fn check_for(plugin: &str, decls: &[MetricDecl]) -> Result<(), String> {
    check(decls)?;
    for d in decls {
        let family = family(plugin, &d.name);
        if HOST_FAMILIES.contains(&family.as_str()) {
            return Err(format!(
                "its metric `{}` would be exported as `{family}`, a metric of the host",
                d.name
            ));
        }
    }
    Ok(())
}

/// Why a plugin's declarations cannot be used, if they cannot.
pub fn check(decls: &[MetricDecl]) -> Result<(), String> {
    if decls.len() > MAX_METRICS {
        return Err(format!(
            "it declares {} metrics, more than {MAX_METRICS}",
            decls.len()
        ));
    }
    for (i, d) in decls.iter().enumerate() {
        if !is_metric_name(&d.name) {
            return Err(format!(
                "its metric name `{}` is not [a-z][a-z0-9_]*",
                d.name
            ));
        }
        if d.buckets.is_none() && d.name.ends_with("_total") {
            return Err(format!(
                "its counter `{}` ends with `_total`, which the host appends",
                d.name
            ));
        }
        if decls[..i].iter().any(|e| e.name == d.name) {
            return Err(format!("it declares the metric `{}` twice", d.name));
        }
        let reserved = ["namespace", "plugin", "le"];
        if !d.label.is_empty() && (!is_metric_name(&d.label) || reserved.contains(&&*d.label)) {
            return Err(format!(
                "metric `{}`: `{}` cannot be a label name",
                d.name, d.label
            ));
        }
        if d.help.contains(['\n', '\r']) {
            return Err(format!(
                "metric `{}`: its help is more than one line",
                d.name
            ));
        }
        if let Some(b) = &d.buckets {
            let ascending = b.windows(2).all(|w| w[0] < w[1]);
            if b.is_empty()
                || b.len() > MAX_BUCKETS
                || !ascending
                || b.iter().any(|x| !x.is_finite())
            {
                return Err(format!(
                    "metric `{}`: buckets must be 1 to {MAX_BUCKETS} finite, ascending bounds",
                    d.name
                ));
            }
        }
    }
    Ok(())
}

/// One series.
#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    Counter(u64),
    Histogram {
        sum: f64,
        count: u64,
        /// Per bucket (not cumulative).
        counts: Vec<u64>,
    },
}

/// Series by namespace, then by label value: a namespace's count is its map's length, and an
/// update of a known series allocates nothing.
type ByNamespace = HashMap<Arc<str>, HashMap<Box<str>, Series>>;

/// The series of one plugin's declared metrics.
#[derive(Debug)]
pub struct PluginMetrics {
    pub plugin: String,
    pub decls: Vec<MetricDecl>,
    series: Vec<Mutex<ByNamespace>>,
}

impl PluginMetrics {
    fn new(plugin: &str, decls: Vec<MetricDecl>) -> Self {
        PluginMetrics {
            plugin: plugin.to_string(),
            series: decls.iter().map(|_| Mutex::default()).collect(),
            decls,
        }
    }

    fn update(&self, index: u32, namespace: &Arc<str>, label: &str, f: impl FnOnce(&mut Series)) {
        let Some(decl) = self.decls.get(index as usize) else {
            return;
        };
        let mut map = self.series[index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let label = if decl.label.is_empty() {
            ""
        } else if label.len() > MAX_LABEL_BYTES
            || label.is_empty()
            || label
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            "_invalid"
        } else {
            label
        };
        let fresh = || match &decl.buckets {
            None => Series::Counter(0),
            Some(b) => Series::Histogram {
                sum: 0.0,
                count: 0,
                counts: vec![0; b.len() + 1],
            },
        };
        let values = match map.get_mut(namespace) {
            Some(values) => values,
            None => map.entry(namespace.clone()).or_default(),
        };
        let label = if values.contains_key(label) || values.len() < MAX_LABEL_VALUES {
            label
        } else {
            "_other"
        };
        match values.get_mut(label) {
            Some(series) => f(series),
            None => f(values.entry(label.into()).or_insert_with(fresh)),
        }
    }

    /// `metrics.add`.
    pub fn add(&self, index: u32, namespace: &Arc<str>, label: &str, value: u64) {
        self.update(index, namespace, label, |s| {
            if let Series::Counter(c) = s {
                *c = c.saturating_add(value);
            }
        });
    }

    /// `metrics.observe`.
    pub fn observe(&self, index: u32, namespace: &Arc<str>, label: &str, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        let Some(bounds) = self
            .decls
            .get(index as usize)
            .and_then(|d| d.buckets.clone())
        else {
            return;
        };
        self.update(index, namespace, label, |s| {
            if let Series::Histogram { sum, count, counts } = s {
                *sum += value;
                *count += 1;
                let at = bounds
                    .iter()
                    .position(|b| value <= *b)
                    .unwrap_or(bounds.len());
                counts[at] += 1;
            }
        });
    }

    /// Every series of metric `index`: `(namespace, label value, series)`, sorted.
    pub fn snapshot(&self, index: usize) -> Vec<(Arc<str>, Box<str>, Series)> {
        let Some(m) = self.series.get(index) else {
            return Vec::new();
        };
        let map = m.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(ns, values)| {
                values
                    .iter()
                    .map(|(l, s)| (ns.clone(), l.clone(), s.clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

static ALL: OnceLock<Mutex<HashMap<String, Arc<PluginMetrics>>>> = OnceLock::new();

/// Series for a plugin being loaded, not exported until [`for_plugin`] registers the plugin
/// once it is accepted.
pub fn unregistered(plugin: &str, decls: Vec<MetricDecl>) -> Arc<PluginMetrics> {
    Arc::new(PluginMetrics::new(plugin, decls))
}

/// The series of `plugin` declaring `decls`: the live ones if it declared the same before.
pub fn for_plugin(plugin: &str, decls: Vec<MetricDecl>) -> Arc<PluginMetrics> {
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(live) = all.get(plugin)
        && live.decls == decls
    {
        return live.clone();
    }
    let fresh = Arc::new(PluginMetrics::new(plugin, decls));
    all.insert(plugin.to_string(), fresh.clone());
    fresh
}

/// Every plugin's metrics, by plugin name (for the scrape).
pub fn all() -> Vec<Arc<PluginMetrics>> {
    let Some(all) = ALL.get() else {
        return Vec::new();
    };
    let mut out: Vec<_> = all
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .filter(|m| !m.decls.is_empty())
        .cloned()
        .collect();
    out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str, label: &str) -> MetricDecl {
        MetricDecl {
            name: name.into(),
            help: "h".into(),
            buckets: None,
            label: label.into(),
        }
    }

    #[test]
    fn declarations_are_checked() {
        assert!(check(&[counter("requests", "reason")]).is_ok());
        for bad in [
            vec![counter("Bad", "")],
            vec![counter("a", ""), counter("a", "")],
            vec![counter("a", "namespace")],
            vec![counter("requests_total", "")],
            vec![MetricDecl {
                buckets: Some(vec![2.0, 1.0]),
                ..counter("h", "")
            }],
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn label_values_are_bounded_per_namespace() {
        let m = PluginMetrics::new("p", vec![counter("c", "key")]);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for i in 0..MAX_LABEL_VALUES + 10 {
            m.add(0, &a, &format!("v{i}"), 1);
        }
        m.add(0, &b, "v0", 5);
        m.add(0, &a, "bad\"value", 1);
        m.add(7, &a, "v0", 1);
        let s = m.snapshot(0);
        let in_a: Vec<_> = s.iter().filter(|(ns, _, _)| &**ns == "a").collect();
        assert!(in_a.len() <= MAX_LABEL_VALUES + 1, "{}", in_a.len());
        let other = in_a
            .iter()
            .find(|(_, l, _)| &**l == "_other")
            .expect("overflow");
        assert_eq!(
            other.2,
            Series::Counter(11),
            "10 overflowing values and one invalid"
        );
        assert!(
            s.iter()
                .any(|(ns, l, c)| &**ns == "b" && &**l == "v0" && *c == Series::Counter(5))
        );
    }

    #[test]
    fn histograms_count_into_buckets() {
        let h = MetricDecl {
            buckets: Some(vec![0.1, 1.0]),
            ..counter("h", "")
        };
        let m = PluginMetrics::new("p", vec![h]);
        let ns: Arc<str> = "n".into();
        for v in [0.0625, 0.5, 4.0, f64::NAN, -1.0] {
            m.observe(0, &ns, "", v);
        }
        m.add(0, &ns, "", 3);
        let s = m.snapshot(0);
        assert_eq!(
            s[0].2,
            Series::Histogram {
                sum: 4.5625,
                count: 3,
                counts: vec![1, 1, 1]
            }
        );
    }
}

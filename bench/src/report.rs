//! The results and their markdown: one table per scenario (medians over rounds, the spread,
//! CPU and RSS of the proxy) with the ratios between proxies and to the backend reached
//! directly, the idle-tunnel memory, the targets as met / not met, and the machine.
//! Targets are reported here, never asserted.

use std::fmt::Write as _;

use crate::load::Run;
use crate::proxies::Kind;

/// One round of one row.
#[derive(Debug, Clone)]
pub struct Sample {
    pub run: Run,
    /// Proxy CPU over the round, in % of one core.
    pub cpu_pct: Option<f64>,
    /// Proxy CPU per successful request, in µs.
    pub cpu_us_per_req: Option<f64>,
    /// Proxy resident memory at the end of the round, in KiB.
    pub rss_kib: Option<u64>,
    /// wasmgress plugin hook calls during the round (from its /metrics).
    pub hook_calls: Option<u64>,
    /// Requests a canary Ingress took during the round (wasmgress's /metrics).
    pub canary_requests: Option<u64>,
    /// Busy % of each CPU of the machine over the round (everyone's work, not only ours).
    pub cpus_busy: Vec<f64>,
    /// Whether the machine was idle when the round started (see `procs::wait_quiet`).
    pub quiet: bool,
}

/// A proxy (or the backend directly) in one scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    /// `None` for the backend reached directly.
    pub kind: Option<Kind>,
    pub samples: Vec<Sample>,
    /// Why the row has no (or fewer) samples.
    pub failure: Option<String>,
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Table {
    pub key: &'static str,
    pub title: String,
    /// How it was measured (tool, connections, streams, body).
    pub how: String,
    /// What a "request" is, e.g. "req/s" or "round trips/s".
    pub unit: &'static str,
    pub rows: Vec<Row>,
}

/// Memory per idle WebSocket tunnel, per proxy.
#[derive(Debug, Clone)]
pub struct IdleRow {
    pub label: String,
    /// KiB per tunnel, one per round.
    pub per_tunnel_kib: Vec<f64>,
    /// The proxy's RSS before opening the tunnels, KiB, one per round.
    pub base_kib: Vec<u64>,
    pub failure: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Idle {
    pub tunnels: usize,
    pub rows: Vec<IdleRow>,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Per-round differences of proxy CPU per request, `other` minus `base`, in µs: round `i` of
/// one row against round `i` of the other. Rows of a table alternate within each round, so a
/// pair ran close together in time, which cancels slow drifts of a shared machine better than a
/// difference of medians.
pub fn paired_cpu_diffs(base: &Row, other: &Row) -> Vec<f64> {
    base.samples
        .iter()
        .zip(&other.samples)
        .filter_map(|(a, b)| Some(b.cpu_us_per_req? - a.cpu_us_per_req?))
        .collect()
}

/// Medians of one row's samples.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rps: Option<f64>,
    pub rps_min: Option<f64>,
    pub rps_max: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cpu: Option<f64>,
    pub cpu_per_req: Option<f64>,
    pub rss: Option<f64>,
    pub errors: u64,
    pub ok: u64,
    pub hook_calls: Option<u64>,
    pub canary_requests: Option<u64>,
    /// Median busy % per CPU.
    pub cpus_busy: Vec<f64>,
    /// Rounds that started while the machine was busy.
    pub busy_starts: usize,
    /// The load tool's words for the failures, distinct.
    pub error_detail: Vec<String>,
}

impl Row {
    pub fn summary(&self) -> Summary {
        let s = &self.samples;
        let col =
            |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> { s.iter().filter_map(f).collect() };
        let rps = col(&|x| Some(x.run.rps));
        Summary {
            rps: median(&rps),
            rps_min: rps.iter().copied().reduce(f64::min),
            rps_max: rps.iter().copied().reduce(f64::max),
            p50: median(&col(&|x| Some(x.run.p50_us))),
            p99: median(&col(&|x| Some(x.run.p99_us))),
            cpu: median(&col(&|x| x.cpu_pct)),
            cpu_per_req: median(&col(&|x| x.cpu_us_per_req)),
            rss: median(&col(&|x| x.rss_kib.map(|k| k as f64))),
            errors: s.iter().map(|x| x.run.errors).sum(),
            ok: s.iter().map(|x| x.run.ok).sum(),
            hook_calls: s.iter().map(|x| x.hook_calls).sum(),
            canary_requests: s.iter().map(|x| x.canary_requests).sum(),
            cpus_busy: (0..s.iter().map(|x| x.cpus_busy.len()).max().unwrap_or(0))
                .filter_map(|i| median(&col(&|x| x.cpus_busy.get(i).copied())))
                .collect(),
            busy_starts: s.iter().filter(|x| !x.quiet).count(),
            error_detail: {
                let mut d: Vec<String> = s
                    .iter()
                    .filter(|x| x.run.errors > 0)
                    .filter_map(|x| x.run.error_detail.clone())
                    .collect();
                d.dedup();
                d
            },
        }
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(x: f64) -> String {
    if x < 1000.0 {
        format!("{x:.0} µs")
    } else {
        format!("{:.2} ms", x / 1000.0)
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".into(), f)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn x(v: Option<f64>) -> String {
    opt(v, |r| format!("{r:.2}×"))
}

impl Table {
    fn summary_of(&self, kind: Option<Kind>) -> Option<Summary> {
        self.rows
            .iter()
            .find(|r| r.kind == kind && !r.samples.is_empty())
            .map(Row::summary)
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "### {}\n\n{}\n", self.title, self.how);
        let _ = writeln!(
            o,
            "| | {} (median) | spread (min–max, ±% of median) | p50 | p99 | proxy CPU | proxy CPU per request | proxy RSS | machine CPUs busy | errors |",
            self.unit
        );
        o += "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
        let mut busy_starts = 0;
        for r in &self.rows {
            if r.samples.is_empty() {
                let _ = writeln!(
                    o,
                    "| {} | not measured: {} | | | | | | | | |",
                    r.label,
                    r.failure.as_deref().unwrap_or("no samples")
                );
                continue;
            }
            let s = r.summary();
            let spread = match (s.rps_min, s.rps_max, s.rps) {
                (Some(lo), Some(hi), Some(m)) if m > 0.0 => format!(
                    "{}–{} (±{:.1}%)",
                    thousands(lo),
                    thousands(hi),
                    (hi - lo) / 2.0 / m * 100.0
                ),
                _ => "—".into(),
            };
            let mut errors = thousands(s.errors as f64);
            if s.errors > 0 && !s.error_detail.is_empty() {
                errors += &format!(" ({})", s.error_detail.join("; "));
            }
            if let Some(f) = &r.failure {
                errors += &format!(" ({f})");
            }
            busy_starts += s.busy_starts;
            let busy: Vec<String> = s.cpus_busy.iter().map(|b| format!("{b:.0}%")).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                opt(s.rps, thousands),
                spread,
                opt(s.p50, us),
                opt(s.p99, us),
                opt(s.cpu, |c| format!("{c:.0}%")),
                opt(s.cpu_per_req, |c| format!("{c:.1} µs")),
                opt(s.rss, |k| format!("{:.1} MiB", k / 1024.0)),
                busy.join(" / "),
                errors
            );
        }
        if busy_starts > 0 {
            let _ = writeln!(
                o,
                "\n{busy_starts} round(s) started while another tenant kept a CPU over 15% busy \
                 (after waiting for it to calm down); their numbers are less trustworthy."
            );
        }
        // Ratios between the proxies, and to the backend reached directly.
        let pairs: [(Kind, Option<Kind>); 6] = [
            (Kind::Wasmgress, Some(Kind::Nginx)),
            (Kind::Wasmgress, Some(Kind::Envoy)),
            (Kind::Wasmgress, None),
            (Kind::Nginx, Some(Kind::Envoy)),
            (Kind::Nginx, None),
            (Kind::Envoy, None),
        ];
        let mut lines = Vec::new();
        for (a, b) in pairs {
            let (Some(sa), Some(sb)) = (self.summary_of(Some(a)), self.summary_of(b)) else {
                continue;
            };
            let direct = b.is_none();
            let bname = b.map_or("direct", Kind::name);
            let proxy_only = |v: Option<f64>| if direct { None } else { v };
            lines.push(format!(
                "| {} ÷ {} | {} | {} | {} | {} | {} |",
                a.name(),
                bname,
                x(ratio(sa.rps, sb.rps)),
                x(ratio(sa.p50, sb.p50)),
                x(ratio(sa.p99, sb.p99)),
                x(proxy_only(ratio(sa.cpu, sb.cpu))),
                x(proxy_only(ratio(sa.rss, sb.rss))),
            ));
        }
        if !lines.is_empty() {
            o += "\n| ratio (medians) | req/s | p50 | p99 | proxy CPU | proxy RSS |\n";
            o += "|---|---:|---:|---:|---:|---:|\n";
            for l in lines {
                o += &l;
                o.push('\n');
            }
        }
        o
    }
}

impl Idle {
    pub fn median_of(&self, kind: Kind) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.label == kind.name())
            .and_then(|r| median(&r.per_tunnel_kib))
    }

    pub fn markdown(&self) -> String {
        let mut o = format!(
            "### Memory per idle WebSocket tunnel\n\nRSS of the proxy (all its processes) \
             after {n} idle tunnels minus before them, divided by {n}; each round restarts the \
             proxy, opens and closes 10 tunnels to warm it, reads RSS, opens {n} tunnels (each \
             with one echo round trip, so the upstream side is open too), waits 1 s and reads \
             RSS again.\n\n| | KiB per tunnel (median) | per round | RSS before (median) | \
             ÷ nginx | ÷ Envoy |\n|---|---:|---|---:|---:|---:|\n",
            n = self.tunnels
        );
        let n = self.median_of(Kind::Nginx);
        let e = self.median_of(Kind::Envoy);
        for r in &self.rows {
            if r.per_tunnel_kib.is_empty() {
                let _ = writeln!(
                    o,
                    "| {} | not measured: {} | | | | |",
                    r.label,
                    r.failure.as_deref().unwrap_or("no samples")
                );
                continue;
            }
            let m = median(&r.per_tunnel_kib);
            let rounds: Vec<String> = r.per_tunnel_kib.iter().map(|v| format!("{v:.1}")).collect();
            let base = median(&r.base_kib.iter().map(|&k| k as f64).collect::<Vec<_>>());
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                r.label,
                opt(m, |v| format!("{v:.1}")),
                rounds.join(", "),
                opt(base, |k| format!("{:.1} MiB", k / 1024.0)),
                x(ratio(m, n)),
                x(ratio(m, e)),
            );
        }
        o
    }
}

/// A target of issue #6 and what was measured against it.
pub struct Target {
    pub what: String,
    pub measured: String,
    /// `Some(true)` met, `Some(false)` not met, `None` not measured.
    pub met: Option<bool>,
}

pub fn targets_markdown(targets: &[Target]) -> String {
    let mut o = String::from(
        "## Targets of issue #6\n\nReported, never asserted. With equal worker counts.\n\n\
         | target | measured | result |\n|---|---|---|\n",
    );
    for t in targets {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            t.what,
            t.measured,
            match t.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            }
        );
    }
    o
}

/// Throughput and p99 targets of one scenario against nginx and Envoy.
pub fn throughput_targets(t: &Table, out: &mut Vec<Target>, vs_envoy: bool, p99: bool) {
    let w = t.summary_of(Some(Kind::Wasmgress));
    let n = t.summary_of(Some(Kind::Nginx));
    let e = t.summary_of(Some(Kind::Envoy));
    let get = |s: &Option<Summary>, f: fn(&Summary) -> Option<f64>| s.as_ref().and_then(f);
    let mut push = |what: String, r: Option<f64>, ok: fn(f64) -> bool| {
        out.push(Target {
            what,
            measured: x(r),
            met: r.map(ok),
        })
    };
    let title = &t.title;
    push(
        format!("{title}: req/s ≥ 1.3× nginx"),
        ratio(get(&w, |s| s.rps), get(&n, |s| s.rps)),
        |r| r >= 1.3,
    );
    if vs_envoy {
        push(
            format!("{title}: req/s ≥ 2× Envoy"),
            ratio(get(&w, |s| s.rps), get(&e, |s| s.rps)),
            |r| r >= 2.0,
        );
    }
    if p99 {
        push(
            format!("{title}: p99 ≤ 0.8× nginx"),
            ratio(get(&w, |s| s.p99), get(&n, |s| s.p99)),
            |r| r <= 0.8,
        );
    }
}

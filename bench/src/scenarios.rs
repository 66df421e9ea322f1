//! The scenarios and their rounds: which rows each one has (the proxies and the backend
//! reached directly), a 1-second warm-up per row that also checks it answers without errors,
//! then rounds that alternate between the rows (the starting row rotates every round), each
//! round sampling the proxy's CPU time and RSS around the load run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::HOST;
use crate::load::{Load, Run};
use crate::procs;
use crate::proxies::{self, Kind, Running, Setup, addr};
use crate::report::{Idle, IdleRow, Row, Sample, Table};
use crate::setup::Tools;
use crate::ws;

/// Load parameters shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    pub secs: u64,
    pub h1_conns: usize,
    pub h2_conns: usize,
    pub h2_streams: usize,
    pub ws_conns: usize,
    pub idle_tunnels: usize,
    /// How long a round waits for the machine to be idle before it starts anyway.
    pub quiet_wait: Duration,
}

/// What a row's round runs.
#[derive(Debug, Clone)]
pub enum Work {
    Load(Load),
    Ws(ws::Target),
}

/// A row to measure.
#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub kind: Option<Kind>,
    pub work: Work,
}

/// The running proxies and what measuring needs.
pub struct Bench<'a> {
    pub setup: &'a Setup,
    pub tools: &'a Tools,
    pub params: Params,
    pub running: Vec<Running>,
    /// Proxies that could not be started, and why.
    pub missing: Vec<(Kind, String)>,
    pub ws: ws::Client,
    pub scratch: PathBuf,
}

impl Bench<'_> {
    fn running(&self, kind: Kind) -> Option<&Running> {
        self.running.iter().find(|r| r.kind == kind)
    }

    fn why_missing(&self, kind: Kind) -> String {
        self.missing
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or_else(|| "not running".into(), |(_, w)| w.clone())
    }

    fn load_cpus(&self) -> Option<&str> {
        self.setup.pin.as_ref().map(|p| p.load.as_str())
    }

    /// HTTP/1.1 keep-alive load on `port` and `path`: wrk, or h2load --h1 without it.
    pub fn h1_load(&self, port: u16, path: &str) -> Load {
        self.h1_load_with(port, path, &[])
    }

    /// HTTP/1.1 load with more request headers (`Name: value`).
    pub fn h1_load_with(&self, port: u16, path: &str, headers: &[&str]) -> Load {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        if self.tools.wrk.is_some() {
            Load::Wrk {
                url: format!("http://127.0.0.1:{port}{path}"),
                host: Some(HOST.into()),
                conns: self.params.h1_conns,
                headers,
            }
        } else {
            Load::H2load {
                url: format!("http://{HOST}:{port}{path}"),
                connect_to: Some(format!("127.0.0.1:{port}")),
                conns: self.params.h1_conns,
                streams: 1,
                h1: true,
                body: None,
                headers,
            }
        }
    }

    /// HTTP/2 load: TLS with SNI `bench.test` when `tls`, else h2c prior knowledge.
    pub fn h2_load(&self, port: u16, path: &str, tls: bool, grpc_body: Option<PathBuf>) -> Load {
        let (url, connect_to) = if tls {
            (
                format!("https://{HOST}:{port}{path}"),
                Some(format!("127.0.0.1:{port}")),
            )
        } else {
            (format!("http://127.0.0.1:{port}{path}"), None)
        };
        let headers = if grpc_body.is_some() {
            vec![
                "content-type: application/grpc".into(),
                "te: trailers".into(),
            ]
        } else {
            vec![]
        };
        Load::H2load {
            url,
            connect_to,
            conns: self.params.h2_conns,
            streams: self.params.h2_streams,
            h1: false,
            body: grpc_body,
            headers,
        }
    }

    /// One row per proxy (running or not) plus the direct row.
    pub fn rows_per_proxy(&self, proxy: impl Fn(Kind) -> Work, direct: Option<Work>) -> Vec<Spec> {
        let mut v: Vec<Spec> = Kind::ALL
            .into_iter()
            .map(|k| Spec {
                label: k.name().into(),
                kind: Some(k),
                work: proxy(k),
            })
            .collect();
        if let Some(d) = direct {
            v.push(Spec {
                label: "direct (backend, no proxy)".into(),
                kind: None,
                work: d,
            });
        }
        v
    }

    fn measure(&self, spec: &Spec, secs: u64) -> Result<Sample> {
        let proxy = match spec.kind {
            Some(k) => Some(self.running(k).context("not running")?),
            None => None,
        };
        let pids = proxy.map(Running::pids);
        let admin = (spec.kind == Some(Kind::Wasmgress)).then(|| addr(self.setup.ports.wg_admin));
        let counters0 = admin.map(proxies::counters).transpose()?;
        let cpu0 = pids.as_deref().map(procs::cpu_seconds);
        let busy0 = procs::cpu_jiffies();
        let t0 = Instant::now();
        let run: Run = match &spec.work {
            Work::Load(l) => l.run(self.tools, self.load_cpus(), secs, &self.scratch)?,
            Work::Ws(t) => self.ws.echo_round_trips(t, self.params.ws_conns, secs)?,
        };
        let wall = t0.elapsed().as_secs_f64();
        let cpus_busy = procs::busy_pct(&busy0, &procs::cpu_jiffies());
        let cpu = pids
            .as_deref()
            .map(procs::cpu_seconds)
            .zip(cpu0)
            .map(|(a, b)| a - b);
        let rss = pids.as_deref().map(procs::rss_kib);
        let counters1 = admin.map(proxies::counters).transpose()?;
        if run.ok == 0 {
            bail!("no successful requests ({} failed)", run.errors);
        }
        Ok(Sample {
            cpu_pct: cpu.map(|c| c / wall * 100.0),
            cpu_us_per_req: cpu.map(|c| c * 1e6 / run.ok as f64),
            rss_kib: rss,
            hook_calls: counters0
                .zip(counters1)
                .map(|(a, b)| b.hook_calls.saturating_sub(a.hook_calls)),
            canary_requests: counters0
                .zip(counters1)
                .map(|(a, b)| b.canary.saturating_sub(a.canary)),
            cpus_busy,
            quiet: true,
            run,
        })
    }

    /// Warm-up (1 s, must be error-free) then the alternating rounds.
    pub fn table(
        &self,
        key: &'static str,
        title: &str,
        how: String,
        unit: &'static str,
        specs: Vec<Spec>,
    ) -> Table {
        eprintln!("bench: == {title}");
        let mut rows: Vec<Row> = specs
            .iter()
            .map(|s| Row {
                label: s.label.clone(),
                kind: s.kind,
                samples: vec![],
                failure: s
                    .kind
                    .filter(|&k| self.running(k).is_none())
                    .map(|k| self.why_missing(k)),
            })
            .collect();
        for (spec, row) in specs.iter().zip(rows.iter_mut()) {
            if row.failure.is_some() {
                continue;
            }
            match self.measure(spec, 1) {
                Ok(s) if s.run.errors == 0 => {}
                Ok(s) => {
                    row.failure = Some(format!(
                        "warm-up: {} of {} requests failed",
                        s.run.errors,
                        s.run.errors + s.run.ok
                    ))
                }
                Err(e) => row.failure = Some(format!("warm-up: {e:#}")),
            }
            if let Some(f) = &row.failure {
                eprintln!("bench:    {}: {f}", spec.label);
            }
        }
        let live: Vec<usize> = (0..specs.len())
            .filter(|&i| rows[i].failure.is_none())
            .collect();
        for round in 0..self.params.rounds {
            for j in 0..live.len() {
                let i = live[(j + round) % live.len()];
                if rows[i].failure.is_some() {
                    continue;
                }
                let quiet = procs::wait_quiet(self.params.quiet_wait);
                match self.measure(&specs[i], self.params.secs) {
                    Ok(mut s) => {
                        s.quiet = quiet;
                        eprintln!(
                            "bench:    round {} {:<28} {:>10.0} {unit}  p50 {:>8.0} µs  p99 {:>8.0} µs  cpu {}  errors {}",
                            round + 1,
                            specs[i].label,
                            s.run.rps,
                            s.run.p50_us,
                            s.run.p99_us,
                            s.cpu_pct.map_or("-".into(), |c| format!("{c:.0}%")),
                            s.run.errors
                        );
                        rows[i].samples.push(s);
                    }
                    Err(e) => {
                        let log = specs[i]
                            .kind
                            .and_then(|k| self.running(k))
                            .map(|r| format!(" (its log: {})", r.log.display()))
                            .unwrap_or_default();
                        eprintln!(
                            "bench:    round {} {}: {e:#}{log}",
                            round + 1,
                            specs[i].label
                        );
                        rows[i].failure = Some(format!("round {}: {e:#}{log}", round + 1));
                    }
                }
            }
        }
        Table {
            key,
            title: title.into(),
            how,
            unit,
            rows,
        }
    }

    /// Memory per idle tunnel: per round and proxy, a fresh proxy, a warm-up, RSS before
    /// and after `idle_tunnels` idle tunnels.
    pub fn idle(&mut self) -> Idle {
        eprintln!("bench: == memory per idle WebSocket tunnel");
        let n = self.params.idle_tunnels;
        let mut rows: Vec<IdleRow> = Kind::ALL
            .into_iter()
            .map(|k| IdleRow {
                label: k.name().into(),
                per_tunnel_kib: vec![],
                base_kib: vec![],
                failure: self.running(k).is_none().then(|| self.why_missing(k)),
            })
            .collect();
        for round in 0..self.params.rounds {
            for j in 0..Kind::ALL.len() {
                let i = (j + round) % Kind::ALL.len();
                if rows[i].failure.is_some() {
                    continue;
                }
                let kind = Kind::ALL[i];
                match self.idle_once(kind, n) {
                    Ok((base, per)) => {
                        eprintln!(
                            "bench:    round {} {:<10} {per:.1} KiB per tunnel (RSS before {:.1} MiB)",
                            round + 1,
                            kind.name(),
                            base as f64 / 1024.0
                        );
                        rows[i].per_tunnel_kib.push(per);
                        rows[i].base_kib.push(base);
                    }
                    Err(e) => {
                        eprintln!("bench:    round {} {}: {e:#}", round + 1, kind.name());
                        rows[i].failure = Some(format!("round {}: {e:#}", round + 1));
                    }
                }
            }
        }
        Idle { tunnels: n, rows }
    }

    fn restart(&mut self, kind: Kind) -> Result<()> {
        if let Some(pos) = self.running.iter().position(|r| r.kind == kind) {
            drop(self.running.remove(pos));
        }
        let r = proxies::start(kind, self.setup, self.tools)
            .with_context(|| format!("restarting {}", kind.name()))?;
        self.running.push(r);
        Ok(())
    }

    fn idle_once(&mut self, kind: Kind, n: usize) -> Result<(u64, f64)> {
        self.restart(kind)?;
        let target = ws::Target {
            addr: addr(kind.http(&self.setup.ports)),
            host: HOST.into(),
            path: "/ws".into(),
        };
        let warm = self.ws.open_idle(&target, 10)?;
        self.ws.close(warm);
        std::thread::sleep(Duration::from_millis(500));
        let pids = self.running(kind).context("not running")?.pids();
        let before = procs::rss_kib(&pids);
        let tunnels = self.ws.open_idle(&target, n)?;
        std::thread::sleep(Duration::from_secs(1));
        // nginx's workers may have changed; read the tree again.
        let pids = self.running(kind).context("not running")?.pids();
        let after = procs::rss_kib(&pids);
        self.ws.close(tunnels);
        Ok((before, (after as f64 - before as f64) / n as f64))
    }
}

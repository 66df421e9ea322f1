//! The external load generators: `wrk` (HTTP/1.1 keep-alive) and `h2load` (HTTP/2 over TLS,
//! h2c, gRPC, or `--h1` when wrk is missing), run for a fixed time on the load CPU, and the
//! parsing of what they print into request counts, rates and latency percentiles.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::procs;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Successful (2xx) requests or round trips.
    pub ok: u64,
    /// Failed requests: non-2xx, socket errors, h2load's failed/errored.
    pub errors: u64,
    /// Wall seconds the run lasted, as the tool reports it.
    pub secs: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The tool's own words for the failures, when there were any.
    pub error_detail: Option<String>,
}

/// One load-generator invocation.
#[derive(Debug, Clone)]
pub enum Load {
    /// `wrk -t1 -cC -dS --latency [-H 'Host: H'] [-H ...] URL`.
    Wrk {
        url: String,
        host: Option<String>,
        conns: usize,
        /// More request headers, `Name: value`.
        headers: Vec<String>,
    },
    /// `h2load -t1 -cC -mM -D S [--h1] [--connect-to A] [-d BODY -H ...] --log-file L URL`.
    H2load {
        url: String,
        connect_to: Option<String>,
        conns: usize,
        streams: usize,
        h1: bool,
        body: Option<PathBuf>,
        headers: Vec<String>,
    },
}

impl Load {
    /// Which tool this is, for the report.
    pub fn tool(&self) -> &'static str {
        match self {
            Load::Wrk { .. } => "wrk",
            Load::H2load { h1: true, .. } => "h2load --h1",
            Load::H2load { .. } => "h2load",
        }
    }

    /// Runs the load for `secs` seconds, pinned to `cpus`; `scratch` is a folder for logs.
    pub fn run(
        &self,
        tools: &crate::setup::Tools,
        cpus: Option<&str>,
        secs: u64,
        scratch: &Path,
    ) -> Result<Run> {
        match self {
            Load::Wrk {
                url,
                host,
                conns,
                headers,
            } => {
                let wrk = tools.wrk.as_ref().context("wrk is missing")?;
                let mut cmd = procs::pinned(cpus, wrk);
                cmd.args([
                    "-t1",
                    &format!("-c{conns}"),
                    &format!("-d{secs}s"),
                    "--latency",
                ]);
                // wrk's default socket timeout is 2 s; a round's latency is never near it.
                if let Some(h) = host {
                    cmd.args(["-H", &format!("Host: {h}")]);
                }
                for h in headers {
                    cmd.args(["-H", h]);
                }
                cmd.arg(url);
                let out = output(&mut cmd)?;
                parse_wrk(&out).with_context(|| format!("parsing wrk's output:\n{out}"))
            }
            Load::H2load {
                url,
                connect_to,
                conns,
                streams,
                h1,
                body,
                headers,
            } => {
                let h2load = tools.h2load.as_ref().context("h2load is missing")?;
                let log = scratch.join("h2load.log");
                let _ = std::fs::remove_file(&log);
                let mut cmd = procs::pinned(cpus, h2load);
                cmd.args([
                    "-t1".to_string(),
                    format!("-c{conns}"),
                    format!("-m{streams}"),
                    format!("-D{secs}"),
                ]);
                cmd.arg(format!("--log-file={}", log.display()));
                if *h1 {
                    cmd.arg("--h1");
                }
                if let Some(c) = connect_to {
                    cmd.arg(format!("--connect-to={c}"));
                }
                if let Some(b) = body {
                    cmd.arg("-d").arg(b);
                }
                for h in headers {
                    cmd.args(["-H", h]);
                }
                cmd.arg(url);
                let out = output(&mut cmd)?;
                let mut run = parse_h2load(&out)
                    .with_context(|| format!("parsing h2load's output:\n{out}"))?;
                let mut lat = h2load_latencies(&log)?;
                run.p50_us = percentile(&mut lat, 50.0);
                run.p99_us = percentile(&mut lat, 99.0);
                let _ = std::fs::remove_file(&log);
                Ok(run)
            }
        }
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// A duration as wrk prints it (`812.00us`, `1.20ms`, `2.01s`), in microseconds.
fn wrk_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    for (unit, mul) in [("us", 1.0), ("ms", 1e3), ("m", 60e6), ("s", 1e6)] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|v| v * mul);
        }
    }
    None
}

fn parse_wrk(out: &str) -> Result<Run> {
    let mut run = Run::default();
    let mut total = None;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => run.p50_us = wrk_duration_us(v).context("p50")?,
            ["99%", v] => run.p99_us = wrk_duration_us(v).context("p99")?,
            ["Requests/sec:", v] => run.rps = v.parse()?,
            [n, "requests", "in", secs, ..] => {
                total = Some(n.parse::<u64>()?);
                run.secs = wrk_duration_us(secs.trim_end_matches(',')).context("secs")? / 1e6;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                run.error_detail = Some(rest.join(" "));
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    let total = total.context("no `N requests in` line")?;
    run.ok = total.saturating_sub(run.errors);
    if run.secs > 0.0 {
        // Only the good ones count.
        run.rps = run.ok as f64 / run.secs;
    }
    Ok(run)
}

fn parse_h2load(out: &str) -> Result<Run> {
    let mut run = Run::default();
    let mut seen = false;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let secs = rest.split(',').next().unwrap_or("");
            run.secs = wrk_duration_us(secs).context("finished in")? / 1e6;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            run.error_detail = Some(rest.split(", ").skip(4).collect::<Vec<_>>().join(", "));
            for part in rest.split(',') {
                let w: Vec<&str> = part.split_whitespace().collect();
                if let [n, what] = w.as_slice() {
                    let n: u64 = n.parse()?;
                    // `failed` includes HTTP-level failures and `errored` ones.
                    if *what == "failed" {
                        run.errors += n;
                    }
                }
            }
            seen = true;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            for part in rest.split(',') {
                let w: Vec<&str> = part.split_whitespace().collect();
                if let [n, class] = w.as_slice() {
                    let n: u64 = n.parse()?;
                    // 3xx counts as success for h2load, not for a benchmark of proxying.
                    match *class {
                        "2xx" => run.ok = n,
                        "3xx" => run.errors += n,
                        _ => {}
                    }
                }
            }
        }
    }
    if !seen {
        bail!("no `requests:` line");
    }
    if run.secs > 0.0 {
        run.rps = run.ok as f64 / run.secs;
    }
    Ok(run)
}

/// The third column of h2load's `--log-file` (microseconds until the end of the response).
fn h2load_latencies(log: &Path) -> Result<Vec<f64>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect())
}

/// The `p`th percentile (nearest rank) of `v`, sorting it; 0 when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n\
            \x20 Latency Distribution\n     50%  812.00us\n     75%    1.00ms\n     90%    1.20ms\n\
            \x20    99%    2.50ms\n  100000 requests in 5.00s, 30.00MB read\n\
            \x20 Non-2xx or 3xx responses: 10\nRequests/sec:  20000.00\nTransfer/sec:      6.00MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!((r.ok, r.errors), (99_990, 10));
        assert_eq!((r.p50_us, r.p99_us), (812.0, 2500.0));
        assert!((r.rps - 19_998.0).abs() < 1e-6);
    }

    #[test]
    fn h2load_output_parses() {
        let out = "finished in 5.00s, 20000.00 req/s, 1.00MB/s\n\
            requests: 100000 total, 100000 started, 100000 done, 99990 succeeded, 10 failed, 0 errored, 0 timeout\n\
            status codes: 99990 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!((r.ok, r.errors), (99_990, 10));
        assert!((r.rps - 19_998.0).abs() < 1e-6);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
    }
}

//! Starting what is measured: the example backends (HTTP echo, gRPC Greeter, WebSocket echo)
//! on the load CPU, and the three proxies on the proxy CPU with equal worker counts
//! (wasmgress `--workers N`, nginx `worker_processes N`, Envoy `--concurrency N`), each with its
//! generated configuration; and the small HTTP/1.1 probe that checks routes and reads metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{self, Cert, HOST, Ports};
use crate::procs::{self, Pinning, Proc};
use crate::setup::{Binaries, Tools};

/// A proxy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Wasmgress,
    Nginx,
    Envoy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Wasmgress, Kind::Nginx, Kind::Envoy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Wasmgress => "wasmgress",
            Kind::Nginx => "nginx",
            Kind::Envoy => "Envoy",
        }
    }

    pub fn http(self, p: &Ports) -> u16 {
        match self {
            Kind::Wasmgress => p.wg_http,
            Kind::Nginx => p.nginx_http,
            Kind::Envoy => p.envoy_http,
        }
    }

    pub fn https(self, p: &Ports) -> u16 {
        match self {
            Kind::Wasmgress => p.wg_https,
            Kind::Nginx => p.nginx_https,
            Kind::Envoy => p.envoy_https,
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Everything a proxy needs to start, and how it was started (for the report).
pub struct Setup {
    pub work: PathBuf,
    pub ports: Ports,
    pub cert: Cert,
    pub bins: Binaries,
    pub workers: usize,
    pub pin: Option<Pinning>,
    /// Extra `wasmgress run` flags found in its `--help` (`--workers N`, `--access-log off`).
    pub wasmgress_flags: Vec<String>,
    pub nginx_version: (u32, u32),
}

/// A started proxy (or backend) and its log file.
pub struct Running {
    pub kind: Kind,
    pub proc: Proc,
    pub log: PathBuf,
}

impl Running {
    pub fn pids(&self) -> Vec<u32> {
        self.proc.tree()
    }
}

/// The second echo process's address: [`config::SECOND_ECHO_IP`] on the echo's port.
pub fn second_echo(p: &Ports) -> SocketAddr {
    SocketAddr::from((config::SECOND_ECHO_IP, p.echo))
}

/// Starts the three backends on the load CPU and waits for their ports; with
/// `with_second_echo`, also a second echo process (named `echo-2`) on [`second_echo`], the
/// `/ewma` route's second endpoint.
pub fn start_backends(s: &Setup, with_second_echo: bool) -> Result<Vec<Proc>> {
    let cpus = s.pin.as_ref().map(|p| p.load.as_str());
    let mut out = Vec::new();
    let mut backends = vec![
        ("echo", &s.bins.echo, addr(s.ports.echo), Some("echo")),
        ("greeter", &s.bins.greeter, addr(s.ports.greeter), None),
        ("ws-echo", &s.bins.ws_echo, addr(s.ports.ws), None),
    ];
    if with_second_echo {
        backends.push((
            "echo-2",
            &s.bins.echo,
            second_echo(&s.ports),
            Some("echo-2"),
        ));
    }
    for (name, bin, at, extra) in backends {
        procs::ensure_free(at)?;
        let mut cmd = procs::pinned(cpus, bin);
        cmd.arg(at.to_string());
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let log = s.work.join(format!("{name}.log"));
        let mut p = Proc::spawn(name, cmd, &log)?;
        procs::wait_port(&mut p, &log, at, Duration::from_secs(30))?;
        out.push(p);
    }
    Ok(out)
}

/// Starts proxy `kind` on the proxy CPU and waits until its plain port answers `/` with 200.
pub fn start(kind: Kind, s: &Setup, tools: &Tools) -> Result<Running> {
    let cpus = s.pin.as_ref().map(|p| p.proxy.as_str());
    for port in [kind.http(&s.ports), kind.https(&s.ports)] {
        procs::ensure_free(addr(port))?;
    }
    let dir = s.work.join(kind.name().to_lowercase());
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("out.log");
    let cmd = match kind {
        Kind::Wasmgress => {
            let manifests = dir.join("manifests");
            config::wasmgress_manifests(&manifests, &s.ports, &s.cert)?;
            let plugins = dir.join("plugins");
            std::fs::create_dir_all(&plugins)?;
            std::fs::copy(&s.bins.set_header_wasm, plugins.join("set-header.wasm"))
                .context("copying the set-header plugin")?;
            std::fs::copy(&s.bins.ws_guard_wasm, plugins.join("ws-guard.wasm"))
                .context("copying the ws-guard plugin")?;
            std::fs::copy(&s.bins.body_wasm, plugins.join("body.wasm"))
                .context("copying the body plugin")?;
            let mut cmd = procs::pinned(cpus, &s.bins.wasmgress);
            cmd.arg("run")
                .arg("--manifests")
                .arg(&manifests)
                .arg("--plugin-dir")
                .arg(&plugins)
                .args(["--http-addr", &addr(s.ports.wg_http).to_string()])
                .args(["--https-addr", &addr(s.ports.wg_https).to_string()])
                .args(["--admin-addr", &addr(s.ports.wg_admin).to_string()])
                .args(&s.wasmgress_flags)
                .env("RUST_LOG", "warn");
            cmd
        }
        Kind::Nginx => {
            let nginx = tools.nginx.as_ref().context("nginx is missing")?;
            let conf = dir.join("nginx.conf");
            config::write(
                &conf,
                &config::nginx_conf(&dir, &s.ports, &s.cert, s.workers, s.nginx_version),
            )?;
            let mut cmd = procs::pinned(cpus, nginx);
            cmd.arg("-p").arg(&dir).arg("-c").arg(&conf);
            cmd
        }
        Kind::Envoy => {
            let envoy = tools.envoy.as_ref().context("Envoy is missing")?;
            let conf = dir.join("envoy.yaml");
            config::write(&conf, &config::envoy_yaml(&s.ports, &s.cert))?;
            let mut cmd = procs::pinned(cpus, envoy);
            cmd.arg("-c")
                .arg(&conf)
                .args(["--concurrency", &s.workers.to_string()])
                .args(["--disable-hot-restart", "-l", "warning"]);
            cmd
        }
    };
    let mut proc = Proc::spawn(kind.name(), cmd, &log)?;
    let http = addr(kind.http(&s.ports));
    procs::wait_port(&mut proc, &log, http, Duration::from_secs(60))?;
    procs::wait_port(
        &mut proc,
        &log,
        addr(kind.https(&s.ports)),
        Duration::from_secs(60),
    )?;
    // Listening is not serving: wasmgress loads its manifests and plugins after binding.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match get(http, "/") {
            Ok((200, _)) => break,
            r if std::time::Instant::now() > deadline => {
                bail!(
                    "{} does not answer GET / with 200 on {http}: {r:?}",
                    kind.name()
                )
            }
            _ => {
                proc.check_alive(&log)?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(Running { kind, proc, log })
}

/// `GET path` with `Host: bench.test` over HTTP/1.1 (Connection: close): status and body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    get_host(addr, HOST, path)
}

/// `GET path` with `Host: host` over HTTP/1.1 (Connection: close): status and body.
pub fn get_host(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading the answer of {addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Counters read from wasmgress's admin `/metrics`, summed over their series.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// `wasmgress_plugin_hook_calls`, all plugins.
    pub hook_calls: u64,
    /// `wasmgress_canary_requests`, all routes: requests a canary Ingress took.
    pub canary: u64,
}

/// One scrape of wasmgress's admin `/metrics`.
pub fn counters(admin: SocketAddr) -> Result<Counters> {
    let (status, body) = get_host(admin, "127.0.0.1", "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let sum = |family: &str| {
        body.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Ok(Counters {
        hook_calls: sum("wasmgress_plugin_hook_calls"),
        canary: sum("wasmgress_canary_requests"),
    })
}

/// `n` sequential `GET path` on `at` (each must answer 200 from an echo backend): how many
/// each backend answered, by the name the echo reports, most first.
pub fn backends_seen(at: SocketAddr, path: &str, n: usize) -> Result<Vec<(String, usize)>> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for _ in 0..n {
        let (st, body) = get(at, path)?;
        let name = body
            .split_once(r#""backend":""#)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(name, _)| name.to_owned());
        let Some(name) = name.filter(|_| st == 200) else {
            bail!("GET {path} answered {st} without an echo backend's name: {body}");
        };
        match seen.iter_mut().find(|(b, _)| *b == name) {
            Some((_, k)) => *k += 1,
            None => seen.push((name, 1)),
        }
    }
    seen.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Ok(seen)
}

/// One gRPC call through `kind`'s TLS port with curl (when curl exists): the answer must end
/// with `grpc-status: 0`, since the load tool counts HTTP statuses only.
pub fn check_grpc(kind: Kind, ports: &Ports, body: &std::path::Path) -> Result<()> {
    let Some(curl) = crate::setup::find("curl") else {
        return Ok(());
    };
    let port = kind.https(ports);
    let out = std::process::Command::new(curl)
        .args([
            "-sS",
            "-k",
            "--http2",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("https://{HOST}:{port}/helloworld.Greeter/SayHello"))
        .output()
        .context("running curl")?;
    let head = String::from_utf8_lossy(&out.stdout);
    if !head.lines().any(|l| l.trim() == "grpc-status: 0") {
        bail!(
            "a gRPC call answered without grpc-status 0: {head}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Checks the routes every scenario relies on answer as expected on `kind`'s plain port:
/// `/` reaches the echo backend and `/static` (and `/plugin` on wasmgress) set the header.
pub fn check_routes(kind: Kind, ports: &Ports) -> Result<()> {
    let http = addr(kind.http(ports));
    let (st, body) = get(http, "/")?;
    if st != 200 || !body.contains("\"backend\":\"echo\"") {
        bail!("GET / answered {st}: {body}");
    }
    let (st, body) = get(http, "/static")?;
    if st != 200 || !body.contains(r#""x-seen-by":["static"]"#) {
        bail!("GET /static answered {st} without x-seen-by: static: {body}");
    }
    if kind == Kind::Wasmgress {
        let (st, body) = get(http, "/plugin")?;
        if st != 200 || !body.contains(r#""x-seen-by":["wasm-5"]"#) {
            bail!("GET /plugin answered {st} without the plugin's x-seen-by: {body}");
        }
    }
    Ok(())
}

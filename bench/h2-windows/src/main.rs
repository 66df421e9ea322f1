//! Measures what wasmgress's downstream HTTP/2 flow-control windows cost and buy (see
//! README.md beside this file): the memory stalled uploads park in the proxy, and the upload
//! throughput a window allows, on loopback and through a delay line that adds round-trip time.
//!
//! The wasmgress binary under test must read `WASMGRESS_H2_CONN_WINDOW`,
//! `WASMGRESS_H2_STREAM_WINDOW` (bytes) and `WASMGRESS_H2_ADAPTIVE=1` at startup (a throwaway
//! patch to `http_builder` in `host/src/proxy/listener.rs`; README.md has it).
//!
//! Everything else is here: a plain HTTP/1.1 backend on raw tokio TCP (`/stall...` reads the
//! head and never the body; anything else reads and discards the body and answers 200), a
//! folder of manifests routing every request to it, h2c clients on the h2 crate, and a
//! user-space delay line (there is no `tc netem` on the machine this was written on).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const KIB: u32 = 1 << 10;
const MIB: u32 = 1 << 20;

/// One setting of the downstream windows.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    key: &'static str,
    label: &'static str,
    conn: u32,
    stream: u32,
    adaptive: bool,
}

const CANDIDATES: [Candidate; 5] = [
    Candidate {
        key: "a",
        label: "8 MiB / 2 MiB (today)",
        conn: 8 * MIB,
        stream: 2 * MIB,
        adaptive: false,
    },
    Candidate {
        key: "b",
        label: "1 MiB / 256 KiB",
        conn: MIB,
        stream: 256 * KIB,
        adaptive: false,
    },
    Candidate {
        key: "c",
        label: "2 MiB / 512 KiB",
        conn: 2 * MIB,
        stream: 512 * KIB,
        adaptive: false,
    },
    Candidate {
        key: "d",
        label: "512 KiB / 64 KiB",
        conn: 512 * KIB,
        stream: 64 * KIB,
        adaptive: false,
    },
    // hyper's adaptive_window: starts at 64 KiB - 1 for both, grows by BDP up to 16 MiB.
    Candidate {
        key: "e",
        label: "adaptive (BDP, max 16 MiB)",
        conn: 0,
        stream: 0,
        adaptive: true,
    },
];

struct Opts {
    cmd: String,
    wasmgress: PathBuf,
    candidates: Vec<Candidate>,
    attack_candidates: Vec<Candidate>,
    clients: usize,
    streams: Vec<usize>,
    size_mib: u64,
    runs: usize,
    rtts: Vec<u64>,
    seconds: u64,
    warmup_mib: u64,
    attack_rtts: Vec<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: h2-windows <memory|attack|throughput|all> --wasmgress PATH\n\
         \x20 [--candidates a,b,c,d,e] [--clients 32] [--streams 1,8]\n\
         \x20 [--size-mib 256] [--runs 3] [--rtts 10,50] [--seconds 8]\n\
         \x20 [--warmup-mib 32] [--attack-rtts 0,50] [--attack-candidates a,e]"
    );
    std::process::exit(2)
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap_or_else(|_| usage()))
        .collect()
}

fn candidates(keys: &str) -> Vec<Candidate> {
    keys.split(',')
        .map(|k| {
            *CANDIDATES
                .iter()
                .find(|c| c.key == k)
                .unwrap_or_else(|| usage())
        })
        .collect()
}

fn opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| usage());
    if !["memory", "attack", "throughput", "all"].contains(&cmd.as_str()) {
        usage()
    }
    let mut o = Opts {
        cmd,
        wasmgress: PathBuf::new(),
        candidates: CANDIDATES.to_vec(),
        // A fixed window cannot grow, so warming it up changes nothing in the proxy; today's
        // setting is the reference.
        attack_candidates: vec![CANDIDATES[0], CANDIDATES[4]],
        clients: 32,
        streams: vec![1, 8],
        size_mib: 256,
        runs: 3,
        rtts: vec![10, 50],
        seconds: 8,
        warmup_mib: 32,
        attack_rtts: vec![0, 50],
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--wasmgress" => o.wasmgress = v.into(),
            "--candidates" => o.candidates = candidates(&v),
            "--attack-candidates" => o.attack_candidates = candidates(&v),
            "--clients" => o.clients = v.parse().unwrap_or_else(|_| usage()),
            "--streams" => o.streams = list(&v),
            "--size-mib" => o.size_mib = v.parse().unwrap_or_else(|_| usage()),
            "--runs" => o.runs = v.parse().unwrap_or_else(|_| usage()),
            "--rtts" => o.rtts = list(&v),
            "--seconds" => o.seconds = v.parse().unwrap_or_else(|_| usage()),
            "--warmup-mib" => o.warmup_mib = v.parse().unwrap_or_else(|_| usage()),
            "--attack-rtts" => o.attack_rtts = list(&v),
            _ => usage(),
        }
    }
    if o.wasmgress.as_os_str().is_empty() {
        usage()
    }
    o
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts();
    let bin = std::fs::canonicalize(&o.wasmgress).context("--wasmgress")?;
    let all = o.cmd == "all";
    if all || o.cmd == "memory" {
        memory_table(&bin, &o).await?;
    }
    if all || o.cmd == "attack" {
        attack_table(&bin, &o).await?;
    }
    if all || o.cmd == "throughput" {
        throughput_table(&bin, &o).await?;
    }
    Ok(())
}

// ===== the tables =====

fn mib(bytes: f64) -> String {
    format!("{:.2}", bytes / f64::from(MIB))
}

async fn memory_table(bin: &Path, o: &Opts) -> Result<()> {
    println!(
        "\n### Memory parked by stalled uploads ({} h2c clients, backend never reads the body)\n",
        o.clients
    );
    println!(
        "| candidate | streams/conn | RSS before (MiB) | RSS stalled (MiB) | RSS per client (MiB) | accepted per stream (KiB) | kernel sock mem per client (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &streams in &o.streams {
        for c in &o.candidates {
            let r = stall_run(bin, c, o.clients, streams, None).await?;
            r.row(c, &format!("{streams}"));
        }
    }
    Ok(())
}

async fn attack_table(bin: &Path, o: &Opts) -> Result<()> {
    println!(
        "\n### Window growth, then stall ({} clients; each first uploads {} MiB to a reading backend on the same connection)\n",
        o.clients, o.warmup_mib
    );
    println!(
        "| candidate | warm-up RTT, streams/conn | RSS before (MiB) | RSS stalled (MiB) | RSS per client (MiB) | accepted per stream (KiB) | kernel sock mem per client (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &rtt in &o.attack_rtts {
        for &streams in &o.streams {
            for c in &o.attack_candidates {
                let r = stall_run(bin, c, o.clients, streams, Some((o.warmup_mib, rtt))).await?;
                r.row(c, &format!("{rtt} ms, {streams}"));
            }
        }
    }
    Ok(())
}

async fn throughput_table(bin: &Path, o: &Opts) -> Result<()> {
    println!(
        "\n### Upload throughput, one h2c stream, backend reads and discards (median of {})\n",
        o.runs
    );
    let mut head = format!("| candidate | loopback, {} MiB (MiB/s) |", o.size_mib);
    let mut rule = "|---|---|".to_string();
    for rtt in &o.rtts {
        head += &format!(
            " {rtt} ms RTT delay line, {} s (MiB/s) | window/RTT at {rtt} ms (MiB/s) |",
            o.seconds
        );
        rule += "---|---|";
    }
    println!("{head}\n{rule}");
    for c in &o.candidates {
        let (stop, stop_rx) = watch::channel(false);
        let backend = backend(stop_rx).await?;
        let proxy = Proxy::start(bin, c, backend).await?;
        let mut row = format!("| {} |", c.label);
        let mut rates = Vec::new();
        for _ in 0..o.runs {
            let bytes = o.size_mib << 20;
            let (sent, secs) = upload_once(proxy.http, Some(bytes), None).await?;
            rates.push(sent as f64 / secs / f64::from(MIB));
        }
        eprintln!("  {} loopback: {:?}", c.key, rates);
        row += &format!(" {:.0} |", median(&mut rates));
        for &rtt in &o.rtts {
            let relay = DelayLine::start(proxy.http, Duration::from_millis(rtt) / 2).await?;
            let mut rates = Vec::new();
            for _ in 0..o.runs {
                let until = Duration::from_secs(o.seconds);
                let (sent, secs) = upload_once(relay.addr, None, Some(until)).await?;
                rates.push(sent as f64 / secs / f64::from(MIB));
            }
            eprintln!("  {} {rtt} ms: {:?}", c.key, rates);
            let bound = if c.adaptive {
                format!("≤ {:.0} (16 MiB max)", 16.0 / (rtt as f64 / 1000.0))
            } else {
                format!(
                    "{:.1}",
                    f64::from(c.stream) / f64::from(MIB) / (rtt as f64 / 1000.0)
                )
            };
            row += &format!(" {:.1} | {bound} |", median(&mut rates));
            relay.stop();
        }
        println!("{row}");
        drop(proxy);
        let _ = stop.send(true);
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct StallResult {
    clients: usize,
    streams: usize,
    rss_before: u64,
    rss_after: u64,
    accepted: u64,
    kernel_before: u64,
    kernel_after: u64,
    steady: bool,
}

impl StallResult {
    fn row(&self, c: &Candidate, what: &str) {
        let per_client = (self.rss_after as f64 - self.rss_before as f64) / self.clients as f64;
        let per_stream = self.accepted as f64 / (self.clients * self.streams) as f64 / 1024.0;
        let kernel = (self.kernel_after as f64 - self.kernel_before as f64) / self.clients as f64;
        println!(
            "| {} | {what} | {} | {}{} | {} | {:.0} | {} |",
            c.label,
            mib(self.rss_before as f64),
            mib(self.rss_after as f64),
            if self.steady { "" } else { " (not steady)" },
            mib(per_client),
            per_stream,
            mib(kernel),
        );
    }
}

/// `clients` h2c connections each open `streams` uploads to `/stall` and send as fast as flow
/// control lets them, until every one is blocked; then wasmgress's RSS is read. With `warmup`
/// (MiB, RTT in ms), each connection first uploads that much to a reading backend, through a
/// delay line of that RTT when it is not 0, so an adaptive window has grown when it stalls.
async fn stall_run(
    bin: &Path,
    c: &Candidate,
    clients: usize,
    streams: usize,
    warmup: Option<(u64, u64)>,
) -> Result<StallResult> {
    eprintln!(
        "stall: {} ({}), {clients} clients x {streams} streams, warm-up {warmup:?}",
        c.key, c.label
    );
    let (stop, stop_rx) = watch::channel(false);
    let backend = backend(stop_rx).await?;
    let proxy = Proxy::start(bin, c, backend).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss(proxy.pid)?;
    let kernel_before = socket_memory(proxy.pid);

    let relay = match warmup {
        Some((_, rtt)) if rtt > 0 => {
            Some(DelayLine::start(proxy.http, Duration::from_millis(rtt) / 2).await?)
        }
        _ => None,
    };
    let target = relay.as_ref().map_or(proxy.http, |r| r.addr);
    let total = Arc::new(AtomicU64::new(0));
    let mut counters = Vec::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut senders = Vec::new();
    for i in 0..clients {
        let (mut send, conn) = connect(target).await?;
        tasks.push(conn);
        if let Some((mib, _)) = warmup {
            let bytes = mib << 20;
            send = send.ready().await?;
            let (resp, mut s) = send.send_request(request("/read", Some(bytes)), false)?;
            upload(&mut s, Limit::Bytes(bytes), None).await?;
            let status = resp.await?.status();
            if status != 200 {
                bail!("warm-up upload answered {status}");
            }
        }
        for j in 0..streams {
            send = send.ready().await?;
            let (resp, mut s) =
                send.send_request(request(&format!("/stall/{i}/{j}"), Some(1 << 40)), false)?;
            let counter = Arc::new(AtomicU64::new(0));
            counters.push(counter.clone());
            let total = total.clone();
            tasks.push(tokio::spawn(async move {
                let _ = upload(&mut s, Limit::Forever, Some((&counter, &total))).await;
                drop(resp);
            }));
        }
        senders.push(send);
    }

    // Steady: no stream has been able to send anything for 3 s, and every stream has sent.
    let start = Instant::now();
    let (mut last, mut still) = (u64::MAX, Duration::ZERO);
    let tick = Duration::from_millis(250);
    let steady = loop {
        tokio::time::sleep(tick).await;
        let now = total.load(Ordering::Relaxed);
        let all_started = counters.iter().all(|c| c.load(Ordering::Relaxed) > 0);
        still = if now == last && all_started {
            still + tick
        } else {
            Duration::ZERO
        };
        last = now;
        if still >= Duration::from_secs(3) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(120) {
            break false;
        }
    };
    let rss_after = rss(proxy.pid)?;
    let kernel_after = socket_memory(proxy.pid);
    let accepted = total.load(Ordering::Relaxed);
    let mut ranges: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    ranges.sort();
    eprintln!(
        "  rss {} -> {} KiB, accepted per stream min {} max {} KiB",
        rss_before / 1024,
        rss_after / 1024,
        ranges[0] / 1024,
        ranges[ranges.len() - 1] / 1024
    );
    for t in tasks {
        t.abort();
    }
    drop(senders);
    drop(proxy);
    if let Some(r) = relay {
        r.stop();
    }
    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(StallResult {
        clients,
        streams,
        rss_before,
        rss_after,
        accepted,
        kernel_before,
        kernel_after,
        steady,
    })
}

/// One upload on a new connection: `bytes` with a content-length, or for `for_` with a
/// streamed (chunked upstream) body. Returns the bytes sent and the seconds from the request
/// to its response.
async fn upload_once(
    addr: SocketAddr,
    bytes: Option<u64>,
    for_: Option<Duration>,
) -> Result<(u64, f64)> {
    let (send, conn) = connect(addr).await?;
    let mut send = send.ready().await?;
    let start = Instant::now();
    let (resp, mut s) = send.send_request(request("/read", bytes), false)?;
    let limit = match (bytes, for_) {
        (Some(n), _) => Limit::Bytes(n),
        (None, Some(d)) => Limit::Until(start + d),
        (None, None) => unreachable!(),
    };
    let sent = upload(&mut s, limit, None).await?;
    let status = resp.await?.status();
    let secs = start.elapsed().as_secs_f64();
    if status != 200 {
        bail!("upload answered {status}");
    }
    drop(send);
    conn.abort();
    Ok((sent, secs))
}

// ===== h2 client =====

async fn connect(addr: SocketAddr) -> Result<(h2::client::SendRequest<Bytes>, JoinHandle<()>)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = h2::client::Builder::new().handshake(tcp).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((send, conn))
}

fn request(path: &str, len: Option<u64>) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("http://bench.local{path}"));
    if let Some(n) = len {
        b = b.header("content-length", n);
    }
    b.body(()).expect("valid request")
}

enum Limit {
    Bytes(u64),
    Until(Instant),
    Forever,
}

const CHUNK: usize = 1 << 20;

fn zeros() -> Bytes {
    static Z: OnceLock<Bytes> = OnceLock::new();
    Z.get_or_init(|| Bytes::from(vec![0u8; CHUNK])).clone()
}

/// Sends body data as fast as the peer's flow-control windows allow, never queueing more than
/// the window in the client; returns the bytes sent.
async fn upload(
    s: &mut h2::SendStream<Bytes>,
    limit: Limit,
    progress: Option<(&AtomicU64, &AtomicU64)>,
) -> Result<u64> {
    let data = zeros();
    let mut sent = 0u64;
    loop {
        let want = match limit {
            Limit::Bytes(n) => (n - sent).min(CHUNK as u64) as usize,
            Limit::Until(t) if Instant::now() >= t => 0,
            _ => CHUNK,
        };
        if want == 0 {
            s.send_data(Bytes::new(), true)?;
            return Ok(sent);
        }
        s.reserve_capacity(want);
        let cap = match limit {
            Limit::Until(t) => {
                match tokio::time::timeout_at(t.into(), poll_fn(|cx| s.poll_capacity(cx))).await {
                    Ok(c) => c,
                    Err(_) => continue,
                }
            }
            _ => poll_fn(|cx| s.poll_capacity(cx)).await,
        };
        let cap = cap.ok_or_else(|| anyhow!("stream closed"))??;
        if cap == 0 {
            continue;
        }
        let n = cap.min(want);
        sent += n as u64;
        let end = matches!(limit, Limit::Bytes(total) if sent == total);
        s.send_data(data.slice(..n), end)?;
        if let Some((mine, all)) = progress {
            mine.fetch_add(n as u64, Ordering::Relaxed);
            all.fetch_add(n as u64, Ordering::Relaxed);
        }
        if end {
            return Ok(sent);
        }
    }
}

// ===== wasmgress under test =====

struct Proxy {
    child: std::process::Child,
    pid: u32,
    http: SocketAddr,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Proxy {
    async fn start(bin: &Path, c: &Candidate, backend: SocketAddr) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "h2-windows-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // The log lives beside the manifests folder, not in it: the folder is watched.
        std::fs::create_dir_all(dir.join("manifests"))?;
        std::fs::write(dir.join("manifests/sink.yaml"), manifests(backend.port()))?;
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let https = format!("127.0.0.1:{}", free_port()?);
        let admin = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join("wasmgress.log"))?;
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("run")
            .arg("--manifests")
            .arg(dir.join("manifests"))
            .args([
                "--http-addr",
                &http.to_string(),
                "--https-addr",
                &https,
                "--admin-addr",
                &admin,
            ])
            .args(["--proxy-body-size", "0"])
            // Long enough that nothing times out while uploads are stalled.
            .args([
                "--proxy-send-timeout",
                "3600",
                "--proxy-read-timeout",
                "3600",
            ])
            .args([
                "--client-body-timeout",
                "3600",
                "--keepalive-timeout",
                "3600",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if c.adaptive {
            cmd.env("WASMGRESS_H2_ADAPTIVE", "1");
        } else {
            cmd.env("WASMGRESS_H2_CONN_WINDOW", c.conn.to_string())
                .env("WASMGRESS_H2_STREAM_WINDOW", c.stream.to_string());
        }
        let child = cmd.spawn().context("start wasmgress")?;
        let pid = child.id();
        let proxy = Proxy {
            child,
            pid,
            http,
            dir,
        };
        // Ready once a request through it reaches the backend.
        let start = Instant::now();
        loop {
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), upload_once(http, Some(1), None)).await
                && n == 1
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let log =
                    std::fs::read_to_string(proxy.dir.join("wasmgress.log")).unwrap_or_default();
                bail!("wasmgress not serving after 60 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(proxy.dir.join("wasmgress.log")).unwrap_or_default();
        if !log.contains("h2 window override") {
            bail!(
                "{} does not have the window-override patch (see README.md)",
                bin.display()
            );
        }
        Ok(proxy)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn manifests(port: u16) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: wasmgress
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: wasmgress.io/ingress-controller
---
apiVersion: v1
kind: Service
metadata:
  name: sink
  namespace: default
spec:
  ports:
    - name: http
      port: 80
      targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sink-1
  namespace: default
  labels:
    kubernetes.io/service-name: sink
addressType: IPv4
endpoints:
  - addresses: ["127.0.0.1"]
    conditions:
      ready: true
ports:
  - name: http
    port: {port}
    protocol: TCP
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: sink
  namespace: default
spec:
  ingressClassName: wasmgress
  defaultBackend:
    service:
      name: sink
      port:
        number: 80
"#
    )
}

/// Resident set size in bytes, from /proc/PID/status.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad VmRSS"))?
        .parse()?;
    Ok(kib * 1024)
}

/// Kernel memory held by the process's TCP sockets (receive queue plus send queue, `ss -tmp`
/// `r` + `w`), in bytes; 0 when `ss` is missing. Not part of RSS.
fn socket_memory(pid: u32) -> u64 {
    let Ok(out) = std::process::Command::new("ss").args(["-tmnpH"]).output() else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("pid={pid},");
    let mut sum = 0;
    // Each socket is one line (the skmem part may wrap onto the next line without -H).
    let mut mine = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            mine = line.contains(&needle);
        }
        if !mine {
            continue;
        }
        if let Some(i) = line.find("skmem:(") {
            let inner = &line[i + 7..];
            let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
            for field in inner.split(',') {
                let (k, v) = field.split_at(
                    field
                        .find(|c: char| c.is_ascii_digit())
                        .unwrap_or(field.len()),
                );
                if k == "r" || k == "w" {
                    sum += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    sum
}

// ===== backend =====

/// A plain HTTP/1.1 backend: `/stall...` requests are held with their body never read; others
/// have their body read and discarded, then get 200. Stops (dropping every connection) when
/// `stop` turns true.
async fn backend(stop: watch::Receiver<bool>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut stop_accept = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve(stream) => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                    });
                }
                _ = stop_accept.wait_for(|s| *s) => return,
            }
        }
    });
    Ok(addr)
}

async fn serve(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(64 << 10, stream);
    let mut buf = vec![0u8; 256 << 10];
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                bail!("eof in head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        if path.starts_with("/stall") {
            // Hold the connection, never reading the body.
            std::future::pending::<()>().await;
        }
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line).await?;
                let hex = line.trim_end().split(';').next().unwrap_or("");
                let size = u64::from_str_radix(hex.trim(), 16).context("chunk size")?;
                if size == 0 {
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                discard(&mut r, size + 2, &mut buf).await?;
            }
        } else if let Some(n) = length {
            discard(&mut r, n, &mut buf).await?;
        }
        r.get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

async fn discard(r: &mut BufReader<TcpStream>, mut n: u64, buf: &mut [u8]) -> Result<()> {
    while n > 0 {
        let want = n.min(buf.len() as u64) as usize;
        let k = r.read(&mut buf[..want]).await?;
        if k == 0 {
            bail!("eof in body");
        }
        n -= k as u64;
    }
    Ok(())
}

// ===== delay line =====

/// A TCP relay that delivers every byte `one_way` after it arrived, in both directions, with
/// no bandwidth limit of its own: loopback with a round-trip time of 2 x `one_way`.
struct DelayLine {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DelayLine {
    async fn start(target: SocketAddr, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(delay_pipe(cr, sw, one_way), delay_pipe(sr, cw, one_way));
                });
            }
        });
        Ok(Self { addr, task })
    }

    fn stop(self) {
        self.task.abort();
    }
}

async fn delay_pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Bytes)>();
    let reader = async move {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let bytes = Bytes::copy_from_slice(&buf[..n]);
                    if tx
                        .send((tokio::time::Instant::now() + delay, bytes))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

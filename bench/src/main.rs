//! `bench`: the benchmark harness of issue #6. `cargo run -p bench --release -- all` installs
//! what is missing (nginx, h2load, wrk, Envoy), builds wasmgress and the example backends in
//! release, starts the backends and the three proxies on the same routes with equal worker
//! counts, pinned (proxy on CPU 0, load and backends on CPU 1) where `taskset` exists, runs the
//! scenarios in alternating rounds, prints the markdown report and writes it to
//! `docs/benchmarks.md`, keeping the hand-written notes below the generated part.
//!
//! This file owns the command line and the order of a run; see each module for its part.

mod config;
mod load;
mod machine;
mod procs;
mod proxies;
mod report;
mod scenarios;
mod setup;
mod ws;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use config::Ports;
use proxies::{Kind, Setup, addr};
use report::{Table, Target};
use scenarios::{Bench, Params, Work};

#[derive(Parser)]
#[command(about = "wasmgress against nginx and Envoy on the same routes (issue #6)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, build, start everything, measure every scenario, report.
    All(Opts),
    /// Only find or install the tools and say which are there.
    Install,
}

#[derive(Args, Clone)]
struct Opts {
    /// Rounds per scenario and row.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per round (at least 5 for the protocol).
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Worker threads/processes for every proxy (wasmgress --workers, nginx worker_processes,
    /// Envoy --concurrency).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// HTTP/1.1 connections (wrk -c).
    #[arg(long, default_value_t = 50)]
    h1_conns: usize,
    /// HTTP/2 connections (h2load -c).
    #[arg(long, default_value_t = 10)]
    h2_conns: usize,
    /// Concurrent streams per HTTP/2 connection (h2load -m).
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    /// WebSocket connections doing echo round trips.
    #[arg(long, default_value_t = 50)]
    ws_conns: usize,
    /// Idle WebSocket tunnels for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle_tunnels: usize,
    /// Seconds a round waits for every CPU to be under 15% busy (other tenants) before it
    /// starts anyway; the report counts the rounds that started on a busy machine.
    #[arg(long, default_value_t = 30)]
    quiet_wait: u64,
    /// First of the 127.0.0.1 ports used (base+1 .. base+32).
    #[arg(long, default_value_t = 47000)]
    port_base: u16,
    /// Where the report goes, relative to the repository root.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Do not install missing tools.
    #[arg(long)]
    no_install: bool,
    /// Do not run `cargo build --release` (use the binaries already in target/release).
    #[arg(long)]
    no_build: bool,
    /// Scenarios to run (h1, h2, grpc, ws, plugin, access, traffic, idle).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "h1,h2,grpc,ws,plugin,access,traffic,idle"
    )]
    scenarios: Vec<String>,
}

/// The marker below which `docs/benchmarks.md` is written by hand and kept across runs.
const NOTES_MARKER: &str =
    "<!-- Everything below this line is written by hand and kept by `bench`. -->";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ lives inside the repository")?
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"));
    let work = target_dir.join("bench");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    match cli.cmd {
        Cmd::Install => {
            let tools = setup::tools(true, &work.join("tools"));
            for (name, p) in [
                ("nginx", &tools.nginx),
                ("h2load", &tools.h2load),
                ("wrk", &tools.wrk),
                ("envoy", &tools.envoy),
            ] {
                println!(
                    "{name}: {}",
                    p.as_ref()
                        .map_or("missing".into(), |p| p.display().to_string())
                );
            }
            for n in &tools.notes {
                println!("{n}");
            }
            Ok(())
        }
        Cmd::All(opts) => all(&root, &target_dir, &work, opts),
    }
}

fn all(root: &Path, target_dir: &Path, work: &Path, opts: Opts) -> Result<()> {
    let started = now_utc();
    let tools = setup::tools(!opts.no_install, &work.join("tools"));
    let bins = setup::build(root, target_dir, opts.no_build)?;

    // Before pinning: the machine as it is.
    let machine = machine::describe();
    let cpus = machine::cpus();
    let pin = procs::Pinning::detect(cpus);
    let nofile = procs::raise_nofile();

    let mut notes: Vec<String> = tools.notes.clone();
    let mut wasmgress_flags = Vec::new();
    if setup::wasmgress_has_flag(&bins.wasmgress, "--workers") {
        wasmgress_flags.extend(["--workers".to_string(), opts.workers.to_string()]);
    } else {
        notes.push(format!(
            "wasmgress: `run` has no `--workers` flag in this build, so none was passed; its \
             runtime sizes itself from the CPUs it may run on{}",
            if pin.is_some() {
                " (1, pinned by taskset)"
            } else {
                ""
            }
        ));
    }
    if setup::wasmgress_has_flag(&bins.wasmgress, "--access-log") {
        wasmgress_flags.extend(["--access-log".to_string(), "off".to_string()]);
    }
    if (opts.idle_tunnels as u64) * 2 + 200 > nofile {
        notes.push(format!(
            "open-file limit {nofile} is low for {} idle tunnels",
            opts.idle_tunnels
        ));
    }

    let ports = Ports::from_base(opts.port_base);
    let cert = config::cert(work)?;
    let nginx_v = tools
        .nginx
        .as_ref()
        .map(|n| setup::version(n, &["-v"]))
        .unwrap_or_default();
    let s = Setup {
        work: work.to_path_buf(),
        ports,
        cert,
        bins: bins.clone(),
        workers: opts.workers,
        pin: pin.clone(),
        wasmgress_flags: wasmgress_flags.clone(),
        nginx_version: config::nginx_version(&nginx_v).unwrap_or((1, 22)),
    };
    if let Some(p) = &pin {
        procs::pin_self(&p.load)?;
    }

    let grpc_body = work.join("hello.grpc");
    std::fs::write(&grpc_body, grpc_hello("world")).context("writing the gRPC body")?;
    let want = |k: &str| opts.scenarios.iter().any(|s| s == k);
    // The second echo process is the `/ewma` route's second endpoint; only `traffic` uses it.
    let backends = proxies::start_backends(&s, want("traffic"))?;
    let mut running = Vec::new();
    let mut missing = Vec::new();
    for kind in Kind::ALL {
        let present = match kind {
            Kind::Wasmgress => Ok(()),
            Kind::Nginx => tools.nginx.as_ref().map(|_| ()).context("nginx is missing"),
            Kind::Envoy => tools.envoy.as_ref().map(|_| ()).context("Envoy is missing"),
        };
        let started = present
            .and_then(|()| proxies::start(kind, &s, &tools))
            .and_then(|r| {
                proxies::check_routes(kind, &ports)
                    .and_then(|()| proxies::check_grpc(kind, &ports, &grpc_body))
                    .with_context(|| format!("{}'s routes", kind.name()))?;
                Ok(r)
            });
        match started {
            Ok(r) => {
                eprintln!("bench: {} up (pid {})", kind.name(), r.proc.pid());
                running.push(r);
            }
            Err(e) => {
                eprintln!("bench: {} not measured: {e:#}", kind.name());
                missing.push((kind, format!("{e:#}")));
            }
        }
    }
    if !running.iter().any(|r| r.kind == Kind::Wasmgress) {
        let why = missing
            .iter()
            .find(|(k, _)| *k == Kind::Wasmgress)
            .map(|(_, w)| w.clone());
        anyhow::bail!("wasmgress did not start: {}", why.unwrap_or_default());
    }

    let params = Params {
        rounds: opts.rounds,
        secs: opts.secs,
        h1_conns: opts.h1_conns,
        h2_conns: opts.h2_conns,
        h2_streams: opts.h2_streams,
        ws_conns: opts.ws_conns,
        idle_tunnels: opts.idle_tunnels,
        quiet_wait: std::time::Duration::from_secs(opts.quiet_wait),
    };
    let mut bench = Bench {
        setup: &s,
        tools: &tools,
        params,
        running,
        missing,
        ws: ws::Client::new()?,
        scratch: work.to_path_buf(),
    };

    let h1_tool = bench.h1_load(0, "/").tool();
    let mut tables: Vec<Table> = Vec::new();
    if want("h1") {
        let specs = bench.rows_per_proxy(
            |k| Work::Load(bench.h1_load(k.http(&ports), "/")),
            Some(Work::Load(bench.h1_load(ports.echo, "/"))),
        );
        tables.push(bench.table(
            "h1",
            "HTTP/1.1 keep-alive, small GET",
            format!(
                "`{h1_tool}`, 1 thread, {} keep-alive connections, `GET /` with `Host: {}` on the \
                 plain port; the echo backend answers ~400 bytes of JSON. Direct: the same load \
                 on the echo backend's port.",
                opts.h1_conns,
                config::HOST
            ),
            "req/s",
            specs,
        ));
    }
    if want("h2") {
        let specs = bench.rows_per_proxy(
            |k| Work::Load(bench.h2_load(k.https(&ports), "/", true, None)),
            Some(Work::Load(bench.h2_load(ports.echo, "/", false, None))),
        );
        tables.push(bench.table(
            "h2",
            "HTTPS HTTP/2, small GET",
            format!(
                "`h2load`, 1 thread, {} TLS connections (SNI {}, ALPN h2, same ECDSA P-256 \
                 certificate for every proxy) × {} concurrent streams, `GET /`; upstream HTTP/1.1 \
                 keep-alive. Latency percentiles from h2load's per-request log. Direct: h2c \
                 (prior knowledge, no TLS) to the echo backend.",
                opts.h2_conns,
                config::HOST,
                opts.h2_streams
            ),
            "req/s",
            specs,
        ));
    }
    if want("grpc") {
        let path = "/helloworld.Greeter/SayHello";
        let specs = bench.rows_per_proxy(
            |k| Work::Load(bench.h2_load(k.https(&ports), path, true, Some(grpc_body.clone()))),
            Some(Work::Load(bench.h2_load(
                ports.greeter,
                path,
                false,
                Some(grpc_body.clone()),
            ))),
        );
        tables.push(bench.table(
            "grpc",
            "gRPC unary over TLS h2 to an h2c backend",
            format!(
                "`h2load`, 1 thread, {} TLS connections × {} streams, `POST {path}` with a \
                 gRPC-framed HelloRequest (5-byte prefix + protobuf, {} bytes), `content-type: \
                 application/grpc`, `te: trailers`; the proxies forward over h2c to the tonic \
                 Greeter (nginx with `grpc_pass grpc://`). Counted by HTTP status (h2load does \
                 not read grpc-status); before the rounds one call through each proxy with curl \
                 must end with `grpc-status: 0`. Direct: h2c to the Greeter.",
                opts.h2_conns,
                opts.h2_streams,
                grpc_hello("world").len()
            ),
            "req/s",
            specs,
        ));
    }
    if want("ws") {
        let target = |port| ws::Target {
            addr: addr(port),
            host: config::HOST.into(),
            path: "/ws".into(),
        };
        let mut specs = bench.rows_per_proxy(
            |k| Work::Ws(target(k.http(&ports))),
            Some(Work::Ws(target(ports.ws))),
        );
        // The same tunnel with a message hook, right after wasmgress's plain row.
        let hooked = scenarios::Spec {
            label: "wasmgress, message hook (`/ws-guard`)".into(),
            kind: Some(Kind::Wasmgress),
            work: Work::Ws(ws::Target {
                path: "/ws-guard".into(),
                ..target(ports.wg_http)
            }),
        };
        let at = specs
            .iter()
            .position(|s| s.kind == Some(Kind::Wasmgress))
            .map_or(specs.len(), |i| i + 1);
        specs.insert(at, hooked);
        tables.push(bench.table(
            "ws",
            "WebSocket echo round trips",
            format!(
                "This harness's tokio-tungstenite client (one thread), {} connections over \
                 HTTP/1.1 Upgrade on the plain port, each sending a 32-byte binary message and \
                 awaiting its echo, sequentially, for the round; latency is per round trip. \
                 Direct: the WebSocket echo backend's port. `/ws-guard` is the same tunnel \
                 through the `ws-guard` example plugin (`max-bytes: 4096`): frames parsed on \
                 both sides and one `on-websocket-message` call per message in each direction \
                 (two per round trip), against the zero-copy byte tunnel of `/ws`.",
                opts.ws_conns
            ),
            "round trips/s",
            specs,
        ));
    }
    if want("plugin") {
        let mut specs = Vec::new();
        for (label, kind, path) in [
            (
                "wasmgress, static header policy (`/static`)",
                Kind::Wasmgress,
                "/static",
            ),
            (
                "wasmgress, Wasm plugin hook (`/plugin`)",
                Kind::Wasmgress,
                "/plugin",
            ),
            (
                "wasmgress, Wasm response-body hook (`/body`)",
                Kind::Wasmgress,
                "/body",
            ),
            ("nginx, static header (`/static`)", Kind::Nginx, "/static"),
            ("Envoy, static header (`/static`)", Kind::Envoy, "/static"),
        ] {
            specs.push(scenarios::Spec {
                label: label.into(),
                kind: Some(kind),
                work: Work::Load(bench.h1_load(kind.http(&ports), path)),
            });
        }
        tables.push(bench.table(
            "plugin",
            "Per-request Wasm plugin against a static header policy",
            format!(
                "As the HTTP/1.1 scenario (`{h1_tool}`, {} connections). `/static` sets \
                 `x-seen-by: static` through `wasmgress.io/request-headers` (a policy the host \
                 applies natively: no Wasm call per request); `/plugin` attaches the test plugin \
                 `set-header` (`wasmgress.io/plugins: set-header`, loaded with `--plugin-dir`), \
                 whose `on-request-headers` hook reads `user-agent` and sets `x-seen-by` on every \
                 request; `/body` attaches the test plugin `body` with only its response-body \
                 hook (`wasmgress.io/plugin.body.hooks: response-body`), which upper-cases each \
                 chunk of the echo's answer and appends `|resp-end` at its end: one \
                 `on-response-body` call per response here (the echo's answer is one chunk with \
                 a length), and the body goes out chunked. nginx and Envoy set the same header \
                 statically, for scale. The errors \
                 column of wasmgress rows counts failed requests only; the plugin hook calls \
                 seen on /metrics are listed below the table.",
                opts.h1_conns
            ),
            "req/s",
            specs,
        ));
    }
    if want("access") {
        let auth = format!("Authorization: {}", config::AUTHORIZATION);
        let origin = format!("Origin: {}", config::ORIGIN);
        let wg = ports.wg_http;
        let specs = vec![
            scenarios::Spec {
                label: "wasmgress, plain route (`/`)".into(),
                kind: Some(Kind::Wasmgress),
                work: Work::Load(bench.h1_load(wg, "/")),
            },
            scenarios::Spec {
                label: "wasmgress, basic-auth, bcrypt user, cached (`/auth`)".into(),
                kind: Some(Kind::Wasmgress),
                work: Work::Load(bench.h1_load_with(wg, "/auth", &[&auth])),
            },
            scenarios::Spec {
                label: "wasmgress, ip-access + CORS (`/cors`)".into(),
                kind: Some(Kind::Wasmgress),
                work: Work::Load(bench.h1_load_with(wg, "/cors", &[&origin])),
            },
            scenarios::Spec {
                label: "nginx, plain route (`/`)".into(),
                kind: Some(Kind::Nginx),
                work: Work::Load(bench.h1_load(ports.nginx_http, "/")),
            },
        ];
        tables.push(bench.table(
            "access",
            "Access control: basic-auth and ip-access + CORS against the plain route",
            format!(
                "As the HTTP/1.1 scenario (`{h1_tool}`, {} connections), wasmgress only (nginx's \
                 plain route for scale). `/auth` carries `auth-type: basic` over a Secret with one \
                 bcrypt (cost 10) user and every request sends its credentials: after the first \
                 check per minute they are answered from the verified-credentials cache (nginx \
                 would pay bcrypt on every request). `/cors` carries `allowlist-source-range` \
                 (the load comes from 127.0.0.1, inside it) and `enable-cors` with an origin \
                 list; every request sends a matching `Origin`, so every response gets the CORS \
                 headers and `Vary: Origin`.",
                opts.h1_conns
            ),
            "req/s",
            specs,
        ));
    }
    if want("traffic") {
        let wg = ports.wg_http;
        // Before the rounds: which echo process answers `/ewma`, one request at a time.
        let probe = 50;
        let seen = match proxies::backends_seen(addr(wg), "/ewma", probe) {
            Ok(seen) => seen
                .iter()
                .map(|(b, n)| format!("{n} by `{b}`"))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("failed: {e:#}"),
        };
        let row = |label: &str, kind: Kind, port: u16, path: &str| scenarios::Spec {
            label: label.into(),
            kind: Some(kind),
            work: Work::Load(bench.h1_load(port, path)),
        };
        let specs = vec![
            row(TRAFFIC_PLAIN, Kind::Wasmgress, wg, "/"),
            row(TRAFFIC_CANARY, Kind::Wasmgress, wg, "/canary"),
            row(TRAFFIC_EWMA, Kind::Wasmgress, wg, "/ewma"),
            row(
                "nginx, plain route (`/`)",
                Kind::Nginx,
                ports.nginx_http,
                "/",
            ),
        ];
        let [a, b, c, d] = config::SECOND_ECHO_IP;
        tables.push(bench.table(
            "traffic",
            "Traffic management: canary and EWMA routes against the plain route",
            format!(
                "As the HTTP/1.1 scenario (`{h1_tool}`, {conns} connections), wasmgress only \
                 (nginx's plain route for scale). `/` is the plain route: one endpoint, \
                 round-robin, no canary. `/canary` is a main Ingress to the echo Service plus a \
                 canary Ingress for the same host and path (`canary: \"true\"`, \
                 `canary-weight: \"{weight}\"`) to a second Service on the same echo process: \
                 every request runs the canary decision, which with no `canary-by-header` or \
                 `canary-by-cookie` configured is the weighted draw alone, and about {weight}% \
                 take the canary's backend (counted below from `wasmgress_canary_requests`). \
                 `/ewma` carries `load-balance: ewma` over a Service with two endpoints: the echo \
                 binds the one address it is given (127.0.0.1 here), so a second echo process \
                 (`echo-2`, same binary, also on the load CPU) listens on {a}.{b}.{c}.{d} on the \
                 same port; each request draws two endpoints, takes the one with the lower \
                 peak-EWMA score and updates its average when the response comes. Before the \
                 rounds, {probe} sequential requests to `/ewma` were answered {seen}. The plain \
                 route's one echo process and `/ewma`'s two do the same backend work on the same \
                 CPU.",
                conns = opts.h1_conns,
                weight = config::CANARY_WEIGHT,
            ),
            "req/s",
            specs,
        ));
    }
    let idle = want("idle").then(|| bench.idle());
    drop(bench);
    drop(backends);

    let md = render(
        &started,
        &opts,
        &machine,
        &pin,
        &tools,
        &bins,
        &wasmgress_flags,
        &notes,
        &tables,
        idle.as_ref(),
    );
    println!("{md}");
    let out = root.join(&opts.out);
    let kept = std::fs::read_to_string(&out)
        .ok()
        .and_then(|old| {
            old.split_once(NOTES_MARKER)
                .map(|(_, notes)| notes.to_owned())
        })
        .unwrap_or_else(|| "\n\n## Notes\n\n(none yet)\n".into());
    config::write(&out, &format!("{md}\n{NOTES_MARKER}{kept}"))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

/// A gRPC message frame holding `HelloRequest { name }`: flag 0, u32 length, protobuf.
fn grpc_hello(name: &str) -> Vec<u8> {
    let mut msg = vec![0x0a, name.len() as u8];
    msg.extend_from_slice(name.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn render(
    started: &str,
    opts: &Opts,
    machine: &[(String, String)],
    pin: &Option<procs::Pinning>,
    tools: &setup::Tools,
    bins: &setup::Binaries,
    wasmgress_flags: &[String],
    notes: &[String],
    tables: &[Table],
    idle: Option<&report::Idle>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Benchmarks\n\nGenerated by `cargo run -p bench --release -- all` ({started}); \
         everything above the notes marker below is rewritten by each run. Numbers are medians \
         over {} rounds of {} s per row, the rows alternating within each round after a 1 s \
         warm-up per row; ratios divide medians. All traffic is on 127.0.0.1.\n",
        opts.rounds, opts.secs
    );
    o += "## Machine and setup\n\n| | |\n|---|---|\n";
    for (k, v) in machine {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    let _ = writeln!(o, "| pinning | {} |", procs::Pinning::describe(pin));
    let _ = writeln!(
        o,
        "| workers | {n} each: wasmgress {}, nginx `worker_processes {n}`, Envoy `--concurrency {n}` |",
        if wasmgress_flags.iter().any(|f| f == "--workers") {
            format!("`--workers {}`", opts.workers)
        } else {
            "no `--workers` flag in this build (its runtime follows the CPUs it is pinned to)"
                .into()
        },
        n = opts.workers
    );
    let ver = |p: &Option<PathBuf>, args: &[&str]| {
        p.as_ref()
            .map_or("missing".into(), |p| setup::version(p, args))
    };
    let _ = writeln!(
        o,
        "| wasmgress | {} (release), flags {} |",
        setup::version(&bins.wasmgress, &["--version"]),
        if wasmgress_flags.is_empty() {
            "none extra".into()
        } else {
            format!("`{}`", wasmgress_flags.join(" "))
        }
    );
    let _ = writeln!(o, "| nginx | {} |", ver(&tools.nginx, &["-v"]));
    let _ = writeln!(o, "| Envoy | {} |", ver(&tools.envoy, &["--version"]));
    let _ = writeln!(o, "| wrk | {} |", ver(&tools.wrk, &["-v"]));
    let _ = writeln!(o, "| h2load | {} |", ver(&tools.h2load, &["--version"]));
    let _ = writeln!(
        o,
        "| rustc | {} |",
        setup::version(Path::new("rustc"), &["-V"])
    );
    let _ = writeln!(
        o,
        "| backends | the repository's `echo`, `greeter` and `ws-echo` example binaries, release |"
    );
    let _ = writeln!(
        o,
        "| load average at the end (1, 5, 15 min) | {} |",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !notes.is_empty() {
        o += "\nTools and flags:\n\n";
        for n in notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    o += "\n## Results\n\n\
          Columns: *proxy CPU* is the proxy's user + system time over the round (all its \
          processes and threads, from /proc/PID/stat) in % of one core; *proxy CPU per request* \
          divides it by the successful requests; *proxy RSS* is VmRSS at the end of the round; \
          *machine CPUs busy* is how busy CPU 0 / CPU 1 were over the round, anyone's work \
          included (the machine is shared). With the proxy pinned to CPU 0 and the load \
          generator and backend to CPU 1, a proxy below 100% while CPU 1 is at 100% means the \
          load side was the limit, and CPU per request is the fairer comparison.\n\n";
    for t in tables {
        o += &t.markdown();
        if t.key == "plugin" {
            o += &plugin_notes(t);
        }
        if t.key == "traffic" {
            o += &traffic_notes(t);
        }
        o.push('\n');
    }
    if let Some(i) = idle {
        o += &i.markdown();
        o.push('\n');
    }
    o += &report::targets_markdown(&targets(tables, idle));
    o
}

fn plugin_notes(t: &Table) -> String {
    let mut o = String::from("\n");
    for r in &t.rows {
        if r.kind == Some(Kind::Wasmgress) && !r.samples.is_empty() {
            let s = r.summary();
            let _ = writeln!(
                o,
                "- {}: {} plugin hook calls on /metrics during the rounds, for {} successful requests.",
                r.label,
                s.hook_calls.map_or("?".into(), |h| h.to_string()),
                s.ok
            );
        }
    }
    o
}

/// The wasmgress rows of the traffic scenario, found again by label for its notes.
const TRAFFIC_PLAIN: &str = "wasmgress, plain route, round-robin (`/`)";
const TRAFFIC_CANARY: &str = "wasmgress, weighted canary (`/canary`)";
const TRAFFIC_EWMA: &str = "wasmgress, EWMA over two endpoints (`/ewma`)";

fn traffic_notes(t: &Table) -> String {
    let mut o = String::from("\n");
    let row = |label: &str| t.rows.iter().find(|r| r.label == label);
    for (what, label) in [
        ("canary route minus plain route", TRAFFIC_CANARY),
        ("EWMA route minus plain route", TRAFFIC_EWMA),
    ] {
        let diffs = row(TRAFFIC_PLAIN)
            .zip(row(label))
            .map(|(base, other)| report::paired_cpu_diffs(base, other))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "- {what}: {} (proxy CPU per request, paired by round; rounds: {}).",
            report::median(&diffs).map_or("—".into(), |d| format!("{d:+.2} µs")),
            if diffs.is_empty() {
                "none".into()
            } else {
                diffs
                    .iter()
                    .map(|d| format!("{d:+.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    if let Some(r) = row(TRAFFIC_CANARY).filter(|r| !r.samples.is_empty()) {
        let s = r.summary();
        let _ = writeln!(
            o,
            "- `/canary`: the canary took {} of {} successful requests during the rounds{} \
             (`wasmgress_canary_requests` on /metrics).",
            s.canary_requests.map_or("?".into(), |c| c.to_string()),
            s.ok,
            s.canary_requests
                .filter(|_| s.ok > 0)
                .map_or(String::new(), |c| format!(
                    ", {:.1}%",
                    c as f64 * 100.0 / s.ok as f64
                ))
        );
    }
    o
}

fn targets(tables: &[Table], idle: Option<&report::Idle>) -> Vec<Target> {
    let mut out = Vec::new();
    let find = |k: &str| tables.iter().find(|t| t.key == k);
    if let Some(t) = find("h1") {
        report::throughput_targets(t, &mut out, true, true);
    }
    if let Some(t) = find("h2") {
        report::throughput_targets(t, &mut out, true, true);
    }
    if let Some(t) = find("grpc") {
        report::throughput_targets(t, &mut out, false, false);
    }
    match idle.map(|i| (i, i.median_of(Kind::Wasmgress))) {
        Some((_, Some(k))) => out.push(Target {
            what: "≤ 8 KiB RSS per idle WebSocket tunnel".into(),
            measured: format!("{k:.1} KiB"),
            met: Some(k <= 8.0),
        }),
        _ => out.push(Target {
            what: "≤ 8 KiB RSS per idle WebSocket tunnel".into(),
            measured: "—".into(),
            met: None,
        }),
    }
    let plugin = find("plugin");
    let stat = plugin.and_then(|t| {
        t.rows
            .iter()
            .find(|r| r.label.starts_with("wasmgress, static"))
    });
    let hook = plugin.and_then(|t| {
        t.rows
            .iter()
            .find(|r| r.label.starts_with("wasmgress, Wasm"))
    });
    let (ss, hs) = (stat.map(|r| r.summary()), hook.map(|r| r.summary()));
    // Paired by round: static and plugin run back to back in each round, so the per-round
    // difference cancels slow drifts of a shared machine better than a difference of medians.
    let diffs: Vec<f64> = stat
        .zip(hook)
        .map(|(s, h)| report::paired_cpu_diffs(s, h))
        .unwrap_or_default();
    let cpu_added = report::median(&diffs);
    let time_added = ss
        .as_ref()
        .zip(hs.as_ref())
        .and_then(|(s, h)| Some(1e6 / h.rps? - 1e6 / s.rps?));
    out.push(Target {
        what: "≤ 1 µs median added per per-request Wasm hook (measured as the proxy's CPU time \
               per request, plugin route minus static route, paired by round)"
            .into(),
        measured: match (cpu_added, time_added) {
            (Some(c), Some(t)) => format!(
                "{c:.2} µs CPU per request (rounds: {}; and {t:.2} µs more per request at \
                 saturation, from the median throughputs)",
                diffs
                    .iter()
                    .map(|d| format!("{d:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "—".into(),
        },
        met: cpu_added.map(|c| c <= 1.0),
    });
    let static_hooks = ss.as_ref().and_then(|s| s.hook_calls);
    out.push(Target {
        what: "0 Wasm calls on static-policy routes".into(),
        measured: static_hooks.map_or("—".into(), |h| {
            format!(
                "{h} hook calls during {} requests to `/static`",
                ss.as_ref().map_or(0, |s| s.ok)
            )
        }),
        met: static_hooks.map(|h| h == 0),
    });
    out
}

//! The `wasmgress` command line: `run`, `validate`, `demo`.
//!
//! Only argument parsing, logging setup and exit codes live here; everything else is in the
//! library so tests and future front-ends share it.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use wasmgress::compile::{Identity, LastGood, Options};
use wasmgress::diagnostic::Severity;
use wasmgress::plugin::{Registry, RuntimeConfig};
use wasmgress::proxy::Settings;
use wasmgress::proxy::upstream::Upstreams;
use wasmgress::route::Policy;
use wasmgress::run::{self, RunOptions};
use wasmgress::source::files::FileSource;
use wasmgress::{demo, tls};

#[derive(Parser, Debug)]
#[command(
    name = "wasmgress",
    version,
    about = "Kubernetes ingress controller with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the Ingresses found in a folder of Kubernetes YAML, reloading on change.
    Run {
        /// Folder of Kubernetes manifests (*.yaml, *.yml; read recursively).
        #[arg(long)]
        manifests: PathBuf,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Compile a folder and print every diagnostic; exit 1 if any Ingress is rejected.
    Validate {
        /// Folder of Kubernetes manifests.
        dir: PathBuf,
        #[command(flatten)]
        class: ClassArgs,
    },
    /// The quickstart: generate demo certificates, start demo backends and serve
    /// examples/quickstart.
    Demo {
        /// Folder of quickstart manifests; certificates are written to its generated/ folder.
        #[arg(long, default_value = "examples/quickstart")]
        dir: PathBuf,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct ClassArgs {
    /// Folder of extra plugins (`*.wasm` components), watched and reloaded like manifests.
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Serve Ingresses of this class (spec.ingressClassName or kubernetes.io/ingress.class).
    #[arg(long, default_value = "wasmgress")]
    ingress_class: String,
    /// The spec.controller value of IngressClasses that are ours.
    #[arg(long, default_value = "wasmgress.io/ingress-controller")]
    controller_name: String,
}

#[derive(Args, Debug, Clone)]
struct ProxyArgs {
    /// Plain HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// TLS listener (HTTP/1.1 and HTTP/2 by ALPN).
    #[arg(long, default_value = "0.0.0.0:8443")]
    https_addr: SocketAddr,
    /// Admin listener: /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_addr: SocketAddr,
    #[command(flatten)]
    class: ClassArgs,
    /// Default seconds to wait for an upstream connection.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    proxy_connect_timeout: u64,
    /// Default seconds of silence allowed from an upstream: before its response head, between
    /// reads of its body, and from the backend side of a WebSocket (nginx's proxy-read-timeout).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    proxy_read_timeout: u64,
    /// Default seconds of silence allowed from a client while sending its request body or on
    /// its side of a WebSocket (nginx's proxy-send-timeout).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    proxy_send_timeout: u64,
    /// Access log on stdout: one line per request or tunnel.
    #[arg(long, value_enum, default_value = "off")]
    access_log: wasmgress::proxy::access::Format,
    /// Proxy worker threads (like nginx's worker_processes); default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Port that HTTP-to-HTTPS redirects point at (where clients reach the TLS listener).
    #[arg(long, default_value_t = 443, value_name = "PORT")]
    redirect_https_port: u16,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmgress: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { dir, class } => {
            let builtins = builtin_plugins()?;
            let (plugins, problems) = run::load_plugins(&builtins, class.plugin_dir.as_deref());
            for p in &problems {
                println!("error: {p}");
            }
            let options = compile_options(&class, Policy::default(), Arc::new(plugins))?;
            let mut source = FileSource::new(&dir);
            let compiled = run::compile_folder(&mut source, &options, &LastGood::default())?;
            for d in &compiled.diagnostics {
                println!("{d}");
            }
            let warnings = wasmgress::compile::count(&compiled.diagnostics, Severity::Warning);
            println!(
                "{} Ingress(es) accepted, {} rejected, {warnings} warning(s)",
                compiled.accepted, compiled.rejected
            );
            Ok(if compiled.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Run { manifests, proxy } => {
            let options = run_options(manifests, &proxy)?;
            runtime(proxy.workers)?.block_on(run::run(options, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir, proxy } => {
            let generated = demo::generate(&dir)?;
            let options = run_options(dir, &proxy)?;
            runtime(proxy.workers)?.block_on(async {
                demo::start_backends().await?;
                eprintln!(
                    "{}",
                    demo::instructions(&generated, proxy.http_addr, proxy.https_addr)
                );
                run::run(options, shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime(workers: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.into());
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn builtin_plugins() -> anyhow::Result<Arc<Registry>> {
    let registry = Registry::with_builtins(RuntimeConfig::default())
        .context("cannot load the built-in plugins")?;
    Ok(Arc::new(registry))
}

fn compile_options(
    class: &ClassArgs,
    defaults: Policy,
    plugins: Arc<Registry>,
) -> anyhow::Result<Options> {
    let default_certificate =
        tls::default_certificate().context("cannot create the default certificate")?;
    Ok(Options {
        identity: Identity {
            class: class.ingress_class.clone(),
            controller: class.controller_name.clone(),
        },
        defaults,
        default_certificate: Arc::new(default_certificate),
        upstreams: Upstreams::new(),
        plugins,
        route_stats: wasmgress::metrics::RouteStatsRegistry::new(),
    })
}

fn run_options(manifests: PathBuf, args: &ProxyArgs) -> anyhow::Result<RunOptions> {
    wasmgress::proxy::access::init(args.access_log);
    let defaults = Policy {
        connect_timeout: Duration::from_secs(args.proxy_connect_timeout),
        read_timeout: Duration::from_secs(args.proxy_read_timeout),
        send_timeout: Duration::from_secs(args.proxy_send_timeout),
        ..Policy::default()
    };
    let builtins = builtin_plugins()?;
    let (plugins, problems) = run::load_plugins(&builtins, args.class.plugin_dir.as_deref());
    for p in &problems {
        tracing::error!("{p}");
    }
    Ok(RunOptions {
        manifests,
        plugin_dir: args.class.plugin_dir.clone(),
        builtins,
        http_addr: args.http_addr,
        https_addr: args.https_addr,
        admin_addr: args.admin_addr,
        compile: compile_options(&args.class, defaults, Arc::new(plugins))?,
        settings: Settings {
            redirect_https_port: args.redirect_https_port,
        },
    })
}

/// Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! The `wasmgress` command line: `run`, `validate`, `webhook`, `demo`, `plugin new|check`.
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
use wasmgress::cluster::ClusterOptions;
use wasmgress::compile::{Identity, LastGood, Options};
use wasmgress::diagnostic::Severity;
use wasmgress::plugin::{Registry, RuntimeConfig};
use wasmgress::proxy::Settings;
use wasmgress::proxy::listener::Limits;
use wasmgress::proxy::view::Trust;
use wasmgress::route::Policy;
use wasmgress::run::{self, RunOptions};
use wasmgress::source::files::FileSource;
use wasmgress::source::kube::KubeOptions;
use wasmgress::upstream::Upstreams;
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
    /// Serve the Ingresses found in a folder of Kubernetes YAML (`--manifests`) or in a cluster
    /// (`--kube`), following every change.
    Run {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        kube: KubeArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Validating admission webhook for Ingresses: AdmissionReview v1 on POST /validate over
    /// TLS, judged by the same compile as `run` against the cluster (or a folder) as it is.
    Webhook {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8444")]
        addr: SocketAddr,
        /// PEM certificate chain the API server trusts (re-read when the file changes).
        #[arg(long, value_name = "FILE")]
        tls_cert: PathBuf,
        /// PEM private key of that certificate.
        #[arg(long, value_name = "FILE")]
        tls_key: PathBuf,
        /// Judge against this folder instead of the cluster.
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
        #[command(flatten)]
        kube: KubeArgs,
        #[command(flatten)]
        class: ClassArgs,
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
    /// For plugin authors: start a plugin project, check a built plugin.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Write a new plugin project (a Rust crate with the SDK vendored), ready to build with
    /// `cargo build --release --target wasm32-wasip2`.
    New {
        /// The plugin's name, as Ingresses attach it: lower-case letters, digits and `-`,
        /// starting with a letter.
        name: String,
        /// The project folder to create (default: ./NAME); it must not exist.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Load a plugin component as `--plugin-dir` does and print what the host sees: name,
    /// version, ABI, SHA-256, owned annotations, hooks, metrics and capabilities. Exit 1 if it
    /// would not load.
    Check {
        /// The component (`*.wasm`).
        file: PathBuf,
    },
}

/// Exactly one source.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
struct SourceArgs {
    /// Folder of Kubernetes manifests (*.yaml, *.yml; read recursively).
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster config, `--kubeconfig` or KUBECONFIG).
    #[arg(long)]
    kube: bool,
}

#[derive(Args, Debug, Clone)]
struct KubeArgs {
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Only this namespace's Ingresses, Services, EndpointSlices and Secrets (default: all).
    #[arg(long, value_name = "NS")]
    watch_namespace: Option<String>,
    /// Namespace whose ConfigMaps labelled wasmgress.io/plugin carry plugins.
    #[arg(
        long,
        value_name = "NS",
        env = "POD_NAMESPACE",
        default_value = "wasmgress"
    )]
    plugin_namespace: String,
    /// Milliseconds from the first change of a batch to the compile that includes it.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    debounce_ms: u64,
    /// Let EndpointSlices send traffic to loopback, link-local and unspecified addresses and to
    /// this pod's own (refused by default in a cluster: only for people who know why).
    #[arg(long)]
    allow_local_endpoints: bool,
    /// In a cluster, the hosts plugins may call at all with the `http` capability (comma
    /// list of `HOST`, `*.SUFFIX`, each with an optional `:PORT`); an Ingress's grant can only
    /// narrow it. Empty (the default): plugins make no outbound calls in a cluster. Use full
    /// names: a short one goes through the pod's DNS search path (`idp.corp` may resolve to
    /// Service `idp` of namespace `corp`).
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    plugin_http_allow: Vec<String>,
    /// This pod's own addresses, refused as endpoints (the downward API's status.podIPs).
    #[arg(long, value_name = "IP[,IP]", env = "POD_IPS", value_delimiter = ',')]
    pod_ips: Vec<std::net::IpAddr>,
}

impl KubeArgs {
    /// In a cluster: plugins call only the hosts `--plugin-http-allow` lists.
    fn restrict_plugin_calls(&self) -> anyhow::Result<()> {
        let allowed = self
            .plugin_http_allow
            .iter()
            .filter(|h| !h.trim().is_empty())
            .map(|h| wasmgress::plugin::outbound::HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--plugin-http-allow: {e}"))?;
        wasmgress::plugin::outbound::restrict_to(allowed);
        Ok(())
    }

    /// The endpoint addresses a cluster's tenants may not aim the proxy at.
    fn endpoint_guard(&self) -> Option<wasmgress::compile::EndpointGuard> {
        (!self.allow_local_endpoints).then(|| wasmgress::compile::EndpointGuard {
            own: self.pod_ips.clone(),
        })
    }
}

#[derive(Args, Debug, Clone)]
struct ClusterArgs {
    /// Service whose load-balancer addresses go into Ingress status (NS/NAME).
    #[arg(
        long,
        value_name = "NS/NAME",
        conflicts_with = "publish_status_address"
    )]
    publish_service: Option<String>,
    /// Addresses to put into Ingress status instead (IP or hostname, comma-separated).
    #[arg(long, value_name = "ADDR[,ADDR]", value_delimiter = ',')]
    publish_status_address: Vec<String>,
    /// Name of the Lease the replicas elect a status writer with.
    #[arg(long, value_name = "NAME", default_value = "wasmgress-leader")]
    election_id: String,
    /// Namespace of that Lease (default: this pod's namespace).
    #[arg(
        long,
        value_name = "NS",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    election_namespace: String,
    /// Seconds a leader's Lease lasts without renewal before another replica may take it.
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    election_lease_seconds: u64,
    /// This replica's name in the Lease and in Events (default: the pod's name).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pod_name: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct ClassArgs {
    /// Folder of extra plugins (`*.wasm` components), watched and reloaded like manifests.
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Wall-clock deadline of one request-time plugin call (a hook; body and message hooks get
    /// 1 ms more per 64 KiB they are handed). A call past it fails like a trap.
    #[arg(long, value_name = "MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    plugin_hook_deadline_ms: u64,
    /// Serve Ingresses of this class (spec.ingressClassName or kubernetes.io/ingress.class).
    #[arg(long, default_value = "wasmgress")]
    ingress_class: String,
    /// The spec.controller value of IngressClasses that are ours.
    #[arg(long, default_value = "wasmgress.io/ingress-controller")]
    controller_name: String,
    /// Service (NS/NAME, its first port) that answers requests no Ingress takes; default 404.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_ns_name)]
    default_backend_service: Option<(String, String)>,
    /// Let an Ingress reference Secrets of other namespaces (`auth-secret: NS/NAME`), as
    /// ingress-nginx's option of that name; by default each reads only its own namespace.
    #[arg(long)]
    allow_cross_namespace_resources: bool,
    #[command(flatten)]
    global_auth: GlobalAuthArgs,
}

/// Controller-wide external authentication, ingress-nginx's `global-auth-*` ConfigMap keys:
/// each means what the `auth-*` annotation of the same name means, for every Ingress without
/// its own `auth-url` that does not set `enable-global-auth: "false"`.
#[derive(Args, Debug, Clone)]
struct GlobalAuthArgs {
    /// The auth service for every Ingress without its own `auth-url`.
    #[arg(long, value_name = "URL")]
    global_auth_url: Option<String>,
    /// Method of the auth subrequests (GET).
    #[arg(long, value_name = "METHOD", requires = "global_auth_url")]
    global_auth_method: Option<String>,
    /// Where a 401 redirects instead (with `rd=` the original URL).
    #[arg(long, value_name = "URL", requires = "global_auth_url")]
    global_auth_signin: Option<String>,
    /// The sign-in query parameter carrying the original URL (`rd`).
    #[arg(long, value_name = "NAME", requires = "global_auth_url")]
    global_auth_signin_redirect_param: Option<String>,
    /// Auth answer headers copied onto upstream requests, comma-separated.
    #[arg(long, value_name = "HEADERS", requires = "global_auth_url")]
    global_auth_response_headers: Option<String>,
    /// `X-Auth-Request-Redirect` sent to the service (default: the request URI).
    #[arg(long, value_name = "TEMPLATE", requires = "global_auth_url")]
    global_auth_request_redirect: Option<String>,
    /// Cache auth answers by this key (nginx variables, e.g. `$http_authorization`).
    #[arg(long, value_name = "TEMPLATE", requires = "global_auth_url")]
    global_auth_cache_key: Option<String>,
    /// How long answers are cached, by status (`200 202 401 5m`).
    #[arg(long, value_name = "DURATIONS", requires = "global_auth_url")]
    global_auth_cache_duration: Option<String>,
    /// Pass the service's `Set-Cookie` on every answer.
    #[arg(long, requires = "global_auth_url")]
    global_auth_always_set_cookie: bool,
    /// Path prefixes no external authentication covers, comma-separated (ACME challenges must
    /// reach cert-manager).
    #[arg(
        long,
        value_name = "PATHS",
        default_value = "/.well-known/acme-challenge"
    )]
    no_auth_locations: String,
}

/// The global auth rule, made by the external-auth plugin from the flags as if they were an
/// Ingress's annotations, so flags and annotations mean exactly the same.
fn global_auth(
    args: &GlobalAuthArgs,
    plugins: &Registry,
) -> anyhow::Result<Option<wasmgress::plugin::ExternalAuthRule>> {
    let Some(url) = &args.global_auth_url else {
        return Ok(None);
    };
    let cookie = args
        .global_auth_always_set_cookie
        .then(|| "true".to_string());
    let pairs = [
        ("auth-url", Some(url.clone())),
        ("auth-method", args.global_auth_method.clone()),
        ("auth-signin", args.global_auth_signin.clone()),
        (
            "auth-signin-redirect-param",
            args.global_auth_signin_redirect_param.clone(),
        ),
        (
            "auth-response-headers",
            args.global_auth_response_headers.clone(),
        ),
        (
            "auth-request-redirect",
            args.global_auth_request_redirect.clone(),
        ),
        ("auth-cache-key", args.global_auth_cache_key.clone()),
        (
            "auth-cache-duration",
            args.global_auth_cache_duration.clone(),
        ),
        ("auth-always-set-cookie", cookie),
    ];
    let settings: std::collections::BTreeMap<String, String> = pairs
        .into_iter()
        .filter_map(|(k, v)| Some((format!("nginx.ingress.kubernetes.io/{k}"), v?)))
        .collect();
    let route = wasmgress::plugin::Route {
        kind: "Controller",
        namespace: String::new(),
        name: "global-auth".into(),
    };
    let flag = |key: &str| key.replace("nginx.ingress.kubernetes.io/auth-", "--global-auth-");
    match wasmgress::plugin::configure_ingress(
        plugins,
        &route,
        &settings,
        &wasmgress::plugin::NoSecrets,
    ) {
        Ok(c) => match c.policy.access.external {
            Some(rule) => Ok(Some(rule)),
            None => anyhow::bail!("--global-auth-url: the external-auth plugin is not loaded"),
        },
        Err(diags) => {
            let why: Vec<String> = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| format!("{}: {}", flag(&d.key), d.message))
                .collect();
            anyhow::bail!("global authentication flags refused: {}", why.join("; "))
        }
    }
}

/// A 4xx or 5xx status, as nginx's `limit_req_status` accepts (400 to 599).
fn parse_error_status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(code) if (400..=599).contains(&code) => Ok(code),
        _ => Err(format!("`{s}` is not a status from 400 to 599")),
    }
}

fn status(code: u16) -> http::StatusCode {
    // The parser admitted 400..=599 only, all valid statuses.
    http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE)
}

/// `NAMESPACE/NAME`.
fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
    }
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
    access_log: wasmgress::proxy::log::Format,
    /// Proxy worker threads (like nginx's worker_processes); default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Port that HTTP-to-HTTPS redirects point at (where clients reach the TLS listener);
    /// default 443, and for `demo` its own HTTPS listener's port.
    #[arg(long, value_name = "PORT")]
    redirect_https_port: Option<u16>,
    // Boxed: the edge flags make `Command::Run` several times larger than the other commands.
    #[command(flatten)]
    edge: Box<EdgeArgs>,
}

/// The request edge: connection limits, timeouts and whom to believe, with nginx's and
/// ingress-nginx's names and defaults.
#[derive(Args, Debug, Clone)]
struct EdgeArgs {
    /// Seconds from accept (or the end of the TLS handshake) to a complete request head.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    client_header_timeout: u64,
    /// Seconds a kept-alive HTTP/1.1 or HTTP/2 connection may sit idle between requests.
    #[arg(long, default_value_t = 75, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    keepalive_timeout: u64,
    /// Seconds allowed between two reads of a request body from the client (then 408).
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    client_body_timeout: u64,
    /// Status for a request over `limit-rps`/`limit-rpm` (ingress-nginx's default 503).
    #[arg(long, default_value_t = 503, value_name = "CODE", value_parser = parse_error_status)]
    limit_req_status_code: u16,
    /// Status for a request over `limit-connections` (ingress-nginx's default 503).
    #[arg(long, default_value_t = 503, value_name = "CODE", value_parser = parse_error_status)]
    limit_conn_status_code: u16,
    /// Connections served at once over both listeners; more wait in the kernel's queue.
    #[arg(long, default_value_t = 16384, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Largest request head (HTTP/1.1: 431 beyond it; HTTP/2: header list size), e.g. 32k.
    #[arg(long, default_value = "32k", value_name = "SIZE", value_parser = parse_size)]
    max_header_size: u64,
    /// HTTP/2 streams a client may have open at once on one connection.
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    http2_max_concurrent_streams: u32,
    /// Default largest request body (`k`, `m`, `g`; 0 = unlimited), as ingress-nginx's
    /// proxy-body-size.
    #[arg(long, default_value = "1m", value_name = "SIZE", value_parser = parse_size)]
    proxy_body_size: u64,
    /// Believe X-Forwarded-For/-Proto/-Host/-Port from the peers in --proxy-real-ip-cidr.
    #[arg(long, requires = "proxy_real_ip_cidr")]
    use_forwarded_headers: bool,
    /// Peers (load balancers) whose forwarding headers are believed, CIDR[,CIDR].
    #[arg(
        long,
        value_name = "CIDR[,CIDR]",
        value_delimiter = ',',
        requires = "use_forwarded_headers"
    )]
    proxy_real_ip_cidr: Vec<ipnet::IpNet>,
    /// Every connection on both listeners starts with a PROXY protocol (v1 or v2) header.
    #[arg(long)]
    use_proxy_protocol: bool,
    /// Seconds to keep accepting after SIGTERM while /readyz already fails, so load balancers
    /// notice before the listeners close.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    shutdown_grace_period: u64,
}

/// nginx sizes: bytes, or a number with `k`, `m` or `g` (either case).
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 'b'),
    };
    let shift = match unit {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        _ => return Err(format!("`{s}`: the unit must be k, m or g")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 512k, 1m or 0"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
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

/// One line per annotation a plugin owns, so a migration shows what will be enforced and by
/// which plugin (what is refused or ignored is among the diagnostics above).
fn print_owned(snapshot: &wasmgress::source::Snapshot, plugins: &Registry) {
    for ingress in &snapshot.ingresses {
        let meta = &ingress.object.metadata;
        let name = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        );
        for key in meta.annotations.iter().flatten().map(|(k, _)| k) {
            if let Some(p) = plugins.owner(key) {
                println!("owned: Ingress {name}: {key}: plugin {}", p.info().name);
            }
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin { cmd } => plugin_command(cmd),
        Command::Validate { dir, class } => {
            let builtins = builtin_plugins(&class)?;
            let (plugins, problems) = run::load_plugins(&builtins, class.plugin_dir.as_deref());
            for p in &problems {
                println!("error: {p}");
            }
            let options = compile_options(&class, Policy::default(), Arc::new(plugins))?;
            let snapshot = FileSource::new(&dir).load()?;
            let compiled = wasmgress::compile::compile(&snapshot, &options, &LastGood::default());
            for d in &compiled.diagnostics {
                println!("{d}");
            }
            print_owned(&snapshot, &options.plugins);
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
        Command::Run {
            source,
            kube,
            cluster,
            proxy,
        } => {
            let rt = runtime(proxy.workers)?;
            let (source, cluster) = match source.manifests {
                Some(manifests) => (run::Source::Files { manifests }, None),
                None => {
                    let client = rt.block_on(kube_client(&kube))?;
                    (
                        run::Source::Kube {
                            client,
                            options: kube_options(&kube),
                        },
                        Some(cluster_options(&cluster, &proxy.class)?),
                    )
                }
            };
            let mut options = run_options(source, &proxy)?;
            if cluster.is_some() {
                options.compile.endpoint_guard = kube.endpoint_guard();
                if let Some(guard) = &options.compile.endpoint_guard {
                    wasmgress::access::external::refuse_own_addresses(guard.own.clone());
                }
                kube.restrict_plugin_calls()?;
            }
            options.cluster = cluster;
            rt.block_on(run::run(options, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhook {
            addr,
            tls_cert,
            tls_key,
            manifests,
            kube,
            class,
        } => {
            let rt = runtime(None)?;
            let kube_mode = manifests.is_none();
            if kube_mode {
                // Judged as the controller judges.
                kube.restrict_plugin_calls()?;
            }
            let source = match manifests {
                Some(manifests) => run::Source::Files { manifests },
                None => run::Source::Kube {
                    client: rt.block_on(kube_client(&kube))?,
                    options: kube_options(&kube),
                },
            };
            let builtins = builtin_plugins(&class)?;
            let options = run::WebhookRunOptions {
                source,
                plugin_dir: class.plugin_dir.clone(),
                compile: Options {
                    // Judged as the controller judges: with the same endpoint refusals in a
                    // cluster.
                    endpoint_guard: kube_mode.then(|| kube.endpoint_guard()).flatten(),
                    ..compile_options(&class, Policy::default(), builtins.clone())?
                },
                builtins,
                webhook: wasmgress::webhook::WebhookOptions {
                    addr,
                    tls_cert,
                    tls_key,
                },
            };
            rt.block_on(run::webhook(options, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir, mut proxy } => {
            // The demo is reached on this machine, where nothing listens on 443: its
            // redirects must lead to the listener the instructions name.
            proxy
                .redirect_https_port
                .get_or_insert(proxy.https_addr.port());
            let generated = demo::generate(&dir)?;
            let options = run_options(run::Source::Files { manifests: dir }, &proxy)?;
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

fn plugin_command(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    use wasmgress::plugin::scaffold;
    match cmd {
        PluginCommand::New { name, dir } => {
            let root = scaffold::new_project(&name, dir.as_deref())?;
            let wasm = format!(
                "target/wasm32-wasip2/release/{}.wasm",
                scaffold::component_stem(&name)
            );
            println!(
                "created {} (plugin `{name}`, SDK for wasmgress:plugin@{}); next:",
                root.display(),
                scaffold::sdk_abi()
            );
            println!("  cd {}", root.display());
            println!("  rustup target add wasm32-wasip2   # once");
            println!("  cargo test && {}", scaffold::BUILD_COMMAND);
            println!("  wasmgress plugin check {wasm}");
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Check { file } => {
            let report = scaffold::check(&file)?;
            print!("{report}");
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

fn builtin_plugins(class: &ClassArgs) -> anyhow::Result<Arc<Registry>> {
    let config = RuntimeConfig {
        request_deadline: std::time::Duration::from_millis(class.plugin_hook_deadline_ms),
        ..RuntimeConfig::default()
    };
    let registry = Registry::with_builtins(config).context("cannot load the built-in plugins")?;
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
        route_stats: wasmgress::metrics::RouteStatsRegistry::new(),
        default_backend_service: class.default_backend_service.clone(),
        endpoint_guard: None,
        allow_cross_namespace_resources: class.allow_cross_namespace_resources,
        limits: wasmgress::compile::LimitsRegistry::new(),
        global_auth: global_auth(&class.global_auth, &plugins)?,
        no_auth_locations: class
            .global_auth
            .no_auth_locations
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        plugins,
    })
}

async fn kube_client(args: &KubeArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "cannot find a Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config); pass --kubeconfig",
        )?,
    };
    kube::Client::try_from(config).context("cannot create the Kubernetes client")
}

fn kube_options(args: &KubeArgs) -> KubeOptions {
    KubeOptions {
        namespace: args.watch_namespace.clone(),
        plugin_namespace: args.plugin_namespace.clone(),
        debounce: Duration::from_millis(args.debounce_ms),
    }
}

fn cluster_options(args: &ClusterArgs, class: &ClassArgs) -> anyhow::Result<ClusterOptions> {
    let publish_service = match &args.publish_service {
        Some(s) => match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Some((ns.to_string(), name.to_string()))
            }
            _ => anyhow::bail!("--publish-service must be NAMESPACE/NAME, not `{s}`"),
        },
        None => None,
    };
    let identity = match &args.pod_name {
        Some(name) => name.clone(),
        None => std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("wasmgress-{}", std::process::id())),
    };
    Ok(ClusterOptions {
        controller_name: class.controller_name.clone(),
        identity,
        election_id: args.election_id.clone(),
        election_namespace: args.election_namespace.clone(),
        lease_duration: Duration::from_secs(args.election_lease_seconds),
        publish_service,
        publish_addresses: args.publish_status_address.clone(),
    })
}

fn run_options(source: run::Source, args: &ProxyArgs) -> anyhow::Result<RunOptions> {
    wasmgress::proxy::log::init(args.access_log);
    let defaults = Policy {
        connect_timeout: Duration::from_secs(args.proxy_connect_timeout),
        read_timeout: Duration::from_secs(args.proxy_read_timeout),
        send_timeout: Duration::from_secs(args.proxy_send_timeout),
        body_size: args.edge.proxy_body_size,
        ..Policy::default()
    };
    let edge = &args.edge;
    // The plugin folder is loaded with the first snapshot (`run` owns the registry's rebuilds).
    let builtins = builtin_plugins(&args.class)?;
    Ok(RunOptions {
        source,
        cluster: None,
        plugin_dir: args.class.plugin_dir.clone(),
        builtins: builtins.clone(),
        http_addr: args.http_addr,
        https_addr: args.https_addr,
        admin_addr: args.admin_addr,
        compile: compile_options(&args.class, defaults, builtins.clone())?,
        settings: Settings {
            redirect_https_port: args.redirect_https_port.unwrap_or(443),
            trust: Trust {
                forwarded_from: edge.proxy_real_ip_cidr.clone(),
            },
            client_body_timeout: Duration::from_secs(edge.client_body_timeout),
            limit_req_status: status(edge.limit_req_status_code),
            limit_conn_status: status(edge.limit_conn_status_code),
        },
        limits: Limits {
            client_header_timeout: Duration::from_secs(edge.client_header_timeout),
            keepalive_timeout: Duration::from_secs(edge.keepalive_timeout),
            max_header_size: usize::try_from(edge.max_header_size).unwrap_or(usize::MAX),
            max_concurrent_streams: edge.http2_max_concurrent_streams,
            max_connections: usize::try_from(edge.max_connections).unwrap_or(usize::MAX),
            proxy_protocol: edge.use_proxy_protocol,
        },
        shutdown_grace: Duration::from_secs(edge.shutdown_grace_period),
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

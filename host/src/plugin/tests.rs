//! Tests against the real components compiled from this repository by `host/build.rs`: the
//! built-ins (embedded), the `api-key` example and the misbehaving `spin`, `trap` and `grow`.
//! Each component is compiled once per test process (the registry's cache and `OnceLock`s).

use super::*;
use crate::diagnostic::Severity;
use crate::policy::{HttpVersion, Protocol, RequestVars, StaticResponse, apply_edits, render};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const API_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/api-key.wasm"));
const SPIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/spin.wasm"));
const TRAP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trap.wasm"));
const GROW: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/grow.wasm"));
const SET_HEADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/set-header.wasm"));
const LEGACY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/legacy.wasm"));

const NGINX: &str = "nginx.ingress.kubernetes.io/";
const SNIPPET: &str = "nginx.ingress.kubernetes.io/configuration-snippet";

/// Generous deadlines: the test machine is shared and a preempted thread must not turn a
/// well-behaved call into a deadline hit. The default deadlines are checked separately.
fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        request_deadline: Duration::from_millis(50),
        compile_deadline: Duration::from_millis(1000),
        ..RuntimeConfig::default()
    }
}

fn with_test_plugins(config: RuntimeConfig) -> Registry {
    let mut r = Registry::with_builtins(config).expect("built-ins load");
    for (origin, bytes) in [
        ("api-key.wasm", API_KEY),
        ("spin.wasm", SPIN),
        ("trap.wasm", TRAP),
        ("grow.wasm", GROW),
        ("set-header.wasm", SET_HEADER),
        ("legacy.wasm", LEGACY),
    ] {
        r.add(origin, bytes).expect("test plugin loads");
    }
    r
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| with_test_plugins(test_config()))
}

fn route() -> Route {
    Route::ingress("shop", "web")
}

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(pairs: &[(&str, &str)]) -> Configured {
    match configure_ingress(registry(), &route(), &ann(pairs), &NoSecrets) {
        Ok(c) => c,
        Err(d) => panic!("expected the Ingress to be accepted, got {d:#?}"),
    }
}

fn rejected(pairs: &[(&str, &str)]) -> Vec<PluginDiagnostic> {
    match configure_ingress(registry(), &route(), &ann(pairs), &NoSecrets) {
        Ok(c) => panic!("expected a rejection, got {:#?}", c.policy),
        Err(d) => d,
    }
}

fn vars() -> RequestVars<'static> {
    RequestVars {
        host: "example.com",
        remote: "192.0.2.7:40000".parse().expect("addr"),
        secure: false,
        request_uri: "/app?x=1",
        authority: "example.com",
        method: "GET",
        headers: None,
    }
}

fn head() -> Option<Box<HookRequest>> {
    let facts = RequestFacts {
        method: &http::Method::GET,
        scheme: "http",
        authority: Some(http::HeaderValue::from_static("example.com")),
        path: http::uri::PathAndQuery::from_static("/app?x=1"),
        id: http::HeaderValue::from_static("req-1"),
        client: std::net::IpAddr::from([192, 0, 2, 1]),
        tls: None,
        websocket: false,
    };
    Some(Box::new(HookRequest::new(facts, None)))
}

#[test]
fn builtins_describe_themselves() {
    let names: Vec<&str> = registry()
        .builtins()
        .iter()
        .map(|p| p.info().name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "backend-protocol",
            "timeouts",
            "headers",
            "snippet",
            "redirect",
            "body-size",
            "ip-access",
            "basic-auth",
            "cors",
            "rate-limit",
            "external-auth",
            "client-mtls",
            "canary",
            "retries",
            "load-balance",
            "affinity",
            "mirror"
        ]
    );
    for p in registry().builtins() {
        assert!(
            p.info().hooks.is_empty(),
            "{} needs no hooks",
            p.info().name
        );
        assert_eq!(p.origin(), &PluginOrigin::Builtin);
        assert_eq!(p.sha256_hex().len(), 64);
    }
    let api = registry().get("api-key").expect("loaded");
    assert!(api.info().hooks.request_headers);
    assert!(
        api.info()
            .prefixes
            .contains(&"wasmgress.io/plugin.api-key.".to_string())
    );
}

#[test]
fn backend_protocol() {
    let key = format!("{NGINX}backend-protocol");
    let c = ok(&[(&key, "GRPC")]);
    assert_eq!(c.policy.protocol, Some(Protocol::Grpc));
    assert!(c.policy.is_static());
    for bad in ["FCGI", "AJP", "SPDY"] {
        let d = rejected(&[(&key, bad)]);
        assert_eq!(d[0].key, key);
        assert_eq!(d[0].plugin.as_deref(), Some("backend-protocol"));
        assert!(d[0].message.contains(bad), "{}", d[0].message);
    }
}

#[test]
fn timeouts_and_http_version() {
    let c = ok(&[
        ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "5"),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", "30"),
        ("nginx.ingress.kubernetes.io/proxy-http-version", "1.0"),
    ]);
    let p = &c.policy;
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(5)));
    assert_eq!(p.read_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(p.send_timeout, Some(Duration::from_secs(30)));
    assert_eq!(p.http_version, Some(HttpVersion::Http10));
    let d = rejected(&[("nginx.ingress.kubernetes.io/proxy-read-timeout", "1h")]);
    assert_eq!(d[0].key, "nginx.ingress.kubernetes.io/proxy-read-timeout");
}

#[test]
fn headers_documents_and_nginx_keys() {
    let c = ok(&[
        (
            "wasmgress.io/request-headers",
            "set:\n  X-Env: prod\nadd:\n  X-Tag: [a, b]\nremove: [X-Debug]\n",
        ),
        (
            "wasmgress.io/response-headers",
            r#"{"set": {"Strict-Transport-Security": "max-age=63072000"}}"#,
        ),
        ("nginx.ingress.kubernetes.io/upstream-vhost", "internal.svc"),
    ]);
    let mut req = HeaderMap::new();
    req.insert("x-debug", HeaderValue::from_static("1"));
    apply_edits(&c.policy.request_headers, &mut req, &vars());
    assert_eq!(req["x-env"], "prod");
    assert_eq!(req.get_all("x-tag").iter().count(), 2);
    assert!(!req.contains_key("x-debug"));
    assert_eq!(req["host"], "internal.svc");
    let mut resp = HeaderMap::new();
    apply_edits(&c.policy.response_headers, &mut resp, &vars());
    assert_eq!(resp["strict-transport-security"], "max-age=63072000");

    let d = rejected(&[("wasmgress.io/request-headers", "set: {Connection: close}")]);
    assert_eq!(d[0].key, "wasmgress.io/request-headers");
    let d = rejected(&[("nginx.ingress.kubernetes.io/custom-headers", "ns/cm")]);
    assert!(d[0].message.contains("ConfigMap"));
}

#[test]
fn snippet_translates_the_safe_subset() {
    let c = ok(&[(
        SNIPPET,
        "proxy_set_header X-From-Snippet yes;\nmore_set_headers 'X-Served-By: wasmgress' ;\nproxy_set_header X-Client $remote_addr;",
    )]);
    let mut req = HeaderMap::new();
    apply_edits(&c.policy.request_headers, &mut req, &vars());
    assert_eq!(req["x-from-snippet"], "yes");
    assert_eq!(req["x-client"], "192.0.2.7");
    let mut resp = HeaderMap::new();
    apply_edits(&c.policy.response_headers, &mut resp, &vars());
    assert_eq!(resp["x-served-by"], "wasmgress");
    assert!(c.policy.is_static());
}

#[test]
fn snippet_refusals_name_the_offender() {
    for (snippet, named) in [
        (
            "access_by_lua_block { ngx.exit(403) }",
            "access_by_lua_block",
        ),
        ("content_by_lua 'ngx.say(1)';", "content_by_lua"),
        ("include /etc/nginx/secrets.conf;", "include"),
        ("load_module /tmp/evil.so;", "load_module"),
        ("proxy_set_header X-A 1; } server { listen 81; ", "`}`"),
        ("proxy_set_header X-A 1; # content_by_lua 'x';", "`#`"),
        ("more_set_headers 'X-A: 1\nX-Injected: 2';", "newline"),
        (
            "proxy_set_header X-A $http_authorization;",
            "$http_authorization",
        ),
    ] {
        let d = rejected(&[(SNIPPET, snippet)]);
        assert_eq!(d.len(), 1, "{snippet:?}: {d:#?}");
        assert_eq!(d[0].key, SNIPPET);
        assert_eq!(d[0].severity, Severity::Error);
        assert!(
            d[0].message.contains(named),
            "{snippet:?}: {}",
            d[0].message
        );
    }
}

#[test]
fn redirects_and_rewrites() {
    let c = ok(&[
        (
            "nginx.ingress.kubernetes.io/permanent-redirect",
            "https://new.example.com$request_uri",
        ),
        ("nginx.ingress.kubernetes.io/permanent-redirect-code", "308"),
        ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
        ("nginx.ingress.kubernetes.io/rewrite-target", "/$2"),
        ("nginx.ingress.kubernetes.io/app-root", "/app1"),
    ]);
    let p = &c.policy;
    let Some(StaticResponse::Redirect { status, location }) = &p.respond else {
        panic!("expected a redirect, got {:?}", p.respond)
    };
    assert_eq!(*status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(render(location, &vars()), "https://new.example.com/app?x=1");
    assert_eq!(p.ssl_redirect, Some(false));
    assert_eq!(p.rewrite_target.as_deref(), Some("/$2"));
    assert_eq!(p.use_regex, Some(true));
    assert_eq!(p.app_root.as_deref(), Some("/app1"));
    let d = rejected(&[(
        "nginx.ingress.kubernetes.io/permanent-redirect",
        "/relative",
    )]);
    assert_eq!(d[0].key, "nginx.ingress.kubernetes.io/permanent-redirect");
}

#[test]
fn several_plugins_merge_in_attach_order() {
    let c = ok(&[
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "10"),
        ("wasmgress.io/request-headers", "set: {X-A: from-headers}"),
        (SNIPPET, "proxy_set_header X-A from-snippet;"),
    ]);
    let p = &c.policy;
    assert_eq!(p.protocol, Some(Protocol::Https));
    assert_eq!(p.read_timeout, Some(Duration::from_secs(10)));
    // headers runs before snippet: its edit comes first, the snippet's set wins.
    let mut req = HeaderMap::new();
    apply_edits(&p.request_headers, &mut req, &vars());
    assert_eq!(req["x-a"], "from-snippet");
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
}

/// A documented ingress-nginx annotation no plugin owns has its fate: refused ones reject the
/// Ingress with the reason (never served open), ignored ones are warnings with the reason.
#[test]
fn documented_annotations_without_a_plugin_have_their_fate() {
    let d = rejected(&[("nginx.ingress.kubernetes.io/ssl-passthrough", "true")]);
    assert!(
        d.iter().any(|d| d.severity == Severity::Error
            && d.key == "nginx.ingress.kubernetes.io/ssl-passthrough"
            && d.message.starts_with("refused: ")),
        "{d:#?}"
    );
    let c = ok(&[("nginx.ingress.kubernetes.io/proxy-buffering", "on")]);
    assert!(
        c.diagnostics.iter().any(|d| d.severity == Severity::Warning
            && d.key == "nginx.ingress.kubernetes.io/proxy-buffering"
            && d.message.starts_with("ignored: ")),
        "{:#?}",
        c.diagnostics
    );
}

#[test]
fn unknown_keys_are_warnings() {
    let c = ok(&[
        ("nginx.ingress.kubernetes.io/not-documented", "true"),
        ("wasmgress.io/something", "x"),
        ("wasmgress.io/plugin.api-key.keys", "k"),
        ("example.com/not-ours", "x"),
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTP"),
    ]);
    let warned: Vec<(&str, &str)> = c
        .diagnostics
        .iter()
        .map(|d| (d.key.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(warned.len(), 3, "{warned:#?}");
    assert!(
        c.diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning)
    );
    assert!(
        warned
            .iter()
            .any(|(k, _)| *k == "nginx.ingress.kubernetes.io/not-documented")
    );
    assert!(warned.iter().any(|(k, _)| *k == "wasmgress.io/something"));
    assert!(warned.iter().any(|(k, m)| *k == "wasmgress.io/plugin.api-key.keys"
        && m.contains("does not attach")));
    let d = c.diagnostics[0].to_diagnostic("Ingress default/web");
    assert!(d.field.starts_with("metadata.annotations["), "{}", d.field);
}

#[test]
fn unknown_plugin_and_plugin_errors_reject() {
    let d = rejected(&[("wasmgress.io/plugins", "nope")]);
    assert_eq!(d[0].key, "wasmgress.io/plugins");
    assert!(d[0].message.contains("nope"));
    let d = rejected(&[("wasmgress.io/plugins", "api-key")]);
    assert_eq!(d[0].key, "wasmgress.io/plugin.api-key.keys");
    assert_eq!(d[0].plugin.as_deref(), Some("api-key"));
}

#[test]
fn sha256_pin() {
    let _serial = api_key_hooks();
    let api = registry().get("api-key").expect("loaded");
    let good = api.sha256_hex().to_uppercase();
    let base = [
        ("wasmgress.io/plugins", "api-key"),
        ("wasmgress.io/plugin.api-key.keys", "k"),
    ];
    let mut pinned = base.to_vec();
    pinned.push(("wasmgress.io/plugin.api-key.sha256", good.as_str()));
    ok(&pinned);
    let mut wrong = base.to_vec();
    wrong.push(("wasmgress.io/plugin.api-key.sha256", "00"));
    let d = rejected(&wrong);
    assert_eq!(d[0].key, "wasmgress.io/plugin.api-key.sha256");
}

/// Tests that run api-key hooks hold this, so one test's count of the plugin's hook calls (kept
/// per plugin name for the process) is not moved by another running in parallel.
fn api_key_hooks() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn api_key_chain(extra: &[(&str, &str)]) -> HookChain {
    let mut pairs = vec![
        ("wasmgress.io/plugins", "api-key"),
        ("wasmgress.io/plugin.api-key.keys", "s3cret, other"),
    ];
    pairs.extend_from_slice(extra);
    let c = ok(&pairs);
    assert!(!c.policy.is_static());
    c.policy.hooks
}

#[test]
fn api_key_hook_on_a_real_header_map() {
    let _serial = api_key_hooks();
    let chain = api_key_chain(&[]);
    let bound = &chain.plugins()[0];
    let stats = registry().get("api-key").expect("loaded").stats().clone();
    let before = stats.snapshot().hook_calls;

    let mut headers = HeaderMap::new();
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let HookOutcome::Respond(r) = chain.run_request(&mut head(), &mut headers) else {
        panic!("expected 401 without a key")
    };
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "ApiKey");
    assert_eq!(headers["accept"], "*/*", "the map survives the call");

    headers.insert("x-api-key", HeaderValue::from_static("wrong"));
    assert!(matches!(
        chain.run_request(&mut head(), &mut headers),
        HookOutcome::Respond(r) if r.status == StatusCode::UNAUTHORIZED
    ));

    headers.insert("X-Api-Key", HeaderValue::from_static("s3cret"));
    assert_eq!(
        chain.run_request(&mut head(), &mut headers),
        HookOutcome::Continue
    );
    assert!(
        !headers.contains_key("x-api-key"),
        "the key is stripped before upstream"
    );
    assert_eq!(headers["accept"], "*/*");

    assert_eq!(stats.snapshot().hook_calls - before, 3);
    assert_eq!(bound.idle_instances(), 1, "one instance, reused");
}

#[test]
fn api_key_custom_header_without_strip() {
    let _serial = api_key_hooks();
    let chain = api_key_chain(&[
        ("wasmgress.io/plugin.api-key.header", "Authorization-Key"),
        ("wasmgress.io/plugin.api-key.strip", "false"),
    ]);
    let mut headers = HeaderMap::new();
    headers.insert("authorization-key", HeaderValue::from_static("other"));
    assert_eq!(
        chain.run_request(&mut head(), &mut headers),
        HookOutcome::Continue
    );
    assert_eq!(headers["authorization-key"], "other");
}

#[test]
fn instances_are_per_ingress_and_created_under_load() {
    let _serial = api_key_hooks();
    let a = api_key_chain(&[]);
    let b = ok(&[
        ("wasmgress.io/plugins", "api-key"),
        ("wasmgress.io/plugin.api-key.keys", "only-for-b"),
    ])
    .policy
    .hooks;
    // B's instance never learned A's keys, and the other way round.
    let mut with_a = HeaderMap::new();
    with_a.insert("x-api-key", HeaderValue::from_static("s3cret"));
    assert!(matches!(
        b.run_request(&mut head(), &mut with_a),
        HookOutcome::Respond(_)
    ));
    let mut with_b = HeaderMap::new();
    with_b.insert("x-api-key", HeaderValue::from_static("only-for-b"));
    assert!(matches!(
        a.run_request(&mut head(), &mut with_b),
        HookOutcome::Respond(_)
    ));

    // Concurrent requests get their own instances, configured the same way.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    let mut h = HeaderMap::new();
                    h.insert("x-api-key", HeaderValue::from_static("s3cret"));
                    assert_eq!(a.run_request(&mut head(), &mut h), HookOutcome::Continue);
                }
            });
        }
    });
    let idle = a.plugins()[0].idle_instances();
    assert!((1..=4).contains(&idle), "{idle} idle instances");
}

#[test]
fn response_hooks_edit_or_replace_the_response() {
    let _serial = api_key_hooks();
    let c = ok(&[
        ("wasmgress.io/plugins", "set-header"),
        ("wasmgress.io/plugin.set-header.value", "edge"),
        ("wasmgress.io/plugin.set-header.response", "true"),
    ]);
    let chain = c.policy.hooks;
    assert!(chain.has_response_hooks());
    let mut req = HeaderMap::new();
    req.insert("user-agent", HeaderValue::from_static("curl/8"));
    assert_eq!(
        chain.run_request(&mut head(), &mut req),
        HookOutcome::Continue
    );
    assert_eq!(req["x-seen-by"], "edge-6");
    let mut resp = HeaderMap::new();
    let mut status = StatusCode::OK;
    assert_eq!(
        chain.run_response(&mut head(), &mut status, &mut resp),
        None
    );
    assert_eq!(resp["x-response-seen-by"], "edge-200");
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    let Some(r) = chain.run_response(&mut head(), &mut status, &mut resp) else {
        panic!("5xx is replaced")
    };
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(&r.body[..], b"upstream failed\n");

    // Without the setting, only the request hook is asked for.
    let c = ok(&[("wasmgress.io/plugins", "set-header")]);
    assert!(!c.policy.hooks.has_response_hooks());
}

/// Configure `name` for an Ingress, run one failing request, then prove a different plugin
/// still answers. Returns the failure and how long it took.
fn misbehave(registry: &Registry, name: &str, fail_open: bool) -> (CallError, Duration) {
    let fail_open_key = format!("wasmgress.io/plugin.{name}.fail-open");
    let pairs = ann(&[
        ("wasmgress.io/plugins", name),
        (&fail_open_key, if fail_open { "true" } else { "false" }),
    ]);
    let chain = match configure_ingress(registry, &route(), &pairs, &NoSecrets) {
        Ok(c) => c.policy.hooks,
        Err(d) => panic!("{name} should configure: {d:#?}"),
    };
    let bound = chain.plugins()[0].clone();
    let mut headers = HeaderMap::new();
    headers.insert("x-keep", HeaderValue::from_static("1"));
    let started = Instant::now();
    let err = bound
        .on_request_headers(&mut head(), &mut headers)
        .expect_err("the call fails");
    let took = started.elapsed();
    assert_eq!(
        headers["x-keep"], "1",
        "the header map survives a failed call"
    );
    assert_eq!(
        bound.idle_instances(),
        0,
        "the failed instance is discarded"
    );

    // The chain answers 500 (fail-closed) or continues (fail-open), on a new instance.
    let outcome = chain.run_request(&mut head(), &mut headers);
    if fail_open {
        assert_eq!(outcome, HookOutcome::Continue);
    } else {
        let HookOutcome::Respond(r) = outcome else {
            panic!("fail-closed plugin must answer")
        };
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    // Another plugin, right after, works.
    let c = configure_ingress(
        registry,
        &route(),
        &ann(&[
            ("wasmgress.io/plugins", "api-key"),
            ("wasmgress.io/plugin.api-key.keys", "k"),
        ]),
        &NoSecrets,
    )
    .expect("api-key configures");
    let mut ok_headers = HeaderMap::new();
    ok_headers.insert("x-api-key", HeaderValue::from_static("k"));
    assert_eq!(
        c.policy.hooks.run_request(&mut head(), &mut ok_headers),
        HookOutcome::Continue
    );
    (err, took)
}

#[test]
fn spin_hits_the_deadline_and_only_fails_its_call() {
    let _serial = api_key_hooks();
    let stats = registry().get("spin").expect("loaded").stats().clone();
    let before = stats.snapshot();
    let (err, took) = misbehave(registry(), "spin", false);
    assert_eq!(err.kind, CallErrorKind::Deadline, "{err}");
    let deadline = test_config().request_deadline;
    assert!(took >= deadline - EPOCH_TICK, "{took:?}");
    assert!(took < deadline + Duration::from_millis(200), "{took:?}");
    let after = stats.snapshot();
    assert_eq!(after.deadline_hits - before.deadline_hits, 2);
    let listed = all_stats();
    assert!(
        listed
            .iter()
            .any(|(n, s)| n == "spin" && s.deadline_hits >= 2)
    );
}

#[test]
fn default_request_deadline_is_five_milliseconds() {
    let _serial = api_key_hooks();
    static R: OnceLock<Registry> = OnceLock::new();
    let r = R.get_or_init(|| with_test_plugins(RuntimeConfig::default()));
    let (err, took) = misbehave(r, "spin", true);
    assert_eq!(err.kind, CallErrorKind::Deadline);
    assert_eq!(err.deadline, Duration::from_millis(5));
    assert!(
        took < Duration::from_millis(5) + Duration::from_millis(100),
        "{took:?}"
    );
}

#[test]
fn trap_only_fails_its_call() {
    let _serial = api_key_hooks();
    let stats = registry().get("trap").expect("loaded").stats().clone();
    let before = stats.snapshot().traps;
    let (err, _) = misbehave(registry(), "trap", false);
    assert_eq!(err.kind, CallErrorKind::Trap, "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(stats.snapshot().traps - before, 2);
}

#[test]
fn grow_hits_the_memory_cap_and_only_fails_its_call() {
    let _serial = api_key_hooks();
    let stats = registry().get("grow").expect("loaded").stats().clone();
    let before = stats.snapshot().memory_failures;
    let (err, took) = misbehave(registry(), "grow", true);
    assert_eq!(err.kind, CallErrorKind::Memory, "{err}");
    assert!(took < test_config().request_deadline + Duration::from_millis(200));
    assert_eq!(stats.snapshot().memory_failures - before, 2);
}

#[test]
fn compile_time_failures_reject_the_ingress() {
    for (name, kind) in [("spin", "deadline"), ("trap", "trapped")] {
        let key = format!("wasmgress.io/plugin.{name}.at");
        let d = rejected(&[("wasmgress.io/plugins", name), (&key, "configure")]);
        assert_eq!(d[0].plugin.as_deref(), Some(name));
        assert!(d[0].message.contains("configure"), "{}", d[0].message);
        assert!(d[0].message.contains(kind), "{}", d[0].message);
    }
}

#[test]
fn static_policies_make_no_hook_calls() {
    let before: Vec<u64> = registry()
        .builtins()
        .iter()
        .map(|p| p.stats().snapshot().hook_calls)
        .collect();
    let c = ok(&[
        ("nginx.ingress.kubernetes.io/backend-protocol", "GRPC"),
        (SNIPPET, "proxy_set_header X-From-Snippet yes;"),
    ]);
    let mut h = HeaderMap::new();
    assert_eq!(
        c.policy.hooks.run_request(&mut head(), &mut h),
        HookOutcome::Continue
    );
    let after: Vec<u64> = registry()
        .builtins()
        .iter()
        .map(|p| p.stats().snapshot().hook_calls)
        .collect();
    assert_eq!(before, after);
    assert!(before.iter().all(|&n| n == 0));
}

#[test]
fn load_errors_name_the_file_and_cause() {
    let mut r = Registry::with_builtins(test_config()).expect("built-ins");
    let e = r.add("garbage.wasm", b"not wasm").expect_err("refused");
    assert_eq!(e.origin, "garbage.wasm");
    assert!(
        e.to_string().contains("not a valid WebAssembly component"),
        "{e}"
    );

    r.add("api-key.wasm", API_KEY).expect("loads");
    let e = r.add("copy.wasm", API_KEY).expect_err("duplicate name");
    assert!(e.cause.contains("already loaded"), "{e}");

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a-spin.wasm"), SPIN).expect("write");
    std::fs::write(dir.path().join("b-broken.wasm"), b"\0asm junk").expect("write");
    std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
    let mut r = Registry::with_builtins(test_config()).expect("built-ins");
    let errors = r.load_dir(dir.path()).expect("dir readable");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].origin.ends_with("b-broken.wasm"));
    assert!(r.get("spin").is_some());
    assert!(r.load_dir(&dir.path().join("missing")).is_err());
}

#[test]
fn shared_types_are_send_and_sync() {
    // Route tables holding policies and hook chains are shared across proxy tasks.
    fn check<T: Send + Sync>() {}
    check::<Registry>();
    check::<PluginPolicy>();
    check::<HookChain>();
    check::<Configured>();
    check::<CallError>();
    check::<LoadError>();
}

/// A component built against the frozen 0.1.0 ABI loads and runs unchanged: its record-style
/// policy arrives as directives, its hook edits headers and answers.
#[test]
fn abi_0_1_component_still_loads_and_runs() {
    let legacy = registry().get("legacy").expect("loaded");
    assert_eq!(legacy.abi(), "0.1.0");
    assert_eq!(registry().get("set-header").expect("loaded").abi(), "0.2.0");
    let c = ok(&[("wasmgress.io/plugins", "legacy")]);
    assert_eq!(c.policy.read_timeout, Some(Duration::from_secs(30)));
    let mut headers = HeaderMap::new();
    apply_edits(&c.policy.request_headers, &mut headers, &vars());
    assert_eq!(headers["x-legacy-static"], "1");
    assert_eq!(
        c.policy.hooks.run_request(&mut head(), &mut headers),
        HookOutcome::Continue
    );
    assert_eq!(headers["x-legacy-hook"], "GET /app?x=1");
    headers.insert("x-legacy-deny", HeaderValue::from_static("1"));
    let HookOutcome::Respond(r) = c.policy.hooks.run_request(&mut head(), &mut headers) else {
        panic!("the legacy hook answers")
    };
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// A 0.2.0 plugin learns which route it configures.
#[test]
fn configure_is_told_its_route() {
    let c = ok(&[
        ("wasmgress.io/plugins", "set-header"),
        ("wasmgress.io/plugin.set-header.route", "true"),
    ]);
    let mut headers = HeaderMap::new();
    apply_edits(&c.policy.request_headers, &mut headers, &vars());
    assert_eq!(headers["x-route"], "Ingress shop/web");
}

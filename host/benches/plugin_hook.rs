//! Per-request plugin cost, measured in one run so the ratios are meaningful:
//!
//! - `baseline`: what the proxy does per request without plugins here (clone a realistic
//!   header map, run an empty hook chain).
//! - `static policy`: the same plus a static policy's header edits (a built-in's output):
//!   zero Wasm calls.
//! - `hook`: the same plus the per-request `request` handle the proxy builds on hooked routes
//!   and one `on-request-headers` call of a header-setting plugin (`tests/plugins/set-header`:
//!   reads one header, sets one) on a reused instance.
//! - `instantiate + configure`: a fresh instance configured for an Ingress (the cost paid once
//!   per instance with per-(plugin, Ingress) instances).
//!
//! Run with `cargo bench --bench plugin_hook`. Prints the median ns per operation (median of
//! batch means) and the ratio to the baseline. No assertions: numbers depend on the machine.

use http::{HeaderMap, HeaderValue};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;
use wasmgress::plugin::{
    HookChain, HookOutcome, HookRequest, Registry, RequestFacts, Route, RuntimeConfig,
    configure_ingress,
};
use wasmgress::policy::{RequestVars, apply_edits};

const SET_HEADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/set-header.wasm"));

const BATCHES: usize = 31;

/// Median over `BATCHES` of the mean ns per iteration of `f` over `iters` iterations.
fn median_ns(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(1000) {
        f();
    }
    let mut means: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    means[BATCHES / 2]
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, br"),
        ("x-request-id", "5f1c0a3e-8d2b-4c5e-9f1a-2b3c4d5e6f70"),
        ("cookie", "session=abcdef0123456789"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn main() {
    // A generous deadline: on a shared machine a preempted thread can overrun 5 ms of wall
    // clock, which would fail a call and end the run; the deadline does not change the cost.
    let config = RuntimeConfig {
        request_deadline: std::time::Duration::from_secs(1),
        ..RuntimeConfig::default()
    };
    let mut registry = match Registry::with_builtins(config) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    if let Err(e) = registry.add("set-header.wasm", SET_HEADER) {
        panic!("{e}");
    }
    let configure = |pairs: &[(&str, &str)]| match configure_ingress(
        &registry,
        &Route::ingress("bench", "bench"),
        &annotations(pairs),
        &wasmgress::plugin::NoSecrets,
    ) {
        Ok(c) => c.policy,
        Err(d) => panic!("{d:#?}"),
    };
    let static_policy = configure(&[
        (
            "wasmgress.io/request-headers",
            "set: {X-Env: prod}\nremove: [X-Debug]",
        ),
        (
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "proxy_set_header X-Real-Host $host;",
        ),
    ]);
    assert!(static_policy.is_static());
    let hook_policy = configure(&[("wasmgress.io/plugins", "set-header")]);
    let empty = HookChain::default();
    let template = request_headers();
    let vars = RequestVars {
        host: "shop.example.com",
        remote: "192.0.2.7:40000".parse().expect("address literal"),
        secure: true,
        request_uri: "/cart?item=42",
        authority: "shop.example.com",
        method: "GET",
        headers: None,
    };
    let path = http::uri::PathAndQuery::from_static("/cart?item=42");
    let authority = http::HeaderValue::from_static("shop.example.com");
    let id = http::HeaderValue::from_static("4f1c0d3e9a8b7c6d5e4f3a2b1c0d9e8f");
    // What the proxy builds per request on a route with hooks (and only there).
    let request = || {
        let facts = RequestFacts {
            method: &http::Method::GET,
            scheme: "https",
            authority: Some(authority.clone()),
            path: path.clone(),
            id: id.clone(),
            client: std::net::IpAddr::from([192, 0, 2, 7]),
            tls: None,
            websocket: false,
        };
        Some(Box::new(HookRequest::new(facts, None)))
    };

    let run = |chain: &HookChain| {
        let mut h = template.clone();
        let mut req = if chain.is_empty() { None } else { request() };
        match chain.run_request(&mut req, &mut h) {
            HookOutcome::Continue => {}
            HookOutcome::Wait(_) => panic!("the plugin waited"),
            HookOutcome::Respond(r) => panic!(
                "the plugin answered {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
        }
        black_box(h);
    };

    let baseline = median_ns(20_000, || run(&empty));
    let static_ns = median_ns(20_000, || {
        let mut h = template.clone();
        apply_edits(&static_policy.request_headers, &mut h, &vars);
        assert!(matches!(
            empty.run_request(&mut None, &mut h),
            HookOutcome::Continue
        ));
        black_box(h);
    });
    let hook = median_ns(5_000, || run(&hook_policy.hooks));
    let fresh = median_ns(200, || {
        black_box(configure(&[("wasmgress.io/plugins", "set-header")]));
    });

    // The plugin really ran: its header is there.
    let mut h = template.clone();
    let _ = hook_policy.hooks.run_request(&mut request(), &mut h);
    assert_eq!(h["x-seen-by"], "wasm-10");

    println!("plugin hook benchmark (median of {BATCHES} batch means, ns per operation)");
    println!("{:<44} {:>12} {:>10}", "case", "ns", "x baseline");
    for (name, ns) in [
        ("baseline: no plugin", baseline),
        ("static policy (header edits, 0 Wasm calls)", static_ns),
        ("on-request-headers, reused instance", hook),
        ("instantiate + configure (per instance)", fresh),
    ] {
        println!("{name:<44} {ns:>12.0} {:>10.2}", ns / baseline);
    }
    println!(
        "hook call with its per-request handle: {:.0} ns",
        hook - baseline
    );
}

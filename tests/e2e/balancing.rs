//! Load balancing through the real binary: how a route chooses among its Service's endpoints
//! (ingress-nginx `load-balance`, `upstream-hash-by`, `upstream-hash-by-subset`,
//! `upstream-hash-by-subset-size`, `service-upstream`), and a rolling replacement of every
//! endpoint under load. The backends are pods of this file ([`Pod`]): one port on several
//! loopback addresses (one EndpointSlice lists them all, as a Deployment's), each answering
//! with its name (optionally after a fixed delay), and stoppable for real (listener and every
//! open connection closed), as a deleted pod is.
//!
//! Covered:
//! - `load-balance: "ewma"`: beside an endpoint that takes 100 ms per answer, the fast one takes
//!   a clear majority of sequential requests, while a round-robin route over the same two
//!   endpoints splits them about evenly.
//! - `upstream-hash-by` with `$arg_user`, `$http_x_user` and `$cookie_user` over 4 endpoints:
//!   each key always lands on the same endpoint, whatever else the request carries; keys spread
//!   over several endpoints; the mapping survives a recompile (an unrelated Ingress added) and
//!   is the same on a second replica reading the same manifests; removing one endpoint from the
//!   EndpointSlice moves only the keys it held (on both replicas alike). 2,000 sequential user
//!   ids over 8 endpoints give each between 0.7 and 1.3 times its fair share, as a ring built
//!   like nginx's does.
//! - `upstream-hash-by-subset: "true"`, `-subset-size: "2"` over 4 endpoints: a key's requests
//!   land on exactly 2 endpoints.
//! - `service-upstream: "true"`: requests go to the Service's cluster IP and port (a loopback
//!   address in folder mode), never to the EndpointSlice's endpoints, which a route to the same
//!   Service without the annotation uses.
//! - A rollout (add a ready pod, mark an old one terminating, remove it, stop it; twice) under
//!   continuous load from concurrent clients: no request fails, and the new pods serve at the
//!   end.
//! - `wasmgress validate` refuses `load-balance: "chash"` (pointing at `upstream-hash-by`), an
//!   unsupported `upstream-hash-by` variable, and `service-upstream` on a headless Service.
//!
//! Nothing here measures time: the slow endpoint's delay only makes EWMA's choice visible, and
//! every bound is generous.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::harness::manifests::{NS, ServicePort, endpoint_slice, service};
use crate::harness::plugins::Metrics;
use crate::harness::process::{RELOAD_LIMIT, assert_no_error_about, validate, validate_error};
use crate::harness::{Conn, Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

const LOAD_BALANCE: &str = "nginx.ingress.kubernetes.io/load-balance";
const HASH_BY: &str = "nginx.ingress.kubernetes.io/upstream-hash-by";
const SUBSET: &str = "nginx.ingress.kubernetes.io/upstream-hash-by-subset";
const SUBSET_SIZE: &str = "nginx.ingress.kubernetes.io/upstream-hash-by-subset-size";
const SERVICE_UPSTREAM: &str = "nginx.ingress.kubernetes.io/service-upstream";

// ---------------------------------------------------------------------------------------------
// Pods

/// A backend pod: answers every request with `{"backend": NAME}` after `delay`, counts what it
/// served, and stops for real (listener and open connections closed) on [`Pod::stop`] or drop.
struct Pod {
    name: String,
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pod {
    async fn bind(name: &str, addr: SocketAddr, delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, name.into(), delay, served.clone()));
        Ok(Self {
            name: name.to_owned(),
            addr,
            served,
            task,
        })
    }

    fn ip(&self) -> String {
        self.addr.ip().to_string()
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests it answered so far.
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection it has, as a deleted pod does.
    async fn stop(&self) {
        self.task.abort();
        // Let the abort land (the listener and connections close when the task is dropped).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !self.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "pod {} at {} still accepts connections after being stopped",
            self.name,
            self.addr
        );
    }
}

async fn serve(listener: TcpListener, name: Arc<str>, delay: Duration, served: Arc<AtomicUsize>) {
    // The connections live in this task's set: aborting the task closes all of them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (name, served) = (name.clone(), served.clone());
                connections.spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let (name, served) = (name.clone(), served.clone());
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            served.fetch_add(1, Ordering::SeqCst);
                            let body = json!({ "backend": &*name }).to_string();
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            resp.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Starts pods `(name, ip, delay)` on one port (the first on 127.0.0.1 and an ephemeral port,
/// so no other test's backend holds that port on 127.0.0.1; the others on the same port at
/// their loopback addresses), like the pods of one Deployment.
async fn pods(specs: &[(&str, &str, Duration)]) -> Vec<Pod> {
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse::<IpAddr>().expect("an ip"), port);
    'attempt: for _ in 0..20 {
        let (name, ip, delay) = specs[0];
        assert_eq!(ip, "127.0.0.1", "the first pod takes the port on 127.0.0.1");
        let first = Pod::bind(name, at(ip, 0), delay)
            .await
            .expect("bind the first pod on 127.0.0.1:0");
        let port = first.port();
        let mut all = vec![first];
        for &(name, ip, delay) in &specs[1..] {
            match Pod::bind(name, at(ip, port), delay).await {
                Ok(pod) => all.push(pod),
                Err(_) => continue 'attempt,
            }
        }
        return all;
    }
    panic!("could not bind pods on one shared port: {specs:?}");
}

/// Pods without delay.
async fn quick_pods(specs: &[(&str, &str)]) -> Vec<Pod> {
    let specs: Vec<_> = specs
        .iter()
        .map(|&(name, ip)| (name, ip, Duration::ZERO))
        .collect();
    pods(&specs).await
}

// ---------------------------------------------------------------------------------------------
// Manifests

fn host(name: &str) -> String {
    format!("{name}.balancing.test")
}

/// Ingress `name` with `annotations`: [`host`]`(name)` `/` (Prefix) to port 80 of `service`.
fn ingress(name: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(&host(name)), &[prefix("/", service)])
        .build()
}

/// Service `name`: port 80 `http` to `port` on the pods.
fn pod_service(name: &str, port: u16) -> Value {
    service(
        NS,
        name,
        &[ServicePort {
            name: Some("http"),
            port: 80,
            target: Port::Number(port),
        }],
    )
}

/// An EndpointSlice of Service `service` with port `http` = `port` and `endpoints` as written.
fn slice(service: &str, port: u16, endpoints: Vec<Value>) -> Value {
    let mut doc = endpoint_slice(
        NS,
        service,
        &format!("{service}-abcde"),
        &[(Some("http"), port)],
        &[],
    );
    doc["endpoints"] = json!(endpoints);
    doc
}

/// A ready endpoint at `ip`.
fn up(ip: &str) -> Value {
    json!({ "addresses": [ip], "conditions": { "ready": true, "serving": true, "terminating": false } })
}

/// An endpoint being shut down, as the EndpointSlice controller writes it during a rollout.
fn terminating(ip: &str) -> Value {
    json!({ "addresses": [ip], "conditions": { "ready": false, "serving": true, "terminating": true } })
}

/// Service `name` and its one slice listing `pods` as ready.
fn service_with(name: &str, pods: &[&Pod]) -> Vec<Value> {
    let port = pods[0].port();
    vec![
        pod_service(name, port),
        slice(name, port, pods.iter().map(|p| up(&p.ip())).collect()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Watching the binary

/// `GET path` on the admin listener.
async fn admin_get(gw: &Wasmgress, path: &str) -> Resp {
    let tcp = TcpStream::connect(gw.admin)
        .await
        .expect("connect to the admin listener");
    let mut admin = Conn::h1(tcp).await.expect("admin handshake");
    admin
        .send(&Req::get("localhost", path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the admin listener: {e}"))
}

/// `/debug/routes`' entry for `host` `/`, if there is one.
async fn debug_route(gw: &Wasmgress, host: &str) -> Option<Value> {
    let r = admin_get(gw, "/debug/routes").await;
    assert_eq!(r.status, 200, "/debug/routes: {}", r.summary());
    let doc: Value = serde_json::from_str(&r.text()).expect("/debug/routes is JSON");
    doc["routes"]["hosts"][host]
        .as_array()
        .and_then(|paths| paths.iter().find(|p| p["path"] == "/"))
        .cloned()
}

/// The endpoints the route for `host` `/` sends to now, sorted.
async fn route_endpoints(gw: &Wasmgress, host: &str) -> Option<Vec<String>> {
    let route = debug_route(gw, host).await?;
    let mut all: Vec<String> = route["endpoints"]
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    all.sort();
    Some(all)
}

/// Waits (within [`RELOAD_LIMIT`]) until the route for `host` sends to exactly `pods`.
async fn wait_endpoints(gw: &Wasmgress, host: &str, pods: &[&Pod], what: &str) {
    let mut want: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let now = route_endpoints(gw, host).await;
        if now.as_ref() == Some(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {RELOAD_LIMIT:?} for {what}: the route for {host} should send to {want:?}, \
             /debug/routes says {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `wasmgress_config_generation`: the number of the configuration being served.
async fn generation(gw: &Wasmgress) -> u64 {
    let metrics = Metrics::scrape(gw).await;
    metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("wasmgress_config_generation "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| {
            panic!(
                "no wasmgress_config_generation on /metrics:\n{}",
                metrics.text
            )
        })
}

/// Waits (within [`RELOAD_LIMIT`]) until a configuration newer than `before` is served.
async fn wait_generation_after(gw: &Wasmgress, before: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let now = generation(gw).await;
        if now > before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {RELOAD_LIMIT:?} for {what}: still serving generation {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Asking

/// Who answered: the pod's name, or a description of the proxy's answer.
fn who(r: &Resp) -> String {
    match r.backend() {
        Some(b) if r.status == 200 => b,
        _ => format!("not a pod: {}", r.summary()),
    }
}

/// How many of `n` sequential requests to `host` each pod answered.
async fn tally(gw: &Wasmgress, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let r = gw.get(host, &format!("/req/{i}")).await;
        *counts.entry(who(&r)).or_insert(0) += 1;
    }
    counts
}

/// Where a hash key travels in a request.
#[derive(Clone, Copy, Debug)]
enum KeyIn {
    /// `?user=KEY` (`$arg_user`).
    Arg,
    /// `X-User: KEY` (`$http_x_user`).
    Header,
    /// `Cookie: user=KEY` (`$cookie_user`).
    Cookie,
}

/// Request `i` for `key` to `host`: the path, other query parameters and other cookies change
/// from request to request, only the key stays.
fn keyed(host: &str, how: KeyIn, key: &str, i: usize) -> Req {
    match how {
        KeyIn::Arg => Req::get(host, &format!("/page/{i}?n={i}&user={key}")),
        KeyIn::Header => Req::get(host, &format!("/page/{i}?n={i}")).header("x-user", key),
        KeyIn::Cookie => Req::get(host, &format!("/page/{i}"))
            .header("cookie", &format!("theme=t{i}; user={key}; other=o{i}")),
    }
}

/// The pod each key goes to on `gw`, checking that 3 requests with it all land on the same one.
async fn where_keys_go(
    gw: &Wasmgress,
    host: &str,
    how: KeyIn,
    keys: &[String],
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for key in keys {
        let mut seen = Vec::new();
        for i in 0..3 {
            seen.push(who(&gw.send(&keyed(host, how, key, i)).await));
        }
        assert!(
            seen.iter()
                .all(|s| *s == seen[0] && !s.starts_with("not a pod")),
            "{how:?} key {key:?} to {host}: every request with one key should get 200 from the \
             same pod, got {seen:?}"
        );
        map.insert(key.clone(), seen.swap_remove(0));
    }
    map
}

/// How many keys each pod holds.
fn spread(map: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for pod in map.values() {
        *counts.entry(pod.clone()).or_insert(0) += 1;
    }
    counts
}

/// The keys whose pod differs between `a` and `b`, as `key: a -> b`.
fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", b.get(k)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// load-balance: ewma

/// With `load-balance: "ewma"`, an endpoint answering fast takes a clear majority of 100
/// sequential requests beside one that takes 100 ms per answer; a round-robin route (no
/// annotation) over the same two endpoints splits them about evenly.
#[tokio::test]
async fn ewma_prefers_the_fast_endpoint_where_round_robin_splits_evenly() {
    let all = pods(&[
        ("fast", "127.0.0.1", Duration::ZERO),
        ("slow", "127.0.0.2", Duration::from_millis(100)),
    ])
    .await;
    let mut docs = service_with("pair", &[&all[0], &all[1]]);
    docs.push(ingress("ewma", "pair", &[(LOAD_BALANCE, "ewma")]));
    docs.push(ingress("rr", "pair", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let route = debug_route(&gw, &host("ewma"))
        .await
        .expect("the ewma route");
    assert_eq!(route["policy"]["loadBalance"], "ewma", "{route:#}");

    // Warm-up: both endpoints get a response time.
    let warm = tally(&gw, &host("ewma"), 10).await;
    assert!(
        warm.keys().all(|k| k == "fast" || k == "slow"),
        "warm-up requests should all be answered by a pod: {warm:?}"
    );

    let ewma = tally(&gw, &host("ewma"), 100).await;
    let fast = ewma.get("fast").copied().unwrap_or(0);
    assert_eq!(
        fast + ewma.get("slow").copied().unwrap_or(0),
        100,
        "every request should be answered by a pod: {ewma:?}"
    );
    assert!(
        fast > 70,
        "with ewma the fast endpoint should take a clear majority of 100 requests: {ewma:?}"
    );

    let rr = tally(&gw, &host("rr"), 100).await;
    let fast = rr.get("fast").copied().unwrap_or(0);
    assert_eq!(
        fast + rr.get("slow").copied().unwrap_or(0),
        100,
        "every request should be answered by a pod: {rr:?}"
    );
    assert!(
        (35..=65).contains(&fast),
        "round-robin should split 100 requests about evenly whatever the response times: {rr:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// upstream-hash-by

/// `upstream-hash-by` over 4 endpoints, by query parameter, header and cookie: each key sticks
/// to one endpoint and keys spread; the mapping is the same after a recompile and on a second
/// replica; removing an endpoint moves the keys it held and no other.
#[tokio::test]
async fn hash_by_keys_stick_across_recompiles_replicas_and_endpoint_removal() {
    let all = quick_pods(&[
        ("p1", "127.0.0.1"),
        ("p2", "127.0.0.2"),
        ("p3", "127.0.0.3"),
        ("p4", "127.0.0.4"),
    ])
    .await;
    let port = all[0].port();
    let kinds = [
        ("by-arg", "$arg_user", KeyIn::Arg),
        ("by-header", "$http_x_user", KeyIn::Header),
        ("by-cookie", "$cookie_user", KeyIn::Cookie),
    ];
    let mut ingresses = Vec::new();
    for (name, key, _) in kinds {
        ingresses.push(ingress(name, "users", &[(HASH_BY, key)]));
    }
    let m = Manifests::new();
    m.write(
        "users.yaml",
        &service_with("users", &all.iter().collect::<Vec<_>>()),
    );
    m.write("ingresses.yaml", &ingresses);
    let gw = Wasmgress::start(&m, &[]).await;

    let keys: Vec<String> = (0..32).map(|i| format!("user-{i}")).collect();
    let mut first = BTreeMap::new();
    for (name, _, how) in kinds {
        let map = where_keys_go(&gw, &host(name), how, &keys).await;
        assert!(
            spread(&map).len() > 1,
            "{name}: 32 keys should spread over more than one of 4 endpoints: {:?}",
            spread(&map)
        );
        first.insert(name, map);
    }

    // A recompile (an unrelated Ingress added) keeps every key where it was.
    m.write("unrelated.yaml", &[ingress("unrelated", "users", &[])]);
    gw.poll_until(
        &host("unrelated"),
        "/",
        "the unrelated Ingress to be served",
        |r| r.backend().is_some(),
    )
    .await;
    for (name, _, how) in kinds {
        let again = where_keys_go(&gw, &host(name), how, &keys).await;
        let moved = differences(&first[name], &again);
        assert!(
            moved.is_empty(),
            "{name}: keys moved after an unrelated recompile:\n  {}",
            moved.join("\n  ")
        );
    }

    // A second replica on the same manifests maps every key to the same endpoint.
    let replica = Wasmgress::start(&m, &[]).await;
    for (name, _, how) in kinds {
        let there = where_keys_go(&replica, &host(name), how, &keys).await;
        let differ = differences(&first[name], &there);
        assert!(
            differ.is_empty(),
            "{name}: the two replicas disagree on these keys (first -> second):\n  {}",
            differ.join("\n  ")
        );
    }

    // Remove the endpoint holding the most `$arg_user` keys (it keeps running: only the
    // EndpointSlice changes).
    let counts = spread(&first["by-arg"]);
    let (removed, held) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(p, n)| (p.clone(), *n))
        .expect("some pod holds keys");
    let remaining: Vec<&Pod> = all.iter().filter(|p| p.name != removed).collect();
    m.write(
        "users.yaml",
        &[
            pod_service("users", port),
            slice(
                "users",
                port,
                remaining.iter().map(|p| up(&p.ip())).collect(),
            ),
        ],
    );
    for gw in [&gw, &replica] {
        for (name, _, _) in kinds {
            wait_endpoints(
                gw,
                &host(name),
                &remaining,
                &format!("{removed} to leave the EndpointSlice"),
            )
            .await;
        }
    }
    for (name, _, how) in kinds {
        let after = where_keys_go(&gw, &host(name), how, &keys).await;
        let mut wrongly_moved = Vec::new();
        let mut stayed_on_removed = Vec::new();
        for (key, before) in &first[name] {
            let now = &after[key];
            if *before == removed {
                if *now == removed {
                    stayed_on_removed.push(key.clone());
                }
            } else if now != before {
                wrongly_moved.push(format!("{key}: {before} -> {now}"));
            }
        }
        assert!(
            wrongly_moved.is_empty(),
            "{name}: removing {removed} moved keys that were on other endpoints:\n  {}",
            wrongly_moved.join("\n  ")
        );
        assert!(
            stayed_on_removed.is_empty(),
            "{name}: keys still sent to {removed}, removed from the EndpointSlice: \
             {stayed_on_removed:?}"
        );
        let on_replica = where_keys_go(&replica, &host(name), how, &keys).await;
        let differ = differences(&after, &on_replica);
        assert!(
            differ.is_empty(),
            "{name}: after the removal the two replicas disagree (first -> second):\n  {}",
            differ.join("\n  ")
        );
    }
    assert!(held > 0, "the removed endpoint held keys: {counts:?}");
}

/// `upstream-hash-by` spreads many keys fairly: 2,000 users (`?user=user-0` to `user-1999`, as
/// sequential ids are) over 8 endpoints, each endpoint holds between 0.7 and 1.3 times its fair
/// share (175 to 325 users). Consistent hashing with 160 points per endpoint, as nginx builds
/// its ring (each point's CRC-32 chained from the previous one), stays within these bounds for
/// any port the pods get; a ring whose points are too regular leaves some endpoints with far
/// less than their share and others with far more.
#[tokio::test]
async fn hash_by_spreads_many_keys_fairly() {
    let names: Vec<(String, String)> = (1..=8)
        .map(|i| (format!("p{i}"), format!("127.0.0.{i}")))
        .collect();
    let specs: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, ip)| (n.as_str(), ip.as_str()))
        .collect();
    let all = quick_pods(&specs).await;
    let mut docs = service_with("users", &all.iter().collect::<Vec<_>>());
    docs.push(ingress("fair", "users", &[(HASH_BY, "$arg_user")]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    const USERS: usize = 2_000;
    let mut conn = gw.h1().await;
    let mut held: BTreeMap<String, usize> = all.iter().map(|p| (p.name.clone(), 0)).collect();
    for i in 0..USERS {
        let r = conn
            .send(&keyed(&host("fair"), KeyIn::Arg, &format!("user-{i}"), i))
            .await
            .unwrap_or_else(|e| panic!("request for user-{i}: {e}"));
        *held.entry(who(&r)).or_insert(0) += 1;
    }
    let fair = USERS / all.len();
    let (low, high) = (fair * 7 / 10, fair * 13 / 10);
    let ports: Vec<String> = all.iter().map(|p| p.addr.to_string()).collect();
    assert!(
        held.values().all(|n| (low..=high).contains(n)) && held.len() == all.len(),
        "{USERS} users over {} endpoints should give each between {low} and {high} (fair: \
         {fair}); they hold {held:?} (endpoints {ports:?})",
        all.len()
    );
}

/// `upstream-hash-by-subset: "true"` with `-subset-size: "2"` over 4 endpoints: each key's
/// requests land on exactly 2 endpoints.
#[tokio::test]
async fn hash_by_subset_spreads_a_key_over_its_subset() {
    let all = quick_pods(&[
        ("p1", "127.0.0.1"),
        ("p2", "127.0.0.2"),
        ("p3", "127.0.0.3"),
        ("p4", "127.0.0.4"),
    ])
    .await;
    let mut docs = service_with("users", &all.iter().collect::<Vec<_>>());
    docs.push(ingress(
        "subset",
        "users",
        &[(HASH_BY, "$arg_user"), (SUBSET, "true"), (SUBSET_SIZE, "2")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    for key in ["alice", "bob", "carol"] {
        let mut seen = BTreeMap::new();
        for i in 0..40 {
            let r = gw.send(&keyed(&host("subset"), KeyIn::Arg, key, i)).await;
            *seen.entry(who(&r)).or_insert(0) += 1;
        }
        assert!(
            seen.keys().all(|k| !k.starts_with("not a pod")),
            "key {key}: every request should be answered by a pod: {seen:?}"
        );
        assert_eq!(
            seen.len(),
            2,
            "key {key}: 40 requests should land on exactly the 2 endpoints of its subset: {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// service-upstream

/// `service-upstream: "true"` sends every request to the Service's cluster IP and port, never to
/// the endpoints of its EndpointSlice (a live pod and a dead address); a route to the same
/// Service without the annotation uses the EndpointSlice.
#[tokio::test]
async fn service_upstream_sends_to_the_cluster_ip() {
    let all = quick_pods(&[("endpoint-pod", "127.0.0.1"), ("cluster-ip", "127.0.0.6")]).await;
    let port = all[0].port();
    let dead = SocketAddr::new("127.0.0.7".parse().expect("ip"), port);
    assert!(
        TcpStream::connect(dead).await.is_err(),
        "{dead} was meant to be dead, but something listens there"
    );
    let mut svc = service(
        NS,
        "web",
        &[ServicePort {
            name: Some("http"),
            port,
            target: Port::Number(port),
        }],
    );
    svc["spec"]["clusterIP"] = json!("127.0.0.6");
    let docs = vec![
        svc,
        slice("web", port, vec![up("127.0.0.1"), up("127.0.0.7")]),
        Ingress::new("via-cluster-ip")
            .annotation(SERVICE_UPSTREAM, "true")
            .rule(
                Some(&host("via-cluster-ip")),
                &[prefix("/", "web").port(port)],
            )
            .build(),
        Ingress::new("via-endpoints")
            .rule(
                Some(&host("via-endpoints")),
                &[prefix("/", "web").port(port)],
            )
            .build(),
    ];
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let counts = tally(&gw, &host("via-cluster-ip"), 20).await;
    assert_eq!(
        counts,
        BTreeMap::from([("cluster-ip".to_owned(), 20)]),
        "with service-upstream every request goes to the cluster IP 127.0.0.6:{port}"
    );
    assert_eq!(
        route_endpoints(&gw, &host("via-cluster-ip")).await,
        Some(vec![format!("127.0.0.6:{port}")]),
        "/debug/routes shows the cluster IP as the route's one endpoint"
    );

    let counts = tally(&gw, &host("via-endpoints"), 10).await;
    assert_eq!(
        counts,
        BTreeMap::from([("endpoint-pod".to_owned(), 10)]),
        "without service-upstream the EndpointSlice's endpoints serve (the dead one retried)"
    );
}

// ---------------------------------------------------------------------------------------------
// Rolling replacement under load

/// One request of the load loop: the rollout step it started in and who answered.
struct Outcome {
    step: usize,
    index: usize,
    answer: Result<String, String>,
}

/// A Deployment rollout as the EndpointSlice shows it, under continuous load from 3 clients on
/// keep-alive connections: pods A and B serve; C is added ready, A marked terminating (ready
/// false, serving true), then removed and stopped; the same for B with D. Each step waits for
/// the proxy to apply it (`/debug/routes`, or the configuration generation when the endpoints
/// stay the same) and then for at least 40 more requests. No request may fail: every answer is
/// a 200 from a pod, A (then B) gets no request once its termination is applied, and C and D
/// serve at the end.
#[tokio::test]
async fn rolling_replacement_under_load_fails_no_request() {
    let all = quick_pods(&[
        ("a", "127.0.0.1"),
        ("b", "127.0.0.2"),
        ("c", "127.0.0.3"),
        ("d", "127.0.0.4"),
    ])
    .await;
    let (a, b, c, d) = (&all[0], &all[1], &all[2], &all[3]);
    let port = a.port();
    let m = Manifests::new();
    let write_slice = |endpoints: Vec<Value>| {
        m.write("app-slice.yaml", &[slice("app", port, endpoints)]);
    };
    m.write(
        "app.yaml",
        &[pod_service("app", port), ingress("app", "app", &[])],
    );
    write_slice(vec![up(&a.ip()), up(&b.ip())]);
    let gw = Arc::new(Wasmgress::start(&m, &[]).await);
    let app = host("app");
    wait_endpoints(&gw, &app, &[a, b], "the first configuration").await;

    /// Upper bound of the load loop, whatever happens.
    const CAP: usize = 20_000;
    /// Requests completed between two rollout steps, at least.
    const PER_STEP: usize = 40;
    let steps = [
        "before the rollout (A, B ready)",
        "C added ready",
        "A terminating (ready false, serving true)",
        "A removed from the slice",
        "A stopped",
        "D added ready",
        "B terminating (ready false, serving true)",
        "B removed from the slice",
        "B stopped (C, D serve)",
    ];
    let step = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));

    let mut clients = JoinSet::new();
    for client in 0..3 {
        let (gw, app) = (gw.clone(), app.clone());
        let (step, started, completed, stop, outcomes) = (
            step.clone(),
            started.clone(),
            completed.clone(),
            stop.clone(),
            outcomes.clone(),
        );
        clients.spawn(async move {
            let connect = || async {
                let tcp = TcpStream::connect(gw.http)
                    .await
                    .map_err(|e| format!("connect to the proxy: {e}"))?;
                Conn::h1(tcp)
                    .await
                    .map_err(|e| format!("handshake with the proxy: {e}"))
            };
            let mut conn = None;
            while !stop.load(Ordering::SeqCst) {
                let index = started.fetch_add(1, Ordering::SeqCst);
                if index >= CAP {
                    break;
                }
                let at = step.load(Ordering::SeqCst);
                if conn.is_none() {
                    conn = connect().await.ok();
                }
                let req = Req::get(&app, &format!("/load/{client}/{index}"));
                let answer = match conn.as_mut() {
                    None => Err("could not connect to the proxy".to_owned()),
                    Some(c) => match c.send(&req).await {
                        Ok(r) if r.status == 200 && r.backend().is_some() => {
                            Ok(r.backend().expect("checked"))
                        }
                        Ok(r) => Err(r.summary()),
                        Err(e) => {
                            conn = None;
                            Err(e)
                        }
                    },
                };
                outcomes.lock().expect("outcomes lock").push(Outcome {
                    step: at,
                    index,
                    answer,
                });
                completed.fetch_add(1, Ordering::SeqCst);
                // A short pause between requests: a steady stream, not a flood.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }

    // Step `n` is applied: later requests count for it; the rollout goes on once at least
    // PER_STEP more requests completed.
    let applied = |n: usize| {
        let (step, completed) = (step.clone(), completed.clone());
        async move {
            step.store(n, Ordering::SeqCst);
            let target = completed.load(Ordering::SeqCst) + PER_STEP;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while completed.load(Ordering::SeqCst) < target {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the load loop stalled during step `{}`: {} requests completed",
                    steps[n],
                    completed.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    applied(0).await;
    // Pod A is replaced by C.
    write_slice(vec![up(&a.ip()), up(&b.ip()), up(&c.ip())]);
    wait_endpoints(&gw, &app, &[a, b, c], steps[1]).await;
    applied(1).await;
    write_slice(vec![terminating(&a.ip()), up(&b.ip()), up(&c.ip())]);
    wait_endpoints(&gw, &app, &[b, c], steps[2]).await;
    applied(2).await;
    let before = generation(&gw).await;
    write_slice(vec![up(&b.ip()), up(&c.ip())]);
    wait_generation_after(&gw, before, steps[3]).await;
    applied(3).await;
    a.stop().await;
    applied(4).await;
    // Pod B is replaced by D.
    write_slice(vec![up(&b.ip()), up(&c.ip()), up(&d.ip())]);
    wait_endpoints(&gw, &app, &[b, c, d], steps[5]).await;
    applied(5).await;
    write_slice(vec![terminating(&b.ip()), up(&c.ip()), up(&d.ip())]);
    wait_endpoints(&gw, &app, &[c, d], steps[6]).await;
    applied(6).await;
    let before = generation(&gw).await;
    write_slice(vec![up(&c.ip()), up(&d.ip())]);
    wait_generation_after(&gw, before, steps[7]).await;
    applied(7).await;
    b.stop().await;
    applied(8).await;

    stop.store(true, Ordering::SeqCst);
    while let Some(done) = clients.join_next().await {
        done.expect("a load client panicked");
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes lock"));
    let total = outcomes.len();
    assert!(
        total < CAP,
        "the load loop hit its cap of {CAP} requests before the rollout ended"
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.answer
                .as_ref()
                .err()
                .map(|why| format!("request {} during step `{}`: {why}", o.index, steps[o.step]))
        })
        .collect();
    let mut by_step: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); steps.len()];
    for o in &outcomes {
        let who = o.answer.clone().unwrap_or_else(|_| "FAILED".to_owned());
        *by_step[o.step].entry(who).or_insert(0) += 1;
    }
    let report: Vec<String> = steps
        .iter()
        .zip(&by_step)
        .map(|(s, counts)| format!("{s}: {counts:?}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed during the rollout:\n  {}\nanswers by step:\n  {}",
        failed.len(),
        failed.join("\n  "),
        report.join("\n  ")
    );
    // Once a pod's termination is applied it gets no new request.
    for (pod, from) in [("a", 2), ("b", 6)] {
        let late: usize = by_step[from..]
            .iter()
            .map(|c| c.get(pod).copied().unwrap_or(0))
            .sum();
        assert_eq!(
            late,
            0,
            "pod {pod} got requests after its termination was applied:\n  {}",
            report.join("\n  ")
        );
    }
    let last = &by_step[8];
    for pod in ["c", "d"] {
        assert!(
            last.get(pod).copied().unwrap_or(0) > 0,
            "the new pod {pod} should serve after the rollout:\n  {}",
            report.join("\n  ")
        );
    }
    assert!(c.served() > 0 && d.served() > 0);
}

// ---------------------------------------------------------------------------------------------
// validate

/// `wasmgress validate` refuses `load-balance: "chash"` (naming the key and pointing at
/// `upstream-hash-by`), an `upstream-hash-by` key with an unsupported variable (naming it), and
/// `service-upstream` on a headless Service (`clusterIP: None`, naming service-upstream and the
/// cluster IP); good values pass.
#[tokio::test]
async fn validate_refuses_bad_balancing_settings() {
    let mut headless = pod_service("headless", 8080);
    headless["spec"]["clusterIP"] = json!("None");
    let mut docs = vec![
        pod_service("web", 8080),
        slice("web", 8080, vec![up("10.0.0.1"), up("10.0.0.2")]),
        headless,
        slice("headless", 8080, vec![up("10.0.0.3")]),
    ];
    docs.push(ingress("chash", "web", &[(LOAD_BALANCE, "chash")]));
    docs.push(ingress("bad-variable", "web", &[(HASH_BY, "$foo_user")]));
    docs.push(ingress(
        "headless-upstream",
        "headless",
        &[(SERVICE_UPSTREAM, "true")],
    ));
    docs.push(ingress("fine-ewma", "web", &[(LOAD_BALANCE, "ewma")]));
    docs.push(ingress(
        "fine-hash",
        "web",
        &[
            (HASH_BY, "user-$arg_user-$http_x_tenant"),
            (SUBSET, "true"),
            (SUBSET_SIZE, "2"),
        ],
    ));
    docs.push(ingress("fine-headless", "headless", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "chash", LOAD_BALANCE);
    assert!(
        line.contains("chash") && line.contains("upstream-hash-by"),
        "the chash diagnostic quotes the value and points at upstream-hash-by: {line}"
    );
    let line = validate_error(&stdout, NS, "bad-variable", HASH_BY);
    assert!(
        line.contains("$foo_user"),
        "the diagnostic names the unsupported variable: {line}"
    );
    let object = format!("Ingress {NS}/headless-upstream:");
    let headless_errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("error:") && l.contains(&object))
        .collect();
    assert!(
        headless_errors
            .iter()
            .any(|l| l.contains("service-upstream") && l.contains("cluster IP")),
        "service-upstream on a headless Service should be refused naming service-upstream and \
         the cluster IP; errors about it: {headless_errors:#?}\nstdout:\n{stdout}"
    );
    for fine in ["fine-ewma", "fine-hash", "fine-headless"] {
        assert_no_error_about(&stdout, NS, fine);
    }
}

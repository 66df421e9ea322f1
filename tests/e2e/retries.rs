//! Retries and passive health (ingress-nginx `proxy-next-upstream`, `-tries`, `-timeout`)
//! through the real binary. Each Service pairs a healthy backend with a broken endpoint: a
//! "dead" one (an address in the EndpointSlice where nothing listens, so connecting is
//! refused), or a fault server of this file that reads each request whole and then closes the
//! connection without answering, never answers, or answers the status named by its `fail=`
//! query parameter. Which backend answered, and what each server saw, proves where every
//! attempt went.
//!
//! Covered: by default (`error timeout`, 3 tries) GETs and POSTs with a body never fail beside a
//! dead endpoint (a request that never connected goes to another endpoint as it is, body
//! included), over an HTTP/1.1 upstream and an HTTP/2 one; a connection closed after the
//! request was sent is retried for GETs, but a POST with a body is answered 502 and never sent
//! twice, and a bodyless POST is retried only with `non_idempotent`; `off` and
//! `proxy-next-upstream-tries: "1"` leave the dead endpoint's share failing with 502, and
//! `tries: "0"` tries every endpoint once; each retried status (`http_500`, `http_502`,
//! `http_503`, `http_504`, `http_403`, `http_404`, `http_429`) is retried only when listed, the
//! request going again unchanged (target and headers, request id included), never a POST with
//! a body; a backend that never answers within `proxy-read-timeout` is passed over under the
//! default `timeout` and answered 504 under `error` alone; a connect timeout counts as nginx's
//! `timeout`; `proxy-next-upstream-timeout` stops new attempts; passive health (a dead endpoint
//! in `ejectedEndpoints` on `/debug/routes`, with `policy.nextUpstream`, and
//! `wasmgress_upstream_retries_total` on `/metrics`, one retry per failure until the third
//! ejects it; an answer, whatever its status, ejects nothing; with every endpoint ejected,
//! requests still go to all of them, answered 502 and never 503); retries leaving the
//! round-robin of first attempts even; terminating endpoints (`conditions.terminating: true`,
//! `ready` unset or true) getting no request while an endpoint without conditions does; and
//! `wasmgress validate` rejecting bad values with the key named.
//!
//! Passive health skips an endpoint after 3 failures in a row for 10 s, so a broken endpoint
//! fails at most 3 requests of a burst: the bounds below say so. Health is kept by address for
//! the whole process, so each case that counts failures has its own broken endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::backend::{same_port, unresponsive_port};
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, ready, service};
use crate::harness::plugins::Metrics;
use crate::harness::process::{assert_no_error_about, validate, validate_error};
use crate::harness::recorder::Recorder;
use crate::harness::{Backend, Conn, Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

const NEXT_UPSTREAM: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream";
const TRIES: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream-tries";
const TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream-timeout";
const READ_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
const CONNECT_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-connect-timeout";
const BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// Failures in a row that take an endpoint out (the host's `MAX_FAILS`): a broken endpoint
/// fails at most this many requests of a burst.
const MAX_FAILS: usize = 3;

/// The host of Ingress `name`'s one rule.
fn host(name: &str) -> String {
    format!("{name}.retries.test")
}

/// Ingress `name` with `annotations`: [`host`]`(name)` `/` (Prefix) to Service `service`.
fn ingress(name: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(&host(name)), &[prefix("/", service)])
        .build()
}

/// Service `name` (port 80 `http`) and one EndpointSlice per `(port, addresses)` group, every
/// endpoint ready: pods of one Service may listen on different ports (during a rollout), and
/// then each port has its own slice.
fn service_objects(name: &str, groups: &[(u16, &[&str])]) -> Vec<Value> {
    let mut docs = vec![service(
        NS,
        name,
        &[ServicePort {
            name: Some("http"),
            port: 80,
            target: Port::Name("http"),
        }],
    )];
    for (i, (port, ips)) in groups.iter().enumerate() {
        let endpoints: Vec<_> = ips.iter().map(|ip| ready(ip)).collect();
        docs.push(endpoint_slice(
            NS,
            name,
            &format!("{name}-{i}"),
            &[(Some("http"), *port)],
            &endpoints,
        ));
    }
    docs
}

/// A loopback address on `port` where nothing listens: the healthy backend holds `port` on
/// 127.0.0.1, so no other test's backend can take it on another loopback address (they bind
/// 127.0.0.1 first). Checked here: connecting is refused.
async fn dead(ip: &str, port: u16) -> String {
    let addr = SocketAddr::new(ip.parse::<IpAddr>().expect("a loopback ip"), port);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "{addr} was meant to be dead, but something listens there"
    );
    ip.to_owned()
}

/// Who answered: the backend's name, or the status of the proxy's own answer.
fn who(r: &Resp) -> String {
    r.backend()
        .unwrap_or_else(|| format!("proxy {}", r.status.as_u16()))
}

/// Sends `n` requests made by `make(i)`, each on a fresh HTTP/1.1 connection.
async fn send_all(gw: &Wasmgress, n: usize, make: impl Fn(usize) -> Req) -> Vec<Resp> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(gw.send(&make(i)).await);
    }
    out
}

/// How many responses came from each answerer ([`who`]).
fn tally(responses: &[Resp]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in responses {
        *counts.entry(who(r)).or_insert(0) += 1;
    }
    counts
}

/// Panics unless every response is a 200 from backend `want`, listing the others.
fn assert_all_from(responses: &[Resp], want: &str, what: &str) {
    let wrong: Vec<String> = responses
        .iter()
        .enumerate()
        .filter(|(_, r)| !(r.status == 200 && r.backend().as_deref() == Some(want)))
        .map(|(i, r)| format!("request {i}: {}", r.summary()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: all {} requests should get 200 from {want}; {} did not:\n  {}",
        responses.len(),
        wrong.len(),
        wrong.join("\n  ")
    );
}

/// The proxy's own answers with `status` (no backend answered them); panics if any other
/// response came from something else than `healthy`.
fn proxy_failures(responses: &[Resp], status: u16, healthy: &str, what: &str) -> usize {
    let mut failed = 0;
    for (i, r) in responses.iter().enumerate() {
        match r.backend() {
            Some(b) if b == healthy && r.status == 200 => {}
            None if r.status == status => failed += 1,
            _ => panic!(
                "{what}: request {i} should be a 200 from {healthy} or the proxy's own {status}, \
                 got {}\nall: {:?}",
                r.summary(),
                tally(responses)
            ),
        }
    }
    failed
}

/// `/debug/routes`' entry for `host` `/`.
async fn debug_route(gw: &Wasmgress, host: &str) -> Value {
    let tcp = TcpStream::connect(gw.admin)
        .await
        .expect("connect to admin");
    let mut admin = Conn::h1(tcp).await.expect("admin handshake");
    let r = admin
        .send(&Req::get("localhost", "/debug/routes"))
        .await
        .expect("GET /debug/routes");
    assert_eq!(r.status, 200, "/debug/routes: {}", r.summary());
    let doc: Value = serde_json::from_str(&r.text()).expect("/debug/routes is JSON");
    doc["routes"]["hosts"][host]
        .as_array()
        .and_then(|paths| paths.iter().find(|p| p["path"] == "/"))
        .cloned()
        .unwrap_or_else(|| panic!("/debug/routes has no route for {host} /:\n{doc:#}"))
}

/// `wasmgress_upstream_retries_total` of Ingress `name`'s route, if exposed.
fn retries_total(metrics: &Metrics, name: &str) -> Option<u64> {
    let ingress = format!("ingress=\"{NS}/{name}\"");
    let host = format!("host=\"{}\"", host(name));
    metrics.text.lines().find_map(|line| {
        let (sample, value) = line.rsplit_once(' ')?;
        (sample.starts_with("wasmgress_upstream_retries_total{")
            && sample.contains(&ingress)
            && sample.contains(&host))
        .then(|| value.parse::<f64>().ok().map(|v| v as u64))?
    })
}

// ---------------------------------------------------------------------------------------------
// Fault servers

/// What a [`FaultServer`] does with each request, once it has read it whole.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Closes the connection without answering (the request was sent: nginx's `error`).
    Close,
    /// Never answers (the read timeout ends the wait: nginx's `timeout`).
    Silent,
    /// Answers the status of its `fail=` query parameter (500 without one), with a JSON body
    /// naming the server as the echo backend does, and keeps the connection.
    Status,
}

/// A request as a [`FaultServer`] read it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    /// Lower-case name and value of each header, in order.
    headers: Vec<(String, String)>,
}

impl Seen {
    /// The values of each header by name, as the echo backend reports them.
    fn headers_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (name, value) in &self.headers {
            let entry = map.entry(name.as_str()).or_insert_with(|| json!([]));
            entry
                .as_array_mut()
                .expect("a list")
                .push(json!(value.as_str()));
        }
        Value::Object(map)
    }
}

/// A raw HTTP/1.1 server on 127.0.0.1 misbehaving as its [`Fault`] says; remembers each
/// request that reached it. Stopped when dropped.
struct FaultServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    async fn start(name: &'static str, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a fault server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault server address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(misbehave(tcp, name, fault, log.clone()));
            }
        });
        Self { addr, seen, task }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The requests that reached it.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("fault server lock").clone()
    }

    fn hits(&self) -> usize {
        self.seen.lock().expect("fault server lock").len()
    }
}

async fn misbehave(mut tcp: TcpStream, name: &str, fault: Fault, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut tcp, &mut buf).await {
        let Seen { method, target, .. } = request.clone();
        seen.lock().expect("fault server lock").push(request);
        match fault {
            // Dropping the stream closes the connection.
            Fault::Close => return,
            Fault::Silent => {
                let mut sink = [0u8; 4096];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Fault::Status => {
                let status = target
                    .split_once("fail=")
                    .and_then(|(_, v)| v.get(..3))
                    .and_then(|v| v.parse::<u16>().ok())
                    .unwrap_or(500);
                let body = json!({ "backend": name, "method": method, "target": target });
                let body = body.to_string();
                let answer = format!(
                    "HTTP/1.1 {status} Failing\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one request from `tcp` (its head, then a `content-length` body or a chunked one up to
/// its last chunk), leaving any bytes after it in `buf`; `None` when the connection ends first.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(tcp, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, target) = (request_line.next()?, request_line.next()?);
    let (mut length, mut chunked) = (0usize, false);
    let mut headers = Vec::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        match name.as_str() {
            "content-length" => length = value.parse().ok()?,
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
        headers.push((name, value));
    }
    if chunked {
        // The last chunk and the empty trailer section (the tests' bodies hold no CRLF).
        loop {
            if let Some(i) = find(buf, b"0\r\n\r\n") {
                buf.drain(..i + 5);
                break;
            }
            fill(tcp, buf).await?;
        }
    } else {
        while buf.len() < length {
            fill(tcp, buf).await?;
        }
        buf.drain(..length);
    }
    Some(Seen {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; `None` at the end of the connection or on an error.
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// `wasmgress validate` rejects a comma-separated list and an unknown condition, and bad tries
/// and timeouts, each naming its annotation; a good combination passes.
#[tokio::test]
async fn validate_rejects_bad_values_naming_the_key() {
    let healthy = Backend::start("healthy").await;
    let mut docs = healthy.objects();
    docs.push(ingress(
        "commas",
        "healthy",
        &[(NEXT_UPSTREAM, "error, timeout")],
    ));
    docs.push(ingress("bogus", "healthy", &[(NEXT_UPSTREAM, "bogus")]));
    docs.push(ingress("bad-tries", "healthy", &[(TRIES, "many")]));
    docs.push(ingress("bad-timeout", "healthy", &[(TIMEOUT, "1m")]));
    docs.push(ingress(
        "fine",
        "healthy",
        &[
            (NEXT_UPSTREAM, "error timeout http_502 non_idempotent"),
            (TRIES, "0"),
            (TIMEOUT, "30s"),
        ],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "commas", NEXT_UPSTREAM);
    assert!(
        line.contains("commas") && line.contains("\"error timeout\""),
        "the comma diagnostic says to separate with spaces and shows the fix: {line}"
    );
    let line = validate_error(&stdout, NS, "bogus", NEXT_UPSTREAM);
    assert!(
        line.contains("bogus") && line.contains("http_503"),
        "the unknown-word diagnostic quotes it and lists the valid words: {line}"
    );
    let line = validate_error(&stdout, NS, "bad-tries", TRIES);
    assert!(line.contains("many"), "quotes the value: {line}");
    let line = validate_error(&stdout, NS, "bad-timeout", TIMEOUT);
    assert!(line.contains("1m"), "quotes the value: {line}");
    assert_no_error_about(&stdout, NS, "fine");
}

/// By default (no annotation: `error timeout`, 3 tries) a dead endpoint beside a healthy one
/// costs no request: a GET, and a POST with a body, that could not connect go to the other
/// endpoint as they are (the whole body arrives). The dead endpoint was tried: the route counts
/// retries.
#[tokio::test]
async fn by_default_a_dead_endpoint_fails_no_request_not_even_a_post_with_a_body() {
    let healthy = Backend::start("healthy").await;
    let port = healthy.port();
    let (dead_a, dead_b) = (dead("127.0.0.3", port).await, dead("127.0.0.4", port).await);
    let mut docs = service_objects("for-gets", &[(port, &["127.0.0.1", &dead_a])]);
    docs.extend(service_objects(
        "for-posts",
        &[(port, &["127.0.0.1", &dead_b])],
    ));
    docs.push(ingress("gets", "for-gets", &[]));
    docs.push(ingress("posts", "for-posts", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 20, |i| Req::get(&host("gets"), &format!("/get?i={i}"))).await;
    assert_all_from(&gets, "healthy", "GETs beside a dead endpoint");

    let body = "x".repeat(10_000);
    let posts = send_all(&gw, 20, |i| {
        Req::get(&host("posts"), &format!("/post?i={i}"))
            .method(Method::POST)
            .header("content-type", "text/plain")
            .body(body.clone())
    })
    .await;
    assert_all_from(
        &posts,
        "healthy",
        "POSTs with a body beside a dead endpoint",
    );
    for r in &posts {
        let echo = r.expect_echo();
        assert_eq!(
            (echo["method"].as_str(), echo["body_bytes"].as_u64()),
            (Some("POST"), Some(body.len() as u64)),
            "the POST arrived whole: {}",
            r.summary()
        );
    }

    let metrics = Metrics::scrape(&gw).await;
    for name in ["gets", "posts"] {
        let retried = retries_total(&metrics, name).unwrap_or(0);
        assert!(
            (1..=MAX_FAILS as u64).contains(&retried),
            "{name}: the dead endpoint should have been tried and each failure retried, until \
             its {MAX_FAILS}th failure in a row took it out: wasmgress_upstream_retries_total \
             = {retried}\n{}",
            metrics.text
        );
    }
}

/// An endpoint that reads each request and closes the connection without answering, beside a
/// healthy one: a GET goes again to the healthy endpoint; a POST with a body cannot (it was
/// sent, and it is not idempotent) and is answered 502, and no POST reaches a backend twice;
/// a bodyless POST goes again only with `non_idempotent` listed.
#[tokio::test]
async fn a_connection_closed_after_sending_is_retried_only_for_what_may_be_sent_again() {
    let healthy = Recorder::start("healthy").await;
    let hp = healthy.addr.port();
    let closes_gets = FaultServer::start("closes-gets", Fault::Close).await;
    let closes_posts = FaultServer::start("closes-posts", Fault::Close).await;
    let closes_bodyless = FaultServer::start("closes-bodyless", Fault::Close).await;
    let closes_idempotent = FaultServer::start("closes-idempotent", Fault::Close).await;
    let mut docs = Vec::new();
    for (svc, fault) in [
        ("for-gets", &closes_gets),
        ("for-posts", &closes_posts),
        ("for-bodyless", &closes_bodyless),
        ("for-idempotent", &closes_idempotent),
    ] {
        docs.extend(service_objects(
            svc,
            &[(hp, &["127.0.0.1"]), (fault.port(), &["127.0.0.1"])],
        ));
    }
    docs.push(ingress("gets", "for-gets", &[]));
    docs.push(ingress("posts", "for-posts", &[]));
    docs.push(ingress(
        "bodyless",
        "for-bodyless",
        &[(NEXT_UPSTREAM, "error timeout non_idempotent")],
    ));
    docs.push(ingress("idempotent-only", "for-idempotent", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 12, |i| Req::get(&host("gets"), &format!("/get?i={i}"))).await;
    assert_all_from(&gets, "healthy", "GETs beside an endpoint that closes");
    assert!(
        closes_gets.hits() >= 1,
        "the closing endpoint should have been tried (and the GET sent again)"
    );

    let posts = send_all(&gw, 12, |i| {
        Req::get(&host("posts"), &format!("/post?i={i}"))
            .method(Method::POST)
            .header("content-type", "text/plain")
            .body(format!("post number {i}"))
    })
    .await;
    let failed = proxy_failures(&posts, 502, "healthy", "POSTs with a body");
    assert!(
        (1..=MAX_FAILS).contains(&failed),
        "POSTs with a body that hit the closing endpoint should get 502 (not sent again), at \
         most {MAX_FAILS} before it is taken out; got {failed} 502s: {:?}",
        tally(&posts)
    );
    // Every POST reached exactly one backend, once: the ones that got 502 the closing one.
    let mut arrivals: HashMap<String, Vec<&str>> = HashMap::new();
    for doc in healthy.finished() {
        if doc["path"] == "/post" {
            let query = doc["query"].as_str().unwrap_or_default().to_owned();
            arrivals.entry(query).or_default().push("healthy");
        }
    }
    let broken = closes_posts.seen();
    for seen in &broken {
        assert_eq!(seen.method, "POST", "{seen:?}");
        let query = seen
            .target
            .split_once('?')
            .map_or("", |(_, q)| q)
            .to_owned();
        arrivals.entry(query).or_default().push("closes-posts");
    }
    let twice: Vec<_> = arrivals.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "a POST with a body was sent to more than one attempt: {twice:?}"
    );
    assert_eq!(
        arrivals.len(),
        posts.len(),
        "every POST should have reached one backend: {arrivals:?}"
    );
    assert_eq!(
        broken.len(),
        failed,
        "each 502 is a POST the closing endpoint read: {broken:?}"
    );

    let bodyless = send_all(&gw, 12, |i| {
        Req::get(&host("bodyless"), &format!("/bodyless?i={i}")).method(Method::POST)
    })
    .await;
    assert_all_from(
        &bodyless,
        "healthy",
        "bodyless POSTs with `error timeout non_idempotent`",
    );
    assert!(
        closes_bodyless.hits() >= 1,
        "the closing endpoint should have been tried (and the POST sent again)"
    );

    // Without `non_idempotent`, the same bodyless POSTs are not sent again.
    let bodyless = send_all(&gw, 12, |i| {
        Req::get(&host("idempotent-only"), &format!("/bodyless?i={i}")).method(Method::POST)
    })
    .await;
    let failed = proxy_failures(&bodyless, 502, "healthy", "bodyless POSTs by default");
    assert_eq!(
        failed,
        closes_idempotent.hits(),
        "by default each bodyless POST the closing endpoint read should get 502: {:?}",
        tally(&bodyless)
    );
    assert!(
        (1..=MAX_FAILS).contains(&failed),
        "some bodyless POSTs should hit the closing endpoint and get 502 (at most {MAX_FAILS}); \
         got {failed}: {:?}",
        tally(&bodyless)
    );
}

/// `proxy-next-upstream: "off"`: the requests that go to a dead endpoint fail with 502 (until
/// passive health takes it out).
#[tokio::test]
async fn off_leaves_the_dead_endpoints_share_failing() {
    let healthy = Backend::start("healthy").await;
    let port = healthy.port();
    let dead = dead("127.0.0.3", port).await;
    let mut docs = service_objects("pods", &[(port, &["127.0.0.1", &dead])]);
    docs.push(ingress("off", "pods", &[(NEXT_UPSTREAM, "off")]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 12, |i| Req::get(&host("off"), &format!("/?i={i}"))).await;
    let failed = proxy_failures(&gets, 502, "healthy", "GETs with retries off");
    assert!(
        (1..=MAX_FAILS).contains(&failed),
        "with retries off, the GETs sent to the dead endpoint should fail with 502 (at most \
         {MAX_FAILS} before it is taken out); got {failed}: {:?}",
        tally(&gets)
    );
    let route = debug_route(&gw, &host("off")).await;
    assert_eq!(
        route["policy"]["nextUpstream"]["on"],
        json!([]),
        "no condition: {route:#}"
    );
    let metrics = Metrics::scrape(&gw).await;
    assert_eq!(
        retries_total(&metrics, "off").unwrap_or(0),
        0,
        "nothing was retried:\n{}",
        metrics.text
    );
}

/// Each status nginx can retry on, table-driven: beside a healthy endpoint, one answering that
/// status. With `proxy-next-upstream: "http_N"` every GET gets the healthy endpoint's 200 (the
/// failing endpoint was asked, and its answer replaced); without the annotation, the failing
/// endpoint's share reaches the client as it answered.
#[tokio::test]
async fn each_listed_status_is_retried_and_only_when_listed() {
    const STATUSES: [u16; 7] = [500, 502, 503, 504, 403, 404, 429];
    let healthy = Backend::start("healthy").await;
    let failing = FaultServer::start("failing", Fault::Status).await;
    let mut docs = service_objects(
        "pods",
        &[
            (healthy.port(), &["127.0.0.1"]),
            (failing.port(), &["127.0.0.1"]),
        ],
    );
    for status in STATUSES {
        let listed = format!("http_{status}");
        docs.push(ingress(
            &format!("with-{status}"),
            "pods",
            &[(NEXT_UPSTREAM, &listed)],
        ));
        docs.push(ingress(&format!("without-{status}"), "pods", &[]));
    }
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let mut wrong = Vec::new();
    for status in STATUSES {
        let path = format!("/?fail={status}");
        let before = failing.hits();
        let with = send_all(&gw, 8, |i| {
            Req::get(&host(&format!("with-{status}")), &format!("{path}&i={i}"))
                .header("x-client", "kept")
        })
        .await;
        let asked = &failing.seen()[before..];
        let counts = tally(&with);
        if counts.get("healthy") != Some(&with.len()) || asked.is_empty() {
            wrong.push(format!(
                "http_{status} listed: expected all 8 GETs answered 200 by healthy after the \
                 failing endpoint was asked; it was asked {} times, answers {counts:?}",
                asked.len()
            ));
        }
        // The attempt that went again is the same request: target and headers (the request
        // id included) as the failing endpoint got them.
        for first in asked {
            let again = with.iter().filter_map(Resp::echo).find(|e| {
                format!(
                    "{}?{}",
                    e["path"].as_str().unwrap_or(""),
                    e["query"].as_str().unwrap_or("")
                ) == first.target
            });
            match again {
                Some(again) if again["headers"] == first.headers_json() => {}
                Some(again) => wrong.push(format!(
                    "http_{status}: {} was sent again with other headers:\n  first: {}\n  \
                     again: {}",
                    first.target,
                    first.headers_json(),
                    again["headers"]
                )),
                None => wrong.push(format!(
                    "http_{status}: {} reached the failing endpoint and was not sent again",
                    first.target
                )),
            }
        }
        let without = send_all(&gw, 8, |_| {
            Req::get(&host(&format!("without-{status}")), &path)
        })
        .await;
        let passed = without
            .iter()
            .filter(|r| r.status.as_u16() == status && who(r) == "failing")
            .count();
        let ok = without
            .iter()
            .filter(|r| r.status == 200 && who(r) == "healthy")
            .count();
        if passed == 0 || ok == 0 || passed + ok != without.len() {
            wrong.push(format!(
                "http_{status} not listed: expected some GETs answered {status} by the failing \
                 endpoint and the others 200 by healthy; got {:?}",
                without
                    .iter()
                    .map(|r| format!("{} {}", r.status.as_u16(), who(r)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A POST with a body was sent and cannot go again: even with its status listed, the
    // failing endpoint's answer reaches the client.
    let before = failing.hits();
    let posts = send_all(&gw, 8, |_| {
        Req::get(&host("with-503"), "/?fail=503")
            .method(Method::POST)
            .body("a body")
    })
    .await;
    let passed = posts
        .iter()
        .filter(|r| r.status == 503 && who(r) == "failing")
        .count();
    assert!(
        passed >= 1 && passed == failing.hits() - before,
        "POSTs with a body answered 503 by the failing endpoint should reach the client as \
         they are: {:?}",
        tally(&posts)
    );
    // An answer, whatever its status, is no failure: the endpoint stays in.
    for status in STATUSES {
        let route = debug_route(&gw, &host(&format!("with-{status}"))).await;
        assert_eq!(route["ejectedEndpoints"], json!([]), "{route:#}");
    }
}

/// An endpoint that never answers, with `proxy-read-timeout: "1"`: under the default
/// conditions the timed-out GET goes to the other endpoint; with `proxy-next-upstream:
/// "error"` alone, it is answered 504.
#[tokio::test]
async fn a_read_timeout_is_retried_under_timeout_and_answered_504_without_it() {
    let healthy = Backend::start("healthy").await;
    let silent_a = FaultServer::start("silent-a", Fault::Silent).await;
    let silent_b = FaultServer::start("silent-b", Fault::Silent).await;
    let mut docs = Vec::new();
    for (svc, silent) in [("for-default", &silent_a), ("for-error", &silent_b)] {
        docs.extend(service_objects(
            svc,
            &[
                (healthy.port(), &["127.0.0.1"]),
                (silent.port(), &["127.0.0.1"]),
            ],
        ));
    }
    docs.push(ingress("default", "for-default", &[(READ_TIMEOUT, "1")]));
    docs.push(ingress(
        "error-only",
        "for-error",
        &[(READ_TIMEOUT, "1"), (NEXT_UPSTREAM, "error")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 6, |i| Req::get(&host("default"), &format!("/?i={i}"))).await;
    assert_all_from(
        &gets,
        "healthy",
        "GETs beside a silent endpoint (default conditions)",
    );
    assert!(
        silent_a.hits() >= 1,
        "the silent endpoint should have been tried (and the GET sent again after the timeout)"
    );

    let gets = send_all(&gw, 6, |i| {
        Req::get(&host("error-only"), &format!("/?i={i}"))
    })
    .await;
    let timed_out = proxy_failures(&gets, 504, "healthy", "GETs under `error` alone");
    assert!(
        (1..=MAX_FAILS).contains(&timed_out),
        "GETs to the silent endpoint should time out with 504 and not go again (at most \
         {MAX_FAILS} before it is taken out); got {timed_out}: {:?}",
        tally(&gets)
    );
    assert_eq!(
        silent_b.hits(),
        timed_out,
        "each 504 is a GET the silent endpoint read"
    );
}

/// `proxy-next-upstream-tries: "1"` allows no second attempt: the dead endpoint's share fails
/// with 502. `"0"` tries every endpoint once: three dead endpoints and one healthy, and no GET
/// fails.
#[tokio::test]
async fn tries_one_disables_retries_and_zero_tries_every_endpoint() {
    let healthy = Backend::start("healthy").await;
    let port = healthy.port();
    let dead_one = dead("127.0.0.3", port).await;
    let mut docs = service_objects("for-one", &[(port, &["127.0.0.1", &dead_one])]);
    let dead_many = [
        dead("127.0.0.4", port).await,
        dead("127.0.0.5", port).await,
        dead("127.0.0.6", port).await,
    ];
    let many: Vec<&str> = std::iter::once("127.0.0.1")
        .chain(dead_many.iter().map(String::as_str))
        .collect();
    docs.extend(service_objects("for-zero", &[(port, &many)]));
    docs.push(ingress("one", "for-one", &[(TRIES, "1")]));
    docs.push(ingress("zero", "for-zero", &[(TRIES, "0")]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 12, |i| Req::get(&host("one"), &format!("/?i={i}"))).await;
    let failed = proxy_failures(&gets, 502, "healthy", "GETs with one try");
    assert!(
        (1..=MAX_FAILS).contains(&failed),
        "with one try, the GETs sent to the dead endpoint should fail with 502 (at most \
         {MAX_FAILS} before it is taken out); got {failed}: {:?}",
        tally(&gets)
    );

    let gets = send_all(&gw, 12, |i| Req::get(&host("zero"), &format!("/?i={i}"))).await;
    assert_all_from(
        &gets,
        "healthy",
        "GETs with tries 0 beside three dead endpoints",
    );
    let metrics = Metrics::scrape(&gw).await;
    assert_eq!(
        retries_total(&metrics, "one").unwrap_or(0),
        0,
        "one try: nothing retried\n{}",
        metrics.text
    );
    assert!(
        retries_total(&metrics, "zero").unwrap_or(0) >= 1,
        "tries 0: the dead endpoints were tried\n{}",
        metrics.text
    );
}

/// Passive health: after requests against a dead endpoint, `/debug/routes` lists it in
/// `ejectedEndpoints` (the healthy one stays in) and shows the route's `policy.nextUpstream`;
/// `/metrics` counts one retry per failure, and failures stop at the third, which took the
/// endpoint out.
#[tokio::test]
async fn passive_health_ejects_a_dead_endpoint_and_shows_it() {
    let healthy = Backend::start("healthy").await;
    let port = healthy.port();
    let dead = dead("127.0.0.3", port).await;
    let mut docs = service_objects("pods", &[(port, &["127.0.0.1", &dead])]);
    docs.extend(service_objects("others", &[(port, &["127.0.0.1"])]));
    docs.push(ingress("health", "pods", &[]));
    docs.push(ingress(
        "tuned",
        "others",
        &[
            (NEXT_UPSTREAM, "error timeout http_503 non_idempotent"),
            (TRIES, "5"),
            (TIMEOUT, "30"),
        ],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let route = debug_route(&gw, &host("health")).await;
    assert_eq!(
        route["ejectedEndpoints"],
        json!([]),
        "nothing ejected before any request: {route:#}"
    );
    assert_eq!(
        route["policy"]["nextUpstream"],
        json!({ "on": ["error", "timeout"], "tries": 3, "timeoutMs": null }),
        "ingress-nginx's defaults: {route:#}"
    );
    let tuned = debug_route(&gw, &host("tuned")).await;
    assert_eq!(
        tuned["policy"]["nextUpstream"],
        json!({
            "on": ["error", "timeout", "http_503", "non_idempotent"],
            "tries": 5,
            "timeoutMs": 30_000,
        }),
        "{tuned:#}"
    );

    let gets = send_all(&gw, 12, |i| Req::get(&host("health"), &format!("/?i={i}"))).await;
    assert_all_from(&gets, "healthy", "GETs beside a dead endpoint");

    let route = debug_route(&gw, &host("health")).await;
    let dead_addr = format!("{dead}:{port}");
    assert_eq!(
        route["ejectedEndpoints"],
        json!([dead_addr]),
        "the dead endpoint, and only it, is ejected: {route:#}"
    );
    let metrics = Metrics::scrape(&gw).await;
    assert_eq!(
        retries_total(&metrics, "health"),
        Some(MAX_FAILS as u64),
        "each of the dead endpoint's {MAX_FAILS} failures in a row was retried, then it was \
         skipped:\n{}",
        metrics.text
    );
}

/// An EndpointSlice endpoint whose `conditions` say `terminating: true` gets no request, with
/// `ready` unset or true; beside it, an endpoint without conditions (unknown readiness, treated
/// as ready) shares the requests with a ready one. All three listen, so any request sent to a
/// terminating one would be answered by it.
#[tokio::test]
async fn terminating_endpoints_get_no_requests() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let backends = same_port(&[
        ("serving", ip("127.0.0.1")),
        ("unknown", ip("127.0.0.2")),
        ("terminating", ip("127.0.0.3")),
        ("terminating-ready", ip("127.0.0.4")),
    ])
    .await;
    let port = backends[0].port();
    let endpoint =
        |ip: &str, conditions: Value| json!({ "addresses": [ip], "conditions": conditions });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "pods-abcde",
            "namespace": NS,
            "labels": { "kubernetes.io/service-name": "pods" },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": [
            endpoint("127.0.0.1", json!({ "ready": true })),
            endpoint("127.0.0.2", json!({})),
            endpoint("127.0.0.3", json!({ "terminating": true })),
            endpoint("127.0.0.4", json!({ "ready": true, "terminating": true })),
        ],
    });
    let mut docs = service_objects("pods", &[]);
    docs.push(slice);
    docs.push(ingress("rollout", "pods", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 12, |i| Req::get(&host("rollout"), &format!("/?i={i}"))).await;
    let counts = tally(&gets);
    assert_eq!(
        counts.get("terminating").copied().unwrap_or(0)
            + counts.get("terminating-ready").copied().unwrap_or(0),
        0,
        "terminating endpoints got requests: {counts:?}"
    );
    for pod in ["serving", "unknown"] {
        assert!(
            counts.get(pod).copied().unwrap_or(0) >= 3,
            "12 GETs should be shared by the two serving endpoints: {counts:?}"
        );
    }
    let route = debug_route(&gw, &host("rollout")).await;
    assert_eq!(
        route["endpoints"],
        json!([format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")]),
        "{route:#}"
    );
    drop(backends);
}

/// `proxy-next-upstream-timeout: "1"`: no new attempt once a second has passed since the first.
/// The first attempt to a silent endpoint takes the whole `proxy-read-timeout` (1 s), so the
/// GETs that go there get 504 although `timeout` is listed and a healthy endpoint is there.
#[tokio::test]
async fn no_new_attempt_after_the_next_upstream_timeout() {
    let healthy = Backend::start("healthy").await;
    let silent = FaultServer::start("silent", Fault::Silent).await;
    let mut docs = service_objects(
        "pods",
        &[
            (healthy.port(), &["127.0.0.1"]),
            (silent.port(), &["127.0.0.1"]),
        ],
    );
    docs.push(ingress(
        "bounded",
        "pods",
        &[(READ_TIMEOUT, "1"), (TIMEOUT, "1")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 6, |i| Req::get(&host("bounded"), &format!("/?i={i}"))).await;
    let timed_out = proxy_failures(
        &gets,
        504,
        "healthy",
        "GETs with a 1 s next-upstream timeout",
    );
    assert!(
        (1..=MAX_FAILS).contains(&timed_out) && timed_out == silent.hits(),
        "each GET the silent endpoint read should be answered 504, with no time left for \
         another attempt; {} reached it, answers {:?}",
        silent.hits(),
        tally(&gets)
    );
}

/// nginx counts a connection that cannot be established in time as `timeout` ("a timeout has
/// occurred while establishing a connection with the server"). With `proxy-next-upstream:
/// "timeout"` alone, a GET whose connection attempt times out (an endpoint whose accept queue is
/// full, `proxy-connect-timeout: "1"`) goes to the healthy endpoint.
#[tokio::test]
async fn a_connect_timeout_is_a_timeout() {
    let healthy = Backend::start("healthy").await;
    let hole = unresponsive_port().await;
    let mut docs = service_objects(
        "pods",
        &[
            (healthy.port(), &["127.0.0.1"]),
            (hole.port, &["127.0.0.1"]),
        ],
    );
    docs.push(ingress(
        "connect",
        "pods",
        &[(CONNECT_TIMEOUT, "1"), (NEXT_UPSTREAM, "timeout")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 6, |i| Req::get(&host("connect"), &format!("/?i={i}"))).await;
    assert_all_from(
        &gets,
        "healthy",
        "GETs beside an endpoint that never accepts, under `timeout` alone",
    );
}

/// The same never-connected rule over an HTTP/2 upstream (`backend-protocol: "GRPC"`, h2c to
/// the echo backends): a POST with a body beside a dead endpoint goes to the healthy one whole.
#[tokio::test]
async fn over_http2_a_post_that_never_connected_goes_elsewhere_whole() {
    let healthy = Backend::start("healthy").await;
    let port = healthy.port();
    let dead = dead("127.0.0.3", port).await;
    let mut docs = service_objects("pods", &[(port, &["127.0.0.1", &dead])]);
    docs.push(ingress("h2", "pods", &[(BACKEND_PROTOCOL, "GRPC")]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let body = "y".repeat(5_000);
    let posts = send_all(&gw, 10, |i| {
        Req::get(&host("h2"), &format!("/post?i={i}"))
            .method(Method::POST)
            .header("content-type", "text/plain")
            .body(body.clone())
    })
    .await;
    assert_all_from(&posts, "healthy", "POSTs over h2c beside a dead endpoint");
    for r in &posts {
        let echo = r.expect_echo();
        assert_eq!(
            (echo["version"].as_str(), echo["body_bytes"].as_u64()),
            (Some("HTTP/2.0"), Some(body.len() as u64)),
            "the POST arrived whole over HTTP/2: {}",
            r.summary()
        );
    }
    let metrics = Metrics::scrape(&gw).await;
    assert!(
        retries_total(&metrics, "h2").unwrap_or(0) >= 1,
        "the dead endpoint was tried:\n{}",
        metrics.text
    );
}

/// A backend never skips all its endpoints: when every one has failed 3 times in a row (one
/// closes each connection, one is dead), both are listed as ejected, yet requests still go to
/// them (the closing one keeps reading requests) and are answered 502, never 503 `no healthy
/// upstream`.
#[tokio::test]
async fn when_every_endpoint_is_ejected_requests_still_go_to_them() {
    let closes = FaultServer::start("closes", Fault::Close).await;
    let dead = dead("127.0.0.3", closes.port()).await;
    let mut docs = service_objects("pods", &[(closes.port(), &["127.0.0.1", &dead])]);
    docs.push(ingress("all-down", "pods", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 8, |i| Req::get(&host("all-down"), &format!("/?i={i}"))).await;
    let failed = proxy_failures(&gets, 502, "nobody", "GETs to two broken endpoints");
    assert_eq!(failed, gets.len(), "{:?}", tally(&gets));
    let route = debug_route(&gw, &host("all-down")).await;
    let mut ejected: Vec<String> = route["ejectedEndpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ejected.sort();
    assert_eq!(
        ejected,
        vec![closes.addr.to_string(), format!("{dead}:{}", closes.port())],
        "both failed {MAX_FAILS} times in a row: {route:#}"
    );

    let before = closes.hits();
    let gets = send_all(&gw, 6, |i| {
        Req::get(&host("all-down"), &format!("/after?i={i}"))
    })
    .await;
    let failed = proxy_failures(&gets, 502, "nobody", "GETs once every endpoint is ejected");
    assert_eq!(failed, gets.len(), "{:?}", tally(&gets));
    // Each GET went first to one endpoint and, both being ejected, nowhere else: the closing
    // endpoint read the ones that went to it, the dead one refused the others.
    let to_closing = closes.hits() - before;
    assert!(
        (1..gets.len()).contains(&to_closing),
        "with every endpoint ejected, the round-robin should go on over both of them; the \
         closing endpoint got {to_closing} of {} GETs (the dead one the others)",
        gets.len()
    );
}

/// Retries do not skew the round-robin: beside an endpoint answering 503 (`http_503` listed,
/// never ejected since it answers), consecutive GETs start at either endpoint in turn, as with
/// nginx's round-robin, so the failing endpoint is asked first by about half of them, not by
/// every one.
#[tokio::test]
async fn retries_leave_first_attempts_shared_round_robin() {
    let healthy = Backend::start("healthy").await;
    let failing = FaultServer::start("failing", Fault::Status).await;
    let mut docs = service_objects(
        "pods",
        &[
            (healthy.port(), &["127.0.0.1"]),
            (failing.port(), &["127.0.0.1"]),
        ],
    );
    docs.push(ingress("rotation", "pods", &[(NEXT_UPSTREAM, "http_503")]));
    let m = Manifests::new();
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;

    let gets = send_all(&gw, 10, |i| {
        Req::get(&host("rotation"), &format!("/?fail=503&i={i}"))
    })
    .await;
    assert_all_from(&gets, "healthy", "GETs with http_503 listed");
    let first_at_failing = failing.hits();
    assert!(
        (3..=7).contains(&first_at_failing),
        "10 GETs over two endpoints should start at the failing one about half the time; \
         {first_at_failing} of 10 did (each then went again to the healthy one)"
    );
}

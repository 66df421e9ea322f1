//! Plugins doing I/O through the real binary, with the test plugins `outbound`, `set-header` and
//! `body` loaded by `--plugin-dir`:
//!
//! - outbound HTTP calls (`http` capability, `wait`, `on-http-responses`): what the called
//!   service sees and what the plugin makes of its answers, several calls per round in queue
//!   order, several rounds, the 4-waits limit, a call's own deadline and connection failure;
//! - grants: a host or port the route does not grant is refused at once, more than 4 calls or
//!   an invalid URL too, and a plugin importing `http` without an `http(...)` grant does not
//!   attach; in a cluster (`run --kube` against the in-test API server of `kubernetes.rs`) a
//!   grant outside `--plugin-http-allow` rejects the Ingress, and loopback is never reachable;
//! - waiting without holding a proxy worker: with `--workers 1`, requests waiting for a held
//!   outbound answer do not stop other requests;
//! - `request.set-backend`: a granted backend receives the request, anything else is refused;
//! - body hooks: request and response bodies rewritten as they stream (at least one call per
//!   64 KiB, nothing lost, a 1 MiB body included), tiny chunks joined into few calls, aborted
//!   bodies, no call for empty bodies; request body hooks refused with `proxy-http-version: 1.0`;
//! - trailer hooks: request trailers over HTTP/1.1 and gRPC response trailers over h2c (an
//!   HTTP/1.1 hop carries only the trailers its `Trailer` header announced, as the WIT says).
//!
//! Outbound calls go to a [`Callee`] in this process (files mode: no cluster, so loopback is
//! reachable when granted, except in the one cluster-mode test); body tests use a
//! [`BodyBackend`] that keeps what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use wasmgress_examples::greeter::proto::HelloRequest;
use wasmgress_examples::greeter::proto::greeter_client::GreeterClient;

use crate::harness::backend::closed_port;
use crate::harness::client::EXCHANGE_LIMIT;
use crate::harness::grpc::{GreeterBackend, SEED_PORT};
use crate::harness::manifests::NS;
use crate::harness::plugins::{Metrics, PluginDir};
use crate::harness::process::{assert_no_error_about, validate, validate_error};
use crate::harness::raw::{
    H2_END_HEADERS, H2_END_STREAM, H2_HEADERS, H2_PREFACE, H2_SETTINGS, Raw, exchange, h2_frame,
};
use crate::harness::recorder::{Recorder, Silent, objects_at, refused};
use crate::harness::{Backend, Ingress, Manifests, Req, Resp, Wasmgress, prefix};
use crate::kubernetes::{Cluster, eventually};

const PLUGINS: &str = "wasmgress.io/plugins";
const OUT_GRANT: &str = "wasmgress.io/plugin.outbound.capabilities";
const OUT_URL: &str = "wasmgress.io/plugin.outbound.url";
const OUT_CALLS: &str = "wasmgress.io/plugin.outbound.calls";
const OUT_ROUNDS: &str = "wasmgress.io/plugin.outbound.rounds";
const OUT_TIMEOUT: &str = "wasmgress.io/plugin.outbound.timeout-ms";
const OUT_FAIL_OPEN: &str = "wasmgress.io/plugin.outbound.fail-open";
const SH_GRANT: &str = "wasmgress.io/plugin.set-header.capabilities";
/// Makes `set-header` honour the request header `x-set-backend`.
const SH_CHOOSE: &str = "wasmgress.io/plugin.set-header.choose-backend";
const BODY_HOOKS: &str = "wasmgress.io/plugin.body.hooks";
const BODY_SIZE: &str = "nginx.ingress.kubernetes.io/proxy-body-size";
const BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// A call's deadline generous enough that no call to the in-process [`Callee`] misses it on a
/// busy machine (the host's default is 1000 ms).
const GENEROUS_MS: &str = "10000";

/// The largest piece a body hook is handed.
const MAX_PIECE: usize = 64 << 10;

/// The HTTP/2 DATA frame type (hand-made frames).
const H2_DATA: u8 = 0x0;

// ---------------------------------------------------------------------------------------------
// Helpers

/// An Ingress `default/name` for `name.test`, everything to Service `service`, with
/// `annotations`.
fn ingress(name: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(&format!("{name}.test")), &[prefix("/", service)])
        .build()
}

/// An Ingress `default/name` for `name.test` to Service `app` with the `outbound` plugin
/// calling `url`, granted `grant` (none: no capabilities annotation), plus `more`.
fn outbound(name: &str, url: &str, grant: Option<&str>, more: &[(&str, &str)]) -> Value {
    let mut annotations = vec![(PLUGINS, "outbound"), (OUT_URL, url)];
    if let Some(g) = grant {
        annotations.push((OUT_GRANT, g));
    }
    if !more.iter().any(|(k, _)| *k == OUT_TIMEOUT) {
        annotations.push((OUT_TIMEOUT, GENEROUS_MS));
    }
    annotations.extend_from_slice(more);
    ingress(name, "app", &annotations)
}

/// `work`, or a panic naming `what` if it takes over [`EXCHANGE_LIMIT`].
async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EXCHANGE_LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {EXCHANGE_LIMIT:?}"))
}

/// Waits (at most [`EXCHANGE_LIMIT`]) until `ready` holds, re-checking whenever `changed` is
/// notified; whether it did.
async fn until(changed: &Notify, ready: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + EXCHANGE_LIMIT;
    loop {
        // Registered before the check, so a change between the check and the wait wakes it.
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ready();
        }
    }
}

/// [`until`], or a panic naming `what`.
async fn wait_for(changed: &Notify, what: &str, ready: impl Fn() -> bool) {
    if !until(changed, ready).await {
        panic!("waited {EXCHANGE_LIMIT:?} for {what}");
    }
}

// ---------------------------------------------------------------------------------------------
// The service plugins call

/// One call a [`Callee`] received.
#[derive(Clone, Debug)]
struct CallSeen {
    method: String,
    path: String,
    /// `x-call`: the call's index in its round.
    call: String,
    /// `x-request-id`: the proxied request's id, as the plugin sends it.
    id: String,
}

struct CalleeState {
    calls: Mutex<Vec<CallSeen>>,
    changed: Notify,
    /// `/hold` answers once per permit.
    release: Semaphore,
}

/// The HTTP service the `outbound` plugin calls, answering by path:
///
/// - `/ok`: 200 `ok`;
/// - `/by-call`: status 200 + `x-call`, body `call <x-call>`; call 0 answers only once calls
///   1 and 2 of the same request have arrived (so answers come back out of queue order);
/// - `/deny`: 403 `nope`;
/// - `/hold`: 200 `released`, once the test releases it ([`Callee::release`]).
struct Callee {
    addr: SocketAddr,
    state: Arc<CalleeState>,
    task: JoinHandle<()>,
}

impl Drop for Callee {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Callee {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the called service on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(CalleeState {
            calls: Mutex::new(Vec::new()),
            changed: Notify::new(),
            release: Semaphore::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| callee_answer(req, state.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT{path}`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http(127.0.0.1:PORT)`.
    fn grant(&self) -> String {
        format!("http({})", self.addr)
    }

    /// Every call received for the request with id `id`, in arrival order.
    fn calls_for(&self, id: &str) -> Vec<CallSeen> {
        let calls = self.state.calls.lock().expect("callee lock");
        calls.iter().filter(|c| c.id == id).cloned().collect()
    }

    fn total(&self) -> usize {
        self.state.calls.lock().expect("callee lock").len()
    }

    /// Waits until `n` calls to `path` have arrived in all.
    async fn wait_calls(&self, path: &str, n: usize) {
        let count = || {
            let calls = self.state.calls.lock().expect("callee lock");
            calls.iter().filter(|c| c.path == path).count()
        };
        wait_for(
            &self.state.changed,
            &format!("{n} calls to {path} at the called service"),
            || count() >= n,
        )
        .await;
    }

    /// Lets `n` held `/hold` calls answer.
    fn release(&self, n: usize) {
        self.state.release.add_permits(n);
    }
}

async fn callee_answer(
    req: Request<Incoming>,
    state: Arc<CalleeState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let seen = CallSeen {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        call: header("x-call"),
        id: header("x-request-id"),
    };
    state.calls.lock().expect("callee lock").push(seen.clone());
    state.changed.notify_waiters();
    let (status, body) = match seen.path.as_str() {
        "/ok" => (200, "ok".to_owned()),
        "/deny" => (403, "nope".to_owned()),
        "/hold" => {
            let permit = state.release.acquire().await.expect("semaphore open");
            permit.forget();
            (200, "released".to_owned())
        }
        "/by-call" => {
            let i: u16 = seen.call.parse().unwrap_or(99);
            if i == 0 {
                let others = || {
                    let calls = state.calls.lock().expect("callee lock");
                    calls
                        .iter()
                        .filter(|c| c.id == seen.id && (c.call == "1" || c.call == "2"))
                        .count()
                        >= 2
                };
                // Calls 1 and 2 come while call 0 is unanswered only if the host makes a
                // round's calls at once; otherwise this waits until the call's deadline.
                until(&state.changed, others).await;
            }
            (200 + i, format!("call {i}"))
        }
        _ => (404, "no such call".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// 1. Outbound calls and `wait`

/// The `outbound` plugin calls a service before the request goes upstream: the service sees
/// `x-call: 0` and the request's id; the upstream sees the answer's status and body as
/// request headers. Three calls in a round are made at once (call 0 is only answered after
/// calls 1 and 2 arrived) and their results come back in queue order. A 403 from the service
/// makes the plugin answer 403 itself, the upstream never reached. `rounds: 2` and `rounds: 4`
/// call once per round (4 waits is the limit, and allowed); `rounds: 5` fails the plugin
/// (500 naming it) after the fourth round, whose fifth round of calls is never made; with
/// `fail-open` that request goes on upstream instead.
#[tokio::test]
async fn outbound_calls_reach_the_service_and_their_answers_the_plugin() {
    let plugins = PluginDir::with(&["outbound"]);
    let callee = Callee::start().await;
    let rec = Recorder::start("app").await;
    let grant = callee.grant();
    let g = Some(grant.as_str());
    let ok = callee.url("/ok");
    let mut objects = rec.objects();
    objects.extend([
        outbound("one", &ok, g, &[]),
        outbound("three", &callee.url("/by-call"), g, &[(OUT_CALLS, "3")]),
        outbound("deny", &callee.url("/deny"), g, &[]),
        outbound("two-rounds", &ok, g, &[(OUT_ROUNDS, "2")]),
        outbound("four-rounds", &ok, g, &[(OUT_ROUNDS, "4")]),
        outbound("five-rounds", &ok, g, &[(OUT_ROUNDS, "5")]),
        outbound(
            "five-open",
            &ok,
            g,
            &[(OUT_ROUNDS, "5"), (OUT_FAIL_OPEN, "true")],
        ),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    // One call: what the service saw, what the upstream saw.
    let r = gw
        .send(&Req::get("one.test", "/x?y=1").header("x-request-id", "io-one-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.seen("x-outbound-status"), ["200"], "{}", r.summary());
    assert_eq!(r.seen("x-outbound-body"), ["ok"], "{}", r.summary());
    assert_eq!(r.seen("x-outbound-error"), Vec::<String>::new());
    let calls = callee.calls_for("io-one-1");
    assert_eq!(calls.len(), 1, "one call per request: {calls:?}");
    assert_eq!(
        (
            calls[0].method.as_str(),
            calls[0].path.as_str(),
            calls[0].call.as_str()
        ),
        ("GET", "/ok", "0"),
        "{calls:?}"
    );
    // Without a client id, the one the proxy made is the one the service gets.
    let r = gw.get("one.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let ids = r.seen("x-request-id");
    assert_eq!(ids.len(), 1, "{}", r.summary());
    let calls = callee.calls_for(&ids[0]);
    assert_eq!(
        calls.len(),
        1,
        "the service got the request id the upstream got ({}): {calls:?}",
        ids[0]
    );

    // A request body waits with the request and then goes upstream whole.
    let r = gw
        .send(
            &Req::get("one.test", "/upload")
                .method(Method::POST)
                .body("a body that waited"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let echo = r.expect_echo();
    assert_eq!(echo["body_bytes"], 18, "{echo}");
    assert_eq!(echo["complete"], true, "{echo}");
    assert_eq!(r.seen("x-outbound-status"), ["200"], "{}", r.summary());

    // Three calls at once, results in queue order.
    let r = gw
        .send(&Req::get("three.test", "/").header("x-request-id", "io-three-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.seen("x-outbound-error"),
        Vec::<String>::new(),
        "no call failed (a timeout here means the calls were not made at once): {}",
        r.summary()
    );
    assert_eq!(
        r.seen("x-outbound-status"),
        ["200", "201", "202"],
        "{}",
        r.summary()
    );
    assert_eq!(
        r.seen("x-outbound-body"),
        ["call 0", "call 1", "call 2"],
        "{}",
        r.summary()
    );
    let mut indices: Vec<String> = callee
        .calls_for("io-three-1")
        .into_iter()
        .map(|c| c.call)
        .collect();
    indices.sort();
    assert_eq!(indices, ["0", "1", "2"]);

    // A 403 from the service: the plugin answers, the upstream is not reached.
    let r = refused(
        &gw,
        &rec,
        "outbound 403",
        403,
        &Req::get("deny.test", "/").header("x-request-id", "io-deny-1"),
    )
    .await;
    assert_eq!(r.text(), "denied by outbound\n", "{}", r.summary());
    assert_eq!(callee.calls_for("io-deny-1").len(), 1);

    // Rounds: one call each; the results of every round reach the upstream.
    let r = gw
        .send(&Req::get("two-rounds.test", "/").header("x-request-id", "io-two-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.seen("x-outbound-status"), ["200", "200"]);
    assert_eq!(
        callee.calls_for("io-two-1").len(),
        2,
        "two rounds, two calls"
    );

    let r = gw
        .send(&Req::get("four-rounds.test", "/").header("x-request-id", "io-four-1"))
        .await;
    assert_eq!(r.status, 200, "4 waits are allowed: {}", r.summary());
    assert_eq!(r.seen("x-outbound-status"), ["200"; 4]);
    assert_eq!(callee.calls_for("io-four-1").len(), 4);

    let r = refused(
        &gw,
        &rec,
        "a fifth wait",
        500,
        &Req::get("five-rounds.test", "/").header("x-request-id", "io-five-1"),
    )
    .await;
    assert_eq!(
        r.text(),
        "plugin outbound failed\n",
        "the failure names the plugin: {}",
        r.summary()
    );
    assert_eq!(
        callee.calls_for("io-five-1").len(),
        4,
        "the calls of the fifth wait are never made"
    );
    assert!(
        gw.stderr_mentions("waited more than 4 times").await,
        "the log says why the plugin failed"
    );

    // Fail-open: the same failure lets the request go on without the plugin.
    let r = gw
        .send(&Req::get("five-open.test", "/").header("x-request-id", "io-five-open-1"))
        .await;
    assert_eq!(r.status, 200, "fail-open goes on: {}", r.summary());
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(callee.calls_for("io-five-open-1").len(), 4);
}

// ---------------------------------------------------------------------------------------------
// 2. Grants

/// `http(127.0.0.1:PORT)` grants that address and port only: a URL with another port, or
/// naming the same service as `localhost`, is refused at once (`not-granted`: the plugin
/// answers 502 `send refused: not-granted`), and nothing reaches either. More than 4 calls in
/// one hook: the fifth is `too-many`, and the four queued before it are never made (the hook
/// did not wait). A URL that is not `http(s)`: `invalid`. A plugin importing `http` on a
/// route granting no `http(...)` does not attach: the Ingress is rejected with a diagnostic
/// naming `http` (404 for its host), as on a route granting only `clock`.
#[tokio::test]
async fn outbound_calls_go_only_where_the_route_grants() {
    let plugins = PluginDir::with(&["outbound"]);
    let callee = Callee::start().await;
    let rec = Recorder::start("app").await;
    let other_port = closed_port().await;
    let grant = callee.grant();
    let g = Some(grant.as_str());
    let ok = callee.url("/ok");
    let other = format!("http://127.0.0.1:{other_port}/ok");
    let by_name = format!("http://localhost:{}/ok", callee.addr.port());
    let ftp = format!("ftp://{}/ok", callee.addr);
    let mut objects = rec.objects();
    objects.extend([
        outbound("other-port", &other, g, &[]),
        outbound("by-name", &by_name, g, &[]),
        outbound("too-many", &ok, g, &[(OUT_CALLS, "5")]),
        outbound("not-http", &ftp, g, &[]),
        outbound("granted", &ok, g, &[(OUT_CALLS, "4")]),
        outbound("no-grant", &ok, None, &[]),
        outbound("clock-only", &ok, Some("clock"), &[]),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in ["no-grant", "clock-only"] {
        let line = validate_error(&stdout, NS, name, OUT_GRANT);
        assert!(line.contains("`http`"), "{name}: names `http`: {line}");
    }
    for name in ["other-port", "by-name", "too-many", "not-http", "granted"] {
        assert_no_error_about(&stdout, NS, name);
    }

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[
        ("no-grant.test", "/", "404"),
        ("clock-only.test", "/", "404"),
    ])
    .await;
    for name in ["no-grant", "clock-only"] {
        assert!(
            gw.stderr_mentions(&format!("Ingress {NS}/{name}")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }

    for (host, error) in [
        ("other-port.test", "not-granted"),
        ("by-name.test", "not-granted"),
        ("too-many.test", "too-many"),
        ("not-http.test", "invalid"),
    ] {
        let r = refused(&gw, &rec, host, 502, &Req::get(host, "/")).await;
        assert_eq!(
            r.text(),
            format!("send refused: {error}\n"),
            "{host}: {}",
            r.summary()
        );
    }
    assert_eq!(
        callee.total(),
        0,
        "no refused hook's calls were made (too-many's first four included)"
    );

    // Four calls, the most one hook may queue, all made.
    let r = gw
        .send(&Req::get("granted.test", "/").header("x-request-id", "io-granted-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.seen("x-outbound-status"), ["200"; 4]);
    assert_eq!(callee.calls_for("io-granted-1").len(), 4);
}

/// In a cluster the operator, not the Ingress author, decides which hosts plugins may call.
/// `wasmgress run --kube` (against the in-test API server) with the `outbound` plugin and an
/// Ingress granting `http(127.0.0.1:PORT)`: without `--plugin-http-allow` that Ingress is
/// rejected, with a Warning Event naming `--plugin-http-allow`, and its host answers 404 while
/// a plain Ingress next to it serves. With `--plugin-http-allow 127.0.0.1:PORT` the Ingress is
/// accepted, yet the call is still refused because loopback is never reachable for plugins in a
/// cluster (even with `--allow-local-endpoints`, which lets backends be there): the client gets
/// 502 `send refused: not-granted`, the upstream is not reached and the called service never
/// sees a request.
#[tokio::test]
async fn in_a_cluster_plugins_call_only_what_the_operator_allows_and_never_loopback() {
    let plugins = PluginDir::with(&["outbound"]);
    let callee = Callee::start().await;
    let rec = Recorder::start("app").await;
    let cluster = Cluster::new().await;
    let grant = callee.grant();
    let mut objects = rec.objects();
    objects.extend([
        outbound("out", &callee.url("/ok"), Some(&grant), &[]),
        ingress("plain", "app", &[]),
    ]);
    cluster.apply_all(&objects);

    // The operator allows nothing (the default): the grant itself is refused.
    let strict = cluster.controller("strict", &plugins.args()).await;
    eventually("the plain Ingress serves", async || {
        strict.get("plain.test", "/").await.backend().as_deref() == Some("app")
    })
    .await;
    eventually(
        "a Warning Event on Ingress `out` names --plugin-http-allow",
        async || {
            cluster
                .events_for("out")
                .iter()
                .any(|(kind, _, note)| kind == "Warning" && note.contains("--plugin-http-allow"))
        },
    )
    .await;
    strict.assert_routes(&[("out.test", "/", "404")]).await;
    assert_eq!(callee.total(), 0, "nothing was called");
    drop(strict);

    // The operator allows that address: the Ingress serves, but loopback stays unreachable.
    let allow = callee.addr.to_string();
    let mut args = plugins.args().to_vec();
    args.extend_from_slice(&["--plugin-http-allow", allow.as_str()]);
    let allowing = cluster.controller("allowing", &args).await;
    eventually("the Ingress granting the call is served", async || {
        allowing.get("out.test", "/").await.status != 404
    })
    .await;
    let r = refused(
        &allowing,
        &rec,
        "a plugin's call to loopback in a cluster",
        502,
        &Req::get("out.test", "/"),
    )
    .await;
    assert_eq!(
        r.text(),
        "send refused: not-granted\n",
        "refused at once, as a host the route does not grant: {}",
        r.summary()
    );
    assert_eq!(callee.total(), 0, "the called service never saw a request");
}

// ---------------------------------------------------------------------------------------------
// 3. Waiting without a worker; a call's deadline

/// With one proxy worker (`--workers 1`), three requests wait for outbound answers the
/// service holds back; meanwhile other requests (with and without outbound calls of their
/// own) are served, all of them while the three still wait. Once released, the three complete
/// with the service's answer.
#[tokio::test]
async fn waiting_requests_do_not_hold_the_only_worker() {
    let plugins = PluginDir::with(&["outbound"]);
    let callee = Callee::start().await;
    let rec = Recorder::start("app").await;
    let grant = callee.grant();
    let g = Some(grant.as_str());
    let mut objects = rec.objects();
    objects.extend([
        outbound("hold", &callee.url("/hold"), g, &[(OUT_TIMEOUT, "30000")]),
        outbound("quick", &callee.url("/ok"), g, &[]),
        ingress("plain", "app", &[]),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[&plugins.args()[..], &["--workers", "1"]].concat()).await;

    const HELD: usize = 3;
    let mut held = Vec::new();
    for i in 0..HELD {
        let mut conn = gw.h1().await;
        let req = Req::get("hold.test", "/").header("x-request-id", &format!("io-held-{i}"));
        held.push(tokio::spawn(async move { conn.send(&req).await }));
    }
    // Every held request is waiting: its call reached the service, which holds the answer.
    callee.wait_calls("/hold", HELD).await;

    let quick = (0..4).map(|i| {
        let gw = &gw;
        async move {
            let host = if i % 2 == 0 {
                "quick.test"
            } else {
                "plain.test"
            };
            let r = gw.get(host, "/").await;
            (host, r)
        }
    });
    for (host, r) in join_all(quick).await {
        assert_eq!(r.status, 200, "{host} while others wait: {}", r.summary());
        if host == "quick.test" {
            assert_eq!(r.seen("x-outbound-body"), ["ok"], "{}", r.summary());
        }
    }
    for (i, h) in held.iter().enumerate() {
        assert!(
            !h.is_finished(),
            "held request {i} cannot have finished: its outbound answer is still held"
        );
    }
    assert_eq!(
        rec.arrived(),
        4,
        "only the quick requests reached the upstream so far"
    );

    callee.release(HELD);
    for (i, h) in held.into_iter().enumerate() {
        let r = h
            .await
            .expect("the held request's task")
            .unwrap_or_else(|e| panic!("held request {i}: {e}"));
        assert_eq!(r.status, 200, "held request {i}: {}", r.summary());
        assert_eq!(r.seen("x-outbound-status"), ["200"], "{}", r.summary());
        assert_eq!(r.seen("x-outbound-body"), ["released"], "{}", r.summary());
    }
    assert_eq!(rec.arrived(), 4 + HELD);
}

/// A call gets no answer within its `timeout-ms: 200`: the plugin is handed `timeout` and the
/// request goes on (`x-outbound-error: timeout` upstream). A call to a port nobody listens on
/// is handed `failed`.
#[tokio::test]
async fn an_unanswered_call_times_out_and_a_refused_one_fails() {
    let plugins = PluginDir::with(&["outbound"]);
    let silent = Silent::start().await;
    let closed = closed_port().await;
    let rec = Recorder::start("app").await;
    let silent_grant = format!("http({})", silent.addr);
    let closed_grant = format!("http(127.0.0.1:{closed})");
    let mut objects = rec.objects();
    objects.extend([
        outbound(
            "timeout",
            &format!("http://{}/never", silent.addr),
            Some(&silent_grant),
            &[(OUT_TIMEOUT, "200")],
        ),
        outbound(
            "failed",
            &format!("http://127.0.0.1:{closed}/gone"),
            Some(&closed_grant),
            &[],
        ),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = gw.get("timeout.test", "/").await;
    assert_eq!(r.status, 200, "the plugin goes on: {}", r.summary());
    assert_eq!(r.seen("x-outbound-error"), ["timeout"], "{}", r.summary());
    assert_eq!(r.seen("x-outbound-status"), Vec::<String>::new());

    let r = gw.get("failed.test", "/").await;
    assert_eq!(r.status, 200, "the plugin goes on: {}", r.summary());
    assert_eq!(r.seen("x-outbound-error"), ["failed"], "{}", r.summary());
    assert_eq!(rec.arrived(), 2);
}

// ---------------------------------------------------------------------------------------------
// 4. set-backend

/// Ingress `switch` routes to `main` and grants `set-header` `backends(canary:80, ghost:80)`:
/// `x-set-backend: canary:80` sends the request (path, query and the plugin's header edits
/// included) to canary; no header, main. A grant naming the port by name (`canary:http`)
/// works the same. A backend the route does not grant (another Service, canary on another
/// port, or written otherwise than in the grant) is refused: 400 `set-backend refused:
/// not-granted`, as on a route granting nothing. A granted backend without a Service leaves the route serving (with
/// a warning) and answers 503.
#[tokio::test]
async fn set_backend_sends_to_a_granted_backend_only() {
    let plugins = PluginDir::with(&["set-header"]);
    let main = Backend::start("main").await;
    let canary = Backend::start("canary").await;
    let other = Backend::start("other").await;
    let mut objects = main.objects();
    objects.extend(canary.objects());
    objects.extend(other.objects());
    objects.extend([
        ingress(
            "switch",
            "main",
            &[
                (PLUGINS, "set-header"),
                (SH_CHOOSE, "true"),
                (SH_GRANT, "backends(canary:80, ghost:80)"),
            ],
        ),
        ingress(
            "port-name",
            "main",
            &[
                (PLUGINS, "set-header"),
                (SH_CHOOSE, "true"),
                (SH_GRANT, "backends(canary:http)"),
            ],
        ),
        ingress(
            "nogrant",
            "main",
            &[(PLUGINS, "set-header"), (SH_CHOOSE, "true")],
        ),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;
    let to = |host: &str, backend: &str| {
        Req::get(host, "/some/path?q=1").header("x-set-backend", backend)
    };

    let r = gw.get("switch.test", "/some/path?q=1").await;
    assert_eq!(r.backend().as_deref(), Some("main"), "{}", r.summary());

    let r = gw.send(&to("switch.test", "canary:80")).await;
    assert_eq!(r.backend().as_deref(), Some("canary"), "{}", r.summary());
    let echo = r.expect_echo();
    assert_eq!(echo["path"], "/some/path", "{echo}");
    assert_eq!(echo["query"], "q=1", "{echo}");
    assert!(
        r.seen("x-seen-by")
            .first()
            .is_some_and(|v| v.starts_with("wasm-")),
        "the plugin's header edit goes along: {}",
        r.summary()
    );

    // A grant naming the Service port by name: chosen as written.
    let r = gw.send(&to("port-name.test", "canary:http")).await;
    assert_eq!(r.backend().as_deref(), Some("canary"), "{}", r.summary());

    for (host, backend) in [
        ("switch.test", "other:80"),
        ("switch.test", "canary:8080"),
        ("switch.test", "canary"),
        ("switch.test", "canary:http"),
        ("port-name.test", "canary:80"),
        ("nogrant.test", "canary:80"),
    ] {
        let r = gw.send(&to(host, backend)).await;
        assert_eq!(r.status, 400, "{host} to {backend}: {}", r.summary());
        assert_eq!(r.backend(), None, "{host} to {backend}: {}", r.summary());
        assert_eq!(
            r.text(),
            "set-backend refused: not-granted\n",
            "{host} to {backend}: {}",
            r.summary()
        );
    }

    let r = gw.send(&to("switch.test", "ghost:80")).await;
    assert_eq!(
        r.status,
        503,
        "a granted backend without endpoints: {}",
        r.summary()
    );
    assert!(
        gw.stderr_mentions("ghost:80").await,
        "the unresolvable granted backend is reported"
    );
    let r = gw.get("switch.test", "/").await;
    assert_eq!(r.backend().as_deref(), Some("main"), "{}", r.summary());
}

// ---------------------------------------------------------------------------------------------
// 5. Body hooks

/// What a [`BodyBackend`] received in one request.
#[derive(Clone, Debug)]
struct BodySeen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The size of each data frame as it arrived.
    frames: Vec<usize>,
    trailers: HeaderMap,
    /// The body ended cleanly.
    complete: bool,
}

#[derive(Default)]
struct BodyState {
    requests: Mutex<Vec<BodySeen>>,
    /// Body bytes received so far, all requests together.
    received: AtomicUsize,
    changed: Notify,
}

/// A backend that keeps every request body it receives and answers, by path:
///
/// - `/big?n=N`: N lowercase letters (`abc...z` repeated) in frames of 100,000 bytes, then
///   with `then=ABORT` a last frame `ABORT`;
/// - `/say?text=T`: `T`;
/// - anything else: `got N bytes`, N the body's length.
struct BodyBackend {
    addr: SocketAddr,
    state: Arc<BodyState>,
    task: JoinHandle<()>,
}

impl Drop for BodyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BodyBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the body backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(BodyState::default());
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| body_answer(req, state.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The last request it received (whole, or to its body's failure).
    fn last(&self) -> BodySeen {
        self.state
            .requests
            .lock()
            .expect("body backend lock")
            .last()
            .cloned()
            .expect("the body backend received a request")
    }

    /// The requests it received after the first `n`.
    fn since(&self, n: usize) -> Vec<BodySeen> {
        let requests = self.state.requests.lock().expect("body backend lock");
        requests[n..].to_vec()
    }

    fn count(&self) -> usize {
        self.state.requests.lock().expect("body backend lock").len()
    }

    fn received(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }
}

/// N lowercase letters, `abc...z` repeated.
fn letters(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn body_answer(
    req: Request<Incoming>,
    state: Arc<BodyState>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut seen = BodySeen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: Vec::new(),
        frames: Vec::new(),
        trailers: HeaderMap::new(),
        complete: true,
    };
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    seen.frames.push(data.len());
                    seen.body.extend_from_slice(&data);
                    state.received.fetch_add(data.len(), Ordering::SeqCst);
                    state.changed.notify_waiters();
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        seen.trailers.extend(t);
                    }
                }
            },
            Err(_) => {
                seen.complete = false;
                break;
            }
        }
    }
    let got = seen.body.len();
    state.requests.lock().expect("body backend lock").push(seen);
    state.changed.notify_waiters();
    let query = parts.uri.query().unwrap_or("");
    let param = |key: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.to_owned())
        })
    };
    let body: BoxBody<Bytes, Infallible> = match parts.uri.path() {
        "/big" => {
            let n: usize = param("n").and_then(|n| n.parse().ok()).unwrap_or(0);
            let all = Bytes::from(letters(n));
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..n)
                .step_by(100_000)
                .map(|start| Ok(Frame::data(all.slice(start..(start + 100_000).min(n)))))
                .collect();
            if param("then").as_deref() == Some("ABORT") {
                frames.push(Ok(Frame::data(Bytes::from_static(b"ABORT"))));
            }
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
        "/say" => Full::new(Bytes::from(param("text").unwrap_or_default())).boxed(),
        _ => Full::new(Bytes::from(format!("got {got} bytes"))).boxed(),
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static("text/plain"));
    Ok(resp)
}

/// A request body sent frame by frame as the test feeds it, over HTTP/1.1 (chunked).
type Streamed = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// `POST http://host/path` over a fresh HTTP/1.1 connection to `gw`, its body the frames sent
/// on the returned channel (dropping it ends the body); the task yields the status and the
/// whole response body.
async fn streaming_post(
    gw: &Wasmgress,
    host: &str,
    path: &str,
) -> (
    mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    JoinHandle<Result<(StatusCode, Bytes), String>>,
) {
    let tcp = TcpStream::connect(gw.http)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", gw.http));
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Streamed>(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (tx, rx) = mpsc::channel(4);
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, host)
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .expect("request");
    let task = tokio::spawn(async move {
        let exchange = async {
            send.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("read the response body: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(EXCHANGE_LIMIT, exchange)
            .await
            .map_err(|_| format!("no response within {EXCHANGE_LIMIT:?}"))?
    });
    (tx, task)
}

/// How many hook calls the `body` plugin has had (`/metrics`).
async fn hook_calls(gw: &Wasmgress) -> usize {
    let m = Metrics::scrape(gw).await;
    let calls = m
        .plugin("wasmgress_plugin_hook_calls_total", "body")
        .unwrap_or(0);
    usize::try_from(calls).expect("a count that fits usize")
}

/// Short for failure messages: the length and the first and last bytes of `body`.
fn show(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= 80 {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(40).collect();
    let tail: String = text
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{} bytes: {head:?}...{tail:?}", body.len())
}

/// The body plugin on every hook (`all`), on the request body only, on the response body only;
/// all to the [`BodyBackend`], with a request body limit above 1 MiB.
async fn body_setup() -> (BodyBackend, Wasmgress, Manifests, PluginDir) {
    let plugins = PluginDir::with(&["body"]);
    let backend = BodyBackend::start().await;
    let mut objects = objects_at("bodies", backend.addr);
    let hooked = |name: &str, hooks: Option<&'static str>| {
        let mut annotations = vec![(PLUGINS, "body"), (BODY_SIZE, "8m")];
        if let Some(h) = hooks {
            annotations.push((BODY_HOOKS, h));
        }
        ingress(name, "bodies", &annotations)
    };
    objects.extend([
        hooked("all", None),
        hooked("req-only", Some("request-body")),
        hooked("resp-only", Some("response-body")),
        hooked("trailers-only", Some("request-trailers")),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &roomy(&plugins)).await;
    (backend, gw, m, plugins)
}

/// `POST hello`: the upstream receives `HELLO|req-end` (chunked: a hook may change the length,
/// so no `content-length`); the upstream's answer reaches the client uppercased and ending in
/// `|resp-end`. A GET (no body) and an empty POST reach the upstream with no body at all: no
/// hook call, so no `|req-end`. With `hooks: request-body` the response is the upstream's,
/// unchanged; with `hooks: response-body` the request body is.
#[tokio::test]
async fn body_hooks_rewrite_request_and_response_bodies() {
    let (backend, gw, _m, _plugins) = body_setup().await;
    let post = |host: &str, body: &'static str| {
        Req::get(host, "/upload")
            .method(Method::POST)
            .body(Bytes::from_static(body.as_bytes()))
    };

    let r = gw.send(&post("all.test", "hello")).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let up = backend.last();
    assert_eq!((up.method.as_str(), up.path.as_str()), ("POST", "/upload"));
    assert_eq!(
        show(&up.body),
        show(b"HELLO|req-end"),
        "what the upstream got"
    );
    assert!(up.complete);
    assert_eq!(
        up.headers.get("content-length"),
        None,
        "the length may change: {:?}",
        up.headers
    );
    assert_eq!(r.text(), "GOT 13 BYTES|resp-end", "{}", r.summary());

    // The same over HTTP/2 (h2c) from the client.
    let mut h2 = gw.h2c().await;
    let r = h2
        .send(&post("all.test", "hello"))
        .await
        .unwrap_or_else(|e| panic!("h2c POST: {e}"));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        show(&backend.last().body),
        show(b"HELLO|req-end"),
        "over h2c"
    );
    assert_eq!(
        r.text(),
        "GOT 13 BYTES|resp-end",
        "over h2c: {}",
        r.summary()
    );

    for (what, req) in [
        ("GET", Req::get("all.test", "/nobody")),
        ("empty POST", post("all.test", "")),
    ] {
        let before = backend.count();
        let r = gw.send(&req).await;
        assert_eq!(r.status, 200, "{what}: {}", r.summary());
        assert_eq!(backend.count(), before + 1);
        let up = backend.last();
        assert_eq!(
            show(&up.body),
            show(b""),
            "{what}: no body, no request body hook call"
        );
        assert_eq!(up.method, what.rsplit(' ').next().unwrap_or(what));
        assert_eq!(
            r.text(),
            "GOT 0 BYTES|resp-end",
            "{what}: the response still passes its hook"
        );
    }

    // HEAD: no body either way, and the answer completes.
    let r = gw
        .send(&Req::get("all.test", "/nobody").method(Method::HEAD))
        .await;
    assert_eq!(r.status, 200, "HEAD: {}", r.summary());
    assert!(r.body.is_empty(), "HEAD: {}", r.summary());

    let r = gw.send(&post("req-only.test", "hello")).await;
    assert_eq!(show(&backend.last().body), show(b"HELLO|req-end"));
    assert_eq!(
        r.text(),
        "got 13 bytes",
        "without response-body the response is unchanged: {}",
        r.summary()
    );
    assert_eq!(r.header("content-length"), Some("12"), "{:?}", r.headers);

    let r = gw.send(&post("resp-only.test", "hello")).await;
    let up = backend.last();
    assert_eq!(
        show(&up.body),
        show(b"hello"),
        "without request-body the request body is unchanged"
    );
    assert_eq!(
        up.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..]),
        "nor its length"
    );
    assert_eq!(r.text(), "GOT 5 BYTES|resp-end", "{}", r.summary());
}

/// A request body of 1 MiB + 1000 bytes sent by the client in pieces of 100,000 bytes reaches
/// the upstream uppercased in full, with `|req-end`, through at least one hook call per 64 KiB
/// (`wasmgress_plugin_hook_calls_total` on `/metrics`), and it streams: the upstream has
/// received the first piece before the client sends the second. A response of 1 MiB + 1000
/// letters reaches the client uppercased in full with `|resp-end`, through as many calls.
#[tokio::test]
async fn large_bodies_stream_through_the_hooks_in_pieces() {
    let (backend, gw, _m, _plugins) = body_setup().await;
    const SIZE: usize = (1 << 20) + 1000;
    const PIECE: usize = 100_000;
    let sent = letters(SIZE);

    let calls_before = hook_calls(&gw).await;
    let (tx, answer) = streaming_post(&gw, "all.test", "/upload").await;
    let mut pieces = sent.chunks(PIECE).map(Bytes::copy_from_slice);
    let first = pieces.next().expect("a first piece");
    tx.send(Ok(Frame::data(first)))
        .await
        .expect("send the first piece");
    // Streaming, not buffering: the upstream gets bytes before the client sent the rest.
    let before = backend.received();
    wait_for(
        &backend.state.changed,
        "the upstream to receive the first piece before the client sent the second",
        || backend.received() > before,
    )
    .await;
    for piece in pieces {
        tx.send(Ok(Frame::data(piece))).await.expect("send a piece");
    }
    drop(tx);
    let (status, body) = answer
        .await
        .expect("the request task")
        .unwrap_or_else(|e| panic!("POST 1 MiB: {e}"));
    assert_eq!(status, 200, "{}", show(&body));

    let up = backend.last();
    assert!(up.complete, "the upstream's body ended cleanly");
    let mut want = sent.to_ascii_uppercase();
    want.extend_from_slice(b"|req-end");
    assert_eq!(
        up.body.len(),
        want.len(),
        "nothing lost: {}",
        show(&up.body)
    );
    assert!(up.body == want, "uppercased in full: {}", show(&up.body));
    let calls = hook_calls(&gw).await - calls_before;
    assert!(
        calls >= SIZE.div_ceil(MAX_PIECE),
        "{calls} body hook calls for {SIZE} bytes: hooks see at most 64 KiB at a time, so at \
         least {} calls",
        SIZE.div_ceil(MAX_PIECE)
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("GOT {} BYTES|resp-end", want.len())
    );

    let calls_before = hook_calls(&gw).await;
    let r = gw.get("all.test", &format!("/big?n={SIZE}")).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let calls = hook_calls(&gw).await - calls_before;
    assert!(
        calls >= SIZE.div_ceil(MAX_PIECE),
        "{calls} response body hook calls for {SIZE} bytes: at most 64 KiB at a time"
    );
    let mut want = letters(SIZE).to_ascii_uppercase();
    want.extend_from_slice(b"|resp-end");
    assert_eq!(r.body.len(), want.len(), "nothing lost: {}", show(&r.body));
    assert!(r.body == want, "uppercased in full: {}", show(&r.body));
}

/// A client sending its body as many tiny pieces does not cost one plugin call per piece: what
/// has already arrived is joined before the hook sees it. 2000 one-byte pieces sent in one
/// write, to the route with only the `request-body` hook, first as 2000 DATA frames of one h2c
/// stream, then as 2000 chunks of a chunked HTTP/1.1 POST: each time the upstream receives the
/// 2000 bytes uppercased plus `|req-end`, exactly, and `wasmgress_plugin_hook_calls_total`
/// grows by far fewer than 2000 (under 100).
#[tokio::test]
async fn tiny_request_chunks_are_joined_before_the_hook() {
    let (backend, gw, _m, _plugins) = body_setup().await;
    const PIECES: usize = 2000;
    let sent = letters(PIECES);
    let mut want = sent.to_ascii_uppercase();
    want.extend_from_slice(b"|req-end");
    let check = |how: &str, calls: usize| {
        let up = backend.last();
        assert!(up.complete, "{how}: the upstream's body ended cleanly");
        assert!(
            up.body == want,
            "{how}: the upstream got every byte uppercased, then |req-end: {}",
            show(&up.body)
        );
        assert!(
            (1..100).contains(&calls),
            "{how}: {calls} request body hook calls for {PIECES} one-byte pieces sent at \
             once: pieces already there must be joined into few calls"
        );
    };

    // h2c, prior knowledge: POST /upload (HPACK: :method POST and :scheme http indexed,
    // :path and :authority literal), then one DATA frame per byte, the last ending the stream.
    let mut block = vec![0x83, 0x86, 0x04, 7];
    block.extend_from_slice(b"/upload");
    block.extend_from_slice(&[0x01, 13]);
    block.extend_from_slice(b"req-only.test");
    let mut frames = H2_PREFACE.to_vec();
    frames.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    frames.extend(h2_frame(H2_HEADERS, H2_END_HEADERS, 1, &block));
    for (i, byte) in sent.iter().enumerate() {
        let flags = if i + 1 == PIECES { H2_END_STREAM } else { 0 };
        frames.extend(h2_frame(H2_DATA, flags, 1, &[*byte]));
    }
    let calls_before = hook_calls(&gw).await;
    let count = backend.count();
    let mut raw = Raw::connect(gw.http).await;
    raw.send(&frames, "2000 one-byte DATA frames over h2c")
        .await;
    wait_for(
        &backend.state.changed,
        "the upstream to receive the h2c request's whole body",
        || backend.count() > count,
    )
    .await;
    check("h2c", hook_calls(&gw).await - calls_before);
    drop(raw);

    let mut request = b"POST /upload HTTP/1.1\r\nHost: req-only.test\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for byte in &sent {
        request.extend_from_slice(b"1\r\n");
        request.push(*byte);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let calls_before = hook_calls(&gw).await;
    let r = exchange(gw.http, &request).await;
    let calls = hook_calls(&gw).await - calls_before;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.text(),
        format!("got {} bytes", want.len()),
        "{}",
        r.summary()
    );
    check("HTTP/1.1 chunked", calls);
}

/// `proxy-http-version: "1.0"` cannot carry a body a request hook has rewritten (its length is
/// unknown, so it goes chunked, which HTTP/1.0 lacks: it would reach the upstream empty).
/// An Ingress with that annotation and the `body` plugin's `request-body` or
/// `request-trailers` hook (or every hook, the default) is rejected: `wasmgress validate`
/// names `proxy-http-version`, and a running instance answers 404 for its host. With only
/// `response-body` (and `response-trailers`) hooks the same annotation is accepted and serves:
/// the request body reaches the upstream as sent, the answer comes back through the hook.
#[tokio::test]
async fn http_1_0_upstreams_refuse_request_body_hooks() {
    const HTTP_VERSION: &str = "nginx.ingress.kubernetes.io/proxy-http-version";
    let plugins = PluginDir::with(&["body"]);
    let backend = BodyBackend::start().await;
    let mut objects = objects_at("bodies", backend.addr);
    let old = |name: &str, hooks: Option<&'static str>| {
        let mut annotations = vec![(PLUGINS, "body"), (HTTP_VERSION, "1.0")];
        if let Some(h) = hooks {
            annotations.push((BODY_HOOKS, h));
        }
        ingress(name, "bodies", &annotations)
    };
    objects.extend([
        old("req-body", Some("request-body")),
        old("req-trailers", Some("request-trailers")),
        old("every-hook", None),
        old("resp-body", Some("response-body")),
        old("resp-hooks", Some("response-body, response-trailers")),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in ["req-body", "req-trailers", "every-hook"] {
        let line = validate_error(&stdout, NS, name, HTTP_VERSION);
        assert!(
            line.contains("request-body") && line.contains("HTTP/1.1"),
            "{name}: says which hooks need HTTP/1.1: {line}"
        );
    }
    for name in ["resp-body", "resp-hooks"] {
        assert_no_error_about(&stdout, NS, name);
    }

    let gw = Wasmgress::start(&m, &roomy(&plugins)).await;
    gw.assert_routes(&[
        ("req-body.test", "/", "404"),
        ("req-trailers.test", "/", "404"),
        ("every-hook.test", "/", "404"),
    ])
    .await;
    assert!(
        gw.stderr_mentions("proxy-http-version").await,
        "the log names the annotation that rejected them"
    );
    for host in ["resp-body.test", "resp-hooks.test"] {
        let r = gw
            .send(&Req::get(host, "/upload").method(Method::POST).body("hello"))
            .await;
        assert_eq!(r.status, 200, "{host}: {}", r.summary());
        assert_eq!(r.text(), "GOT 5 BYTES|resp-end", "{host}: {}", r.summary());
        let up = backend.last();
        assert_eq!(
            show(&up.body),
            show(b"hello"),
            "{host}: the request body as sent"
        );
    }
}

/// A request body chunk containing `BLOCK` aborts the body. Sent after a first chunk the
/// upstream has received (`hello `, uppercased): the upstream sees the body cut off after
/// `HELLO `, never complete, and the client gets 502. Sent as the whole body: 502, and the
/// upstream never gets a complete body. A response chunk containing `ABORT` cuts the response
/// off: the client gets no whole answer; sent after 300,000 bytes, the client gets the head and
/// a body that fails. The route still serves after all of them.
#[tokio::test]
async fn aborted_bodies_are_cut_off() {
    let (backend, gw, _m, _plugins) = body_setup().await;

    let (tx, answer) = streaming_post(&gw, "all.test", "/upload").await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
        .await
        .expect("send the first piece");
    let before = backend.count();
    wait_for(
        &backend.state.changed,
        "the upstream to receive the first piece",
        || backend.received() >= "HELLO ".len(),
    )
    .await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"and BLOCK this"))))
        .await
        .expect("send the blocked piece");
    // The client's body has not ended: only the hook can end the upstream's.
    let (status, body) = answer
        .await
        .expect("the request task")
        .unwrap_or_else(|e| panic!("POST with BLOCK: {e}"));
    assert_eq!(
        status,
        502,
        "the upstream could not get the whole body: {}",
        show(&body)
    );
    drop(tx);
    wait_for(
        &backend.state.changed,
        "the upstream to see the body end",
        || backend.count() > before,
    )
    .await;
    let up = backend.last();
    assert!(
        !up.complete,
        "the upstream must see the body cut off, got {} (frames {:?})",
        show(&up.body),
        up.frames
    );
    assert_eq!(
        show(&up.body),
        show(b"HELLO "),
        "the upstream got the first piece and nothing of the blocked one"
    );

    let before = backend.count();
    let r = gw
        .send(
            &Req::get("all.test", "/upload")
                .method(Method::POST)
                .body("please BLOCK this"),
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.summary());
    for up in backend.since(before) {
        assert!(
            !up.complete && up.body.is_empty(),
            "the upstream may see the request head, never a body: {} (complete: {})",
            show(&up.body),
            up.complete
        );
    }

    let mut conn = gw.h1().await;
    let result = conn.send(&Req::get("all.test", "/say?text=ABORT")).await;
    // Cut off before its first byte: the client may not even get the head (a whole answer
    // is what must never happen).
    if let Ok(r) = result {
        panic!(
            "the response body should be cut off, got a whole answer: {}",
            r.summary()
        );
    }

    // Cut off after 300,000 letters went through: the head came, the body never ends.
    let mut conn = gw.h1().await;
    let result = conn
        .send(&Req::get("all.test", "/big?n=300000&then=ABORT"))
        .await;
    match result {
        Err(e) => assert!(
            e.contains("read response body"),
            "the head should arrive, then the body fail: {e}"
        ),
        Ok(r) => panic!(
            "the response body should be cut off, got a whole answer: {}",
            r.summary()
        ),
    }

    let r = gw.get("all.test", "/say?text=fine").await;
    assert_eq!(r.text(), "FINE|resp-end", "{}", r.summary());
}

// ---------------------------------------------------------------------------------------------
// 6. Trailer hooks

/// A chunked HTTP/1.1 POST `hello world` with trailer `x-checksum: abc123`, its `Trailer`
/// header declaring `declared`, to the route with `hooks: request-trailers` only; the upstream's
/// view of it and the answer.
async fn post_with_trailer(declared: &str) -> (BodySeen, Resp) {
    let (backend, gw, _m, _plugins) = body_setup().await;
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: trailers-only.test\r\nTransfer-Encoding: chunked\r\n\
         Trailer: {declared}\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\
         x-checksum: abc123\r\n\r\n"
    );
    let r = exchange(gw.http, request.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    (backend.last(), r)
}

/// The value of trailer `name` the upstream got.
fn trailer(up: &BodySeen, name: &str) -> Option<String> {
    up.trailers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// HTTP/1.1 request trailers pass `on-request-trailers`: the upstream gets the client's
/// trailer and the one the hook sets (`x-trailer-seen: request`) after the body, which that
/// route (`hooks: request-trailers`) leaves unchanged. Here the client's `Trailer` header
/// announces both.
#[tokio::test]
async fn request_trailers_pass_the_hook() {
    let (up, r) = post_with_trailer("x-checksum, x-trailer-seen").await;
    assert_eq!(show(&up.body), show(b"hello world"));
    assert!(up.complete);
    assert_eq!(
        trailer(&up, "x-checksum").as_deref(),
        Some("abc123"),
        "{:?}",
        up.trailers
    );
    assert_eq!(
        trailer(&up, "x-trailer-seen").as_deref(),
        Some("request"),
        "{:?}",
        up.trailers
    );
    assert_eq!(r.text(), "got 11 bytes");
}

/// gRPC over h2c through a route with the `body` plugin on `response-trailers` only (a body
/// hook would corrupt the protobuf): a unary call succeeds and its trailing metadata carries
/// `x-plugin-trailer: seen` next to the status; so does a server stream's, after all its
/// messages. The same Greeter through a route without the plugin: no such trailer.
#[tokio::test]
async fn grpc_response_trailers_pass_the_hook() {
    let plugins = PluginDir::with(&["body"]);
    let greeter = GreeterBackend::start().await;
    let mut objects = greeter.objects("greeter", None);
    for (name, plugin) in [("grpc-hooked", true), ("grpc-plain", false)] {
        let mut ing = Ingress::new(name).annotation(BACKEND_PROTOCOL, "GRPC");
        if plugin {
            ing = ing
                .annotation(PLUGINS, "body")
                .annotation(BODY_HOOKS, "response-trailers");
        }
        objects.push(
            ing.rule(
                Some(&format!("{name}.test")),
                &[prefix("/", "greeter").port(SEED_PORT)],
            )
            .build(),
        );
    }
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &roomy(&plugins)).await;

    let client = |host: &'static str| {
        let gw = &gw;
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.http))
                .expect("endpoint")
                .origin(format!("http://{host}").parse().expect("origin"))
                .connect()
                .await
                .unwrap_or_else(|e| {
                    panic!("gRPC channel to {host} through the plain listener: {e}")
                });
            GreeterClient::new(channel)
        }
    };
    let hello = |name: &str, count: u32| HelloRequest {
        name: name.into(),
        count,
        ..Default::default()
    };

    let mut hooked = client("grpc-hooked.test").await;
    let reply = within("SayHello", hooked.say_hello(hello("io", 0)))
        .await
        .unwrap_or_else(|s| panic!("SayHello through the hooked route: {s:?}"));
    assert_eq!(
        reply
            .metadata()
            .get("x-plugin-trailer")
            .and_then(|v| v.to_str().ok()),
        Some("seen"),
        "the trailer the hook set: {:?}",
        reply.metadata()
    );
    assert_eq!(reply.into_inner().message, "Hello io");

    let mut stream = within("SayHelloStream", hooked.say_hello_stream(hello("io", 3)))
        .await
        .unwrap_or_else(|s| panic!("SayHelloStream through the hooked route: {s:?}"))
        .into_inner();
    let mut messages = Vec::new();
    while let Some(m) = within("a streamed reply", stream.message())
        .await
        .unwrap_or_else(|s| panic!("a streamed reply: {s:?}"))
    {
        messages.push(m.message);
    }
    assert_eq!(messages, ["Hello io #1", "Hello io #2", "Hello io #3"]);
    let trailers = within("the stream's trailers", stream.trailers())
        .await
        .unwrap_or_else(|s| panic!("the stream's trailers: {s:?}"))
        .expect("the stream ends with trailers");
    assert_eq!(
        trailers
            .get("x-plugin-trailer")
            .and_then(|v| v.to_str().ok()),
        Some("seen"),
        "{trailers:?}"
    );

    let mut plain = client("grpc-plain.test").await;
    let reply = within("SayHello", plain.say_hello(hello("io", 0)))
        .await
        .unwrap_or_else(|s| panic!("SayHello through the plain route: {s:?}"));
    assert_eq!(reply.metadata().get("x-plugin-trailer"), None);
}

/// `--plugin-dir` with a roomy hook deadline: body tests make dozens of calls per request, and
/// a shared test machine can pause one past the default 5 ms (the deadline is not what they
/// test; `plugin_platform.rs` tests it).
fn roomy(plugins: &PluginDir) -> Vec<&str> {
    let mut args = plugins.args().to_vec();
    args.extend_from_slice(&["--plugin-hook-deadline-ms", "250"]);
    args
}

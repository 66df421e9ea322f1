//! Request mirroring (ingress-nginx `mirror-target`, `mirror-request-body`, `mirror-host`)
//! through the real binary, in folder mode (where loopback targets are allowed). The backends
//! and mirrors are servers of this file that remember every request they got, body included.
//!
//! Covered: the mirror gets a copy of each request (HTTP/1.1 and h2c) with its method, path and
//! query (`$request_uri`) and headers, `Host` being the target's authority by default and
//! `mirror-host` when set, while the client gets the real backend's answer, never the
//! mirror's; a 100 KB POST body reaches both the backend and the mirror whole, and with
//! `mirror-request-body: "off"` the mirror gets the request without a body (and without a
//! Content-Length announcing one) while the backend still gets it whole; a dead mirror (nothing
//! listening) changes nothing for the client and its copies are counted `failed` on `/metrics`
//! (`wasmgress_mirror_requests_total`); a mirror that holds every copy without answering does
//! not keep any request from completing, and its copies count as `sent` once it answers; a
//! mirror that stops reading while a 32 MiB POST streams leaves the request whole, gets a copy
//! cut off short of its Content-Length, and the copy is counted `dropped`; every copy is
//! counted once, under one outcome; and `wasmgress validate` refuses a target whose host is a
//! variable, `mirror-request-body: "maybe"` and a link-local target, naming the annotation,
//! while accepting loopback targets.
//!
//! The first test and `validate` write targets as the ingress-nginx docs do, `$request_uri`
//! right after the host (`http://127.0.0.1:PORT$request_uri`); the others put the copies under
//! `/copy` (`http://127.0.0.1:PORT/copy$request_uri`), their subject being the copies' bodies,
//! answers and counts rather than the target's shape.
//!
//! Copies travel in their own tasks, so the tests wait (bounded) for them to arrive; nothing
//! asserts how long anything took.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::backend::closed_port;
use crate::harness::manifests::NS;
use crate::harness::plugins::Metrics;
use crate::harness::process::{assert_no_error_about, validate, validate_error};
use crate::harness::recorder::objects_at;
use crate::harness::slow::pattern;
use crate::harness::{Ingress, Manifests, Req, Resp, Wasmgress, prefix};

const TARGET: &str = "nginx.ingress.kubernetes.io/mirror-target";
const REQUEST_BODY: &str = "nginx.ingress.kubernetes.io/mirror-request-body";
const MIRROR_HOST: &str = "nginx.ingress.kubernetes.io/mirror-host";
const BODY_SIZE: &str = "nginx.ingress.kubernetes.io/proxy-body-size";

/// Upper bound for waiting on something that happens in the background (a copy arriving, a
/// counter moving); only bounds the wait, never asserted as a duration.
const LIMIT: Duration = Duration::from_secs(20);

/// The host of Ingress `name`'s one rule.
fn host(name: &str) -> String {
    format!("{name}.mirror.test")
}

/// A mirror target at `addr` keeping the request's URI, as the ingress-nginx docs write it
/// (`https://test.env.com$request_uri`).
fn target(addr: SocketAddr) -> String {
    format!("http://{addr}$request_uri")
}

/// A mirror target at `addr` keeping the request's URI under `/copy`: the copy of `/x?y` goes
/// to `/copy/x?y`. For the tests whose subject is not the target's shape (see [`target`]).
fn target_under_copy(addr: SocketAddr) -> String {
    format!("http://{addr}/copy$request_uri")
}

/// Ingress `name` with `annotations`: [`host`]`(name)` `/` (Prefix) to Service `service`.
fn ingress(name: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(&host(name)), &[prefix("/", service)])
        .build()
}

/// Writes `docs` into a folder and starts the binary on it.
async fn start(docs: &[Value]) -> (Manifests, Wasmgress) {
    let m = Manifests::new();
    m.write("all.yaml", docs);
    let gw = Wasmgress::start(&m, &[]).await;
    (m, gw)
}

/// Waits (within [`LIMIT`]) until `ok` holds, re-evaluating `value` each time; the last value
/// otherwise, in a panic naming `what`.
async fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut value: impl AsyncFnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let v = value().await;
        if ok(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {LIMIT:?} for {what}; last: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Servers that remember what they got

/// A request as a [`Server`] got it, body included.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    headers: HeaderMap,
    body: Bytes,
    /// The body ended cleanly (not cut off).
    complete: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// One line for failure messages.
    fn summary(&self) -> String {
        format!(
            "{} {} host={:?} content-length={:?} transfer-encoding={:?} body={} bytes complete={}",
            self.method,
            self.target,
            self.header("host"),
            self.header("content-length"),
            self.header("transfer-encoding"),
            self.body.len(),
            self.complete
        )
    }
}

/// What a [`Server`] does once it has read a request whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Answers at once.
    Answer,
    /// Holds the answer until [`Server::release`].
    Hold,
}

struct State {
    name: String,
    mode: Mode,
    status: StatusCode,
    /// Requests answered (the handler returned its response).
    answered: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    released: watch::Sender<bool>,
}

/// An HTTP/1.1 and h2c server that reads each request whole, remembers it and answers
/// `status` with the echo backend's `{"backend": NAME}` (so [`Resp::backend`] names it) and an
/// `x-answered-by` header; a backend or a mirror. Stopped when dropped.
struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// A backend called `name`, answering 200 at once.
    async fn backend(name: &str) -> Self {
        Self::start(name, Mode::Answer, StatusCode::OK).await
    }

    /// A mirror called `name`, answering 202 (a status no backend here answers) as `mode` says.
    async fn mirror(name: &str, mode: Mode) -> Self {
        Self::start(name, mode, StatusCode::ACCEPTED).await
    }

    async fn start(name: &str, mode: Mode, status: StatusCode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a recording server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            name: name.to_owned(),
            mode,
            status,
            answered: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            released: watch::Sender::new(false),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, state.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// Its Service (named after it) and EndpointSlice.
    fn objects(&self) -> Vec<Value> {
        objects_at(&self.state.name, self.addr)
    }

    fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Every request read whole (or to its body's failure) so far.
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    /// Waits (within [`LIMIT`]) until it has read `n` requests, and returns them.
    async fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let what = format!("{} to have read {n} requests", self.state.name);
        let seen = eventually(&what, async || self.seen(), |s| s.len() >= n).await;
        assert_eq!(
            seen.len(),
            n,
            "{what}, got more: {:#?}",
            seen.iter().map(Seen::summary).collect::<Vec<_>>()
        );
        seen
    }

    /// The one request it read with this path and query.
    fn seen_at(&self, target: &str) -> Seen {
        let seen = self.seen();
        let mut matching = seen.iter().filter(|s| s.target == target);
        let one = matching.next().unwrap_or_else(|| {
            panic!(
                "{} got no request for {target}; it got: {:#?}",
                self.state.name,
                seen.iter().map(Seen::summary).collect::<Vec<_>>()
            )
        });
        assert!(
            matching.next().is_none(),
            "{} got {target} more than once",
            self.state.name
        );
        one.clone()
    }

    /// Answers every held request, and every later one at once.
    fn release(&self) {
        self.state.released.send_replace(true);
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let body_bytes = data.len();
    state.seen.lock().expect("seen lock").push(Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body: Bytes::from(data),
        complete,
    });
    if state.mode == Mode::Hold {
        let mut released = state.released.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(60), released.wait_for(|r| *r)).await;
    }
    state.answered.fetch_add(1, Ordering::SeqCst);
    let doc = json!({ "backend": state.name, "body_bytes": body_bytes });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    *resp.status_mut() = state.status;
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-answered-by",
        http::HeaderValue::from_str(&state.name).expect("a header-safe name"),
    );
    Ok(resp)
}

/// A copy as a [`Stalling`] mirror got it.
#[derive(Clone, Debug)]
struct Stalled {
    /// The request line and headers.
    head: String,
    /// Its Content-Length.
    declared: Option<usize>,
    /// Body bytes that arrived before the connection ended.
    body_bytes: usize,
}

/// A mirror that reads a request's head and then nothing more, with a small receive buffer, so
/// a copy's body backs up at once; after [`Stalling::release`] it reads everything until the
/// connection ends and remembers what came. Stopped when dropped.
struct Stalling {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    done: Arc<Mutex<Vec<Stalled>>>,
    released: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stalling {
    async fn start() -> Self {
        let socket = TcpSocket::new_v4().expect("create a socket");
        // Accepted connections inherit it: the kernel buffers next to nothing for us.
        socket
            .set_recv_buffer_size(4096)
            .expect("set a small receive buffer");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind 127.0.0.1:0");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("local address");
        let arrived = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Mutex::new(Vec::new()));
        let released = watch::Sender::new(false);
        let (a, d, r) = (arrived.clone(), done.clone(), released.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (arrived, done, mut released) = (a.clone(), d.clone(), r.subscribe());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let declared = head.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    });
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    let mut body_bytes = buf.len() - end;
                    let mut chunk = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = tcp.read(&mut chunk).await {
                        body_bytes += n;
                    }
                    done.lock().expect("done lock").push(Stalled {
                        head,
                        declared,
                        body_bytes,
                    });
                });
            }
        });
        Self {
            addr,
            arrived,
            done,
            released,
            task,
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// From now on, reads every connection to its end.
    fn release(&self) {
        self.released.send_replace(true);
    }

    /// The copies whose connection ended after [`Stalling::release`].
    fn done(&self) -> Vec<Stalled> {
        self.done.lock().expect("done lock").clone()
    }
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// `wasmgress_mirror_requests_total` by outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outcomes {
    sent: u64,
    failed: u64,
    dropped: u64,
}

impl Outcomes {
    async fn scrape(gw: &Wasmgress) -> Self {
        let m = Metrics::scrape(gw).await;
        let get = |outcome: &str| {
            let want = format!("wasmgress_mirror_requests_total{{outcome=\"{outcome}\"}}");
            m.text
                .lines()
                .find_map(|line| {
                    let (sample, value) = line.rsplit_once(' ')?;
                    (sample == want).then(|| value.parse::<f64>().ok())?
                })
                .map(|v| v as u64)
                .unwrap_or_else(|| panic!("/metrics has no `{want}` sample:\n{}", m.text))
        };
        Self {
            sent: get("sent"),
            failed: get("failed"),
            dropped: get("dropped"),
        }
    }

    /// Scrapes until `ok` holds (within [`LIMIT`]).
    async fn until(gw: &Wasmgress, what: &str, ok: impl Fn(&Self) -> bool) -> Self {
        eventually(what, async || Self::scrape(gw).await, ok).await
    }
}

/// Panics unless `r` is `backend`'s 200, not the mirror's answer.
fn assert_from_backend(r: &Resp, backend: &str, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.summary());
    assert_eq!(
        r.backend().as_deref(),
        Some(backend),
        "{what}: the client must get the backend's answer: {}",
        r.summary()
    );
    assert_eq!(
        r.header("x-answered-by"),
        Some(backend),
        "{what}: the client must get the backend's answer, headers included: {:?}",
        r.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Each request's copy reaches the mirror with its method, path and query (`$request_uri`) and
/// headers; `Host` is the target's authority, or `mirror-host` when set. The client gets the
/// backend's answer (200 from `app`), never the mirror's (202 from `mirror`).
#[tokio::test]
async fn the_mirror_gets_a_copy_of_each_request_and_the_client_the_backends_answer() {
    let app = Server::backend("app").await;
    let mirror = Server::mirror("mirror", Mode::Answer).await;
    let mut docs = app.objects();
    let to = target(mirror.addr);
    docs.push(ingress("plain", "app", &[(TARGET, &to)]));
    docs.push(ingress(
        "named",
        "app",
        &[(TARGET, &to), (MIRROR_HOST, "shadow.example.com")],
    ));
    let (_m, gw) = start(&docs).await;

    let plain = host("plain");
    let named = host("named");
    let requests = [
        (
            Req::get(&plain, "/a/b?x=1&y=two").header("x-custom", "first"),
            "127.0.0.1",
        ),
        (
            Req::get(&plain, "/items/7?force=true")
                .method(Method::DELETE)
                .header("x-custom", "second"),
            "127.0.0.1",
        ),
        (
            Req::get(&named, "/c/d?z=3").header("x-custom", "third"),
            "shadow.example.com",
        ),
    ];
    for (req, _) in &requests {
        let r = gw.send(req).await;
        assert_from_backend(&r, "app", &format!("{} {}", req.method, req.path_and_query));
    }
    // Over HTTP/2 (h2c) too; its copy goes out as an HTTP/1.1 request with a Host header.
    let h2 = Req::get(&plain, "/over/h2?v=2").header("x-custom", "fourth");
    let r = gw
        .h2c()
        .await
        .send(&h2)
        .await
        .unwrap_or_else(|e| panic!("h2c request: {e}"));
    assert_from_backend(&r, "app", "GET /over/h2 over h2c");

    mirror.wait_seen(4).await;
    assert_eq!(app.seen().len(), 4, "the backend got each request once");
    let all = requests
        .iter()
        .map(|(req, host)| (req, *host))
        .chain([(&h2, "127.0.0.1")]);
    for (req, want_host) in all {
        let copy = mirror.seen_at(&req.path_and_query);
        let what = format!("the copy of {} {}", req.method, req.path_and_query);
        assert_eq!(
            copy.method,
            req.method.as_str(),
            "{what}: {}",
            copy.summary()
        );
        let custom = &req.headers[0].1;
        assert_eq!(
            copy.header("x-custom"),
            Some(custom.as_str()),
            "{what} carries the request's headers: {:?}",
            copy.headers
        );
        let want_host = if want_host == "127.0.0.1" {
            mirror.addr.to_string()
        } else {
            want_host.to_owned()
        };
        assert_eq!(
            copy.header("host"),
            Some(want_host.as_str()),
            "{what}: Host is the target's authority, or mirror-host when set"
        );
        assert_eq!(copy.headers.get_all("host").iter().count(), 1, "{what}");
        assert!(
            copy.body.is_empty(),
            "{what} has no body: {}",
            copy.summary()
        );
    }
}

/// A 100 KB POST body reaches the backend and the mirror whole (same bytes, Content-Length
/// included); with `mirror-request-body: "off"` the mirror gets the POST without a body and
/// without a Content-Length announcing one, while the backend still gets the body whole.
#[tokio::test]
async fn post_bodies_reach_the_mirror_whole_or_not_at_all_with_mirror_request_body_off() {
    let app = Server::backend("app").await;
    let mirror = Server::mirror("mirror", Mode::Answer).await;
    let mut docs = app.objects();
    let to = target_under_copy(mirror.addr);
    docs.push(ingress("body-on", "app", &[(TARGET, &to)]));
    docs.push(ingress(
        "body-off",
        "app",
        &[(TARGET, &to), (REQUEST_BODY, "off")],
    ));
    let (_m, gw) = start(&docs).await;
    let body = Bytes::from(pattern(100 * 1024));

    let on = Req::get(&host("body-on"), "/upload/on?n=1")
        .method(Method::POST)
        .header("content-type", "application/octet-stream")
        .body(body.clone());
    let r = gw.send(&on).await;
    assert_from_backend(&r, "app", "POST /upload/on");
    let off = Req::get(&host("body-off"), "/upload/off?n=2")
        .method(Method::POST)
        .header("content-type", "application/octet-stream")
        .body(body.clone());
    let r = gw.send(&off).await;
    assert_from_backend(&r, "app", "POST /upload/off");

    mirror.wait_seen(2).await;
    for path in ["/upload/on?n=1", "/upload/off?n=2"] {
        let got = app.seen_at(path);
        assert!(
            got.complete && got.body == body,
            "the backend gets {path}'s body whole: {}",
            got.summary()
        );
    }

    let copy = mirror.seen_at("/copy/upload/on?n=1");
    assert_eq!(copy.method, "POST");
    assert!(
        copy.complete && copy.body == body,
        "the mirror gets the body whole by default: {}",
        copy.summary()
    );
    assert_eq!(
        copy.header("content-length"),
        Some("102400"),
        "{}",
        copy.summary()
    );
    assert_eq!(
        copy.header("content-type"),
        Some("application/octet-stream")
    );

    let copy = mirror.seen_at("/copy/upload/off?n=2");
    assert_eq!(copy.method, "POST", "{}", copy.summary());
    assert!(
        copy.body.is_empty(),
        "mirror-request-body off: the copy has no body: {}",
        copy.summary()
    );
    assert!(
        matches!(copy.header("content-length"), None | Some("0"))
            && copy.header("transfer-encoding").is_none(),
        "mirror-request-body off: the copy announces no body: {}",
        copy.summary()
    );
}

/// Copies to a mirror where nothing listens fail without the client noticing: every GET and
/// POST is answered 200 by the backend, which gets each body whole; `/metrics` counts each
/// copy once, as failed.
#[tokio::test]
async fn a_dead_mirror_changes_nothing_for_the_client_and_counts_failed_copies() {
    let app = Server::backend("app").await;
    let dead = closed_port().await;
    let mut docs = app.objects();
    let to = format!("http://127.0.0.1:{dead}/copy$request_uri");
    docs.push(ingress("dead", "app", &[(TARGET, &to)]));
    let (_m, gw) = start(&docs).await;
    let before = Outcomes::scrape(&gw).await;
    assert_eq!(
        before,
        Outcomes {
            sent: 0,
            failed: 0,
            dropped: 0
        }
    );

    let body = Bytes::from(pattern(200 * 1024));
    const N: usize = 6;
    for i in 0..N {
        let path = format!("/dead/{i}");
        let req = if i % 2 == 0 {
            Req::get(&host("dead"), &path)
        } else {
            Req::get(&host("dead"), &path)
                .method(Method::POST)
                .body(body.clone())
        };
        let r = gw.send(&req).await;
        assert_from_backend(&r, "app", &format!("{} {path}", req.method));
        let got = app.seen_at(&path);
        let want: &[u8] = if i % 2 == 0 { b"" } else { &body };
        assert!(
            got.complete && got.body == want,
            "the backend gets {path} whole: {}",
            got.summary()
        );
    }

    let n = N as u64;
    let after = Outcomes::until(&gw, "every copy to be counted failed", |o| o.failed >= n).await;
    assert_eq!(
        after,
        Outcomes {
            sent: 0,
            failed: n,
            dropped: 0
        },
        "each of the {N} copies to a dead mirror is counted once, as failed"
    );
}

/// A mirror that accepts every copy and holds it without answering keeps no request waiting:
/// all requests (GETs and POSTs with bodies) complete with the backend's answer while the
/// mirror holds every copy and has answered none. Once it answers, the copies count as sent.
#[tokio::test]
async fn a_mirror_that_never_answers_does_not_hold_requests_up() {
    let app = Server::backend("app").await;
    let mirror = Server::mirror("mirror", Mode::Hold).await;
    let mut docs = app.objects();
    docs.push(ingress(
        "hang",
        "app",
        &[(TARGET, &target_under_copy(mirror.addr))],
    ));
    let (_m, gw) = start(&docs).await;

    let body = Bytes::from(pattern(50 * 1024));
    const N: usize = 8;
    for i in 0..N {
        let path = format!("/hang/{i}");
        let req = if i % 2 == 0 {
            Req::get(&host("hang"), &path)
        } else {
            Req::get(&host("hang"), &path)
                .method(Method::POST)
                .body(body.clone())
        };
        let r = gw.send(&req).await;
        assert_from_backend(&r, "app", &format!("{} {path}", req.method));
    }
    assert_eq!(
        mirror.answered(),
        0,
        "the mirror answered nothing while the requests completed"
    );
    // Every copy did reach the mirror, and is still waiting for its answer.
    let copies = mirror.wait_seen(N).await;
    assert_eq!(mirror.answered(), 0);
    for c in copies.iter().filter(|c| c.method == "POST") {
        assert!(
            c.complete && c.body == body,
            "the held copy got its body whole: {}",
            c.summary()
        );
    }
    assert_eq!(app.seen().len(), N);
    assert_eq!(
        Outcomes::scrape(&gw).await,
        Outcomes {
            sent: 0,
            failed: 0,
            dropped: 0
        },
        "a copy still waiting for its answer is not counted yet"
    );

    mirror.release();
    let n = N as u64;
    let after = Outcomes::until(&gw, "the answered copies to be counted", |o| o.sent >= n).await;
    assert_eq!(
        after,
        Outcomes {
            sent: n,
            failed: 0,
            dropped: 0
        }
    );
    assert_eq!(mirror.answered(), N);
}

/// While a 32 MiB POST streams, a mirror that reads the copy's head and then nothing more does
/// not slow the request down to its pace: the backend gets the body whole and the client its
/// answer; the copy is cut off (the mirror, once it reads again, gets less than the copy's
/// Content-Length before the connection ends) and `/metrics` counts it dropped.
#[tokio::test]
async fn a_mirror_too_slow_for_a_large_body_gets_its_copy_cut_off_and_counted_dropped() {
    let app = Server::backend("app").await;
    let mirror = Stalling::start().await;
    let mut docs = app.objects();
    docs.push(ingress(
        "stall",
        "app",
        &[(TARGET, &target_under_copy(mirror.addr)), (BODY_SIZE, "0")],
    ));
    let (_m, gw) = start(&docs).await;

    let size = 32 << 20;
    let body = Bytes::from(pattern(size));
    let req = Req::get(&host("stall"), "/big")
        .method(Method::POST)
        .header("content-type", "application/octet-stream")
        .body(body.clone());
    let r = gw.send(&req).await;
    assert_from_backend(&r, "app", "POST /big (32 MiB)");
    let got = app.seen_at("/big");
    assert!(
        got.complete && got.body.len() == size && got.body == body,
        "the backend gets the 32 MiB body whole: {}",
        got.summary()
    );
    assert_eq!(mirror.arrived(), 1, "the copy's head reached the mirror");
    assert!(
        mirror.done().is_empty(),
        "the mirror has read nothing past the head yet"
    );

    let o = Outcomes::until(&gw, "the cut-off copy to be counted", |o| o.dropped >= 1).await;
    assert_eq!(o.dropped, 1, "{o:?}");
    assert_eq!(o.sent, 0, "{o:?}");

    // The mirror reads again: its copy ends short of what it announced.
    mirror.release();
    let done = eventually(
        "the mirror's copy connection to end",
        async || mirror.done(),
        |d| !d.is_empty(),
    )
    .await;
    let copy = &done[0];
    assert!(
        copy.head.starts_with("POST /copy/big HTTP/1.1\r\n"),
        "{}",
        copy.head
    );
    assert_eq!(
        copy.declared,
        Some(size),
        "the copy announced the whole body: {}",
        copy.head
    );
    assert!(
        copy.body_bytes < size,
        "the copy is cut off, never passed for whole: it carried {} of {size} bytes",
        copy.body_bytes
    );
    // Counted once: dropped, not also failed.
    let o = Outcomes::scrape(&gw).await;
    assert_eq!(
        o,
        Outcomes {
            sent: 0,
            failed: 0,
            dropped: 1
        },
        "the one cut-off copy is counted once, as dropped"
    );
}

/// `wasmgress validate` refuses a target whose host is a variable (`http://$host/`), a
/// `mirror-request-body` other than on/off, and a link-local target (the cloud metadata
/// address), each naming its annotation; a loopback target is fine in folder mode.
#[tokio::test]
async fn validate_refuses_bad_mirror_settings_naming_the_annotation() {
    let app = Server::backend("app").await;
    let mut docs = app.objects();
    docs.push(ingress(
        "variable-host",
        "app",
        &[(TARGET, "http://$host/")],
    ));
    docs.push(ingress(
        "maybe-body",
        "app",
        &[
            (TARGET, "http://127.0.0.1:8080$request_uri"),
            (REQUEST_BODY, "maybe"),
        ],
    ));
    docs.push(ingress(
        "metadata",
        "app",
        &[(TARGET, "http://169.254.169.254/")],
    ));
    docs.push(ingress(
        "fine",
        "app",
        &[
            (TARGET, "http://127.0.0.1:8080$request_uri"),
            (REQUEST_BODY, "off"),
            (MIRROR_HOST, "shadow.example.com"),
        ],
    ));
    docs.push(ingress(
        "fine-under-path",
        "app",
        &[(TARGET, "http://127.0.0.1:8080/copy$request_uri")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &docs);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "variable-host", TARGET);
    assert!(
        line.contains("$host") && line.contains("literal"),
        "says the host must be written out: {line}"
    );
    let line = validate_error(&stdout, NS, "maybe-body", REQUEST_BODY);
    assert!(line.contains("maybe"), "quotes the value: {line}");
    let line = validate_error(&stdout, NS, "metadata", TARGET);
    assert!(
        line.contains("169.254.169.254"),
        "names the address that may not be reached: {line}"
    );
    assert_no_error_about(&stdout, NS, "fine-under-path");
    // The ingress-nginx docs' form, `$request_uri` right after the host.
    assert_no_error_about(&stdout, NS, "fine");
}

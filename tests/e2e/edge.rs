//! The request edge, through the real binary: what a request means before it is routed (its
//! normalised path, its one host), the headers the proxy owns, whom it believes about the
//! client, what its errors give away, how long and how many connections it keeps, HTTP/2
//! floods, nginx's body and timeout semantics, and a graceful shutdown. Raw sockets stand in
//! for clients wherever a normal client would tidy the request up before sending it.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::net::TcpStream;

use crate::harness::backend::{closed_port, several};
use crate::harness::certs::{self, TestCa};
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, service};
use crate::harness::process::describe;
use crate::harness::raw::{
    self, H2_CONTINUATION, H2_END_HEADERS, H2_END_STREAM, H2_GOAWAY, H2_HEADERS, H2_PREFACE,
    H2_SETTINGS, Raw, exchange, h2_frame, proxy_v2_header,
};
use crate::harness::recorder::{Recorder, Silent};
use crate::harness::{Backend, Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

/// Upper bound for the proxy to close a connection it should close after a 1 s timeout.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// `GET target` over HTTP/1.1 with one `Host`, exactly as written.
fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// Whether `id` looks like a request id the proxy makes: 32 lowercase hex digits.
fn is_request_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The id after `request id: ` in a proxy error body, or a panic naming `what`.
fn request_id_in(r: &Resp, what: &str) -> String {
    let text = r.text();
    let id = text
        .split_once("request id: ")
        .map(|(_, rest)| rest.lines().next().unwrap_or("").trim().to_owned())
        .unwrap_or_else(|| panic!("{what}: the body names no request id: {}", r.summary()));
    assert!(
        is_request_id(&id),
        "{what}: request id {id:?} is not 32 hex digits: {}",
        r.summary()
    );
    id
}

// ---------------------------------------------------------------------------------------------
// Paths and hosts

/// app.test: `/` to "open" and `/admin` to "admin", in two Ingresses as a team guarding its
/// admin path would write them; evil.test to "evil"; a rule without host to "hostless". All
/// four backends count what reaches them.
struct Guarded {
    gw: Wasmgress,
    open: Recorder,
    admin: Recorder,
    evil: Recorder,
    hostless: Recorder,
    _m: Manifests,
}

impl Guarded {
    async fn start(extra: &[&str]) -> Self {
        let open = Recorder::start("open").await;
        let admin = Recorder::start("admin").await;
        let evil = Recorder::start("evil").await;
        let hostless = Recorder::start("hostless").await;
        let mut objects = Vec::new();
        for r in [&open, &admin, &evil, &hostless] {
            objects.extend(r.objects());
        }
        objects.push(
            Ingress::new("site")
                .rule(Some("app.test"), &[prefix("/", "open")])
                .rule(None, &[prefix("/", "hostless")])
                .build(),
        );
        objects.push(
            Ingress::new("admin")
                .rule(Some("app.test"), &[prefix("/admin", "admin")])
                .build(),
        );
        objects.push(
            Ingress::new("evil")
                .rule(Some("evil.test"), &[prefix("/", "evil")])
                .build(),
        );
        let m = Manifests::new();
        m.write("all.yaml", &objects);
        let gw = Wasmgress::start(&m, extra).await;
        Self {
            gw,
            open,
            admin,
            evil,
            hostless,
            _m: m,
        }
    }

    /// Requests that reached any backend so far.
    fn arrived(&self) -> usize {
        [&self.open, &self.admin, &self.evil, &self.hostless]
            .iter()
            .map(|r| r.arrived())
            .sum()
    }
}

/// `/static/../admin`, `//admin`, `/%61dmin` and friends are `/admin` to routing, as they are to
/// nginx: each reaches the admin backend and none walks past its rule to the catch-all. The
/// backend still gets the client's bytes, unnormalised, as the target and in X-Original-URI.
#[tokio::test]
async fn dotted_doubled_and_escaped_paths_are_routed_by_their_normalised_path() {
    let g = Guarded::start(&[]).await;
    let mut wrong = Vec::new();
    for target in [
        "/admin",
        "/static/../admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/x/%2e%2e/admin",
        "/admin/./x",
        "/%2fadmin",
        "/static/..//admin/",
    ] {
        let r = exchange(g.gw.http, &get(target, "app.test")).await;
        if r.backend().as_deref() != Some("admin") {
            wrong.push(format!("{target}: expected admin, got {}", describe(&r)));
            continue;
        }
        let echo = r.expect_echo();
        if echo["path"] != target {
            wrong.push(format!(
                "{target}: the backend got target {} instead of the original bytes",
                echo["path"]
            ));
        }
        if r.seen("x-original-uri") != [target] {
            wrong.push(format!(
                "{target}: X-Original-URI {:?}",
                r.seen("x-original-uri")
            ));
        }
    }
    // Element boundaries still hold after normalising: these are not under /admin.
    for (target, want) in [("/administrator", "open"), ("/admin/../open", "open")] {
        let r = exchange(g.gw.http, &get(target, "app.test")).await;
        if r.backend().as_deref() != Some(want) {
            wrong.push(format!("{target}: expected {want}, got {}", describe(&r)));
        }
    }
    assert!(wrong.is_empty(), "\n  {}", wrong.join("\n  "));
}

/// A `..` that climbs above the root (plain or escaped), a `%` without two hex digits, and an
/// escaped NUL are refused with 400 by the proxy itself: no backend sees them.
#[tokio::test]
async fn paths_above_the_root_bad_escapes_and_nul_are_400_before_any_backend() {
    let g = Guarded::start(&[]).await;
    let mut wrong = Vec::new();
    for target in [
        "/../../etc/passwd",
        "/%2e%2e/x",
        "/admin/../../x",
        "/%zz",
        "/admin%2",
        "/%00",
        "/admin%00.html",
    ] {
        let r = exchange(g.gw.http, &get(target, "app.test")).await;
        if r.status != 400 || !r.text().starts_with("bad request") {
            wrong.push(format!(
                "{target}: expected the proxy's 400, got {}",
                r.summary()
            ));
        }
    }
    assert!(wrong.is_empty(), "\n  {}", wrong.join("\n  "));
    assert_eq!(g.arrived(), 0, "a refused request reached a backend");
}

/// HTTP/1.1's host comes from exactly one place: an absolute-form target's authority wins over
/// `Host` (and is what the backend gets as `Host`); a second `Host`, a `Host` with userinfo, or
/// none at all is a 400; an uppercase `Host` is the same host. HTTP/1.0 may leave `Host` out
/// and is routed to the rule without host.
#[tokio::test]
async fn the_http1_host_comes_from_exactly_one_well_formed_place() {
    let g = Guarded::start(&[]).await;
    let http = g.gw.http;

    let r = exchange(
        http,
        b"GET http://app.test/admin HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    )
    .await;
    assert_eq!(
        r.backend().as_deref(),
        Some("admin"),
        "absolute-form: routed by its authority, not Host: {}",
        r.summary()
    );
    assert_eq!(r.seen("host"), ["app.test"], "Host at the backend");
    assert_eq!(r.seen("x-forwarded-host"), ["app.test"]);
    assert_eq!(r.expect_echo()["path"], "/admin", "sent origin-form");

    let r = exchange(http, &get("/admin", "APP.TEST")).await;
    assert_eq!(
        r.backend().as_deref(),
        Some("admin"),
        "Host: APP.TEST is app.test: {}",
        r.summary()
    );

    let before = g.arrived();
    for (what, request) in [
        (
            "two Host headers",
            &b"GET /admin HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n"[..],
        ),
        (
            "two Host headers, same value",
            b"GET /admin HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n",
        ),
        (
            "userinfo in Host",
            b"GET /admin HTTP/1.1\r\nHost: app.test:1@other.test\r\n\r\n",
        ),
        ("HTTP/1.1 without Host", b"GET /admin HTTP/1.1\r\n\r\n"),
    ] {
        let r = exchange(http, request).await;
        assert_eq!(r.status, 400, "{what}: {}", r.summary());
        assert!(
            r.text().starts_with("bad request"),
            "{what}: expected the proxy's own 400: {}",
            r.summary()
        );
    }
    assert_eq!(
        g.arrived(),
        before,
        "a request with a bad host reached a backend"
    );

    let r = exchange(http, b"GET /admin HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        r.backend().as_deref(),
        Some("hostless"),
        "HTTP/1.0 without Host goes to the rule without host: {}",
        r.summary()
    );
}

/// HTTP/1.0 without `Host` and no rule without host: a defaultBackend takes it, and without
/// one it is the proxy's 404, never a 400.
#[tokio::test]
async fn http10_without_host_goes_to_the_default_backend_or_404() {
    let (_backends, mut objects) = several(&["app", "fallback"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;
    let r = exchange(gw.http, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(describe(&r), "404", "no default backend: {}", r.summary());

    objects.push(
        Ingress::new("catch-all")
            .default_backend("fallback", Port::Number(80))
            .build(),
    );
    m.write("all.yaml", &objects);
    let deadline = tokio::time::Instant::now() + crate::harness::process::RELOAD_LIMIT;
    loop {
        let r = exchange(gw.http, b"GET / HTTP/1.0\r\n\r\n").await;
        if r.backend().as_deref() == Some("fallback") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && r.status == 404,
            "HTTP/1.0 without Host should reach the default backend: {}",
            r.summary()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An h2c connection to `addr` with its connection driven in a task.
async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (send, conn) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("h2c handshake with {addr}: {e}"));
    tokio::spawn(conn);
    send
}

/// One HTTP/2 GET of `uri` with extra `headers`: status and body.
async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), h2::Error> {
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).expect("request");
    let mut send = send.clone().ready().await?;
    let (resp, _) = send.send_request(req, true)?;
    let resp = tokio::time::timeout(crate::harness::client::EXCHANGE_LIMIT, resp)
        .await
        .unwrap_or_else(|_| panic!("no HTTP/2 response for {uri}"))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Over HTTP/2 the host is `:authority`; a `host` header that names another host is a 400, one
/// that agrees is fine.
#[tokio::test]
async fn h2_authority_and_a_disagreeing_host_header_is_400() {
    let g = Guarded::start(&[]).await;
    let send = h2c(g.gw.http).await;
    let uri = "http://app.test/admin";
    for headers in [&[][..], &[("host", "app.test")]] {
        let (status, body) = h2_get(&send, uri, headers).await.expect("h2 request");
        assert_eq!(status, 200, "{headers:?}: {body}");
        assert!(
            body.contains("\"backend\":\"admin\""),
            "{headers:?}: {body}"
        );
    }
    let before = g.arrived();
    let (status, body) = h2_get(&send, uri, &[("host", "evil.test")])
        .await
        .expect("h2 request");
    assert_eq!(
        status, 400,
        ":authority app.test with host: evil.test: {body}"
    );
    assert!(body.starts_with("bad request"), "{body}");
    assert_eq!(g.arrived(), before, "the request reached a backend");
}

// ---------------------------------------------------------------------------------------------
// Header hygiene

/// The forwarding headers are the proxy's: a client's X-Forwarded-For/-Port/-Host, X-Real-IP
/// and X-Original-URI are replaced (X-Forwarded-Port is the listener's port, X-Original-URI the
/// target as sent), and a client's `Proxy` header (httpoxy) never reaches the backend.
#[tokio::test]
async fn client_forwarding_headers_and_proxy_are_replaced_by_the_proxys_own() {
    let g = Guarded::start(&[]).await;
    let target = "/x/../admin?q=1";
    let r =
        g.gw.send(
            &Req::get("app.test", target)
                .header("proxy", "http://evil.test:3128")
                .header("x-forwarded-for", "10.9.9.9")
                .header("x-forwarded-port", "1")
                .header("x-forwarded-host", "evil.test")
                .header("x-real-ip", "10.9.9.9")
                .header("x-original-uri", "/forged"),
        )
        .await;
    assert_eq!(r.backend().as_deref(), Some("admin"), "{}", r.summary());
    assert_eq!(
        r.seen("proxy"),
        Vec::<String>::new(),
        "Proxy reached the backend"
    );
    assert_eq!(r.seen("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.seen("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        r.seen("x-forwarded-port"),
        [g.gw.http.port().to_string()],
        "X-Forwarded-Port is the listener's port"
    );
    assert_eq!(r.seen("x-forwarded-host"), ["app.test"]);
    assert_eq!(
        r.seen("x-original-uri"),
        [target],
        "X-Original-URI is the target as sent"
    );
}

/// `Connection` may name hop-by-hop headers away, but not `Host` and not the request id: with
/// `Connection: x-request-id` the backend still gets an X-Request-Id (a fresh one the proxy
/// made, since the client's went with Connection), and with `Connection: host` it still gets
/// `Host`. Without such a `Connection`, a client's own id is passed on.
#[tokio::test]
async fn connection_cannot_name_away_host_or_the_request_id() {
    let g = Guarded::start(&[]).await;
    let r =
        g.gw.send(&Req::get("app.test", "/admin").header("x-request-id", "client-chosen"))
            .await;
    assert_eq!(r.seen("x-request-id"), ["client-chosen"], "{}", r.summary());

    let r =
        g.gw.send(
            &Req::get("app.test", "/admin")
                .header("connection", "x-request-id")
                .header("x-request-id", "client-chosen"),
        )
        .await;
    let ids = r.seen("x-request-id");
    assert!(
        ids.len() == 1 && is_request_id(&ids[0]),
        "Connection: x-request-id: the backend should get one proxy-made id, got {ids:?}"
    );

    let r = exchange(
        g.gw.http,
        b"GET /admin HTTP/1.1\r\nHost: app.test\r\nConnection: host\r\n\r\n",
    )
    .await;
    assert_eq!(r.backend().as_deref(), Some("admin"), "{}", r.summary());
    assert_eq!(
        r.seen("host"),
        ["app.test"],
        "Connection: host removed Host"
    );
}

/// HTTP/1.1 request trailers (`Trailer` announced, sent after the last chunk) reach the backend
/// with the body.
#[tokio::test]
async fn http1_request_trailers_reach_the_backend() {
    let g = Guarded::start(&[]).await;
    let r = exchange(
        g.gw.http,
        b"POST /admin/upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    assert_eq!(r.backend().as_deref(), Some("admin"), "{}", r.summary());
    let echo = r.expect_echo();
    assert_eq!(echo["body_bytes"], 11, "{echo}");
    assert_eq!(
        echo["trailers"]["x-checksum"],
        serde_json::json!(["abc123"]),
        "the trailer did not reach the backend: {echo}"
    );
}

/// app.test to "app" and, with TLS (so plain HTTP is redirected), secure.test to "app".
async fn forwarding_setup(extra: &[&str]) -> (Wasmgress, Vec<Backend>, Manifests) {
    let ca = TestCa::new();
    let (backends, mut objects) = several(&["app"]).await;
    objects.push(ca.leaf(&["secure.test"]).secret("secure-tls", false));
    objects.push(
        Ingress::new("app")
            .rule(Some("app.test"), &[prefix("/", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("secure")
            .tls(&["secure.test"], "secure-tls")
            .rule(Some("secure.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, extra).await;
    (gw, backends, m)
}

/// A request claiming, as a load balancer would, that it came from 203.0.113.9 over HTTPS.
fn forwarded_claims(host: &str) -> Req {
    Req::get(host, "/")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
}

/// `--use-forwarded-headers` with loopback trusted: a load balancer's X-Forwarded-For becomes
/// the client (X-Real-IP and X-Forwarded-For at the backend), and its X-Forwarded-Proto is
/// believed (the backend sees https, and a TLS host is not redirected).
#[tokio::test]
async fn forwarded_headers_from_a_trusted_peer_are_believed() {
    let (gw, _b, _m) = forwarding_setup(&[
        "--use-forwarded-headers",
        "--proxy-real-ip-cidr",
        "127.0.0.0/8",
    ])
    .await;
    let r = gw.send(&forwarded_claims("app.test")).await;
    assert_eq!(r.seen("x-real-ip"), ["203.0.113.9"], "{}", r.summary());
    assert_eq!(r.seen("x-forwarded-for"), ["203.0.113.9"]);
    assert_eq!(r.seen("x-forwarded-proto"), ["https"]);
    let r = gw.send(&forwarded_claims("secure.test")).await;
    assert_eq!(
        r.backend().as_deref(),
        Some("app"),
        "a request the balancer received over HTTPS is not redirected: {}",
        r.summary()
    );
}

/// With only 10.0.0.0/8 trusted, a loopback client's forwarding headers are its own claims:
/// ignored.
#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let (gw, _b, _m) = forwarding_setup(&[
        "--use-forwarded-headers",
        "--proxy-real-ip-cidr",
        "10.0.0.0/8",
    ])
    .await;
    let r = gw.send(&forwarded_claims("app.test")).await;
    assert_eq!(r.seen("x-real-ip"), ["127.0.0.1"], "{}", r.summary());
    assert_eq!(r.seen("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.seen("x-forwarded-proto"), ["http"]);
    let r = gw.send(&forwarded_claims("secure.test")).await;
    assert_eq!(
        r.status,
        308,
        "plain HTTP to a TLS host is redirected: {}",
        r.summary()
    );
}

/// `--use-proxy-protocol`: the source a v1 (text) or v2 (binary) PROXY header names is the
/// client, on the plain listener and before the TLS handshake on the TLS one.
#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let (_b, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--use-proxy-protocol"]).await;

    let mut v1 = b"PROXY TCP4 198.51.100.4 127.0.0.1 5000 80\r\n".to_vec();
    v1.extend(get("/", "app.test"));
    let r = exchange(gw.http, &v1).await;
    assert_eq!(r.seen("x-real-ip"), ["198.51.100.4"], "v1: {}", r.summary());
    assert_eq!(r.seen("x-forwarded-for"), ["198.51.100.4"], "v1");

    let mut v2 = proxy_v2_header(
        SocketAddrV4::new([203, 0, 113, 77].into(), 6000),
        SocketAddrV4::new([127, 0, 0, 1].into(), 80),
    );
    v2.extend(get("/", "app.test"));
    let r = exchange(gw.http, &v2).await;
    assert_eq!(r.seen("x-real-ip"), ["203.0.113.77"], "v2: {}", r.summary());

    // The TLS listener: the header comes first, then the handshake.
    let mut tcp = TcpStream::connect(gw.https).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"PROXY TCP4 198.51.100.5 127.0.0.1 5001 443\r\n",
    )
    .await
    .expect("write the PROXY header");
    let name = rustls::pki_types::ServerName::try_from("app.test").expect("name");
    let tls = tokio_rustls::TlsConnector::from(certs::insecure_config(&[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .expect("TLS handshake after a PROXY header");
    let mut raw = Raw::new(tls);
    raw.send(&get("/", "app.test"), "request over TLS").await;
    let r = raw.response().await.expect("response over TLS");
    assert_eq!(
        r.seen("x-real-ip"),
        ["198.51.100.5"],
        "TLS: {}",
        r.summary()
    );
    assert_eq!(r.seen("x-forwarded-proto"), ["https"]);
}

/// With `--use-proxy-protocol`, a connection that does not start with a PROXY header is closed
/// without an answer: it is never served as the balancer's own traffic.
#[tokio::test]
async fn without_a_proxy_protocol_header_the_connection_is_closed_unanswered() {
    let (_b, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--use-proxy-protocol"]).await;
    let mut raw = Raw::connect(gw.http).await;
    raw.send(&get("/", "app.test"), "plain request").await;
    let closed = raw
        .closed_within(CLOSE_LIMIT)
        .await
        .expect("the connection should be closed");
    assert!(
        closed.received.is_empty(),
        "expected no answer, got {:?}",
        String::from_utf8_lossy(&closed.received)
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The proxy's 502, 503 and 504 say what failed and name the request id, and give away nothing
/// about the cluster: no address, port, Service name or OS error. The log line with the same id
/// has the details.
#[tokio::test]
async fn error_answers_name_the_request_id_and_nothing_internal() {
    let gone_port = closed_port().await;
    let empty_port = 61234;
    let slow = Backend::start("orders-archive").await;
    let mut objects = slow.objects();
    let svc = |name: &str, port: u16| {
        service(
            NS,
            name,
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(port),
            }],
        )
    };
    objects.push(svc("payments-ledger", gone_port));
    objects.push(endpoint_slice(
        NS,
        "payments-ledger",
        "payments-ledger-1",
        &[(Some("http"), gone_port)],
        &[crate::harness::manifests::ready("127.0.0.1")],
    ));
    objects.push(svc("inventory-reserve", empty_port));
    objects.push(endpoint_slice(
        NS,
        "inventory-reserve",
        "inventory-reserve-1",
        &[(Some("http"), empty_port)],
        &[],
    ));
    objects.push(
        Ingress::new("failing")
            .rule(Some("gone.test"), &[prefix("/", "payments-ledger")])
            .rule(Some("empty.test"), &[prefix("/", "inventory-reserve")])
            .rule(Some("slow.test"), &[prefix("/", "orders-archive")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--proxy-read-timeout", "1"]).await;

    for (host, path, status, service, port) in [
        ("gone.test", "/", 502, "payments-ledger", gone_port),
        ("empty.test", "/", 503, "inventory-reserve", empty_port),
        (
            "slow.test",
            "/?delay_ms=3000",
            504,
            "orders-archive",
            slow.port(),
        ),
    ] {
        let r = gw.get(host, path).await;
        assert_eq!(r.status, status, "{host}: {}", r.summary());
        let id = request_id_in(&r, host);
        let body = r.text().to_ascii_lowercase();
        for secret in [
            "127.0.0.1",
            &port.to_string(),
            service,
            "os error",
            "refused",
            "default/",
        ] {
            assert!(
                !body.contains(secret),
                "{host}: the {status} body gives away {secret:?}: {}",
                r.summary()
            );
        }
        assert!(
            gw.stderr_mentions(&id).await,
            "{host}: no log line names request id {id}"
        );
        let logged = gw.stderr();
        let line = logged
            .lines()
            .find(|l| l.contains(&id))
            .expect("the line with the id");
        assert!(
            line.contains(service),
            "{host}: the log line with the id should name the Service: {line}"
        );
    }
}

/// A gRPC call to a dead backend gets UNAVAILABLE whose grpc-message names the request id and
/// not the endpoint, its port, the Service or the OS error.
#[tokio::test]
async fn grpc_errors_name_the_request_id_and_nothing_internal() {
    use crate::harness::grpc::{greeter_client, greeter_objects};
    use wasmgress_examples::greeter::proto::HelloRequest;

    let closed = closed_port().await;
    let mut objects = greeter_objects(
        "payments-grpc",
        closed,
        &[crate::harness::manifests::ready("127.0.0.1")],
        None,
    );
    objects.push(
        Ingress::new("grpc")
            .annotation("nginx.ingress.kubernetes.io/backend-protocol", "GRPC")
            .rule(
                Some("grpc.test"),
                &[prefix("/", "payments-grpc").port(crate::harness::grpc::SEED_PORT)],
            )
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.http))
        .expect("endpoint")
        .origin("http://grpc.test".parse().expect("origin"))
        .connect()
        .await
        .expect("h2c channel to the plain listener");
    let result = greeter_client(channel)
        .say_hello(HelloRequest {
            name: "anyone".into(),
            ..Default::default()
        })
        .await;
    let status = result.expect_err("the backend is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let message = status.message().to_ascii_lowercase();
    assert!(message.contains("request id"), "{status:?}");
    let id = message
        .split("request id")
        .nth(1)
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_ascii_hexdigit());
    assert!(is_request_id(id), "no 32-hex request id in {message:?}");
    for secret in [
        "127.0.0.1",
        &closed.to_string(),
        "payments-grpc",
        "os error",
        "refused",
    ] {
        assert!(
            !message.contains(secret),
            "grpc-message gives away {secret:?}: {status:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded connections

/// One echo backend "app" for app.test, and the binary with `extra` flags.
async fn app(extra: &[&str]) -> (Wasmgress, Vec<Backend>, Manifests) {
    let (backends, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, extra).await;
    (gw, backends, m)
}

/// What a closed connection sent first: nothing, or the start of an HTTP answer.
fn first_line(closed: &raw::Closed) -> String {
    let text = String::from_utf8_lossy(&closed.received);
    text.lines().next().unwrap_or("").to_owned()
}

/// `--client-header-timeout 1`: a connection that sends nothing, and one that sends half a
/// request head and stops, are closed (a 408 first is allowed); a prompt request is served.
#[tokio::test]
async fn silent_and_half_sent_heads_are_closed_after_the_client_header_timeout() {
    let (gw, _b, _m) = app(&["--client-header-timeout", "1"]).await;
    let r = exchange(gw.http, &get("/", "app.test")).await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());

    let silent = Raw::connect(gw.http).await;
    let partial = Raw::connect(gw.http).await;
    assert_heads_closed("plain", silent, partial).await;
}

/// Sends half a request head on `partial`, nothing on `silent`, and checks the proxy closes
/// both (at most with a 408 first).
async fn assert_heads_closed<S>(label: &str, mut silent: Raw<S>, mut partial: Raw<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    partial
        .send(b"GET / HTTP/1.1\r\nHost: a", "half a head")
        .await;
    for (what, conn) in [("silent", &mut silent), ("half a head", &mut partial)] {
        let closed = conn
            .closed_within(CLOSE_LIMIT)
            .await
            .unwrap_or_else(|| panic!("{label}, {what}: still open after {CLOSE_LIMIT:?}"));
        let line = first_line(&closed);
        assert!(
            line.is_empty() || line.starts_with("HTTP/1.1 408"),
            "{label}, {what}: unexpected answer before the close: {line:?}"
        );
    }
}

/// The same over TLS, counted from the end of the handshake: a TLS client that completes the
/// handshake and then says nothing, or half a head, is closed.
#[tokio::test]
async fn over_tls_silent_and_half_sent_heads_are_closed_after_the_handshake() {
    let (gw, _b, _m) = app(&["--client-header-timeout", "1"]).await;
    let config = certs::insecure_config(&[b"http/1.1"]);
    let tls = gw.tls("app.test", config.clone()).await.expect("TLS");
    let mut served = Raw::new(tls);
    served.send(&get("/", "app.test"), "request").await;
    let r = served.response().await.expect("response over TLS");
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());

    let silent = Raw::new(gw.tls("app.test", config.clone()).await.expect("TLS"));
    let partial = Raw::new(gw.tls("app.test", config).await.expect("TLS"));
    assert_heads_closed("TLS", silent, partial).await;
}

/// `--keepalive-timeout 1`: an HTTP/1.1 connection serves several requests, then, idle, is
/// closed.
#[tokio::test]
async fn idle_http1_keepalive_connections_are_closed() {
    let (gw, _b, _m) = app(&["--keepalive-timeout", "1"]).await;
    let mut conn = Raw::connect(gw.http).await;
    for n in 0..2 {
        conn.send(&get(&format!("/{n}"), "app.test"), "request")
            .await;
        let r = conn.response().await.expect("response");
        assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    }
    let closed = conn.closed_within(CLOSE_LIMIT).await;
    assert!(
        closed.is_some_and(|c| c.received.is_empty()),
        "an idle keep-alive connection should be closed without further bytes"
    );
}

/// `--keepalive-timeout 1`: an idle HTTP/2 connection that made a request is ended by the
/// server with GOAWAY, which the client sees as a graceful end of the connection.
#[tokio::test]
async fn idle_h2_connections_end_with_goaway() {
    let (gw, _b, _m) = app(&["--keepalive-timeout", "1"]).await;
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let (status, body) = h2_get(&send, "http://app.test/", &[])
        .await
        .expect("request");
    assert_eq!(status, 200, "{body}");
    let ended = tokio::time::timeout(CLOSE_LIMIT, conn)
        .await
        .unwrap_or_else(|_| panic!("the idle HTTP/2 connection is still open"))
        .expect("connection task");
    match ended {
        Ok(()) => {}
        Err(e) => assert!(
            e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR),
            "expected a graceful GOAWAY, the connection ended with {e:?}"
        ),
    }
    assert!(
        h2_get(&send, "http://app.test/", &[]).await.is_err(),
        "a request after GOAWAY must not be served on that connection"
    );
}

/// A request the client resets before its answer (HTTP/2 RST_STREAM while the backend is
/// slow) ends there: the connection, idle afterwards, still closes after the keep-alive
/// timeout instead of counting the abandoned request as busy forever.
#[tokio::test]
async fn a_reset_request_does_not_keep_its_connection_busy() {
    let (gw, _b, _m) = app(&["--keepalive-timeout", "1"]).await;
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::get("http://app.test/?delay_ms=3000")
        .body(())
        .expect("request");
    let (answer, mut stream) = send.send_request(req, true).expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(answer);
    let ended = tokio::time::timeout(CLOSE_LIMIT, conn)
        .await
        .unwrap_or_else(|_| panic!("the connection stayed open after its only request was reset"))
        .expect("connection task");
    if let Err(e) = ended {
        assert!(e.is_go_away(), "expected GOAWAY, got {e:?}");
    }
}

/// `--max-connections 2`: while two connections are open, a third is not served (it waits,
/// unaccepted); once one of the two closes, the third's request is answered.
#[tokio::test]
async fn beyond_max_connections_a_connection_waits_for_a_free_slot() {
    let (gw, _b, _m) = app(&["--max-connections", "2", "--keepalive-timeout", "300"]).await;
    let mut held = Vec::new();
    for n in 0..2 {
        let mut conn = Raw::connect(gw.http).await;
        conn.send(&get("/", "app.test"), "request").await;
        let r = conn
            .response_within(CLOSE_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("connection {n} of 2 allowed was not served: {e}"));
        assert_eq!(
            r.backend().as_deref(),
            Some("app"),
            "connection {n}: {}",
            r.summary()
        );
        held.push(conn);
    }
    let mut third = Raw::connect(gw.http).await;
    third
        .send(&get("/third", "app.test"), "third request")
        .await;
    let early = third.response_within(Duration::from_secs(1)).await;
    assert!(
        early.is_err(),
        "the third connection was served while two were open: {early:?}"
    );
    drop(held.remove(0));
    let r = third
        .response()
        .await
        .expect("the third request, once a slot freed");
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(r.expect_echo()["path"], "/third");
}

/// `--max-header-size 8k`: a request head with a 20 KB header is answered 431; one with a 2 KB
/// header is served.
#[tokio::test]
async fn request_heads_over_max_header_size_are_431() {
    let (gw, _b, _m) = app(&["--max-header-size", "8k"]).await;
    let with_header = |size: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        )
        .into_bytes()
    };
    let r = exchange(gw.http, &with_header(2 * 1024)).await;
    assert_eq!(r.backend().as_deref(), Some("app"), "2 KB: {}", r.summary());
    let r = exchange(gw.http, &with_header(20 * 1024)).await;
    assert_eq!(r.status, 431, "20 KB: {}", r.summary());
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS an h2c client is told, after one request.
async fn announced_max_streams(addr: SocketAddr) -> usize {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, mut conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let request = h2_get(&send, "http://app.test/", &[]);
    tokio::select! {
        r = request => {
            let (status, body) = r.expect("request");
            assert_eq!(status, 200, "{body}");
        }
        ended = &mut conn => panic!("the connection ended before the response: {ended:?}"),
    }
    conn.max_concurrent_send_streams()
}

/// The server announces SETTINGS_MAX_CONCURRENT_STREAMS 128 by default, and
/// `--http2-max-concurrent-streams 5` changes it to 5.
#[tokio::test]
async fn h2_max_concurrent_streams_is_announced() {
    let (gw, _b, _m) = app(&[]).await;
    assert_eq!(announced_max_streams(gw.http).await, 128, "default");
    drop(gw);
    let (gw, _b2, _m2) = app(&["--http2-max-concurrent-streams", "5"]).await;
    assert_eq!(announced_max_streams(gw.http).await, 5, "with the flag");
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 floods

/// A GET of `http://app.test/` as an HPACK block: static-table `:method GET`, `:scheme http`,
/// `:path /`, and `:authority` as a literal without indexing (so blocks are independent).
fn hpack_get_app() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 8];
    block.extend_from_slice(b"app.test");
    block
}

/// What a hand-driven HTTP/2 connection saw from the server.
#[derive(Debug, Default)]
struct H2Watch {
    /// The error code of a GOAWAY, if one came.
    goaway: Option<u32>,
    /// A response HEADERS frame came on stream 1.
    answered: bool,
    /// Bytes received.
    received: usize,
}

/// Reads frames until the connection ends (end of stream or error), noting a GOAWAY; with
/// `until_answered`, stops at the response HEADERS of stream 1 instead.
async fn watch_h2(mut read: tokio::net::tcp::OwnedReadHalf, until_answered: bool) -> H2Watch {
    use tokio::io::AsyncReadExt;
    let mut seen = H2Watch::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => {
                seen.received += n;
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        // Walk the server's frames; a partial one waits for more bytes.
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == H2_HEADERS && buf[5..9] == 1u32.to_be_bytes() {
                seen.answered = true;
            }
            if buf[3] == H2_GOAWAY && len >= 8 {
                seen.goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
        if until_answered && seen.answered {
            return seen;
        }
    }
}

/// Checks that a fresh client gets 200 from app.test, within a generous bound.
async fn still_served(addr: SocketAddr, what: &str) {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(addr, &get("/", "app.test")),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: another client got no answer within 10 s"));
    assert_eq!(
        r.backend().as_deref(),
        Some("app"),
        "{what}: {}",
        r.summary()
    );
}

/// CVE-2023-44487: one connection opens streams and resets each at once (HEADERS then
/// RST_STREAM, 10,000 times). The proxy cuts that connection off (GOAWAY or close) before all
/// of them are through, and another client is served throughout.
#[tokio::test]
async fn h2_rapid_reset_is_cut_off_while_other_clients_are_served() {
    let (gw, _b, _m) = app(&[]).await;
    still_served(gw.http, "before the attack").await;

    // The hand-made frames are a valid request: one HEADERS alone is answered, without GOAWAY.
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (read, mut write) = tcp.into_split();
    let mut one = H2_PREFACE.to_vec();
    one.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    one.extend(h2_frame(
        H2_HEADERS,
        H2_END_STREAM | H2_END_HEADERS,
        1,
        &hpack_get_app(),
    ));
    tokio::io::AsyncWriteExt::write_all(&mut write, &one)
        .await
        .expect("write one request");
    let seen = tokio::time::timeout(CLOSE_LIMIT, watch_h2(read, true))
        .await
        .expect("an answer to one hand-made HTTP/2 request");
    assert!(
        seen.answered && seen.goaway.is_none(),
        "one hand-made request: {seen:?}"
    );
    drop(write);

    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let (read, mut write) = tcp.into_split();
    let watcher = tokio::spawn(watch_h2(read, false));
    const STREAMS: u32 = 10_000;
    let attack = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut start = H2_PREFACE.to_vec();
        start.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
        if write.write_all(&start).await.is_err() {
            return 0;
        }
        let block = hpack_get_app();
        let mut sent = 0;
        while sent < STREAMS {
            let mut batch = Vec::new();
            for _ in 0..50 {
                let id = 2 * sent + 1;
                batch.extend(h2_frame(
                    H2_HEADERS,
                    H2_END_STREAM | H2_END_HEADERS,
                    id,
                    &block,
                ));
                batch.extend(h2_frame(0x3, 0, id, &0x8u32.to_be_bytes())); // RST_STREAM CANCEL
                sent += 1;
            }
            if write.write_all(&batch).await.is_err() {
                return sent;
            }
            tokio::task::yield_now().await;
        }
        sent
    });
    let mut checks = 0;
    while !attack.is_finished() {
        still_served(gw.http, "during the rapid-reset attack").await;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = attack.await.expect("attack task");
    let seen = tokio::time::timeout(CLOSE_LIMIT, watcher)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the attacking connection is still open {CLOSE_LIMIT:?} after {sent} \
                 opened-and-reset streams (no GOAWAY, no close)"
            )
        })
        .expect("watcher task");
    still_served(gw.http, "after the attack").await;
    assert!(
        seen.goaway.is_some() || sent < STREAMS,
        "all {STREAMS} streams went through and the connection only closed afterwards: {seen:?}"
    );
    eprintln!(
        "rapid reset: {sent} streams written, server said {seen:?}, {checks} checks of \
         another client during the attack"
    );
}

/// CONTINUATION flood: a HEADERS frame without END_HEADERS followed by endless CONTINUATION
/// frames of junk. The proxy closes the connection long before reading 100 MiB of it, and
/// another client is served meanwhile.
#[tokio::test]
async fn h2_continuation_flood_is_cut_off_while_other_clients_are_served() {
    let (gw, _b, _m) = app(&[]).await;
    still_served(gw.http, "before the flood").await;

    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (read, mut write) = tcp.into_split();
    let watcher = tokio::spawn(watch_h2(read, false));
    const TOTAL: usize = 100 << 20;
    let flood = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut start = H2_PREFACE.to_vec();
        start.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
        start.extend(h2_frame(H2_HEADERS, H2_END_STREAM, 1, &[0x82, 0x86, 0x84]));
        if write.write_all(&start).await.is_err() {
            return 0;
        }
        let frame = h2_frame(H2_CONTINUATION, 0, 1, &[0x61; 16 * 1024]);
        let mut batch = Vec::new();
        for _ in 0..16 {
            batch.extend_from_slice(&frame);
        }
        let mut written = 0;
        while written < TOTAL {
            if write.write_all(&batch).await.is_err() {
                return written;
            }
            written += batch.len();
            tokio::task::yield_now().await;
        }
        written
    });
    let mut checks = 0;
    while !flood.is_finished() {
        still_served(gw.http, "during the CONTINUATION flood").await;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = flood.await.expect("flood task");
    let seen = tokio::time::timeout(CLOSE_LIMIT, watcher)
        .await
        .unwrap_or_else(|_| panic!("the flooding connection is still open after {written} bytes"))
        .expect("watcher task");
    still_served(gw.http, "after the flood").await;
    assert!(
        written < TOTAL,
        "the proxy read all {TOTAL} bytes of CONTINUATION frames without closing: {seen:?}"
    );
    eprintln!(
        "CONTINUATION flood: {written} bytes written before the close, server said {seen:?}, \
         {checks} checks of another client during the flood"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts with nginx semantics

/// `--proxy-read-timeout 1 --proxy-send-timeout 1`: an upload that takes about 3 s but is never
/// idle for 1 s succeeds, and the backend gets every byte. The timeouts bound silence, not the
/// whole exchange.
#[tokio::test]
async fn a_slow_steady_upload_outlives_the_read_and_send_timeouts() {
    let (gw, _b, _m) = app(&["--proxy-read-timeout", "1", "--proxy-send-timeout", "1"]).await;
    let mut conn = Raw::connect(gw.http).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        "head",
    )
    .await;
    let piece = [b'x'; 1000];
    for n in 0..5 {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let mut chunk = b"3e8\r\n".to_vec();
        chunk.extend_from_slice(&piece);
        chunk.extend_from_slice(b"\r\n");
        conn.send(&chunk, &format!("piece {n}")).await;
    }
    conn.send(b"0\r\n\r\n", "last chunk").await;
    let r = conn.response().await.expect("response");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.expect_echo()["body_bytes"], 5000, "{}", r.summary());
}

/// `--client-body-timeout 1`: a client that declares 100 bytes, sends 10 and stops gets 408.
#[tokio::test]
async fn a_stalled_request_body_is_408() {
    let (gw, _b, _m) = app(&["--client-body-timeout", "1"]).await;
    let mut conn = Raw::connect(gw.http).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789",
        "head and 10 bytes",
    )
    .await;
    match conn.response_within(Duration::from_secs(15)).await {
        Ok(r) => {
            assert_eq!(r.status, 408, "{}", r.summary());
            request_id_in(&r, "408");
        }
        Err(e) => panic!("expected a 408 answer to a stalled body, got: {e}"),
    }
}

/// A WebSocket handshake to a backend that accepts the connection but never answers ends with
/// 504 after `--proxy-read-timeout`, instead of hanging.
#[tokio::test]
async fn a_websocket_handshake_to_a_silent_backend_is_504() {
    let silent = Silent::start().await;
    let mut objects = silent.objects("mute");
    objects.push(
        Ingress::new("ws")
            .rule(Some("ws.test"), &[prefix("/", "mute")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--proxy-read-timeout", "1"]).await;
    let r = exchange(
        gw.http,
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.summary());
}

// ---------------------------------------------------------------------------------------------
// Body size

/// One recording backend "app" for app.test, and the binary with `extra` flags.
async fn recorded(extra: &[&str]) -> (Wasmgress, Recorder, Manifests) {
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.push(
        Ingress::new("app")
            .rule(Some("app.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, extra).await;
    (gw, rec, m)
}

/// The default limit is 1m: a POST declaring 2 MiB is answered 413 before its body is sent,
/// and the backend never sees it; a 500 KB POST passes whole.
#[tokio::test]
async fn bodies_over_the_default_1m_are_413_before_reaching_the_backend() {
    let (gw, rec, _m) = recorded(&[]).await;
    let mut conn = Raw::connect(gw.http).await;
    let mut start =
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2097152\r\n\r\n".to_vec();
    start.extend_from_slice(&[b'x'; 64 * 1024]);
    conn.send(&start, "head and the first 64 KiB").await;
    let r = conn
        .response()
        .await
        .expect("an answer before the rest of the body");
    assert_eq!(r.status, 413, "{}", r.summary());
    request_id_in(&r, "413");
    assert_eq!(rec.arrived(), 0, "the backend saw the request");

    let body = vec![b'y'; 500 * 1024];
    let r = gw
        .send(
            &Req::get("app.test", "/upload")
                .method(Method::POST)
                .body(body),
        )
        .await;
    assert_eq!(r.status, 200, "500 KB: {}", r.summary());
    assert_eq!(r.expect_echo()["body_bytes"], 500 * 1024);
}

/// `--proxy-body-size 10k`: a chunked upload that crosses 10 KiB is answered 413 and the
/// backend does not get a complete body; a 5 KiB chunked upload passes.
#[tokio::test]
async fn a_streamed_body_crossing_proxy_body_size_is_413() {
    let (gw, rec, _m) = recorded(&["--proxy-body-size", "10k"]).await;
    let chunked = |kib: usize| {
        let mut out =
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for _ in 0..kib {
            out.extend_from_slice(b"400\r\n");
            out.extend_from_slice(&[b'z'; 1024]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let r = exchange(gw.http, &chunked(5)).await;
    assert_eq!(r.status, 200, "5 KiB: {}", r.summary());
    assert_eq!(r.expect_echo()["body_bytes"], 5 * 1024);

    let r = exchange(gw.http, &chunked(50)).await;
    assert_eq!(r.status, 413, "50 KiB: {}", r.summary());
    let complete = rec
        .finished()
        .iter()
        .filter(|seen| seen["complete"] == true && seen["body_bytes"] == 50 * 1024)
        .count();
    assert_eq!(complete, 0, "the backend got the whole 50 KiB body");
}

/// `--proxy-body-size 0` is no limit: a 5 MiB upload reaches the backend whole.
#[tokio::test]
async fn proxy_body_size_0_is_unlimited() {
    let (gw, _b, _m) = app(&["--proxy-body-size", "0"]).await;
    let body = vec![b'z'; 5 << 20];
    let r = gw
        .send(
            &Req::get("app.test", "/upload")
                .method(Method::PUT)
                .body(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.expect_echo()["body_bytes"], 5 << 20);
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// `--shutdown-grace-period 2`: after SIGTERM `/readyz` fails at once while new connections
/// are still served for the grace period; then the listeners close and the process exits.
#[tokio::test]
async fn sigterm_fails_readyz_first_then_stops_accepting_and_exits() {
    let (mut gw, _b, _m) = app(&["--shutdown-grace-period", "2"]).await;
    still_served(gw.http, "before SIGTERM").await;
    gw.signal(libc::SIGTERM);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match gw.get_on(gw.admin, "localhost", "/readyz").await {
            Ok(r) if r.status == 503 => break,
            Ok(r) if r.status == 200 => {}
            other => panic!("/readyz after SIGTERM: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still 200 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_served(gw.http, "during the grace period, on a new connection").await;

    let status = gw
        .exited_within(Duration::from_secs(60))
        .await
        .expect("the process should exit after the grace period");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        TcpStream::connect(gw.http).await.is_err(),
        "the plain listener still accepts after exit"
    );
}

//! What the backend receives and what comes back: the client's `Host`, `X-Forwarded-For`
//! (the client's address, never the client's claim), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP`; hop-by-hop headers
//! removed; method, path, query and body forwarded; the backend's status and headers returned;
//! HTTP/1.1 to the backend with keep-alive whatever the client spoke, and whatever the backend
//! spoke back (an HTTP/1.0 backend closing every connection); h2c prior knowledge on the
//! plain listener.

use std::collections::HashSet;

use http::{Method, Version};

use crate::harness::backend::several;
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::{Backend, Conn, Ingress, Manifests, Req, Resp, Wasmgress, prefix};

async fn start_app() -> (Wasmgress, Vec<Backend>, Manifests) {
    let (backends, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.example.com"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;
    (gw, backends, m)
}

/// A Service `name` in `default` whose port `port_name`/`service_port` reaches a server this
/// test runs on 127.0.0.1:`target`, and its EndpointSlice.
fn service_at(
    name: &str,
    port_name: &str,
    service_port: u16,
    target: u16,
) -> [serde_json::Value; 2] {
    use crate::harness::manifests::{ServicePort, endpoint_slice, ready, service};
    [
        service(
            "default",
            name,
            &[ServicePort {
                name: Some(port_name),
                port: service_port,
                target: crate::harness::Port::Number(target),
            }],
        ),
        endpoint_slice(
            "default",
            name,
            &format!("{name}-slice"),
            &[(Some(port_name), target)],
            &[ready("127.0.0.1")],
        ),
    ]
}

fn joined(r: &Resp, header: &str) -> String {
    r.seen(header).join(", ")
}

#[tokio::test]
async fn backend_sees_host_and_forwarded_headers() {
    let (gw, _backends, _m) = start_app().await;

    let r = gw.get("app.example.com", "/").await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(r.seen("host"), ["app.example.com"], "Host at the backend");
    assert_eq!(
        joined(&r, "x-forwarded-for"),
        "127.0.0.1",
        "X-Forwarded-For without an incoming one"
    );
    assert_eq!(r.seen("x-forwarded-proto"), ["http"], "X-Forwarded-Proto");
    assert_eq!(
        r.seen("x-forwarded-host"),
        ["app.example.com"],
        "X-Forwarded-Host"
    );
    assert_eq!(r.seen("x-real-ip"), ["127.0.0.1"], "X-Real-IP");

    // A client's own X-Forwarded-For, X-Real-IP and X-Forwarded-Proto are overwritten: without
    // --use-forwarded-headers nobody is trusted to say where a request came from.
    let r = gw
        .send(
            &Req::get("app.example.com", "/")
                .header("x-forwarded-for", "203.0.113.7")
                .header("x-real-ip", "198.51.100.1")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    assert_eq!(
        joined(&r, "x-forwarded-for"),
        "127.0.0.1",
        "X-Forwarded-For is the client's address, whatever the client claimed"
    );
    assert_eq!(
        r.seen("x-real-ip"),
        ["127.0.0.1"],
        "X-Real-IP is the client's address"
    );
    assert_eq!(
        r.seen("x-forwarded-proto"),
        ["http"],
        "X-Forwarded-Proto is the listener's scheme"
    );
}

/// Over TLS with HTTP/2 the backend still gets HTTP/1.1, the `:authority` as `Host`, and
/// `X-Forwarded-Proto: https`.
#[tokio::test]
async fn https_h2_request_reaches_the_backend_as_http11_with_proto_https() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["secure.example.com"]);
    let (_backends, mut objects) = several(&["secure"]).await;
    objects.push(leaf.secret("secure-tls", false));
    objects.push(
        Ingress::new("secure")
            .tls(&["secure.example.com"], "secure-tls")
            .rule(Some("secure.example.com"), &[prefix("/", "secure")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let tls = gw
        .tls(
            "secure.example.com",
            certs::client_config(ca.roots(), &[b"h2"], BOTH_VERSIONS),
        )
        .await
        .expect("TLS handshake verified against the test CA");
    let mut conn = Conn::h2(tls).await.expect("HTTP/2 over TLS");
    let r = conn
        .send(&Req::get("secure.example.com", "/over/h2?x=1").scheme("https"))
        .await
        .expect("HTTP/2 request over TLS");
    assert_eq!(r.version, Version::HTTP_2, "client side is HTTP/2");
    let echo = r.expect_echo();
    assert_eq!(echo["backend"], "secure");
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "the backend is spoken to in HTTP/1.1"
    );
    assert_eq!(echo["path"], "/over/h2");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(
        r.seen("host"),
        ["secure.example.com"],
        "Host at the backend"
    );
    assert_eq!(
        r.seen("x-forwarded-proto"),
        ["https"],
        "X-Forwarded-Proto over TLS"
    );
    assert_eq!(
        r.seen("x-forwarded-host"),
        ["secure.example.com"],
        "X-Forwarded-Host"
    );
    assert_eq!(
        joined(&r, "x-forwarded-for"),
        "127.0.0.1",
        "X-Forwarded-For"
    );
    assert_eq!(r.seen("x-real-ip"), ["127.0.0.1"], "X-Real-IP");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (gw, _backends, _m) = start_app().await;

    let r = gw
        .send(
            &Req::get("app.example.com", "/")
                .header("connection", "keep-alive, x-hop-secret")
                .header("x-hop-secret", "for the proxy only")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("x-end-to-end", "kept"),
        )
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(
        r.seen("x-end-to-end"),
        ["kept"],
        "an end-to-end header must be forwarded"
    );
    for hop in ["x-hop-secret", "keep-alive", "te"] {
        assert!(
            r.seen(hop).is_empty(),
            "hop-by-hop header {hop} reached the backend: {:?}",
            r.seen(hop)
        );
    }
    for value in r.seen("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-hop-secret"),
            "the client's Connection header reached the backend: {value:?}"
        );
    }
}

#[tokio::test]
async fn method_path_query_body_and_status_pass_through() {
    let (gw, _backends, _m) = start_app().await;

    let body = vec![b'x'; 256 * 1024];
    let r = gw
        .send(
            &Req::get("app.example.com", "/upload/file.bin?x=1&y=two")
                .method(Method::PUT)
                .header("content-type", "application/octet-stream")
                .body(body.clone()),
        )
        .await;
    let echo = r.expect_echo();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/upload/file.bin");
    assert_eq!(echo["query"], "x=1&y=two");
    assert_eq!(
        echo["body_bytes"],
        body.len(),
        "request body bytes at the backend"
    );
    assert_eq!(
        r.header("x-backend"),
        Some("app"),
        "backend's response header returned"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    for status in [201u16, 404, 418, 500] {
        let r = gw
            .get("app.example.com", &format!("/x?status={status}"))
            .await;
        assert_eq!(
            r.status,
            status,
            "backend status {status} passed through: {}",
            r.summary()
        );
        assert_eq!(
            r.backend().as_deref(),
            Some("app"),
            "body from the backend: {}",
            r.summary()
        );
    }
}

/// Sequential requests reuse pooled upstream connections: the backend sees fewer distinct
/// client ports than requests.
#[tokio::test]
async fn upstream_connections_are_kept_alive() {
    let (gw, _backends, _m) = start_app().await;

    let mut peers = HashSet::new();
    let mut conn = gw.h1().await;
    for i in 0..6 {
        let r = conn
            .send(&Req::get("app.example.com", &format!("/n{i}")))
            .await
            .expect("request on a kept-alive client connection");
        let echo = r.expect_echo();
        peers.insert(echo["peer"].as_str().expect("peer").to_owned());
    }
    assert!(
        peers.len() < 6,
        "6 sequential requests opened 6 upstream connections (no keep-alive): {peers:?}"
    );
}

/// HTTP/2 with prior knowledge on the plain listener, several requests on one connection.
#[tokio::test]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let (gw, _backends, _m) = start_app().await;

    let mut conn = gw.h2c().await;
    for path in ["/one", "/two?q=2"] {
        let r = conn
            .send(&Req::get("app.example.com", path))
            .await
            .unwrap_or_else(|e| panic!("h2c request {path}: {e}"));
        assert_eq!(r.version, Version::HTTP_2, "h2c response version");
        let echo = r.expect_echo();
        assert_eq!(echo["backend"], "app");
        assert_eq!(r.seen("host"), ["app.example.com"], "Host from :authority");
        assert_eq!(r.seen("x-forwarded-proto"), ["http"]);
    }
}

/// `backend-protocol: HTTPS` makes the proxy speak TLS to the backend (HTTP/1.1, certificate
/// not verified, as ingress-nginx by default); the same backend behind a plain route refuses the
/// proxy's cleartext request, so the 200 proves TLS was used.
#[tokio::test]
async fn https_backend_protocol_speaks_tls_to_the_backend() {
    let leaf = TestCa::new().leaf(&["backend.internal"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"hello over tls")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let m = Manifests::new();
    let mut docs = service_at("secure", "https", 443, port).to_vec();
    docs.push(
        Ingress::new("tls-backend")
            .annotation("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS")
            .rule(Some("tls.test"), &[prefix("/", "secure").port(443)])
            .build(),
    );
    docs.push(
        Ingress::new("plain-backend")
            .rule(Some("plain.test"), &[prefix("/", "secure").port(443)])
            .build(),
    );
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;
    let r = gw.get("tls.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "hello over tls");
    let r = gw.get("plain.test", "/").await;
    assert_eq!(
        r.status,
        502,
        "cleartext to a TLS backend fails: {}",
        r.summary()
    );
    server.abort();
}

/// A backend that answers HTTP/1.0 and closes every connection (the body ends at EOF, no
/// length): each request through the proxy gets its answer on a fresh upstream connection,
/// and the client keeps one HTTP/1.1 keep-alive connection throughout.
#[tokio::test]
async fn an_http10_backend_that_closes_each_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            n += 1;
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let answer =
                format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold server {n}");
            let _ = tcp.write_all(answer.as_bytes()).await;
            let _ = tcp.shutdown().await;
        }
    });
    let m = Manifests::new();
    let mut docs = service_at("old", "http", 80, port).to_vec();
    docs.push(
        Ingress::new("old")
            .rule(Some("old.test"), &[prefix("/", "old")])
            .build(),
    );
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &[]).await;
    let mut conn = gw.h1().await;
    for n in 1..=3 {
        let r = conn
            .send(&Req::get("old.test", "/"))
            .await
            .unwrap_or_else(|e| panic!("request {n} on the same client connection: {e}"));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(
            r.text(),
            format!("old server {n}"),
            "a fresh upstream connection each"
        );
        assert_eq!(
            r.version,
            Version::HTTP_11,
            "the client is answered in HTTP/1.1"
        );
    }
    server.abort();
}

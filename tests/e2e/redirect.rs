//! HTTP to HTTPS: a plain request for a host that has TLS in some Ingress gets `308` to
//! `https://HOST/PATH?QUERY` (with `:PORT` when `--redirect-https-port` is not 443), unless the
//! route's Ingress says `nginx.ingress.kubernetes.io/ssl-redirect: "false"`; hosts without TLS
//! are served over plain HTTP; the HTTPS side of a redirected host is served.

use crate::harness::backend::several;
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::{Conn, Ingress, Manifests, Req, Resp, Wasmgress, prefix};

const SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";

fn assert_redirect(r: &Resp, location: &str, what: &str) {
    assert_eq!(r.status, 308, "{what}: {}", r.summary());
    assert_eq!(
        r.header("location"),
        Some(location),
        "{what}: {}",
        r.summary()
    );
    assert_eq!(
        r.backend(),
        None,
        "{what}: the backend must not be reached: {}",
        r.summary()
    );
}

struct Setup {
    ca: TestCa,
    manifests: Manifests,
    _backends: Vec<crate::harness::Backend>,
}

async fn setup() -> Setup {
    let ca = TestCa::new();
    let secure = ca.leaf(&["secure.example.com"]);
    let optout = ca.leaf(&["optout.example.com"]);
    let (backends, mut objects) = several(&["secure", "optout", "plain"]).await;
    objects.push(secure.secret("secure-tls", false));
    objects.push(optout.secret("optout-tls", false));
    objects.push(
        Ingress::new("secure")
            .tls(&["secure.example.com"], "secure-tls")
            .rule(Some("secure.example.com"), &[prefix("/", "secure")])
            .build(),
    );
    objects.push(
        Ingress::new("optout")
            .annotation(SSL_REDIRECT, "false")
            .tls(&["optout.example.com"], "optout-tls")
            .rule(Some("optout.example.com"), &[prefix("/", "optout")])
            .build(),
    );
    objects.push(
        Ingress::new("plain")
            .rule(Some("plain.example.com"), &[prefix("/", "plain")])
            .build(),
    );
    let manifests = Manifests::new();
    manifests.write("all.yaml", &objects);
    Setup {
        ca,
        manifests,
        _backends: backends,
    }
}

#[tokio::test]
async fn plain_http_to_a_tls_host_is_redirected_with_308() {
    let s = setup().await;
    let gw = Wasmgress::start(&s.manifests, &[]).await;

    let r = gw.get("secure.example.com", "/some/path?x=1&y=two").await;
    assert_redirect(
        &r,
        "https://secure.example.com/some/path?x=1&y=two",
        "plain GET to a TLS host",
    );
    let r = gw.get("secure.example.com", "/").await;
    assert_redirect(
        &r,
        "https://secure.example.com/",
        "plain GET / to a TLS host",
    );

    // Opted out: served over plain HTTP.
    let r = gw.get("optout.example.com", "/p?q=1").await;
    assert_eq!(
        r.backend().as_deref(),
        Some("optout"),
        "ssl-redirect \"false\": {}",
        r.summary()
    );
    // No TLS at all: served over plain HTTP.
    let r = gw.get("plain.example.com", "/p").await;
    assert_eq!(
        r.backend().as_deref(),
        Some("plain"),
        "host without TLS: {}",
        r.summary()
    );

    // Where the redirect points, the host is served.
    let tls = gw
        .tls(
            "secure.example.com",
            certs::client_config(s.ca.roots(), &[b"http/1.1"], BOTH_VERSIONS),
        )
        .await
        .expect("HTTPS to the redirect target verifies against the test CA");
    let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
    let r = conn
        .send(&Req::get("secure.example.com", "/some/path?x=1").scheme("https"))
        .await
        .expect("HTTPS request to the redirect target");
    assert_eq!(
        r.backend().as_deref(),
        Some("secure"),
        "HTTPS to the TLS host: {}",
        r.summary()
    );
}

#[tokio::test]
async fn redirect_names_the_configured_https_port() {
    let s = setup().await;
    let gw = Wasmgress::start(&s.manifests, &["--redirect-https-port", "8443"]).await;

    let r = gw.get("secure.example.com", "/a/b?c=d").await;
    assert_redirect(
        &r,
        "https://secure.example.com:8443/a/b?c=d",
        "plain GET with --redirect-https-port 8443",
    );
}

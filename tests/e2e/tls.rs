//! The TLS listener: SNI picks the certificate from the Ingresses' `spec.tls` Secrets (exact and
//! wildcard hosts, `data` and `stringData` Secrets), checked by a rustls client that trusts only
//! the test CA; an unknown name gets the generated default certificate (which that client
//! rejects); ALPN negotiates `h2` or `http/1.1` and requests work on each; TLS 1.2 and 1.3.

use http::Version;

use crate::harness::backend::several;
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::{Conn, Ingress, Manifests, Req, Wasmgress, prefix};

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// Two TLS hosts, two Secrets: each name gets its own certificate, verified against the CA, and
/// the request on that connection reaches that host's backend.
#[tokio::test]
async fn sni_picks_each_hosts_certificate() {
    let ca = TestCa::new();
    let alpha = ca.leaf(&["alpha.tls.test"]);
    let beta = ca.leaf(&["beta.tls.test"]);
    let (_backends, mut objects) = several(&["alpha", "beta"]).await;
    objects.push(alpha.secret("alpha-tls", false));
    objects.push(beta.secret("beta-tls", true));
    objects.push(
        Ingress::new("alpha")
            .tls(&["alpha.tls.test"], "alpha-tls")
            .rule(Some("alpha.tls.test"), &[prefix("/", "alpha")])
            .build(),
    );
    objects.push(
        Ingress::new("beta")
            .tls(&["beta.tls.test"], "beta-tls")
            .rule(Some("beta.tls.test"), &[prefix("/", "beta")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for (host, leaf) in [("alpha.tls.test", &alpha), ("beta.tls.test", &beta)] {
        let config = certs::client_config(ca.roots(), &[H1], BOTH_VERSIONS);
        let tls = gw.tls(host, config).await.unwrap_or_else(|e| {
            panic!("TLS handshake for {host} verified against the test CA: {e}")
        });
        let (_, cert) = certs::negotiated(&tls);
        assert_eq!(
            cert.as_ref(),
            Some(&leaf.der),
            "{host} was served another certificate"
        );
        let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
        let r = conn
            .send(&Req::get(host, "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("HTTPS request to {host}: {e}"));
        let backend = host.split('.').next().expect("first label");
        assert_eq!(
            r.backend().as_deref(),
            Some(backend),
            "HTTPS GET {host}/: {}",
            r.summary()
        );
    }
}

/// A `*.wild.tls.test` Secret serves any one-label name under it; an exact-host Secret for one
/// of those names takes precedence for that name.
#[tokio::test]
async fn wildcard_tls_hosts() {
    let ca = TestCa::new();
    let wild = ca.leaf(&["*.wild.tls.test"]);
    let special = ca.leaf(&["special.wild.tls.test"]);
    let (_backends, mut objects) = several(&["wild", "special"]).await;
    objects.push(wild.secret("wild-tls", false));
    objects.push(special.secret("special-tls", false));
    objects.push(
        Ingress::new("wild")
            .tls(&["*.wild.tls.test"], "wild-tls")
            .rule(Some("*.wild.tls.test"), &[prefix("/", "wild")])
            .build(),
    );
    objects.push(
        Ingress::new("special")
            .tls(&["special.wild.tls.test"], "special-tls")
            .rule(Some("special.wild.tls.test"), &[prefix("/", "special")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for (host, leaf, backend) in [
        ("one.wild.tls.test", &wild, "wild"),
        ("two.wild.tls.test", &wild, "wild"),
        ("special.wild.tls.test", &special, "special"),
    ] {
        let config = certs::client_config(ca.roots(), &[H2, H1], BOTH_VERSIONS);
        let tls = gw.tls(host, config).await.unwrap_or_else(|e| {
            panic!("TLS handshake for {host} verified against the test CA: {e}")
        });
        let (alpn, cert) = certs::negotiated(&tls);
        assert_eq!(
            cert.as_ref(),
            Some(&leaf.der),
            "{host} was served another certificate"
        );
        let mut conn = if alpn.as_deref() == Some(H2) {
            Conn::h2(tls).await.expect("HTTP/2 over TLS")
        } else {
            Conn::h1(tls).await.expect("HTTP/1.1 over TLS")
        };
        let r = conn
            .send(&Req::get(host, "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("HTTPS request to {host}: {e}"));
        assert_eq!(
            r.backend().as_deref(),
            Some(backend),
            "HTTPS GET {host}/: {}",
            r.summary()
        );
    }
}

/// A name no Secret covers (and a client sending no SNI) gets the generated default
/// certificate: a client trusting the test CA rejects it as a certificate problem, and a client
/// that looks without verifying sees a certificate that is none of ours.
#[tokio::test]
async fn unknown_name_gets_the_default_certificate() {
    let ca = TestCa::new();
    let known = ca.leaf(&["known.tls.test"]);
    let (_backends, mut objects) = several(&["known"]).await;
    objects.push(known.secret("known-tls", false));
    objects.push(
        Ingress::new("known")
            .tls(&["known.tls.test"], "known-tls")
            .rule(Some("known.tls.test"), &[prefix("/", "known")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    // The known name verifies, so the listener and the CA are sound.
    gw.tls(
        "known.tls.test",
        certs::client_config(ca.roots(), &[H1], BOTH_VERSIONS),
    )
    .await
    .expect("the known name verifies against the test CA");

    match gw
        .tls(
            "unknown.tls.test",
            certs::client_config(ca.roots(), &[H1], BOTH_VERSIONS),
        )
        .await
    {
        Ok(_) => panic!("an unknown name must not get a certificate the test CA vouches for"),
        Err(e) => assert!(
            certs::is_certificate_error(&e),
            "an unknown name should fail certificate verification, not: {e}"
        ),
    }

    for sni in ["unknown.tls.test", "127.0.0.1"] {
        let tls = gw
            .tls(sni, certs::insecure_config(&[H1]))
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni:?} without verification: {e}"));
        let (_, cert) = certs::negotiated(&tls);
        let cert = cert.unwrap_or_else(|| panic!("no certificate presented for SNI {sni:?}"));
        assert_ne!(
            cert, known.der,
            "SNI {sni:?} got known.tls.test's certificate"
        );
        let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
        let r = conn
            .send(&Req::get("unknown.tls.test", "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("HTTPS request with SNI {sni:?}: {e}"));
        assert_eq!(r.status, 404, "unknown host over TLS: {}", r.summary());
    }
}

/// ALPN: a client offering h2 gets h2 and an HTTP/2 answer; a client offering only http/1.1
/// (or nothing) gets HTTP/1.1. Both reach the backend.
#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["alpn.tls.test"]);
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(leaf.secret("alpn-tls", false));
    objects.push(
        Ingress::new("alpn")
            .tls(&["alpn.tls.test"], "alpn-tls")
            .rule(Some("alpn.tls.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    // (offered protocols, expected negotiated protocol, expected response version)
    type Case = (&'static [&'static [u8]], Option<&'static [u8]>, Version);
    let cases: [Case; 3] = [
        (&[H2, H1], Some(H2), Version::HTTP_2),
        (&[H1], Some(H1), Version::HTTP_11),
        (&[], None, Version::HTTP_11),
    ];
    for (offer, expected, version) in cases {
        let label = format!(
            "ALPN offer {:?}",
            offer
                .iter()
                .map(|p| String::from_utf8_lossy(p))
                .collect::<Vec<_>>()
        );
        let tls = gw
            .tls(
                "alpn.tls.test",
                certs::client_config(ca.roots(), offer, BOTH_VERSIONS),
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: handshake: {e}"));
        let (alpn, _) = certs::negotiated(&tls);
        assert_eq!(alpn.as_deref(), expected, "{label}: negotiated protocol");
        let mut conn = if version == Version::HTTP_2 {
            Conn::h2(tls).await.expect("HTTP/2 over TLS")
        } else {
            Conn::h1(tls).await.expect("HTTP/1.1 over TLS")
        };
        for path in ["/first", "/second"] {
            let r = conn
                .send(&Req::get("alpn.tls.test", path).scheme("https"))
                .await
                .unwrap_or_else(|e| panic!("{label}: request {path}: {e}"));
            assert_eq!(r.version, version, "{label}: response version");
            assert_eq!(
                r.backend().as_deref(),
                Some("app"),
                "{label}: {path}: {}",
                r.summary()
            );
            assert_eq!(
                r.expect_echo()["path"],
                path,
                "{label}: path at the backend"
            );
        }
    }
}

/// Clients limited to TLS 1.2, or to TLS 1.3, both connect and are served.
#[tokio::test]
async fn tls12_and_tls13_are_both_accepted() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["versions.tls.test"]);
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(leaf.secret("versions-tls", false));
    objects.push(
        Ingress::new("versions")
            .tls(&["versions.tls.test"], "versions-tls")
            .rule(Some("versions.tls.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for (only, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let tls = gw
            .tls(
                "versions.tls.test",
                certs::client_config(ca.roots(), &[H1], &[only]),
            )
            .await
            .unwrap_or_else(|e| panic!("{expected:?}-only client: handshake: {e}"));
        assert_eq!(certs::version(&tls), Some(expected));
        let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
        let r = conn
            .send(&Req::get("versions.tls.test", "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("{expected:?}: request: {e}"));
        assert_eq!(
            r.backend().as_deref(),
            Some("app"),
            "{expected:?}: {}",
            r.summary()
        );
    }
}

/// RFC 9113 section 3.4: on a connection that negotiated `h2`, an invalid preface is an HTTP/2
/// connection error, never answered as HTTP/1.1: GOAWAY PROTOCOL_ERROR, then a clean end with a
/// TLS close_notify (h2spec's "Sends invalid connection preface").
#[tokio::test]
async fn a_bad_http2_preface_gets_goaway_and_a_clean_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new();
    let leaf = ca.leaf(&["preface.tls.test"]);
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(leaf.secret("preface-tls", false));
    objects.push(
        Ingress::new("preface")
            .tls(&["preface.tls.test"], "preface-tls")
            .rule(Some("preface.tls.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;
    let mut tls = gw
        .tls(
            "preface.tls.test",
            certs::client_config(ca.roots(), &[H2], BOTH_VERSIONS),
        )
        .await
        .expect("handshake");
    assert_eq!(certs::negotiated(&tls).0.as_deref(), Some(H2));
    tls.write_all(b"INVALID CONNECTION PREFACE\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut got),
    )
    .await
    .expect("the connection ends");
    // rustls reports a close without close_notify as an UnexpectedEof error.
    read.expect("a clean end: close_notify, not a cut connection");
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "answered as HTTP/1.1: {:?}",
        String::from_utf8_lossy(&got)
    );
    // Frames: 9-byte headers; the last one the server sent is GOAWAY (type 7) with
    // PROTOCOL_ERROR (1), after its SETTINGS.
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push((rest[3], rest[9..9 + len.min(rest.len() - 9)].to_vec()));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    let (_, goaway) = frames
        .iter()
        .find(|(kind, _)| *kind == 7)
        .unwrap_or_else(|| panic!("no GOAWAY among the frames {frames:?}"));
    assert_eq!(goaway.get(4..8), Some(&[0, 0, 0, 1][..]), "PROTOCOL_ERROR");
}

/// The certificate `host` is served (the handshake trusts any certificate, so a wrong one is
/// seen rather than refused).
async fn served_certificate(
    gw: &Wasmgress,
    host: &str,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let tls = gw
        .tls(host, certs::insecure_config(&[H1]))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {host}: {e}"));
    certs::negotiated(&tls).1
}

/// Certificates are bound to hosts: an (older) Ingress listing another team's host in
/// `spec.tls` without a rule for it does not serve its certificate there; a certificate whose
/// names miss a listed host is not served for it; of two valid certificates for one host the
/// oldest Ingress with a rule for it wins. `validate` says why for each.
#[tokio::test]
async fn certificates_are_bound_to_the_hosts_an_ingress_routes() {
    let ca = TestCa::new();
    let evil = ca.leaf(&["evil.tls.test", "victim.tls.test"]);
    let victim = ca.leaf(&["victim.tls.test"]);
    let wrong = ca.leaf(&["elsewhere.tls.test"]);
    let older = ca.leaf(&["shared.tls.test"]);
    let newer = ca.leaf(&["shared.tls.test"]);
    let (_backends, mut objects) = several(&["evil", "victim", "app"]).await;
    for (leaf, name) in [
        (&evil, "evil-tls"),
        (&victim, "victim-tls"),
        (&wrong, "wrong-tls"),
        (&older, "older-tls"),
        (&newer, "newer-tls"),
    ] {
        objects.push(leaf.secret(name, false));
    }
    objects.push(
        Ingress::new("evil")
            .created("2020-01-01T00:00:00Z")
            .tls(&["evil.tls.test", "victim.tls.test"], "evil-tls")
            .rule(Some("evil.tls.test"), &[prefix("/", "evil")])
            .build(),
    );
    objects.push(
        Ingress::new("victim")
            .created("2025-01-01T00:00:00Z")
            .tls(&["victim.tls.test"], "victim-tls")
            .rule(Some("victim.tls.test"), &[prefix("/", "victim")])
            .build(),
    );
    objects.push(
        Ingress::new("mismatch")
            .tls(&["mismatch.tls.test"], "wrong-tls")
            .rule(Some("mismatch.tls.test"), &[prefix("/", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("shared-newer")
            .created("2025-01-01T00:00:00Z")
            .tls(&["shared.tls.test"], "newer-tls")
            .rule(Some("shared.tls.test"), &[prefix("/new", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("shared-older")
            .created("2021-01-01T00:00:00Z")
            .tls(&["shared.tls.test"], "older-tls")
            .rule(Some("shared.tls.test"), &[prefix("/old", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let victim_got = served_certificate(&gw, "victim.tls.test").await;
    assert_eq!(
        victim_got.as_ref(),
        Some(&victim.der),
        "victim.tls.test serves its own certificate"
    );
    let evil_got = served_certificate(&gw, "evil.tls.test").await;
    assert_eq!(
        evil_got.as_ref(),
        Some(&evil.der),
        "evil keeps its own host"
    );
    let mismatch = served_certificate(&gw, "mismatch.tls.test").await;
    assert_ne!(
        mismatch.as_ref(),
        Some(&wrong.der),
        "a certificate that does not name the host"
    );
    let shared = served_certificate(&gw, "shared.tls.test").await;
    assert_eq!(
        shared.as_ref(),
        Some(&older.der),
        "the oldest Ingress with a rule wins"
    );

    let (_, out, _) = crate::harness::process::validate(&m, &[]).await;
    let said = |ingress: &str, words: &str| {
        out.lines()
            .any(|l| l.contains(&format!("default/{ingress}")) && l.contains(words))
    };
    assert!(
        said("evil", "no rule of this Ingress is for victim.tls.test"),
        "{out}"
    );
    assert!(
        said("mismatch", "names do not cover mismatch.tls.test"),
        "{out}"
    );
    assert!(said("shared-newer", "shared-older"), "{out}");
}

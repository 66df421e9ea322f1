//! Client certificates (mTLS): ingress-nginx's `auth-tls-*` annotations (the built-in
//! `client-mtls` plugin and the host's soft verifier), through the real binary with real rustls
//! clients that present a certificate or not.
//!
//! As with nginx, the handshake never fails over the client certificate; each request is judged
//! on what the handshake established: `on` without a valid certificate answers 400 (or a 302 to
//! `auth-tls-error-page`), `optional` lets a missing one through but not a bad one,
//! `optional_no_ca` also lets through one from an unknown CA, `auth-tls-match-cn` answers 403.
//! The upstream gets `ssl-client-verify`, `ssl-client-subject-dn`, `ssl-client-issuer-dn` (and
//! `ssl-client-cert` when asked), never the client's own values of those headers. Beyond nginx,
//! a request for an mTLS host on a connection negotiated for another name (HTTP/2 connection
//! reuse, or a hand-written Host) answers 421, so the certificate check cannot be skipped. An
//! Ingress whose CA Secret is missing, unusable or out of reach is rejected, never served open.
//!
//! Every Ingress routes to one recording backend, so "the backend was not reached" is a count.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, SupportedProtocolVersion};
use serde_json::{Value, json};

use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::manifests::NS;
use crate::harness::recorder::Recorder;
use crate::harness::{Conn, Ingress, Manifests, Req, Resp, Wasmgress, prefix};

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

const SECRET: &str = "nginx.ingress.kubernetes.io/auth-tls-secret";
const VERIFY: &str = "nginx.ingress.kubernetes.io/auth-tls-verify-client";
const ERROR_PAGE: &str = "nginx.ingress.kubernetes.io/auth-tls-error-page";
const PASS: &str = "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream";
const MATCH_CN: &str = "nginx.ingress.kubernetes.io/auth-tls-match-cn";

/// The DN the client certificates of [`ClientCa::new`]`("Client CA")` name as issuer, in
/// RFC 2253 order (most specific first), as nginx's `$ssl_client_i_dn`.
const CLIENT_CA_DN: &str = "CN=Client CA,O=Example";

/// A CA that issues client certificates (rcgen), separate from the harness's server CA so a
/// client certificate can never pass for a server one or the other way round.
pub(crate) struct ClientCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A client certificate and its key.
pub(crate) struct ClientId {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) pem: String,
    key_der: Vec<u8>,
}

/// `O=Example, CN=cn` encoded in that order, as CAs usually do: RFC 2253 prints `CN=..,O=..`.
fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Example");
    dn.push(DnType::CommonName, cn);
    dn
}

impl ClientCa {
    pub(crate) fn new(cn: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate a client CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the client CA");
        Self { issuer }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate for `cn` with serial number `serial` (for the CRL), TLS client use.
    pub(crate) fn client(&self, cn: &str, serial: u64) -> ClientId {
        let key = KeyPair::generate().expect("generate a client key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the client certificate");
        ClientId {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A CRL (PEM) of this CA revoking `serials`, valid until 2100.
    fn crl(&self, serials: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2000, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: date_time_ymd(2000, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("sign the CRL")
        .pem()
        .expect("CRL as PEM")
    }
}

impl ClientId {
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// An Opaque Secret `ns/name` with `data` (base64-encoded here), as `kubectl create secret
/// generic --from-file` makes for `ca.crt` / `ca.crl`.
pub(crate) fn opaque_secret(ns: &str, name: &str, data: &[(&str, &str)]) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(b64(v))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "type": "Opaque",
        "data": data,
    })
}

/// The server side every test shares: one wildcard certificate for `*.mtls.test` from the
/// harness CA (so any two hosts here may validly share a connection, which the 421 test needs),
/// and the recording backend `app` every Ingress routes to.
struct Site {
    server_ca: TestCa,
    rec: Recorder,
    objects: Vec<Value>,
}

impl Site {
    async fn new() -> Self {
        let server_ca = TestCa::new();
        let rec = Recorder::start("app").await;
        let mut objects = rec.objects();
        objects.push(server_ca.leaf(&["*.mtls.test"]).secret("server-tls", false));
        Self {
            server_ca,
            rec,
            objects,
        }
    }

    /// An Ingress `name` serving `host` over TLS (the wildcard certificate) with `annotations`.
    fn ingress(&mut self, name: &str, host: &str, annotations: &[(&str, &str)]) {
        let ingress = annotations
            .iter()
            .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
            .tls(&[host], "server-tls")
            .rule(Some(host), &[prefix("/", "app")])
            .build();
        self.objects.push(ingress);
    }

    /// Writes the objects and starts the binary with `extra` flags (keep the folder alive).
    async fn start(&self, extra: &[&str]) -> (Manifests, Wasmgress) {
        let m = Manifests::new();
        m.write("all.yaml", &self.objects);
        let gw = Wasmgress::start(&m, extra).await;
        (m, gw)
    }

    /// A client trusting the server CA, offering `alpn` and `versions`, presenting `id` if any.
    fn client(
        &self,
        id: Option<&ClientId>,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("protocol versions supported by ring")
            .with_root_certificates(self.server_ca.roots());
        let mut config = match id {
            Some(id) => builder
                .with_client_auth_cert(vec![id.der.clone()], id.key())
                .expect("client certificate and key"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS connection with SNI `sni` speaking whatever ALPN chose (h2 when offered).
async fn open(gw: &Wasmgress, sni: &str, config: Arc<ClientConfig>) -> Conn {
    let tls = gw
        .tls(sni, config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni}: {e}"));
    if certs::negotiated(&tls).0.as_deref() == Some(H2) {
        Conn::h2(tls).await.expect("HTTP/2 over TLS")
    } else {
        Conn::h1(tls).await.expect("HTTP/1.1 over TLS")
    }
}

/// `GET https://host/` with `headers` on a fresh HTTP/1.1 connection whose SNI is `host`,
/// presenting `id` if any.
async fn get(site: &Site, gw: &Wasmgress, host: &str, id: Option<&ClientId>) -> Resp {
    get_with(site, gw, host, id, &[]).await
}

async fn get_with(
    site: &Site,
    gw: &Wasmgress,
    host: &str,
    id: Option<&ClientId>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut conn = open(gw, host, site.client(id, &[H1], BOTH_VERSIONS)).await;
    let req = headers
        .iter()
        .fold(Req::get(host, "/").scheme("https"), |r, (k, v)| {
            r.header(k, v)
        });
    conn.send(&req)
        .await
        .unwrap_or_else(|e| panic!("GET https://{host}/: {e}"))
}

/// Sends `what` and asserts a refusal with `status` that never reached the backend.
async fn refused(site: &Site, label: &str, status: u16, what: impl Future<Output = Resp>) -> Resp {
    let before = site.rec.arrived();
    let r = what.await;
    assert_eq!(r.status, status, "{label}: {}", r.summary());
    assert_eq!(
        site.rec.arrived(),
        before,
        "{label}: the backend must not be reached"
    );
    r
}

/// The single value the backend saw for `name`, or `None` if it saw none (more than one is a
/// failure: a client-sent copy survived beside the proxy's).
fn one(r: &Resp, name: &str) -> Option<String> {
    let seen = r.seen(name);
    assert!(
        seen.len() <= 1,
        "{name} reached the backend twice: {seen:?}"
    );
    seen.into_iter().next()
}

/// Percent-decoding, for `ssl-client-cert` (nginx's `$ssl_client_escaped_cert`).
fn url_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII escape");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// `auth-tls-verify-client: on` (the default): no certificate, one from another CA and (with
/// `auth-tls-match-cn`) one with the wrong subject are refused before the backend; a good one is
/// served with the verdict and both names, over HTTP/1.1 and h2, TLS 1.2 and 1.3, and on a
/// resumed session (which carries no certificate of its own); what a client
/// says about itself in `ssl-client-*` headers never reaches the backend; with
/// `auth-tls-error-page` a certificate failure redirects there instead of answering 400.
#[tokio::test]
async fn verify_on_refuses_what_is_not_a_valid_certificate() {
    let ca = ClientCa::new("Client CA");
    let other = ClientCa::new("Other CA");
    let good = ca.client("client.test", 1);
    let allowed = ca.client("allowed", 2);
    let stranger = other.client("client.test", 1);
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]));
    // `on` spelled out here, left to the default on the others.
    site.ingress(
        "on",
        "on.mtls.test",
        &[(SECRET, "client-ca"), (VERIFY, "on")],
    );
    site.ingress(
        "cn",
        "cn.mtls.test",
        &[(SECRET, "default/client-ca"), (MATCH_CN, "CN=allowed")],
    );
    site.ingress(
        "page",
        "page.mtls.test",
        &[
            (SECRET, "client-ca"),
            (ERROR_PAGE, "https://help.example/client-cert"),
        ],
    );
    let (_m, gw) = site.start(&[]).await;

    let r = refused(
        &site,
        "on, no certificate",
        400,
        get(&site, &gw, "on.mtls.test", None),
    )
    .await;
    assert!(
        r.text().contains("no required SSL certificate was sent"),
        "{}",
        r.summary()
    );
    // Claiming success in the headers changes nothing: the proxy judges the handshake.
    let spoofed = [
        ("ssl-client-verify", "SUCCESS"),
        ("ssl-client-subject-dn", "CN=allowed,O=Example"),
    ];
    refused(
        &site,
        "on, no certificate, spoofed ssl-client-verify: SUCCESS",
        400,
        get_with(&site, &gw, "on.mtls.test", None, &spoofed),
    )
    .await;
    refused(
        &site,
        "on, another CA's certificate",
        400,
        get(&site, &gw, "on.mtls.test", Some(&stranger)),
    )
    .await;

    // A good certificate over each protocol and TLS version: the handshake asked for it, the
    // request carries the proxy's verdict and names.
    for (alpn, version) in [
        (H1, &rustls::version::TLS13),
        (H2, &rustls::version::TLS13),
        (H1, &rustls::version::TLS12),
        (H2, &rustls::version::TLS12),
    ] {
        let label = format!(
            "on, good certificate, {} over {version:?}",
            String::from_utf8_lossy(alpn)
        );
        let mut conn = open(
            &gw,
            "on.mtls.test",
            site.client(Some(&good), &[alpn], &[version]),
        )
        .await;
        let r = conn
            .send(&Req::get("on.mtls.test", "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(r.status, 200, "{label}: {}", r.summary());
        assert_eq!(one(&r, "ssl-client-verify").as_deref(), Some("SUCCESS"));
        assert_eq!(
            one(&r, "ssl-client-subject-dn").as_deref(),
            Some("CN=client.test,O=Example"),
            "{label}"
        );
        assert_eq!(
            one(&r, "ssl-client-issuer-dn").as_deref(),
            Some(CLIENT_CA_DN),
            "{label}"
        );
        // Not asked for: the certificate itself stays with the proxy.
        assert_eq!(one(&r, "ssl-client-cert"), None, "{label}");
    }

    // A resumed session (no certificate sent again) keeps the verdict of the session it
    // resumes: the good certificate's, and a certificate-less one's 400. The second handshake
    // must really be a resumption, or this would only repeat the full-handshake case above.
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for (id, status) in [(Some(&good), 200), (None, 400)] {
            let config = site.client(id, &[H1], &[version]);
            for attempt in ["full", "resumed"] {
                let label = format!(
                    "{attempt} {version:?} handshake, certificate: {}",
                    id.is_some()
                );
                let tls = gw
                    .tls("on.mtls.test", config.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                if attempt == "resumed" {
                    assert_eq!(
                        tls.get_ref().1.handshake_kind(),
                        Some(rustls::HandshakeKind::Resumed),
                        "{label}"
                    );
                }
                let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
                let before = site.rec.arrived();
                let r = conn
                    .send(&Req::get("on.mtls.test", "/").scheme("https"))
                    .await
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(r.status, status, "{label}: {}", r.summary());
                if status == 200 {
                    assert_eq!(
                        one(&r, "ssl-client-subject-dn").as_deref(),
                        Some("CN=client.test,O=Example"),
                        "{label}"
                    );
                } else {
                    assert_eq!(site.rec.arrived(), before, "{label}: backend reached");
                }
            }
        }
    }

    // With a good certificate, a client's own ssl-client-* headers are replaced, not added to.
    let r = get_with(
        &site,
        &gw,
        "on.mtls.test",
        Some(&good),
        &[
            ("ssl-client-verify", "FAILED:made up"),
            ("ssl-client-subject-dn", "CN=admin,O=Example"),
            ("ssl-client-issuer-dn", "CN=Root,O=Elsewhere"),
            ("ssl-client-cert", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(one(&r, "ssl-client-verify").as_deref(), Some("SUCCESS"));
    assert_eq!(
        one(&r, "ssl-client-subject-dn").as_deref(),
        Some("CN=client.test,O=Example")
    );
    assert_eq!(
        one(&r, "ssl-client-issuer-dn").as_deref(),
        Some(CLIENT_CA_DN)
    );
    assert_eq!(one(&r, "ssl-client-cert"), None);

    // auth-tls-match-cn: a valid certificate with another subject is refused (403, nginx's
    // text); the matching one passes; no certificate is still the 400 of `on`.
    let r = refused(
        &site,
        "match-cn, CN=client.test",
        403,
        get(&site, &gw, "cn.mtls.test", Some(&good)),
    )
    .await;
    assert!(
        r.text().contains("client certificate unauthorized"),
        "{}",
        r.summary()
    );
    refused(
        &site,
        "match-cn, no certificate",
        400,
        get(&site, &gw, "cn.mtls.test", None),
    )
    .await;
    let r = get(&site, &gw, "cn.mtls.test", Some(&allowed)).await;
    assert_eq!(r.status, 200, "match-cn, CN=allowed: {}", r.summary());
    assert_eq!(
        one(&r, "ssl-client-subject-dn").as_deref(),
        Some("CN=allowed,O=Example")
    );

    // auth-tls-error-page: certificate failures (nginx's 495/496) redirect there.
    for (label, id) in [
        ("error page, no certificate", None),
        ("error page, another CA's certificate", Some(&stranger)),
    ] {
        let r = refused(&site, label, 302, get(&site, &gw, "page.mtls.test", id)).await;
        assert_eq!(
            r.header("location"),
            Some("https://help.example/client-cert"),
            "{label}: {}",
            r.summary()
        );
    }
    let r = get(&site, &gw, "page.mtls.test", Some(&good)).await;
    assert_eq!(
        r.status,
        200,
        "error page, good certificate: {}",
        r.summary()
    );
}

/// `optional`: no certificate is served as `NONE` (a client's claim of `SUCCESS` replaced), a
/// good one as `SUCCESS`, a bad one refused. `optional_no_ca`: a certificate from a CA not in the
/// bundle is served too, with nginx's `FAILED:<reason>` and its names for the upstream to judge.
#[tokio::test]
async fn optional_modes_serve_missing_and_unknown_ca_certificates() {
    let ca = ClientCa::new("Client CA");
    let other = ClientCa::new("Other CA");
    let good = ca.client("client.test", 1);
    let stranger = other.client("stranger.test", 1);
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]));
    site.ingress(
        "opt",
        "opt.mtls.test",
        &[(SECRET, "client-ca"), (VERIFY, "optional")],
    );
    site.ingress(
        "noca",
        "noca.mtls.test",
        &[(SECRET, "client-ca"), (VERIFY, "optional_no_ca")],
    );
    let (_m, gw) = site.start(&[]).await;

    for host in ["opt.mtls.test", "noca.mtls.test"] {
        let r = get_with(
            &site,
            &gw,
            host,
            None,
            &[
                ("ssl-client-verify", "SUCCESS"),
                ("ssl-client-subject-dn", "CN=admin,O=Example"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{host}, no certificate: {}", r.summary());
        assert_eq!(
            one(&r, "ssl-client-verify").as_deref(),
            Some("NONE"),
            "{host}: the client's SUCCESS must not reach the backend"
        );
        assert_eq!(one(&r, "ssl-client-subject-dn"), None, "{host}");
        assert_eq!(one(&r, "ssl-client-issuer-dn"), None, "{host}");

        let r = get(&site, &gw, host, Some(&good)).await;
        assert_eq!(r.status, 200, "{host}, good certificate: {}", r.summary());
        assert_eq!(one(&r, "ssl-client-verify").as_deref(), Some("SUCCESS"));
        assert_eq!(
            one(&r, "ssl-client-subject-dn").as_deref(),
            Some("CN=client.test,O=Example")
        );
    }

    refused(
        &site,
        "optional, another CA's certificate",
        400,
        get(&site, &gw, "opt.mtls.test", Some(&stranger)),
    )
    .await;

    let r = get(&site, &gw, "noca.mtls.test", Some(&stranger)).await;
    assert_eq!(
        r.status,
        200,
        "optional_no_ca, another CA's certificate: {}",
        r.summary()
    );
    let verify = one(&r, "ssl-client-verify").unwrap_or_default();
    assert!(verify.starts_with("FAILED:"), "{verify:?}");
    // OpenSSL's words for a leaf whose issuer is not in the bundle.
    assert_eq!(verify, "FAILED:unable to get local issuer certificate");
    assert_eq!(
        one(&r, "ssl-client-subject-dn").as_deref(),
        Some("CN=stranger.test,O=Example")
    );
    assert_eq!(
        one(&r, "ssl-client-issuer-dn").as_deref(),
        Some("CN=Other CA,O=Example")
    );
}

/// `auth-tls-pass-certificate-to-upstream: "true"`: the backend gets `ssl-client-cert`, the
/// client certificate as URL-encoded PEM (nginx's `$ssl_client_escaped_cert`), replacing any
/// the client sent; without a certificate (optional) none is passed, and the client's is removed.
#[tokio::test]
async fn pass_certificate_sends_the_url_encoded_pem() {
    let ca = ClientCa::new("Client CA");
    let good = ca.client("client.test", 1);
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]));
    site.ingress(
        "pass",
        "pass.mtls.test",
        &[(SECRET, "client-ca"), (VERIFY, "optional"), (PASS, "true")],
    );
    let (_m, gw) = site.start(&[]).await;

    let forged = ("ssl-client-cert", "-----BEGIN%20CERTIFICATE-----forged");
    let r = get_with(&site, &gw, "pass.mtls.test", Some(&good), &[forged]).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let escaped = one(&r, "ssl-client-cert").expect("ssl-client-cert reaches the backend");
    assert!(
        escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{escaped}"
    );
    let pem = url_decode(&escaped);
    assert_eq!(
        String::from_utf8_lossy(&pem).trim(),
        good.pem.trim(),
        "ssl-client-cert decodes to the client's PEM"
    );
    let parsed = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .expect("ssl-client-cert decodes to PEM certificates");
    assert_eq!(parsed, vec![good.der.clone()]);

    let r = get_with(&site, &gw, "pass.mtls.test", None, &[forged]).await;
    assert_eq!(r.status, 200, "no certificate: {}", r.summary());
    assert_eq!(one(&r, "ssl-client-verify").as_deref(), Some("NONE"));
    assert_eq!(
        one(&r, "ssl-client-cert"),
        None,
        "the client's own ssl-client-cert must not reach the backend"
    );
}

/// Connection reuse cannot skip the check: `secure` asks for certificates, `plain` does not,
/// and both are served the same `*.mtls.test` certificate, so a client may validly send a
/// request for `secure` on a connection it opened for `plain` (RFC 9113 section 9.1.1) — which
/// never asked for a certificate. That request answers 421 (the client retries on a new
/// connection) over h2 and HTTP/1.1, and never reaches the backend; so does one on a connection
/// without SNI. On a connection opened for `secure` with a good certificate, both hosts serve.
#[tokio::test]
async fn a_request_for_an_mtls_host_on_another_hosts_connection_is_misdirected() {
    let ca = ClientCa::new("Client CA");
    let good = ca.client("client.test", 1);
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]));
    site.ingress("secure", "secure.mtls.test", &[(SECRET, "client-ca")]);
    site.ingress("plain", "plain.mtls.test", &[]);
    let (_m, gw) = site.start(&[]).await;

    for alpn in [H2, H1] {
        let proto = String::from_utf8_lossy(alpn);
        // The client holds a good certificate; the handshake for `plain` never asks for it.
        let mut conn = open(
            &gw,
            "plain.mtls.test",
            site.client(Some(&good), &[alpn], BOTH_VERSIONS),
        )
        .await;
        let r = conn
            .send(&Req::get("plain.mtls.test", "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("{proto}: plain: {e}"));
        assert_eq!(r.status, 200, "{proto}: plain on its own connection");
        let before = site.rec.arrived();
        let r = conn
            .send(&Req::get("secure.mtls.test", "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("{proto}: secure on plain's connection: {e}"));
        assert_eq!(
            r.status,
            421,
            "{proto}: secure.mtls.test on a connection for plain.mtls.test: {}",
            r.summary()
        );
        assert_eq!(site.rec.arrived(), before, "{proto}: backend reached");
    }

    // No SNI at all (an IP address as the server name): the default certificate, so the client
    // accepts anything; the Host still names the mTLS host.
    let mut conn = open(&gw, "127.0.0.1", certs::insecure_config(&[H1])).await;
    let before = site.rec.arrived();
    let r = conn
        .send(&Req::get("secure.mtls.test", "/").scheme("https"))
        .await
        .expect("secure without SNI");
    assert_eq!(r.status, 421, "secure without SNI: {}", r.summary());
    assert_eq!(site.rec.arrived(), before, "no SNI: backend reached");

    let mut conn = open(
        &gw,
        "secure.mtls.test",
        site.client(Some(&good), &[H2], BOTH_VERSIONS),
    )
    .await;
    for host in ["secure.mtls.test", "plain.mtls.test"] {
        let r = conn
            .send(&Req::get(host, "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("{host} on secure's connection: {e}"));
        assert_eq!(
            r.status,
            200,
            "{host} on a connection for secure.mtls.test with a good certificate: {}",
            r.summary()
        );
    }
    let r = conn
        .send(&Req::get("secure.mtls.test", "/").scheme("https"))
        .await
        .expect("secure again");
    assert_eq!(one(&r, "ssl-client-verify").as_deref(), Some("SUCCESS"));
}

/// Revocation (`ca.crl`) and possession: a revoked certificate is refused (`on`) though its
/// handshake completes; a client presenting a good certificate without its private key (signing
/// the handshake with another key) is not served at all.
#[tokio::test]
async fn revoked_certificates_and_stolen_certificates_are_refused() {
    let ca = ClientCa::new("Client CA");
    let good = ca.client("client.test", 7);
    let revoked = ca.client("revoked.test", 66);
    let mut site = Site::new().await;
    site.objects.push(opaque_secret(
        NS,
        "client-ca",
        &[("ca.crt", &ca.pem()), ("ca.crl", &ca.crl(&[66]))],
    ));
    site.ingress("crl", "crl.mtls.test", &[(SECRET, "client-ca")]);
    let (_m, gw) = site.start(&[]).await;

    let r = get(&site, &gw, "crl.mtls.test", Some(&good)).await;
    assert_eq!(r.status, 200, "not revoked: {}", r.summary());
    assert_eq!(one(&r, "ssl-client-verify").as_deref(), Some("SUCCESS"));
    refused(
        &site,
        "revoked",
        400,
        get(&site, &gw, "crl.mtls.test", Some(&revoked)),
    )
    .await;

    // The good certificate, signed for with the revoked one's key: rustls's builder refuses
    // such a pair, so the resolver is made by hand.
    let thief_key = provider()
        .key_provider
        .load_private_key(revoked.key())
        .expect("load a key");
    let stolen = CertifiedKey::new(vec![good.der.clone()], thief_key);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(BOTH_VERSIONS)
        .expect("versions")
        .with_root_certificates(site.server_ca.roots())
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(stolen)));
    config.alpn_protocols = vec![H1.to_vec()];
    let before = site.rec.arrived();
    // With TLS 1.3 the client finishes its side before the server checks its signature, so the
    // refusal may show as a failed handshake or as a failed first request: either way, no answer.
    let outcome = match gw.tls("crl.mtls.test", Arc::new(config)).await {
        Err(e) => format!("handshake failed: {e}"),
        Ok(tls) => match Conn::h1(tls).await {
            Err(e) => format!("HTTP/1.1 handshake failed: {e}"),
            Ok(mut conn) => match conn
                .send(&Req::get("crl.mtls.test", "/").scheme("https"))
                .await
            {
                Err(e) => format!("request failed: {e}"),
                Ok(r) => panic!("a stolen certificate was answered: {}", r.summary()),
            },
        },
    };
    assert_eq!(
        site.rec.arrived(),
        before,
        "stolen certificate: backend reached ({outcome})"
    );
}

/// An Ingress whose client CA cannot be had is rejected whole, never served without the check:
/// a missing Secret, a Secret without `ca.crt`, a `ca.crt` that holds no certificate, and a
/// Secret in another namespace without `--allow-cross-namespace-resources` all leave their host
/// unserved (the default certificate; 404 and the backend not reached over TLS and plain
/// HTTP), and the binary names each. With the flag, the other namespace's CA is the one that counts.
#[tokio::test]
async fn an_unusable_ca_secret_rejects_the_ingress() {
    let ca = ClientCa::new("Client CA");
    let team_ca = ClientCa::new("Team CA");
    let good = ca.client("client.test", 1);
    let team_member = team_ca.client("member.test", 1);
    let mut site = Site::new().await;
    site.objects.extend([
        opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]),
        opaque_secret(NS, "misnamed", &[("ca.pem", &ca.pem())]),
        opaque_secret(NS, "garbage", &[("ca.crt", "not a certificate\n")]),
        opaque_secret("team", "client-ca", &[("ca.crt", &team_ca.pem())]),
    ]);
    site.ingress("ok", "ok.mtls.test", &[(SECRET, "client-ca")]);
    let broken = [
        ("missing", "no-such-ca"),
        ("no-ca-crt", "misnamed"),
        ("bad-ca-crt", "garbage"),
        ("cross", "team/client-ca"),
    ];
    for (name, secret) in broken {
        site.ingress(name, &format!("{name}.mtls.test"), &[(SECRET, secret)]);
    }
    let (_m, gw) = site.start(&[]).await;

    // The control: the same setup with a usable Secret is served.
    let r = get(&site, &gw, "ok.mtls.test", Some(&good)).await;
    assert_eq!(r.status, 200, "ok: {}", r.summary());

    for (name, _) in broken {
        let host = format!("{name}.mtls.test");
        // Rejected whole, so not even its TLS host is served: the handshake gets the default
        // certificate, which a client trusting the server CA refuses.
        match gw
            .tls(&host, site.client(Some(&good), &[H1], BOTH_VERSIONS))
            .await
        {
            Ok(_) => panic!("{name}: a rejected Ingress's TLS host is served"),
            Err(e) => assert!(
                certs::is_certificate_error(&e),
                "{name}: expected the default certificate, got: {e}"
            ),
        }
        // A client that accepts that certificate finds no route.
        let mut conn = open(&gw, &host, certs::insecure_config(&[H1])).await;
        let req = Req::get(&host, "/").scheme("https");
        refused(&site, &format!("{name} over TLS"), 404, async {
            conn.send(&req)
                .await
                .unwrap_or_else(|e| panic!("GET https://{host}/: {e}"))
        })
        .await;
        refused(
            &site,
            &format!("{name} over plain HTTP"),
            404,
            gw.get(&host, "/"),
        )
        .await;
        assert!(
            gw.stderr_mentions(&format!("{NS}/{name}")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }
    drop(gw);

    let (_m, gw) = site.start(&["--allow-cross-namespace-resources"]).await;
    let r = get(&site, &gw, "cross.mtls.test", Some(&team_member)).await;
    assert_eq!(r.status, 200, "cross, team's certificate: {}", r.summary());
    assert_eq!(
        one(&r, "ssl-client-issuer-dn").as_deref(),
        Some("CN=Team CA,O=Example")
    );
    refused(
        &site,
        "cross, default namespace's CA",
        400,
        get(&site, &gw, "cross.mtls.test", Some(&good)),
    )
    .await;
    refused(
        &site,
        "cross, no certificate",
        400,
        get(&site, &gw, "cross.mtls.test", None),
    )
    .await;
}

/// Plain HTTP to an mTLS host carries no certificate, so it is never served: where the
/// Ingress turns HTTPS redirects off, `on` answers 400 (stricter than nginx, whose
/// `ssl_verify_client` does not apply to plain connections and would serve it unchecked).
/// Where the redirect applies (the default with `spec.tls`), nginx redirects (308) to HTTPS,
/// where the client can present its certificate; `optional` does so here, and `on` should too.
#[tokio::test]
async fn plain_http_to_an_mtls_host_is_redirected_or_refused() {
    let ca = ClientCa::new("Client CA");
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]));
    site.ingress("on", "on.mtls.test", &[(SECRET, "client-ca")]);
    site.ingress(
        "opt",
        "opt.mtls.test",
        &[(SECRET, "client-ca"), (VERIFY, "optional")],
    );
    site.ingress(
        "stay",
        "stay.mtls.test",
        &[
            (SECRET, "client-ca"),
            ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
        ],
    );
    let (_m, gw) = site.start(&[]).await;

    refused(
        &site,
        "plain HTTP, on, ssl-redirect false",
        400,
        gw.get("stay.mtls.test", "/"),
    )
    .await;
    for host in ["opt.mtls.test", "on.mtls.test"] {
        let r = refused(
            &site,
            &format!("plain HTTP to {host}"),
            308,
            gw.get(host, "/"),
        )
        .await;
        assert_eq!(
            r.header("location"),
            Some(format!("https://{host}/").as_str()),
            "{host}"
        );
    }
}

/// Behind a TLS-terminating load balancer whose `X-Forwarded-Proto: https` is trusted, a
/// plain connection is not redirected, so the certificate rules still apply: with no
/// handshake there is no certificate, and `on` refuses (never forwards with `NONE`).
#[tokio::test]
async fn a_trusted_forwarded_proto_does_not_skip_the_certificate_check() {
    let ca = ClientCa::new("Client CA");
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "client-ca", &[("ca.crt", &ca.pem())]));
    site.ingress("on", "on.mtls.test", &[(SECRET, "client-ca")]);
    let trust = [
        "--use-forwarded-headers",
        "--proxy-real-ip-cidr",
        "127.0.0.1/32",
    ];
    let (_m, gw) = site.start(&trust).await;
    let req = Req::get("on.mtls.test", "/").header("x-forwarded-proto", "https");
    refused(&site, "plain HTTP claiming https", 400, gw.send(&req)).await;
}

/// Two Ingresses on one host with different CAs: the handshake asks under the older one's,
/// so a connection with that CA's certificate serves the older Ingress's paths and gets 421
/// on the other's (whose CA never judged it), instead of being let through.
#[tokio::test]
async fn a_certificate_passes_only_the_routes_of_the_ca_that_judged_it() {
    let (ca_a, ca_b) = (ClientCa::new("CA A"), ClientCa::new("CA B"));
    let alice = ca_a.client("alice", 10);
    let mut site = Site::new().await;
    site.objects
        .push(opaque_secret(NS, "ca-a", &[("ca.crt", &ca_a.pem())]));
    site.objects
        .push(opaque_secret(NS, "ca-b", &[("ca.crt", &ca_b.pem())]));
    site.ingress("a-first", "shared.mtls.test", &[(SECRET, "ca-a")]);
    site.objects.push(
        Ingress::new("b-second")
            .annotation(SECRET, "ca-b")
            .tls(&["shared.mtls.test"], "server-tls")
            .rule(Some("shared.mtls.test"), &[prefix("/b", "app")])
            .build(),
    );
    let (_m, gw) = site.start(&[]).await;
    let config = site.client(Some(&alice), &[H1], BOTH_VERSIONS);
    let mut conn = open(&gw, "shared.mtls.test", config).await;
    let get = |path: &'static str| Req::get("shared.mtls.test", path).scheme("https");
    let r = conn.send(&get("/")).await.expect("GET /");
    assert_eq!(r.status, 200, "CA A's route: {}", r.summary());
    let before = site.rec.arrived();
    let r = conn.send(&get("/b")).await.expect("GET /b");
    assert_eq!(
        r.status,
        421,
        "CA B's route on a CA A connection: {}",
        r.summary()
    );
    assert_eq!(
        site.rec.arrived(),
        before,
        "the backend must not be reached"
    );
}

//! The example plugins `jwt` and `key-rate-limit` (examples/plugins/) through the real binary,
//! loaded with `--plugin-dir`:
//!
//! - `jwt`: HS256 and RS256 tokens made here (ring's HMAC and RSA signer, with the test keys in
//!   examples/plugins/jwt/testdata) admit a request and put a claim in a header the client
//!   cannot forge; a missing, expired, tampered, `alg: none` or `alg`-confused token gets 401
//!   with an RFC 6750 challenge before the backend; issuer and audience are enforced; the
//!   grant (`clock, secrets(NAME)`) and bad keys reject the Ingress; a rotated Secret takes
//!   effect without a restart.
//! - `key-rate-limit`: a token bucket per API key (or per client address without one) with
//!   the rate-limit headers, 429 and `Retry-After` before the backend; the `counters` grant
//!   is required; buckets are shared within a namespace and never across namespaces.
//!
//! Every Ingress routes to a recording backend, so "the backend was not reached" is a count.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::manifests::{NS, ServicePort, endpoint_slice, ready, service};
use crate::harness::plugins::{Metrics, PluginDir};
use crate::harness::process::{RELOAD_LIMIT, assert_no_error_about, validate, validate_error};
use crate::harness::recorder::{Recorder, refused};
use crate::harness::{Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

const PLUGINS: &str = "wasmgress.io/plugins";
const JWT_GRANT: &str = "wasmgress.io/plugin.jwt.capabilities";
const JWT_SECRET: &str = "wasmgress.io/plugin.jwt.secret";
const JWT_ISSUER: &str = "wasmgress.io/plugin.jwt.issuer";
const JWT_AUDIENCE: &str = "wasmgress.io/plugin.jwt.audience";
const JWT_CLAIM_HEADERS: &str = "wasmgress.io/plugin.jwt.claim-headers";
const RL_GRANT: &str = "wasmgress.io/plugin.key-rate-limit.capabilities";
const RL_RATE: &str = "wasmgress.io/plugin.key-rate-limit.rate";
const RL_BURST: &str = "wasmgress.io/plugin.key-rate-limit.burst";
const RL_ANONYMOUS: &str = "wasmgress.io/plugin.key-rate-limit.anonymous";

/// The HS256 shared secret of Secret `jwt-keys` (40 bytes: at least the 32 RFC 7518 asks).
const HS_SECRET: &[u8] = b"e2e-hs256-shared-secret-0123456789abcdef";
/// The secret `jwt-keys` is rotated to.
const HS_SECRET_NEW: &[u8] = b"e2e-hs256-rotated-secret-fedcba9876543210";

/// Test keys of the jwt example (throwaway, see its testdata/README.md).
const RSA1_PRIVATE: &str = include_str!("../../examples/plugins/jwt/testdata/rsa1-private.pem");
const RSA1_PUBLIC: &str = include_str!("../../examples/plugins/jwt/testdata/rsa1-public.pem");
const RSA1_PUBLIC_PKCS1: &str =
    include_str!("../../examples/plugins/jwt/testdata/rsa1-public-pkcs1.pem");
const RSA2_PRIVATE: &str = include_str!("../../examples/plugins/jwt/testdata/rsa2-private.pem");
const RSA1024_PUBLIC: &str = include_str!("../../examples/plugins/jwt/testdata/rsa1024-public.pem");

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "api";

/// Trust loopback (where the tests connect from) to say who the client is.
const TRUST_LOOPBACK: [&str; 3] = [
    "--use-forwarded-headers",
    "--proxy-real-ip-cidr",
    "127.0.0.1/32",
];

// ---------------------------------------------------------------------------------------------
// Helpers: manifests

/// An Ingress `ns/name` for `host`, everything to Service `app`, with `annotations`.
fn ingress_in(ns: &str, name: &str, host: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name).namespace(ns), |ing, (k, v)| {
            ing.annotation(k, v)
        })
        .rule(Some(host), &[prefix("/", "app")])
        .build()
}

/// An Ingress `default/name` for `host`, everything to Service `app`, with `annotations`.
fn ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> Value {
    ingress_in(NS, name, host, annotations)
}

/// The Service `app` in namespace `ns`, reaching the recording backend `rec`.
fn app_service_in(ns: &str, rec: &Recorder) -> Vec<Value> {
    let port = rec.addr.port();
    vec![
        service(
            ns,
            "app",
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(port),
            }],
        ),
        endpoint_slice(
            ns,
            "app",
            "app-slice",
            &[(Some("http"), port)],
            &[ready(&rec.addr.ip().to_string())],
        ),
    ]
}

/// An Opaque Secret `ns/name` with `data` (base64-encoded here).
fn secret_in(ns: &str, name: &str, data: &[(&str, &[u8])]) -> Value {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
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

/// An Opaque Secret `default/name` with `data`.
fn secret(name: &str, data: &[(&str, &[u8])]) -> Value {
    secret_in(NS, name, data)
}

/// The recording backend `app` (Service `app` in [`NS`]) and a folder holding it and `more`.
async fn app_with(more: Vec<Value>) -> (Recorder, Manifests) {
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.extend(more);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    (rec, m)
}

/// The annotations attaching `jwt` with the grant `clock, secrets(SECRET)`, reading `secret`,
/// with `sub` sent upstream as `X-User`, plus `more`.
fn jwt_annotations<'a>(
    grant: &'a str,
    secret: &'a str,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut a = vec![
        (PLUGINS, "jwt"),
        (JWT_GRANT, grant),
        (JWT_SECRET, secret),
        (JWT_CLAIM_HEADERS, "sub: X-User"),
    ];
    a.extend_from_slice(more);
    a
}

/// The annotations attaching `key-rate-limit` granted `counters`, 1 token a second, burst 3,
/// plus `more`.
fn limit_annotations<'a>(more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut a = vec![
        (PLUGINS, "key-rate-limit"),
        (RL_GRANT, "counters"),
        (RL_RATE, "1"),
        (RL_BURST, "3"),
    ];
    a.extend_from_slice(more);
    a
}

// ---------------------------------------------------------------------------------------------
// Helpers: validate output and answers

/// Sends `req` and asserts the backend `app` answered it.
async fn admitted(gw: &Wasmgress, label: &str, req: &Req) -> Resp {
    let r = gw.send(req).await;
    assert_eq!(r.status, 200, "{label}: {}", r.summary());
    assert_eq!(
        r.backend().as_deref(),
        Some("app"),
        "{label}: {}",
        r.summary()
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Helpers: tokens

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `base64url(header).base64url(claims)`: what a JWS signs.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A compact JWS with `header`, signed HMAC-SHA256 with `secret` whatever `header` says.
fn hmac_signed(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// An HS256 token for `claims`.
fn hs256(secret: &[u8], claims: &Value) -> String {
    hmac_signed(secret, &json!({"alg": "HS256", "typ": "JWT"}), claims)
}

/// The DER body of the first PEM block of `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("PEM body is base64")
}

/// An RS256 token for `claims`, signed with the PKCS#8 private key `private_pem`.
fn rs256(private_pem: &str, claims: &Value) -> String {
    let der = pem_der(private_pem);
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .unwrap_or_else(|e| panic!("the test RSA key is PKCS#8: {e}"));
    let input = signing_input(&json!({"alg": "RS256", "typ": "JWT"}), claims);
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("RSA signing");
    format!("{input}.{}", b64url(&signature))
}

/// Claims for `sub`, valid for ten minutes.
fn claims(sub: &str) -> Value {
    let now = now();
    json!({"sub": sub, "iat": now, "exp": now + 600})
}

/// `GET host/` with `Authorization: Bearer TOKEN`.
fn bearer(host: &str, token: &str) -> Req {
    Req::get(host, "/").header("authorization", &format!("Bearer {token}"))
}

/// Asserts `r` carries the RFC 6750 `invalid_token` challenge with `description`.
fn assert_invalid_token(r: &Resp, label: &str, description: &str) {
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{label}: no WWW-Authenticate on the 401: {:?}", r.headers));
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
        "{label}: the challenge should be `Bearer error=\"invalid_token\", ...`: {challenge}"
    );
    assert!(
        challenge.contains(&format!(r#"error_description="{description}""#)),
        "{label}: the challenge should say why ({description}): {challenge}"
    );
}

// ---------------------------------------------------------------------------------------------
// jwt: 1. A valid token and the claim header

/// A user with a valid HS256 token reaches the backend, which sees the token's `sub` as
/// `X-User`; a client that sends its own `X-User` without a token is refused before the
/// backend, with a valid token its `X-User` is replaced by the claim, and with a valid token
/// that has no `sub` the backend sees no `X-User` at all.
#[tokio::test]
async fn jwt_a_valid_hs256_token_passes_with_its_subject_as_x_user() {
    let plugins = PluginDir::with(&["jwt"]);
    let (rec, m) = app_with(vec![
        secret("jwt-keys", &[("hs256-secret", HS_SECRET)]),
        ingress(
            "jwt",
            "jwt.test",
            &jwt_annotations("clock, secrets(jwt-keys)", "jwt-keys", &[]),
        ),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let token = hs256(HS_SECRET, &claims("alice"));
    let r = admitted(&gw, "valid token", &bearer("jwt.test", &token)).await;
    assert_eq!(r.seen("x-user"), ["alice"], "the sub claim as X-User");

    let r = refused(
        &gw,
        &rec,
        "X-User without a token",
        401,
        &Req::get("jwt.test", "/").header("x-user", "admin"),
    )
    .await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer"),
        "{}",
        r.summary()
    );

    let r = admitted(
        &gw,
        "valid token and a forged X-User",
        &bearer("jwt.test", &token).header("x-user", "admin"),
    )
    .await;
    assert_eq!(
        r.seen("x-user"),
        ["alice"],
        "the client's X-User is replaced by the claim, not added to"
    );

    let now = now();
    let no_sub = hs256(HS_SECRET, &json!({"exp": now + 600}));
    let r = admitted(
        &gw,
        "valid token without sub and a forged X-User",
        &bearer("jwt.test", &no_sub).header("x-user", "admin"),
    )
    .await;
    assert!(
        r.seen("x-user").is_empty(),
        "without a sub claim the client's X-User must still be removed: {:?}",
        r.seen("x-user")
    );
    assert_eq!(
        rec.arrived(),
        3,
        "only the three valid tokens reached the backend"
    );
}

// ---------------------------------------------------------------------------------------------
// jwt: 2. Refused tokens

/// No token, or a token in another scheme, gets 401 with a bare `WWW-Authenticate: Bearer`;
/// an expired token, one without `exp`, one not valid yet, a tampered payload, `alg: none`
/// (with or without a signature), a token signed with another secret, and an HS256 token
/// signed with the RSA public key's PEM as the HMAC secret against a route that only has that
/// RS256 key (the classic `alg` confusion) each get 401 with `error="invalid_token"` and the
/// reason; the backend sees none of them.
#[tokio::test]
async fn jwt_missing_and_invalid_tokens_get_401_before_the_backend() {
    let plugins = PluginDir::with(&["jwt"]);
    let (rec, m) = app_with(vec![
        secret("jwt-keys", &[("hs256-secret", HS_SECRET)]),
        secret("jwt-rsa", &[("rs256.pem", RSA1_PUBLIC.as_bytes())]),
        ingress(
            "jwt",
            "jwt.test",
            &jwt_annotations("clock, secrets(jwt-keys)", "jwt-keys", &[]),
        ),
        ingress(
            "rs-only",
            "rs.test",
            &jwt_annotations("clock, secrets(jwt-rsa)", "jwt-rsa", &[]),
        ),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    // Both routes work, so what follows is refused by the plugin, not by a missing route.
    admitted(
        &gw,
        "valid HS256",
        &bearer("jwt.test", &hs256(HS_SECRET, &claims("alice"))),
    )
    .await;
    admitted(
        &gw,
        "valid RS256",
        &bearer("rs.test", &rs256(RSA1_PRIVATE, &claims("alice"))),
    )
    .await;
    let reached = rec.arrived();
    assert_eq!(reached, 2);

    for (label, req) in [
        ("no Authorization", Req::get("jwt.test", "/")),
        (
            "Basic credentials",
            Req::get("jwt.test", "/").header("authorization", "Basic YWxpY2U6c2VjcmV0"),
        ),
        (
            "an empty bearer token",
            Req::get("jwt.test", "/").header("authorization", "Bearer "),
        ),
    ] {
        let r = refused(&gw, &rec, label, 401, &req).await;
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{label}: a bare challenge (RFC 6750 §3.1: no error code without a token)"
        );
    }

    let now = now();
    let valid = hs256(HS_SECRET, &claims("alice"));
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = b64url(
            json!({"sub": "admin", "iat": now, "exp": now + 600})
                .to_string()
                .as_bytes(),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let none_header = json!({"alg": "none", "typ": "JWT"});
    let alg_none_unsigned = format!("{}.", signing_input(&none_header, &claims("admin")));
    let alg_none_signed = hmac_signed(HS_SECRET, &none_header, &claims("admin"));
    let confused = hs256(RSA1_PUBLIC.as_bytes(), &claims("admin"));
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "expired an hour ago",
            "jwt.test",
            hs256(
                HS_SECRET,
                &json!({"sub": "alice", "iat": now - 7200, "exp": now - 3600}),
            ),
            "token expired",
        ),
        (
            "no exp",
            "jwt.test",
            hs256(HS_SECRET, &json!({"sub": "alice", "iat": now})),
            "token has no expiry",
        ),
        (
            "nbf in an hour",
            "jwt.test",
            hs256(
                HS_SECRET,
                &json!({"sub": "alice", "nbf": now + 3600, "exp": now + 7200}),
            ),
            "token not yet valid",
        ),
        ("tampered payload", "jwt.test", tampered, "bad signature"),
        (
            "signed with another secret",
            "jwt.test",
            hs256(b"another-secret-that-is-long-enough-000", &claims("alice")),
            "bad signature",
        ),
        (
            "alg none, no signature",
            "jwt.test",
            alg_none_unsigned,
            "malformed token",
        ),
        (
            "alg none, signed",
            "jwt.test",
            alg_none_signed,
            "unsupported algorithm",
        ),
        (
            "HS256 with the RSA public key as secret (alg confusion)",
            "rs.test",
            confused,
            "unsupported algorithm",
        ),
        (
            "not a JWT",
            "jwt.test",
            "not-a-token".to_owned(),
            "malformed token",
        ),
    ];
    for (label, host, token, why) in &cases {
        let r = refused(&gw, &rec, label, 401, &bearer(host, token)).await;
        assert_invalid_token(&r, label, why);
    }
    assert_eq!(
        rec.arrived(),
        reached,
        "no refused token may reach the backend"
    );
}

// ---------------------------------------------------------------------------------------------
// jwt: 3. RS256, issuer and audience

/// With an RS256 public key (SPKI PEM) and `issuer`/`audience` annotations, a token signed with
/// the matching private key, from that issuer and for that audience (a string or one member of
/// an array), passes; a wrong or missing issuer, a wrong or missing audience, or a signature by
/// another key gets 401. A PKCS#1 (`RSA PUBLIC KEY`) PEM of the same key works too.
#[tokio::test]
async fn jwt_rs256_with_issuer_and_audience() {
    let plugins = PluginDir::with(&["jwt"]);
    let (rec, m) = app_with(vec![
        secret("jwt-rsa", &[("rs256.pem", RSA1_PUBLIC.as_bytes())]),
        secret("jwt-pkcs1", &[("rs256.pem", RSA1_PUBLIC_PKCS1.as_bytes())]),
        ingress(
            "rs",
            "rs.test",
            &jwt_annotations(
                "clock, secrets(jwt-rsa)",
                "jwt-rsa",
                &[(JWT_ISSUER, ISSUER), (JWT_AUDIENCE, AUDIENCE)],
            ),
        ),
        ingress(
            "pkcs1",
            "pkcs1.test",
            &jwt_annotations("clock, secrets(jwt-pkcs1)", "jwt-pkcs1", &[]),
        ),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let now = now();
    let with = |iss: Option<&str>, aud: Option<Value>| {
        let mut c = json!({"sub": "rita", "iat": now, "exp": now + 600});
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        c
    };

    for (label, c) in [
        ("aud a string", with(Some(ISSUER), Some(json!(AUDIENCE)))),
        (
            "aud an array",
            with(Some(ISSUER), Some(json!(["web", AUDIENCE]))),
        ),
    ] {
        let r = admitted(&gw, label, &bearer("rs.test", &rs256(RSA1_PRIVATE, &c))).await;
        assert_eq!(r.seen("x-user"), ["rita"], "{label}");
    }
    let r = admitted(
        &gw,
        "PKCS#1 public key",
        &bearer("pkcs1.test", &rs256(RSA1_PRIVATE, &claims("pat"))),
    )
    .await;
    assert_eq!(r.seen("x-user"), ["pat"]);
    let reached = rec.arrived();
    assert_eq!(reached, 3);

    let cases = [
        (
            "wrong issuer",
            rs256(
                RSA1_PRIVATE,
                &with(Some("https://evil.example"), Some(json!(AUDIENCE))),
            ),
            "wrong issuer",
        ),
        (
            "no issuer",
            rs256(RSA1_PRIVATE, &with(None, Some(json!(AUDIENCE)))),
            "wrong issuer",
        ),
        (
            "wrong audience",
            rs256(
                RSA1_PRIVATE,
                &with(Some(ISSUER), Some(json!(["web", "admin"]))),
            ),
            "wrong audience",
        ),
        (
            "no audience",
            rs256(RSA1_PRIVATE, &with(Some(ISSUER), None)),
            "wrong audience",
        ),
        (
            "signed by another key",
            rs256(RSA2_PRIVATE, &with(Some(ISSUER), Some(json!(AUDIENCE)))),
            "bad signature",
        ),
    ];
    for (label, token, why) in &cases {
        let r = refused(&gw, &rec, label, 401, &bearer("rs.test", token)).await;
        assert_invalid_token(&r, label, why);
    }
    assert_eq!(
        rec.arrived(),
        reached,
        "no refused token reached the backend"
    );
}

// ---------------------------------------------------------------------------------------------
// jwt: 4. Grants and bad keys

/// An operator who attaches `jwt` without granting `clock` and `secrets`, who points it at a
/// Secret the grant does not name, or whose Secret holds a 1024-bit RSA key or a 9-byte HS256
/// secret sees the Ingress rejected (`validate` names the annotation and the problem; the
/// running binary answers 404), while the correctly granted neighbour is served.
#[tokio::test]
async fn jwt_grants_and_bad_keys_reject_the_ingress() {
    let plugins = PluginDir::with(&["jwt"]);
    let (rec, m) = app_with(vec![
        secret("jwt-keys", &[("hs256-secret", HS_SECRET)]),
        secret("other", &[("hs256-secret", HS_SECRET)]),
        secret("jwt-weak", &[("rs256.pem", RSA1024_PUBLIC.as_bytes())]),
        secret("jwt-short", &[("hs256-secret", b"too-short")]),
        ingress(
            "no-grant",
            "no-grant.test",
            &[(PLUGINS, "jwt"), (JWT_SECRET, "jwt-keys")],
        ),
        ingress(
            "ungranted-secret",
            "ungranted.test",
            &jwt_annotations("clock, secrets(jwt-keys)", "other", &[]),
        ),
        ingress(
            "weak-rsa",
            "weak.test",
            &jwt_annotations("clock, secrets(jwt-weak)", "jwt-weak", &[]),
        ),
        ingress(
            "short-hs",
            "short.test",
            &jwt_annotations("clock, secrets(jwt-short)", "jwt-short", &[]),
        ),
        ingress(
            "fine",
            "fine.test",
            &jwt_annotations("clock, secrets(jwt-keys)", "jwt-keys", &[]),
        ),
    ])
    .await;

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "no-grant", JWT_GRANT);
    for missing in ["`clock`", "`secrets`"] {
        assert!(line.contains(missing), "names {missing}: {line}");
    }
    for not_imported in ["`random`", "`counters`"] {
        assert!(
            !line.contains(not_imported),
            "jwt does not import {not_imported}, so it must not be asked for: {line}"
        );
    }
    let line = validate_error(&stdout, NS, "ungranted-secret", JWT_SECRET);
    assert!(line.contains("`other`"), "names the Secret: {line}");
    let line = validate_error(&stdout, NS, "weak-rsa", JWT_SECRET);
    assert!(
        line.contains("rs256.pem") && line.contains("1024") && line.contains("2048"),
        "names the entry, its size and the minimum: {line}"
    );
    let line = validate_error(&stdout, NS, "short-hs", JWT_SECRET);
    assert!(
        line.contains("hs256-secret") && line.contains("9 bytes") && line.contains("32"),
        "names the entry, its length and the minimum: {line}"
    );
    assert_no_error_about(&stdout, NS, "fine");

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    let token = hs256(HS_SECRET, &claims("alice"));
    for host in ["no-grant.test", "ungranted.test", "weak.test", "short.test"] {
        let r = refused(&gw, &rec, host, 404, &bearer(host, &token)).await;
        assert!(r.text().starts_with("no route"), "{host}: {}", r.summary());
    }
    admitted(&gw, "fine.test", &bearer("fine.test", &token)).await;
    assert_eq!(rec.arrived(), 1);
}

// ---------------------------------------------------------------------------------------------
// jwt: 5. Key rotation

/// Rotating the HS256 secret in the Secret's manifest takes effect in the running process:
/// once the new secret is accepted, a token signed with the old one gets 401.
#[tokio::test]
async fn jwt_a_rotated_secret_takes_effect_without_a_restart() {
    let plugins = PluginDir::with(&["jwt"]);
    let (rec, m) = app_with(vec![ingress(
        "jwt",
        "jwt.test",
        &jwt_annotations("clock, secrets(jwt-keys)", "jwt-keys", &[]),
    )])
    .await;
    m.write(
        "secret.yaml",
        &[secret("jwt-keys", &[("hs256-secret", HS_SECRET)])],
    );
    let mut gw = Wasmgress::start(&m, &plugins.args()).await;
    let pid = gw.pid();
    let old = hs256(HS_SECRET, &claims("old"));
    let new = hs256(HS_SECRET_NEW, &claims("new"));
    let r = admitted(
        &gw,
        "old secret before the rotation",
        &bearer("jwt.test", &old),
    )
    .await;
    assert_eq!(r.seen("x-user"), ["old"]);
    let r = refused(
        &gw,
        &rec,
        "new secret before the rotation",
        401,
        &bearer("jwt.test", &new),
    )
    .await;
    assert_invalid_token(&r, "new secret before the rotation", "bad signature");

    m.write(
        "secret.yaml",
        &[secret("jwt-keys", &[("hs256-secret", HS_SECRET_NEW)])],
    );
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let r = gw.send(&bearer("jwt.test", &new)).await;
        if r.status == 200 {
            assert_eq!(r.seen("x-user"), ["new"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new secret is still refused {RELOAD_LIMIT:?} after the Secret changed: {}",
            r.summary()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refused(
        &gw,
        &rec,
        "old secret after the rotation",
        401,
        &bearer("jwt.test", &old),
    )
    .await;
    assert_invalid_token(&r, "old secret after the rotation", "bad signature");
    admitted(
        &gw,
        "new secret after the rotation",
        &bearer("jwt.test", &new),
    )
    .await;
    assert!(gw.is_running(), "a rotation must not restart wasmgress");
    assert_eq!(gw.pid(), pid, "same process throughout");
}

// ---------------------------------------------------------------------------------------------
// key-rate-limit

/// The rate-limit headers of `r`: (`x-ratelimit-limit`, `x-ratelimit-remaining`).
fn limit_headers(r: &Resp) -> (Option<&str>, Option<&str>) {
    (
        r.header("x-ratelimit-limit"),
        r.header("x-ratelimit-remaining"),
    )
}

/// `GET host/` with `X-Api-Key: key`.
fn keyed(host: &str, key: &str) -> Req {
    Req::get(host, "/").header("x-api-key", key)
}

/// Sends `req` three times: each passes with `X-RateLimit-Limit: 3` and
/// `X-RateLimit-Remaining` 2, 1, 0; then a fourth gets 429 with `Retry-After: 1` and the
/// same headers (remaining 0), without reaching the backend.
async fn drain(gw: &Wasmgress, rec: &Recorder, label: &str, req: &Req) -> Resp {
    for remaining in ["2", "1", "0"] {
        let r = admitted(gw, label, req).await;
        assert_eq!(
            limit_headers(&r),
            (Some("3"), Some(remaining)),
            "{label}: the rate-limit headers of a passing request"
        );
    }
    let r = refused(gw, rec, &format!("{label}, 4th"), 429, req).await;
    assert_eq!(
        r.header("retry-after"),
        Some("1"),
        "{label}: {:?}",
        r.headers
    );
    assert_eq!(
        limit_headers(&r),
        (Some("3"), Some("0")),
        "{label}: the 429 carries the rate-limit headers too"
    );
    r
}

/// With `rate: 1`, `burst: 3`, a client using API key `a` gets three immediate requests
/// through (each saying the limit is 3 and how many are left: 2, 1, 0); the fourth gets 429
/// with `Retry-After: 1` and never reaches the backend. Key `b` has its own full bucket. About
/// a second later key `a` has earned one more request, and only one.
#[tokio::test]
async fn key_rate_limit_a_bucket_per_api_key() {
    let plugins = PluginDir::with(&["key-rate-limit"]);
    let (rec, m) = app_with(vec![ingress(
        "limited",
        "limited.test",
        &limit_annotations(&[]),
    )])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = drain(&gw, &rec, "key a", &keyed("limited.test", "a")).await;
    assert_eq!(
        r.text(),
        "too many requests for this key\n",
        "{}",
        r.summary()
    );
    let limited_at = Instant::now();

    let r = admitted(&gw, "key b", &keyed("limited.test", "b")).await;
    assert_eq!(
        limit_headers(&r),
        (Some("3"), Some("2")),
        "key b's own bucket"
    );

    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(limited_at.elapsed())).await;
    let deadline = limited_at + Duration::from_millis(2500);
    let r = loop {
        let r = gw.send(&keyed("limited.test", "a")).await;
        if r.status == 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "key a was still limited {:?} after its 429: {}",
            limited_at.elapsed(),
            r.summary()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(
        limit_headers(&r),
        (Some("3"), Some("0")),
        "one token earned, now spent"
    );
    refused(
        &gw,
        &rec,
        "key a right after its refill",
        429,
        &keyed("limited.test", "a"),
    )
    .await;
    assert_eq!(rec.arrived(), 5, "3 of a, 1 of b, 1 of a after the refill");

    // The plugin's own metric, declared in `describe` and counted through `metrics.add`.
    let metrics = Metrics::scrape(&gw).await;
    let sample = |decision: &str| {
        let want = format!(
            "wasmgress_plugin_key_rate_limit_decisions_total{{plugin=\"key-rate-limit\",namespace=\"default\",decision=\"{decision}\"}}"
        );
        metrics.text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == want).then(|| value.to_string())
        })
    };
    let admitted = sample("admitted").and_then(|v| v.parse::<u64>().ok());
    let limited = sample("limited").and_then(|v| v.parse::<u64>().ok());
    // Limited: the two 429s above, plus any retry of the refill loop that came too early.
    assert!(
        admitted == Some(5) && limited.is_some_and(|n| n >= 2),
        "the plugin's decisions on /metrics (admitted {admitted:?}, limited {limited:?}):\n{}",
        metrics
            .text
            .lines()
            .filter(|l| l.contains("key_rate_limit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Without an API key (or with an empty one) requests are limited per client address: the
/// client at 10.0.0.1 (a trusted `X-Forwarded-For`) gets three through and then 429, while
/// 10.0.0.2 still passes and 10.0.0.1 with a key uses the key's bucket. With
/// `anonymous: deny` a request without a key gets 401 before the backend.
#[tokio::test]
async fn key_rate_limit_without_a_key_limits_the_client_address() {
    let plugins = PluginDir::with(&["key-rate-limit"]);
    let (rec, m) = app_with(vec![
        ingress("anon", "anon.test", &limit_annotations(&[])),
        ingress(
            "deny",
            "deny.test",
            &limit_annotations(&[(RL_ANONYMOUS, "deny")]),
        ),
    ])
    .await;
    let mut args = plugins.args().to_vec();
    args.extend_from_slice(&TRUST_LOOPBACK);
    let gw = Wasmgress::start(&m, &args).await;
    let from = |client: &str| Req::get("anon.test", "/").header("x-forwarded-for", client);

    drain(&gw, &rec, "no key from 10.0.0.1", &from("10.0.0.1")).await;
    refused(
        &gw,
        &rec,
        "an empty key from 10.0.0.1",
        429,
        &from("10.0.0.1").header("x-api-key", ""),
    )
    .await;
    let r = admitted(&gw, "no key from 10.0.0.2", &from("10.0.0.2")).await;
    assert_eq!(
        limit_headers(&r),
        (Some("3"), Some("2")),
        "10.0.0.2's own bucket"
    );
    let r = admitted(
        &gw,
        "key k from 10.0.0.1",
        &from("10.0.0.1").header("x-api-key", "k"),
    )
    .await;
    assert_eq!(
        limit_headers(&r),
        (Some("3"), Some("2")),
        "the key's own bucket"
    );

    let r = refused(
        &gw,
        &rec,
        "no key on deny.test",
        401,
        &Req::get("deny.test", "/"),
    )
    .await;
    assert_eq!(r.text(), "an API key is required\n", "{}", r.summary());
    admitted(&gw, "a key on deny.test", &keyed("deny.test", "d")).await;
    assert_eq!(rec.arrived(), 3 + 1 + 1 + 1);
}

/// `key-rate-limit` attached without the `counters` grant, or granted only `clock`, rejects
/// the Ingress: `validate` names `counters` and the annotation to add it to, and the running
/// binary answers 404; the granted neighbour is served.
#[tokio::test]
async fn key_rate_limit_needs_the_counters_grant() {
    let plugins = PluginDir::with(&["key-rate-limit"]);
    let ungranted = |grant: Option<&'static str>| {
        let mut a = vec![(PLUGINS, "key-rate-limit"), (RL_RATE, "1")];
        a.extend(grant.map(|g| (RL_GRANT, g)));
        a
    };
    let (rec, m) = app_with(vec![
        ingress("no-grant", "no-grant.test", &ungranted(None)),
        ingress("clock-only", "clock-only.test", &ungranted(Some("clock"))),
        ingress("granted", "granted.test", &limit_annotations(&[])),
    ])
    .await;

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in ["no-grant", "clock-only"] {
        let line = validate_error(&stdout, NS, name, RL_GRANT);
        assert!(
            line.contains("`counters`"),
            "{name}: names counters: {line}"
        );
        assert!(
            line.contains(&format!("add `counters` to {RL_GRANT}")),
            "{name}: says where to grant it: {line}"
        );
    }
    assert_no_error_about(&stdout, NS, "granted");

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    for host in ["no-grant.test", "clock-only.test"] {
        refused(&gw, &rec, host, 404, &keyed(host, "a")).await;
    }
    admitted(&gw, "granted.test", &keyed("granted.test", "a")).await;
    assert_eq!(rec.arrived(), 1);
}

/// The same API key on Ingresses in namespaces `alpha` and `beta` draws from two buckets: a
/// client that used up its burst in `alpha` still gets its full burst in `beta`. Two Ingresses
/// of `alpha` share the key's bucket.
#[tokio::test]
async fn key_rate_limit_buckets_are_per_namespace() {
    let plugins = PluginDir::with(&["key-rate-limit"]);
    let rec = Recorder::start("app").await;
    let mut objects = Vec::new();
    for ns in ["alpha", "beta"] {
        objects.extend(app_service_in(ns, &rec));
        objects.push(ingress_in(
            ns,
            "limited",
            &format!("{ns}.test"),
            &limit_annotations(&[]),
        ));
    }
    objects.push(ingress_in(
        "alpha",
        "limited-too",
        "alpha-too.test",
        &limit_annotations(&[]),
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    drain(
        &gw,
        &rec,
        "key shared in alpha",
        &keyed("alpha.test", "shared"),
    )
    .await;
    refused(
        &gw,
        &rec,
        "key shared on another Ingress of alpha",
        429,
        &keyed("alpha-too.test", "shared"),
    )
    .await;
    drain(
        &gw,
        &rec,
        "key shared in beta",
        &keyed("beta.test", "shared"),
    )
    .await;
    assert_eq!(rec.arrived(), 6);
}

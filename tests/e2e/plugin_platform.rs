//! The plugin platform of ABI 0.2.0 through the real binary, with the test plugins `set-header`
//! and `caps` loaded by `--plugin-dir`:
//!
//! - the `request` handle: the facts a hook reads (client address, request id, scheme, route,
//!   SNI, verified client certificate) and the values it keeps between its request and
//!   response hooks;
//! - request changes (method, path, query), refused when invalid or too late;
//! - response hooks over every answer of a route (the upstream's, the proxy's own 401 and 503,
//!   another plugin's), in reverse attach order, a hook's replacement seen by the hooks after it;
//! - capability grants (`wasmgress.io/plugin.<name>.capabilities`): a plugin importing what its
//!   route does not grant is refused, a granted Secret must exist in the route's namespace;
//! - the capabilities themselves: clock, random, counters (per namespace) and token buckets,
//!   Secret values.
//!
//! Every Ingress routes to a recording backend, so "the backend was not reached" is a count.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls::ClientConfig;
use serde_json::{Value, json};

use crate::client_tls::{ClientCa, ClientId, opaque_secret};
use crate::harness::certs::{BOTH_VERSIONS, TestCa};
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, ready, service};
use crate::harness::plugins::PluginDir;
use crate::harness::process::{RELOAD_LIMIT, assert_no_error_about, validate, validate_error};
use crate::harness::recorder::{Recorder, refused};
use crate::harness::{Conn, Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

const PLUGINS: &str = "wasmgress.io/plugins";
const GRANT: &str = "wasmgress.io/plugin.caps.capabilities";
const CAPS_SECRET: &str = "wasmgress.io/plugin.caps.secret";
const CAPS_RATE: &str = "wasmgress.io/plugin.caps.rate";
const CAPS_BURST: &str = "wasmgress.io/plugin.caps.burst";
const FACTS: &str = "wasmgress.io/plugin.set-header.facts";
const RESPONSE: &str = "wasmgress.io/plugin.set-header.response";
const SET_PATH: &str = "wasmgress.io/plugin.set-header.set-path";
const SET_QUERY: &str = "wasmgress.io/plugin.set-header.set-query";
const SET_METHOD: &str = "wasmgress.io/plugin.set-header.set-method";
const LATE_CHANGE: &str = "wasmgress.io/plugin.set-header.late-change";
const AUTH_TYPE: &str = "nginx.ingress.kubernetes.io/auth-type";
const AUTH_SECRET: &str = "nginx.ingress.kubernetes.io/auth-secret";
const TLS_SECRET: &str = "nginx.ingress.kubernetes.io/auth-tls-secret";
const PERMANENT_REDIRECT: &str = "nginx.ingress.kubernetes.io/permanent-redirect";
const ENABLE_CORS: &str = "nginx.ingress.kubernetes.io/enable-cors";

/// Every capability `caps` imports, with the Secret its token lives in.
const ALL_CAPS: &str = "clock, random, counters, secrets(caps-secret)";
/// The token in Secret `caps-secret` (key `token`).
const TOKEN: &str = "open-sesame-42";

/// Trust loopback (where the tests connect from) to say who the client is.
const TRUST_LOOPBACK: [&str; 3] = [
    "--use-forwarded-headers",
    "--proxy-real-ip-cidr",
    "127.0.0.1/32",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// An Ingress `ns/name` for `host`, everything to Service `app`, with `annotations`.
fn ingress_in(ns: &str, name: &str, host: &str, annotations: &[(&str, &str)]) -> Ingress {
    ingress_to(ns, name, host, "app", annotations)
}

/// An Ingress `ns/name` for `host`, everything to Service `service`, with `annotations`.
fn ingress_to(
    ns: &str,
    name: &str,
    host: &str,
    service: &str,
    annotations: &[(&str, &str)],
) -> Ingress {
    annotations
        .iter()
        .fold(Ingress::new(name).namespace(ns), |ing, (k, v)| {
            ing.annotation(k, v)
        })
        .rule(Some(host), &[prefix("/", service)])
}

/// An Ingress `default/name` for `host`, everything to Service `app`, with `annotations`.
fn ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> Value {
    ingress_in(NS, name, host, annotations).build()
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

/// The Secret `ns/caps-secret` holding [`TOKEN`] under `token`.
fn caps_secret(ns: &str) -> Value {
    opaque_secret(ns, "caps-secret", &[("token", TOKEN)])
}

/// The recording backend `app` (Service `app` in [`NS`]) and a folder holding it, the Secret
/// `caps-secret` and `more`.
async fn app_with(more: Vec<Value>) -> (Recorder, Manifests) {
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.push(caps_secret(NS));
    objects.extend(more);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    (rec, m)
}

/// The single value the backend saw for request header `name` (none or several fail).
fn one(r: &Resp, name: &str) -> String {
    let seen = r.seen(name);
    assert_eq!(
        seen.len(),
        1,
        "the backend should see exactly one {name}, saw {seen:?}: {}",
        r.summary()
    );
    seen.into_iter().next().expect("one value")
}

/// Every value of response header `name`, in order, whether they came as several header lines
/// or as one comma-separated line.
fn values(r: &Resp, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or_else(|_| panic!("{name} is not text: {v:?}"))
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// `GET host/` with the right `x-token`.
fn with_token(host: &str) -> Req {
    Req::get(host, "/").header("x-token", TOKEN)
}

/// A number the backend saw in request header `name`.
fn number(r: &Resp, name: &str) -> u64 {
    let v = one(r, name);
    v.parse()
        .unwrap_or_else(|e| panic!("{name}: {v:?} is not a number: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Client certificates (a CA of their own, as tests/e2e/client_tls.rs makes them)

/// A client trusting `server_ca`, speaking HTTP/1.1, presenting `id` if any.
fn tls_client(server_ca: &TestCa, id: Option<&ClientId>) -> std::sync::Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(BOTH_VERSIONS)
    .expect("protocol versions supported by ring")
    .with_root_certificates(server_ca.roots());
    let mut config = match id {
        Some(id) => builder
            .with_client_auth_cert(vec![id.der.clone()], id.key())
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// `GET https://host/` on a fresh HTTP/1.1 connection whose SNI is `host`.
async fn get_tls(gw: &Wasmgress, host: &str, config: std::sync::Arc<ClientConfig>) -> Resp {
    let tls = gw
        .tls(host, config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {host}: {e}"));
    let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
    conn.send(&Req::get(host, "/").scheme("https"))
        .await
        .unwrap_or_else(|e| panic!("GET https://{host}/: {e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Request facts

/// A plugin reads what the proxy knows about a request, not what the client claims: the
/// backend sees the client address wasmgress computed (a forged `X-Forwarded-For` from an
/// untrusted peer changes nothing, nor does `X-Forwarded-Proto`; from a trusted one they do),
/// the request id the backend got in `X-Request-ID` (the client's own when it sent one), the
/// scheme, the route (`Ingress ns/name service:port`). What the request hook kept (the
/// normalised path and query) comes back to the client from the response hook, with the same
/// request id.
#[tokio::test]
async fn hooks_read_the_proxys_facts_and_keep_values_for_the_response() {
    let plugins = PluginDir::with(&["set-header"]);
    let (rec, m) = app_with(vec![ingress(
        "facts",
        "facts.test",
        &[(PLUGINS, "set-header"), (FACTS, "true"), (RESPONSE, "true")],
    )])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = gw
        .send(
            &Req::get("facts.test", "/a/../facts/p?q=1&r=two")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-real-ip", "203.0.113.9")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        one(&r, "x-facts-client"),
        "127.0.0.1",
        "an untrusted peer's X-Forwarded-For must not change the client address"
    );
    assert_eq!(
        one(&r, "x-facts-client"),
        one(&r, "x-real-ip"),
        "the hook's client is the one the proxy forwards"
    );
    let id = one(&r, "x-request-id");
    assert!(!id.is_empty(), "the proxy made a request id");
    assert_eq!(
        one(&r, "x-facts-id"),
        id,
        "the hook's id is the forwarded one"
    );
    assert_eq!(
        one(&r, "x-facts-scheme"),
        "http",
        "an untrusted peer's X-Forwarded-Proto must not change the scheme"
    );
    assert_eq!(one(&r, "x-facts-route"), "Ingress default/facts app:80");
    assert_eq!(one(&r, "x-facts-sni"), "", "no TLS, no SNI");
    assert_eq!(one(&r, "x-facts-subject"), "-", "no TLS, no certificate");
    assert_eq!(one(&r, "x-facts-issuer"), "-", "no TLS, no certificate");
    assert_eq!(
        r.header("x-kept-path"),
        Some("/facts/p?q=1&r=two"),
        "the response hook reads back what the request hook kept: the normalised path with the \
         original query; {}",
        r.summary()
    );
    assert_eq!(
        r.header("x-kept-id"),
        Some(id.as_str()),
        "the response hook runs for the same request"
    );
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-200"));

    // The client's own request id is the request's id.
    let r = gw
        .send(&Req::get("facts.test", "/").header("x-request-id", "client-chosen-id-1"))
        .await;
    assert_eq!(one(&r, "x-request-id"), "client-chosen-id-1");
    assert_eq!(one(&r, "x-facts-id"), "client-chosen-id-1");
    assert_eq!(r.header("x-kept-id"), Some("client-chosen-id-1"));
    assert_eq!(r.header("x-kept-path"), Some("/"));
    assert_eq!(rec.arrived(), 2);
    drop(gw);

    // Trusting loopback, the forwarded address is the client: the hook sees it too.
    let gw = Wasmgress::start(&m, &[&plugins.args()[..], &TRUST_LOOPBACK[..]].concat()).await;
    let r = gw
        .send(
            &Req::get("facts.test", "/")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(one(&r, "x-facts-client"), "203.0.113.9");
    assert_eq!(one(&r, "x-facts-scheme"), "https");
}

/// Over HTTPS the hook sees the scheme `https` and the SNI the client asked for; on a route
/// requiring client certificates it sees the verified certificate's subject and issuer DNs
/// (the same ones the backend gets in `ssl-client-*-dn`); on a route without client
/// certificates there are none (`-`), whether the connection presented none or presented one
/// another route of its host verified. A request refused for its missing certificate passes
/// no hook at all.
#[tokio::test]
async fn hooks_see_sni_and_the_verified_client_certificate() {
    let plugins = PluginDir::with(&["set-header"]);
    let server_ca = TestCa::new();
    let client_ca = ClientCa::new("Client CA");
    let alice = client_ca.client("alice.example", 1);
    let hooked = [(PLUGINS, "set-header"), (FACTS, "true"), (RESPONSE, "true")];
    let mut mtls = hooked.to_vec();
    mtls.push((TLS_SECRET, "client-ca"));
    let (rec, m) = app_with(vec![
        server_ca.leaf(&["*.facts.test"]).secret("facts-tls", false),
        opaque_secret(NS, "client-ca", &[("ca.crt", &client_ca.pem())]),
        ingress_in(NS, "sni", "sni.facts.test", &hooked)
            .tls(&["sni.facts.test"], "facts-tls")
            .build(),
        ingress_in(NS, "mtls", "mtls.facts.test", &mtls)
            .tls(&["mtls.facts.test"], "facts-tls")
            .build(),
        // The same host, another Ingress without client certificate rules for `/open`.
        hooked
            .iter()
            .fold(Ingress::new("mtls-open"), |ing, (k, v)| {
                ing.annotation(k, v)
            })
            .tls(&["mtls.facts.test"], "facts-tls")
            .rule(Some("mtls.facts.test"), &[prefix("/open", "app")])
            .build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = get_tls(&gw, "sni.facts.test", tls_client(&server_ca, None)).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(one(&r, "x-facts-scheme"), "https");
    assert_eq!(one(&r, "x-facts-sni"), "sni.facts.test");
    assert_eq!(one(&r, "x-facts-route"), "Ingress default/sni app:80");
    assert_eq!(one(&r, "x-facts-subject"), "-", "no client certificate");
    assert_eq!(one(&r, "x-facts-issuer"), "-", "no client certificate");
    assert_eq!(one(&r, "x-facts-client"), "127.0.0.1");

    let r = get_tls(&gw, "mtls.facts.test", tls_client(&server_ca, Some(&alice))).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(one(&r, "x-facts-sni"), "mtls.facts.test");
    assert_eq!(one(&r, "x-facts-subject"), "CN=alice.example,O=Example");
    assert_eq!(one(&r, "x-facts-issuer"), "CN=Client CA,O=Example");
    assert_eq!(
        one(&r, "x-facts-subject"),
        one(&r, "ssl-client-subject-dn"),
        "the hook and the backend agree on the subject"
    );
    assert_eq!(
        one(&r, "x-facts-issuer"),
        one(&r, "ssl-client-issuer-dn"),
        "the hook and the backend agree on the issuer"
    );
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-200"));
    assert_eq!(rec.arrived(), 2);

    // The same verified certificate on a route of that host without client certificate rules:
    // that route did not verify it, so its hooks are not told about it.
    let tls = gw
        .tls("mtls.facts.test", tls_client(&server_ca, Some(&alice)))
        .await
        .expect("TLS handshake with SNI mtls.facts.test");
    let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
    let r = conn
        .send(&Req::get("mtls.facts.test", "/open").scheme("https"))
        .await
        .expect("GET https://mtls.facts.test/open");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(one(&r, "x-facts-route"), "Ingress default/mtls-open app:80");
    assert_eq!(one(&r, "x-facts-sni"), "mtls.facts.test");
    assert_eq!(one(&r, "x-facts-subject"), "-", "not this route's verdict");
    assert_eq!(one(&r, "x-facts-issuer"), "-", "not this route's verdict");
    assert_eq!(rec.arrived(), 3);

    // Without a certificate the mTLS route refuses (400) before the route's plugins apply:
    // no request hook, and (as the ABI says for client-certificate refusals) no response hook.
    let before = rec.arrived();
    let r = get_tls(&gw, "mtls.facts.test", tls_client(&server_ca, None)).await;
    assert_eq!(r.status, 400, "{}", r.summary());
    assert_eq!(rec.arrived(), before, "the backend must not be reached");
    assert_eq!(r.header("x-response-seen-by"), None, "{:?}", r.headers);
}

// ---------------------------------------------------------------------------------------------
// 2. Request changes

/// A request hook changes what goes upstream: the path (keeping the query), the query
/// (replaced or removed), the method. An invalid change (a path without `/`) is refused: the
/// plugin answers 400 and the backend never sees the request. A change tried in the response
/// hook is too late (`too-late`, as the plugin reports it in `x-late-change`) and the
/// backend saw the original path.
#[tokio::test]
async fn request_hooks_change_the_method_path_and_query() {
    let plugins = PluginDir::with(&["set-header"]);
    let sh = (PLUGINS, "set-header");
    let (rec, m) = app_with(vec![
        ingress("path", "path.test", &[sh, (SET_PATH, "/rewritten")]),
        ingress("query", "query.test", &[sh, (SET_QUERY, "a=1")]),
        ingress("noquery", "noquery.test", &[sh, (SET_QUERY, "-")]),
        ingress("method", "method.test", &[sh, (SET_METHOD, "POST")]),
        ingress("invalid", "invalid.test", &[sh, (SET_PATH, "no-slash")]),
        ingress(
            "late",
            "late.test",
            &[sh, (RESPONSE, "true"), (LATE_CHANGE, "true")],
        ),
        ingress("untouched", "untouched.test", &[sh]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = gw.get("path.test", "/original/x?keep=me&b=2").await;
    let echo = r.expect_echo();
    assert_eq!(echo["path"], "/rewritten", "{echo}");
    assert_eq!(
        echo["query"], "keep=me&b=2",
        "set-path keeps the query: {echo}"
    );

    let r = gw.get("query.test", "/q/path?old=1").await;
    let echo = r.expect_echo();
    assert_eq!(echo["path"], "/q/path", "{echo}");
    assert_eq!(echo["query"], "a=1", "{echo}");
    let r = gw.get("query.test", "/q/none").await;
    assert_eq!(
        r.expect_echo()["query"],
        "a=1",
        "a query where there was none"
    );

    let r = gw.get("noquery.test", "/n/path?old=1&x=2").await;
    let echo = r.expect_echo();
    assert_eq!(echo["path"], "/n/path", "{echo}");
    assert_eq!(echo["query"], "", "the query is removed: {echo}");

    let r = gw.get("method.test", "/m?z=1").await;
    let echo = r.expect_echo();
    assert_eq!(echo["method"], "POST", "{echo}");
    assert_eq!(echo["path"], "/m", "{echo}");
    assert_eq!(echo["query"], "z=1", "{echo}");

    // Without changes, everything goes as the client sent it.
    let r = gw.get("untouched.test", "/u/path?old=1").await;
    let echo = r.expect_echo();
    assert_eq!(
        (&echo["method"], &echo["path"], &echo["query"]),
        (&json!("GET"), &json!("/u/path"), &json!("old=1")),
        "{echo}"
    );

    let r = refused(
        &gw,
        &rec,
        "set-path no-slash",
        400,
        &Req::get("invalid.test", "/valid?x=1"),
    )
    .await;
    // The plugin answers `refused: {error:?}`; the SDK's `RequestError` is wit-bindgen's
    // enum, whose Debug form carries its code, WIT name and documentation.
    assert_eq!(
        r.text(),
        "refused: RequestError { code: 0, name: \"invalid\", message: \"Not a valid method, \
         path, query or value.\" }\n",
        "the plugin names the refusal: {}",
        r.summary()
    );

    let r = gw.get("late.test", "/late/original?y=1").await;
    let echo = r.expect_echo();
    assert_eq!(echo["path"], "/late/original", "{echo}");
    assert_eq!(echo["query"], "y=1", "{echo}");
    assert_eq!(
        r.header("x-late-change"),
        Some(
            "Err(RequestError { code: 2, name: \"too-late\", message: \"Only possible in \
             `on-request-headers` (the request has already gone upstream).\" })"
        ),
        "set-path in the response hook is refused as too late: {}",
        r.summary()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Response hooks over every answer, in reverse attach order

/// `user:{SHA}base64(sha1(password))`, an htpasswd line the host verifies.
fn sha_htpasswd(user: &str, password: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!("{user}:{{SHA}}{b64}\n")
}

/// Response hooks run over every answer a route gives, in reverse attach order: with
/// `set-header, caps` the client sees `x-hook-order: caps, set-header` (with `caps, set-header`
/// the other way round) on the upstream's 200, on basic auth's 401 (the backend never reached,
/// `x-response-seen-by: wasm-401`), on caps's own 403 (a plugin's answer) and on a
/// `permanent-redirect`'s 301; not on a CORS preflight. A 503 for a Service without endpoints
/// passes them too: `caps` alone marks it; `set-header` replaces any 5xx with its own 502, and
/// a hook after it sees that replacement.
#[tokio::test]
async fn response_hooks_see_every_answer_in_reverse_attach_order() {
    let plugins = PluginDir::with(&["set-header", "caps"]);
    let caps = [
        (GRANT, ALL_CAPS),
        (CAPS_SECRET, "caps-secret"),
        (RESPONSE, "true"),
    ];
    let with = |list: &'static str, more: &[(&'static str, &'static str)]| {
        let mut all = vec![(PLUGINS, list)];
        all.extend_from_slice(&caps);
        all.extend_from_slice(more);
        all
    };
    let to_empty = |name: &str, list: &'static str| -> Value {
        ingress_to(NS, name, &format!("{name}.test"), "empty", &with(list, &[])).build()
    };
    let (rec, m) = app_with(vec![
        opaque_secret(NS, "users", &[("auth", &sha_htpasswd("bea", "b-secret"))]),
        service(
            NS,
            "empty",
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(8080),
            }],
        ),
        ingress("order", "order.test", &with("set-header, caps", &[])),
        ingress("reversed", "reversed.test", &with("caps, set-header", &[])),
        ingress(
            "auth",
            "auth.test",
            &with(
                "set-header, caps",
                &[(AUTH_TYPE, "basic"), (AUTH_SECRET, "users")],
            ),
        ),
        ingress(
            "moved",
            "moved.test",
            &[
                (PLUGINS, "set-header"),
                (RESPONSE, "true"),
                (PERMANENT_REDIRECT, "https://new.example/"),
            ],
        ),
        ingress(
            "cors",
            "cors.test",
            &[
                (PLUGINS, "set-header"),
                (RESPONSE, "true"),
                (ENABLE_CORS, "true"),
            ],
        ),
        // Service `empty` has no EndpointSlice: the proxy answers 503.
        to_empty("empty-caps", "caps"),
        to_empty("empty-both", "set-header, caps"),
        to_empty("empty-reversed", "caps, set-header"),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    // The upstream's answer.
    let r = gw.send(&with_token("order.test")).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        one(&r, "x-seen-by").starts_with("wasm-"),
        "set-header's request hook ran"
    );
    number(&r, "x-caps-count");
    assert_eq!(values(&r, "x-hook-order"), ["caps", "set-header"]);
    assert_eq!(
        r.headers.get_all("x-hook-order").iter().count(),
        2,
        "two appended values arrive as two header lines: {:?}",
        r.headers
    );
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-200"));
    let r = gw.send(&with_token("reversed.test")).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(values(&r, "x-hook-order"), ["set-header", "caps"]);

    // The proxy's own 401: access control answers before any request hook, yet the response
    // hooks see it.
    let r = refused(
        &gw,
        &rec,
        "basic auth, no credentials",
        401,
        &with_token("auth.test"),
    )
    .await;
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-401"));
    assert_eq!(values(&r, "x-hook-order"), ["caps", "set-header"]);
    let user = base64::engine::general_purpose::STANDARD.encode("bea:b-secret");
    let r = gw
        .send(&with_token("auth.test").header("authorization", &format!("Basic {user}")))
        .await;
    assert_eq!(r.status, 200, "with credentials: {}", r.summary());
    assert_eq!(values(&r, "x-hook-order"), ["caps", "set-header"]);

    // Another plugin's answer: caps refuses a missing token; set-header's request hook ran
    // before, and in reverse order caps's response hook runs first, then set-header's, which
    // sees caps's 403.
    let r = refused(
        &gw,
        &rec,
        "caps, no token",
        403,
        &Req::get("order.test", "/"),
    )
    .await;
    assert_eq!(r.text(), "bad token\n", "{}", r.summary());
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-403"));
    assert_eq!(values(&r, "x-hook-order"), ["caps", "set-header"]);
    // caps first: it answers before set-header's request hook; response hooks still run for
    // both, set-header's first.
    let r = refused(
        &gw,
        &rec,
        "caps first, no token",
        403,
        &Req::get("reversed.test", "/"),
    )
    .await;
    assert_eq!(r.text(), "bad token\n", "{}", r.summary());
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-403"));
    assert_eq!(values(&r, "x-hook-order"), ["set-header", "caps"]);

    // The route's own redirect.
    let r = refused(
        &gw,
        &rec,
        "permanent-redirect",
        301,
        &Req::get("moved.test", "/x"),
    )
    .await;
    assert_eq!(
        r.header("location"),
        Some("https://new.example/"),
        "{}",
        r.summary()
    );
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-301"));
    // A CORS preflight is answered before the route's plugins apply (no response hook); the
    // request that follows is the route's answer like any other.
    let r = refused(
        &gw,
        &rec,
        "CORS preflight",
        204,
        &Req::get("cors.test", "/")
            .method(http::Method::OPTIONS)
            .header("origin", "https://site.example")
            .header("access-control-request-method", "PUT"),
    )
    .await;
    assert!(
        r.header("access-control-allow-origin").is_some(),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-response-seen-by"), None, "{:?}", r.headers);
    let r = gw
        .send(&Req::get("cors.test", "/").header("origin", "https://site.example"))
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.header("access-control-allow-origin").is_some(),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-response-seen-by"), Some("wasm-200"));

    // The proxy's own 503 (no endpoints), seen by caps alone.
    let r = refused(
        &gw,
        &rec,
        "no endpoints, caps",
        503,
        &with_token("empty-caps.test"),
    )
    .await;
    assert!(
        r.text().starts_with("no healthy upstream"),
        "{}",
        r.summary()
    );
    assert_eq!(values(&r, "x-hook-order"), ["caps"]);
    // set-header answers 502 itself for any status >= 500 (tests/plugins/set-header). With
    // `set-header, caps`, caps's response hook runs first (it appends `caps` to the 503's
    // headers), then set-header's, whose 502 replaces the response in hand, headers included
    // (host/src/plugin/hooks.rs `run_response`). So the client sees set-header's 502 and
    // nothing of caps's mark, nor any `x-response-seen-by` (set-header answers before setting
    // it).
    let r = refused(
        &gw,
        &rec,
        "no endpoints, set-header last",
        502,
        &with_token("empty-both.test"),
    )
    .await;
    assert_eq!(r.text(), "upstream failed\n", "{}", r.summary());
    assert_eq!(values(&r, "x-hook-order"), Vec::<String>::new());
    assert_eq!(r.header("x-response-seen-by"), None);
    // `caps, set-header`: set-header's hook runs first and replaces the 503 with its 502; caps's
    // hook runs after it and sees the replacement (it marks it).
    let r = refused(
        &gw,
        &rec,
        "no endpoints, set-header first",
        502,
        &with_token("empty-reversed.test"),
    )
    .await;
    assert_eq!(r.text(), "upstream failed\n", "{}", r.summary());
    assert_eq!(values(&r, "x-hook-order"), ["caps"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Grants

/// A plugin that imports capabilities attaches only where its route grants every one: `caps`
/// granted `clock` only, granted `files` (not a capability), granted nothing, or granted a
/// Secret by `namespace/name` is rejected (404, and `validate` names the annotation and what is
/// missing or wrong); `set-header`, which imports none, needs no grant. An Ingress that loses
/// its grant keeps serving its last good version.
#[tokio::test]
async fn a_plugin_attaches_only_where_its_capabilities_are_granted() {
    let plugins = PluginDir::with(&["set-header", "caps"]);
    let (rec, m) = app_with(vec![
        ingress(
            "clock-only",
            "clock-only.test",
            &[(PLUGINS, "caps"), (GRANT, "clock")],
        ),
        ingress(
            "files",
            "files.test",
            &[(PLUGINS, "caps"), (GRANT, "files")],
        ),
        ingress("no-grant", "no-grant.test", &[(PLUGINS, "caps")]),
        ingress(
            "qualified",
            "qualified.test",
            &[
                (PLUGINS, "caps"),
                (
                    GRANT,
                    "clock, random, counters, secrets(default/caps-secret)",
                ),
            ],
        ),
        ingress("plain", "plain.test", &[(PLUGINS, "set-header")]),
    ])
    .await;
    let full = |grant: &str| ingress("full", "full.test", &[(PLUGINS, "caps"), (GRANT, grant)]);
    m.write("full.yaml", &[full(ALL_CAPS)]);

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "clock-only", GRANT);
    for missing in ["`random`", "`counters`", "`secrets`"] {
        assert!(line.contains(missing), "names {missing}: {line}");
    }
    assert!(!line.contains("`clock`"), "clock is granted: {line}");
    let line = validate_error(&stdout, NS, "files", GRANT);
    assert!(line.contains("files"), "names the value: {line}");
    let line = validate_error(&stdout, NS, "no-grant", GRANT);
    for missing in ["`clock`", "`random`", "`counters`", "`secrets`"] {
        assert!(line.contains(missing), "names {missing}: {line}");
    }
    let line = validate_error(&stdout, NS, "qualified", GRANT);
    assert!(
        line.contains("default/caps-secret"),
        "names the value: {line}"
    );
    assert_no_error_about(&stdout, NS, "full");
    assert_no_error_about(&stdout, NS, "plain");

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[
        ("clock-only.test", "/", "404"),
        ("files.test", "/", "404"),
        ("no-grant.test", "/", "404"),
        ("qualified.test", "/", "404"),
    ])
    .await;
    assert_eq!(rec.arrived(), 0, "no rejected Ingress reached the backend");
    for name in ["clock-only", "files", "no-grant", "qualified"] {
        assert!(
            gw.stderr_mentions(&format!("Ingress {NS}/{name}")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }
    let r = gw.get("plain.test", "/").await;
    assert!(one(&r, "x-seen-by").starts_with("wasm-"), "{}", r.summary());
    let r = gw.get("full.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(number(&r, "x-caps-count"), 1, "caps runs where granted");

    // Losing the grant: the last good version keeps serving (caps still runs).
    m.write("full.yaml", &[full("clock, random")]);
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    let rejected = loop {
        let log = gw.stderr();
        let mentions = log
            .lines()
            .filter(|l| l.contains("Ingress default/full") && l.contains(GRANT))
            .count();
        if mentions > 0 {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        rejected,
        "the weaker grant of `full` should be reported on stderr within {RELOAD_LIMIT:?}"
    );
    let r = gw.get("full.test", "/").await;
    assert_eq!(
        r.status,
        200,
        "the last good version serves: {}",
        r.summary()
    );
    assert_eq!(number(&r, "x-caps-count"), 2, "with caps still attached");
}

// ---------------------------------------------------------------------------------------------
// 5. Capabilities at work

/// With every capability granted, `caps` reads the wall clock (within 5 minutes of the test's
/// own), a monotonic clock that does not go back, 8 random bytes that differ per request, a
/// per-namespace counter that grows by one per request, and the Secret the route granted: the
/// right `x-token` passes, a wrong or missing one gets 403 and never reaches the backend. When
/// the Secret changes, the new value is what the plugin reads.
#[tokio::test]
async fn granted_capabilities_work() {
    let plugins = PluginDir::with(&["caps"]);
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.push(ingress(
        "caps",
        "caps.test",
        &[
            (PLUGINS, "caps"),
            (GRANT, ALL_CAPS),
            (CAPS_SECRET, "caps-secret"),
        ],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    // The Secret in a file of its own, to change it later.
    m.write("secret.yaml", &[caps_secret(NS)]);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    let before = now();
    let first = gw.send(&with_token("caps.test")).await;
    let second = gw.send(&with_token("caps.test")).await;
    let after = now();
    for r in [&first, &second] {
        assert_eq!(r.status, 200, "{}", r.summary());
        let wall = number(r, "x-caps-wall-secs");
        assert!(
            wall + 300 >= before && wall <= after + 300,
            "wall clock {wall} is not near the test's {before}..{after}"
        );
        let random = one(r, "x-caps-random");
        assert!(
            random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "x-caps-random is not 16 hex digits: {random:?}"
        );
    }
    assert_ne!(
        one(&first, "x-caps-random"),
        one(&second, "x-caps-random"),
        "two requests drew the same random bytes"
    );
    let (m1, m2) = (
        number(&first, "x-caps-mono-ns"),
        number(&second, "x-caps-mono-ns"),
    );
    assert!(m2 >= m1, "the monotonic clock went back: {m1} then {m2}");
    assert_eq!(
        number(&first, "x-caps-count"),
        1,
        "the first request of the namespace"
    );
    assert_eq!(number(&second, "x-caps-count"), 2, "one more per request");

    refused(
        &gw,
        &rec,
        "wrong token",
        403,
        &Req::get("caps.test", "/").header("x-token", "open-sesame-43"),
    )
    .await;
    let r = refused(&gw, &rec, "no token", 403, &Req::get("caps.test", "/")).await;
    assert_eq!(r.text(), "bad token\n", "{}", r.summary());
    assert_eq!(
        rec.arrived(),
        2,
        "only the two good requests reached the backend"
    );

    // A new token in the Secret: the route is configured again with the new value.
    let rotated = "rotated-token-7";
    m.write(
        "secret.yaml",
        &[opaque_secret(NS, "caps-secret", &[("token", rotated)])],
    );
    let new_token = Req::get("caps.test", "/").header("x-token", rotated);
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let r = gw.send(&new_token).await;
        if r.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated token still fails {RELOAD_LIMIT:?} after the Secret changed: {}",
            r.summary()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    refused(
        &gw,
        &rec,
        "the old token after rotation",
        403,
        &with_token("caps.test"),
    )
    .await;
}

/// `caps.rate: 1`, `caps.burst: 2`: with one `x-client-key`, two immediate requests pass and
/// the third gets 429 with `retry-after-ms` (at most a second at one token per second) without
/// reaching the backend; another key has its own full bucket.
#[tokio::test]
async fn a_token_bucket_per_client_key() {
    let plugins = PluginDir::with(&["caps"]);
    let (rec, m) = app_with(vec![ingress(
        "bucket",
        "bucket.test",
        &[
            (PLUGINS, "caps"),
            (GRANT, ALL_CAPS),
            (CAPS_RATE, "1"),
            (CAPS_BURST, "2"),
        ],
    )])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;
    let key = |k: &str| Req::get("bucket.test", "/").header("x-client-key", k);

    for i in 1..=2 {
        let r = gw.send(&key("alice")).await;
        assert_eq!(r.status, 200, "alice's request {i}: {}", r.summary());
    }
    let r = refused(&gw, &rec, "alice's third request", 429, &key("alice")).await;
    assert_eq!(r.text(), "slow down\n", "{}", r.summary());
    let wait: u32 = r
        .header("retry-after-ms")
        .unwrap_or_else(|| panic!("no retry-after-ms: {:?}", r.headers))
        .parse()
        .expect("retry-after-ms is a number");
    assert!(
        (1..=1000).contains(&wait),
        "retry-after-ms {wait} should be within one token's time (1..=1000 ms)"
    );
    assert_eq!(
        values(&r, "x-hook-order"),
        ["caps"],
        "its own answer passes its response hook"
    );
    let r = gw.send(&key("bob")).await;
    assert_eq!(r.status, 200, "bob has his own bucket: {}", r.summary());
    assert_eq!(rec.arrived(), 3);
}

/// A grant names Secrets of the route's own namespace: one that does not exist rejects the
/// Ingress, naming it; an Ingress in namespace `team-b` granting `caps-secret`, which only
/// `default` has, is rejected too (404), while the same Ingress in `default` is served.
#[tokio::test]
async fn a_granted_secret_must_exist_in_the_routes_namespace() {
    let plugins = PluginDir::with(&["caps"]);
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.extend(app_service_in("team-b", &rec));
    let granted = [
        (PLUGINS, "caps"),
        (GRANT, ALL_CAPS),
        (CAPS_SECRET, "caps-secret"),
    ];
    objects.extend([
        caps_secret(NS),
        ingress(
            "ghost",
            "ghost.test",
            &[
                (PLUGINS, "caps"),
                (GRANT, "clock, random, counters, secrets(no-such-secret)"),
            ],
        ),
        ingress_in("team-b", "elsewhere", "elsewhere.test", &granted).build(),
        ingress("home", "home.test", &granted),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "ghost", GRANT);
    assert!(line.contains("no-such-secret"), "names the Secret: {line}");
    let line = validate_error(&stdout, "team-b", "elsewhere", GRANT);
    assert!(line.contains("caps-secret"), "names the Secret: {line}");
    assert_no_error_about(&stdout, NS, "home");

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[("ghost.test", "/", "404"), ("elsewhere.test", "/", "404")])
        .await;
    let r = gw
        .send(&Req::get("elsewhere.test", "/").header("x-token", TOKEN))
        .await;
    assert_eq!(r.status, 404, "{}", r.summary());
    let r = gw.send(&with_token("home.test")).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(rec.arrived(), 1);
}

/// `caps.key` names the key of the granted Secret the plugin reads (default `token`): a key the
/// Secret does not have makes `caps` refuse the Ingress in `configure` (404), with a diagnostic
/// on `wasmgress.io/plugin.caps.secret` naming the Secret and the missing key.
#[tokio::test]
async fn a_granted_secret_without_the_key_rejects_the_ingress_naming_the_key() {
    let plugins = PluginDir::with(&["caps"]);
    let (rec, m) = app_with(vec![ingress(
        "nokey",
        "nokey.test",
        &[
            (PLUGINS, "caps"),
            (GRANT, ALL_CAPS),
            (CAPS_SECRET, "caps-secret"),
            ("wasmgress.io/plugin.caps.key", "api-token"),
        ],
    )])
    .await;
    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "nokey", CAPS_SECRET);
    assert!(line.contains("caps-secret"), "names the Secret: {line}");
    assert!(
        line.contains("`api-token`"),
        "names the missing key: {line}"
    );

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[("nokey.test", "/", "404")]).await;
    assert_eq!(rec.arrived(), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Counter scopes

/// Counters are scoped per namespace: `caps` on Ingresses in `alpha` and `beta` counts each
/// namespace's requests from 1 independently, while two Ingresses of the same namespace share
/// one count; a configuration reload does not reset them.
#[tokio::test]
async fn counters_are_per_namespace() {
    let plugins = PluginDir::with(&["caps"]);
    let rec = Recorder::start("app").await;
    let counted = |ns: &str, host: &str| {
        ingress_in(ns, "counted", host, &[(PLUGINS, "caps"), (GRANT, ALL_CAPS)]).build()
    };
    let mut objects = Vec::new();
    for ns in ["alpha", "beta"] {
        objects.extend(app_service_in(ns, &rec));
        objects.push(caps_secret(ns));
    }
    objects.push(counted("beta", "beta.test"));
    objects.push(
        ingress_in(
            "alpha",
            "counted-too",
            "alpha-too.test",
            &[(PLUGINS, "caps"), (GRANT, ALL_CAPS)],
        )
        .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    m.write("alpha.yaml", &[counted("alpha", "alpha.test")]);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let mut counts = Vec::new();
    for host in [
        "alpha.test",
        "beta.test",
        "alpha.test",
        "beta.test",
        "alpha-too.test",
        "beta.test",
    ] {
        let r = gw.get(host, "/").await;
        assert_eq!(r.status, 200, "{host}: {}", r.summary());
        counts.push((host, number(&r, "x-caps-count")));
    }
    assert_eq!(
        counts,
        [
            ("alpha.test", 1),
            ("beta.test", 1),
            ("alpha.test", 2),
            ("beta.test", 2),
            ("alpha-too.test", 3),
            ("beta.test", 3),
        ]
    );

    // A reload configures the routes again; counts live on (a reload must not reset them).
    m.write("alpha.yaml", &[counted("alpha", "alpha-renamed.test")]);
    let r = gw
        .poll_until(
            "alpha-renamed.test",
            "/",
            "the renamed host to be served",
            |r| r.status == 200,
        )
        .await;
    assert_eq!(
        number(&r, "x-caps-count"),
        4,
        "alpha's count after the reload continues from 3"
    );
}

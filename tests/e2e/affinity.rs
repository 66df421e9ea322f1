//! Cookie session affinity (ingress-nginx `affinity: "cookie"`, `affinity-mode`,
//! `affinity-canary-behavior` and the `session-cookie-*` annotations) through the real binary,
//! with real echo backends that say who answered: several pods of one Service (one
//! EndpointSlice, one port, loopback addresses 127.0.0.1 to 127.0.0.5), and for failures a pod
//! that can be stopped for good (its listener and every connection to it closed).
//!
//! Covered, in both modes (`balanced`, the default, and `persistent`):
//! - stickiness: a client without a cookie gets `Set-Cookie: INGRESSCOOKIE=<16 hex digits>;
//!   Path=<Ingress path>; HttpOnly`; with it, every later request goes to the same endpoint and
//!   gets no `Set-Cookie`; clients without cookies spread over the endpoints;
//! - cookies never show an endpoint's address; a persistent cookie names an endpoint under its
//!   Ingress's key, so another Ingress's cookie (same Service, same endpoint) is not honoured
//!   there, nor is a garbled one: both get a new `Set-Cookie`; any 16-hex value is a valid
//!   balanced key, and the default mode is balanced;
//! - movement: when the client's endpoint leaves the EndpointSlice (manifest rewritten while
//!   running) it goes elsewhere (persistent: with a new cookie) while clients of the other
//!   endpoints stay; adding a fifth endpoint moves a bounded share of 200 balanced keys, all
//!   of them to the new endpoint;
//! - the cookie's attributes: `session-cookie-name`, `-path` (default: the Ingress path),
//!   `-domain`, `-max-age`, `-expires`, `-secure`, `-samesite` (None, Lax, Strict, any case),
//!   `-conditional-samesite-none` (left out for an old Chrome), and `Secure` by default on HTTPS
//!   (not on plain HTTP, not with `session-cookie-secure: "false"`);
//! - the canary: with a canary of weight 100, a client holding a valid main cookie stays on the
//!   main backend (`affinity-canary-behavior: sticky`, the default) or goes to the canary
//!   (`legacy`); a client without one goes to the canary;
//! - `session-cookie-change-on-failure`: a client whose endpoint died is answered by the retry
//!   and, with the annotation, gets a new cookie naming where the retry went (and stays there),
//!   as do new clients first sent to the dead pod; without it the retry answers and the cookie
//!   stays as it was;
//! - `wasmgress validate`: `affinity: "ip"` refused naming the key; regex paths (`use-regex`,
//!   or `rewrite-target`, which implies it) without `session-cookie-path` refused naming
//!   `session-cookie-path`, accepted with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::backend::{same_port, several};
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, ready, service};
use crate::harness::process::{RELOAD_LIMIT, assert_no_error_about, validate, validate_error};
use crate::harness::{
    Backend, Conn, Ingress, Manifests, Port, Req, Resp, Wasmgress, implementation_specific, prefix,
};

const AFFINITY: &str = "nginx.ingress.kubernetes.io/affinity";
const MODE: &str = "nginx.ingress.kubernetes.io/affinity-mode";
const CANARY_BEHAVIOR: &str = "nginx.ingress.kubernetes.io/affinity-canary-behavior";
const NAME: &str = "nginx.ingress.kubernetes.io/session-cookie-name";
const PATH: &str = "nginx.ingress.kubernetes.io/session-cookie-path";
const DOMAIN: &str = "nginx.ingress.kubernetes.io/session-cookie-domain";
const MAX_AGE: &str = "nginx.ingress.kubernetes.io/session-cookie-max-age";
const EXPIRES: &str = "nginx.ingress.kubernetes.io/session-cookie-expires";
const SECURE: &str = "nginx.ingress.kubernetes.io/session-cookie-secure";
const SAME_SITE: &str = "nginx.ingress.kubernetes.io/session-cookie-samesite";
const CONDITIONAL: &str = "nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none";
const CHANGE_ON_FAILURE: &str = "nginx.ingress.kubernetes.io/session-cookie-change-on-failure";
const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const USE_REGEX: &str = "nginx.ingress.kubernetes.io/use-regex";
const REWRITE_TARGET: &str = "nginx.ingress.kubernetes.io/rewrite-target";
const SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";

/// The default cookie name.
const COOKIE: &str = "INGRESSCOOKIE";

/// The two modes, as annotation values.
const MODES: [&str; 2] = ["balanced", "persistent"];

/// An old Chrome, which mishandles `SameSite=None`, and a current one.
const OLD_CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                          Chrome/62.0.3202.94 Safari/537.36";
const NEW_CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                          Chrome/120.0.0.0 Safari/537.36";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Ingress `name`: `host` `path` (Prefix) to Service `svc`, with `affinity: cookie` (unless
/// `annotations` set `affinity` itself) and `annotations`.
fn sticky(name: &str, host: &str, path: &str, svc: &str, annotations: &[(&str, &str)]) -> Ingress {
    let base = if annotations.iter().any(|(k, _)| *k == AFFINITY) {
        Ingress::new(name)
    } else {
        Ingress::new(name).annotation(AFFINITY, "cookie")
    };
    annotations
        .iter()
        .fold(base, |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(host), &[prefix(path, svc)])
}

/// `n` pods `pod-1`..`pod-n` on 127.0.0.1..127.0.0.n, all on one port.
async fn pods(n: u8) -> Vec<Backend> {
    let names: Vec<String> = (1..=n).map(|i| format!("pod-{i}")).collect();
    let ips: Vec<(&str, IpAddr)> = names
        .iter()
        .zip(1..=n)
        .map(|(name, i)| (name.as_str(), IpAddr::from([127, 0, 0, i])))
        .collect();
    same_port(&ips).await
}

/// Service `svc` (port 80 `http`) and one EndpointSlice listing `members` of `pods` as ready.
fn pods_service(svc: &str, pods: &[Backend], members: &[&Backend]) -> Vec<Value> {
    let port = pods[0].port();
    let ips: Vec<String> = members.iter().map(|b| b.ip()).collect();
    let endpoints: Vec<_> = ips.iter().map(|ip| ready(ip)).collect();
    vec![
        service(
            NS,
            svc,
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(port),
            }],
        ),
        endpoint_slice(
            NS,
            svc,
            &format!("{svc}-slice"),
            &[(Some("http"), port)],
            &endpoints,
        ),
    ]
}

/// Service `svc` with one EndpointSlice per endpoint, each on 127.0.0.1 and its own port (pods
/// that listen on different ports, as during a rollout).
fn ports_service(svc: &str, ports: &[u16]) -> Vec<Value> {
    let mut docs = vec![service(
        NS,
        svc,
        &[ServicePort {
            name: Some("http"),
            port: 80,
            target: Port::Name("http"),
        }],
    )];
    for (i, port) in ports.iter().enumerate() {
        docs.push(endpoint_slice(
            NS,
            svc,
            &format!("{svc}-{i}"),
            &[(Some("http"), *port)],
            &[ready("127.0.0.1")],
        ));
    }
    docs
}

/// A `Set-Cookie` the proxy sent: the cookie's name and value and its attributes as written.
#[derive(Clone, Debug)]
struct SetCookie {
    raw: String,
    name: String,
    value: String,
    attributes: Vec<String>,
}

impl SetCookie {
    fn parse(raw: &str) -> Self {
        let mut parts = raw.split(';').map(str::trim);
        let pair = parts.next().unwrap_or_default();
        let (name, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("Set-Cookie without `name=value`: {raw:?}"));
        Self {
            raw: raw.to_owned(),
            name: name.to_owned(),
            value: value.to_owned(),
            attributes: parts.map(str::to_owned).collect(),
        }
    }

    /// The value of attribute `name` (case-insensitive; `""` for a flag), if present.
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find_map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// The attributes, sorted, with the `Expires` date replaced by `<date>` once checked to be
    /// an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
    fn attributes_shape(&self) -> Vec<String> {
        let mut shape: Vec<String> = self
            .attributes
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, date)) if k.eq_ignore_ascii_case("expires") => {
                    assert!(
                        is_http_date(date),
                        "Expires is not an HTTP date in {:?}",
                        self.raw
                    );
                    format!("{k}=<date>")
                }
                _ => a.clone(),
            })
            .collect();
        shape.sort();
        shape
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's IMF-fixdate).
fn is_http_date(s: &str) -> bool {
    let b = s.as_bytes();
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && days.contains(&&s[0..3])
        && &s[3..5] == ", "
        && digits(5..7)
        && months.contains(&&s[8..11])
        && digits(12..16)
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &s[25..] == " GMT"
}

/// Exactly 16 hex digits.
fn is_hex16(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every `Set-Cookie` of a response.
fn set_cookies(r: &Resp) -> Vec<SetCookie> {
    r.headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| SetCookie::parse(v.to_str().expect("Set-Cookie is ASCII")))
        .collect()
}

/// The response's one `Set-Cookie`, if any (a second one is a failure).
fn set_cookie(r: &Resp) -> Option<SetCookie> {
    let mut all = set_cookies(r);
    assert!(all.len() <= 1, "more than one Set-Cookie: {all:?}");
    all.pop()
}

/// The response's one `Set-Cookie`, or a panic saying `what` and what came back.
fn expect_cookie(r: &Resp, what: &str) -> SetCookie {
    set_cookie(r).unwrap_or_else(|| panic!("{what}: expected a Set-Cookie, got {}", answer(r)))
}

/// Who answered and with what cookie, for messages.
fn answer(r: &Resp) -> String {
    let cookies: Vec<String> = set_cookies(r).into_iter().map(|c| c.raw).collect();
    format!("{} (Set-Cookie: {cookies:?})", r.summary())
}

/// Which backend answered (a 200 from an echo backend), or a panic saying `what`.
fn from(r: &Resp, what: &str) -> String {
    match r.backend() {
        Some(b) if r.status == 200 => b,
        _ => panic!("{what}: expected a 200 from a backend, got {}", answer(r)),
    }
}

/// `GET http://host/path` carrying `Cookie: name=value`.
fn with_cookie(host: &str, path: &str, name: &str, value: &str) -> Req {
    Req::get(host, path).header("cookie", &format!("{name}={value}"))
}

/// Sends `req` over `conn`, reconnecting once if the proxy closed the kept-alive connection.
async fn send_on(gw: &Wasmgress, conn: &mut Conn, req: &Req) -> Resp {
    match conn.send(req).await {
        Ok(r) => r,
        Err(_) => {
            *conn = gw.h1().await;
            conn.send(req)
                .await
                .unwrap_or_else(|e| panic!("GET {}{}: {e}", req.host, req.path_and_query))
        }
    }
}

/// Fresh clients (no cookie) of `host` until each of `want` backends has given one its cookie:
/// the cookie value per backend. Panics after 60 clients.
async fn cookies_for(gw: &Wasmgress, host: &str, want: &[&str]) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for i in 0..60 {
        let r = gw.get(host, "/").await;
        let who = from(&r, &format!("fresh client {i} of {host}"));
        let c = expect_cookie(&r, &format!("fresh client {i} of {host}"));
        found.entry(who).or_insert(c.value);
        if want.iter().all(|w| found.contains_key(*w)) {
            return found;
        }
    }
    panic!("60 fresh clients of {host} did not get cookies for all of {want:?}: {found:?}");
}

/// Sends `req` until `ok` holds for the response (within [`RELOAD_LIMIT`]: a manifest edit
/// taking effect) and returns it; panics naming `what` and the last response otherwise.
async fn poll(gw: &Wasmgress, req: &Req, what: &str, ok: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let r = gw.send(req).await;
        if ok(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {RELOAD_LIMIT:?} for {what}; last response: {}",
            answer(&r)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `req` `n` times; panics unless every answer is a 200 from `want` without `Set-Cookie`.
async fn assert_stuck(gw: &Wasmgress, req: &Req, n: usize, want: &str, what: &str) {
    let mut conn = gw.h1().await;
    for i in 0..n {
        let r = send_on(gw, &mut conn, req).await;
        let who = from(&r, what);
        assert!(
            who == want && set_cookie(&r).is_none(),
            "{what}: request {i} of {n} with {:?} should reach {want} without a new cookie, \
             got {}",
            req.headers,
            answer(&r)
        );
    }
}

/// An echo backend behind a relay that can be stopped for good, as a pod that dies: its
/// listener and every connection to it close (dropping a harness [`Backend`] closes only its
/// listener; connections the proxy keeps alive would still be answered).
struct Mortal {
    addr: SocketAddr,
    _echo: Backend,
    accept: Option<JoinHandle<()>>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Mortal {
    async fn start(name: &str) -> Self {
        let echo = Backend::start(name).await;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a relay on 127.0.0.1:0");
        let addr = listener.local_addr().expect("relay address");
        let relays = Arc::new(Mutex::new(Vec::new()));
        let (to, tasks) = (echo.addr, relays.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                tasks.lock().expect("relay list").push(relay);
            }
        });
        Self {
            addr,
            _echo: echo,
            accept: Some(accept),
            relays,
        }
    }

    /// Closes the listener and every connection, and checks that connecting is refused.
    async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let relays = std::mem::take(&mut *self.relays.lock().expect("relay list"));
        for relay in relays {
            relay.abort();
            let _ = relay.await;
        }
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "{} was stopped, but something still listens there",
            self.addr
        );
    }
}

impl Drop for Mortal {
    fn drop(&mut self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
        if let Ok(relays) = self.relays.lock() {
            relays.iter().for_each(JoinHandle::abort);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Stickiness

/// Four pods behind one Service, an Ingress per mode. A fresh client gets
/// `INGRESSCOOKIE=<16 hex>; Path=/; HttpOnly`; 20 requests with that cookie (alone or among
/// other cookies), and 5 over HTTP/2 with the cookie in a `cookie` field of its own, reach the
/// same pod and get no `Set-Cookie`; a client stuck to each pod stays
/// there; 20 fresh clients spread over the pods, each with a cookie.
#[tokio::test]
async fn a_cookie_keeps_a_client_on_its_endpoint_in_both_modes() {
    let pods = pods(4).await;
    let all: Vec<&Backend> = pods.iter().collect();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let mut objects = pods_service("pods", &pods, &all);
    for mode in MODES {
        let host = format!("{mode}.affinity.test");
        objects.push(sticky(mode, &host, "/", "pods", &[(MODE, mode)]).build());
    }
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for mode in MODES {
        let host = format!("{mode}.affinity.test");
        let first = gw.get(&host, "/").await;
        let pod = from(&first, &format!("{mode}: first request"));
        let c = expect_cookie(&first, &format!("{mode}: first request"));
        assert!(
            c.name == COOKIE
                && is_hex16(&c.value)
                && c.attributes == ["Path=/", "HttpOnly"].map(String::from),
            "{mode}: the first request's cookie should be `{COOKIE}=<16 hex digits>; Path=/; \
             HttpOnly`, got {:?}",
            c.raw
        );

        // The same client: 20 requests, half of them sending other cookies too.
        let mut conn = gw.h1().await;
        for i in 0..20 {
            let cookie = if i % 2 == 0 {
                format!("{COOKIE}={}", c.value)
            } else {
                format!("theme=dark; {COOKIE}={}; lang=en", c.value)
            };
            let r = send_on(
                &gw,
                &mut conn,
                &Req::get(&host, "/").header("cookie", &cookie),
            )
            .await;
            let who = from(&r, &format!("{mode}: request {i} with the cookie"));
            assert!(
                who == pod && set_cookie(&r).is_none(),
                "{mode}: request {i} with `Cookie: {cookie}` should reach {pod} (the first \
                 request's pod) without a new cookie, got {}",
                answer(&r)
            );
        }
        // Over HTTP/2, where clients may send each cookie in its own `cookie` field.
        let mut h2 = gw.h2c().await;
        let req = Req::get(&host, "/")
            .header("cookie", "theme=dark")
            .header("cookie", &format!("{COOKIE}={}", c.value));
        for i in 0..5 {
            let r = h2
                .send(&req)
                .await
                .unwrap_or_else(|e| panic!("{mode}: h2c request {i}: {e}"));
            let who = from(&r, &format!("{mode}: h2c request {i} with the cookie"));
            assert!(
                who == pod && set_cookie(&r).is_none(),
                "{mode}: h2c request {i} with the cookie in its own `cookie` field should reach \
                 {pod} without a new cookie, got {}",
                answer(&r)
            );
        }

        // A client stuck to each pod stays on it.
        let cookies = cookies_for(&gw, &host, &names).await;
        for (pod, value) in &cookies {
            let req = with_cookie(&host, "/", COOKIE, value);
            assert_stuck(&gw, &req, 5, pod, &format!("{mode}: client of {pod}")).await;
        }

        // Fresh clients spread, each getting a cookie.
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..20 {
            let r = gw.get(&host, "/").await;
            let who = from(&r, &format!("{mode}: fresh client {i}"));
            expect_cookie(&r, &format!("{mode}: fresh client {i}"));
            *seen.entry(who).or_default() += 1;
        }
        assert!(
            seen.len() >= 3,
            "{mode}: 20 clients without cookies should spread over the 4 pods, got {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. What a cookie reveals, and whose it is

/// Two persistent Ingresses over the same four pods name each pod differently (their own
/// keys), and no cookie shows an address; one Ingress's cookie sent to the other gets a new
/// cookie there, as do garbled cookies and made-up 16-hex values. On a balanced Ingress (the
/// default mode) any 16-hex value is a key that sticks (no new cookie), in either case of
/// letters, while garbled values get a new cookie.
#[tokio::test]
async fn cookies_hide_addresses_and_persistent_ones_belong_to_their_ingress() {
    let pods = pods(4).await;
    let all: Vec<&Backend> = pods.iter().collect();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let mut objects = pods_service("pods", &pods, &all);
    for name in ["one", "two"] {
        let host = format!("{name}.affinity.test");
        objects.push(sticky(name, &host, "/", "pods", &[(MODE, "persistent")]).build());
    }
    objects.push(sticky("default-mode", "default.affinity.test", "/", "pods", &[]).build());
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let one = cookies_for(&gw, "one.affinity.test", &names).await;
    let two = cookies_for(&gw, "two.affinity.test", &names).await;
    let balanced = cookies_for(&gw, "default.affinity.test", &names).await;
    for (pod, value) in one.iter().chain(&two).chain(&balanced) {
        let lower = value.to_ascii_lowercase();
        assert!(
            is_hex16(value) && !value.contains("127.0.0.") && !lower.contains("7f0000"),
            "the cookie for {pod} should be 16 hex digits that do not show its address, got \
             {value:?}"
        );
    }
    for pod in &names {
        assert_ne!(
            one[*pod], two[*pod],
            "two persistent Ingresses gave {pod} the same cookie value: cookies are not keyed \
             per Ingress"
        );
    }

    // Foreign and garbled cookies on a persistent Ingress: a new cookie, and an answer.
    let mut wrong = Vec::new();
    let foreign: Vec<String> = one.values().cloned().collect();
    let garbled = [
        "",
        "zz",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789abcdeg",
        "0x23456789abcdef",
        "0123456789abcdef",
        "FFFFFFFFFFFFFFFF",
    ];
    let values = foreign.iter().map(String::as_str).chain(garbled);
    for value in values {
        let r = gw
            .send(&with_cookie("two.affinity.test", "/", COOKIE, value))
            .await;
        let fresh = set_cookie(&r);
        if r.status != 200
            || r.backend().is_none()
            || fresh.as_ref().is_none_or(|c| c.value == value)
        {
            wrong.push(format!(
                "persistent Ingress two with `{COOKIE}={value}` (not one of its cookies): \
                 expected a 200 with a new cookie, got {}",
                answer(&r)
            ));
        }
    }

    // On the balanced (default) Ingress: garbled values get a new cookie, any 16 hex digits
    // stick.
    for value in [
        "",
        "zz",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789abcdeg",
    ] {
        let r = gw
            .send(&with_cookie("default.affinity.test", "/", COOKIE, value))
            .await;
        if r.status != 200 || r.backend().is_none() || set_cookie(&r).is_none() {
            wrong.push(format!(
                "balanced Ingress with `{COOKIE}={value}`: expected a 200 with a new cookie, got \
                 {}",
                answer(&r)
            ));
        }
    }
    for value in ["0123456789abcdef", "FEDCBA9876543210", "0000000000000000"] {
        let req = with_cookie("default.affinity.test", "/", COOKIE, value);
        let first = gw.send(&req).await;
        match (first.backend(), set_cookie(&first)) {
            (Some(pod), None) if first.status == 200 => {
                assert_stuck(&gw, &req, 5, &pod, &format!("balanced key {value}")).await;
            }
            _ => wrong.push(format!(
                "balanced Ingress (the default mode) with the made-up key `{COOKIE}={value}`: \
                 expected a 200 without a new cookie, got {}",
                answer(&first)
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Movement

/// Two Services over the same four pods, a balanced Ingress on one and a persistent one on the
/// other; a client stuck to each pod of each. The pod of the first client is removed from each
/// EndpointSlice (the manifest rewritten while running): that client goes to another pod
/// (persistent: with a new cookie, which then sticks; balanced: its key now leads there, no
/// new cookie), and the clients of the other pods stay where they were, without new cookies.
#[tokio::test]
async fn a_client_whose_endpoint_leaves_goes_elsewhere_and_the_others_stay() {
    let pods = pods(4).await;
    let all: Vec<&Backend> = pods.iter().collect();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let mut services = Vec::new();
    let mut ingresses = Vec::new();
    for mode in MODES {
        services.extend(pods_service(mode, &pods, &all));
        let host = format!("{mode}.affinity.test");
        ingresses.push(sticky(mode, &host, "/", mode, &[(MODE, mode)]).build());
    }
    let m = Manifests::new();
    m.write("services.yaml", &services);
    m.write("ingresses.yaml", &ingresses);
    let gw = Wasmgress::start(&m, &[]).await;

    let mut clients = BTreeMap::new();
    for mode in MODES {
        let host = format!("{mode}.affinity.test");
        clients.insert(mode, cookies_for(&gw, &host, &names).await);
    }
    // Each mode loses the pod its first client is on.
    let leaving: BTreeMap<&str, String> = clients
        .iter()
        .map(|(mode, cookies)| (*mode, cookies.keys().next().expect("a pod").clone()))
        .collect();
    let mut services = Vec::new();
    for mode in MODES {
        let rest: Vec<&Backend> = pods.iter().filter(|p| p.name != leaving[mode]).collect();
        services.extend(pods_service(mode, &pods, &rest));
    }
    m.write("services.yaml", &services);

    for mode in MODES {
        let host = format!("{mode}.affinity.test");
        let gone = &leaving[mode];
        let req = with_cookie(&host, "/", COOKIE, &clients[mode][gone]);
        let moved = poll(
            &gw,
            &req,
            &format!("{mode}: the client of {gone} to move once {gone} left the EndpointSlice"),
            |r| r.backend().is_some_and(|b| b != *gone),
        )
        .await;
        let now = from(&moved, &format!("{mode}: the client of {gone}"));
        match mode {
            "persistent" => {
                let c = expect_cookie(
                    &moved,
                    &format!("persistent: the client of {gone}, which left"),
                );
                assert!(
                    c.name == COOKIE && is_hex16(&c.value) && c.value != clients[mode][gone],
                    "persistent: the client of {gone} should get a new cookie, got {:?}",
                    c.raw
                );
                let again = with_cookie(&host, "/", COOKIE, &c.value);
                assert_stuck(&gw, &again, 5, &now, "persistent: the new cookie").await;
            }
            _ => {
                assert!(
                    set_cookie(&moved).is_none(),
                    "balanced: the client of {gone} keeps its key, which now leads to {now}; \
                     got {}",
                    answer(&moved)
                );
                assert_stuck(&gw, &req, 5, &now, "balanced: the moved key").await;
            }
        }
        for (pod, value) in &clients[mode] {
            if pod != gone {
                let req = with_cookie(&host, "/", COOKIE, value);
                let what = format!("{mode}: the client of {pod} after {gone} left");
                assert_stuck(&gw, &req, 3, pod, &what).await;
            }
        }
    }
}

/// A balanced Ingress over four pods; 200 made-up keys (any 16 hex digits is a key) each reach
/// some pod. A fifth pod joins the EndpointSlice: between 5% and 45% of the keys (a fifth,
/// expected) now reach another pod, every one of them the new pod, and no key gets a new
/// cookie.
#[tokio::test]
async fn adding_an_endpoint_moves_a_bounded_share_of_balanced_clients_all_to_it() {
    let pods = pods(5).await;
    let four: Vec<&Backend> = pods.iter().take(4).collect();
    let five: Vec<&Backend> = pods.iter().collect();
    let newcomer = pods[4].name.clone();
    let host = "scale.affinity.test";
    let m = Manifests::new();
    m.write("services.yaml", &pods_service("pods", &pods, &four));
    m.write(
        "ingress.yaml",
        &[sticky("scale", host, "/", "pods", &[(MODE, "balanced")]).build()],
    );
    let gw = Wasmgress::start(&m, &[]).await;

    let keys: Vec<String> = (1..=200u64)
        .map(|i| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let reach = async |what: &str| -> Vec<String> {
        let mut conn = gw.h1().await;
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            let r = send_on(&gw, &mut conn, &with_cookie(host, "/", COOKIE, key)).await;
            let who = from(&r, &format!("{what}: key {key}"));
            assert!(
                set_cookie(&r).is_none(),
                "{what}: key {key} is valid and should get no new cookie, got {}",
                answer(&r)
            );
            out.push(who);
        }
        out
    };
    let before = reach("four pods").await;
    let used: BTreeSet<&String> = before.iter().collect();
    assert!(
        used.len() == 4 && !used.contains(&newcomer),
        "200 keys should reach all four pods (and not {newcomer}, not yet listed), got {used:?}"
    );

    m.write("services.yaml", &pods_service("pods", &pods, &five));
    gw.poll_until(
        host,
        "/",
        &format!("fresh clients to reach {newcomer}"),
        |r| r.backend().as_deref() == Some(newcomer.as_str()),
    )
    .await;
    let after = reach("five pods").await;

    let mut moved = 0;
    let mut elsewhere = Vec::new();
    for ((key, was), now) in keys.iter().zip(&before).zip(&after) {
        if was != now {
            moved += 1;
            if *now != newcomer {
                elsewhere.push(format!("{key}: {was} -> {now}"));
            }
        }
    }
    assert!(
        elsewhere.is_empty(),
        "keys may move only to the new pod {newcomer}; these moved elsewhere:\n{}",
        elsewhere.join("\n")
    );
    assert!(
        (10..=90).contains(&moved),
        "adding a fifth pod should move between 5% and 45% of 200 balanced keys (a fifth \
         expected), moved {moved}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The cookie's attributes

/// Each `session-cookie-*` annotation shows in the cookie: the name, path (default: the
/// Ingress path), domain, max-age, expires (a date), secure, samesite (None, Lax, Strict; the
/// value in any case), and `conditional-samesite-none` leaving `SameSite=None` out for an old
/// Chrome only. The custom-named cookie sticks; a cookie under the default name is not it.
#[tokio::test]
async fn cookie_attributes_follow_the_annotations() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.extend([
        sticky("shop", "shop.affinity.test", "/shop", "app", &[]).build(),
        sticky(
            "every",
            "every.affinity.test",
            "/",
            "app",
            &[
                (NAME, "SERVERID"),
                (PATH, "/app"),
                (DOMAIN, ".example.com"),
                (MAX_AGE, "3600"),
                (EXPIRES, "7200"),
                (SECURE, "true"),
                (SAME_SITE, "Strict"),
            ],
        )
        .build(),
        sticky(
            "lax",
            "lax.affinity.test",
            "/",
            "app",
            &[(SAME_SITE, "lax")],
        )
        .build(),
        sticky(
            "none-conditional",
            "conditional.affinity.test",
            "/",
            "app",
            &[(SAME_SITE, "None"), (SECURE, "true"), (CONDITIONAL, "true")],
        )
        .build(),
        sticky(
            "none-always",
            "none.affinity.test",
            "/",
            "app",
            &[(SAME_SITE, "None"), (SECURE, "true")],
        )
        .build(),
        sticky(
            "insecure",
            "insecure.affinity.test",
            "/",
            "app",
            &[(SECURE, "false")],
        )
        .build(),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    // (host, path, user agent, cookie name, attributes sorted with `Expires=<date>`)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "shop.affinity.test",
            "/shop/cart",
            None,
            COOKIE,
            &["HttpOnly", "Path=/shop"],
        ),
        (
            "every.affinity.test",
            "/app/x",
            None,
            "SERVERID",
            &[
                "Domain=.example.com",
                "Expires=<date>",
                "HttpOnly",
                "Max-Age=3600",
                "Path=/app",
                "SameSite=Strict",
                "Secure",
            ],
        ),
        (
            "lax.affinity.test",
            "/",
            None,
            COOKIE,
            &["HttpOnly", "Path=/", "SameSite=Lax"],
        ),
        (
            "conditional.affinity.test",
            "/",
            Some(OLD_CHROME),
            COOKIE,
            &["HttpOnly", "Path=/", "Secure"],
        ),
        (
            "conditional.affinity.test",
            "/",
            Some(NEW_CHROME),
            COOKIE,
            &["HttpOnly", "Path=/", "SameSite=None", "Secure"],
        ),
        (
            "conditional.affinity.test",
            "/",
            None,
            COOKIE,
            &["HttpOnly", "Path=/", "SameSite=None", "Secure"],
        ),
        (
            "none.affinity.test",
            "/",
            Some(OLD_CHROME),
            COOKIE,
            &["HttpOnly", "Path=/", "SameSite=None", "Secure"],
        ),
        (
            "insecure.affinity.test",
            "/",
            None,
            COOKIE,
            &["HttpOnly", "Path=/"],
        ),
    ];
    let mut wrong = Vec::new();
    for &(host, path, ua, name, want) in cases {
        let mut req = Req::get(host, path);
        if let Some(ua) = ua {
            req = req.header("user-agent", ua);
        }
        let r = gw.send(&req).await;
        let what = format!("GET http://{host}{path} (user agent {ua:?})");
        let Some(c) = set_cookie(&r).filter(|_| r.backend().is_some()) else {
            wrong.push(format!(
                "{what}: expected an answer with a Set-Cookie, got {}",
                answer(&r)
            ));
            continue;
        };
        if c.name != name || !is_hex16(&c.value) || c.attributes_shape() != want {
            wrong.push(format!(
                "{what}: expected `{name}=<16 hex digits>` with attributes {want:?} (in any \
                 order), got {:?}",
                c.raw
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The custom name sticks; the default name means nothing there.
    let r = gw.get("every.affinity.test", "/app").await;
    let pod = from(&r, "every: first request");
    let c = expect_cookie(&r, "every: first request");
    let req = with_cookie("every.affinity.test", "/app", "SERVERID", &c.value);
    assert_stuck(&gw, &req, 3, &pod, "every: the SERVERID cookie").await;
    let r = gw
        .send(&with_cookie(
            "every.affinity.test",
            "/app",
            COOKIE,
            &c.value,
        ))
        .await;
    let fresh = expect_cookie(&r, "every: a cookie under the default name, not SERVERID");
    assert_eq!(fresh.name, "SERVERID", "{:?}", fresh.raw);
}

/// On HTTPS the cookie is `Secure` unless `session-cookie-secure: "false"`; the same Ingress
/// over plain HTTP (`ssl-redirect: "false"`) gives a cookie without `Secure`.
#[tokio::test]
async fn https_cookies_are_secure_by_default() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["tls.affinity.test", "tls-off.affinity.test"]);
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(leaf.secret("affinity-tls", false));
    for (name, host, annotations) in [
        ("tls", "tls.affinity.test", &[(SSL_REDIRECT, "false")][..]),
        ("tls-off", "tls-off.affinity.test", &[(SECURE, "false")][..]),
    ] {
        objects.push(
            sticky(name, host, "/", "app", annotations)
                .tls(&[host], "affinity-tls")
                .build(),
        );
    }
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let mut wrong = Vec::new();
    for (host, want_secure) in [
        ("tls.affinity.test", true),
        ("tls-off.affinity.test", false),
    ] {
        let config = certs::client_config(ca.roots(), &[b"http/1.1"], BOTH_VERSIONS);
        let tls = gw
            .tls(host, config)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake for {host}: {e}"));
        let mut conn = Conn::h1(tls).await.expect("HTTP/1.1 over TLS");
        let r = conn
            .send(&Req::get(host, "/").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("HTTPS GET {host}/: {e}"));
        let c = expect_cookie(&r, &format!("HTTPS GET {host}/"));
        if c.attribute("Secure").is_some() != want_secure {
            wrong.push(format!(
                "HTTPS GET {host}/: Secure expected {want_secure}, got {:?}",
                c.raw
            ));
        }
    }
    let r = gw.get("tls.affinity.test", "/").await;
    let c = expect_cookie(&r, "plain GET tls.affinity.test/ (ssl-redirect false)");
    if c.attribute("Secure").is_some() {
        wrong.push(format!(
            "plain HTTP GET tls.affinity.test/: no Secure expected, got {:?}",
            c.raw
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. The canary

/// Four main Ingresses with affinity (balanced and persistent, each `sticky` by default and
/// `legacy`), each with a canary Ingress. Clients get their main cookies while the canaries
/// weigh 0 (balanced clients also use a made-up key); then the canaries go to weight 100.
/// Clients without a cookie, or with a garbled one, go to the canary; clients with a valid
/// main cookie stay on the main backend under `sticky` and go to the canary under `legacy`.
#[tokio::test]
async fn a_stuck_client_stays_off_the_canary_unless_legacy() {
    let (_backends, services) = several(&["stable", "canary"]).await;
    let cases = [
        ("sticky", "balanced"),
        ("sticky", "persistent"),
        ("legacy", "balanced"),
        ("legacy", "persistent"),
    ];
    let host = |behavior: &str, mode: &str| format!("{behavior}-{mode}.affinity.test");
    let ingresses = |weight: &str| -> Vec<Value> {
        let mut docs = Vec::new();
        for (behavior, mode) in cases {
            let h = host(behavior, mode);
            let name = format!("{behavior}-{mode}");
            let mut settings = vec![(MODE, mode)];
            if behavior == "legacy" {
                settings.push((CANARY_BEHAVIOR, "legacy"));
            }
            docs.push(
                sticky(&name, &h, "/", "stable", &settings)
                    .created("2024-01-01T00:00:00Z")
                    .build(),
            );
            docs.push(
                Ingress::new(&format!("{name}-canary"))
                    .created("2024-06-01T00:00:00Z")
                    .annotation(CANARY, "true")
                    .annotation(WEIGHT, weight)
                    .rule(Some(&h), &[prefix("/", "canary")])
                    .build(),
            );
        }
        docs
    };
    let m = Manifests::new();
    m.write("services.yaml", &services);
    m.write("ingresses.yaml", &ingresses("0"));
    let gw = Wasmgress::start(&m, &[]).await;

    let mut held = BTreeMap::new();
    for (behavior, mode) in cases {
        let h = host(behavior, mode);
        let r = gw.get(&h, "/").await;
        assert_eq!(from(&r, &h), "stable", "{h} with canary weight 0");
        let c = expect_cookie(&r, &format!("{h} with canary weight 0"));
        let mut values = vec![c.value];
        if mode == "balanced" {
            values.push("0123456789abcdef".to_owned());
        }
        held.insert(h, values);
    }

    m.write("ingresses.yaml", &ingresses("100"));
    for (behavior, mode) in cases {
        let h = host(behavior, mode);
        poll(
            &gw,
            &Req::get(&h, "/"),
            &format!("{h}: canary weight 100"),
            |r| r.backend().as_deref() == Some("canary"),
        )
        .await;
    }

    let mut wrong = Vec::new();
    for (behavior, mode) in cases {
        let h = host(behavior, mode);
        let want = if behavior == "sticky" {
            "stable"
        } else {
            "canary"
        };
        for value in &held[&h] {
            for i in 0..5 {
                let r = gw.send(&with_cookie(&h, "/", COOKIE, value)).await;
                let got = r.backend().unwrap_or_else(|| r.summary());
                if got != want {
                    wrong.push(format!(
                        "{h} ({behavior}, {mode}), canary weight 100, request {i} with the main \
                         cookie {COOKIE}={value}: expected {want}, got {}",
                        answer(&r)
                    ));
                    break;
                }
            }
        }
        for cookie in [None, Some("zz")] {
            let req = match cookie {
                Some(v) => with_cookie(&h, "/", COOKIE, v),
                None => Req::get(&h, "/"),
            };
            for i in 0..5 {
                let r = gw.send(&req).await;
                if r.backend().as_deref() != Some("canary") {
                    wrong.push(format!(
                        "{h} ({behavior}, {mode}), canary weight 100, request {i} with cookie \
                         {cookie:?}: expected canary, got {}",
                        answer(&r)
                    ));
                    break;
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 6. Change on failure

/// A client whose pod died, and the proxy it talks to (see [`after_death`]).
struct Death {
    gw: Wasmgress,
    /// The client's first GET after the death.
    resp: Resp,
    /// The cookie value it sent.
    old: String,
    _steady: Backend,
    _manifests: Manifests,
}

/// One process per case: Service `pair` with pod `mortal` (stoppable) and pod `steady`, each
/// in its own EndpointSlice, and Ingress `pair` in `mode` with `extra` annotations. A client
/// gets a cookie stuck to `mortal`, which then dies; then the client sends its next GET.
async fn after_death(mode: &str, extra: &[(&str, &str)]) -> Death {
    let mut mortal = Mortal::start("mortal").await;
    let steady = Backend::start("steady").await;
    let mut objects = ports_service("pair", &[mortal.addr.port(), steady.port()]);
    let mut settings = vec![(MODE, mode)];
    settings.extend_from_slice(extra);
    objects.push(sticky("pair", "pair.affinity.test", "/", "pair", &settings).build());
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let cookies = cookies_for(&gw, "pair.affinity.test", &["mortal"]).await;
    let old = cookies["mortal"].clone();
    let req = with_cookie("pair.affinity.test", "/", COOKIE, &old);
    assert_stuck(&gw, &req, 2, "mortal", &format!("{mode}: before the death")).await;
    mortal.stop().await;
    let resp = gw.send(&req).await;
    Death {
        gw,
        resp,
        old,
        _steady: steady,
        _manifests: m,
    }
}

/// `session-cookie-change-on-failure: "true"`: a client whose pod died is answered by the
/// retry with a new cookie naming the pod that answered, and its later requests with that
/// cookie go there without new cookies; new clients (half of them first sent to the dead pod)
/// get cookies that lead there too; in both modes.
#[tokio::test]
async fn change_on_failure_moves_the_client_to_where_its_retry_went() {
    let mut wrong = Vec::new();
    for mode in MODES {
        let Death {
            gw, resp: r, old, ..
        } = after_death(mode, &[(CHANGE_ON_FAILURE, "true")]).await;
        let what = format!("{mode}, change-on-failure: the GET after the client's pod died");
        if r.status != 200 || r.backend().as_deref() != Some("steady") {
            wrong.push(format!(
                "{what}: expected a 200 from steady, got {}",
                answer(&r)
            ));
            continue;
        }
        let Some(c) = set_cookie(&r).filter(|c| c.name == COOKIE && is_hex16(&c.value)) else {
            wrong.push(format!(
                "{what}: expected a new {COOKIE} cookie naming steady, got {}",
                answer(&r)
            ));
            continue;
        };
        if c.value == old {
            wrong.push(format!(
                "{what}: the new cookie is the old one: {:?}",
                c.raw
            ));
        }
        let req = with_cookie("pair.affinity.test", "/", COOKIE, &c.value);
        assert_stuck(&gw, &req, 5, "steady", &format!("{mode}: the new cookie")).await;
        // New clients, some first sent to the dead pod: each cookie leads to steady.
        for i in 0..6 {
            let r = gw.get("pair.affinity.test", "/").await;
            let what = format!("{mode}: new client {i} after the death");
            assert_eq!(from(&r, &what), "steady", "{what}");
            let c = expect_cookie(&r, &what);
            let req = with_cookie("pair.affinity.test", "/", COOKIE, &c.value);
            assert_stuck(&gw, &req, 1, "steady", &format!("{what}: its cookie")).await;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Without `session-cookie-change-on-failure`, a client whose pod died is still answered (the
/// retry goes to the other pod), and gets no new cookie; in both modes.
#[tokio::test]
async fn without_change_on_failure_the_retry_answers_and_the_cookie_stays() {
    let mut wrong = Vec::new();
    for mode in MODES {
        let death = after_death(mode, &[]).await;
        let r = &death.resp;
        let from_steady = r.status == 200 && r.backend().as_deref() == Some("steady");
        if !from_steady || set_cookie(r).is_some() {
            wrong.push(format!(
                "{mode}, no change-on-failure: the GET after the client's pod died should be a \
                 200 from steady without a new cookie, got {}",
                answer(r)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 7. Validation

/// `wasmgress validate` refuses `affinity: "ip"` naming the key, and regex paths (`use-regex:
/// "true"`, or `rewrite-target`, which makes paths regular expressions) without
/// `session-cookie-path`, naming `session-cookie-path`; with it, or on plain prefix paths,
/// they are accepted.
#[tokio::test]
async fn validate_refuses_other_types_and_regex_paths_without_a_cookie_path() {
    let (_backends, mut objects) = several(&["app"]).await;
    let regex = |name: &str, annotations: &[(&str, &str)]| {
        annotations
            .iter()
            .fold(
                Ingress::new(name).annotation(AFFINITY, "cookie"),
                |ing, (k, v)| ing.annotation(k, v),
            )
            .rule(
                Some(&format!("{name}.affinity.test")),
                &[implementation_specific("/api/v[0-9]+/(.*)", "app")],
            )
            .build()
    };
    objects.extend([
        sticky(
            "type-ip",
            "ip.affinity.test",
            "/",
            "app",
            &[(AFFINITY, "ip")],
        )
        .build(),
        regex("regex-no-path", &[(USE_REGEX, "true")]),
        regex("rewrite-no-path", &[(REWRITE_TARGET, "/$1")]),
        regex("regex-with-path", &[(USE_REGEX, "true"), (PATH, "/api")]),
        sticky("plain", "plain.affinity.test", "/app", "app", &[]).build(),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let (code, stdout, stderr) = validate(&m, &[]).await;

    let line = validate_error(&stdout, NS, "type-ip", AFFINITY);
    assert!(
        line.contains("`ip`") && line.contains("cookie"),
        "the error should name the value and the one type, `cookie`: {line}"
    );
    assert_no_error_about(&stdout, NS, "regex-with-path");
    assert_no_error_about(&stdout, NS, "plain");
    let mut missing = Vec::new();
    for name in ["regex-no-path", "rewrite-no-path"] {
        let object = format!("Ingress {NS}/{name}:");
        let refused = stdout
            .lines()
            .any(|l| l.starts_with("error:") && l.contains(&object) && l.contains(PATH));
        if !refused {
            let about: Vec<&str> = stdout.lines().filter(|l| l.contains(&object)).collect();
            missing.push(format!(
                "{name}: regex paths with affinity but without session-cookie-path should be an \
                 `error:` naming {PATH}; its lines: {about:?}"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{}\nall of stdout:\n{stdout}",
        missing.join("\n")
    );
    assert_eq!(
        code, 1,
        "rejected Ingresses make validate exit 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

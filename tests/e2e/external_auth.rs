//! External authentication through the real binary: the built-in plugin `external-auth` with
//! ingress-nginx's annotations `auth-url`, `auth-signin`, `auth-signin-redirect-param`,
//! `auth-response-headers`, `auth-request-redirect`, `auth-cache-key`, `auth-always-set-cookie`,
//! `auth-keepalive` and `auth-proxy-set-headers`, beside `satisfy` and
//! `allowlist-source-range` (nginx's `auth_request`).
//!
//! The auth service is a real HTTP server started by each test ([`AuthServer`]), following
//! oauth2-proxy's contract: `GET /oauth2/auth` answers 202 (with `X-Auth-Request-User: alice`
//! and a refreshed session cookie) when the request carries the session cookie
//! `_oauth2_proxy=valid` or `Authorization: Bearer good`, else 401 with a `WWW-Authenticate`
//! challenge. Other paths are the misbehaving variants: `/forbid` always answers 403, `/fail`
//! 500, `/hang` never answers. It records every subrequest (head and body size) so a test can
//! assert what the proxy sent; the recording backend counts what got through, so a refused
//! request is seen never to reach the upstream.
//!
//! Expectations follow ingress-nginx's template (the auth location's `proxy_set_header`s, the
//! `@signin` location's `return 302`, `auth_request_set` + `proxy_set_header` per listed
//! response header) rather than wasmgress's own code, so a divergence shows as a failure.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::harness::backend::closed_port;
use crate::harness::manifests::NS;
use crate::harness::process::validate;
use crate::harness::recorder::Recorder;
use crate::harness::{Ingress, Manifests, Req, Resp, Wasmgress, prefix};

/// The prefix of every annotation here; [`ingress`] adds it.
const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// The session cookie oauth2-proxy would have set after a sign-in.
const SESSION: &str = "_oauth2_proxy=valid";
/// What the service sets on an admitted request (oauth2-proxy refreshes the session).
const REFRESHED: &str = "_oauth2_proxy=refreshed; Path=/; HttpOnly";
/// What the service sets on a 401 (oauth2-proxy clears a stale session).
const CLEARED: &str = "_oauth2_proxy=; Path=/; Max-Age=0";
/// The service's 401 challenge.
const CHALLENGE: &str = "Bearer realm=\"wasmgress-test\"";
/// How long `/hang` holds a subrequest: far beyond any deadline under test, and still finite
/// so a failing test never waits on it forever.
const HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The auth service

/// One subrequest as the auth service received it.
#[derive(Clone, Debug)]
struct Subrequest {
    method: String,
    path: String,
    headers: HeaderMap,
    body_bytes: usize,
}

impl Subrequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether it asked about a request for `host` (the host of its `X-Original-URL`): which
    /// Ingress sent it, when several share the service.
    fn about(&self, host: &str) -> bool {
        self.header("x-original-url").is_some_and(|url| {
            let authority = url.split("://").nth(1).unwrap_or("");
            let authority = authority.split('/').next().unwrap_or("");
            authority.split(':').next() == Some(host)
        })
    }
}

/// An oauth2-proxy-like auth service on 127.0.0.1; stopped when dropped.
struct AuthServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Subrequest>>>,
    task: JoinHandle<()>,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the auth service on 127.0.0.1:0");
        let addr = listener.local_addr().expect("auth service local address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve_auth(listener, seen.clone()));
        Self { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT{path}`: an `auth-url`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every subrequest so far, in arrival order.
    fn seen(&self) -> Vec<Subrequest> {
        self.seen.lock().expect("auth service lock").clone()
    }

    /// The subrequests about requests for `host`.
    fn seen_about(&self, host: &str) -> Vec<Subrequest> {
        self.seen().into_iter().filter(|s| s.about(host)).collect()
    }
}

async fn serve_auth(listener: TcpListener, seen: Arc<Mutex<Vec<Subrequest>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| auth_answer(req, seen.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// oauth2-proxy's test for a session: its cookie, or a bearer token it accepts.
fn signed_in(headers: &HeaderMap) -> bool {
    let bearer = headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == b"Bearer good");
    let cookie = headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| pair.trim() == SESSION);
    bearer || cookie
}

fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a status");
    for (name, value) in headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            http::HeaderValue::from_str(value).expect("a header value"),
        );
    }
    resp
}

async fn auth_answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Subrequest>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read whatever body came, to show none did.
    let body_bytes = body.collect().await.map_or(0, |b| b.to_bytes().len());
    seen.lock().expect("auth service lock").push(Subrequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body_bytes,
    });
    let resp = match parts.uri.path() {
        "/oauth2/auth" if signed_in(&parts.headers) => reply(
            202,
            &[
                ("x-auth-request-user", "alice"),
                ("x-auth-request-email", "alice@example.test"),
                // Not meant for the upstream: only listed headers may be copied.
                ("x-internal-token", "s3cret"),
                ("set-cookie", REFRESHED),
            ],
            "",
        ),
        "/oauth2/auth" => reply(
            401,
            &[("www-authenticate", CHALLENGE), ("set-cookie", CLEARED)],
            "unauthorized",
        ),
        "/forbid" => reply(403, &[], "not in an allowed group"),
        "/fail" => reply(500, &[], "the session store is down"),
        "/hang" => {
            tokio::time::sleep(HANG).await;
            reply(504, &[], "gave up")
        }
        _ => reply(404, &[], "no such auth endpoint"),
    };
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// An Ingress `name` for `host`, everything to Service `app`, with `annotations` named without
/// their `nginx.ingress.kubernetes.io/` prefix.
fn ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> Value {
    annotated(Ingress::new(name), annotations)
        .rule(Some(host), &[prefix("/", "app")])
        .build()
}

fn annotated(ing: Ingress, annotations: &[(&str, &str)]) -> Ingress {
    annotations
        .iter()
        .fold(ing, |ing, (k, v)| ing.annotation(&format!("{NGINX}{k}"), v))
}

/// A folder with the recording backend and `ingresses`, and the binary serving it.
async fn serve(rec: &Recorder, ingresses: Vec<Value>) -> (Manifests, Wasmgress) {
    let mut objects = rec.objects();
    objects.extend(ingresses);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;
    (m, gw)
}

/// The proxy's own answer, not an upstream's: status `status` and no echo JSON.
fn assert_local(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.summary());
    assert!(
        r.backend().is_none(),
        "{what}: the answer came from a backend: {}",
        r.summary()
    );
}

/// Every `Set-Cookie` on an answer.
fn cookies(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The raw (still escaped) query parameters of a URL, in order.
fn query_params(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// RFC 3986 percent-decoding (`+` stays `+`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = text
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("decoded text is UTF-8")
}

/// The one subrequest in `seen`, or a panic listing them.
fn only(seen: &[Subrequest], what: &str) -> Subrequest {
    assert_eq!(
        seen.len(),
        1,
        "{what}: expected one subrequest, got {seen:#?}"
    );
    seen[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Tests

/// A signed-in request goes upstream with the user the service named, and the client gets the
/// service's refreshed cookie. The subrequest is what ingress-nginx's auth location sends: the
/// client's headers (its Authorization and Cookie included) without the body, the method
/// `auth-method` defaults to (GET), and the original request's facts in `X-Original-*`,
/// `X-Auth-Request-Redirect`, `X-Real-IP`, `X-Forwarded-For`, `X-Request-ID` and
/// `X-Sent-From`, with `Host` the auth URL's authority. A POST body still reaches the backend
/// whole. The session cookie alone, over h2c, is accepted as well.
#[tokio::test]
async fn a_signed_in_request_reaches_the_backend_as_the_user() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![ingress(
            "app",
            "app.test",
            &[
                ("auth-url", &url),
                ("auth-response-headers", "X-Auth-Request-User"),
            ],
        )],
    )
    .await;
    // A Host with the port, as a browser sends it for a non-default port.
    let host = format!("app.test:{}", gw.http.port());
    let uri = "/private/page?x=1&y=two";

    let r = gw
        .send(
            &Req::get(&host, uri)
                .method(Method::POST)
                .header("authorization", "Bearer good")
                .header("cookie", "theme=dark")
                .header("content-type", "text/plain")
                .body("hello"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.summary());
    let echo = r.expect_echo();
    assert_eq!(echo["backend"], "app");
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["body_bytes"], 5,
        "the body still goes upstream: {echo}"
    );
    assert_eq!(r.seen("x-auth-request-user"), ["alice"]);
    assert_eq!(
        cookies(&r),
        [REFRESHED],
        "the service's cookie reaches the client"
    );

    let sub = only(&auth.seen(), "one POST");
    assert_eq!(sub.method, "GET", "auth-method defaults to GET");
    assert_eq!(sub.path, "/oauth2/auth");
    assert_eq!(sub.body_bytes, 0, "the subrequest carries no body");
    for gone in ["content-length", "transfer-encoding"] {
        assert_eq!(sub.header(gone), None, "{gone} on a bodiless subrequest");
    }
    let want = [
        ("authorization", "Bearer good".to_owned()),
        ("cookie", "theme=dark".to_owned()),
        ("x-original-url", format!("http://{host}{uri}")),
        ("x-original-method", "POST".to_owned()),
        ("x-auth-request-redirect", uri.to_owned()),
        ("x-real-ip", "127.0.0.1".to_owned()),
        ("x-forwarded-for", "127.0.0.1".to_owned()),
        ("x-sent-from", "nginx-ingress-controller".to_owned()),
        ("host", auth.addr.to_string()),
    ];
    for (name, value) in want {
        assert_eq!(sub.header(name), Some(value.as_str()), "{name}: {sub:#?}");
    }
    // One id for the whole request, upstream and auth alike, so the logs can be joined.
    let id = r.seen("x-request-id");
    assert_eq!(id.len(), 1, "the backend saw one X-Request-ID: {id:?}");
    assert_eq!(sub.header("x-request-id"), Some(id[0].as_str()));

    let mut h2 = gw.h2c().await;
    let r = h2
        .send(&Req::get(&host, "/h2").header("cookie", SESSION))
        .await
        .expect("an h2c request");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.seen("x-auth-request-user"), ["alice"]);
    let seen = auth.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[1].header("x-original-url"),
        Some(format!("http://{host}/h2").as_str())
    );
    assert_eq!(rec.arrived(), 2);
}

/// Without a session, or with a token the service rejects, the client gets 401 with the
/// service's `WWW-Authenticate` and the backend is never reached. The 401's `Set-Cookie` is
/// left off (nginx's plain `add_header` skips 4xx) unless `auth-always-set-cookie` is on.
#[tokio::test]
async fn an_unauthenticated_request_gets_the_services_401() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![
            ingress("plain", "plain.test", &[("auth-url", &url)]),
            ingress(
                "always",
                "always.test",
                &[("auth-url", &url), ("auth-always-set-cookie", "true")],
            ),
        ],
    )
    .await;

    for req in [
        Req::get("plain.test", "/"),
        Req::get("plain.test", "/").header("authorization", "Bearer bad"),
        Req::get("plain.test", "/").header("cookie", "_oauth2_proxy=stale"),
    ] {
        let r = gw.send(&req).await;
        assert_local(&r, 401, &format!("{req:?}"));
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
        assert!(cookies(&r).is_empty(), "a 401 without always-set-cookie");
    }
    let r = gw.get("always.test", "/").await;
    assert_local(&r, 401, "always.test");
    assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
    assert_eq!(
        cookies(&r),
        [CLEARED],
        "auth-always-set-cookie: on the 401 too"
    );

    assert_eq!(auth.seen().len(), 4, "every request was asked about");
    assert_eq!(
        rec.arrived(),
        0,
        "a refused request never reaches the backend"
    );
}

/// A 403 from the service (signed in, not allowed) is the client's 403, without a challenge,
/// and the backend is never reached.
#[tokio::test]
async fn a_403_from_the_service_is_the_clients_403() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/forbid");
    let (_m, gw) = serve(
        &rec,
        vec![ingress("app", "app.test", &[("auth-url", &url)])],
    )
    .await;

    let r = gw
        .send(&Req::get("app.test", "/admin").header("authorization", "Bearer good"))
        .await;
    assert_local(&r, 403, "a forbidden user");
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(auth.seen().len(), 1);
    assert_eq!(
        rec.arrived(),
        0,
        "a forbidden request never reaches the backend"
    );
}

/// With `auth-signin`, a 401 becomes a 302 to the sign-in URL with `rd=` the escaped original
/// URL (scheme, Host as sent, request URI with its query), as ingress-nginx's
/// `buildAuthSignURL`; a sign-in URL that already carries the parameter is used as rendered,
/// and `auth-signin-redirect-param` renames it. `auth-request-redirect` is rendered per
/// request into the subrequest's `X-Auth-Request-Redirect`. A signed-in request is admitted.
#[tokio::test]
async fn a_401_with_auth_signin_redirects_to_sign_in_with_the_original_url() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![
            ingress(
                "app",
                "app.test",
                &[
                    ("auth-url", &url),
                    ("auth-signin", "https://login.test/oauth2/start"),
                    ("auth-request-redirect", "$scheme://$host/after-login"),
                ],
            ),
            ingress(
                "own",
                "own.test",
                &[
                    ("auth-url", &url),
                    (
                        "auth-signin",
                        "https://login.test/oauth2/start?rd=$escaped_request_uri",
                    ),
                ],
            ),
            ingress(
                "param",
                "param.test",
                &[
                    ("auth-url", &url),
                    ("auth-signin", "https://login.test/start?client=web"),
                    ("auth-signin-redirect-param", "return_to"),
                ],
            ),
        ],
    )
    .await;
    let port = gw.http.port();
    let uri = "/app/page?a=1&b=two%20words";

    let host = format!("app.test:{port}");
    let r = gw.get(&host, uri).await;
    assert_local(&r, 302, "no session, with auth-signin");
    let location = r.header("location").expect("a Location").to_owned();
    assert!(
        location.starts_with("https://login.test/oauth2/start?"),
        "{location}"
    );
    // Escaped: the original query's `&` and `=` stay inside the one parameter.
    let params = query_params(&location);
    assert_eq!(params.len(), 1, "one parameter in {location}");
    assert_eq!(params[0].0, "rd", "{location}");
    assert_eq!(percent_decode(&params[0].1), format!("http://{host}{uri}"));
    assert_eq!(
        cookies(&r),
        [CLEARED],
        "the 401's cookie goes on the redirect"
    );
    let sub = only(&auth.seen_about("app.test"), "app.test");
    assert_eq!(
        sub.header("x-auth-request-redirect"),
        Some("http://app.test/after-login"),
        "auth-request-redirect rendered with $scheme and $host (no port)"
    );

    let r = gw.get("own.test", "/page?a=1").await;
    assert_local(&r, 302, "own.test");
    assert_eq!(
        r.header("location"),
        Some("https://login.test/oauth2/start?rd=%2Fpage%3Fa%3D1"),
        "the sign-in URL's own rd is kept, nothing appended"
    );

    let r = gw.get(&format!("param.test:{port}"), "/p").await;
    assert_local(&r, 302, "param.test");
    let location = r.header("location").expect("a Location");
    let params = query_params(location);
    assert_eq!(params.len(), 2, "{location}");
    assert_eq!(params[0], ("client".to_owned(), "web".to_owned()));
    assert_eq!(params[1].0, "return_to", "{location}");
    assert_eq!(
        percent_decode(&params[1].1),
        format!("http://param.test:{port}/p")
    );

    assert_eq!(
        rec.arrived(),
        0,
        "no redirected request reached the backend"
    );
    let r = gw
        .send(&Req::get(&host, uri).header("cookie", SESSION))
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
}

/// The service answering anything but 2xx, 401 or 403 (here 500), or not accepting the
/// connection, fails closed: the client gets 500 and the backend is never reached.
#[tokio::test]
async fn an_auth_service_error_or_refused_connection_is_a_500() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let down = format!("http://127.0.0.1:{}/oauth2/auth", closed_port().await);
    let (_m, gw) = serve(
        &rec,
        vec![
            ingress("fail", "fail.test", &[("auth-url", &auth.url("/fail"))]),
            ingress("down", "down.test", &[("auth-url", &down)]),
        ],
    )
    .await;

    for host in ["fail.test", "down.test"] {
        let r = gw
            .send(&Req::get(host, "/").header("authorization", "Bearer good"))
            .await;
        assert_local(&r, 500, host);
    }
    assert_eq!(auth.seen_about("fail.test").len(), 1);
    assert_eq!(rec.arrived(), 0, "a failed check never reaches the backend");
}

/// A service that accepts the subrequest and never answers is given the route's
/// `proxy-connect-timeout` + `proxy-read-timeout` (1 s + 1 s here), then the client gets 500.
/// Only "eventually 500" is asserted (within the client's 30 s exchange limit), no timing.
#[tokio::test]
async fn an_auth_service_that_never_answers_is_a_500() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let (_m, gw) = serve(
        &rec,
        vec![ingress(
            "hang",
            "hang.test",
            &[
                ("auth-url", &auth.url("/hang")),
                ("proxy-connect-timeout", "1"),
                ("proxy-read-timeout", "1"),
            ],
        )],
    )
    .await;

    let r = gw
        .send(&Req::get("hang.test", "/").header("authorization", "Bearer good"))
        .await;
    assert_local(&r, 500, "a hanging auth service");
    assert_eq!(auth.seen().len(), 1, "the subrequest did arrive");
    assert_eq!(
        rec.arrived(),
        0,
        "a timed-out check never reaches the backend"
    );
}

/// Only the headers `auth-response-headers` lists go from the service's answer onto the
/// upstream request, replacing a value the client sent under that name; none of them, nor
/// the unlisted ones, show on the client's answer.
#[tokio::test]
async fn only_the_listed_response_headers_are_copied_upstream() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![ingress(
            "app",
            "app.test",
            &[
                ("auth-url", &url),
                (
                    "auth-response-headers",
                    "X-Auth-Request-User, X-Auth-Request-Email",
                ),
            ],
        )],
    )
    .await;

    let r = gw
        .send(
            &Req::get("app.test", "/")
                .header("authorization", "Bearer good")
                .header("x-auth-request-user", "mallory"),
        )
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(r.seen("x-auth-request-user"), ["alice"], "not the client's");
    assert_eq!(r.seen("x-auth-request-email"), ["alice@example.test"]);
    assert!(
        r.seen("x-internal-token").is_empty(),
        "an unlisted header was copied upstream"
    );
    for name in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-internal-token",
    ] {
        assert_eq!(r.header(name), None, "{name} on the client's answer");
    }
}

/// A listed header the service did not send must not reach the upstream with the client's
/// value: nginx sets each listed header with `proxy_set_header` from the auth answer, which
/// hides the client's header of that name, and sends nothing when the answer had none. The
/// backend trusting `X-Auth-Request-Groups` from the auth proxy must never see a client's
/// `admins`.
#[tokio::test]
async fn a_listed_header_the_service_left_out_is_not_the_clients() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![ingress(
            "app",
            "app.test",
            &[
                ("auth-url", &url),
                (
                    "auth-response-headers",
                    "X-Auth-Request-User, X-Auth-Request-Groups",
                ),
            ],
        )],
    )
    .await;

    let r = gw
        .send(
            &Req::get("app.test", "/")
                .header("authorization", "Bearer good")
                .header("x-auth-request-groups", "admins"),
        )
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(r.seen("x-auth-request-user"), ["alice"]);
    assert_eq!(
        r.seen("x-auth-request-groups"),
        Vec::<String>::new(),
        "the client's X-Auth-Request-Groups reached the upstream as if the auth service said so"
    );
}

/// `auth-cache-key: $http_authorization` (default durations `200 202 401 5m`): a second
/// request with the same token is admitted from the cache, user header included, without a
/// subrequest; another token is a new subrequest, and its 401 is cached too. An Ingress
/// without a cache key asks every time.
#[tokio::test]
async fn auth_cache_key_answers_repeated_requests_from_the_cache() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![
            ingress(
                "cached",
                "cached.test",
                &[
                    ("auth-url", &url),
                    ("auth-response-headers", "X-Auth-Request-User"),
                    ("auth-cache-key", "$http_authorization"),
                ],
            ),
            ingress("uncached", "uncached.test", &[("auth-url", &url)]),
        ],
    )
    .await;
    let ask = |host: &'static str, token: &'static str| {
        let gw = &gw;
        async move {
            gw.send(&Req::get(host, "/").header("authorization", token))
                .await
        }
    };

    for round in 0..2 {
        let r = ask("cached.test", "Bearer good").await;
        assert_eq!(r.backend().as_deref(), Some("app"), "round {round}");
        assert_eq!(r.seen("x-auth-request-user"), ["alice"], "round {round}");
    }
    assert_eq!(
        auth.seen_about("cached.test").len(),
        1,
        "the same token twice: one subrequest"
    );
    for round in 0..2 {
        let r = ask("cached.test", "Bearer other").await;
        assert_local(&r, 401, &format!("another token, round {round}"));
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
    }
    let seen = auth.seen_about("cached.test");
    assert_eq!(
        seen.len(),
        2,
        "another token: one more subrequest, then cached"
    );
    assert_eq!(seen[1].header("authorization"), Some("Bearer other"));

    for _ in 0..2 {
        let r = ask("uncached.test", "Bearer good").await;
        assert_eq!(r.backend().as_deref(), Some("app"));
    }
    assert_eq!(auth.seen_about("uncached.test").len(), 2, "no cache key");
}

/// A cached 401 still redirects to sign-in with the page the client asked for now: nginx
/// caches the auth service's answer, and its `@signin` location builds `rd=` from the current
/// request each time. (All requests here share the key `$remote_addr`.)
#[tokio::test]
async fn a_cached_401_redirects_to_sign_in_with_the_current_page() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let (_m, gw) = serve(
        &rec,
        vec![ingress(
            "app",
            "app.test",
            &[
                ("auth-url", &url),
                ("auth-signin", "https://login.test/oauth2/start"),
                ("auth-cache-key", "$remote_addr"),
            ],
        )],
    )
    .await;

    for page in ["/first", "/second"] {
        let r = gw.get("app.test", page).await;
        assert_local(&r, 302, page);
        let location = r.header("location").expect("a Location");
        let rd = query_params(location)
            .into_iter()
            .find(|(k, _)| k == "rd")
            .map(|(_, v)| percent_decode(&v));
        assert_eq!(
            rd.as_deref(),
            Some(format!("http://app.test{page}").as_str()),
            "GET {page}: Location {location}"
        );
    }
    assert_eq!(auth.seen().len(), 1, "the second 401 came from the cache");
}

/// `satisfy: any` with an allow list covering the client (127.0.0.1): the source admits the
/// request and the auth service is never asked. The same with a list that does not cover the
/// client, or with `satisfy: all`, asks the service, which decides.
#[tokio::test]
async fn satisfy_any_with_an_allowed_source_never_asks_the_service() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let guarded = |range: &'static str, satisfy: &'static str| {
        vec![
            ("auth-url", url.clone()),
            ("allowlist-source-range", range.to_owned()),
            ("satisfy", satisfy.to_owned()),
        ]
    };
    let mk = |name: &str, host: &str, a: Vec<(&'static str, String)>| {
        let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ingress(name, host, &pairs)
    };
    let (_m, gw) = serve(
        &rec,
        vec![
            mk("any", "any.test", guarded("127.0.0.1/32", "any")),
            mk("outside", "outside.test", guarded("10.0.0.0/8", "any")),
            mk("all", "all.test", guarded("127.0.0.1/32", "all")),
        ],
    )
    .await;

    let r = gw.get("any.test", "/").await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert!(
        auth.seen_about("any.test").is_empty(),
        "the allow list sufficed, yet the service was asked"
    );

    for host in ["outside.test", "all.test"] {
        assert_local(&gw.get(host, "/").await, 401, host);
        let r = gw
            .send(&Req::get(host, "/").header("authorization", "Bearer good"))
            .await;
        assert_eq!(
            r.backend().as_deref(),
            Some("app"),
            "{host}: {}",
            r.summary()
        );
        assert_eq!(auth.seen_about(host).len(), 2, "{host} asked every time");
    }
}

/// An auth URL whose host a client could steer, or that points where auth requests must never
/// go, rejects its Ingress (404 on every host it names, never served without its check): `$host`
/// on an Ingress with a wildcard rule (a client would pick the host, hence the auth server) or
/// a host-less rule, the link-local metadata address, and the refused `auth-proxy-set-headers`.
/// The binary and `wasmgress validate` name each. `$host` on an Ingress of exact hosts is
/// served (with `auth-keepalive`, accepted as a note), its subrequest's Host the request's.
#[tokio::test]
async fn an_auth_host_a_client_could_steer_rejects_the_ingress() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let port = auth.addr.port();
    let by_host = format!("http://$host:{port}/oauth2/auth");
    let url = auth.url("/oauth2/auth");
    let wild = annotated(Ingress::new("wild"), &[("auth-url", &by_host)])
        .rule(Some("*.wild.test"), &[prefix("/", "app")])
        .rule(Some("named.test"), &[prefix("/", "app")])
        .build();
    let catch_all = annotated(Ingress::new("catch-all"), &[("auth-url", &by_host)])
        .rule(None, &[prefix("/", "app")])
        .build();
    let (m, gw) = serve(
        &rec,
        vec![
            wild,
            catch_all,
            ingress(
                "metadata",
                "meta.test",
                &[("auth-url", "http://169.254.169.254/latest/meta-data/")],
            ),
            // `u@` would make a naive host check read `u@169.254.169.254` as a name.
            ingress(
                "userinfo",
                "userinfo.test",
                &[("auth-url", "http://u@169.254.169.254/latest/meta-data/")],
            ),
            // `$http_host` carries the client's port: the client would pick the auth port.
            ingress(
                "client-port",
                "port.test",
                &[("auth-url", "http://$http_host/oauth2/auth")],
            ),
            ingress(
                "set-headers",
                "set.test",
                &[
                    ("auth-url", &url),
                    ("auth-proxy-set-headers", "default/auth-headers"),
                ],
            ),
            ingress(
                "exact",
                "localhost",
                &[("auth-url", &by_host), ("auth-keepalive", "10")],
            ),
        ],
    )
    .await;

    gw.assert_routes(&[
        ("a.wild.test", "/", "404"),
        ("named.test", "/", "404"),
        ("anything.test", "/", "404"),
        ("meta.test", "/", "404"),
        ("userinfo.test", "/", "404"),
        ("port.test", "/", "404"),
        ("set.test", "/", "404"),
    ])
    .await;
    assert_eq!(rec.arrived(), 0, "a rejected Ingress was served");
    assert!(
        auth.seen().is_empty(),
        "a rejected Ingress asked the service"
    );
    for name in [
        "wild",
        "catch-all",
        "metadata",
        "userinfo",
        "client-port",
        "set-headers",
    ] {
        assert!(
            gw.stderr_mentions(&format!("Ingress {NS}/{name}")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }

    assert_local(
        &gw.get("localhost", "/").await,
        401,
        "exact hosts, no session",
    );
    let r = gw
        .send(&Req::get("localhost", "/").header("authorization", "Bearer good"))
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    let seen = auth.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[1].header("host"),
        Some(format!("localhost:{port}").as_str())
    );

    // Each rejection says why: the reason is the product's, so only its gist is matched.
    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines = |severity: &str, name: &str| -> Vec<String> {
        let object = format!("Ingress {NS}/{name}:");
        stdout
            .lines()
            .filter(|l| l.starts_with(severity) && l.contains(&object))
            .map(str::to_owned)
            .collect()
    };
    for (name, why) in [
        ("wild", "$host"),
        ("catch-all", "$host"),
        ("metadata", "169.254.169.254"),
        ("userinfo", "userinfo"),
        ("client-port", "$host"),
        ("set-headers", "auth-proxy-set-headers"),
    ] {
        assert!(
            lines("error:", name).iter().any(|l| l.contains(why)),
            "no `error:` line for Ingress {name} mentioning {why} in:\n{stdout}"
        );
    }
    assert!(
        lines("error:", "exact").is_empty(),
        "the exact-host Ingress is valid:\n{stdout}"
    );
    assert!(
        lines("info:", "exact")
            .iter()
            .any(|l| l.contains("auth-keepalive")),
        "auth-keepalive is accepted with a note:\n{stdout}"
    );
}

/// `--global-auth-url` guards every Ingress without its own `auth-url`: one that sets
/// `enable-global-auth: "false"` is left alone, ACME challenge paths (`--no-auth-locations`'s
/// default) are never sent for authentication, and an Ingress's own `auth-url` wins. The
/// exemption is by the Ingress's path (cert-manager's solver Ingress), never by the request's:
/// a request for `/.well-known/acme-challenge...` on a `/` Ingress still needs authentication.
#[tokio::test]
async fn global_auth_covers_ingresses_without_their_own() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let own = auth.url("/forbid");
    let mut objects = rec.objects();
    objects.extend([
        ingress("plain", "plain.test", &[]),
        ingress("opted-out", "out.test", &[("enable-global-auth", "false")]),
        ingress("own", "own.test", &[("auth-url", own.as_str())]),
        Ingress::new("acme-solver")
            .rule(
                Some("plain.test"),
                &[prefix("/.well-known/acme-challenge", "app")],
            )
            .build(),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let global = auth.url("/oauth2/auth");
    let gw = Wasmgress::start(&m, &["--global-auth-url", &global]).await;

    assert_local(&gw.get("plain.test", "/").await, 401, "global auth applies");
    let r = gw
        .send(&Req::get("plain.test", "/").header("authorization", "Bearer good"))
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    let r = gw
        .get("plain.test", "/.well-known/acme-challenge/token")
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "ACME: {}", r.summary());
    // Not under the solver's path: the `/` Ingress answers, with its authentication.
    for path in [
        "/.well-known/acme-challengeXYZ",
        "/x/../.well-known/acme-challengez",
    ] {
        assert_local(&gw.get("plain.test", path).await, 401, path);
    }
    let r = gw.get("out.test", "/").await;
    assert_eq!(
        r.backend().as_deref(),
        Some("app"),
        "opted out: {}",
        r.summary()
    );
    assert!(auth.seen_about("out.test").is_empty());
    assert_local(&gw.get("own.test", "/").await, 403, "its own auth-url wins");
}

/// `auth-proxy-set-headers` names a ConfigMap whose entries go on every subrequest (the
/// client's own value of such a header is replaced); a missing ConfigMap, or one in another
/// namespace, rejects the Ingress rather than asking the service without its headers.
#[tokio::test]
async fn auth_proxy_set_headers_come_from_a_config_map() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "auth-headers", "namespace": "default" },
        "data": { "X-Tenant": "blue", "X-Auth-Mode": "strict" },
    });
    let mut objects = rec.objects();
    objects.extend([
        config_map,
        ingress(
            "with",
            "with.test",
            &[
                ("auth-url", url.as_str()),
                ("auth-proxy-set-headers", "auth-headers"),
            ],
        ),
        ingress(
            "missing",
            "missing.test",
            &[
                ("auth-url", url.as_str()),
                ("auth-proxy-set-headers", "nope"),
            ],
        ),
        ingress(
            "elsewhere",
            "elsewhere.test",
            &[
                ("auth-url", url.as_str()),
                ("auth-proxy-set-headers", "other/auth-headers"),
            ],
        ),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let r = gw
        .send(
            &Req::get("with.test", "/")
                .header("authorization", "Bearer good")
                .header("x-tenant", "red"),
        )
        .await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    let sub = only(&auth.seen_about("with.test"), "with.test");
    assert_eq!(
        sub.header("x-tenant"),
        Some("blue"),
        "the ConfigMap's value, not the client's"
    );
    assert_eq!(sub.header("x-auth-mode"), Some("strict"));
    for host in ["missing.test", "elsewhere.test"] {
        let r = gw
            .send(&Req::get(host, "/").header("authorization", "Bearer good"))
            .await;
        assert_eq!(r.status, 404, "{host}: {}", r.summary());
        assert!(r.backend().is_none(), "{host} must not be served");
    }
}

/// The auth cache is per host, as ingress-nginx keys it with the server name: an answer for
/// one host of an Ingress never stands for another of its hosts.
#[tokio::test]
async fn the_auth_cache_is_per_host() {
    let auth = AuthServer::start().await;
    let rec = Recorder::start("app").await;
    let url = auth.url("/oauth2/auth");
    let two_hosts = annotated(
        Ingress::new("shared"),
        &[
            ("auth-url", &url),
            ("auth-cache-key", "$http_authorization"),
        ],
    )
    .rule(Some("one.test"), &[prefix("/", "app")])
    .rule(Some("two.test"), &[prefix("/", "app")])
    .build();
    let (_m, gw) = serve(&rec, vec![two_hosts]).await;
    for host in ["one.test", "two.test", "one.test", "two.test"] {
        let r = gw
            .send(&Req::get(host, "/").header("authorization", "Bearer good"))
            .await;
        assert_eq!(
            r.backend().as_deref(),
            Some("app"),
            "{host}: {}",
            r.summary()
        );
    }
    assert_eq!(auth.seen_about("one.test").len(), 1, "one.test asked once");
    assert_eq!(
        auth.seen_about("two.test").len(),
        1,
        "two.test asked on its own"
    );
}

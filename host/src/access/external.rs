//! External authentication, as nginx's `auth_request` runs it for ingress-nginx's `auth-url`:
//! before a request goes upstream, the proxy asks an auth service with a subrequest carrying
//! the client's headers (no body) and the original request's facts (`X-Original-URL`,
//! `X-Original-Method`, `X-Auth-Request-Redirect`, `X-Real-IP`, `X-Forwarded-For`...).
//!
//! Owns the subrequest, the client it goes out on (pooled, shared by every route; TLS without
//! certificate checks, as nginx's `proxy_ssl_verify off` default), the answer's meaning and an
//! optional cache of answers (`auth-cache-key`, `auth-cache-duration`): 2xx admits the request
//! (named response headers are copied onto the upstream request, `Set-Cookie` onto the client's
//! answer); 401 and 403 are the client's answer (401 becomes a 302 to the sign-in URL when one
//! is set); anything else, or no answer within the route's connect + read timeouts, is a 500.
//! Fails closed throughout.
//!
//! The auth URL is the Ingress author's to choose, so the client refuses to connect to
//! link-local and unspecified addresses (cloud metadata services live at 169.254.169.254), and
//! in cluster mode to loopback (the proxy's own admin port). This module must not build the
//! client's responses; the proxy's access phase turns an [`Outcome`] into one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, SET_COOKIE, TRANSFER_ENCODING, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

use crate::policy::{Part, RequestVars, render};

/// The rule as a plugin stated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAuthRule {
    pub url: Box<[Part]>,
    pub method: Method,
    pub signin: Option<Box<[Part]>>,
    pub signin_redirect_param: String,
    pub response_headers: Vec<HeaderName>,
    pub request_redirect: Option<Box<[Part]>>,
    pub cache_key: Option<Box<[Part]>>,
    /// Statuses and how long their answers are kept.
    pub cache_durations: Vec<(Vec<u16>, Duration)>,
    pub always_set_cookie: bool,
}

/// What the auth service decided, in the proxy's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go on upstream with these headers added; `cookies` go onto the client's answer.
    Allow {
        upstream: Vec<(HeaderName, HeaderValue)>,
        cookies: Vec<HeaderValue>,
    },
    /// Answer 401 or 403 (with the service's `WWW-Authenticate`).
    Deny {
        status: StatusCode,
        challenge: Option<HeaderValue>,
        cookies: Vec<HeaderValue>,
    },
    /// Redirect (302) to the sign-in URL.
    SignIn {
        location: HeaderValue,
        cookies: Vec<HeaderValue>,
    },
    /// The service failed or did not answer in time: 500.
    Failed,
}

/// What the service said that matters: its status and the headers the outcome uses.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
}

/// The request facts the subrequest carries.
pub struct Facts<'a> {
    pub vars: RequestVars<'a>,
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
}

/// A route's external authentication, ready to run.
pub struct ExternalAuth {
    rule: ExternalAuthRule,
    /// Set on every subrequest (`auth-proxy-set-headers`).
    set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Connect and answer must both happen within this.
    deadline: Duration,
    allow_loopback: bool,
    cache: Option<AnswerCache>,
}

impl std::fmt::Debug for ExternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuth")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl ExternalAuth {
    pub fn new(rule: ExternalAuthRule, deadline: Duration, allow_loopback: bool) -> Self {
        let cache = rule.cache_key.is_some().then(AnswerCache::default);
        ExternalAuth {
            rule,
            set_headers: Vec::new(),
            deadline,
            allow_loopback,
            cache,
        }
    }

    /// Also sets these headers on every subrequest (`auth-proxy-set-headers`).
    pub fn with_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        self.set_headers = headers;
        self
    }

    /// Ask the service (or the cache) about one request.
    pub async fn check(&self, facts: &Facts<'_>) -> Outcome {
        // Per host, as ingress-nginx prefixes the key with the server name: one host's answer
        // must never stand for another's.
        let key = self.rule.cache_key.as_ref().map(|k| {
            let mut key = String::from(facts.vars.host);
            key.push('\0');
            key.push_str(&render(k, &facts.vars));
            key
        });
        let cached = match (&self.cache, &key) {
            (Some(cache), Some(key)) => cache.get(key),
            _ => None,
        };
        let answer = match cached {
            Some(answer) => answer,
            None => match self.ask(facts).await {
                Ok(answer) => {
                    if let (Some(cache), Some(key), Some(ttl)) =
                        (&self.cache, key, self.ttl(answer.status))
                    {
                        cache.put(key, answer.clone(), ttl);
                    }
                    answer
                }
                Err(why) => {
                    tracing::warn!(id = ?facts.request_id, "external auth failed: {why}");
                    return Outcome::Failed;
                }
            },
        };
        // Decided per request, also from a cached answer: a sign-in redirect names this
        // request's URL, not the one that filled the cache.
        self.outcome(&answer, &facts.vars)
    }

    /// The headers a client must never supply itself: every `auth-response-headers` name
    /// (nginx sets them from the auth answer, empty when it has none).
    pub fn copied_headers(&self) -> &[HeaderName] {
        &self.rule.response_headers
    }

    fn ttl(&self, status: StatusCode) -> Option<Duration> {
        self.rule
            .cache_durations
            .iter()
            .find(|(statuses, _)| statuses.contains(&status.as_u16()))
            .map(|(_, d)| *d)
    }

    async fn ask(&self, facts: &Facts<'_>) -> Result<Answer, String> {
        let req = self.subrequest(facts)?;
        let client = client(self.allow_loopback);
        let resp = tokio::time::timeout(self.deadline, client.request(req))
            .await
            .map_err(|_| format!("no answer within {:?}", self.deadline))?
            .map_err(|e| format!("{e:#}"))?;
        let status = resp.status();
        // The body is not needed: dropping it lets the client close or reuse the connection.
        let all = resp.into_parts().0.headers;
        let mut headers = HeaderMap::new();
        let kept = [&SET_COOKIE, &WWW_AUTHENTICATE]
            .into_iter()
            .chain(self.rule.response_headers.iter());
        for name in kept {
            for value in all.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Ok(Answer { status, headers })
    }

    /// The subrequest: the client's headers, no body, and what nginx's auth location sets.
    fn subrequest(&self, facts: &Facts<'_>) -> Result<Request<Empty<Bytes>>, String> {
        let url = render(&self.rule.url, &facts.vars);
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("the rendered auth URL `{url}` is not a URL"))?;
        dialable(&uri, self.allow_loopback)?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the auth URL `{url}` has no host"))?
            .clone();
        let mut headers = facts.headers.clone();
        for gone in [CONTENT_LENGTH, TRANSFER_ENCODING] {
            headers.remove(gone);
        }
        headers.remove("x-forwarded-proto");
        let v = &facts.vars;
        let original_url = format!(
            "{}://{}{}",
            if v.secure { "https" } else { "http" },
            v.authority,
            v.request_uri
        );
        let redirect = match &self.rule.request_redirect {
            Some(t) => render(t, v),
            None => v.request_uri.to_string(),
        };
        let client = v.remote.ip().to_string();
        let set: [(&str, &str); 6] = [
            ("x-original-url", &original_url),
            ("x-original-method", v.method),
            ("x-sent-from", "nginx-ingress-controller"),
            ("x-real-ip", &client),
            ("x-forwarded-for", &client),
            ("x-auth-request-redirect", &redirect),
        ];
        for (name, value) in set {
            // A value the client shaped (its URI) that is not a header value is left out.
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        headers.insert("x-request-id", facts.request_id.clone());
        if self.rule.method != Method::GET {
            // ingress-nginx sets these only with an explicit auth-method.
            if let Ok(uri) = HeaderValue::from_str(v.request_uri) {
                headers.insert("x-original-uri", uri);
            }
            let scheme = if v.secure { "https" } else { "http" };
            headers.insert("x-scheme", HeaderValue::from_static(scheme));
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        headers.insert(HOST, host);
        let mut req = Request::new(Empty::new());
        *req.method_mut() = self.rule.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }

    fn outcome(&self, answer: &Answer, vars: &RequestVars<'_>) -> Outcome {
        let (status, headers) = (answer.status, &answer.headers);
        let cookies: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
        if status.is_success() {
            let upstream = self
                .rule
                .response_headers
                .iter()
                .filter_map(|name| headers.get(name).map(|v| (name.clone(), v.clone())))
                .collect();
            return Outcome::Allow { upstream, cookies };
        }
        match status {
            StatusCode::UNAUTHORIZED if self.rule.signin.is_some() => {
                match self.signin_location(vars) {
                    Some(location) => Outcome::SignIn { location, cookies },
                    None => Outcome::Failed,
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Outcome::Deny {
                status,
                challenge: headers.get(WWW_AUTHENTICATE).cloned(),
                cookies,
            },
            _ => Outcome::Failed,
        }
    }

    /// ingress-nginx's `buildAuthSignURL`: the sign-in URL plus `<param>=` the original URL,
    /// unless the URL already carries that parameter.
    fn signin_location(&self, vars: &RequestVars<'_>) -> Option<HeaderValue> {
        let mut url = render(self.rule.signin.as_ref()?, vars);
        let param = &self.rule.signin_redirect_param;
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        let has = query
            .split('&')
            .any(|kv| kv.split('=').next() == Some(param.as_str()));
        if !has {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(param);
            url.push('=');
            let original = format!(
                "{}://{}{}",
                if vars.secure { "https" } else { "http" },
                vars.authority,
                vars.request_uri
            );
            crate::policy::escape_component(&original, &mut url);
        }
        HeaderValue::from_str(&url).ok()
    }

    /// `Set-Cookie` values go on the client's answer: on 2xx and 3xx, or on every answer with
    /// `auth-always-set-cookie` (nginx's `add_header` and `add_header ... always`).
    pub fn cookies_apply(&self, status: StatusCode) -> bool {
        self.rule.always_set_cookie
            || matches!(
                status.as_u16(),
                200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
            )
    }

    /// `auth-always-set-cookie`.
    pub fn always_set_cookie(&self) -> bool {
        self.rule.always_set_cookie
    }
}

/// `Set-Cookie` values go on the client's answer: on the statuses nginx's `add_header` adds
/// to, or on every answer with `auth-always-set-cookie` (`add_header ... always`).
pub fn cookies_go_on(status: StatusCode, always: bool) -> bool {
    always
        || matches!(
            status.as_u16(),
            200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
        )
}

/// Add the service's cookies to an answer.
pub fn add_cookies(headers: &mut HeaderMap, cookies: &[HeaderValue]) {
    for c in cookies {
        headers.append(SET_COOKIE, c.clone());
    }
}

/// Answers by a SHA-256 of the rendered key (a client-chosen key, such as a huge
/// `Authorization`, costs 32 bytes); bounded, expired entries go first, then the oldest.
#[derive(Default)]
struct AnswerCache {
    entries: Mutex<HashMap<[u8; 32], (Answer, Instant)>>,
}

fn digest(key: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// At most this many answers per route.
const CACHE_CAPACITY: usize = 10_000;

impl AnswerCache {
    fn get(&self, key: &str) -> Option<Answer> {
        let key = digest(key);
        let map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(o, _)| o.clone())
    }

    fn put(&self, key: String, answer: Answer, ttl: Duration) {
        let key = digest(&key);
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= CACHE_CAPACITY
                && let Some(k) = map.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k)
            {
                map.remove(&k);
            }
        }
        map.insert(key, (answer, now + ttl));
    }
}

type AuthClient = Client<hyper_rustls::HttpsConnector<HttpConnector<Guarded>>, Empty<Bytes>>;

/// One pooled client per loopback policy, for the life of the process.
fn client(allow_loopback: bool) -> &'static AuthClient {
    static STRICT: OnceLock<AuthClient> = OnceLock::new();
    static LOOSE: OnceLock<AuthClient> = OnceLock::new();
    let cell = if allow_loopback { &LOOSE } else { &STRICT };
    cell.get_or_init(|| {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(guarded_connector(allow_loopback))
    })
}

/// HTTP and HTTPS (system roots, HTTP/1.1) through the guarded resolver: what external auth
/// and request mirrors dial with.
pub(crate) fn guarded_connector(
    allow_loopback: bool,
) -> hyper_rustls::HttpsConnector<HttpConnector<Guarded>> {
    let mut http = HttpConnector::new_with_resolver(Guarded::new(allow_loopback));
    http.enforce_http(false);
    http.set_nodelay(true);
    // hyper-rustls sets ALPN itself (http/1.1 here) and refuses a config that has it.
    let mut tls = crate::upstream::tls_config(b"http/1.1");
    tls.alpn_protocols.clear();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// The system resolver, minus addresses an auth URL must never reach.
#[derive(Clone)]
pub(crate) struct Guarded {
    inner: GaiResolver,
    allow_loopback: bool,
}

impl Guarded {
    /// The system resolver, refusing what `reachable` refuses (loopback unless allowed).
    pub(crate) fn new(allow_loopback: bool) -> Self {
        Guarded {
            inner: GaiResolver::new(),
            allow_loopback,
        }
    }
}

/// Cloud metadata services outside the link-local ranges (AWS's IPv6 one, Alibaba's).
const METADATA: [IpAddr; 2] = [
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
];

/// The proxy's own pod addresses, in a cluster: a subrequest (or a plugin's call) aimed there
/// would reach the admin port from inside, past any NetworkPolicy guarding it.
static OWN: OnceLock<Vec<IpAddr>> = OnceLock::new();

/// Refuses `addrs` (the controller pod's own) as auth and plugin call targets, for the life of
/// the process. Set once at start in a cluster.
pub fn refuse_own_addresses(addrs: Vec<IpAddr>) {
    let _ = OWN.set(addrs.into_iter().map(|ip| ip.to_canonical()).collect());
}

fn reachable(ip: IpAddr, allow_loopback: bool) -> bool {
    let ip = ip.to_canonical();
    if OWN.get().is_some_and(|own| own.contains(&ip)) {
        return false;
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !link_local
        && !ip.is_unspecified()
        && !METADATA.contains(&ip)
        && (allow_loopback || !ip.is_loopback())
}

/// The auth URL as it will be dialled: no userinfo (`http://a@b/` dials `b`), and a literal
/// address host must be reachable (literals never reach the resolver that filters names).
pub(crate) fn dialable(uri: &Uri, allow_loopback: bool) -> Result<(), String> {
    let authority = uri.authority().ok_or("the auth URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("the auth URL carries userinfo".into());
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(ip) if !reachable(ip, allow_loopback) => {
            Err(format!("the auth URL's address {ip} may not be reached"))
        }
        _ => Ok(()),
    }
}

impl tower_service::Service<Name> for Guarded {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_loopback = self.allow_loopback;
        // A literal address in the URL never reaches the resolver: HttpConnector parses it
        // itself, so literals are checked at compile time too (`check_literal`).
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup
                .await?
                .filter(|a| reachable(a.ip(), allow_loopback))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other(
                    "the auth host resolves only to addresses auth requests may not reach",
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Whether a request may steer where the auth subrequest goes: the URL's host is literal, or
/// the request's own host (`$host`, `$http_host`; safe only where routing admits exact host
/// names, never a wildcard or catch-all, or a client could point authentication at a server
/// of its choosing), or something else a client controls (refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthHost {
    Literal,
    RequestHost,
    ClientControlled,
}

pub fn auth_host(rule: &ExternalAuthRule) -> AuthHost {
    let mut kind = AuthHost::Literal;
    for (i, part) in rule.url.iter().enumerate() {
        match part {
            Part::Literal(s) => {
                let s = if i == 0 {
                    s.split_once("://").map_or("", |(_, rest)| rest)
                } else {
                    s
                };
                if s.contains(['/', '?', '#']) {
                    break;
                }
            }
            // `$host` only: `$http_host` also carries the client's port.
            Part::Variable(crate::policy::Variable::Host) => kind = AuthHost::RequestHost,
            Part::Variable(_) | Part::Header(_) => return AuthHost::ClientControlled,
        }
    }
    kind
}

/// An auth URL whose literal part already names something the client must not reach
/// (userinfo, an unreachable address); `None` if fine. Rendered URLs are checked again per
/// request.
pub fn check_literal(rule: &ExternalAuthRule, allow_loopback: bool) -> Option<String> {
    let Some(Part::Literal(first)) = rule.url.first() else {
        return None;
    };
    // Only a URL whose whole authority is literal can be judged now.
    let rest = first.split_once("://")?.1;
    if !rest.contains(['/', '?', '#']) && rule.url.len() > 1 {
        return None;
    }
    let uri: Uri = first.parse().ok()?;
    dialable(&uri, allow_loopback).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_metadata_literals_are_refused() {
        for bad in [
            "http://u@169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://169.254.169.254:80/",
        ] {
            let uri: Uri = bad.parse().expect("a URI");
            assert!(dialable(&uri, true).is_err(), "{bad}");
        }
        let ok: Uri = "http://auth.example.com:8080/check".parse().expect("a URI");
        assert!(dialable(&ok, false).is_ok());
    }

    #[test]
    fn metadata_and_unspecified_addresses_are_unreachable() {
        for (ip, loopback_ok, want) in [
            ("169.254.169.254", true, false),
            ("fe80::1", true, false),
            ("0.0.0.0", true, false),
            ("127.0.0.1", false, false),
            ("::ffff:127.0.0.1", false, false),
            ("127.0.0.1", true, true),
            ("10.0.0.5", false, true),
            ("fd00:ec2::254", true, false),
            ("100.100.100.200", true, false),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(reachable(ip, loopback_ok), want, "{ip} {loopback_ok}");
        }
    }
}

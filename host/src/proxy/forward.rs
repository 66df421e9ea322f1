//! Phases 6 and 7, upstream pick and forward: the endpoint, the request as the upstream gets
//! it (target, version, `Host`, the route's header edits, `rewrite-target`), the body's limits,
//! and the wait for the answer with nginx's timeouts. Failures become general words for the
//! client and details for the log.
//!
//! The request's headers were cleaned and the forwarding headers set by the view (phase 2);
//! this module only adds what depends on the upstream.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, HOST, HeaderName, TE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::{Exchange, InnerBody, local, retry, websocket};
use crate::body::{Hooked, Idle, OnIdle, Progress, Stage, Upload};
use crate::plugin::{BodyHooks, HookRequest};
use crate::policy::{self, Balance, HttpVersion, RequestVars};
use crate::route::{Backend, Endpoint};
use crate::upstream::{self, ResponseBody, UpstreamBody, UpstreamError, Wait};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Phase 6: the backend this request goes to: the one a request hook chose among those its
/// route grants, else the canary's when [`pick`] sent the request there, else the route's.
pub fn backend<'r>(ex: &Exchange<'r>) -> &'r Backend {
    let route = ex.route;
    let chosen = ex.request.as_deref().and_then(HookRequest::chosen_backend);
    match chosen {
        None => match &route.canary {
            Some(canary) if ex.canary => &canary.backend,
            _ => &route.backend,
        },
        Some(name) => route
            .policy
            .backends
            .iter()
            .find(|a| &*a.name == name)
            .map_or(&route.backend, |a| &a.backend),
    }
}

/// Phase 6: the endpoint this request goes to. A hook's choice of backend comes first; then a
/// client's session affinity (its cookie), which also keeps it off the canary unless the rule
/// says `legacy`; then the canary rule, read once from the request's headers as the hooks left
/// them; then the route's balancer (or the request key's endpoint on `upstream-hash-by`
/// routes). A client without a usable affinity cookie gets one ([`Exchange::set_cookie`]).
pub fn pick<'r>(ex: &mut Exchange<'r>, headers: &HeaderMap) -> Option<&'r Endpoint> {
    let route = ex.route;
    let hooked = ex
        .request
        .as_deref()
        .and_then(HookRequest::chosen_backend)
        .is_some();
    let affinity = route.policy.affinity.as_deref().filter(|_| !hooked);
    let stuck = affinity.and_then(|a| Some((a, a.find(headers, &route.backend)?)));
    if let Some(canary) = &route.canary
        && !hooked
        && !stuck.is_some_and(|(a, _)| a.rule.canary_sticky)
        && canary.rule.chooses(headers)
    {
        ex.canary = true;
        route.stats.canary();
        return balanced(ex, headers);
    }
    if let Some((_, endpoint)) = stuck {
        return Some(endpoint);
    }
    if let Some(a) = affinity {
        let (endpoint, value) = a.choose(&route.backend, || balanced(ex, headers), None)?;
        let user_agent = headers.get(http::header::USER_AGENT);
        ex.set_cookie = Some(a.set_cookie(value, ex.view.secure, user_agent));
        return Some(endpoint);
    }
    balanced(ex, headers)
}

/// The balancer's endpoint of the request's backend: the request key's on `upstream-hash-by`
/// routes, else round-robin or EWMA.
fn balanced<'r>(ex: &Exchange<'r>, headers: &HeaderMap) -> Option<&'r Endpoint> {
    let policy = &ex.route.policy;
    match &policy.hash_by {
        None => backend(ex).pick(policy.balance),
        Some(rule) => {
            let view = ex.view;
            let facts = crate::route::hash::Facts {
                request_uri: view.request_uri(),
                path: view.path(),
                host: view.host(),
                client: view.client,
                headers,
            };
            backend(ex).pick_hashed(rule, &facts)
        }
    }
}

/// Phase 7: sends the request upstream and waits for the response head; a failed attempt
/// goes to another endpoint as the route's `proxy-next-upstream` allows.
pub async fn send(
    ex: &mut Exchange<'_>,
    mut parts: Parts,
    body: Incoming,
    endpoint: &Endpoint,
) -> Result<Response<ResponseBody>, Response<InnerBody>> {
    let (route, view) = (ex.route, ex.view);
    let policy = &route.policy;
    let grpc = view.kind.grpc;
    let has_body = !hyper::body::Body::is_end_stream(&body);
    if has_body && policy.body_size > 0 && declared_length(&parts.headers) > policy.body_size {
        return Err(local::failure(
            local::BODY_TOO_LARGE,
            grpc,
            &view.request_id,
        ));
    }
    let client = match &route.grpc_client {
        Some(h2c) if grpc => h2c,
        _ => &route.client,
    };
    let backend = backend(ex);
    // A copy, only of requests that may go out again once sent (see `retry::keeps`).
    let kept = retry::keeps(&policy.next_upstream, &parts.method, has_body, backend)
        .then(|| parts.clone());
    if let Err(e) = prepare(ex, &mut parts, client, endpoint) {
        tracing::debug!(id = ?view.request_id, error = %e, "request target cannot be forwarded");
        return Err(local::bad_request(
            &"request target",
            grpc,
            &view.request_id,
        ));
    }
    let tee = policy.mirror.as_deref().and_then(|m| {
        let request_uri = view.request_uri();
        let vars = RequestVars {
            request_uri,
            ..super::routing::vars(view)
        };
        m.start(&parts, &vars, has_body)
    });
    let counter = ex.record.as_ref().map(|r| r.bytes_in.clone());
    let progress = has_body.then(Progress::new);
    let body = Idle::new(body, ex.settings.client_body_timeout, OnIdle::Fail).counting(counter);
    let body = Upload::new(body, policy.body_size, progress.clone()).with_tee(tee);
    let hooks = has_body
        .then(|| BodyHooks::request(&policy.hooks, ex.request.as_deref()))
        .flatten();
    if hooks.is_some() {
        // Hooks may change the body's length: it goes chunked.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let body = Hooked::new(body, hooks);
    let mut deadline = None;
    if grpc && let Some(limit) = parts.headers.get(&GRPC_TIMEOUT).and_then(grpc_timeout) {
        deadline = Some(tokio::time::Instant::now() + limit);
    }
    let wait = Wait {
        connect: policy.connect_timeout,
        send: policy.send_timeout,
        read: policy.read_timeout,
        progress,
        deadline,
    };
    let mut attempts = retry::Attempts::new(&policy.next_upstream, backend);
    // Only where a retry may rewrite the affinity cookie (its SameSite depends on it).
    let user_agent = policy
        .affinity
        .as_deref()
        .filter(|a| a.rule.change_on_failure)
        .and_then(|_| req_user_agent(&kept, &parts));
    let (mut req, mut endpoint) = (Request::from_parts(parts, body), endpoint);
    loop {
        let sent_at = tokio::time::Instant::now();
        let busy = (policy.balance == Balance::Ewma).then(|| endpoint.load.begin());
        let result = client.send(req, endpoint, &backend.name, &wait).await;
        let upstream_took = sent_at.elapsed();
        if let Some(busy) = busy {
            // A failure counts at least as a connect timeout: failing fast must not look fast.
            let took = match &result {
                Ok(_) => upstream_took,
                Err(_) => upstream_took.max(policy.connect_timeout),
            };
            endpoint.load.observe(took, crate::route::load::now_us());
            drop(busy);
        }
        route.stats.upstream(upstream_took);
        if let Some(r) = ex.record.as_mut() {
            r.upstream_duration = Some(upstream_took);
        }
        let stage = wait.progress.as_deref().map(Progress::stage);
        let (again, next) = match result {
            Ok(resp) => {
                endpoint.health.answered();
                match attempts.after_status(resp.status(), kept.is_some(), endpoint) {
                    Some(next) => (None, next),
                    None => return Ok(resp),
                }
            }
            Err(f) => match attempts.after_failure(&f, stage, kept.is_some(), endpoint) {
                Some(next) => {
                    tracing::info!(ingress = %route.ingress, id = ?view.request_id, error = %f.error,
                        next = %next.addr, "upstream attempt failed; trying another endpoint");
                    (f.unsent, next)
                }
                None => return Err(failed(ex, &f.error, wait.progress.as_deref())),
            },
        };
        route.stats.retry();
        req = match (again, &kept) {
            (Some(mut unsent), _) => {
                retarget(&mut unsent, client, next);
                *unsent
            }
            (None, Some(kept)) => {
                let mut parts = kept.clone();
                if prepare(ex, &mut parts, client, next).is_err() {
                    return Err(local::bad_request(
                        &"request target",
                        grpc,
                        &view.request_id,
                    ));
                }
                Request::from_parts(parts, Hooked::new(Upload::empty(), None))
            }
            // Not reached: `after_*` offer a next endpoint only when one of the two is there.
            (None, None) => return Err(local::failure(local::UPSTREAM, grpc, &view.request_id)),
        };
        let mut next = next;
        if let Some(a) = policy
            .affinity
            .as_deref()
            .filter(|a| a.rule.change_on_failure)
            && !ex.canary
            && let Some((moved, value)) = a.choose(backend, || Some(next), Some(endpoint))
        {
            // The client moves for good to where its retry goes (ingress-nginx's
            // `session-cookie-change-on-failure`); otherwise it keeps its cookie.
            next = moved;
            ex.set_cookie = Some(a.set_cookie(value, view.secure, user_agent.as_ref()));
        }
        if let Some(r) = ex.record.as_mut() {
            r.upstream = Some(next.addr);
        }
        endpoint = next;
    }
}

/// The request's `User-Agent` (from the parts before they go into the request).
fn req_user_agent(kept: &Option<Parts>, parts: &Parts) -> Option<HeaderValue> {
    let headers = kept.as_ref().map_or(&parts.headers, |k| &k.headers);
    headers.get(http::header::USER_AGENT).cloned()
}

/// Points a request that was never sent at another endpoint (HTTP/2 upstreams carry the
/// endpoint in the URI's authority; HTTP/1.1 ones keep the client's `Host`).
fn retarget(req: &mut Request<UpstreamBody>, client: &upstream::Client, endpoint: &Endpoint) {
    if !client.transport.is_h2() {
        return;
    }
    let mut uri = req.uri().clone().into_parts();
    uri.authority = Some(endpoint.authority.clone());
    if let Ok(uri) = Uri::from_parts(uri) {
        *req.uri_mut() = uri;
    }
}

/// The request line and headers the upstream gets.
fn prepare(
    ex: &Exchange<'_>,
    parts: &mut Parts,
    client: &upstream::Client,
    endpoint: &Endpoint,
) -> Result<(), http::uri::InvalidUriParts> {
    let (route, view) = (ex.route, ex.view);
    let policy = &route.policy;
    let h2 = client.transport.is_h2();
    let mut uri = view.uri.clone().into_parts();
    // HTTP/2 upstreams take `:scheme` and `:authority` from an absolute URI; HTTP/1.1 ones
    // are sent origin-form (`Host` is set below).
    (uri.scheme, uri.authority) = if h2 {
        (
            Some(client.transport.scheme()),
            Some(endpoint.authority.clone()),
        )
    } else {
        (None, None)
    };
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let (Some(target), Some(re)) = (&policy.rewrite_target, &route.path_regex)
        && let Some(rewritten) = rewrite(re, target, &view.target())
    {
        uri.path_and_query = Some(rewritten);
    }
    if let Some(target) = uri.path_and_query.take() {
        // A request hook's path replaces this one (`rewrite-target`'s included); its query
        // alone replaces only the query.
        uri.path_and_query = Some(super::hooks::target(ex, target));
    }
    parts.uri = Uri::from_parts(uri)?;
    parts.version = match (h2, policy.http_version) {
        (true, _) => Version::HTTP_2,
        (false, HttpVersion::Http11) => Version::HTTP_11,
        (false, HttpVersion::Http10) => Version::HTTP_10,
    };
    if h2 && view.kind.te_trailers {
        // The one TE value HTTP/2 allows; gRPC servers may require it.
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    // The one host the view settled on (an absolute-form target's authority replaces `Host`).
    if let Some(host) = view.authority_value() {
        parts.headers.insert(HOST, host);
    }
    let request_uri = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let vars = RequestVars {
        request_uri,
        ..super::routing::vars(view)
    };
    policy::apply_edits(&policy.request_headers, &mut parts.headers, &vars);
    Ok(())
}

/// A failed send, for the log in detail and for the client in general words.
fn failed(
    ex: &Exchange<'_>,
    e: &UpstreamError,
    progress: Option<&Progress>,
) -> Response<InnerBody> {
    let (route, view) = (ex.route, ex.view);
    let failure = match (progress.map(Progress::stage), e) {
        (Some(Stage::TooLarge), _) => local::BODY_TOO_LARGE,
        (Some(Stage::ClientIdle), _) => local::BODY_TIMEOUT,
        (_, UpstreamError::Timeout { .. }) => local::TIMEOUT,
        (_, UpstreamError::Connect { .. }) => {
            route.stats.connect_error();
            local::CONNECT
        }
        (_, UpstreamError::Protocol { .. }) => local::UPSTREAM,
    };
    tracing::warn!(ingress = %route.ingress, id = ?view.request_id, error = %e, "{}", failure.what);
    local::failure(failure, view.kind.grpc, &view.request_id)
}

/// Phase 7 for WebSocket requests: the handshake with the backend, then the tunnel.
pub async fn tunnel(
    ex: &mut Exchange<'_>,
    mut req: Request<Incoming>,
    kind: websocket::Kind,
    endpoint: &Endpoint,
    stats: &Arc<crate::metrics::TunnelStats>,
    request_slot: Option<crate::access::limit::Slot>,
) -> Response<InnerBody> {
    let (route, view) = (ex.route, ex.view);
    let policy = &route.policy;
    *req.uri_mut() = view.uri.clone();
    if let Some(target) = view.uri.path_and_query().cloned() {
        // The request hooks' path or query applies to the upgrade too.
        let mut parts = view.uri.clone().into_parts();
        parts.path_and_query = Some(super::hooks::target(ex, target));
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    let mut headers = req.headers().clone();
    if let Some(host) = view.authority_value() {
        headers.insert(HOST, host);
    }
    policy::apply_edits(
        &policy.request_headers,
        &mut headers,
        &super::routing::vars(view),
    );
    let timeouts = websocket::Timeouts {
        connect: policy.connect_timeout,
        read: policy.read_timeout,
        send: policy.send_timeout,
    };
    let backend = websocket::Backend {
        endpoint,
        tls: (route.client.transport == upstream::Transport::TlsHttp1).then(upstream::http1_tls),
        timeouts,
    };
    let slot = websocket::Held {
        connection: ex.conn.slot.clone(),
        request: request_slot,
    };
    let hooks = &route.policy.hooks;
    // The tunnel's hooks get their own copy: the response hooks of the upgrade keep theirs.
    let hooked = hooks.has_message_hooks().then(|| websocket::Hooked {
        hooks: hooks.clone(),
        request: ex.request.clone(),
    });
    match websocket::open(req, kind, backend, headers, stats.clone(), slot, hooked).await {
        Ok(resp) => resp,
        Err(e) => {
            let failure = match e {
                websocket::TunnelError::Timeout { .. } => local::TIMEOUT,
                websocket::TunnelError::Connect { .. } => local::CONNECT,
                websocket::TunnelError::Handshake { .. } => local::UPSTREAM,
            };
            tracing::warn!(ingress = %route.ingress, id = ?view.request_id, error = %e,
                "WebSocket tunnel failed");
            local::failure(failure, false, &view.request_id)
        }
    }
}

/// The body length a request declares, 0 if none (a streamed body is counted as it goes).
fn declared_length(headers: &HeaderMap) -> u64 {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// ingress-nginx `rewrite-target`: when the path regex matches the normalised path, the path
/// becomes the target with `$1`.. expanded from its captures; the query is kept.
fn rewrite(re: &regex::Regex, target: &str, normalised: &str) -> Option<PathAndQuery> {
    let (path, query) = match normalised.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (normalised, None),
    };
    let caps = re.captures(path)?;
    let mut out = String::with_capacity(target.len() + normalised.len());
    caps.expand(target, &mut out);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::try_from(out).ok()
}

/// Parses `grpc-timeout` (`1-8 digits` + unit H, M, S, m, u, n).
fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Gives the request an `X-Request-Id` unless the client sent one; returns it.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(request_id)
}

/// A new request id: 32 hex digits, a random per-process prefix and a counter, so ids are
/// unique across replicas without a random draw per request.
fn request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        u64::from_le_bytes(seed)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    for (i, byte) in prefix
        .to_be_bytes()
        .iter()
        .chain(&n.to_be_bytes())
        .enumerate()
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_target_expands_captures_and_keeps_the_query() {
        let re = crate::route::path_regex("/something(/|$)(.*)").expect("regex");
        let show = |p: Option<PathAndQuery>| p.map(|p| p.to_string());
        assert_eq!(
            show(rewrite(&re, "/$2", "/something/new/x?a=1")),
            Some("/new/x?a=1".to_owned())
        );
        assert_eq!(
            show(rewrite(&re, "/$2", "/something")),
            Some("/".to_owned())
        );
        assert_eq!(rewrite(&re, "/$2", "/other"), None);
    }

    #[test]
    fn parses_grpc_timeouts() {
        let t = |s: &'static str| grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5x"), None);
        assert_eq!(t("123456789S"), None, "at most 8 digits");
    }

    #[test]
    fn request_ids_are_made_unique_and_a_clients_is_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h)
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id.as_str());
        let mut again = HeaderMap::new();
        assert_ne!(ensure_request_id(&mut again), id.as_str(), "ids are unique");
        let mut kept = HeaderMap::new();
        kept.insert("x-request-id", HeaderValue::from_static("mine"));
        assert_eq!(
            ensure_request_id(&mut kept),
            "mine",
            "a client's id is passed on"
        );
    }
}

//! Phases 5 and 8's Wasm part: the route's plugins see the request (in attach order) and every
//! response the route gives (in reverse attach order), through one per-request
//! [`HookRequest`] that carries the request's facts and what plugins keep between hooks.
//!
//! Plugins see the canonical view (the normalised path with the original query, the checked
//! authority, the client address after PROXY protocol and trusted forwarding headers) and
//! headers already cleaned and carrying the proxy's forwarding headers, so nothing a hook
//! reads can be forged by the client. A request hook's method, path and query changes are
//! applied here to what goes upstream. Routes without hooks skip all of it: no request is
//! built, no call made.

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::{Conn, Exchange, InnerBody, RequestView};
use crate::plugin::{self, BodyHooks, HookOutcome, HookRequest, RequestFacts, TlsInfo};
use crate::route::Route;

/// The request hooks will see, on routes with hooks.
pub fn request(
    route: &Route,
    view: &RequestView,
    conn: &Conn,
    parts: &Parts,
) -> Option<Box<HookRequest>> {
    let hooks = &route.policy.hooks;
    if hooks.is_empty() {
        return None;
    }
    let path = match view.target() {
        std::borrow::Cow::Borrowed(_) => view.uri.path_and_query().cloned(),
        std::borrow::Cow::Owned(p) => PathAndQuery::try_from(p).ok(),
    };
    let facts = RequestFacts {
        method: &parts.method,
        scheme: view.scheme(),
        authority: view.authority_value(),
        path: path.unwrap_or_else(|| PathAndQuery::from_static("/")),
        id: view.request_id.clone(),
        client: view.client,
        tls: tls(route, conn),
        websocket: view.kind.websocket.is_some(),
    };
    Some(Box::new(HookRequest::new(facts, hooks.route().cloned())))
}

/// What hooks learn of the connection's TLS: the certificate only where this route verified
/// it (a verdict judged under another route's trust is not this route's to report).
fn tls(route: &Route, conn: &Conn) -> Option<TlsInfo> {
    let facts = conn.tls.as_deref()?;
    let verified = route
        .policy
        .client_tls
        .as_ref()
        .and(facts.client.as_ref())
        .filter(|c| c.status == crate::tls::client::Status::Success);
    Some(TlsInfo {
        sni: facts.sni.clone(),
        client_subject: verified.and_then(|c| c.subject_dn.clone()),
        client_issuer: verified.and_then(|c| c.issuer_dn.clone()),
    })
}

/// What the request hooks decided.
pub enum RequestHooks {
    /// Go on upstream (their method change is applied to `parts`).
    Proceed,
    /// Send this answer instead (boxed: every hooked request carries this enum).
    Answer(Box<Response<InnerBody>>),
    /// A plugin waits for outbound calls: [`resume`] them.
    Wait(Box<plugin::Suspended>),
}

/// Runs the request hooks. Their method change is applied to `parts`; their path change waits
/// in the request for the forward phase.
pub fn on_request(exchange: &mut Exchange<'_>, parts: &mut Parts) -> RequestHooks {
    let hooks = &exchange.route.policy.hooks;
    if !hooks.has_request_hooks() {
        return RequestHooks::Proceed;
    }
    let outcome = hooks.run_request(&mut exchange.request, &mut parts.headers);
    decided(exchange, parts, outcome)
}

/// Makes the outbound calls a request hook waits for and runs the rest of the chain. Kept
/// out of [`on_request`], so requests whose hooks never wait do not carry its state. `Some`
/// is a plugin's answer.
pub async fn resume(
    exchange: &mut Exchange<'_>,
    parts: &mut Parts,
    suspended: Box<plugin::Suspended>,
) -> Option<Response<InnerBody>> {
    let hooks = &exchange.route.policy.hooks;
    if let Some(answer) = hooks
        .resume(suspended, &mut exchange.request, &mut parts.headers)
        .await
    {
        return Some(fixed(answer));
    }
    apply_method(exchange, parts);
    None
}

fn decided(exchange: &mut Exchange<'_>, parts: &mut Parts, outcome: HookOutcome) -> RequestHooks {
    match outcome {
        HookOutcome::Continue => {
            apply_method(exchange, parts);
            RequestHooks::Proceed
        }
        HookOutcome::Respond(answer) => RequestHooks::Answer(Box::new(fixed(answer))),
        HookOutcome::Wait(suspended) => RequestHooks::Wait(suspended),
    }
}

/// The request hooks' method change, onto what goes upstream.
fn apply_method(exchange: &Exchange<'_>, parts: &mut Parts) {
    if let Some(method) = exchange
        .request
        .as_deref()
        .and_then(HookRequest::changed_method)
    {
        parts.method = method.clone();
    }
}

/// The upstream target `target` (what it would be without hooks) after the request hooks'
/// changes: their path (query included) replaces it; a query change alone keeps its path.
pub fn target(exchange: &Exchange<'_>, target: PathAndQuery) -> PathAndQuery {
    let Some(request) = exchange.request.as_deref() else {
        return target;
    };
    if let Some(chosen) = request.changed_path() {
        return chosen.clone();
    }
    let Some(query) = request.changed_query() else {
        return target;
    };
    let next = match query {
        Some(q) => format!("{}?{q}", target.path()),
        None => target.path().to_string(),
    };
    // Both parts were valid on their own, so the join is too; keep the target otherwise.
    PathAndQuery::try_from(next).unwrap_or(target)
}

/// Runs the response hooks over any response of the route; a hook's answer replaces it. An
/// upstream's body that remains then goes through the body hooks, if the route has any.
pub fn on_response(exchange: &mut Exchange<'_>, resp: Response<InnerBody>) -> Response<InnerBody> {
    let hooks = &exchange.route.policy.hooks;
    if !hooks.has_response_hooks() && !hooks.has_response_body_hooks() {
        return resp;
    }
    let (mut parts, mut body) = resp.into_parts();
    if hooks.has_response_hooks() {
        let mut status: StatusCode = parts.status;
        if let Some(answer) =
            hooks.run_response(&mut exchange.request, &mut status, &mut parts.headers)
        {
            // The upstream's body (if any) is dropped unread: its connection is not reused.
            return fixed(answer);
        }
    }
    if let Either::Left(streamed) = &mut body
        && parts.status != StatusCode::SWITCHING_PROTOCOLS
        && !http_body::Body::is_end_stream(streamed)
        && let Some(filter) = BodyHooks::response(hooks, exchange.request.as_deref())
    {
        // Hooks may change the body's length.
        parts.headers.remove(http::header::CONTENT_LENGTH);
        streamed.filter_with(filter);
    }
    Response::from_parts(parts, body)
}

/// A plugin's answer as a response.
pub fn fixed(answer: plugin::FixedResponse) -> Response<InnerBody> {
    let mut resp = Response::new(Either::Right(Full::new(answer.body)));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    resp
}

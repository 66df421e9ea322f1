//! Phase 8, response: the upstream's answer on its way to the client. Hop-by-hop headers go,
//! the route's native header edits apply (the response hooks run later, in `serve_route`,
//! over every answer of the route); the body streams on with
//! the route's read timeout between reads, its bandwidth limit (`limit-rate`), and the
//! request's `limit-connections` slot until it ends.

use http::Response;
use http_body_util::Either;

use super::{Exchange, InnerBody, view};
use crate::access::limit::Slot;
use crate::body::{Idle, OnIdle};
use crate::policy;
use crate::upstream::ResponseBody;

/// The client's response for the upstream's `resp`.
pub fn filter(
    ex: &Exchange<'_>,
    resp: Response<ResponseBody>,
    slot: Option<Slot>,
) -> Response<InnerBody> {
    let policy = &ex.route.policy;
    let (mut parts, body) = resp.into_parts();
    // The upstream's version is its connection's business: an HTTP/1.0 backend must not turn
    // the client's HTTP/1.1 answer into an HTTP/1.0 one (which ends the client's keep-alive).
    parts.version = ex.view.version;
    view::strip_hop_by_hop(&mut parts.headers);
    if !policy.response_headers.is_empty() {
        let vars = policy::RequestVars {
            request_uri: "",
            ..super::routing::vars(ex.view)
        };
        policy::apply_edits(&policy.response_headers, &mut parts.headers, &vars);
    }
    let on_idle = if ex.view.kind.grpc {
        OnIdle::GrpcDeadline
    } else {
        OnIdle::Fail
    };
    let body = Idle::new(body, policy.read_timeout, on_idle)
        .holding(slot)
        .throttled(policy.response_rate);
    Response::from_parts(parts, Either::Left(crate::body::Hooked::new(body, None)))
}

//! Phase 5, request hooks: the route's Wasm plugins see the request, in attach order, and may
//! edit its headers or answer it.
//!
//! Plugins see the canonical view (the normalised path with the original query, the checked
//! authority) and headers already cleaned and carrying the proxy's forwarding headers, so
//! nothing a hook reads can be forged by the client. Routes without hooks skip this phase for
//! free.

use http::Response;
use http::request::Parts;
use http_body_util::{Either, Full};

use super::{Exchange, InnerBody};
use crate::plugin::{self, HookOutcome};

/// Runs the request hooks; `Some` is a plugin's answer.
pub fn on_request(exchange: &Exchange<'_>, parts: &mut Parts) -> Option<Response<InnerBody>> {
    let hooks = &exchange.route.policy.hooks;
    if hooks.is_empty() {
        return None;
    }
    let view = exchange.view;
    let target = view.target();
    let head = plugin::RequestHead {
        method: parts.method.as_str(),
        scheme: view.scheme(),
        authority: view.authority(),
        path: &target,
    };
    match hooks.run_request(&head, &mut parts.headers) {
        HookOutcome::Continue => None,
        HookOutcome::Respond(answer) => Some(fixed(answer)),
    }
}

/// A plugin's answer as a response.
pub fn fixed(answer: plugin::FixedResponse) -> Response<InnerBody> {
    let mut resp = Response::new(Either::Right(Full::new(answer.body)));
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    resp
}

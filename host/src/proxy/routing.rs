//! Phase 3, route: the request's host and normalised path to a route, and the answers a route
//! gives by itself before anything else runs (nginx's rewrite phase): the HTTPS redirect,
//! static responses, `app-root`.
//!
//! Reads the [`RequestView`] only; it never looks at the raw request target or `Host`.

use http::{Response, StatusCode};

use super::view::RequestView;
use super::{InnerBody, local};
use crate::policy::{self, RequestVars, StaticResponse};
use crate::route::{Route, RouteTable};

/// The route for the view's host and path, if any.
pub fn find<'t>(routes: &'t RouteTable, view: &RequestView) -> Option<&'t Route> {
    routes.find(view.host(), view.path()).map(|r| &**r)
}

/// What the route answers without the upstream, if anything.
pub fn answer(
    route: &Route,
    view: &RequestView,
    redirect_https_port: u16,
) -> Option<Response<InnerBody>> {
    let policy = &route.policy;
    if policy.ssl_redirect && !view.secure {
        let host = view.host();
        let target = view.target();
        let location = match redirect_https_port {
            443 => format!("https://{host}{target}"),
            port => format!("https://{host}:{port}{target}"),
        };
        return Some(local::redirect(StatusCode::PERMANENT_REDIRECT, &location));
    }
    if let Some(answer) = &policy.respond {
        return Some(static_response(answer, &vars(view)));
    }
    if let Some(root) = &policy.app_root
        && view.path() == "/"
    {
        return Some(local::redirect(StatusCode::FOUND, root));
    }
    None
}

/// The facts header and redirect templates may use.
pub fn vars(view: &RequestView) -> RequestVars<'_> {
    RequestVars {
        host: view.host(),
        remote: std::net::SocketAddr::new(view.client, 0),
        secure: view.secure,
        request_uri: view.request_uri(),
        authority: view.authority(),
        // Callers holding the request line or headers fill these in.
        method: "",
        headers: None,
    }
}

fn static_response(answer: &StaticResponse, vars: &RequestVars<'_>) -> Response<InnerBody> {
    match answer {
        StaticResponse::Redirect { status, location } => {
            local::redirect(*status, &policy::render(location, vars))
        }
        StaticResponse::Fixed {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(http_body_util::Either::Right(http_body_util::Full::new(
                body.clone(),
            )));
            *resp.status_mut() = *status;
            *resp.headers_mut() = headers.clone();
            resp
        }
    }
}

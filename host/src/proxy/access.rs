//! Phase 4, access: who may reach a route.
//!
//! Runs after routing and before any plugin hook or upstream contact, and answers (401, 403)
//! or passes. The rules themselves ([`crate::access`]) are data compile built for the route;
//! this phase hands them the client address the view computed (after PROXY protocol and
//! trusted forwarding headers) and the `Authorization` header, and turns a refusal into the
//! answer the client understands (a gRPC status for gRPC clients). A route without rules pays
//! one branch.
//!
//! A password hash (bcrypt: milliseconds of CPU) is never computed on a proxy worker: it runs
//! on the blocking pool, at most one per CPU at a time, so a flood of wrong passwords queues
//! behind that bound instead of stalling every other request. Verified credentials are
//! remembered ([`crate::access::basic`]), so a client pays for the hash once.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use tokio::sync::Semaphore;

use super::{Exchange, InnerBody, local, routing};
use crate::access::external::{self, ExternalAuth, Facts, Outcome};
use crate::access::limit::{Limits, Refused, Slot};
use crate::access::{Access, Credentials, Verdict};

/// Admitted, or refused with the answer to send (boxed: refusals are the rare path).
pub type Decision = Result<Admitted, Box<Response<InnerBody>>>;

/// What an admitted request carries on.
#[derive(Default)]
pub struct Admitted {
    /// Its `limit-connections` slot: keep it until the response ends.
    pub slot: Option<Slot>,
    /// The external auth service's `Set-Cookie`s for the client's answer.
    pub cookies: Option<AuthCookies>,
}

/// `Set-Cookie`s an auth service sent, and on which answers they go.
pub struct AuthCookies {
    values: Vec<HeaderValue>,
    always: bool,
}

impl AuthCookies {
    /// Adds them to `resp` when its status calls for them (nginx's `add_header`).
    pub fn add_to(&self, resp: &mut Response<InnerBody>) {
        if external::cookies_go_on(resp.status(), self.always) {
            external::add_cookies(resp.headers_mut(), &self.values);
        }
    }
}

/// The access decision for this exchange: rate limits first (nginx's pre-access phase, so a
/// flood is refused before it costs an authentication), then the access rules. An admitted
/// request may have gained headers for the upstream (the external auth service's).
pub async fn check(exchange: &Exchange<'_>, parts: &mut Parts) -> Decision {
    let policy = &exchange.route.policy;
    let mut admitted = Admitted::default();
    if let Some(limits) = &policy.limits {
        admitted.slot = limit(exchange, limits)?;
    }
    if let Some(access) = &policy.access {
        admitted.cookies = rules(exchange, access, parts).await?;
    }
    Ok(admitted)
}

fn limit(
    exchange: &Exchange<'_>,
    limits: &Arc<Limits>,
) -> Result<Option<Slot>, Box<Response<InnerBody>>> {
    let view = exchange.view;
    let status = match limits.admit(view.client) {
        Ok(slot) => return Ok(slot),
        Err(Refused::Rate) => exchange.settings.limit_req_status,
        Err(Refused::Connections) => exchange.settings.limit_conn_status,
    };
    let failure = local::Failure::new(
        status,
        local::GrpcCode::ResourceExhausted,
        "too many requests",
    );
    Err(refuse(exchange, failure))
}

fn refuse(exchange: &Exchange<'_>, failure: local::Failure) -> Box<Response<InnerBody>> {
    let view = exchange.view;
    Box::new(local::failure(failure, view.kind.grpc, &view.request_id))
}

/// The access rules' decision; an admitted request may bring auth cookies along.
async fn rules(
    exchange: &Exchange<'_>,
    access: &Arc<Access>,
    parts: &mut Parts,
) -> Result<Option<AuthCookies>, Box<Response<InnerBody>>> {
    let view = exchange.view;
    let creds = Credentials {
        authorization: parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()),
        method: parts.method.as_str(),
        target: view.uri.path_and_query().map_or("/", |p| p.as_str()),
        external: !exchange.route.policy.skip_external_auth,
    };
    let verdict = match access.check(view.client, &creds) {
        // Boxed: the wait for a hashing permit is rare, and would otherwise make every
        // request's future larger.
        Verdict::Verify => {
            let checking = verify(
                access.clone(),
                view.client,
                creds.authorization,
                creds.external,
            );
            Box::pin(checking).await
        }
        quick => quick,
    };
    let failure = match verdict {
        Verdict::Pass => return Ok(None),
        Verdict::External => match &access.external {
            Some(auth) => return Box::pin(ask(exchange, auth, parts)).await,
            None => local::UNAUTHORIZED,
        },
        Verdict::Forbidden => local::FORBIDDEN,
        Verdict::Unauthorized | Verdict::Verify => local::UNAUTHORIZED,
    };
    let mut resp = refuse(exchange, failure);
    if failure == local::UNAUTHORIZED
        && let Some(challenge) = access.challenge(&creds)
    {
        resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    }
    Err(resp)
}

const AUTH_SERVICE: local::Failure = local::Failure::new(
    StatusCode::INTERNAL_SERVER_ERROR,
    local::GrpcCode::Internal,
    "authentication service error",
);

/// Ask the external auth service, and apply its decision.
async fn ask(
    exchange: &Exchange<'_>,
    auth: &ExternalAuth,
    parts: &mut Parts,
) -> Result<Option<AuthCookies>, Box<Response<InnerBody>>> {
    let view = exchange.view;
    let outcome = {
        let facts = Facts {
            vars: crate::policy::RequestVars {
                method: parts.method.as_str(),
                headers: Some(&parts.headers),
                ..routing::vars(view)
            },
            headers: &parts.headers,
            request_id: &view.request_id,
        };
        auth.check(&facts).await
    };
    match outcome {
        Outcome::Allow { upstream, cookies } => {
            // A listed header is the service's word or absent, never the client's.
            for name in auth.copied_headers() {
                parts.headers.remove(name);
            }
            for (name, value) in upstream {
                parts.headers.insert(name, value);
            }
            Ok((!cookies.is_empty()).then(|| AuthCookies {
                values: cookies,
                always: auth.always_set_cookie(),
            }))
        }
        Outcome::Deny {
            status,
            challenge,
            cookies,
        } => {
            let failure = if status == StatusCode::FORBIDDEN {
                local::FORBIDDEN
            } else {
                local::UNAUTHORIZED
            };
            let mut resp = refuse(exchange, failure);
            if let Some(challenge) = challenge {
                resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
            }
            if auth.cookies_apply(status) {
                external::add_cookies(resp.headers_mut(), &cookies);
            }
            Err(resp)
        }
        Outcome::SignIn { location, cookies } => {
            // Rendered from our own template into a header value: always text.
            let location = location.to_str().unwrap_or("/");
            let mut resp = Box::new(local::redirect(StatusCode::FOUND, location));
            external::add_cookies(resp.headers_mut(), &cookies);
            Err(resp)
        }
        Outcome::Failed => Err(refuse(exchange, AUTH_SERVICE)),
    }
}

/// Hash checks running at once, process-wide: one per CPU.
fn hashing() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Semaphore::new(cpus)
    })
}

/// The full check, on the blocking pool. Anything going wrong there refuses (fails closed).
async fn verify(
    access: Arc<Access>,
    client: IpAddr,
    authorization: Option<&[u8]>,
    external: bool,
) -> Verdict {
    let Ok(_permit) = hashing().acquire().await else {
        return Verdict::Unauthorized;
    };
    let authorization = authorization.map(<[u8]>::to_vec);
    let checked = tokio::task::spawn_blocking(move || {
        // Only basic-auth hashes are slow; digest never asks for this (no method needed).
        let creds = Credentials {
            authorization: authorization.as_deref(),
            method: "",
            target: "",
            external,
        };
        access.check_fully(client, &creds)
    });
    checked.await.unwrap_or(Verdict::Unauthorized)
}

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
use http::{HeaderMap, Response};
use tokio::sync::Semaphore;

use super::{Exchange, InnerBody, local};
use crate::access::limit::{Limits, Refused, Slot};
use crate::access::{Access, Verdict};

/// Admitted, or refused with the answer to send (boxed: refusals are the rare path).
pub type Decision = Result<Option<Slot>, Box<Response<InnerBody>>>;

/// The access decision for this exchange: rate limits first (nginx's pre-access phase, so a
/// flood is refused before it costs an authentication), then the access rules. An admitted
/// request may hold a [`Slot`] of `limit-connections`: keep it until the response ends.
pub async fn check(exchange: &Exchange<'_>, headers: &HeaderMap) -> Decision {
    let policy = &exchange.route.policy;
    let slot = match &policy.limits {
        Some(limits) => limit(exchange, limits)?,
        None => None,
    };
    if let Some(access) = &policy.access
        && let Some(refused) = rules(exchange, access, headers).await
    {
        return Err(Box::new(refused));
    }
    Ok(slot)
}

fn limit(exchange: &Exchange<'_>, limits: &Arc<Limits>) -> Decision {
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
    Err(Box::new(local::failure(
        failure,
        view.kind.grpc,
        &view.request_id,
    )))
}

/// The access rules' answer, `None` when they admit the request.
async fn rules(
    exchange: &Exchange<'_>,
    access: &Arc<Access>,
    headers: &HeaderMap,
) -> Option<Response<InnerBody>> {
    let view = exchange.view;
    let authorization = headers.get(AUTHORIZATION).map(|v| v.as_bytes());
    let verdict = match access.check(view.client, authorization) {
        // Boxed: the wait for a hashing permit is rare, and would otherwise make every
        // request's future larger.
        Verdict::Verify => Box::pin(verify(access.clone(), view.client, authorization)).await,
        quick => quick,
    };
    let failure = match verdict {
        Verdict::Pass => return None,
        Verdict::Forbidden => local::FORBIDDEN,
        Verdict::Unauthorized | Verdict::Verify => local::UNAUTHORIZED,
    };
    let mut resp = local::failure(failure, view.kind.grpc, &view.request_id);
    if failure == local::UNAUTHORIZED
        && let Some(challenge) = access.challenge()
    {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, challenge.clone());
    }
    Some(resp)
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
async fn verify(access: Arc<Access>, client: IpAddr, authorization: Option<&[u8]>) -> Verdict {
    let Ok(_permit) = hashing().acquire().await else {
        return Verdict::Unauthorized;
    };
    let authorization = authorization.map(<[u8]>::to_vec);
    let checked =
        tokio::task::spawn_blocking(move || access.check_fully(client, authorization.as_deref()));
    checked.await.unwrap_or(Verdict::Unauthorized)
}

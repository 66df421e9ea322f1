//! Phase 7's retries (ingress-nginx `proxy-next-upstream`, `-tries`, `-timeout`): whether a
//! failed attempt goes to another endpoint, and which.
//!
//! nginx's rules: only while nothing was sent to the client (phase 7 has not answered yet, so
//! that always holds here); a request that never connected can always go again, as it is; one
//! that went out can go again only if it can be sent whole once more (no body: the proxy does
//! not keep streamed bodies) and its method is idempotent (or `non_idempotent` is set). Each
//! retry goes to another endpoint that is up; a backend with a single endpoint never retries.
//! Attempts also feed the endpoints' passive health ([`crate::route::health`]).
//!
//! This module decides; `forward` sends.

use http::{Method, StatusCode};

use crate::body::Stage;
use crate::policy::NextUpstream;
use crate::route::{Backend, Endpoint, health};
use crate::upstream::{Failed, UpstreamError};

/// Whether a request's parts are worth keeping to send it again after it went out: it has no
/// body, may be repeated, and could go somewhere else.
pub fn keeps(rule: &NextUpstream, method: &Method, has_body: bool, backend: &Backend) -> bool {
    !has_body
        && rule.tries != 1
        && backend.endpoints().len() > 1
        && (rule.on & !(NextUpstream::ON_NON_IDEMPOTENT) != 0)
        && (idempotent(method) || rule.on(NextUpstream::ON_NON_IDEMPOTENT))
}

/// nginx's non-idempotent methods: POST, LOCK, PATCH.
fn idempotent(method: &Method) -> bool {
    !(method == Method::POST || method == Method::PATCH || method.as_str() == "LOCK")
}

/// The attempts of one request.
pub struct Attempts<'r> {
    rule: &'r NextUpstream,
    backend: &'r Backend,
    made: u32,
    /// When the first attempt started; read only on routes with a retry time limit.
    first: Option<tokio::time::Instant>,
}

impl<'r> Attempts<'r> {
    pub fn new(rule: &'r NextUpstream, backend: &'r Backend) -> Self {
        Self {
            rule,
            backend,
            made: 1,
            first: rule.timeout.map(|_| tokio::time::Instant::now()),
        }
    }

    /// After an answer: the next endpoint when its status is one to retry and the request can
    /// go out again (`kept`).
    pub fn after_status(
        &mut self,
        status: StatusCode,
        kept: bool,
        endpoint: &Endpoint,
    ) -> Option<&'r Endpoint> {
        if !kept || !self.rule.on_status(status) {
            return None;
        }
        self.next(endpoint)
    }

    /// After a failure: counts it against the endpoint's health, and returns the next endpoint
    /// when the failure is one to retry and the request can go again (never sent, or `kept`).
    pub fn after_failure(
        &mut self,
        failed: &Failed,
        stage: Option<Stage>,
        kept: bool,
        endpoint: &Endpoint,
    ) -> Option<&'r Endpoint> {
        // The client's own failures (a body too large or too slow) are neither the endpoint's
        // fault nor worth another attempt.
        if matches!(stage, Some(Stage::TooLarge | Stage::ClientIdle)) {
            return None;
        }
        endpoint.health.failed(health::now_ms());
        let bit = match &failed.error {
            // nginx counts a connect timeout as `timeout`, a refused connection as `error`.
            UpstreamError::Connect {
                timed_out: true, ..
            } => NextUpstream::ON_TIMEOUT,
            UpstreamError::Connect { .. } => NextUpstream::ON_ERROR,
            UpstreamError::Timeout { .. } => NextUpstream::ON_TIMEOUT,
            // A broken connection or an unreadable head: nginx's `error`, or `invalid_header`.
            UpstreamError::Protocol { .. } => {
                NextUpstream::ON_ERROR | NextUpstream::ON_INVALID_HEADER
            }
        };
        let unsent = failed.unsent.is_some();
        if self.rule.on & bit == 0 || !(unsent || kept) {
            return None;
        }
        self.next(endpoint)
    }

    /// Another endpoint, while tries and time are left.
    fn next(&mut self, failed: &Endpoint) -> Option<&'r Endpoint> {
        let limit = match self.rule.tries {
            0 => u32::try_from(self.backend.endpoints().len()).unwrap_or(u32::MAX),
            n => n,
        };
        if self.made >= limit || self.out_of_time() {
            return None;
        }
        let next = self.backend.pick_other(failed.addr)?;
        self.made += 1;
        Some(next)
    }

    fn out_of_time(&self) -> bool {
        match (self.rule.timeout, self.first) {
            (Some(limit), Some(first)) => first.elapsed() >= limit,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(n: u8) -> Backend {
        Backend::new(
            "ns/svc:80",
            (1..=n)
                .map(|i| format!("10.0.0.{i}:80").parse().expect("addr"))
                .collect(),
        )
    }

    fn connect() -> UpstreamError {
        UpstreamError::Connect {
            endpoint: "e".into(),
            backend: "b".into(),
            cause: "refused".into(),
            timed_out: false,
        }
    }

    fn timeout() -> UpstreamError {
        UpstreamError::Timeout {
            endpoint: "e".into(),
            backend: "b".into(),
            after: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn only_bodyless_repeatable_requests_to_several_endpoints_are_kept() {
        let rule = NextUpstream::default();
        let two = backend(2);
        assert!(keeps(&rule, &Method::GET, false, &two));
        assert!(!keeps(&rule, &Method::GET, true, &two), "a streamed body");
        assert!(!keeps(&rule, &Method::POST, false, &two), "not idempotent");
        assert!(
            !keeps(&rule, &Method::GET, false, &backend(1)),
            "nowhere else"
        );
        let lock = Method::from_bytes(b"LOCK").expect("method");
        assert!(!keeps(&rule, &lock, false, &two));
        let non_idempotent = NextUpstream {
            on: rule.on | NextUpstream::ON_NON_IDEMPOTENT,
            ..rule
        };
        assert!(keeps(&non_idempotent, &Method::POST, false, &two));
        let off = NextUpstream { on: 0, ..rule };
        assert!(!keeps(&off, &Method::GET, false, &two));
        let once = NextUpstream { tries: 1, ..rule };
        assert!(!keeps(&once, &Method::GET, false, &two));
    }

    #[test]
    fn failures_retry_by_condition_within_the_tries() {
        let rule = NextUpstream::default();
        let three = backend(3);
        let mut attempts = Attempts::new(&rule, &three);
        let first = &three.endpoints()[0];
        let second = attempts
            .after_failure(&connect().into(), None, true, first)
            .expect("error is retried");
        assert_ne!(second.addr, first.addr);
        let third = attempts
            .after_failure(&timeout().into(), None, true, second)
            .expect("timeout is retried");
        assert_ne!(third.addr, second.addr);
        assert!(
            attempts
                .after_failure(&connect().into(), None, true, third)
                .is_none(),
            "3 tries in all"
        );
    }

    #[test]
    fn what_cannot_be_resent_or_was_the_clients_fault_is_not_retried() {
        let rule = NextUpstream::default();
        let two = backend(2);
        let e = &two.endpoints()[0];
        let mut attempts = Attempts::new(&rule, &two);
        assert!(
            attempts
                .after_failure(&timeout().into(), None, false, e)
                .is_none(),
            "sent and not kept"
        );
        assert!(
            attempts
                .after_failure(&connect().into(), Some(Stage::ClientIdle), true, e)
                .is_none(),
            "the client stalled"
        );
        let only_timeout = NextUpstream {
            on: NextUpstream::ON_TIMEOUT,
            ..rule
        };
        let mut attempts = Attempts::new(&only_timeout, &two);
        assert!(
            attempts
                .after_failure(&connect().into(), None, true, e)
                .is_none(),
            "error is not listed"
        );
    }

    #[test]
    fn statuses_are_retried_only_when_listed() {
        let rule = NextUpstream::default();
        let two = backend(2);
        let e = &two.endpoints()[0];
        let mut attempts = Attempts::new(&rule, &two);
        assert!(
            attempts
                .after_status(StatusCode::BAD_GATEWAY, true, e)
                .is_none()
        );
        let on_502 = NextUpstream {
            on: rule.on | NextUpstream::status_bit(502).expect("a retried status"),
            ..rule
        };
        let mut attempts = Attempts::new(&on_502, &two);
        assert!(attempts.after_status(StatusCode::OK, true, e).is_none());
        let next = attempts
            .after_status(StatusCode::BAD_GATEWAY, true, e)
            .expect("502 listed");
        assert_ne!(next.addr, e.addr);
    }

    #[test]
    fn zero_tries_means_every_endpoint_once() {
        let rule = NextUpstream {
            tries: 0,
            ..NextUpstream::default()
        };
        let four = backend(4);
        let mut attempts = Attempts::new(&rule, &four);
        let mut at = &four.endpoints()[0];
        let mut retries = 0;
        while let Some(next) = attempts.after_failure(&connect().into(), None, true, at) {
            at = next;
            retries += 1;
        }
        assert_eq!(retries, 3);
    }
}

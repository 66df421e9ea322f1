//! Client certificates per request (ingress-nginx `auth-tls-*`), right after routing: what
//! the connection's handshake established (`Conn::tls`) is held against the route's rules.
//!
//! Owns, as nginx does: a required certificate that is missing or failed answers 400 (or a
//! redirect to `auth-tls-error-page`); an optional one that failed, too; a subject DN that
//! does not match `auth-tls-match-cn` answers 403; and the `ssl-client-verify`,
//! `ssl-client-subject-dn`, `ssl-client-issuer-dn` (and `ssl-client-cert`) request headers are
//! the proxy's, never the client's. Beyond nginx: a request for a host with such rules on a
//! connection negotiated for another server name (HTTP/2 connection reuse), or whose
//! certificate was judged under other trust (another Ingress's CA for the host, or the
//! route's CA before it changed), answers 421, so the check cannot be skipped by coalescing
//! or outlived by a kept-alive connection. It must not touch the handshake.

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::{Conn, InnerBody, RequestView, local};
use crate::route::Route;
use crate::tls::ClientTls;
use crate::tls::client::{ClientCert, Status, VerifyMode};

static VERIFY: HeaderName = HeaderName::from_static("ssl-client-verify");
static SUBJECT: HeaderName = HeaderName::from_static("ssl-client-subject-dn");
static ISSUER: HeaderName = HeaderName::from_static("ssl-client-issuer-dn");
static CERT: HeaderName = HeaderName::from_static("ssl-client-cert");

const MISDIRECTED: local::Failure = local::Failure::new(
    StatusCode::MISDIRECTED_REQUEST,
    local::GrpcCode::Unavailable,
    "misdirected request: open a new connection for this host",
);
const NO_CERTIFICATE: local::Failure = local::Failure::new(
    StatusCode::BAD_REQUEST,
    local::GrpcCode::Unauthenticated,
    "no required SSL certificate was sent",
);
const BAD_CERTIFICATE: local::Failure = local::Failure::new(
    StatusCode::BAD_REQUEST,
    local::GrpcCode::Unauthenticated,
    "the SSL certificate error",
);
const CN_REFUSED: local::Failure = local::Failure::new(
    StatusCode::FORBIDDEN,
    local::GrpcCode::PermissionDenied,
    "client certificate unauthorized",
);

/// The connection's verdict, `None` when no certificate was asked for (plain HTTP, or a
/// handshake for a name without rules).
fn verdict(conn: &Conn) -> Option<&ClientCert> {
    conn.tls.as_ref().and_then(|t| t.client.as_ref())
}

/// The refusal for this request, if the route's client certificate rules refuse it.
pub fn check(route: &Route, view: &RequestView, conn: &Conn) -> Option<Response<InnerBody>> {
    let rules = route.policy.client_tls.as_deref()?;
    let refuse = |failure| Some(refusal(rules, failure, view));
    if let Some(tls) = &conn.tls {
        // Another name's connection, or one whose certificate was judged under other trust
        // (another Ingress's CA on this host, or this route's CA before a rotation): the
        // client must open a connection whose handshake asks under this route's rules.
        let same_trust = tls
            .client_auth
            .as_ref()
            .is_some_and(|a| std::sync::Arc::ptr_eq(a, &rules.auth));
        if tls.sni.as_deref() != Some(view.host()) || !same_trust {
            return refuse(MISDIRECTED);
        }
    }
    match verdict(conn) {
        None if rules.mode == VerifyMode::On => return refuse(NO_CERTIFICATE),
        Some(cert) if !rules.mode.admits(cert) => {
            return refuse(match cert.status {
                Status::None => NO_CERTIFICATE,
                _ => BAD_CERTIFICATE,
            });
        }
        _ => {}
    }
    if let Some(cn) = &rules.match_cn {
        let subject = verdict(conn)
            .and_then(|c| c.subject_dn.as_ref())
            .and_then(|s| s.to_str().ok())
            .unwrap_or("");
        if !cn.is_match(subject) {
            return refuse(CN_REFUSED);
        }
    }
    None
}

fn refusal(rules: &ClientTls, failure: local::Failure, view: &RequestView) -> Response<InnerBody> {
    match (&rules.error_page, failure.status) {
        // nginx's `error_page 495 496 = <page>` covers certificate errors, not 421 or 403.
        (Some(page), StatusCode::BAD_REQUEST) => {
            local::redirect(StatusCode::FOUND, page.to_str().unwrap_or("/"))
        }
        _ => local::failure(failure, view.kind.grpc, &view.request_id),
    }
}

/// Sets the `ssl-client-*` request headers from the connection's verdict, replacing whatever
/// the client sent under those names.
pub fn headers(route: &Route, conn: &Conn, headers: &mut HeaderMap) {
    let Some(rules) = route.policy.client_tls.as_deref() else {
        return;
    };
    for name in [&VERIFY, &SUBJECT, &ISSUER, &CERT] {
        headers.remove(name);
    }
    let Some(cert) = verdict(conn) else {
        headers.insert(VERIFY.clone(), HeaderValue::from_static("NONE"));
        return;
    };
    headers.insert(VERIFY.clone(), cert.verify.clone());
    let set = [
        (&SUBJECT, cert.subject_dn.as_ref()),
        (&ISSUER, cert.issuer_dn.as_ref()),
        (
            &CERT,
            cert.escaped_pem.as_ref().filter(|_| rules.pass_certificate),
        ),
    ];
    for (name, value) in set {
        if let Some(v) = value {
            headers.insert(name.clone(), v.clone());
        }
    }
}

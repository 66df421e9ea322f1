//! Responses the proxy makes itself: errors and redirects.
//!
//! An error says what failed in general words (`upstream connect error`, `no route`) and names
//! the request id; what would help an attacker map the cluster (pod addresses, Service names,
//! OS errors) goes only to the log line with the same id. gRPC clients get the same as a
//! trailers-only gRPC status.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::InnerBody as ProxyBody;

/// Looked up on every gRPC response; a constant name skips parsing and validating a string.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// gRPC status codes the proxy itself produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// What failed, in the words a client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub grpc: GrpcCode,
    pub what: &'static str,
}

impl Failure {
    pub const fn new(status: StatusCode, grpc: GrpcCode, what: &'static str) -> Self {
        Self { status, grpc, what }
    }
}

pub const NO_ROUTE: Failure =
    Failure::new(StatusCode::NOT_FOUND, GrpcCode::Unimplemented, "no route");
pub const NO_ENDPOINTS: Failure = Failure::new(
    StatusCode::SERVICE_UNAVAILABLE,
    GrpcCode::Unavailable,
    "no healthy upstream",
);
pub const CONNECT: Failure = Failure::new(
    StatusCode::BAD_GATEWAY,
    GrpcCode::Unavailable,
    "upstream connect error",
);
pub const UPSTREAM: Failure = Failure::new(
    StatusCode::BAD_GATEWAY,
    GrpcCode::Unavailable,
    "upstream protocol error",
);
pub const TIMEOUT: Failure = Failure::new(
    StatusCode::GATEWAY_TIMEOUT,
    GrpcCode::DeadlineExceeded,
    "upstream timed out",
);
pub const FORBIDDEN: Failure = Failure::new(
    StatusCode::FORBIDDEN,
    GrpcCode::PermissionDenied,
    "forbidden",
);
pub const UNAUTHORIZED: Failure = Failure::new(
    StatusCode::UNAUTHORIZED,
    GrpcCode::Unauthenticated,
    "authorization required",
);
pub const BODY_TOO_LARGE: Failure = Failure::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    GrpcCode::ResourceExhausted,
    "request body too large",
);
pub const BODY_TIMEOUT: Failure = Failure::new(
    StatusCode::REQUEST_TIMEOUT,
    GrpcCode::DeadlineExceeded,
    "client body timed out",
);

/// A bad request, with the reason (the reason is about the client's own bytes, so it may be
/// told).
pub fn bad_request(
    why: &dyn std::fmt::Display,
    grpc: bool,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let what = format!("bad request: {why}");
    if grpc {
        grpc_error(GrpcCode::InvalidArgument, &what, request_id)
    } else {
        text(StatusCode::BAD_REQUEST, &what, request_id)
    }
}

/// `failure` as this client understands it: a gRPC status for gRPC clients, plain text else.
pub fn failure(failure: Failure, grpc: bool, request_id: &HeaderValue) -> Response<ProxyBody> {
    if grpc {
        grpc_error(failure.grpc, failure.what, request_id)
    } else {
        text(failure.status, failure.what, request_id)
    }
}

fn text(status: StatusCode, what: &str, request_id: &HeaderValue) -> Response<ProxyBody> {
    let id = request_id.to_str().unwrap_or("-");
    let body = format!("{what}\nrequest id: {id}\n");
    plain(status, body)
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An empty 204 (a CORS preflight's answer; the caller adds the CORS headers).
pub fn no_content() -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// A redirect. HTTPS upgrades use 308, which keeps the method and body (301/302 may turn a
/// POST into a GET).
pub fn redirect(status: StatusCode, location: &str) -> Response<ProxyBody> {
    match HeaderValue::try_from(location) {
        Ok(value) => {
            let mut resp = plain(status, format!("redirecting to {location}\n"));
            resp.headers_mut().insert(LOCATION, value);
            resp
        }
        Err(_) => plain(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected\n".into(),
        ),
    }
}

/// A trailers-only gRPC error: HTTP 200, `content-type: application/grpc`, status and message
/// in the headers, no body. gRPC clients read this as the call's status.
pub fn grpc_error(code: GrpcCode, what: &str, request_id: &HeaderValue) -> Response<ProxyBody> {
    let id = request_id.to_str().unwrap_or("-");
    let message = format!("{what} (request id {id})");
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.extend(crate::body::grpc_status_trailers(code as u32, &message));
    resp
}

//! Responses the proxy makes itself: errors and redirects, short plain text naming the cause.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::InnerBody as ProxyBody;

/// Looked up on every gRPC response; a constant name skips parsing and validating a string.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

pub fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut body = message;
    body.push('\n');
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A redirect. HTTPS upgrades use 308, which keeps the method and body (301/302 may turn a
/// POST into a GET).
pub fn redirect(status: StatusCode, location: &str) -> Response<ProxyBody> {
    match HeaderValue::try_from(location) {
        Ok(value) => {
            let mut resp = text(status, format!("redirecting to {location}"));
            resp.headers_mut().insert(LOCATION, value);
            resp
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected".into(),
        ),
    }
}

/// gRPC status codes the proxy itself produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    DeadlineExceeded = 4,
    Unimplemented = 12,
    Unavailable = 14,
}

/// A trailers-only gRPC error: HTTP 200, `content-type: application/grpc`, status and message
/// in the headers, no body. gRPC clients read this as the call's status.
pub fn grpc_error(code: GrpcCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.extend(super::body::grpc_status_trailers(code as u32, message));
    resp
}

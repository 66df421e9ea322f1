//! Responses the proxy makes itself: errors and redirects, short plain text naming the cause.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::ProxyBody;

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

/// 308 keeps the method and body, unlike 301/302, so a POST is not silently turned into a GET.
pub fn redirect(location: &str) -> Response<ProxyBody> {
    match HeaderValue::try_from(location) {
        Ok(value) => {
            let mut resp = text(
                StatusCode::PERMANENT_REDIRECT,
                format!("redirecting to {location}"),
            );
            resp.headers_mut().insert(LOCATION, value);
            resp
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected".into(),
        ),
    }
}

//! An HTTP echo backend (HTTP/1.1 and h2c prior knowledge).
//!
//! Every response is a JSON description of the request it answered, so a test or a user can see
//! exactly what the proxy forwarded: which backend answered, method, path, query, HTTP version and
//! headers. Two query parameters steer it, for exercising timeouts and error handling:
//! `delay_ms=N` waits before answering and `status=N` answers with that status. A request body is
//! counted (streamed, never kept) and its byte count reported as `body_bytes`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves echo responses on `listener` until the task is dropped. `name` is reported in every
/// response (`"backend"`) and in the `x-backend` header.
pub async fn serve(listener: TcpListener, name: impl Into<String>) {
    let name: Arc<str> = name.into().into();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, name.clone(), peer));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |key: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.parse::<u64>().ok()).flatten()
        })
    };
    if let Some(ms) = param("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = param("status")
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);

    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let entry = headers
            .entry(k.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = entry {
            list.push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
        }
    }
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len();
        }
    }
    let doc = serde_json::json!({
        "backend": &*name,
        "peer": peer.to_string(),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": query,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

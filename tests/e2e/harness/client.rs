//! A tiny HTTP client on hyper's `client::conn`: HTTP/1.1 or HTTP/2 over any stream (plain TCP
//! for the plain listener and h2c, a rustls stream for the TLS listener).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// Upper bound for one exchange; nothing in these tests should take this long.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

/// A request, independent of the HTTP version that will carry it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    /// `http` or `https`: the `:scheme` sent over HTTP/2.
    pub scheme: &'static str,
    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn get(host: &str, path_and_query: &str) -> Self {
        Self {
            method: Method::GET,
            scheme: "http",
            host: host.to_owned(),
            path_and_query: path_and_query.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    pub fn scheme(mut self, scheme: &'static str) -> Self {
        self.scheme = scheme;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn to_http(&self, version: Version) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(self.method.clone());
        builder = if version == Version::HTTP_2 {
            builder.version(Version::HTTP_2).uri(format!(
                "{}://{}{}",
                self.scheme, self.host, self.path_and_query
            ))
        } else {
            builder
                .uri(self.path_and_query.as_str())
                .header(http::header::HOST, self.host.as_str())
        };
        let mut req = builder
            .body(Full::new(self.body.clone()))
            .unwrap_or_else(|e| panic!("build request {self:?}: {e}"));
        for (name, value) in &self.headers {
            req.headers_mut().append(
                HeaderName::try_from(name.as_str()).expect("valid header name"),
                HeaderValue::try_from(value.as_str()).expect("valid header value"),
            );
        }
        req
    }
}

/// A response read whole.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo backend's JSON description of the request it received, if this came from one.
    pub fn echo(&self) -> Option<Value> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v.get("backend").is_some().then_some(v)
    }

    /// The echo JSON, or a panic saying what came back instead.
    pub fn expect_echo(&self) -> Value {
        self.echo().unwrap_or_else(|| {
            panic!(
                "expected an answer from an echo backend, got {}",
                self.summary()
            )
        })
    }

    /// Which echo backend answered, if one did.
    pub fn backend(&self) -> Option<String> {
        self.echo()
            .and_then(|v| v["backend"].as_str().map(str::to_owned))
    }

    /// Every value the backend received for request header `name` (lower case).
    pub fn seen(&self, name: &str) -> Vec<String> {
        let echo = self.expect_echo();
        echo["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// One line for failure messages: status, version, some headers and the start of the body.
    pub fn summary(&self) -> String {
        let body = self.text();
        let body: String = body.chars().take(300).collect();
        format!(
            "{} {:?} content-type={:?} location={:?} body={body:?}",
            self.status,
            self.version,
            self.header("content-type"),
            self.header("location"),
        )
    }
}

/// One client connection, HTTP/1.1 or HTTP/2.
pub enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// HTTP/1.1 over `io`.
    pub async fn h1<S>(io: S) -> Result<Self, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn::H1(send))
    }

    /// HTTP/2 over `io` (prior knowledge on a plain stream, or after ALPN `h2`).
    pub async fn h2<S>(io: S) -> Result<Self, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn::H2(send))
    }

    /// Sends `req` and reads the whole response, within [`EXCHANGE_LIMIT`].
    pub async fn send(&mut self, req: &Req) -> Result<Resp, String> {
        let exchange = async {
            let resp = match self {
                Conn::H1(send) => {
                    send.ready()
                        .await
                        .map_err(|e| format!("connection not ready: {e}"))?;
                    send.send_request(req.to_http(Version::HTTP_11)).await
                }
                Conn::H2(send) => {
                    send.ready()
                        .await
                        .map_err(|e| format!("connection not ready: {e}"))?;
                    send.send_request(req.to_http(Version::HTTP_2)).await
                }
            }
            .map_err(|e| {
                format!(
                    "send {} {}{}: {e}",
                    req.method, req.host, req.path_and_query
                )
            })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("read response body: {e}"))?
                .to_bytes();
            Ok(Resp {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(EXCHANGE_LIMIT, exchange)
            .await
            .map_err(|_| format!("no response within {EXCHANGE_LIMIT:?} for {req:?}"))?
    }
}

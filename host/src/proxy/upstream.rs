//! Upstream connections: an HTTP/1.1 keep-alive pool per endpoint, and the errors a client
//! sees when an upstream fails (502 for connect and protocol failures, 504 for timeouts).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::route::Endpoint;

/// The shared upstream client. Pools are keyed by endpoint, so keep-alive connections are
/// reused across routes and across configuration generations.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {endpoint} of {backend}: {cause}")]
    Connect {
        endpoint: String,
        backend: String,
        cause: String,
    },
    #[error("upstream {endpoint} of {backend} failed: {cause}")]
    Protocol {
        endpoint: String,
        backend: String,
        cause: String,
    },
    #[error("upstream {endpoint} of {backend} timed out after {after:?} waiting for a response")]
    Timeout {
        endpoint: String,
        backend: String,
        after: Duration,
    },
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { client }
    }

    /// Sends `req` and waits at most `read_timeout` for the response head.
    pub async fn send(
        &self,
        req: Request<Incoming>,
        endpoint: &Endpoint,
        backend: &str,
        read_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Formatted only on failure: the success path allocates nothing here.
        let endpoint = || endpoint.addr.to_string();
        match tokio::time::timeout(read_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let cause = root_cause(&e);
                Err(if e.is_connect() {
                    UpstreamError::Connect {
                        endpoint: endpoint(),
                        backend: backend.to_owned(),
                        cause,
                    }
                } else {
                    UpstreamError::Protocol {
                        endpoint: endpoint(),
                        backend: backend.to_owned(),
                        cause,
                    }
                })
            }
            Err(_) => Err(UpstreamError::Timeout {
                endpoint: endpoint(),
                backend: backend.to_owned(),
                after: read_timeout,
            }),
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

//! gRPC helpers: the in-test Greeter (`wasmgress_examples::greeter`) with its Service and
//! EndpointSlice, tonic channels to the binary's TLS listener that verify against the test CA
//! with a chosen SNI and `:authority`, and a bare HTTP/2 transport for calls whose deadline only
//! the proxy may enforce.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
use wasmgress_examples::greeter::proto::greeter_client::GreeterClient;
use wasmgress_examples::greeter::{self, Greeter, Observed};

use super::Wasmgress;
use super::certs::{self, BOTH_VERSIONS, TestCa};
use super::manifests::{self, Endpoint as SliceEndpoint, NS, Port, ServicePort};

/// What `grpcurl -insecure -authority demo.kubesre.com 127.0.0.1:443 list` prints in the seed.
pub const SEED_SERVICES: [&str; 2] = [
    "grpc.reflection.v1alpha.ServerReflection",
    "helloworld.Greeter",
];

/// The Service port of the seed's `grpc-service`.
pub const SEED_PORT: u16 = 50051;
/// Messages up to this size pass the tonic clients made here (the Greeter allows the same).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Upper bound for a channel to the binary to connect.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// The Greeter with reflection on 127.0.0.1 and an ephemeral port (h2c); stopped when dropped.
pub struct GreeterBackend {
    /// A clone of the served Greeter: read `greeter.observed` to see what the server saw.
    pub greeter: Greeter,
    pub addr: SocketAddr,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Drop for GreeterBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GreeterBackend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Greeter on 127.0.0.1:0");
        let addr = listener.local_addr().expect("Greeter local address");
        let greeter = Greeter::default();
        let task = tokio::spawn(greeter::serve(listener, greeter.clone()));
        Self {
            greeter,
            addr,
            task,
        }
    }

    pub fn observed(&self) -> &Observed {
        &self.greeter.observed
    }

    /// Service `service` (port [`SEED_PORT`], targetPort this Greeter's port, `appProtocol` if
    /// given) and an EndpointSlice listing this Greeter as ready, in [`NS`].
    pub fn objects(&self, service: &str, app_protocol: Option<&str>) -> Vec<Value> {
        greeter_objects(
            service,
            self.addr.port(),
            &[manifests::ready(&self.addr.ip().to_string())],
            app_protocol,
        )
    }
}

/// A Service like the seed's `grpc-service` (port [`SEED_PORT`], no port name) whose
/// targetPort is `target_port`, with `appProtocol` if given, and an EndpointSlice of
/// `endpoints` on that port.
pub fn greeter_objects(
    service: &str,
    target_port: u16,
    endpoints: &[SliceEndpoint<'_>],
    app_protocol: Option<&str>,
) -> Vec<Value> {
    let mut svc = manifests::service(
        NS,
        service,
        &[ServicePort {
            name: None,
            port: SEED_PORT,
            target: Port::Number(target_port),
        }],
    );
    if let Some(p) = app_protocol {
        svc["spec"]["ports"][0]["appProtocol"] = json!(p);
    }
    vec![
        svc,
        manifests::endpoint_slice(
            NS,
            service,
            &format!("{service}-1"),
            &[(None, target_port)],
            endpoints,
        ),
    ]
}

/// Waits until the server has counted at least `at_least` cancelled calls, at most `within`;
/// `Err` carries the count it saw last.
pub async fn wait_cancelled(
    observed: &Observed,
    at_least: u64,
    within: Duration,
) -> Result<(), u64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Registered before the check, so a change between the check and the wait wakes it.
        let changed = observed.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let seen = observed.cancelled.load(Ordering::SeqCst);
        if seen >= at_least {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            let seen = observed.cancelled.load(Ordering::SeqCst);
            return if seen >= at_least { Ok(()) } else { Err(seen) };
        }
    }
}

/// A tonic channel (one HTTP/2 connection) to the binary's TLS listener: TLS with SNI `sni`,
/// verified against `ca` only, ALPN h2; requests carry `:authority` `authority`, as
/// `grpcurl -authority` sends it.
pub async fn channel(gw: &Wasmgress, ca: &TestCa, sni: &str, authority: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name(sni);
    let endpoint = Endpoint::from_shared(format!("https://{}", gw.https))
        .expect("endpoint URI")
        .origin(
            format!("https://{authority}")
                .parse()
                .expect("authority URI"),
        )
        .tls_config(tls)
        .expect("tonic TLS configuration")
        .connect_timeout(CONNECT_LIMIT);
    tokio::time::timeout(CONNECT_LIMIT, endpoint.connect())
        .await
        .unwrap_or_else(|_| panic!("gRPC channel to {} took over {CONNECT_LIMIT:?}", gw.https))
        .unwrap_or_else(|e| {
            panic!(
                "gRPC channel to {} (SNI {sni}, verified against the test CA): {e:?}",
                gw.https
            )
        })
}

/// A Greeter client on `channel` that sends and accepts messages up to [`MAX_MESSAGE`].
pub fn greeter_client<T>(channel: T) -> GreeterClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    GreeterClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A bare HTTP/2 connection over TLS (SNI `sni`, verified against the test CA) used as a tonic
/// transport. Unlike a tonic `Channel`, it enforces no `grpc-timeout` itself, so a call with a
/// deadline shows what the proxy answers when it expires.
#[derive(Clone)]
pub struct BareH2 {
    send: http2::SendRequest<tonic::body::Body>,
    authority: Authority,
}

impl BareH2 {
    pub async fn connect(gw: &Wasmgress, ca: &TestCa, sni: &str, authority: &str) -> Self {
        let config = certs::client_config(ca.roots(), &[b"h2"], BOTH_VERSIONS);
        let tls = gw
            .tls(sni, config)
            .await
            .unwrap_or_else(|e| panic!("TLS to {} with SNI {sni}: {e}", gw.https));
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap_or_else(|e| panic!("HTTP/2 handshake with {}: {e}", gw.https));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self {
            send,
            authority: authority.parse().expect("authority"),
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for BareH2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // tonic sends only the path; HTTP/2 needs `:scheme` and `:authority` too.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(self.authority.clone());
        *req.uri_mut() = Uri::from_parts(parts).expect("request URI");
        Box::pin(self.send.send_request(req))
    }
}

/// Reflection `ListServices` (what `grpcurl list` asks), sorted.
pub async fn list_services(channel: Channel) -> Result<Vec<String>, Status> {
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([ask]))
        .await?
        .into_inner();
    let answer = answers
        .message()
        .await?
        .expect("the reflection stream ended without an answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => panic!("reflection answered ListServices with {other:?}"),
    }
}

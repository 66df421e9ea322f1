//! gRPC end to end (issue #4), the seed article's first half: its Greeter (with v1alpha server
//! reflection) behind its Ingress (`nginx.ingress.kubernetes.io/backend-protocol: "GRPC"`, a
//! `kubernetes.io/tls` Secret for `demo.kubesre.com` signed by a test CA), reached on the
//! binary's TLS listener with SNI and `:authority` `demo.kubesre.com` by a real tonic client
//! that verifies the certificate against that CA.
//!
//! Covered: reflection lists exactly the two services `grpcurl list` prints in the seed; unary;
//! server streaming of 1,000 messages; client streaming; bidi ping-pong of 1,000 round trips; a
//! 16 MiB message each way; 200 concurrent calls on one connection; custom request/response
//! metadata (ASCII and `-bin`) and trailing metadata passed through; a deadline shorter than the
//! backend's delay gives DEADLINE_EXCEEDED; a cancelled call is seen by the backend within 1 s;
//! backend down (refused connection, no ready endpoint) gives UNAVAILABLE; unknown host or path
//! gives UNIMPLEMENTED, each proxy error a trailers-only gRPC answer; a bidi stream open during a
//! config swap keeps exchanging messages after it; gRPC and REST on one host; and gRPC without
//! the annotation when the Service port declares `appProtocol: kubernetes.io/h2c`.

use std::future::Future;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use wasmgress_examples::greeter::proto::greeter_client::GreeterClient;
use wasmgress_examples::greeter::proto::{HelloReply, HelloRequest};

use crate::harness::backend::closed_port;
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::grpc::{
    BareH2, GreeterBackend, SEED_PORT, SEED_SERVICES, channel, greeter_client, greeter_objects,
    list_services, wait_cancelled,
};
use crate::harness::manifests::{PathRule, not_ready, ready};
use crate::harness::process::RELOAD_LIMIT;
use crate::harness::{Backend, Conn, Ingress, Manifests, Req, Wasmgress, prefix};

/// The seed's host, its TLS Secret and its annotation.
const HOST: &str = "demo.kubesre.com";
const SECRET: &str = "kubesre-tls";
const BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";
/// Upper bound for any one call or step; nothing here should come close.
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// How a route is made a gRPC route.
#[derive(Clone, Copy, Debug)]
enum Wiring {
    /// The seed's way: `backend-protocol: "GRPC"` on the Ingress.
    Annotation,
    /// No annotation; the Service port declares `appProtocol: kubernetes.io/h2c`.
    AppProtocol,
}

impl Wiring {
    fn app_protocol(self) -> Option<&'static str> {
        match self {
            Wiring::Annotation => None,
            Wiring::AppProtocol => Some("kubernetes.io/h2c"),
        }
    }
}

/// The seed's Ingress `name` for [`HOST`] with its TLS section, routing `paths`.
fn grpc_ingress(name: &str, wiring: Wiring, paths: &[PathRule]) -> Value {
    let ingress = Ingress::new(name);
    let ingress = match wiring {
        Wiring::Annotation => ingress.annotation(BACKEND_PROTOCOL, "GRPC"),
        Wiring::AppProtocol => ingress,
    };
    ingress.tls(&[HOST], SECRET).rule(Some(HOST), paths).build()
}

/// A path of the seed's Ingress to Service `service` port 50051.
fn to_greeter(path: &str, service: &str) -> PathRule {
    prefix(path, service).port(SEED_PORT)
}

/// The seed's objects for `greeter`: Service `grpc-service`, its EndpointSlice, and Ingress
/// `grpc-ingress` routing all of [`HOST`] to it.
fn seed_objects(greeter: &GreeterBackend, wiring: Wiring) -> Vec<Value> {
    let mut objects = greeter.objects("grpc-service", wiring.app_protocol());
    objects.push(grpc_ingress(
        "grpc-ingress",
        wiring,
        &[to_greeter("/", "grpc-service")],
    ));
    objects
}

/// A running binary serving `objects` plus the seed's TLS Secret, and the CA that signed it.
struct Fixture {
    ca: TestCa,
    secret: Value,
    manifests: Manifests,
    gw: Wasmgress,
}

impl Fixture {
    async fn start(ca: TestCa, objects: Vec<Value>) -> Self {
        Self::start_with(ca, objects, &[]).await
    }

    /// [`Fixture::start`] with extra `run` flags.
    async fn start_with(ca: TestCa, objects: Vec<Value>, args: &[&str]) -> Self {
        let secret = ca.leaf(&[HOST]).secret(SECRET, false);
        let manifests = Manifests::new();
        manifests.write("seed.yaml", &[objects, vec![secret.clone()]].concat());
        let gw = Wasmgress::start(&manifests, args).await;
        Self {
            ca,
            secret,
            manifests,
            gw,
        }
    }

    /// Replaces the manifests with `objects` plus the same TLS Secret.
    fn rewrite(&self, mut objects: Vec<Value>) {
        objects.push(self.secret.clone());
        self.manifests.write("seed.yaml", &objects);
    }

    /// The seed as written, for `greeter`.
    async fn seed(greeter: &GreeterBackend) -> Self {
        Self::start(TestCa::new(), seed_objects(greeter, Wiring::Annotation)).await
    }

    /// One connection with SNI and `:authority` [`HOST`].
    async fn channel(&self) -> Channel {
        self.channel_for(HOST).await
    }

    /// One connection with SNI [`HOST`] and `:authority` `authority`.
    async fn channel_for(&self, authority: &str) -> Channel {
        channel(&self.gw, &self.ca, HOST, authority).await
    }

    async fn greeter(&self) -> GreeterClient<Channel> {
        greeter_client(self.channel().await)
    }

    /// `GET https://demo.kubesre.com{path}` over a fresh TLS connection with ALPN h2.
    async fn https_get(&self, path: &str) -> crate::harness::Resp {
        let config = certs::client_config(self.ca.roots(), &[b"h2"], BOTH_VERSIONS);
        let tls = self
            .gw
            .tls(HOST, config)
            .await
            .unwrap_or_else(|e| panic!("TLS to {HOST}: {e}"));
        let mut conn = Conn::h2(tls).await.expect("HTTP/2 over TLS");
        conn.send(&Req::get(HOST, path).scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("GET https://{HOST}{path}: {e}"))
    }
}

/// `fut`, or a panic naming `what` if it takes longer than [`STEP_LIMIT`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP_LIMIT:?}"))
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.to_owned(),
        ..Default::default()
    }
}

/// The call's answer, or a panic naming `what` and the status.
fn ok<T>(what: &str, result: Result<tonic::Response<T>, Status>) -> tonic::Response<T> {
    result.unwrap_or_else(|s| panic!("{what}: failed with {s:?}"))
}

/// The status of a call the proxy must have refused itself: `code`, as a trailers-only gRPC
/// answer (`content-type: application/grpc` among the status' headers, not an HTTP error page
/// that tonic would also map to a status) with a `grpc-message` saying why.
fn proxy_error<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) -> Status {
    let status = match result {
        Ok(answer) => panic!("{what}: expected {code:?}, the call succeeded: {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert_eq!(
        status
            .metadata()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/grpc"),
        "{what}: expected a trailers-only gRPC answer: {status:?}"
    );
    assert!(
        !status.message().is_empty(),
        "{what}: the grpc-message should say why: {status:?}"
    );
    status
}

/// Sends `ping-N` for each N in `range` on an open Chat call and awaits each reply before the
/// next; the Greeter numbers replies per call, so `#N` proves the same call continues.
async fn ping_pong(
    tx: &mpsc::Sender<HelloRequest>,
    inbound: &mut Streaming<HelloReply>,
    range: RangeInclusive<u32>,
    what: &str,
) {
    for n in range {
        tx.send(hello(&format!("ping-{n}")))
            .await
            .unwrap_or_else(|_| panic!("{what}: the request stream closed before ping {n}"));
        let reply = bounded(&format!("{what}: reply to ping {n}"), inbound.message()).await;
        match reply {
            Ok(Some(r)) => assert_eq!(
                r.message,
                format!("Hello ping-{n} #{n}"),
                "{what}: reply to ping {n}"
            ),
            Ok(None) => panic!("{what}: the call ended before the reply to ping {n}"),
            Err(s) => panic!("{what}: reply to ping {n}: {s:?}"),
        }
    }
}

/// The seed's check: `grpcurl -insecure -authority demo.kubesre.com 127.0.0.1:443 list` prints
/// exactly the reflection service and the Greeter.
#[tokio::test]
async fn reflection_lists_exactly_the_seeds_two_services() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let names = bounded("reflection list", list_services(f.channel().await))
        .await
        .unwrap_or_else(|s| panic!("reflection ListServices through the proxy: {s:?}"));
    assert_eq!(names, SEED_SERVICES, "services listed through the proxy");
}

#[tokio::test]
async fn unary_call() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let mut client = f.greeter().await;
    let reply = ok(
        "SayHello",
        bounded("SayHello", client.say_hello(hello("wasmgress"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello wasmgress");
}

#[tokio::test]
async fn server_streaming_of_1000_messages() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let mut client = f.greeter().await;
    let request = HelloRequest {
        count: 1000,
        ..hello("stream")
    };
    let mut stream = ok(
        "SayHelloStream",
        bounded("SayHelloStream", client.say_hello_stream(request)).await,
    )
    .into_inner();
    let received = bounded("1,000 streamed replies", async {
        let mut n = 0u32;
        loop {
            match stream.message().await {
                Ok(Some(reply)) => {
                    n += 1;
                    assert_eq!(reply.message, format!("Hello stream #{n}"), "reply {n}");
                }
                // A clean end: the `grpc-status: 0` trailer came through.
                Ok(None) => return n,
                Err(s) => panic!("SayHelloStream failed after {n} replies: {s:?}"),
            }
        }
    })
    .await;
    assert_eq!(received, 1000, "replies received");
}

#[tokio::test]
async fn client_streaming() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let mut client = f.greeter().await;
    let requests: Vec<HelloRequest> = (0..1000)
        .map(|i| HelloRequest {
            payload: vec![i as u8; 100],
            ..hello(&format!("c{i}"))
        })
        .collect();
    let reply = ok(
        "CollectHellos",
        bounded(
            "CollectHellos",
            client.collect_hellos(tokio_stream::iter(requests)),
        )
        .await,
    );
    assert_eq!(
        reply.get_ref().message,
        "received 1000 hellos, 100000 payload bytes"
    );
}

#[tokio::test]
async fn bidi_ping_pong_of_1000_round_trips() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let mut client = f.greeter().await;
    let (tx, rx) = mpsc::channel(1);
    let mut inbound = ok(
        "Chat",
        bounded("Chat", client.chat(ReceiverStream::new(rx))).await,
    )
    .into_inner();
    ping_pong(&tx, &mut inbound, 1..=1000, "Chat").await;
    drop(tx);
    match bounded("end of Chat", inbound.message()).await {
        Ok(None) => {}
        other => panic!("Chat should end cleanly once the client is done: {other:?}"),
    }
}

/// A 16 MiB payload goes up in the request and comes back in the reply, byte for byte.
#[tokio::test]
async fn sixteen_mib_message_each_way() {
    let greeter = GreeterBackend::start().await;
    // A request stream counts against the body size limit as nginx counts it (1m by default).
    let objects = seed_objects(&greeter, Wiring::Annotation);
    let f = Fixture::start_with(TestCa::new(), objects, &["--proxy-body-size", "32m"]).await;
    let mut client = f.greeter().await;
    let payload: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let request = HelloRequest {
        payload: payload.clone(),
        ..hello("big")
    };
    let reply = ok(
        "SayHello with 16 MiB",
        bounded("SayHello with 16 MiB", client.say_hello(request)).await,
    )
    .into_inner();
    assert_eq!(reply.message, "Hello big");
    assert_eq!(reply.payload.len(), payload.len(), "reply payload length");
    assert!(
        reply.payload == payload,
        "the reply payload differs from what was sent"
    );
}

/// One connection (one tonic `Channel`), 200 calls in flight at once, each answered with its
/// own reply.
#[tokio::test]
async fn two_hundred_concurrent_calls_on_one_connection() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let client = f.greeter().await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                // The delay keeps the calls in flight together.
                let request = HelloRequest {
                    delay_ms: 200,
                    ..hello(&format!("caller-{i}"))
                };
                client.say_hello(request).await
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let result = bounded(&format!("call {i}"), call)
            .await
            .expect("call task");
        match result {
            Ok(reply) if reply.get_ref().message == format!("Hello caller-{i}") => {}
            Ok(reply) => failures.push(format!("call {i}: wrong reply {:?}", reply.get_ref())),
            Err(s) => failures.push(format!("call {i}: {s:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 concurrent calls failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Many concurrent calls share few upstream connections: more than one connection carries
/// 250 calls in flight at once (a connection takes at most 100), and no more than the cap of 8
/// are opened. The Greeter here counts the connections it accepts.
#[tokio::test]
async fn concurrent_calls_spread_over_a_few_upstream_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a Greeter");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Result<tokio::net::TcpStream, std::io::Error>>(16);
    let counter = accepted.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            if tx.send(Ok(stream)).await.is_err() {
                return;
            }
        }
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                wasmgress_examples::greeter::proto::greeter_server::GreeterServer::new(
                    wasmgress_examples::greeter::Greeter::default(),
                ),
            )
            .serve_with_incoming(ReceiverStream::new(rx)),
    );
    let mut objects = crate::harness::grpc::greeter_objects(
        "grpc-service",
        addr.port(),
        &[ready("127.0.0.1")],
        None,
    );
    objects.push(grpc_ingress(
        "grpc-ingress",
        Wiring::Annotation,
        &[to_greeter("/", "grpc-service")],
    ));
    let f = Fixture::start(TestCa::new(), objects).await;
    let client = f.greeter().await;
    let calls: Vec<_> = (0..250)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = HelloRequest {
                    delay_ms: 500,
                    ..hello(&format!("caller-{i}"))
                };
                client.say_hello(request).await
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = bounded(&format!("call {i}"), call)
            .await
            .expect("call task");
        assert!(reply.is_ok(), "call {i}: {reply:?}");
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&opened),
        "250 concurrent calls should spread over 2 to 8 upstream connections, used {opened}"
    );
    acceptor.abort();
    server.abort();
}

/// Custom request metadata (ASCII and `-bin`) reaches the backend, which echoes it as response
/// metadata; on the `fail` call it comes back with the status as trailing metadata.
#[tokio::test]
async fn custom_and_trailing_metadata_pass_through() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let mut client = f.greeter().await;
    let binary: &[u8] = &[0x00, 0xff, 0x10, 0x80, b'\n', b'%'];
    let with_metadata = |name: &str| {
        let mut request = tonic::Request::new(hello(name));
        let metadata = request.metadata_mut();
        metadata.insert(
            "x-request-tag",
            AsciiMetadataValue::from_static("wasmgress-e2e"),
        );
        metadata.insert_bin("x-trace-bin", BinaryMetadataValue::from_bytes(binary));
        request
    };
    let check = |what: &str, metadata: &tonic::metadata::MetadataMap| {
        assert_eq!(
            metadata.get("x-request-tag").and_then(|v| v.to_str().ok()),
            Some("wasmgress-e2e"),
            "{what}: ASCII metadata: {metadata:?}"
        );
        let bin = metadata
            .get_bin("x-trace-bin")
            .unwrap_or_else(|| panic!("{what}: no x-trace-bin: {metadata:?}"))
            .to_bytes()
            .unwrap_or_else(|e| panic!("{what}: x-trace-bin is not valid base64: {e}"));
        assert_eq!(&bin[..], binary, "{what}: binary metadata");
    };

    let reply = ok(
        "SayHello with metadata",
        bounded("SayHello", client.say_hello(with_metadata("meta"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello meta");
    check("response metadata", reply.metadata());

    let status = match bounded("SayHello fail", client.say_hello(with_metadata("fail"))).await {
        Ok(reply) => panic!("the `fail` call succeeded: {reply:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "failing as asked", "{status:?}");
    check("trailing metadata", status.metadata());
}

/// A call whose `grpc-timeout` is shorter than the backend's delay ends with the proxy's
/// DEADLINE_EXCEEDED. The client is a tonic Greeter client on a bare HTTP/2 connection, which
/// sends `grpc-timeout` but does not enforce it (a tonic `Channel` would cancel the call itself
/// first), so the status seen is the one the proxy sent.
#[tokio::test]
async fn deadline_shorter_than_the_backend_delay_is_deadline_exceeded() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let mut client = greeter_client(BareH2::connect(&f.gw, &f.ca, HOST, HOST).await);

    // The transport works: a call without deadline succeeds.
    let reply = ok(
        "SayHello without deadline",
        bounded("SayHello", client.say_hello(hello("quick"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello quick");

    let mut request = tonic::Request::new(HelloRequest {
        delay_ms: 5000,
        ..hello("slow")
    });
    request.set_timeout(Duration::from_millis(300));
    let result = bounded("SayHello with a 300 ms deadline", client.say_hello(request)).await;
    proxy_error(
        "SayHello delayed 5 s with grpc-timeout 300m",
        result,
        Code::DeadlineExceeded,
    );
}

/// Dropping a server-streaming call mid-stream (RST_STREAM, the connection stays open) reaches
/// the backend: its stream sees the client gone within 1 s.
#[tokio::test]
async fn cancelled_call_is_seen_by_the_backend_within_1s() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::seed(&greeter).await;
    let channel = f.channel().await;
    let mut client = greeter_client(channel.clone());
    let request = HelloRequest {
        count: 1000,
        delay_ms: 20,
        ..hello("cancel")
    };
    let mut stream = ok(
        "SayHelloStream",
        bounded("SayHelloStream", client.say_hello_stream(request)).await,
    )
    .into_inner();
    for n in 1..=3 {
        match bounded("streamed reply", stream.message()).await {
            Ok(Some(reply)) => assert_eq!(reply.message, format!("Hello cancel #{n}")),
            other => panic!("reply {n} of the stream to cancel: {other:?}"),
        }
    }
    let before = greeter
        .observed()
        .cancelled
        .load(std::sync::atomic::Ordering::SeqCst);
    drop(stream);
    if let Err(seen) = wait_cancelled(greeter.observed(), before + 1, Duration::from_secs(1)).await
    {
        panic!(
            "the backend did not see the dropped call end within 1 s: its cancelled-call count \
             went from {before} to {seen}"
        );
    }
    // The connection was kept open throughout: only the call was cancelled.
    drop(channel);
}

/// Backend down: an EndpointSlice pointing at a closed port, and a Service with no ready
/// endpoint, both give UNAVAILABLE as gRPC errors.
#[tokio::test]
async fn backend_down_is_unavailable() {
    let closed = closed_port().await;
    let mut objects = greeter_objects("grpc-service", closed, &[ready("127.0.0.1")], None);
    objects.extend(greeter_objects(
        "grpc-empty",
        closed,
        &[not_ready("127.0.0.1")],
        None,
    ));
    objects.push(grpc_ingress(
        "grpc-ingress",
        Wiring::Annotation,
        &[
            to_greeter("/grpc.reflection.v1alpha.ServerReflection", "grpc-empty"),
            to_greeter("/", "grpc-service"),
        ],
    ));
    let f = Fixture::start(TestCa::new(), objects).await;
    let mut client = f.greeter().await;

    let result = bounded("SayHello", client.say_hello(hello("anyone"))).await;
    proxy_error(
        "SayHello to an endpoint on a closed port",
        result,
        Code::Unavailable,
    );
    let result = bounded("reflection list", list_services(f.channel().await)).await;
    proxy_error(
        "reflection list to a Service without ready endpoints",
        result,
        Code::Unavailable,
    );
}

/// A path no rule matches, and a host no Ingress names, give UNIMPLEMENTED from the proxy (the
/// Greeter behind would have answered both).
#[tokio::test]
async fn unknown_host_or_path_is_unimplemented() {
    let greeter = GreeterBackend::start().await;
    let mut objects = greeter.objects("grpc-service", None);
    objects.push(grpc_ingress(
        "grpc-ingress",
        Wiring::Annotation,
        &[to_greeter("/helloworld.Greeter", "grpc-service")],
    ));
    let f = Fixture::start(TestCa::new(), objects).await;

    let mut client = f.greeter().await;
    let reply = ok(
        "SayHello on the routed path",
        bounded("SayHello", client.say_hello(hello("routed"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello routed");

    let result = bounded("reflection list", list_services(f.channel().await)).await;
    proxy_error(
        "reflection list (path /grpc.reflection.v1alpha.ServerReflection/... has no rule)",
        result,
        Code::Unimplemented,
    );

    let mut elsewhere = greeter_client(f.channel_for("unknown.kubesre.com").await);
    let result = bounded("SayHello", elsewhere.say_hello(hello("lost"))).await;
    proxy_error(
        "SayHello with :authority unknown.kubesre.com",
        result,
        Code::Unimplemented,
    );
}

/// A Chat call opened before a config swap keeps exchanging messages with the same backend call
/// after it, although the swap took that backend out of the configuration, while new calls on
/// the same connection already follow the new configuration.
#[tokio::test]
async fn bidi_stream_open_during_a_config_swap_keeps_exchanging() {
    let old = GreeterBackend::start().await;
    let new = GreeterBackend::start().await;
    let mut objects = seed_objects(&old, Wiring::Annotation);
    objects.extend(new.objects("grpc-service-v2", None));
    let f = Fixture::start(TestCa::new(), objects).await;
    let channel = f.channel().await;
    let mut client = greeter_client(channel.clone());
    let (tx, rx) = mpsc::channel(1);
    let mut inbound = ok(
        "Chat",
        bounded("Chat", client.chat(ReceiverStream::new(rx))).await,
    )
    .into_inner();
    ping_pong(&tx, &mut inbound, 1..=10, "Chat before the swap").await;

    // The swap, like a rollout: the old Service is gone from the configuration (its pod still
    // drains the open call), the Greeter's path goes to the new one, reflection is not routed.
    let mut swapped = new.objects("grpc-service-v2", None);
    swapped.push(grpc_ingress(
        "grpc-ingress",
        Wiring::Annotation,
        &[to_greeter("/helloworld.Greeter", "grpc-service-v2")],
    ));
    f.rewrite(swapped);
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        match bounded("reflection list", list_services(channel.clone())).await {
            Err(s) if s.code() == Code::Unimplemented => break,
            last => assert!(
                tokio::time::Instant::now() < deadline,
                "the swapped configuration did not answer within {RELOAD_LIMIT:?} (reflection \
                 should no longer be routed); last answer: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    ping_pong(&tx, &mut inbound, 11..=20, "Chat after the swap").await;
    let reply = ok(
        "a new SayHello after the swap",
        bounded("SayHello", client.say_hello(hello("after"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello after");
    drop(tx);
    match bounded("end of Chat", inbound.message()).await {
        Ok(None) => {}
        other => panic!("Chat should end cleanly once the client is done: {other:?}"),
    }
}

/// One host, two Ingresses: gRPC (`backend-protocol: GRPC`) on `/helloworld.Greeter`, REST on
/// `/api` to an HTTP/1.1 echo backend; each request reaches its own backend its own way.
#[tokio::test]
async fn grpc_and_rest_on_one_host() {
    let greeter = GreeterBackend::start().await;
    let rest = Backend::start("rest").await;
    let mut objects = greeter.objects("grpc-service", None);
    objects.extend(rest.objects());
    objects.push(grpc_ingress(
        "grpc-ingress",
        Wiring::Annotation,
        &[to_greeter("/helloworld.Greeter", "grpc-service")],
    ));
    objects.push(
        Ingress::new("rest-ingress")
            .tls(&[HOST], SECRET)
            .rule(Some(HOST), &[prefix("/api", "rest")])
            .build(),
    );
    let f = Fixture::start(TestCa::new(), objects).await;

    let mut client = f.greeter().await;
    let reply = ok(
        "SayHello",
        bounded("SayHello", client.say_hello(hello("grpc"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello grpc");

    let r = bounded("GET /api/items", f.https_get("/api/items")).await;
    assert_eq!(
        r.status,
        200,
        "GET https://{HOST}/api/items: {}",
        r.summary()
    );
    let echo = r.expect_echo();
    assert_eq!(echo["backend"], "rest", "{}", r.summary());
    assert_eq!(echo["path"], "/api/items");
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "the REST backend is reached over HTTP/1.1"
    );
}

/// Without the annotation, gRPC requests go to a Service port declaring `appProtocol:
/// kubernetes.io/h2c` over h2c: reflection and a unary call work.
#[tokio::test]
async fn app_protocol_h2c_without_annotation() {
    let greeter = GreeterBackend::start().await;
    let f = Fixture::start(TestCa::new(), seed_objects(&greeter, Wiring::AppProtocol)).await;
    let names = bounded("reflection list", list_services(f.channel().await))
        .await
        .unwrap_or_else(|s| panic!("reflection ListServices through the proxy: {s:?}"));
    assert_eq!(names, SEED_SERVICES);
    let mut client = f.greeter().await;
    let reply = ok(
        "SayHello",
        bounded("SayHello", client.say_hello(hello("h2c"))).await,
    );
    assert_eq!(reply.get_ref().message, "Hello h2c");
}

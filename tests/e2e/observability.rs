//! Observability end to end (issue #6): after HTTP/1.1, HTTP/2, gRPC and WebSocket traffic
//! through the real binary, `/metrics` shows the per-route request counters, gRPC statuses,
//! tunnel counters and histograms moving; `--access-log json` prints one JSON line per request
//! or tunnel with the fields users grep for; requests get an `X-Request-Id` upstream; and
//! `/debug/routes` shows the compiled table.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wasmgress_examples::greeter::proto::HelloRequest;
use wasmgress_examples::greeter::proto::greeter_client::GreeterClient;

use crate::harness::grpc::{GreeterBackend, SEED_PORT};
use crate::harness::plugins::Metrics;
use crate::harness::ws::{Io, WsBackend, handshake};
use crate::harness::{Backend, Conn, Ingress, Manifests, Req, Wasmgress, prefix};

const HOST: &str = "obs.test";
const LIMIT: Duration = Duration::from_secs(20);

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(m: &Metrics, name: &str, labels: &[&str]) -> f64 {
    m.text
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_access_log_and_request_ids_after_http_grpc_and_websocket_traffic() {
    let echo = Backend::start("echo").await;
    let greeter = GreeterBackend::start().await;
    let ws = WsBackend::echo().await;
    let m = Manifests::new();
    let mut docs = echo.objects();
    docs.extend(greeter.objects("greeter", None));
    docs.extend(ws.objects("ws", 80));
    docs.push(
        Ingress::new("web")
            .rule(Some(HOST), &[prefix("/api", "echo"), prefix("/ws", "ws")])
            .build(),
    );
    docs.push(
        Ingress::new("grpc")
            .annotation("nginx.ingress.kubernetes.io/backend-protocol", "GRPC")
            .rule(
                Some(HOST),
                &[prefix("/helloworld.Greeter", "greeter").port(SEED_PORT)],
            )
            .build(),
    );
    m.write("all.yaml", &docs);
    let gw = Wasmgress::start(&m, &["--access-log", "json"]).await;
    let before = Metrics::scrape(&gw).await;

    // HTTP/1.1 and HTTP/2 (h2c), one of them answered 404 by the proxy.
    let mut h1 = gw.h1().await;
    for _ in 0..3 {
        let r = h1
            .send(&Req::get(HOST, "/api/x"))
            .await
            .expect("HTTP/1.1 request");
        assert_eq!(r.status, 200, "{}", r.summary());
        let id = r.seen("x-request-id");
        assert_eq!(
            id.len(),
            1,
            "the backend gets one generated X-Request-Id: {}",
            r.summary()
        );
        assert_eq!(id[0].len(), 32);
    }
    let r = h1
        .send(&Req::get(HOST, "/api/x").header("x-request-id", "from-client"))
        .await
        .expect("request with an id");
    assert_eq!(
        r.seen("x-request-id"),
        ["from-client"],
        "a client's id is passed on"
    );
    let mut h2 = gw.h2c().await;
    let r = h2
        .send(&Req::get(HOST, "/api/h2"))
        .await
        .expect("h2c request");
    assert_eq!(r.status, 200);
    let r = h2
        .send(&Req::get(HOST, "/nowhere"))
        .await
        .expect("h2c request");
    assert_eq!(r.status, 404);

    // gRPC over h2c: one OK call and one failing with FAILED_PRECONDITION (9) in trailers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.http))
        .expect("endpoint")
        .origin(format!("http://{HOST}").parse().expect("origin"))
        .connect()
        .await
        .expect("gRPC channel through the plain listener");
    let mut client = GreeterClient::new(channel);
    let hello = |name: &str| HelloRequest {
        name: name.into(),
        ..Default::default()
    };
    client.say_hello(hello("metrics")).await.expect("SayHello");
    let failed = client
        .say_hello(hello("fail"))
        .await
        .expect_err("fail is refused");
    assert_eq!(failed.code(), tonic::Code::FailedPrecondition);

    // One WebSocket tunnel, one echo, closed by the client.
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let stream: Box<dyn Io> = Box::new(tcp);
    let (mut socket, _) = handshake(stream, &format!("ws://{HOST}/ws"), &[])
        .await
        .expect("WebSocket handshake through the proxy");
    socket.send(Message::text("ping me")).await.expect("send");
    let echoed = tokio::time::timeout(LIMIT, socket.next())
        .await
        .expect("echo in time");
    assert_eq!(
        echoed.expect("a message").expect("no error"),
        Message::text("ping me")
    );
    socket.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, socket.next()).await {}
    drop(socket);

    // The counters moved by what was sent. Tunnel counters update when the tunnel ends.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let after = loop {
        let after = Metrics::scrape(&gw).await;
        let closed = sample(&after, "wasmgress_websocket_tunnels_closed_total", &[]);
        if closed >= 1.0 || tokio::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    let api = "ingress=\"default/web\",host=\"obs.test\",path=\"/api\"";
    assert_eq!(
        moved(
            "wasmgress_requests_total",
            &[
                api,
                "protocol=\"http1\"",
                "status_class=\"2xx\"",
                "method=\"GET\""
            ]
        ),
        4.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved("wasmgress_requests_total", &[api, "protocol=\"h2\""]),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved(
            "wasmgress_requests_total",
            &[
                "ingress=\"default/grpc\"",
                "protocol=\"grpc\"",
                "method=\"POST\""
            ]
        ),
        2.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved(
            "wasmgress_grpc_responses_total",
            &["ingress=\"default/grpc\"", "grpc_status=\"0\""]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved(
            "wasmgress_grpc_responses_total",
            &["ingress=\"default/grpc\"", "grpc_status=\"9\""]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved(
            "wasmgress_requests_total",
            &[
                "path=\"/ws\"",
                "protocol=\"websocket\"",
                "status_class=\"1xx\""
            ]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved("wasmgress_request_duration_seconds_count", &[api]),
        5.0,
        "{}",
        after.text
    );
    assert_eq!(
        moved("wasmgress_upstream_duration_seconds_count", &[api]),
        5.0,
        "{}",
        after.text
    );
    assert_eq!(moved("wasmgress_websocket_tunnels_opened_total", &[]), 1.0);
    assert!(
        moved(
            "wasmgress_websocket_bytes_total",
            &["direction=\"from_client\""]
        ) >= 7.0
    );
    assert_eq!(
        moved(
            "wasmgress_websocket_tunnels_closed_total",
            &["reason=\"closed\""]
        ),
        1.0,
        "{}",
        after.text
    );
    assert!(sample(&after, "wasmgress_config_generation", &[]) >= 1.0);

    // The access log: one JSON object per request or tunnel, with the fields users grep for.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = gw
            .stdout()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line {l:?} is not JSON: {e}"))
            })
            .collect();
        if lines.len() >= 9 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lines.len(),
        9,
        "4 HTTP/1.1 and 2 HTTP/2 requests (one a 404), 2 gRPC calls, 1 tunnel: {lines:#?}"
    );
    for line in &lines {
        for key in [
            "time",
            "client",
            "host",
            "method",
            "path",
            "protocol",
            "status",
            "grpc_status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "upstream",
            "upstream_duration_ms",
            "ingress",
            "request_id",
        ] {
            assert!(
                line.get(key).is_some(),
                "access log line lacks {key}: {line}"
            );
        }
    }
    let find = |pred: &dyn Fn(&Value) -> bool| lines.iter().find(|l| pred(l)).cloned();
    let grpc_failed = find(&|l| l["grpc_status"] == "9").expect("the failed gRPC call is logged");
    assert_eq!(grpc_failed["protocol"], "grpc");
    assert_eq!(grpc_failed["ingress"], "default/grpc");
    let tunnel = find(&|l| l["protocol"] == "websocket").expect("the tunnel is logged");
    assert_eq!(tunnel["status"], 101);
    let not_found = find(&|l| l["status"] == 404).expect("the 404 is logged");
    assert_eq!(not_found["path"], "/nowhere");
    let with_id = find(&|l| l["request_id"] == "from-client").expect("the client's id is logged");
    assert!(
        with_id["bytes_out"].as_u64().is_some_and(|n| n > 0),
        "{with_id}"
    );

    // /debug/routes shows what the proxy does.
    let tcp = TcpStream::connect(gw.admin).await.expect("admin");
    let mut admin = Conn::h1(tcp).await.expect("admin handshake");
    let routes = admin
        .send(&Req::get("localhost", "/debug/routes"))
        .await
        .expect("/debug/routes");
    assert_eq!(routes.status, 200);
    let doc: Value = serde_json::from_str(&routes.text()).expect("/debug/routes is JSON");
    let paths = doc["routes"]["hosts"][HOST]
        .as_array()
        .expect("the host's paths");
    let grpc_route = paths
        .iter()
        .find(|p| p["path"] == "/helloworld.Greeter")
        .expect("the gRPC path is listed");
    assert_eq!(grpc_route["policy"]["protocol"], "Grpc");
    assert_eq!(grpc_route["endpoints"][0], greeter.addr.to_string());
}

//! The proxy's own error answers, each plain text naming its cause in general words and the
//! request id: 404 `no route` when nothing matches and there is no default backend, 502 when the
//! backend refuses the connection, 503 when a Service has no ready endpoint (none listed, or all
//! not ready), 504 when the backend answers slower than `--proxy-read-timeout`, 502 again when
//! connecting takes longer than `--proxy-connect-timeout`.

use crate::harness::backend::{closed_port, several, unresponsive_port};
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, not_ready, service};
use crate::harness::{Ingress, Manifests, Port, Resp, Wasmgress, prefix};

fn assert_plain_error(r: &Resp, status: u16, mentions: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.summary());
    assert!(
        r.text().contains(mentions),
        "{what}: the body should mention {mentions:?}: {}",
        r.summary()
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain"),
        "{what}: expected a plain-text body: {}",
        r.summary()
    );
    assert_eq!(
        r.backend(),
        None,
        "{what}: no backend should have answered: {}",
        r.summary()
    );
}

#[tokio::test]
async fn unmatched_request_without_default_backend_is_404_no_route() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.example.com"), &[prefix("/app", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    assert_eq!(
        gw.backend_for("app.example.com", "/app").await,
        Ok("app".to_owned())
    );
    for (host, path) in [
        ("app.example.com", "/elsewhere"),
        ("unknown.example.com", "/app"),
    ] {
        let r = gw.get(host, path).await;
        assert_plain_error(&r, 404, "", &format!("GET http://{host}{path}"));
        assert!(
            r.text().starts_with("no route"),
            "GET http://{host}{path}: {}",
            r.summary()
        );
    }
}

#[tokio::test]
async fn refused_backend_connection_is_502() {
    let port = closed_port().await;
    let objects = vec![
        service(
            NS,
            "gone",
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(port),
            }],
        ),
        endpoint_slice(
            NS,
            "gone",
            "gone-1",
            &[(Some("http"), port)],
            &[crate::harness::manifests::ready("127.0.0.1")],
        ),
        Ingress::new("gone")
            .rule(Some("gone.example.com"), &[prefix("/", "gone")])
            .build(),
    ];
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let r = gw.get("gone.example.com", "/").await;
    assert_plain_error(&r, 502, "connect", "backend with nothing listening");
}

#[tokio::test]
async fn service_without_ready_endpoints_is_503() {
    let (_backends, mut objects) = several(&["app"]).await;
    let port = 65000;
    let target = |name| {
        service(
            NS,
            name,
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(port),
            }],
        )
    };
    objects.push(target("unready"));
    objects.push(endpoint_slice(
        NS,
        "unready",
        "unready-1",
        &[(Some("http"), port)],
        &[not_ready("127.0.0.1")],
    ));
    objects.push(target("empty"));
    objects.push(endpoint_slice(
        NS,
        "empty",
        "empty-1",
        &[(Some("http"), port)],
        &[],
    ));
    objects.push(target("sliceless"));
    objects.push(
        Ingress::new("no-endpoints")
            .rule(Some("unready.example.com"), &[prefix("/", "unready")])
            .rule(Some("empty.example.com"), &[prefix("/", "empty")])
            .rule(Some("sliceless.example.com"), &[prefix("/", "sliceless")])
            .rule(Some("app.example.com"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for host in [
        "unready.example.com",
        "empty.example.com",
        "sliceless.example.com",
    ] {
        let r = gw.get(host, "/").await;
        assert_plain_error(&r, 503, "no healthy upstream", host);
    }
    assert_eq!(
        gw.backend_for("app.example.com", "/").await,
        Ok("app".to_owned())
    );
}

#[tokio::test]
async fn slow_backend_is_504_after_the_read_timeout() {
    let (_backends, mut objects) = several(&["slow"]).await;
    objects.push(
        Ingress::new("slow")
            .rule(Some("slow.example.com"), &[prefix("/", "slow")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--proxy-read-timeout", "1"]).await;

    let r = gw.get("slow.example.com", "/?delay_ms=4000").await;
    assert_plain_error(
        &r,
        504,
        "timed out",
        "backend answering after 4 s with a 1 s read timeout",
    );
    // A backend that answers in time is unaffected.
    let r = gw.get("slow.example.com", "/?delay_ms=100").await;
    assert_eq!(
        r.backend().as_deref(),
        Some("slow"),
        "fast request after a timeout: {}",
        r.summary()
    );
}

/// An endpoint that never completes the TCP handshake (a listener whose accept queue is full):
/// the connect timeout ends the wait with a 502 naming the connection, long before the read
/// timeout would.
#[tokio::test]
async fn unresponsive_backend_is_502_after_the_connect_timeout() {
    let hole = unresponsive_port().await;
    let objects = vec![
        service(
            NS,
            "blackhole",
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(hole.port),
            }],
        ),
        endpoint_slice(
            NS,
            "blackhole",
            "blackhole-1",
            &[(Some("http"), hole.port)],
            &[crate::harness::manifests::ready("127.0.0.1")],
        ),
        Ingress::new("blackhole")
            .rule(Some("blackhole.example.com"), &[prefix("/", "blackhole")])
            .build(),
    ];
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(
        &m,
        &[
            "--proxy-connect-timeout",
            "1",
            "--proxy-read-timeout",
            "120",
        ],
    )
    .await;

    let r = gw.get("blackhole.example.com", "/").await;
    assert_plain_error(
        &r,
        502,
        "connect",
        "backend that never accepts the connection",
    );
}

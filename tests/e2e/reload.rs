//! The watched folder: an edit, a new file and a removed file take effect without a restart; a
//! request in flight during a swap completes on the configuration it started with; an
//! EndpointSlice edit moves traffic; an Ingress edited into a broken state keeps serving its
//! last good version until it is fixed, resolved against the cluster as it is now.

use std::net::IpAddr;
use std::time::Duration;

use crate::harness::backend::{same_port, several};
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, ready, service};
use crate::harness::{Ingress, Manifests, Port, Req, Wasmgress, prefix};

fn app_ingress(service: &str) -> serde_json::Value {
    Ingress::new("app")
        .rule(Some("app.example.com"), &[prefix("/", service)])
        .build()
}

/// Start a slow request (`delay_ms`) on the old backend, switch the Ingress to the new backend,
/// see new requests go to the new one while the slow one still completes with 200 from the old
/// one, all in the same process.
#[tokio::test]
async fn edit_applies_without_restart_while_a_slow_request_completes() {
    let (_backends, objects) = several(&["old", "new"]).await;
    let m = Manifests::new();
    m.write("services.yaml", &objects);
    m.write("ingress.yaml", &[app_ingress("old")]);
    let mut gw = Wasmgress::start(&m, &[]).await;
    let pid = gw.pid();
    assert_eq!(
        gw.backend_for("app.example.com", "/").await,
        Ok("old".to_owned())
    );

    let mut slow_conn = gw.h1().await;
    let slow = tokio::spawn(async move {
        slow_conn
            .send(&Req::get("app.example.com", "/slow?delay_ms=4000"))
            .await
    });
    // Let the slow request reach the backend before the edit.
    tokio::time::sleep(Duration::from_millis(300)).await;

    m.write("ingress.yaml", &[app_ingress("new")]);
    gw.poll_until(
        "app.example.com",
        "/",
        "the edited Ingress to send traffic to `new`",
        |r| r.backend().as_deref() == Some("new"),
    )
    .await;

    let r = slow
        .await
        .expect("slow request task")
        .unwrap_or_else(|e| panic!("the request in flight during the edit failed: {e}"));
    assert_eq!(
        r.status,
        200,
        "request in flight during the edit: {}",
        r.summary()
    );
    let echo = r.expect_echo();
    assert_eq!(
        echo["backend"], "old",
        "the request in flight belongs to the old configuration"
    );
    assert_eq!(echo["path"], "/slow");

    assert!(gw.is_running(), "wasmgress must not exit on an edit");
    assert_eq!(gw.pid(), pid, "same process throughout");
    assert_eq!(
        gw.backend_for("app.example.com", "/again").await,
        Ok("new".to_owned())
    );
}

/// A new file (in a new subfolder) adds its routes; deleting a file removes them.
#[tokio::test]
async fn added_and_removed_files_apply() {
    let (_backends, objects) = several(&["first", "second"]).await;
    let m = Manifests::new();
    m.write("services.yaml", &objects);
    m.write(
        "first.yaml",
        &[Ingress::new("first")
            .rule(Some("first.example.com"), &[prefix("/", "first")])
            .build()],
    );
    let gw = Wasmgress::start(&m, &[]).await;
    gw.assert_routes(&[
        ("first.example.com", "/", "first"),
        ("second.example.com", "/", "404"),
    ])
    .await;

    m.write(
        "later/added/second.yml",
        &[Ingress::new("second")
            .rule(Some("second.example.com"), &[prefix("/", "second")])
            .build()],
    );
    gw.poll_until(
        "second.example.com",
        "/",
        "the added file's Ingress to be served",
        |r| r.backend().as_deref() == Some("second"),
    )
    .await;

    m.remove("first.yaml");
    gw.poll_until(
        "first.example.com",
        "/",
        "the removed file's Ingress to stop being served",
        |r| r.status == 404,
    )
    .await;
    gw.assert_routes(&[("second.example.com", "/", "second")])
        .await;
}

/// An EndpointSlice edit (the pod moved to another address) moves traffic, with no Ingress
/// change.
#[tokio::test]
async fn endpoint_slice_edit_moves_traffic() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let pods = same_port(&[("blue", ip("127.0.0.1")), ("green", ip("127.0.0.2"))]).await;
    let port = pods[0].port();
    let slice = |addr: &str| {
        endpoint_slice(
            NS,
            "app",
            "app-slice",
            &[(Some("http"), port)],
            &[ready(addr)],
        )
    };
    let m = Manifests::new();
    m.write(
        "app.yaml",
        &[
            service(
                NS,
                "app",
                &[ServicePort {
                    name: Some("http"),
                    port: 80,
                    target: Port::Number(port),
                }],
            ),
            app_ingress("app"),
        ],
    );
    m.write("slice.yaml", &[slice("127.0.0.1")]);
    let gw = Wasmgress::start(&m, &[]).await;
    assert_eq!(
        gw.backend_for("app.example.com", "/").await,
        Ok("blue".to_owned())
    );

    m.write("slice.yaml", &[slice("127.0.0.2")]);
    gw.poll_until(
        "app.example.com",
        "/",
        "traffic to follow the EndpointSlice to `green`",
        |r| r.backend().as_deref() == Some("green"),
    )
    .await;
    drop(pods);
}

/// An Ingress that served, then is edited to reference a missing Service, keeps serving its
/// last good version (a second Ingress edited at the same time shows the edit was read), until
/// it is fixed.
#[tokio::test]
async fn ingress_edited_into_a_broken_state_keeps_its_last_good_version() {
    let (_backends, objects) = several(&["v1", "v2", "marker-before", "marker-after"]).await;
    let keep = |paths: &[crate::harness::manifests::PathRule]| {
        Ingress::new("keep-me")
            .rule(Some("keep.example.com"), paths)
            .build()
    };
    let marker = |service: &str| {
        Ingress::new("marker")
            .rule(Some("marker.example.com"), &[prefix("/", service)])
            .build()
    };
    let m = Manifests::new();
    m.write("services.yaml", &objects);
    m.write("keep.yaml", &[keep(&[prefix("/", "v1")])]);
    m.write("marker.yaml", &[marker("marker-before")]);
    let gw = Wasmgress::start(&m, &[]).await;
    gw.assert_routes(&[
        ("keep.example.com", "/", "v1"),
        ("marker.example.com", "/", "marker-before"),
    ])
    .await;

    m.write(
        "keep.yaml",
        &[keep(&[
            prefix("/", "v2"),
            prefix("/new", "no-such-service"),
        ])],
    );
    m.write("marker.yaml", &[marker("marker-after")]);
    gw.poll_until(
        "marker.example.com",
        "/",
        "the marker Ingress edit to apply",
        |r| r.backend().as_deref() == Some("marker-after"),
    )
    .await;
    gw.assert_routes(&[
        ("keep.example.com", "/", "v1"),
        ("keep.example.com", "/new/x", "v1"),
    ])
    .await;
    assert!(
        gw.stderr_mentions("keep-me").await,
        "no diagnostic naming the broken Ingress `keep-me` on stderr"
    );

    m.write("keep.yaml", &[keep(&[prefix("/", "v2")])]);
    gw.poll_until("keep.example.com", "/", "the fixed Ingress to apply", |r| {
        r.backend().as_deref() == Some("v2")
    })
    .await;
}

/// The certificate `host` is served on the TLS listener, whoever signed it.
async fn served_certificate(
    gw: &Wasmgress,
    host: &str,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    use crate::harness::certs;
    let tls = gw
        .tls(host, certs::insecure_config(&[b"http/1.1"]))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {host}: {e}"));
    certs::negotiated(&tls).1
}

/// A rejected Ingress keeps its last good *spec*, resolved against the cluster as it is now:
/// while it stays broken, its pods moving moves its traffic, its TLS Secret being deleted takes
/// its certificate away, and its Service being deleted makes it answer 503 (never the old pod
/// addresses, which other workloads may get next).
#[tokio::test]
async fn a_broken_ingress_serves_its_last_good_spec_against_the_current_cluster() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let pods = same_port(&[("blue", ip("127.0.0.1")), ("green", ip("127.0.0.2"))]).await;
    let port = pods[0].port();
    let (_markers, markers) = several(&["marker-before", "marker-after"]).await;
    let ca = crate::harness::certs::TestCa::new();
    let leaf = ca.leaf(&["keep.example.com"]);
    let app_service = service(
        NS,
        "app",
        &[ServicePort {
            name: Some("http"),
            port: 80,
            target: Port::Number(port),
        }],
    );
    let slice = |addr: &str| {
        endpoint_slice(
            NS,
            "app",
            "app-slice",
            &[(Some("http"), port)],
            &[ready(addr)],
        )
    };
    // Plain HTTP stays served (no HTTPS redirect), so each step is checked the same way.
    let keep = |service: &str| {
        Ingress::new("keep-me")
            .annotation("nginx.ingress.kubernetes.io/ssl-redirect", "false")
            .tls(&["keep.example.com"], "keep-tls")
            .rule(Some("keep.example.com"), &[prefix("/", service)])
            .build()
    };
    let marker = |service: &str| {
        Ingress::new("marker")
            .rule(Some("marker.example.com"), &[prefix("/", service)])
            .build()
    };
    let m = Manifests::new();
    m.write("markers.yaml", &markers);
    m.write("service.yaml", &[app_service]);
    m.write("slice.yaml", &[slice("127.0.0.1")]);
    m.write("secret.yaml", &[leaf.secret("keep-tls", false)]);
    m.write("keep.yaml", &[keep("app")]);
    m.write("marker.yaml", &[marker("marker-before")]);
    let gw = Wasmgress::start(&m, &[]).await;
    assert_eq!(
        served_certificate(&gw, "keep.example.com").await.as_ref(),
        Some(&leaf.der)
    );
    assert_eq!(
        gw.backend_for("keep.example.com", "/").await,
        Ok("blue".to_owned())
    );

    // Broken: the edit names a missing Service; the marker shows the edit was read.
    m.write("keep.yaml", &[keep("no-such-service")]);
    m.write("marker.yaml", &[marker("marker-after")]);
    gw.poll_until("marker.example.com", "/", "the edit to apply", |r| {
        r.backend().as_deref() == Some("marker-after")
    })
    .await;
    assert_eq!(
        gw.backend_for("keep.example.com", "/").await,
        Ok("blue".to_owned())
    );

    // The pod moves: the last good version follows it.
    m.write("slice.yaml", &[slice("127.0.0.2")]);
    gw.poll_until(
        "keep.example.com",
        "/",
        "traffic to follow the pod to green",
        |r| r.backend().as_deref() == Some("green"),
    )
    .await;

    // The Secret goes: its certificate is no longer served.
    m.remove("secret.yaml");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served_certificate(&gw, "keep.example.com").await.as_ref() == Some(&leaf.der) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted Secret's certificate is still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The Service goes: 503, not the old pod addresses.
    m.remove("service.yaml");
    gw.poll_until(
        "keep.example.com",
        "/",
        "a deleted Service to answer 503",
        |r| r.status == 503 && r.backend().is_none(),
    )
    .await;
    drop(pods);
}

//! Service resolution: an Ingress backend's Service port (by number or name) mapped to the
//! endpoints' ports the way Kubernetes does (targetPort by number or name; EndpointSlice ports
//! carry the Service port's name), legacy v1 Endpoints, a single unnamed port, and
//! round-robin over the ready endpoints (never the not-ready ones).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::harness::backend::same_port;
use crate::harness::manifests::{
    NS, ServicePort, endpoint_slice, legacy_endpoints, not_ready, ready, service,
};
use crate::harness::{Backend, Ingress, Manifests, Port, Wasmgress, prefix};

/// Two ready endpoints (127.0.0.1 and 127.0.0.2, same port, like two pods) share the requests;
/// a third, not ready, gets none.
#[tokio::test]
async fn round_robin_over_ready_endpoints() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let backends = same_port(&[
        ("pod-a", ip("127.0.0.1")),
        ("pod-b", ip("127.0.0.2")),
        ("pod-unready", ip("127.0.0.3")),
    ])
    .await;
    let port = backends[0].port();
    let objects = vec![
        service(
            NS,
            "pods",
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(port),
            }],
        ),
        endpoint_slice(
            NS,
            "pods",
            "pods-abcde",
            &[(Some("http"), port)],
            &[
                ready("127.0.0.1"),
                ready("127.0.0.2"),
                not_ready("127.0.0.3"),
            ],
        ),
        Ingress::new("pods")
            .rule(Some("pods.example.com"), &[prefix("/", "pods")])
            .build(),
    ];
    let m = Manifests::new();
    m.write("pods.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..12 {
        let r = gw.get("pods.example.com", "/").await;
        let who = r
            .backend()
            .unwrap_or_else(|| panic!("request to pods.example.com: {}", r.summary()));
        *counts.entry(who).or_default() += 1;
    }
    assert_eq!(
        counts.get("pod-unready"),
        None,
        "a not-ready endpoint got traffic: {counts:?}"
    );
    for pod in ["pod-a", "pod-b"] {
        assert!(
            counts.get(pod).copied().unwrap_or(0) >= 3,
            "12 requests over two ready endpoints should be shared round-robin, got {counts:?}"
        );
    }
    drop(backends);
}

/// A two-port Service whose targetPorts are container port names: the EndpointSlice lists the
/// resolved numbers under the Service ports' names, as the EndpointSlice controller writes them.
/// The Ingress picks one port by name and the other by number.
#[tokio::test]
async fn named_ports_and_target_ports() {
    let web = Backend::start("web").await;
    let admin = Backend::start("admin").await;
    let objects = vec![
        service(
            NS,
            "multi",
            &[
                ServicePort {
                    name: Some("web"),
                    port: 80,
                    target: Port::Name("http-web"),
                },
                ServicePort {
                    name: Some("admin"),
                    port: 9000,
                    target: Port::Name("http-admin"),
                },
            ],
        ),
        endpoint_slice(
            NS,
            "multi",
            "multi-x1",
            &[(Some("web"), web.port()), (Some("admin"), admin.port())],
            &[ready("127.0.0.1")],
        ),
        Ingress::new("multi")
            .rule(
                Some("multi.example.com"),
                &[
                    prefix("/admin", "multi").port(9000),
                    prefix("/", "multi").port_name("web"),
                ],
            )
            .build(),
        // A catch-all (an Ingress without rules) whose default backend names a port by name.
        Ingress::new("multi-catch-all")
            .default_backend("multi", Port::Name("admin"))
            .build(),
    ];
    let m = Manifests::new();
    m.write("multi.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("multi.example.com", "/", "web"),
        ("multi.example.com", "/admin/users", "admin"),
        ("elsewhere.example.com", "/", "admin"),
    ])
    .await;
}

/// Legacy v1 Endpoints (no EndpointSlice) still resolve a Service.
#[tokio::test]
async fn legacy_endpoints_resolve_a_service() {
    let old = Backend::start("legacy").await;
    let objects = vec![
        service(
            NS,
            "legacy",
            &[ServicePort {
                name: Some("http"),
                port: 80,
                target: Port::Number(old.port()),
            }],
        ),
        legacy_endpoints(NS, "legacy", &["127.0.0.1"], &[(Some("http"), old.port())]),
        Ingress::new("legacy")
            .rule(Some("legacy.example.com"), &[prefix("/", "legacy")])
            .build(),
    ];
    let m = Manifests::new();
    m.write("legacy.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[("legacy.example.com", "/", "legacy")])
        .await;
}

/// A Service with one unnamed port (the usual short form) and a slice port without name.
#[tokio::test]
async fn single_unnamed_port() {
    let b = Backend::start("unnamed").await;
    let objects = vec![
        service(
            NS,
            "unnamed",
            &[ServicePort {
                name: None,
                port: 8080,
                target: Port::Number(b.port()),
            }],
        ),
        endpoint_slice(
            NS,
            "unnamed",
            "unnamed-1",
            &[(None, b.port())],
            &[ready("127.0.0.1")],
        ),
        Ingress::new("unnamed")
            .rule(
                Some("unnamed.example.com"),
                &[prefix("/", "unnamed").port(8080)],
            )
            .build(),
    ];
    let m = Manifests::new();
    m.write("unnamed.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[("unnamed.example.com", "/", "unnamed")])
        .await;
}

//! A broken Ingress is rejected alone: a missing Service, an unknown Service port, a path
//! without a leading `/`, a missing TLS Secret, a broken default backend. Its neighbours —
//! including another Ingress on the same host — keep serving, nothing of the broken one is
//! served, and the binary names it on stderr.

use crate::harness::backend::several;
use crate::harness::{Ingress, Manifests, Port, Wasmgress, prefix};

#[tokio::test]
async fn broken_ingresses_are_rejected_while_neighbours_serve() {
    let (_backends, mut objects) = several(&["good"]).await;
    objects.push(
        Ingress::new("good-app")
            .rule(Some("good.example.com"), &[prefix("/app", "good")])
            .build(),
    );
    objects.push(
        Ingress::new("broken-svc")
            .rule(Some("svc.broken.test"), &[prefix("/", "no-such-service")])
            .build(),
    );
    objects.push(
        Ingress::new("broken-port")
            .rule(Some("port.broken.test"), &[prefix("/", "good").port(81)])
            .build(),
    );
    objects.push(
        Ingress::new("broken-path")
            .rule(
                Some("path.broken.test"),
                &[prefix("/ok", "good"), prefix("foo", "good")],
            )
            .build(),
    );
    objects.push(
        Ingress::new("broken-secret")
            .tls(&["secret.broken.test"], "no-such-secret")
            .rule(Some("secret.broken.test"), &[prefix("/", "good")])
            .build(),
    );
    objects.push(
        Ingress::new("broken-shared")
            .rule(
                Some("good.example.com"),
                &[prefix("/", "good"), prefix("/broken", "no-such-service")],
            )
            .build(),
    );
    objects.push(
        Ingress::new("broken-default")
            .default_backend("no-such-service", Port::Number(80))
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("good.example.com", "/app", "good"),
        ("good.example.com", "/app/deeper", "good"),
        // Nothing of broken-shared (its `/` would have caught these), nor broken-default.
        ("good.example.com", "/broken", "404"),
        ("good.example.com", "/elsewhere", "404"),
        ("svc.broken.test", "/", "404"),
        ("port.broken.test", "/", "404"),
        // The valid path of an Ingress with a bad path is not served either: rejected whole.
        ("path.broken.test", "/ok", "404"),
        // Rejected, so no TLS host and no redirect either.
        ("secret.broken.test", "/", "404"),
    ])
    .await;

    let mut silent = Vec::new();
    for name in [
        "broken-svc",
        "broken-port",
        "broken-path",
        "broken-secret",
        "broken-shared",
        "broken-default",
    ] {
        if !gw.stderr_mentions(name).await {
            silent.push(name);
        }
    }
    assert!(
        silent.is_empty(),
        "no diagnostic on stderr names these rejected Ingresses: {silent:?}"
    );
}

/// What ingress-nginx users wrote to restrict access is never served open: an Ingress with
/// basic auth that names no Secret, or client-certificate checks (no plugin enforces them
/// yet), is rejected, so its host answers 404 instead of 200 to everyone;
/// and a weight-0 canary older than its main Ingress does not take the main one's traffic.
#[tokio::test]
async fn restricting_annotations_are_refused_not_served_open() {
    let (_backends, mut objects) = several(&["admin", "main", "canary"]).await;
    let restrictions = [("auth-type", "basic"), ("auth-tls-verify-client", "on")];
    for (i, (key, value)) in restrictions.iter().enumerate() {
        objects.push(
            Ingress::new(&format!("restricted-{i}"))
                .annotation(&format!("nginx.ingress.kubernetes.io/{key}"), value)
                .rule(Some(&format!("r{i}.example.com")), &[prefix("/", "admin")])
                .build(),
        );
    }
    objects.push(
        Ingress::new("canary")
            .created("2020-01-01T00:00:00Z")
            .annotation("nginx.ingress.kubernetes.io/canary", "true")
            .annotation("nginx.ingress.kubernetes.io/canary-weight", "0")
            .rule(Some("shop.example.com"), &[prefix("/", "canary")])
            .build(),
    );
    objects.push(
        Ingress::new("main")
            .created("2025-01-01T00:00:00Z")
            .rule(Some("shop.example.com"), &[prefix("/", "main")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for (i, (key, _)) in restrictions.iter().enumerate() {
        let r = gw.get(&format!("r{i}.example.com"), "/").await;
        assert_eq!(r.status, 404, "{key}: {}", r.summary());
        assert_eq!(r.backend(), None, "{key}: the backend must not be reached");
    }
    for _ in 0..5 {
        let r = gw.get("shop.example.com", "/").await;
        assert_eq!(r.backend().as_deref(), Some("main"), "{}", r.summary());
    }
}

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

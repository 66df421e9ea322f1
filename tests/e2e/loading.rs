//! Reading the manifests folder: `*.yaml` and `*.yml` files in nested subfolders, several
//! documents per file with comments, kinds wasmgress does not use (skipped), and files that are
//! not manifests at all (ignored); the admin listener's `/healthz` and `/readyz`.

use crate::harness::backend::several;
use crate::harness::yaml::documents;
use crate::harness::{Conn, Ingress, Manifests, Req, Wasmgress, prefix};

#[tokio::test]
async fn nested_multi_document_yaml_and_yml_files_are_loaded() {
    let (_backends, objects) = several(&["app", "api"]).await;
    let config_map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "unrelated", "namespace": "default" },
        "data": { "key": "value" },
    });
    let m = Manifests::new();
    let mut backends_file = String::from("# Backends for the app, written by hand.\n");
    backends_file.push_str(&documents(&objects));
    backends_file.push_str("# A kind wasmgress does not use:\n");
    backends_file.push_str(&documents(&[config_map]));
    m.write_text("svc/backends.yml", &backends_file);
    m.write(
        "ingresses/deep/down/app.yaml",
        &[
            Ingress::new("app")
                .rule(Some("app.example.com"), &[prefix("/", "app")])
                .build(),
            Ingress::new("api")
                .rule(Some("app.example.com"), &[prefix("/api", "api")])
                .build(),
        ],
    );
    m.write_text("notes.txt", "this: is: not [ yaml\n");
    m.write_text("README.md", "# notes\n\n- not a manifest: [\n");
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("app.example.com", "/", "app"),
        ("app.example.com", "/api/v1", "api"),
    ])
    .await;
}

/// Once started, the admin listener answers `/healthz` and `/readyz` with 200, and it is not
/// the proxy (an Ingress host there is not routed).
#[tokio::test]
async fn admin_listener_reports_health_and_readiness() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("app")
            .rule(None, &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    for path in ["/healthz", "/readyz"] {
        let tcp = tokio::net::TcpStream::connect(gw.admin)
            .await
            .expect("connect to the admin listener");
        let mut conn = Conn::h1(tcp).await.expect("HTTP/1.1 to the admin listener");
        let r = conn
            .send(&Req::get("localhost", path))
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: {e}"));
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
        assert_eq!(
            r.backend(),
            None,
            "{path} was proxied to a backend: {}",
            r.summary()
        );
    }
}

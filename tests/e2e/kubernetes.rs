//! Kubernetes mode end to end: the real `wasmgress run --kube` and `wasmgress webhook` binaries,
//! driving the real kube-rs client, against [`ApiServer`], an in-test stand-in for the
//! Kubernetes API server that speaks its list/watch wire protocol (no real API server can run
//! on these machines). Objects are written into it as a user's `kubectl apply` would; what the
//! controller writes back (Ingress status, Events, the Lease) is read from it.
//!
//! Covered: an Ingress added, changed and deleted changes routing; an EndpointSlice scaling
//! changes backends; a Secret rotation changes the served certificate without dropping an open
//! connection; a watch dropped mid-stream and a 410 Gone both recover; two replicas elect one
//! status writer through the Lease and the other takes over when it expires; Events carry an
//! Ingress's diagnostics; status follows the publish Service; `--watch-namespace` limits what
//! is served; `/readyz` waits for every initial list; a plugin shipped in a ConfigMap serves;
//! the webhook denies an Ingress with a refused snippet and allows a good one; endpoint
//! addresses on the proxy's own host (loopback, link-local, its pod IPs) are refused.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::apiserver::ApiServer;
use crate::harness::backend::{same_port, several};
use crate::harness::certs::{self, BOTH_VERSIONS, TestCa};
use crate::harness::manifests::{NS, endpoint_slice, ready};
use crate::harness::{Conn, Ingress, Req, Wasmgress, prefix};

/// How long a change in the API may take to show (the debounce is 100 ms; this only bounds the
/// wait so a broken build fails instead of hanging).
const LIMIT: Duration = Duration::from_secs(20);

/// An API server, its kubeconfig, and how to start replicas against it (also used by the
/// cluster-mode plugin tests of `plugin_io.rs`).
pub(crate) struct Cluster {
    api: ApiServer,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    pub(crate) async fn new() -> Self {
        let api = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = api.kubeconfig(dir.path());
        Self {
            api,
            _dir: dir,
            kubeconfig,
        }
    }

    pub(crate) fn apply_all(&self, objects: &[Value]) {
        for o in objects {
            self.api.apply(o.clone());
        }
    }

    /// `wasmgress run --kube` as replica `pod`, with a short Lease so takeovers are quick;
    /// returns once it is ready. The test pods listen on loopback, which a controller in a
    /// cluster refuses as endpoints, so this one allows them.
    pub(crate) async fn controller(&self, pod: &str, extra: &[&str]) -> Wasmgress {
        let mut extra = extra.to_vec();
        extra.push("--allow-local-endpoints");
        Wasmgress::run(&self.controller_args(pod, &extra)).await
    }

    fn controller_args<'a>(&'a self, pod: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let kubeconfig = self.kubeconfig.to_str().expect("utf-8 temp path");
        let mut args = vec![
            "run",
            "--kube",
            "--kubeconfig",
            kubeconfig,
            "--pod-name",
            pod,
            "--election-namespace",
            "wasmgress",
            "--plugin-namespace",
            "wasmgress",
            "--election-lease-seconds",
            "2",
        ];
        args.extend_from_slice(extra);
        args
    }

    fn ingress_status(&self, name: &str) -> Vec<String> {
        self.api
            .get("networking.k8s.io/v1", "Ingress", Some(NS), name)
            .and_then(|i| {
                i.pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .cloned()
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|a| {
                a.get("ip")
                    .or_else(|| a.get("hostname"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }

    fn lease_holder(&self) -> Option<String> {
        self.api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some("wasmgress"),
                "wasmgress-leader",
            )
            .and_then(|l| {
                l.pointer("/spec/holderIdentity")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .filter(|h| !h.is_empty())
    }

    /// Notes of the Events about Ingress `name`.
    pub(crate) fn events_for(&self, name: &str) -> Vec<(String, String, String)> {
        self.api
            .list("events.k8s.io/v1", "Event")
            .into_iter()
            .filter(|e| e.pointer("/regarding/name").and_then(Value::as_str) == Some(name))
            .map(|e| {
                let s = |p: &str| {
                    e.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                (s("/type"), s("/reason"), s("/note"))
            })
            .collect()
    }
}

/// Polls `ok` until it holds; panics naming `what` after [`LIMIT`].
pub(crate) async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::time::Instant::now() < deadline {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {LIMIT:?}");
}

async fn routes_to(gw: &Wasmgress, host: &str, want: Option<&str>) -> bool {
    let r = gw.get(host, "/").await;
    match want {
        Some(b) => r.backend().as_deref() == Some(b),
        None => r.status == 404,
    }
}

fn app(service: &str) -> Value {
    Ingress::new("app")
        .rule(Some("app.example.com"), &[prefix("/", service)])
        .build()
}

#[tokio::test]
async fn ingress_added_changed_and_deleted_changes_routing() {
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one", "two"]).await;
    cluster.apply_all(&objects);
    let gw = cluster.controller("solo", &[]).await;
    assert!(
        routes_to(&gw, "app.example.com", None).await,
        "no Ingress yet: 404"
    );

    cluster.api.apply(app("one"));
    eventually("the new Ingress routes to `one`", async || {
        routes_to(&gw, "app.example.com", Some("one")).await
    })
    .await;

    cluster.api.apply(app("two"));
    eventually("the changed Ingress routes to `two`", async || {
        routes_to(&gw, "app.example.com", Some("two")).await
    })
    .await;

    cluster
        .api
        .delete("networking.k8s.io/v1", "Ingress", Some(NS), "app");
    eventually("the deleted Ingress no longer routes", async || {
        routes_to(&gw, "app.example.com", None).await
    })
    .await;
}

/// `/readyz` says not ready while one kind cannot be listed (the API server fails every
/// EndpointSlice request), and ready, with routes, once it can.
#[tokio::test]
async fn ready_only_after_every_watch_has_listed() {
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one"]).await;
    cluster.apply_all(&objects);
    cluster.api.apply(app("one"));
    cluster.api.fail_requests(Some("/endpointslices"));
    let gw =
        Wasmgress::launch(&cluster.controller_args("solo", &["--allow-local-endpoints"])).await;
    let admin = gw.admin;
    let readyz = async || {
        gw.get_on(admin, "localhost", "/readyz")
            .await
            .map(|r| r.status.as_u16())
            .unwrap_or(0)
    };
    eventually("EndpointSlices were asked for and refused", async || {
        cluster
            .api
            .requests()
            .iter()
            .filter(|r| r.contains("/endpointslices"))
            .count()
            >= 2
    })
    .await;
    assert_eq!(
        readyz().await,
        503,
        "not ready before EndpointSlices listed"
    );

    cluster.api.fail_requests(None);
    eventually("ready once every kind has listed", async || {
        readyz().await == 200
    })
    .await;
    let r = gw.get("app.example.com", "/").await;
    assert_eq!(r.backend().as_deref(), Some("one"), "{}", r.summary());
}

#[tokio::test]
async fn endpoint_slice_scaling_changes_backends() {
    let cluster = Cluster::new().await;
    let pods = same_port(&[
        ("pod-a", "127.0.0.1".parse().expect("ip")),
        ("pod-b", "127.0.0.2".parse().expect("ip")),
    ])
    .await;
    let port = pods[0].port();
    let mut objects = pods[0].objects_in(NS, "web");
    cluster.apply_all(&objects);
    cluster.api.apply(app("web"));
    let gw = cluster.controller("solo", &[]).await;
    eventually("one pod serves", async || {
        routes_to(&gw, "app.example.com", Some("pod-a")).await
    })
    .await;

    let both = endpoint_slice(
        NS,
        "web",
        "web-slice",
        &[(Some("http"), port)],
        &[ready("127.0.0.1"), ready("127.0.0.2")],
    );
    cluster.api.apply(both);
    let mut seen = BTreeSet::new();
    eventually("after scaling up, both pods answer", async || {
        if let Some(b) = gw.get("app.example.com", "/").await.backend() {
            seen.insert(b);
        }
        seen.len() == 2
    })
    .await;

    objects[1] = endpoint_slice(
        NS,
        "web",
        "web-slice",
        &[(Some("http"), port)],
        &[ready("127.0.0.2")],
    );
    cluster.api.apply(objects[1].clone());
    eventually(
        "after scaling down, only pod-b answers, 20 times in a row",
        async || {
            for _ in 0..20 {
                if !routes_to(&gw, "app.example.com", Some("pod-b")).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

#[tokio::test]
async fn secret_rotation_changes_the_certificate_without_dropping_connections() {
    let cluster = Cluster::new().await;
    let ca = TestCa::new();
    let first = ca.leaf(&["secure.example.com"]);
    let second = ca.leaf(&["secure.example.com"]);
    let (_backends, objects) = several(&["secure"]).await;
    cluster.apply_all(&objects);
    cluster.api.apply(first.secret("secure-tls", false));
    cluster.api.apply(
        Ingress::new("secure")
            .tls(&["secure.example.com"], "secure-tls")
            .rule(Some("secure.example.com"), &[prefix("/", "secure")])
            .build(),
    );
    let gw = cluster.controller("solo", &[]).await;
    let config = || certs::client_config(ca.roots(), &[b"h2"], BOTH_VERSIONS);
    let served = async |gw: &Wasmgress| {
        let tls = gw.tls("secure.example.com", config()).await.ok()?;
        certs::negotiated(&tls).1
    };
    eventually("the first certificate is served", async || {
        served(&gw).await.as_ref() == Some(&first.der)
    })
    .await;
    let tls = gw
        .tls("secure.example.com", config())
        .await
        .expect("TLS with the first certificate");
    let mut open = Conn::h2(tls).await.expect("HTTP/2 over TLS");
    let req = Req::get("secure.example.com", "/").scheme("https");
    assert_eq!(open.send(&req).await.expect("first request").status, 200);

    cluster.api.apply(second.secret("secure-tls", false));
    eventually("new connections get the rotated certificate", async || {
        served(&gw).await.as_ref() == Some(&second.der)
    })
    .await;
    let r = open
        .send(&req)
        .await
        .expect("the connection opened before the rotation still works");
    assert_eq!(r.backend().as_deref(), Some("secure"));
}

#[tokio::test]
async fn dropped_watches_and_410_gone_recover() {
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one", "two", "three"]).await;
    cluster.apply_all(&objects);
    cluster.api.apply(app("one"));
    let gw = cluster.controller("solo", &[]).await;
    eventually("routes to `one`", async || {
        routes_to(&gw, "app.example.com", Some("one")).await
    })
    .await;

    cluster.api.drop_watches();
    cluster.api.apply(app("two"));
    eventually(
        "after the watch dropped, the change still arrives",
        async || routes_to(&gw, "app.example.com", Some("two")).await,
    )
    .await;
    assert!(
        routes_to(&gw, "app.example.com", Some("two")).await,
        "serving continued"
    );

    let lists_before = ingress_lists(&cluster.api.requests());
    cluster.api.compact();
    cluster.api.drop_watches();
    cluster.api.apply(app("three"));
    eventually("after 410 Gone, a relist brings the change", async || {
        routes_to(&gw, "app.example.com", Some("three")).await
    })
    .await;
    assert!(
        ingress_lists(&cluster.api.requests()) > lists_before,
        "the controller relisted Ingresses after 410 Gone; requests:\n{}",
        cluster.api.requests().join("\n")
    );
}

/// How many Ingress LIST (not watch) requests were made.
fn ingress_lists(requests: &[String]) -> usize {
    requests
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/networking.k8s.io/v1/ingresses")
                && !r.contains("watch=true")
                && !r.contains("watch=1")
        })
        .count()
}

#[tokio::test]
async fn one_leader_writes_status_and_another_takes_over_when_the_lease_expires() {
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one"]).await;
    cluster.apply_all(&objects);
    cluster.api.apply(app("one"));
    let publish = ["--publish-status-address", "192.0.2.10"];
    let a = cluster.controller("replica-a", &publish).await;
    let b = cluster.controller("replica-b", &publish).await;

    eventually("one replica holds the Lease", async || {
        cluster.lease_holder().is_some()
    })
    .await;
    eventually("the leader writes the Ingress status", async || {
        cluster.ingress_status("app") == ["192.0.2.10"]
    })
    .await;
    for gw in [&a, &b] {
        eventually("every replica serves traffic", async || {
            routes_to(gw, "app.example.com", Some("one")).await
        })
        .await;
    }

    // Kill the leader without a chance to release the Lease: the other must wait for expiry.
    let leader = cluster.lease_holder().expect("a holder");
    let (survivor_name, survivor) = if leader == "replica-a" {
        drop(a);
        ("replica-b", b)
    } else {
        drop(b);
        ("replica-a", a)
    };
    eventually("the surviving replica takes the Lease over", async || {
        cluster.lease_holder().as_deref() == Some(survivor_name)
    })
    .await;

    // The new leader writes status for a new Ingress and clears it from one it stops serving.
    cluster.api.apply(
        Ingress::new("later")
            .rule(Some("later.example.com"), &[prefix("/", "one")])
            .build(),
    );
    eventually(
        "the new leader writes status for a new Ingress",
        async || cluster.ingress_status("later") == ["192.0.2.10"],
    )
    .await;
    let mut moved = app("one");
    moved["spec"]["ingressClassName"] = json!("other");
    cluster.api.apply(moved);
    eventually(
        "status is cleared when the Ingress moves to another class",
        async || cluster.ingress_status("app").is_empty(),
    )
    .await;
    assert!(routes_to(&survivor, "later.example.com", Some("one")).await);
}

/// With `--publish-service`, status carries the load-balancer addresses of that Service, and
/// follows them when they change. `--watch-namespace` leaves other namespaces' Ingresses alone.
#[tokio::test]
async fn status_follows_the_publish_service_and_watch_namespace_limits_what_is_served() {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, Patch, PatchParams};

    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one"]).await;
    cluster.apply_all(&objects);
    cluster.api.apply(app("one"));
    cluster.api.apply(
        Ingress::new("elsewhere")
            .namespace("other")
            .rule(Some("elsewhere.example.com"), &[prefix("/", "one")])
            .build(),
    );
    cluster.api.apply(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "edge", "namespace": NS},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "https", "port": 443}]},
    }));
    let client = {
        let file = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    };
    let services: Api<Service> = Api::namespaced(client, NS);
    let set_lb = async |ip: &str| {
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        services
            .patch_status("edge", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch the Service's status as a cloud controller would");
    };
    set_lb("198.51.100.7").await;

    let publish = ["--publish-service", "default/edge", "--watch-namespace", NS];
    let gw = cluster.controller("solo", &publish).await;
    eventually("status carries the Service's address", async || {
        cluster.ingress_status("app") == ["198.51.100.7"]
    })
    .await;
    set_lb("198.51.100.8").await;
    eventually("status follows the Service's new address", async || {
        cluster.ingress_status("app") == ["198.51.100.8"]
    })
    .await;

    assert!(routes_to(&gw, "app.example.com", Some("one")).await);
    assert!(
        routes_to(&gw, "elsewhere.example.com", None).await,
        "an Ingress outside --watch-namespace is not served"
    );
    let other = cluster
        .api
        .get(
            "networking.k8s.io/v1",
            "Ingress",
            Some("other"),
            "elsewhere",
        )
        .expect("still stored");
    assert!(
        other
            .pointer("/status/loadBalancer/ingress")
            .is_none_or(Value::is_null),
        "an Ingress outside --watch-namespace gets no status: {other}"
    );
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .filter(|r| r.contains("/ingresses"))
            .all(|r| r.contains("/namespaces/default/")),
        "Ingresses are only read in the watched namespace"
    );
}

#[tokio::test]
async fn diagnostics_become_events_on_the_ingress() {
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one"]).await;
    cluster.apply_all(&objects);
    cluster.api.apply(app("one"));
    cluster.api.apply(
        Ingress::new("broken")
            .rule(Some("broken.example.com"), &[prefix("/", "missing")])
            .build(),
    );
    let _gw = cluster.controller("solo", &[]).await;
    eventually("a Warning Event names the missing Service", async || {
        cluster
            .events_for("broken")
            .iter()
            .any(|(t, _, note)| t == "Warning" && note.contains("missing"))
    })
    .await;
    eventually("the accepted Ingress gets a Normal Event", async || {
        cluster
            .events_for("app")
            .iter()
            .any(|(t, _, _)| t == "Normal")
    })
    .await;
    // Nothing changed: no new Events for the same diagnostics.
    let count = cluster.api.list("events.k8s.io/v1", "Event").len();
    cluster.api.apply(
        Ingress::new("unrelated")
            .rule(Some("unrelated.example.com"), &[prefix("/", "one")])
            .build(),
    );
    eventually("the new Ingress gets its Event", async || {
        !cluster.events_for("unrelated").is_empty()
    })
    .await;
    let broken_events = cluster
        .events_for("broken")
        .iter()
        .filter(|(t, _, _)| t == "Warning")
        .count();
    let after = cluster.api.list("events.k8s.io/v1", "Event").len();
    assert!(
        after <= count + 2,
        "unchanged diagnostics were posted again: {count} Events before, {after} after"
    );
    assert!(broken_events >= 1);
}

/// A plugin in a labelled ConfigMap of the controller's namespace serves, pinned by digest like
/// a file plugin.
#[tokio::test]
async fn a_plugin_shipped_in_a_configmap_serves() {
    use base64::Engine as _;
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["guarded"]).await;
    cluster.apply_all(&objects);
    let wasm = crate::harness::plugins::wasm("api-key");
    cluster.api.apply(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "api-key",
            "namespace": "wasmgress",
            "labels": {"wasmgress.io/plugin": ""},
        },
        "binaryData": {"api-key.wasm": base64::engine::general_purpose::STANDARD.encode(&wasm)},
    }));
    cluster.api.apply(
        Ingress::new("guarded")
            .annotation("wasmgress.io/plugins", "api-key")
            .annotation("wasmgress.io/plugin.api-key.keys", "s3cret")
            .rule(Some("guarded.example.com"), &[prefix("/", "guarded")])
            .build(),
    );
    let gw = cluster.controller("solo", &[]).await;
    eventually("the ConfigMap plugin guards the route", async || {
        gw.get("guarded.example.com", "/").await.status == 401
    })
    .await;
    let r = gw
        .send(&Req::get("guarded.example.com", "/").header("x-api-key", "s3cret"))
        .await;
    assert_eq!(r.backend().as_deref(), Some("guarded"), "{}", r.summary());

    // Pinned like a file plugin: the right digest serves, a wrong one rejects the Ingress.
    let digest = crate::harness::plugins::sha256_hex(&wasm);
    for (name, pin) in [("pinned", digest.as_str()), ("mispinned", "00ff")] {
        cluster.api.apply(
            Ingress::new(name)
                .annotation("wasmgress.io/plugins", "api-key")
                .annotation("wasmgress.io/plugin.api-key.keys", "s3cret")
                .annotation("wasmgress.io/plugin.api-key.sha256", pin)
                .rule(
                    Some(&format!("{name}.example.com")),
                    &[prefix("/", "guarded")],
                )
                .build(),
        );
    }
    eventually("the correctly pinned Ingress serves", async || {
        gw.get("pinned.example.com", "/").await.status == 401
    })
    .await;
    eventually(
        "the wrongly pinned Ingress is rejected with an Event",
        async || {
            cluster
                .events_for("mispinned")
                .iter()
                .any(|(t, _, note)| t == "Warning" && note.contains("sha256"))
        },
    )
    .await;
    assert!(routes_to(&gw, "mispinned.example.com", None).await);
}

#[tokio::test]
async fn webhook_denies_a_refused_snippet_and_allows_a_good_ingress() {
    let cluster = Cluster::new().await;
    let (_backends, objects) = several(&["one"]).await;
    cluster.apply_all(&objects);
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    let args = [
        "webhook",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--kubeconfig",
        cluster.kubeconfig.to_str().expect("utf-8"),
        "--plugin-namespace",
        "wasmgress",
    ];
    let hook = Wasmgress::spawn(&args, &["webhook"]).await;
    let addr = hook.listeners["webhook"];

    let good = app("one");
    let mut bad = app("one");
    bad["metadata"]["name"] = json!("bad");
    bad["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/configuration-snippet": "access_by_lua_block { os.execute('id') }",
    });
    let answer = |object: Value| {
        let ca = &ca;
        async move {
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "1234-5678",
                    "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
                    "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
                    "name": object["metadata"]["name"],
                    "namespace": NS,
                    "operation": "CREATE",
                    "userInfo": {"username": "test"},
                    "object": object,
                    "dryRun": false,
                },
            });
            let tls = certs::connect(
                addr,
                "localhost",
                certs::client_config(ca.roots(), &[b"http/1.1"], BOTH_VERSIONS),
            )
            .await
            .expect("TLS to the webhook, verified");
            let io = hyper_util::rt::TokioIo::new(tls);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 to the webhook");
            tokio::spawn(conn);
            let req = http::Request::post("/validate")
                .header("content-type", "application/json")
                .header("host", "localhost")
                .body(Full::new(Bytes::from(review.to_string())))
                .expect("request");
            let resp = send.send_request(req).await.expect("webhook answers");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<Value>(&body).expect("AdmissionReview JSON")
        }
    };

    let denied = answer(bad).await;
    assert_eq!(denied["response"]["uid"], "1234-5678", "{denied}");
    assert_eq!(denied["response"]["allowed"], false, "{denied}");
    let message = denied["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("access_by_lua_block"),
        "the denial names the annotation: {denied}"
    );

    let allowed = answer(good).await;
    assert_eq!(allowed["response"]["allowed"], true, "{allowed}");
}

/// In a cluster, a tenant's hand-written EndpointSlice cannot aim the proxy at its own host:
/// loopback, link-local (the cloud metadata address included) and the controller pod's own
/// addresses are left out with a warning Event on the Ingress, and its requests get 503; with
/// `--allow-local-endpoints` the same slice is served.
#[tokio::test]
async fn endpoints_on_the_proxys_own_host_are_refused() {
    let cluster = Cluster::new().await;
    let (pods, mut objects) = several(&["local"]).await;
    let port = pods[0].port();
    objects.push(app("local"));
    cluster.apply_all(&objects);
    // The pod IP here stands for the controller's own; the slice also lists the metadata
    // address, so every address is one the guard refuses.
    cluster.api.apply(endpoint_slice(
        NS,
        "local",
        "local-slice",
        &[(Some("http"), port)],
        &[
            ready("127.0.0.1"),
            ready("169.254.169.254"),
            ready("10.9.8.7"),
        ],
    ));
    let args = cluster.controller_args(
        "strict",
        &[
            "--pod-ips",
            "10.9.8.7",
            "--publish-status-address",
            "203.0.113.1",
        ],
    );
    let strict = Wasmgress::run(&args).await;
    eventually("the refused endpoints answer 503", async || {
        let r = strict.get("app.example.com", "/").await;
        r.status == 503 && r.backend().is_none()
    })
    .await;
    eventually("a warning Event names the refused address", async || {
        cluster.events_for("app").iter().any(|(kind, _, note)| {
            kind == "Warning"
                && note.contains("refused")
                && note.contains("127.0.0.1 (loopback)")
                && note.contains("169.254.169.254 (link-local)")
                && note.contains("10.9.8.7 (the controller's own)")
        })
    })
    .await;
    let allowing = cluster.controller("allowing", &[]).await;
    eventually("allowed, the same slice is served", async || {
        routes_to(&allowing, "app.example.com", Some("local")).await
    })
    .await;
}

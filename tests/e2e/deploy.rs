//! The cluster manifests in `deploy/`: every kustomization renders with the real
//! `kubectl kustomize`, every rendered object parses as its Kubernetes type (k8s-openapi, API
//! 1.33) with no field the API server would drop, and the objects hold what a user relies on:
//! two hardened controller replicas probed on the admin port, the Service ports, RBAC that grants
//! exactly the verbs the controller and the webhook use (no wildcards), a webhook wired to a
//! Service, a pod and a certificate that the API server would trust, and the host-network
//! overlay's node binding.
//!
//! No API server runs here, so "the API server would accept it" means: the k8s-openapi types
//! take every field as written, and the cross-references (selectors, named ports, Secrets,
//! ServiceAccounts, role references, flags) resolve. Without `kubectl` on PATH the rendering
//! tests print that they skipped and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingWebhook, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Names the manifests and the issue's contract share.
const NAMESPACE: &str = "wasmgress";
const CONTROLLER: &str = "wasmgress";
const WEBHOOK: &str = "wasmgress-webhook";
const CLASS: &str = "wasmgress";
const CONTROLLER_NAME: &str = "wasmgress.io/ingress-controller";
const ELECTION_ID: &str = "wasmgress-leader";
const ADMIN_PORT: i32 = 9901;

/// Every kustomization under `deploy/` (relative to it); a new one must be added here, with the
/// assertions that make it worth having.
const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "overlays/webhook-selfsigned",
    "overlays/host-network",
];

#[test]
fn every_kustomization_renders_and_parses() {
    let Some(kubectl) = tool("kubectl", "every_kustomization_renders_and_parses") else {
        return;
    };
    let mut found = BTreeSet::new();
    find_kustomizations(&deploy_dir(), &deploy_dir(), &mut found);
    let expected: BTreeSet<String> = KUSTOMIZATIONS.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        found, expected,
        "kustomizations under deploy/ (each needs its checks in tests/e2e/deploy.rs)"
    );
    for dir in KUSTOMIZATIONS {
        check_common(&render(&kubectl, &deploy_dir().join(dir)));
    }
}

#[test]
fn base_is_a_load_balanced_controller_without_key_material() {
    let Some(kubectl) = tool(
        "kubectl",
        "base_is_a_load_balanced_controller_without_key_material",
    ) else {
        return;
    };
    let r = render(&kubectl, &deploy_dir().join("base"));
    check_common(&r);

    let service = r.service(CONTROLLER);
    let spec = service.spec.as_ref().expect("Service spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    // Client addresses reach X-Forwarded-For and source-range allow-lists unchanged.
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));

    // Everything in the namespace meets the `restricted` Pod Security profile, so it is enforced.
    assert_eq!(
        pod_security(&r),
        Some("restricted"),
        "base namespace enforces restricted"
    );
    for d in &r.deployments {
        let pod = pod_spec(d);
        assert_ne!(pod.host_network, Some(true), "{}: hostNetwork", name(d));
        for c in &pod.containers {
            for p in c.ports.iter().flatten() {
                assert_eq!(p.host_port, None, "{}: hostPort in the base", name(d));
            }
        }
    }

    // The webhook's certificate is whoever-issues-it's business: no Secret, no caBundle.
    assert!(
        r.secrets.is_empty(),
        "the base renders no Secret: {:?}",
        r.secrets.iter().map(name).collect::<Vec<_>>()
    );
    assert!(
        webhook(&r).client_config.ca_bundle.is_none(),
        "the base sets no caBundle"
    );
}

#[test]
fn webhook_selfsigned_overlay_commits_only_an_empty_placeholder() {
    let Some(kubectl) = tool(
        "kubectl",
        "webhook_selfsigned_overlay_commits_only_an_empty_placeholder",
    ) else {
        return;
    };
    let r = render(&kubectl, &deploy_dir().join("overlays/webhook-selfsigned"));
    let wiring = check_common(&r);

    assert_eq!(r.secrets.len(), 1, "one Secret: the webhook's");
    let secret = &r.secrets[0];
    assert_eq!(
        name(secret),
        wiring.secret_name,
        "the Secret the webhook mounts"
    );
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.as_ref().expect("placeholder data");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["tls.crt", "tls.key"],
        "the keys a kubernetes.io/tls Secret must have"
    );
    assert!(
        data.values().all(|v| v.0.is_empty()),
        "the committed placeholder holds no certificate and, above all, no private key"
    );
}

#[test]
fn gen_cert_issues_a_certificate_the_api_server_would_trust() {
    let test = "gen_cert_issues_a_certificate_the_api_server_would_trust";
    let (Some(kubectl), Some(bash), Some(_)) = (
        tool("kubectl", test),
        tool("bash", test),
        tool("openssl", test),
    ) else {
        return;
    };
    // Work on a copy: the script writes generated/ beside itself.
    let temp = tempfile::tempdir().expect("temp dir");
    let copy = temp.path().join("deploy");
    copy_tree(&deploy_dir().join("base"), &copy.join("base"));
    let overlay = copy.join("overlays/webhook-selfsigned");
    copy_tree(&deploy_dir().join("overlays/webhook-selfsigned"), &overlay);

    let out = Command::new(bash)
        .arg(overlay.join("gen-cert.sh"))
        .current_dir(temp.path())
        .output()
        .expect("run gen-cert.sh");
    assert!(
        out.status.success(),
        "gen-cert.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The CA's key is gone (nobody can mint another trusted certificate); the serving key is
    // the owner's alone.
    let generated = overlay.join("generated");
    let files: BTreeSet<String> = fs::read_dir(&generated)
        .expect("generated/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        ["ca.crt", "kustomization.yaml", "tls.crt", "tls.key"]
            .map(String::from)
            .into(),
        "generated/ holds exactly these"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(generated.join("tls.key"))
            .expect("tls.key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "tls.key is private to its owner: {mode:o}");
    }

    let r = render(&kubectl, &generated);
    let wiring = check_common(&r);
    assert_eq!(r.secrets.len(), 1, "one Secret: the webhook's");
    let secret = &r.secrets[0];
    assert_eq!(name(secret), wiring.secret_name);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.as_ref().expect("Secret data");
    let cert = &data.get("tls.crt").expect("tls.crt").0;
    let key = &data.get("tls.key").expect("tls.key").0;
    assert_eq!(cert, &fs::read(generated.join("tls.crt")).expect("tls.crt"));
    assert_eq!(key, &fs::read(generated.join("tls.key")).expect("tls.key"));
    let ca = &webhook(&r)
        .client_config
        .ca_bundle
        .as_ref()
        .expect("caBundle set")
        .0;
    assert_eq!(ca, &fs::read(generated.join("ca.crt")).expect("ca.crt"));

    // What the API server does: dial <service>.<namespace>.svc, trusting only caBundle.
    handshake(ca, cert, key, &wiring.server_name).unwrap_or_else(|e| {
        panic!(
            "a client trusting caBundle rejects the webhook certificate for {}: {e}",
            wiring.server_name
        )
    });
    assert!(
        handshake(ca, cert, key, "wasmgress-webhook.elsewhere.svc").is_err(),
        "the certificate is valid only for the webhook Service's names"
    );

    // generated/ must never be committed: the repository ignores it.
    let repo = deploy_dir()
        .parent()
        .expect("deploy/ is inside the repository")
        .to_owned();
    let key_path = "deploy/overlays/webhook-selfsigned/generated/tls.key";
    match Command::new("git")
        .args(["check-ignore", "-q", key_path])
        .current_dir(&repo)
        .status()
    {
        Ok(status) if status.code() == Some(0) => {}
        Ok(status) if status.code() == Some(1) => panic!("git does not ignore {key_path}"),
        _ => println!("{test}: not in a git checkout, skipped the .gitignore check"),
    }
}

#[test]
fn host_network_overlay_binds_the_controller_on_the_node() {
    let Some(kubectl) = tool(
        "kubectl",
        "host_network_overlay_binds_the_controller_on_the_node",
    ) else {
        return;
    };
    let r = render(&kubectl, &deploy_dir().join("overlays/host-network"));
    check_common(&r);

    let controller = r.deployment(CONTROLLER);
    let pod = pod_spec(controller);
    assert_eq!(pod.host_network, Some(true));
    // Cluster DNS names (the API server, Services) still resolve from the host network.
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    for c in &pod.containers {
        for p in c.ports.iter().flatten() {
            assert_eq!(
                p.host_port,
                Some(p.container_port),
                "{}: port {} is bound on the node",
                c.name,
                p.container_port
            );
        }
    }
    // A surge pod would need a node with the ports free; replace one at a time instead.
    let rolling = controller
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .expect("rollingUpdate");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));

    let spec = r.service(CONTROLLER).spec.as_ref().expect("Service spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        spec.external_traffic_policy, None,
        "only valid on externally reachable Services"
    );

    // Host networking is outside `restricted` and `baseline`: the namespace must allow it.
    assert_eq!(pod_security(&r), Some("privileged"));
    // Only the data path moves; the webhook stays an ordinary pod.
    assert_ne!(pod_spec(r.deployment(WEBHOOK)).host_network, Some(true));
}

#[test]
fn dockerfile_builds_the_binary_with_its_plugins_onto_a_nonroot_distroless_image() {
    let dockerfile =
        fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    assert!(
        from.last().is_some_and(|l| l.contains("distroless")),
        "runtime stage is distroless: {from:?}"
    );
    for needed in [
        "rustup target add wasm32-wasip2",
        "cargo build --release",
        "-p wasmgress",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile runs `{needed}`");
    }
    let user = instructions
        .iter()
        .rfind(|l| l.starts_with("USER "))
        .expect("the runtime stage sets USER");
    // The Deployments' runAsUser; runAsNonRoot needs a numeric, non-zero user.
    assert!(user.contains("65532"), "{user}");
    assert!(
        instructions
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("/wasmgress\"")),
        "the entrypoint is the wasmgress binary"
    );

    let ignore =
        fs::read_to_string(deploy_dir().with_file_name(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git", "deploy/overlays/*/generated/"] {
        assert!(ignored.contains(needed), ".dockerignore lists {needed}");
    }
}

// ---- rendering and strict parsing -------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the repository")
        .join("deploy")
}

/// `name` on PATH, or None after printing that `test` skipped.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        println!("deploy::{test}: skipped, `{name}` is not on PATH");
    }
    found
}

fn find_kustomizations(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
    if dir.join("kustomization.yaml").is_file() {
        let rel = dir.strip_prefix(root).expect("below deploy/");
        found.insert(rel.to_string_lossy().into_owned());
    }
    for entry in fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("entry").path();
        // generated/ is gen-cert.sh's git-ignored output, not part of the repository.
        if path.is_dir() && path.file_name().is_some_and(|n| n != "generated") {
            find_kustomizations(root, &path, found);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            if entry.file_name() != "generated" {
                copy_tree(&src, &dst);
            }
        } else {
            fs::copy(&src, &dst).expect("copy file");
        }
    }
}

/// Every object `kubectl kustomize` rendered, by kind.
#[derive(Default)]
struct Rendered {
    source: String,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    pdbs: Vec<PodDisruptionBudget>,
    services: Vec<Service>,
    ingress_classes: Vec<IngressClass>,
    webhook_configs: Vec<ValidatingWebhookConfiguration>,
    secrets: Vec<Secret>,
}

impl Rendered {
    fn deployment(&self, n: &str) -> &Deployment {
        find(&self.deployments, n, "Deployment", &self.source)
    }

    fn service(&self, n: &str) -> &Service {
        find(&self.services, n, "Service", &self.source)
    }
}

fn find<'a, T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    items: &'a [T],
    n: &str,
    kind: &str,
    source: &str,
) -> &'a T {
    items
        .iter()
        .find(|o| name(*o) == n)
        .unwrap_or_else(|| panic!("{source}: no {kind} {n}"))
}

fn name<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(o: &T) -> &str {
    o.metadata().name.as_deref().unwrap_or_default()
}

fn render(kubectl: &Path, dir: &Path) -> Rendered {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("kubectl prints UTF-8");
    parse(&yaml, &dir.display().to_string())
}

/// Parses every document of a multi-document stream into its k8s-openapi type; an unknown kind,
/// a parse error or a field the type does not know fails, naming the object and the field.
fn parse(yaml: &str, source: &str) -> Rendered {
    let mut r = Rendered {
        source: source.to_owned(),
        ..Rendered::default()
    };
    let mut seen = BTreeSet::new();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{source}: document {index} is not YAML: {e}"));
        if value.is_null() {
            continue;
        }
        let mut json: Value = serde_json::to_value(&value)
            .unwrap_or_else(|e| panic!("{source}: document {index} is not JSON-shaped: {e}"));
        let kind = json["kind"].as_str().unwrap_or_default().to_owned();
        let object = json["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = json["metadata"]["namespace"].as_str().map(str::to_owned);
        let at = format!("{source}: {kind} {object}");
        assert!(
            seen.insert((kind.clone(), object.to_owned())),
            "{at}: rendered twice"
        );
        let namespaced = match kind.as_str() {
            "Namespace" => {
                r.namespaces.push(strict(&json, &at));
                false
            }
            "ServiceAccount" => {
                r.service_accounts.push(strict(&json, &at));
                true
            }
            "ClusterRole" => {
                r.cluster_roles.push(strict(&json, &at));
                false
            }
            "ClusterRoleBinding" => {
                r.cluster_role_bindings.push(strict(&json, &at));
                false
            }
            "Role" => {
                r.roles.push(strict(&json, &at));
                true
            }
            "RoleBinding" => {
                r.role_bindings.push(strict(&json, &at));
                true
            }
            "Deployment" => {
                r.deployments.push(strict(&json, &at));
                true
            }
            "PodDisruptionBudget" => {
                r.pdbs.push(strict(&json, &at));
                true
            }
            "Service" => {
                r.services.push(strict(&json, &at));
                true
            }
            "IngressClass" => {
                r.ingress_classes.push(strict(&json, &at));
                false
            }
            "ValidatingWebhookConfiguration" => {
                r.webhook_configs.push(strict(&json, &at));
                false
            }
            "Secret" => {
                // kustomize wraps long base64 values over several lines; the API server's
                // decoder skips line breaks, k8s-openapi's does not, so join them first.
                if let Some(data) = json.get_mut("data").and_then(Value::as_object_mut) {
                    for v in data.values_mut() {
                        if let Value::String(s) = v {
                            s.retain(|c| c != '\n' && c != '\r');
                        }
                    }
                }
                r.secrets.push(strict(&json, &at));
                true
            }
            other => panic!(
                "{at}: unknown kind {other:?} ({}): add it to tests/e2e/deploy.rs with its \
                 k8s-openapi type",
                json["apiVersion"]
            ),
        };
        if namespaced {
            assert_eq!(namespace.as_deref(), Some(NAMESPACE), "{at}: namespace");
        } else {
            assert_eq!(
                namespace, None,
                "{at}: a cluster-scoped object has no namespace"
            );
        }
    }
    r
}

/// Deserializes `json` as `T` and serializes it back: anything that does not survive the round
/// trip is a field the Kubernetes type does not have (a typo, a misplaced field, a wrong type).
fn strict<T>(json: &Value, at: &str) -> T
where
    T: k8s_openapi::Resource + DeserializeOwned + Serialize,
{
    assert_eq!(
        json["apiVersion"].as_str(),
        Some(T::API_VERSION),
        "{at}: apiVersion"
    );
    let typed: T = serde_path_to_error::deserialize(json.clone())
        .unwrap_or_else(|e| panic!("{at}: {} at `{}`", e.inner(), e.path()));
    let back = serde_json::to_value(&typed).expect("serialize");
    if let Some(path) = difference(json, &back, String::new()) {
        panic!(
            "{at}: `{path}` is not a field of {}/{} as written (misspelt, misplaced or of the \
             wrong type): the API server would drop or refuse it",
            T::API_VERSION,
            T::KIND
        );
    }
    typed
}

/// The path of the first place where `a` and `b` differ.
fn difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => a.keys().chain(b.keys()).find_map(|key| {
            let here = format!("{path}.{key}");
            match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => difference(x, y, here),
                _ => Some(here),
            }
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| difference(x, y, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(path),
    }
}

// ---- what every rendering must hold -----------------------------------------------------------

/// How the webhook is wired, for the tests that go further.
struct Wiring {
    secret_name: String,
    server_name: String,
}

fn check_common(r: &Rendered) -> Wiring {
    let src = &r.source;
    assert_eq!(
        r.namespaces.iter().map(name).collect::<Vec<_>>(),
        [NAMESPACE],
        "{src}: one Namespace"
    );
    check_controller(r);
    for d in &r.deployments {
        check_hardened(r, d);
    }
    check_rbac(r);
    check_ingress_class(r);
    check_webhook(r)
}

fn check_controller(r: &Rendered) {
    let src = &r.source;
    let d = r.deployment(CONTROLLER);
    let spec = d.spec.as_ref().expect("Deployment spec");
    assert_eq!(
        spec.replicas,
        Some(2),
        "{src}: two controller replicas survive a node"
    );
    let labels = pod_labels(d);
    let pod = pod_spec(d);
    assert_eq!(pod.containers.len(), 1, "{src}: one controller container");
    let c = &pod.containers[0];
    let args = c.args.as_deref().unwrap_or_default();

    // The issue's contract.
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{src}: {args:?}"
    );
    assert!(
        args.iter().any(|a| a == "--kube"),
        "{src}: --kube in {args:?}"
    );
    assert_eq!(flag(args, "--ingress-class"), Some(CLASS), "{src}");
    assert_eq!(flag(args, "--election-id"), Some(ELECTION_ID), "{src}");
    let publish = format!("{NAMESPACE}/{CONTROLLER}");
    assert_eq!(
        flag(args, "--publish-service"),
        Some(publish.as_str()),
        "{src}"
    );
    r.service(CONTROLLER);
    // Requests show in `kubectl logs`, as with ingress-nginx.
    assert_eq!(flag(args, "--access-log"), Some("json"), "{src}: {args:?}");

    // The kubelet probes the pod IP, so the admin listener cannot stay on 127.0.0.1.
    let admin: SocketAddr = flag(args, "--admin-addr")
        .unwrap_or_else(|| panic!("{src}: --admin-addr in {args:?}"))
        .parse()
        .expect("--admin-addr is an address");
    assert!(
        admin.ip().is_unspecified(),
        "{src}: admin on all addresses: {admin}"
    );
    assert_eq!(i32::from(admin.port()), ADMIN_PORT, "{src}");
    let ports: BTreeMap<i32, Option<&str>> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.container_port, p.name.as_deref()))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            (8080, Some("http")),
            (8443, Some("https")),
            (ADMIN_PORT, Some("admin"))
        ]),
        "{src}: container ports"
    );

    let probe = |p: Option<&k8s_openapi::api::core::v1::Probe>, what: &str| {
        let get = p
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{src}: {what} is an HTTP GET"));
        (get.path.clone().unwrap_or_default(), resolve(c, &get.port))
    };
    assert_eq!(
        probe(c.readiness_probe.as_ref(), "readiness"),
        ("/readyz".to_owned(), ADMIN_PORT),
        "{src}: readiness"
    );
    assert_eq!(
        probe(c.liveness_probe.as_ref(), "liveness"),
        ("/healthz".to_owned(), ADMIN_PORT),
        "{src}: liveness"
    );
    if c.startup_probe.is_some() {
        assert_eq!(
            probe(c.startup_probe.as_ref(), "startup").1,
            ADMIN_PORT,
            "{src}: startup"
        );
    }

    // Replicas prefer (or require) different nodes.
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .unwrap_or_else(|| panic!("{src}: pod anti-affinity"));
    let terms = anti
        .required_during_scheduling_ignored_during_execution
        .iter()
        .flatten()
        .chain(
            anti.preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|w| &w.pod_affinity_term),
        );
    let mut spread = false;
    for t in terms {
        spread |= t.topology_key == "kubernetes.io/hostname"
            && t.label_selector
                .as_ref()
                .is_some_and(|s| selects(s, &labels));
    }
    assert!(spread, "{src}: anti-affinity across nodes on its own pods");

    // Disruptions leave one replica serving.
    let pdb = r
        .pdbs
        .iter()
        .find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| selects(s, &labels))
        })
        .unwrap_or_else(|| panic!("{src}: a PodDisruptionBudget for the controller"));
    assert_eq!(
        pdb.spec.as_ref().and_then(|s| s.min_available.clone()),
        Some(IntOrString::Int(1)),
        "{src}: minAvailable"
    );

    // The Service reaches the controller's pods (and only them) on 80 and 443.
    let service = r.service(CONTROLLER).spec.as_ref().expect("Service spec");
    let selector = LabelSelector {
        match_labels: service.selector.clone(),
        ..LabelSelector::default()
    };
    assert!(
        service.selector.as_ref().is_some_and(|s| !s.is_empty()),
        "{src}: selector"
    );
    assert!(
        selects(&selector, &labels),
        "{src}: Service selects the controller"
    );
    let webhook_labels = pod_labels(r.deployment(WEBHOOK));
    assert!(
        !selects(&selector, &webhook_labels),
        "{src}: Service must not send traffic to webhook pods"
    );
    let mapped: BTreeMap<i32, i32> = service
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
            (p.port, resolve(c, &target))
        })
        .collect();
    assert_eq!(
        mapped,
        BTreeMap::from([(80, 8080), (443, 8443)]),
        "{src}: Service ports"
    );
}

/// Non-root, read-only root filesystem, no capabilities, no privilege escalation, the runtime's
/// seccomp profile, and requests and limits, for every container of `d`.
fn check_hardened(r: &Rendered, d: &Deployment) {
    let at = format!("{}: Deployment {}", r.source, name(d));
    let pod = pod_spec(d);
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    assert_ne!(pod.host_pid, Some(true), "{at}");
    assert_ne!(pod.host_ipc, Some(true), "{at}");
    let account = pod.service_account_name.as_deref().unwrap_or("default");
    assert!(
        r.service_accounts.iter().any(|s| name(s) == account),
        "{at}: ServiceAccount {account} exists"
    );
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
        assert_eq!(non_root, Some(true), "{at}/{}: runAsNonRoot", c.name);
        let user = sc.run_as_user.or(pod_sc.run_as_user);
        assert_ne!(user, Some(0), "{at}/{}: runAsUser", c.name);
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{at}/{}: readOnlyRootFilesystem",
            c.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{at}/{}: allowPrivilegeEscalation",
            c.name
        );
        assert_ne!(sc.privileged, Some(true), "{at}/{}", c.name);
        let caps = sc.capabilities.clone().unwrap_or_default();
        assert!(
            caps.drop.iter().flatten().any(|c| c == "ALL"),
            "{at}/{}: drops ALL capabilities",
            c.name
        );
        assert!(
            caps.add.iter().flatten().next().is_none(),
            "{at}/{}: adds no capability",
            c.name
        );
        let seccomp = sc
            .seccomp_profile
            .or(pod_sc.seccomp_profile.clone())
            .map(|s| s.type_);
        assert_eq!(
            seccomp.as_deref(),
            Some("RuntimeDefault"),
            "{at}/{}: seccomp",
            c.name
        );
        let resources = c.resources.clone().unwrap_or_default();
        for (what, set) in [
            ("requests", resources.requests),
            ("limits", resources.limits),
        ] {
            let set = set.unwrap_or_default();
            for r in ["cpu", "memory"] {
                assert!(set.contains_key(r), "{at}/{}: {what}.{r}", c.name);
            }
        }
    }
}

fn check_ingress_class(r: &Rendered) {
    let src = &r.source;
    let class = find(&r.ingress_classes, CLASS, "IngressClass", src);
    let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
    assert_eq!(
        controller,
        Some(CONTROLLER_NAME),
        "{src}: IngressClass controller"
    );
    // The controller recognises the class by that value: its flag, or the same default.
    let args = pod_spec(r.deployment(CONTROLLER)).containers[0]
        .args
        .as_deref()
        .unwrap_or_default();
    assert_eq!(
        flag(args, "--controller-name").unwrap_or(CONTROLLER_NAME),
        CONTROLLER_NAME,
        "{src}"
    );
}

fn webhook(r: &Rendered) -> &ValidatingWebhook {
    let src = &r.source;
    assert_eq!(
        r.webhook_configs.len(),
        1,
        "{src}: one ValidatingWebhookConfiguration"
    );
    let hooks = r.webhook_configs[0].webhooks.as_deref().unwrap_or_default();
    assert_eq!(hooks.len(), 1, "{src}: one webhook");
    &hooks[0]
}

/// The API server can reach the webhook: configuration -> Service -> webhook pods' port ->
/// `wasmgress webhook --addr`, with the certificate from a mounted Secret.
fn check_webhook(r: &Rendered) -> Wiring {
    let src = &r.source;
    let w = webhook(r);
    let rules = w.rules.as_deref().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{src}: one rule");
    let rule = &rules[0];
    let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    assert_eq!(list(&rule.api_groups), ["networking.k8s.io"], "{src}");
    assert_eq!(list(&rule.api_versions), ["v1"], "{src}");
    assert_eq!(list(&rule.resources), ["ingresses"], "{src}");
    let operations: BTreeSet<String> = list(&rule.operations).into_iter().collect();
    assert_eq!(
        operations,
        ["CREATE", "UPDATE"].map(String::from).into(),
        "{src}"
    );
    assert_eq!(w.side_effects, "None", "{src}: sideEffects");
    assert_eq!(w.admission_review_versions, ["v1"], "{src}");
    assert_eq!(
        w.failure_policy.as_deref(),
        Some("Ignore"),
        "{src}: failurePolicy"
    );
    let timeout = w.timeout_seconds.unwrap_or(10);
    assert!(
        (3..=30).contains(&timeout),
        "{src}: timeoutSeconds {timeout}: above the webhook's 2 s budget, within the API's 30"
    );
    for m in w.match_conditions.iter().flatten() {
        assert!(
            m.expression.contains(&format!("'{CLASS}'")),
            "{src}: matchCondition {} follows the class name",
            m.name
        );
    }

    assert_eq!(
        w.client_config.url, None,
        "{src}: reached through its Service"
    );
    let service_ref = w
        .client_config
        .service
        .as_ref()
        .unwrap_or_else(|| panic!("{src}: clientConfig.service"));
    assert_eq!(service_ref.namespace, NAMESPACE, "{src}");
    let service = r.service(&service_ref.name);
    let spec = service.spec.as_ref().expect("Service spec");
    assert_eq!(
        spec.type_.as_deref().unwrap_or("ClusterIP"),
        "ClusterIP",
        "{src}: internal only"
    );
    let port = service_ref.port.unwrap_or(443);
    let service_port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("{src}: Service {} has port {port}", service_ref.name));

    let d = r.deployment(WEBHOOK);
    let labels = pod_labels(d);
    let selector = LabelSelector {
        match_labels: spec.selector.clone(),
        ..LabelSelector::default()
    };
    assert!(
        spec.selector.as_ref().is_some_and(|s| !s.is_empty()) && selects(&selector, &labels),
        "{src}: the webhook Service selects the webhook pods"
    );
    assert!(
        !selects(&selector, &pod_labels(r.deployment(CONTROLLER))),
        "{src}: and not the controller's"
    );
    let pod = pod_spec(d);
    assert_eq!(pod.containers.len(), 1, "{src}: one webhook container");
    let c = &pod.containers[0];
    let target = service_port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(port));
    let container_port = resolve(c, &target);

    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("webhook"),
        "{src}: {args:?}"
    );
    let addr: SocketAddr = flag(args, "--addr")
        .unwrap_or_else(|| panic!("{src}: --addr in {args:?}"))
        .parse()
        .expect("--addr is an address");
    assert!(
        addr.ip().is_unspecified(),
        "{src}: webhook on all addresses"
    );
    assert_eq!(
        i32::from(addr.port()),
        container_port,
        "{src}: the Service's target is the port the webhook listens on"
    );
    assert_eq!(container_port, 8444, "{src}");

    // --tls-cert and --tls-key are the two keys of one mounted kubernetes.io/tls Secret.
    let mut secrets = BTreeSet::new();
    for (flag_name, key) in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")] {
        let file = Path::new(
            flag(args, flag_name).unwrap_or_else(|| panic!("{src}: {flag_name} in {args:?}")),
        );
        assert_eq!(
            file.file_name().and_then(|f| f.to_str()),
            Some(key),
            "{src}: {flag_name}"
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Some(Path::new(&m.mount_path)) == file.parent())
            .unwrap_or_else(|| panic!("{src}: a volume is mounted at {}", file.display()));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("{src}: volume {}", mount.name));
        let secret = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .unwrap_or_else(|| panic!("{src}: volume {} is a Secret", mount.name));
        secrets.insert(secret);
    }
    assert_eq!(secrets.len(), 1, "{src}: one Secret: {secrets:?}");
    Wiring {
        secret_name: secrets.pop_first().expect("one"),
        server_name: format!("{}.{}.svc", service_ref.name, service_ref.namespace),
    }
}

// ---- RBAC -------------------------------------------------------------------------------------

/// One permission: `verb` on `group`/`resource`, cluster-wide (`namespace` None) or in one
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    namespace: Option<String>,
    group: String,
    resource: String,
    verb: String,
}

/// `resourceNames` a grant is limited to; None means every object.
type Names = Option<BTreeSet<String>>;

fn check_rbac(r: &Rendered) {
    let src = &r.source;
    // No wildcards, no non-resource URLs, no aggregation anywhere.
    let roles = r
        .cluster_roles
        .iter()
        .map(|c| (name(c), c.rules.as_deref(), c.aggregation_rule.is_some()))
        .chain(r.roles.iter().map(|c| (name(c), c.rules.as_deref(), false)));
    for (role, rules, aggregated) in roles {
        assert!(!aggregated, "{src}: {role} aggregates other roles");
        for rule in rules.unwrap_or_default() {
            let lists = [
                ("verbs", Some(&rule.verbs)),
                ("resources", rule.resources.as_ref()),
                ("apiGroups", rule.api_groups.as_ref()),
                ("resourceNames", rule.resource_names.as_ref()),
            ];
            for (what, list) in lists {
                assert!(
                    !list.into_iter().flatten().any(|v| v.contains('*')),
                    "{src}: {role} grants `*` in {what}: {rule:?}"
                );
            }
            assert!(
                rule.non_resource_urls.is_none(),
                "{src}: {role} grants non-resource URLs"
            );
        }
    }

    let read = ["list", "watch"];
    let cluster: Option<&str> = None;
    let ns = Some(NAMESPACE);
    let controller = expected(&[
        (cluster, "networking.k8s.io", "ingresses", &read),
        (cluster, "networking.k8s.io", "ingressclasses", &read),
        (cluster, "", "services", &read),
        (cluster, "discovery.k8s.io", "endpointslices", &read),
        (cluster, "", "secrets", &read),
        (cluster, "", "configmaps", &read),
        (
            cluster,
            "networking.k8s.io",
            "ingresses/status",
            &["get", "update", "patch"],
        ),
        (cluster, "", "events", &["create", "patch"]),
        (cluster, "events.k8s.io", "events", &["create", "patch"]),
        (
            ns,
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ),
    ]);
    let account = pod_spec(r.deployment(CONTROLLER))
        .service_account_name
        .clone()
        .unwrap_or_default();
    let granted = grants(r, &account);
    assert_same(src, "controller", &granted, &controller);
    // Leader election touches only its own Lease (create cannot be limited by name).
    for (grant, names) in &granted {
        let limited = grant.resource == "leases" && grant.verb != "create";
        let want: Names = limited.then(|| BTreeSet::from([ELECTION_ID.to_owned()]));
        assert_eq!(names, &want, "{src}: resourceNames of {grant:?}");
    }

    let webhook = expected(&[
        (cluster, "networking.k8s.io", "ingresses", &read),
        (cluster, "networking.k8s.io", "ingressclasses", &read),
        (cluster, "", "services", &read),
        (cluster, "discovery.k8s.io", "endpointslices", &read),
        (cluster, "", "secrets", &read),
        (cluster, "", "configmaps", &read),
    ]);
    let account = pod_spec(r.deployment(WEBHOOK))
        .service_account_name
        .clone()
        .unwrap_or_default();
    assert_ne!(account, "", "{src}: the webhook has its own ServiceAccount");
    let granted = grants(r, &account);
    assert_same(src, "webhook", &granted, &webhook);
    assert!(
        granted.values().all(Option::is_none),
        "{src}: webhook resourceNames"
    );
}

fn expected(rows: &[(Option<&str>, &str, &str, &[&str])]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (namespace, group, resource, verbs) in rows {
        for verb in *verbs {
            out.insert(Grant {
                namespace: namespace.map(str::to_owned),
                group: (*group).to_owned(),
                resource: (*resource).to_owned(),
                verb: (*verb).to_owned(),
            });
        }
    }
    out
}

fn assert_same(src: &str, who: &str, granted: &BTreeMap<Grant, Names>, want: &BTreeSet<Grant>) {
    let have: BTreeSet<Grant> = granted.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{src}: {who} RBAC is not exactly what it uses\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
}

/// Everything the ServiceAccount `account` of our namespace may do, through every binding.
fn grants(r: &Rendered, account: &str) -> BTreeMap<Grant, Names> {
    let src = &r.source;
    let mut out = BTreeMap::new();
    let bound = |subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>, at: &str| {
        let mut hit = false;
        for s in subjects.into_iter().flatten() {
            assert_eq!(
                s.kind, "ServiceAccount",
                "{src}: {at} binds only ServiceAccounts"
            );
            assert_eq!(
                s.namespace.as_deref(),
                Some(NAMESPACE),
                "{src}: {at} subject"
            );
            assert!(
                r.service_accounts.iter().any(|a| name(a) == s.name),
                "{src}: {at} binds a missing ServiceAccount {}",
                s.name
            );
            hit |= s.name == account;
        }
        hit
    };
    for b in &r.cluster_role_bindings {
        if !bound(b.subjects.as_ref(), name(b)) {
            continue;
        }
        assert_eq!(b.role_ref.kind, "ClusterRole", "{src}: {}", name(b));
        let role = find(&r.cluster_roles, &b.role_ref.name, "ClusterRole", src);
        add_rules(&mut out, None, role.rules.as_deref().unwrap_or_default());
    }
    for b in &r.role_bindings {
        if !bound(b.subjects.as_ref(), name(b)) {
            continue;
        }
        let namespace = b.metadata.namespace.clone();
        let rules = match b.role_ref.kind.as_str() {
            "Role" => find(&r.roles, &b.role_ref.name, "Role", src)
                .rules
                .as_deref(),
            "ClusterRole" => find(&r.cluster_roles, &b.role_ref.name, "ClusterRole", src)
                .rules
                .as_deref(),
            other => panic!("{src}: {} refers to a {other}", name(b)),
        };
        add_rules(&mut out, namespace, rules.unwrap_or_default());
    }
    out
}

fn add_rules(out: &mut BTreeMap<Grant, Names>, namespace: Option<String>, rules: &[PolicyRule]) {
    for rule in rules {
        let names: Names = rule
            .resource_names
            .as_ref()
            .filter(|n| !n.is_empty())
            .map(|n| n.iter().cloned().collect());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let grant = Grant {
                        namespace: namespace.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                    };
                    // Unlimited wins over limited; two limited grants add up.
                    let merged = match (out.remove(&grant), &names) {
                        (None, names) => names.clone(),
                        (Some(None), _) | (Some(Some(_)), None) => None,
                        (Some(Some(mut had)), Some(more)) => {
                            had.extend(more.iter().cloned());
                            Some(had)
                        }
                    };
                    out.insert(grant, merged);
                }
            }
        }
    }
}

// ---- small helpers ----------------------------------------------------------------------------

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .unwrap_or_else(|| panic!("Deployment {} has a pod spec", name(d)))
}

/// The pod template's labels, after checking the Deployment's selector matches them.
fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    let spec = d.spec.as_ref().expect("Deployment spec");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        selects(&spec.selector, &labels),
        "Deployment {}: its selector matches its pods",
        name(d)
    );
    labels
}

/// Whether `selector` (matchLabels only; matchExpressions are not used here) selects `labels`.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "matchExpressions are not checked here"
    );
    let wanted = selector.match_labels.clone().unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container port by number, or by the name of one of `c`'s ports.
fn resolve(c: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(named) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(named.as_str()))
                .unwrap_or_else(|| panic!("container {} has no port named {named}", c.name))
                .container_port
        }
    }
}

/// The value of `--name value` or `--name=value`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&prefix)
        }
    })
}

fn pod_security(r: &Rendered) -> Option<&str> {
    r.namespaces[0]
        .metadata
        .labels
        .as_ref()?
        .get("pod-security.kubernetes.io/enforce")
        .map(String::as_str)
}

/// A TLS handshake, in memory, between a server presenting `cert`/`key` and a client that trusts
/// only `ca` and dials `server_name`: what the API server does when it calls the webhook.
fn handshake(ca: &[u8], cert: &[u8], key: &[u8], server_name: &str) -> Result<(), String> {
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut &ca[..]) {
        roots
            .add(ca.map_err(|e| format!("caBundle: {e}"))?)
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    let client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let chain = rustls_pemfile::certs(&mut &cert[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    let key = rustls_pemfile::private_key(&mut &key[..])
        .map_err(|e| format!("tls.key: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.crt/tls.key: {e}"))?;

    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let mut client = ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
    let mut server = ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        let mut wire = Vec::new();
        client.write_tls(&mut wire).map_err(|e| e.to_string())?;
        let mut rest = &wire[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest).map_err(|e| e.to_string())?;
            server
                .process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        wire.clear();
        server.write_tls(&mut wire).map_err(|e| e.to_string())?;
        let mut rest = &wire[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).map_err(|e| e.to_string())?;
            client
                .process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
    }
    Err("the handshake did not finish".to_owned())
}

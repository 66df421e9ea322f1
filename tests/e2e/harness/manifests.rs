//! Kubernetes objects as JSON values, and the folder of manifests a test hands the binary.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::yaml;

/// The namespace objects live in unless a test says otherwise.
pub const NS: &str = "default";
/// The ingress class the binary serves by default.
pub const CLASS: &str = "wasmgress";
/// The controller name an IngressClass must carry to be ours.
pub const CONTROLLER: &str = "wasmgress.io/ingress-controller";

/// A temporary folder of manifests, watched by the binary under test.
pub struct Manifests {
    dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wasmgress-e2e-")
            .tempdir()
            .expect("create a temporary manifests folder");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The absolute path of `rel` inside the folder.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `docs` as one multi-document YAML file at `rel` (folders are created). The file
    /// is replaced atomically (written beside it under a name the binary ignores, then renamed),
    /// so the watcher never sees it half-written.
    pub fn write(&self, rel: &str, docs: &[Value]) {
        self.write_text(rel, &yaml::documents(docs));
    }

    /// Writes raw text at `rel`, atomically as [`Manifests::write`] does.
    pub fn write_text(&self, rel: &str, text: &str) {
        let path = self.file(rel);
        let parent = path.parent().expect("manifest path has a parent");
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create folder {}: {e}", parent.display()));
        let tmp = parent.join(format!(
            ".{}.tmp",
            path.file_name().expect("file name").to_string_lossy()
        ));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("rename {} into place: {e}", path.display()));
    }

    pub fn remove(&self, rel: &str) {
        let path = self.file(rel);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// How an Ingress backend or Service port names its port.
#[derive(Clone, Copy, Debug)]
pub enum Port<'a> {
    Number(u16),
    Name(&'a str),
}

impl Port<'_> {
    fn backend_json(self) -> Value {
        match self {
            Port::Number(n) => json!({ "number": n }),
            Port::Name(name) => json!({ "name": name }),
        }
    }

    fn target_json(self) -> Value {
        match self {
            Port::Number(n) => json!(n),
            Port::Name(name) => json!(name),
        }
    }
}

/// One entry of `spec.rules[].http.paths`.
#[derive(Clone, Debug)]
pub struct PathRule {
    pub path: String,
    pub path_type: &'static str,
    pub service: String,
    /// The Service port, by number (80 unless changed) or, when set, by name.
    pub port: u16,
    pub port_name: Option<String>,
}

pub fn prefix(path: &str, service: &str) -> PathRule {
    path_rule(path, "Prefix", service)
}

pub fn exact(path: &str, service: &str) -> PathRule {
    path_rule(path, "Exact", service)
}

pub fn implementation_specific(path: &str, service: &str) -> PathRule {
    path_rule(path, "ImplementationSpecific", service)
}

fn path_rule(path: &str, path_type: &'static str, service: &str) -> PathRule {
    PathRule {
        path: path.to_owned(),
        path_type,
        service: service.to_owned(),
        port: 80,
        port_name: None,
    }
}

impl PathRule {
    /// The same rule with another Service port number.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The same rule naming the Service port instead.
    pub fn port_name(mut self, name: &str) -> Self {
        self.port_name = Some(name.to_owned());
        self
    }

    fn json(&self) -> Value {
        let port = match &self.port_name {
            Some(name) => Port::Name(name),
            None => Port::Number(self.port),
        };
        json!({
            "path": self.path,
            "pathType": self.path_type,
            "backend": { "service": { "name": self.service, "port": port.backend_json() } },
        })
    }
}

/// A networking.k8s.io/v1 Ingress under construction; [`Ingress::build`] gives the object.
#[derive(Clone, Debug)]
pub struct Ingress {
    doc: Value,
}

impl Ingress {
    /// An Ingress in [`NS`] with `spec.ingressClassName: wasmgress`.
    pub fn new(name: &str) -> Self {
        Self {
            doc: json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": { "name": name, "namespace": NS },
                "spec": { "ingressClassName": CLASS },
            }),
        }
    }

    fn spec(&mut self) -> &mut serde_json::Map<String, Value> {
        self.doc["spec"].as_object_mut().expect("spec is an object")
    }

    fn metadata(&mut self) -> &mut serde_json::Map<String, Value> {
        self.doc["metadata"]
            .as_object_mut()
            .expect("metadata is an object")
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.metadata().insert("namespace".into(), json!(ns));
        self
    }

    /// Sets `spec.ingressClassName` (`None` removes it).
    pub fn class(mut self, class: Option<&str>) -> Self {
        match class {
            Some(c) => self.spec().insert("ingressClassName".into(), json!(c)),
            None => self.spec().remove("ingressClassName"),
        };
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        let meta = self.metadata();
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        annotations[key] = json!(value);
        self
    }

    pub fn created(mut self, rfc3339: &str) -> Self {
        self.metadata()
            .insert("creationTimestamp".into(), json!(rfc3339));
        self
    }

    /// Adds a rule; `host: None` is a rule without host.
    pub fn rule(mut self, host: Option<&str>, paths: &[PathRule]) -> Self {
        let mut rule =
            json!({ "http": { "paths": paths.iter().map(PathRule::json).collect::<Vec<_>>() } });
        if let Some(h) = host {
            rule["host"] = json!(h);
        }
        let rules = self.spec().entry("rules").or_insert_with(|| json!([]));
        rules.as_array_mut().expect("rules is a list").push(rule);
        self
    }

    pub fn default_backend(mut self, service: &str, port: Port<'_>) -> Self {
        self.spec().insert(
            "defaultBackend".into(),
            json!({ "service": { "name": service, "port": port.backend_json() } }),
        );
        self
    }

    pub fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        let tls = self.spec().entry("tls").or_insert_with(|| json!([]));
        tls.as_array_mut()
            .expect("tls is a list")
            .push(json!({ "hosts": hosts, "secretName": secret }));
        self
    }

    pub fn build(self) -> Value {
        self.doc
    }
}

/// An IngressClass `name` with controller `controller`, optionally marked the default class.
pub fn ingress_class(name: &str, controller: &str, default: bool) -> Value {
    let mut doc = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": { "name": name },
        "spec": { "controller": controller },
    });
    if default {
        doc["metadata"]["annotations"] =
            json!({ "ingressclass.kubernetes.io/is-default-class": "true" });
    }
    doc
}

/// One port of a Service: `name` (optional), `port`, `targetPort`.
#[derive(Clone, Copy, Debug)]
pub struct ServicePort<'a> {
    pub name: Option<&'a str>,
    pub port: u16,
    pub target: Port<'a>,
}

/// A ClusterIP Service in `ns`.
pub fn service(ns: &str, name: &str, ports: &[ServicePort<'_>]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v =
                json!({ "port": p.port, "protocol": "TCP", "targetPort": p.target.target_json() });
            if let Some(n) = p.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "type": "ClusterIP", "ports": ports },
    })
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    pub ip: &'a str,
    pub ready: bool,
}

pub fn ready(ip: &str) -> Endpoint<'_> {
    Endpoint { ip, ready: true }
}

pub fn not_ready(ip: &str) -> Endpoint<'_> {
    Endpoint { ip, ready: false }
}

/// An EndpointSlice `slice` of Service `service` in `ns`: `ports` are (name, number) pairs.
pub fn endpoint_slice(
    ns: &str,
    service: &str,
    slice: &str,
    ports: &[(Option<&str>, u16)],
    endpoints: &[Endpoint<'_>],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port)| {
            let mut v = json!({ "port": port, "protocol": "TCP" });
            if let Some(n) = name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| json!({ "addresses": [e.ip], "conditions": { "ready": e.ready } }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice,
            "namespace": ns,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// Legacy v1 Endpoints of Service `service`: one subset with `ips` and `ports`.
pub fn legacy_endpoints(
    ns: &str,
    service: &str,
    ips: &[&str],
    ports: &[(Option<&str>, u16)],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port)| {
            let mut v = json!({ "port": port, "protocol": "TCP" });
            if let Some(n) = name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": { "name": service, "namespace": ns },
        "subsets": [{ "addresses": addresses, "ports": ports }],
    })
}

/// A `kubernetes.io/tls` Secret from PEM texts, either base64 `data` or plain `stringData`.
pub fn tls_secret(ns: &str, name: &str, cert_pem: &str, key_pem: &str, string_data: bool) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut doc = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "type": "kubernetes.io/tls",
    });
    if string_data {
        doc["stringData"] = json!({ "tls.crt": cert_pem, "tls.key": key_pem });
    } else {
        doc["data"] = json!({ "tls.crt": b64(cert_pem), "tls.key": b64(key_pem) });
    }
    doc
}

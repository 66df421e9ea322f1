//! One AdmissionReview in, one AdmissionReview out: the webhook's decision, with no I/O.
//!
//! Owns reading the review (leniently: only the fields a decision needs), turning the
//! submitted object into a typed Ingress (a malformed one is denied with the field path),
//! placing it into a copy of the current snapshot, running the controller's own compile on it,
//! and phrasing compile's diagnostics about that Ingress as the API server wants them. It must
//! not change the view it is given, nor any registry shared with other compiles: each review
//! compiles with throwaway upstream clients and route statistics. Deadlines are the caller's
//! (see the parent module); everything here is linear in the size of the review.

use std::collections::HashSet;

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;
use serde_json::{Value, json};

use super::View;
use crate::compile::{self, LastGood, Options};
use crate::diagnostic::{Diagnostic, Severity};
use crate::metrics::RouteStatsRegistry;
use crate::source::{Snapshot, Sourced};
use crate::upstream::Upstreams;

/// The only AdmissionReview version the webhook is registered for (deploy/base/webhook.yaml).
pub const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// The API server truncates warnings over 256 characters and drops some of a long list, so
/// we clip them ourselves and keep the list short enough to be read in a terminal.
const MAX_WARNINGS: usize = 8;
const MAX_WARNING_CHARS: usize = 256;
/// A denial lists this many errors, each clipped: a hostile object with thousands of broken
/// paths (or a diagnostic echoing a huge annotation value) must not produce a huge answer.
const MAX_ERRORS: usize = 20;
const MAX_ERROR_CHARS: usize = 512;

/// Name used for an Ingress created with `generateName`: the API server asks before it has
/// picked the name.
const GENERATED_NAME: &str = "(generated)";

/// A body that is not an AdmissionReview v1 request: answered with HTTP 400, after which the
/// API server applies the webhook's failurePolicy.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("not an AdmissionReview: {0}")]
    Json(String),
    #[error("apiVersion {0:?} is not {API_VERSION}, the only version this webhook answers")]
    Version(String),
    #[error("kind {0:?} is not {KIND}")]
    Kind(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("request.object is missing from a {0} review")]
    NoObject(&'static str),
}

/// What the webhook answers: allowed (maybe with warnings) or denied with a status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub denial: Option<Denial>,
    /// Shown by kubectl as `Warning: ...`, whether allowed or denied.
    pub warnings: Vec<String>,
}

/// The `status` of a denied review (a `metav1.Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn allow() -> Self {
        Self::default()
    }

    /// The object is not acceptable (HTTP 422 Unprocessable Entity, reason `Invalid`, as for
    /// the API server's own validation).
    pub fn invalid(message: String) -> Self {
        Self {
            denial: Some(Denial {
                code: 422,
                reason: "Invalid",
                message,
            }),
            warnings: Vec::new(),
        }
    }

    /// The compile did not finish in time; the issue asks for a denial rather than a pass.
    pub fn timed_out() -> Self {
        Self {
            denial: Some(Denial {
                code: 504,
                reason: "Timeout",
                message: "validation did not finish within 2 s".into(),
            }),
            warnings: Vec::new(),
        }
    }

    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }
}

/// A review read far enough to answer it: its uid and what is left to do.
#[derive(Debug)]
pub struct Parsed {
    pub uid: String,
    pub work: Work,
}

#[derive(Debug)]
pub enum Work {
    /// Decided without compiling (not an Ingress, not a create or update, a subresource).
    Done(Verdict),
    /// An Ingress to compile: the slow part, run by the caller under a deadline.
    Judge(Candidate),
}

/// The submitted Ingress, still untyped, and what the request says about it.
#[derive(Debug)]
pub struct Candidate {
    object: Value,
    create: bool,
    /// `request.name`: empty for a create with `generateName`.
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<WireRequest>,
}

/// Only what a decision needs; the rest (userInfo, oldObject, options) is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    uid: String,
    kind: Gvk,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    /// Anything a later API server might add is not ours to judge.
    #[serde(other)]
    Other,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other => "other",
        }
    }
}

/// Reads a review body. Cheap (one linear JSON parse); the object stays untyped until [`judge`].
pub fn parse(body: &[u8]) -> Result<Parsed, BadReview> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let review: WireReview = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| BadReview::Json(with_path(&e.path().to_string(), &e.inner().to_string())))?;
    de.end().map_err(|e| BadReview::Json(e.to_string()))?;
    if review.api_version != API_VERSION {
        return Err(BadReview::Version(review.api_version));
    }
    if review.kind != KIND {
        return Err(BadReview::Kind(review.kind));
    }
    let request = review.request.ok_or(BadReview::NoRequest)?;
    let is_ingress = request.kind.group == "networking.k8s.io"
        && request.kind.version == "v1"
        && request.kind.kind == "Ingress";
    // Status updates (the controller publishing its address) never change what is served.
    let subresource = request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let create = match request.operation {
        Operation::Create => true,
        Operation::Update => false,
        Operation::Delete | Operation::Connect | Operation::Other => {
            return Ok(done(request.uid));
        }
    };
    if !is_ingress || subresource {
        return Ok(done(request.uid));
    }
    let object = request
        .object
        .ok_or(BadReview::NoObject(request.operation.name()))?;
    Ok(Parsed {
        uid: request.uid,
        work: Work::Judge(Candidate {
            object,
            create,
            name: request.name,
            namespace: request.namespace,
        }),
    })
}

fn done(uid: String) -> Parsed {
    Parsed {
        uid,
        work: Work::Done(Verdict::allow()),
    }
}

/// Compiles the candidate against the view and says what compile says about it.
pub fn judge(candidate: Candidate, view: &View) -> Verdict {
    let mut ingress: Ingress = match serde_path_to_error::deserialize(candidate.object) {
        Ok(i) => i,
        Err(e) => {
            let why = with_path(&e.path().to_string(), &e.inner().to_string());
            return Verdict::invalid(clip(
                format!("the object is not a valid networking.k8s.io/v1 Ingress: {why}"),
                MAX_ERROR_CHARS,
            ));
        }
    };
    let meta = &mut ingress.metadata;
    // An Ingress on its way out (finalizers being removed) must never be held up by us.
    if meta.deletion_timestamp.is_some() {
        return Verdict::allow();
    }
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = candidate.namespace.filter(|n| !n.is_empty());
    }
    if meta.name.as_deref().is_none_or(str::is_empty) {
        meta.name = Some(if candidate.name.is_empty() {
            GENERATED_NAME.to_owned()
        } else {
            candidate.name
        });
    }
    // Compile gives precedence to the oldest Ingress. A create the API server has not stamped
    // yet is the newest of all; the latest representable time says so without reading a clock.
    if candidate.create && meta.creation_timestamp.is_none() {
        meta.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::MAX));
    }
    // The same question compile asks first; not ours means not ours to judge.
    if view
        .options
        .identity
        .claims(&ingress, &view.snapshot.ingress_classes)
        .is_err()
    {
        return Verdict::allow();
    }
    let (namespace, name) = ns_name(&ingress.metadata);
    let object = format!("Ingress {namespace}/{name}");

    let snapshot = with_candidate(&view.snapshot, ingress);
    // Throwaway registries: a review must not leave upstream clients or per-route counters
    // behind in shared state (a stream of hostile dry-runs would otherwise grow it forever).
    let options = Options {
        upstreams: Upstreams::new(),
        route_stats: RouteStatsRegistry::new(),
        limits: compile::LimitsRegistry::new(),
        ..Options::clone(&view.options)
    };
    let compiled = compile::compile(&snapshot, &options, &LastGood::default());
    phrase(&compiled.diagnostics, &object)
}

/// The AdmissionReview answering `uid`.
pub fn respond(uid: &str, verdict: &Verdict) -> Value {
    let mut response = json!({ "uid": uid, "allowed": verdict.allowed() });
    if let Some(d) = &verdict.denial {
        response["status"] = json!({
            "status": "Failure",
            "code": d.code,
            "reason": d.reason,
            "message": d.message,
        });
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings);
    }
    json!({ "apiVersion": API_VERSION, "kind": KIND, "response": response })
}

/// Parses, judges and answers one review, with no deadline: for tests and tools. The server
/// runs the same steps, with [`judge`] on a blocking thread under its deadline.
pub fn review(body: &[u8], view: &View) -> Result<Value, BadReview> {
    let parsed = parse(body)?;
    let verdict = match parsed.work {
        Work::Done(v) => v,
        Work::Judge(candidate) => judge(candidate, view),
    };
    Ok(respond(&parsed.uid, &verdict))
}

/// Errors deny (all of them, joined, without the origin: there are no files here); warnings
/// ride along. Infos are left out: they describe what would happen, not what to fix.
fn phrase(diagnostics: &[Diagnostic], object: &str) -> Verdict {
    let ours = || diagnostics.iter().filter(|d| d.object == object);
    let warnings: Vec<&Diagnostic> = ours().filter(|d| d.severity == Severity::Warning).collect();
    let all_errors: Vec<&Diagnostic> = ours().filter(|d| d.severity == Severity::Error).collect();
    // Compile closes a rejection with a summary for its log ("rejected; not serving"); the
    // user needs the reasons, so the summary is kept only if it is all there is.
    let reasons: Vec<&Diagnostic> = all_errors
        .iter()
        .copied()
        .filter(|d| !(d.field.is_empty() && d.message.starts_with("rejected;")))
        .collect();
    let errors = if reasons.is_empty() {
        all_errors
    } else {
        reasons
    };

    let mut verdict = if errors.is_empty() {
        Verdict::allow()
    } else {
        let mut parts: Vec<String> = errors
            .iter()
            .take(MAX_ERRORS)
            .map(|d| {
                let mut d = Diagnostic::clone(d);
                d.origin = None;
                clip(d.to_string(), MAX_ERROR_CHARS)
            })
            .collect();
        if errors.len() > MAX_ERRORS {
            parts.push(format!("and {} more errors", errors.len() - MAX_ERRORS));
        }
        Verdict::invalid(parts.join("; "))
    };

    let shown = if warnings.len() > MAX_WARNINGS {
        MAX_WARNINGS - 1
    } else {
        warnings.len()
    };
    verdict.warnings = warnings[..shown]
        .iter()
        // kubectl prints "Warning: " itself; the severity word would say it twice.
        .map(|d| clip(without_severity(d), MAX_WARNING_CHARS))
        .collect();
    if warnings.len() > shown {
        verdict.warnings.push(format!(
            "{object}: and {} more warnings (`wasmgress validate` lists them all)",
            warnings.len() - shown
        ));
    }
    verdict
}

fn without_severity(d: &Diagnostic) -> String {
    if d.field.is_empty() {
        format!("{}: {}", d.object, d.message)
    } else {
        format!("{}: {}: {}", d.object, d.field, d.message)
    }
}

/// The view's snapshot with the candidate in place of any Ingress of the same namespace/name,
/// cut down to what can produce a diagnostic about the candidate.
///
/// Compile judges each Ingress on its own, except for precedence: two Ingresses interact only
/// through a shared host (same host and path, different certificates for one host) or when
/// both have a default backend. So only those Ingresses come along, with the Services,
/// endpoints and Secrets of their namespaces (so they compile, and win, as they do in the
/// controller). Everything the candidate is told is then what a compile of the whole snapshot
/// would tell it, without the cost of compiling every Ingress in the cluster for each review.
/// The source's own problems are left out: they are about stored objects, not this one.
fn with_candidate(base: &Snapshot, candidate: Ingress) -> Snapshot {
    let key = {
        let (ns, name) = ns_name(&candidate.metadata);
        (ns.to_owned(), name.to_owned())
    };
    let hosts: HashSet<String> = hosts_of(&candidate).collect();
    let candidate_default = has_default_backend(&candidate);

    let mut namespaces: HashSet<String> = HashSet::from([key.0.clone()]);
    let mut ingresses = Vec::new();
    for s in &base.ingresses {
        let (ns, name) = ns_name(&s.object.metadata);
        if (ns, name) == (key.0.as_str(), key.1.as_str()) {
            continue;
        }
        let related = (candidate_default && has_default_backend(&s.object))
            || hosts_of(&s.object).any(|h| hosts.contains(&h));
        if related {
            namespaces.insert(ns.to_owned());
            ingresses.push(s.clone());
        }
    }
    ingresses.push(Sourced {
        origin: None,
        object: candidate,
    });

    fn in_namespaces<T: k8s_openapi::Metadata<Ty = ObjectMeta> + Clone>(
        objects: &[Sourced<T>],
        namespaces: &HashSet<String>,
    ) -> Vec<Sourced<T>> {
        objects
            .iter()
            .filter(|s| namespaces.contains(ns_name(s.object.metadata()).0))
            .cloned()
            .collect()
    }
    Snapshot {
        ingresses,
        ingress_classes: base.ingress_classes.clone(),
        services: in_namespaces(&base.services, &namespaces),
        endpoint_slices: in_namespaces(&base.endpoint_slices, &namespaces),
        endpoints: in_namespaces(&base.endpoints, &namespaces),
        secrets: in_namespaces(&base.secrets, &namespaces),
        ..Snapshot::default()
    }
}

/// Every host an Ingress's routes or certificates can use, lowercased as compile compares
/// them; `""` for rules without a host (they all share the catch-all host).
fn hosts_of(ingress: &Ingress) -> impl Iterator<Item = String> + '_ {
    let spec = ingress.spec.as_ref();
    let rules = spec
        .and_then(|s| s.rules.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|r| r.host.as_deref().unwrap_or("").to_ascii_lowercase());
    let tls = spec
        .and_then(|s| s.tls.as_deref())
        .unwrap_or_default()
        .iter()
        .flat_map(|t| t.hosts.as_deref().unwrap_or_default())
        .map(|h| h.to_ascii_lowercase());
    rules.chain(tls)
}

fn has_default_backend(ingress: &Ingress) -> bool {
    ingress
        .spec
        .as_ref()
        .is_some_and(|s| s.default_backend.is_some())
}

/// Namespace and name the way compile reads them.
fn ns_name(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

fn with_path(path: &str, why: &str) -> String {
    if path == "." {
        why.to_owned()
    } else {
        format!("{path}: {why}")
    }
}

/// At most `max` (≥ 1) characters, the last one `…` when something was cut. Walks at most
/// `max + 1` characters, however long the text.
fn clip(mut text: String, max: usize) -> String {
    let mut starts = text.char_indices().map(|(i, _)| i);
    if let (Some(cut), Some(_)) = (starts.nth(max.saturating_sub(1)), starts.next()) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, OnceLock};

    use serde::de::DeserializeOwned;

    use super::*;
    use crate::compile::Identity;
    use crate::plugin;
    use crate::route::Policy;

    pub const SNIPPET: &str = "nginx.ingress.kubernetes.io/configuration-snippet";

    /// Compile options as `main` builds them, with the built-in plugins (compiled once per
    /// test process).
    pub fn options() -> Arc<Options> {
        static OPTIONS: OnceLock<Arc<Options>> = OnceLock::new();
        OPTIONS
            .get_or_init(|| {
                let plugins = plugin::Registry::with_builtins(plugin::RuntimeConfig::default())
                    .expect("built-in plugins load");
                Arc::new(Options {
                    identity: Identity {
                        class: "wasmgress".into(),
                        controller: "wasmgress.io/ingress-controller".into(),
                    },
                    defaults: Policy::default(),
                    default_certificate: Arc::new(
                        crate::tls::default_certificate().expect("default certificate"),
                    ),
                    upstreams: Upstreams::new(),
                    plugins: Arc::new(plugins),
                    route_stats: RouteStatsRegistry::new(),
                    default_backend_service: None,
                    allow_cross_namespace_resources: false,
                    limits: compile::LimitsRegistry::new(),
                    global_auth: None,
                    no_auth_locations: std::sync::Arc::from([]),
                    endpoint_guard: None,
                })
            })
            .clone()
    }

    fn sourced<T: DeserializeOwned>(value: Value) -> Sourced<T> {
        Sourced {
            origin: Some("stored.yaml".into()),
            object: serde_json::from_value(value).expect("a valid object"),
        }
    }

    /// A view holding Service `web` (one ready endpoint) in `default`, plus `ingresses`.
    pub fn view(ingresses: Vec<Value>) -> View {
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        });
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080}],
        });
        let snapshot = Snapshot {
            ingresses: ingresses.into_iter().map(sourced).collect(),
            services: vec![sourced(service)],
            endpoint_slices: vec![sourced(slice)],
            ..Snapshot::default()
        };
        View {
            snapshot: Arc::new(snapshot),
            options: options(),
        }
    }

    /// An Ingress of class wasmgress in `default`: `host` `path` -> `service`:80.
    pub fn ingress(name: &str, host: &str, path: &str, service: &str) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "ingressClassName": "wasmgress",
                "rules": [{"host": host, "http": {"paths": [{
                    "path": path, "pathType": "Prefix",
                    "backend": {"service": {"name": service, "port": {"number": 80}}},
                }]}}],
            },
        })
    }

    pub fn annotate(mut ingress: Value, key: &str, value: &str) -> Value {
        ingress["metadata"]["annotations"][key] = json!(value);
        ingress
    }

    /// An AdmissionReview v1 as the API server sends it.
    pub fn body(operation: &str, object: Value) -> Vec<u8> {
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let request = json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"},
            "requestKind": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"},
            "name": name,
            "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
            "object": if operation == "DELETE" { Value::Null } else { object.clone() },
            "oldObject": if operation == "CREATE" { Value::Null } else { object },
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        });
        let review = json!({"apiVersion": API_VERSION, "kind": KIND, "request": request});
        serde_json::to_vec(&review).expect("serialize")
    }

    /// The `response` of an answer, after checking the envelope.
    pub fn response(answer: &Value) -> &Value {
        assert_eq!(answer["apiVersion"], API_VERSION, "{answer}");
        assert_eq!(answer["kind"], KIND, "{answer}");
        assert_eq!(
            answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
            "the uid is echoed: {answer}"
        );
        &answer["response"]
    }

    fn run(view: &View, operation: &str, object: Value) -> Value {
        review(&body(operation, object), view).expect("a well-formed review")
    }

    fn message(response: &Value) -> &str {
        response["status"]["message"].as_str().unwrap_or("")
    }

    fn warnings(response: &Value) -> Vec<String> {
        response["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|s| s.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn allows_a_good_ingress_and_echoes_the_uid() {
        let answer = run(
            &view(vec![]),
            "CREATE",
            ingress("web", "a.test", "/", "web"),
        );
        let r = response(&answer);
        assert_eq!(r["allowed"], true, "{answer}");
        assert!(
            r.get("status").is_none() && r.get("warnings").is_none(),
            "{answer}"
        );
    }

    #[test]
    fn denies_a_refused_snippet_naming_the_directive() {
        let object = annotate(
            ingress("lua", "lua.test", "/", "web"),
            SNIPPET,
            "content_by_lua 'ngx.say(\"pwned\")';",
        );
        let answer = run(&view(vec![]), "UPDATE", object);
        let r = response(&answer);
        assert_eq!(r["allowed"], false, "{answer}");
        assert_eq!(r["status"]["code"], 422, "{answer}");
        assert_eq!(r["status"]["reason"], "Invalid", "{answer}");
        let m = message(r);
        assert!(
            m.starts_with("error: Ingress default/lua: ")
                && m.contains(&format!("metadata.annotations[{SNIPPET}]"))
                && m.contains("`content_by_lua`"),
            "{m}"
        );
        assert!(
            !m.contains("stored.yaml") && !m.contains("rejected;"),
            "{m}"
        );
    }

    /// Every annotation ingress-nginx documents that is refused here is denied with its
    /// reason, the same words `validate` prints.
    #[test]
    fn denies_each_refused_annotation_with_its_reason() {
        use crate::compat::{Fate, all};
        for (key, entry) in all().iter().filter(|(_, e)| e.fate == Fate::Refused) {
            let annotation = format!("nginx.ingress.kubernetes.io/{key}");
            let object = annotate(ingress("r", "r.test", "/", "web"), &annotation, "on");
            let answer = run(&view(vec![]), "CREATE", object);
            let r = response(&answer);
            assert_eq!(r["allowed"], false, "{key}: {answer}");
            let m = message(r);
            assert!(
                m.contains(&format!("metadata.annotations[{annotation}]"))
                    && m.contains(&format!("refused: {}", entry.reason)),
                "{key}: {m}"
            );
        }
    }

    #[test]
    fn denies_a_missing_service_with_every_error_joined() {
        let mut object = ingress("two", "two.test", "/", "missing");
        object["spec"]["rules"][0]["http"]["paths"]
            .as_array_mut()
            .expect("paths")
            .push(json!({
            "path": "relative", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}},
            }));
        let answer = run(&view(vec![]), "CREATE", object);
        let r = response(&answer);
        assert_eq!(r["allowed"], false, "{answer}");
        let m = message(r);
        assert!(
            m.contains("spec.rules[0].http.paths[0].backend.service.name: Service default/missing not found")
                && m.contains("; error: Ingress default/two: spec.rules[0].http.paths[1].path:"),
            "{m}"
        );
    }

    #[test]
    fn denies_a_malformed_object_with_the_field_path() {
        let mut object = ingress("bad", "bad.test", "/", "web");
        object["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = json!(5);
        let answer = run(&view(vec![]), "CREATE", object);
        let r = response(&answer);
        assert_eq!(r["allowed"], false, "{answer}");
        let m = message(r);
        assert!(
            m.contains("spec.rules[0].http.paths[0].pathType: invalid type: integer `5`"),
            "{m}"
        );
    }

    #[test]
    fn allows_other_classes_deletes_and_other_kinds_without_judging() {
        let v = view(vec![]);
        let mut nginx = ingress("theirs", "t.test", "/", "missing");
        nginx["spec"]["ingressClassName"] = json!("nginx");
        let answer = run(&v, "CREATE", nginx);
        assert_eq!(response(&answer)["allowed"], true, "{answer}");

        let broken = ingress("broken", "b.test", "/", "missing");
        let answer = run(&v, "DELETE", broken.clone());
        assert_eq!(response(&answer)["allowed"], true, "{answer}");

        let mut other: Value = serde_json::from_slice(&body("CREATE", broken)).expect("json");
        other["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
        let answer = review(other.to_string().as_bytes(), &v).expect("review");
        assert_eq!(response(&answer)["allowed"], true, "{answer}");
    }

    #[test]
    fn allows_an_ingress_being_deleted() {
        let mut object = ingress("going", "g.test", "/", "missing");
        object["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        let answer = run(&view(vec![]), "UPDATE", object);
        assert_eq!(response(&answer)["allowed"], true, "{answer}");
    }

    #[test]
    fn reports_a_conflict_with_an_older_ingress_and_not_with_itself() {
        let mut old = ingress("old", "shared.test", "/app", "web");
        old["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        let v = view(vec![
            old.clone(),
            ingress("elsewhere", "other.test", "/", "web"),
        ]);

        // A new Ingress (no creationTimestamp yet) claiming the same host and path loses.
        let answer = run(&v, "CREATE", ingress("new", "shared.test", "/app/", "web"));
        let r = response(&answer);
        assert_eq!(
            r["allowed"], true,
            "a conflict is a warning in compile: {answer}"
        );
        let w = warnings(r);
        assert_eq!(w.len(), 1, "{answer}");
        assert!(
            w[0].starts_with("Ingress default/new: spec.rules[0].http.paths[0]: ")
                && w[0].contains("older Ingress default/old"),
            "{w:?}"
        );

        // Updating the stored Ingress replaces it: no conflict with its own old version.
        let answer = run(&v, "UPDATE", old);
        let r = response(&answer);
        assert_eq!(r["allowed"], true, "{answer}");
        assert!(r.get("warnings").is_none(), "{answer}");
    }

    #[test]
    fn names_a_generated_ingress_and_takes_the_request_namespace() {
        let mut object = ingress("", "gen.test", "/", "missing");
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.remove("name");
        meta.remove("namespace");
        meta.insert("generateName".into(), json!("web-"));
        let mut review_json: Value = serde_json::from_slice(&body("CREATE", object)).expect("json");
        review_json["request"]["namespace"] = json!("team");
        let answer = review(review_json.to_string().as_bytes(), &view(vec![])).expect("review");
        let m = message(response(&answer)).to_owned();
        assert!(
            m.contains("Ingress team/(generated): ") && m.contains("Service team/missing"),
            "{m}"
        );
    }

    #[test]
    fn warnings_are_few_and_short() {
        // Unowned annotations under our prefixes are warnings; a long key makes a long warning.
        let mut object = ingress("noisy", "noisy.test", "/", "web");
        for i in 0..20 {
            let key = format!(
                "nginx.ingress.kubernetes.io/unknown-{i}-{}",
                "x".repeat(300)
            );
            object = annotate(object, &key, "1");
        }
        let answer = run(&view(vec![]), "CREATE", object);
        let r = response(&answer);
        assert_eq!(r["allowed"], true, "{answer}");
        let w = warnings(r);
        assert_eq!(w.len(), MAX_WARNINGS, "{w:?}");
        assert!(
            w.iter().all(|w| w.chars().count() <= MAX_WARNING_CHARS),
            "{w:?}"
        );
        assert!(
            w[MAX_WARNINGS - 1].contains("and 13 more warnings"),
            "{w:?}"
        );
    }

    #[test]
    fn refuses_what_is_not_an_admission_review_v1() {
        let v = view(vec![]);
        let e = review(b"{not json", &v).expect_err("bad JSON");
        assert!(e.to_string().starts_with("not an AdmissionReview: "), "{e}");
        let e = review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{}}}"#, &v)
            .expect_err("no uid");
        assert!(
            e.to_string().contains("request: missing field `uid`"),
            "{e}"
        );
        let mut old: Value =
            serde_json::from_slice(&body("CREATE", ingress("a", "a.test", "/", "web")))
                .expect("json");
        old["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let e = review(old.to_string().as_bytes(), &v).expect_err("v1beta1");
        assert!(matches!(e, BadReview::Version(_)), "{e}");
    }

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("abc".into(), 3), "abc");
        assert_eq!(clip("abcd".into(), 3), "ab…");
        assert_eq!(clip("ééé".into(), 3), "ééé");
        assert_eq!(clip("éééé".into(), 3), "éé…");
    }
}

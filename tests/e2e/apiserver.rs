//! An in-test stand-in for the Kubernetes API server.
//!
//! No real Kubernetes API server can run on this machine, so the end-to-end tests of
//! `wasmgress run --kube` talk to this one instead: an in-process HTTP/1.1 server on
//! `127.0.0.1:0` that speaks the real list/watch wire protocol (JSON only, no protobuf, no
//! authentication) well enough for the real kube-rs client, `kube::runtime::watcher`,
//! reflectors and the events `Recorder`. The self-tests at the bottom of this file drive the real
//! kube-rs client through it, so a protocol mistake here fails them.
//!
//! What it implements:
//!
//! - **Resources**: `networking.k8s.io/v1` ingresses (with the `/status` subresource) and
//!   ingressclasses (cluster-scoped), `v1` services (with `/status`), secrets, configmaps,
//!   endpoints and events, `discovery.k8s.io/v1` endpointslices, `coordination.k8s.io/v1` leases
//!   and `events.k8s.io/v1` events; both the all-namespaces paths (`/apis/G/V/PLURAL`) and the
//!   namespaced ones (`/apis/G/V/namespaces/NS/PLURAL[/NAME[/status]]`).
//! - **Discovery**: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/G` and `/apis/G/V`, plus the
//!   aggregated discovery v2 answers of `/api` and `/apis` when the client asks for them.
//! - **Stored objects**: one global resourceVersion counter bumped on every write; every stored
//!   object carries `metadata.resourceVersion`, a generated `uid`, `creationTimestamp`, the
//!   namespace of its path and `kind`/`apiVersion`; Ingresses and IngressClasses also get a
//!   `metadata.generation` bumped when their `spec` changes.
//! - **LIST** with `labelSelector` (`k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//!   `k notin (a,b)`, comma-separated), `fieldSelector` (`path=value`, `path==value`,
//!   `path!=value` on dotted JSON paths such as `metadata.name` or `type`) and `limit`/`continue`
//!   pagination (the token is the list's resourceVersion and the last key; it expires with
//!   [`ApiServer::compact`]). The `resourceVersion`/`resourceVersionMatch` of a LIST are ignored:
//!   it always answers the latest state.
//! - **WATCH** (`watch=true|1`): a chunked response with one JSON event per line. It replays the
//!   retained history newer than `resourceVersion` (or, for an unset or `"0"` version, synthetic
//!   `ADDED` events for what exists), then streams live events; `sendInitialEvents=true`
//!   (streaming lists) ends the initial events with the `k8s.io/initial-events-end` BOOKMARK. An
//!   object that starts or stops matching the label selector arrives as `ADDED` or `DELETED`, as
//!   from the real server. `BOOKMARK`s every second when `allowWatchBookmarks=true`; the stream
//!   ends after `timeoutSeconds`; a `resourceVersion` older than the retained history (see
//!   [`ApiServer::compact`]) gets HTTP 200 and one `ERROR` event holding a 410 `Expired` Status.
//!   [`ApiServer::drop_watches`] cuts every open watch connection mid-stream.
//! - **GET**, **POST** (409 `AlreadyExists`; `generateName`), **PUT** (409 `Conflict` when the
//!   body's resourceVersion is set and stale; 404 when absent), **DELETE** (with
//!   `preconditions`), DELETE on a collection, and **PATCH** as `merge-patch+json` (RFC 7386),
//!   `strategic-merge-patch+json` (applied as a merge patch, `$` directives dropped) and
//!   `apply-patch+yaml` (server-side apply approximated as a merge patch that creates a missing
//!   object; `fieldManager` required). On `/status` only `status` changes; on the object itself
//!   a kind with a status subresource keeps its stored status. `dryRun` stores nothing.
//! - Errors are `Status` objects (`NotFound`, `AlreadyExists`, `Conflict`, `BadRequest`,
//!   `Invalid`, `MethodNotAllowed`, `UnsupportedMediaType`, `Expired`).
//! - Every request is logged as `"METHOD /path?query"` for the tests ([`ApiServer::requests`]).
//!
//! Not implemented: authentication and authorization, protobuf and table output, finalizers and
//! graceful deletion, JSON patch (`json-patch+json` gets 415), managed fields, admission,
//! validation beyond names and namespaces, and reading past states (`resourceVersionMatch=Exact`).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How often an open watch with `allowWatchBookmarks=true` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// How many changes the event log keeps before the oldest are forgotten (an automatic
/// compaction; [`ApiServer::compact`] forgets them all at once).
const HISTORY_LIMIT: usize = 10_000;
/// Room for live changes a slow watch has not sent yet; a watch that falls further behind is
/// cut, and its client resumes from the history.
const LIVE_BUFFER: usize = 4_096;
/// The media type aggregated discovery is asked for with.
const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

type Body = BoxBody<Bytes, io::Error>;

/// A served resource type.
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Has a `/status` subresource: writes to the object itself keep the stored status.
    status: bool,
    /// `metadata.generation` is set on create and bumped when `spec` changes.
    generation: bool,
    short_names: &'static [&'static str],
}

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `ingresses.networking.k8s.io`, `configmaps`: how the real server names a resource in
    /// error messages.
    fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn resource(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        status: false,
        generation: false,
        short_names: &[],
    }
}

const RESOURCES: &[Resource] = &[
    Resource {
        status: true,
        generation: true,
        short_names: &["ing"],
        ..resource("networking.k8s.io", "ingresses", "ingress", "Ingress", true)
    },
    Resource {
        generation: true,
        ..resource(
            "networking.k8s.io",
            "ingressclasses",
            "ingressclass",
            "IngressClass",
            false,
        )
    },
    Resource {
        status: true,
        short_names: &["svc"],
        ..resource("", "services", "service", "Service", true)
    },
    resource("", "secrets", "secret", "Secret", true),
    Resource {
        short_names: &["cm"],
        ..resource("", "configmaps", "configmap", "ConfigMap", true)
    },
    Resource {
        short_names: &["ep"],
        ..resource("", "endpoints", "endpoints", "Endpoints", true)
    },
    Resource {
        short_names: &["ev"],
        ..resource("", "events", "event", "Event", true)
    },
    resource(
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
    ),
    resource("coordination.k8s.io", "leases", "lease", "Lease", true),
    Resource {
        short_names: &["ev"],
        ..resource("events.k8s.io", "events", "event", "Event", true)
    },
];

fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

fn resource_by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// The API groups served under `/apis`, in a stable order.
fn named_groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups.sort_unstable();
    groups.dedup();
    groups
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as kept in the event log and sent to open watches.
#[derive(Debug)]
struct Change {
    rv: u64,
    res: usize,
    ns: String,
    kind: ChangeKind,
    /// The object before a modification (to tell selector transitions apart).
    old: Option<Value>,
    /// The object after the write; for a deletion, the last state with the deletion's version.
    new: Value,
}

/// (resource index, namespace or "" for cluster-scoped, name)
type Key = (usize, String, String);

struct State {
    rv: u64,
    uid_seq: u64,
    uid_seed: u32,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// The oldest resourceVersion a watch or a continue token may resume from: the history holds
    /// every change newer than it.
    oldest: u64,
    requests: Vec<String>,
    changes: broadcast::Sender<Arc<Change>>,
    /// While set, requests whose path contains this text get a 500 (an API server in trouble).
    failing: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped by [`ApiServer::drop_watches`]; every open watch cuts its connection.
    drops: watch::Sender<u64>,
    open_watches: AtomicUsize,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The in-test Kubernetes API server; shut down (with every connection and watch) when dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 and an ephemeral port, with no objects.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the in-test API server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("API server local address");
        let (changes, _) = broadcast::channel(LIVE_BUFFER);
        let uid_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0x5eed);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                // Start somewhere other than 0 and 1 so that "0" (any version) is never a real one.
                rv: 100,
                uid_seq: 0,
                uid_seed,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest: 100,
                requests: Vec::new(),
                changes,
                failing: None,
            }),
            drops: watch::Sender::new(0),
            open_watches: AtomicUsize::new(0),
            addr,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        ApiServer { shared, task }
    }

    /// Answers 500 to every request whose path contains `fragment` (`None`: stop failing).
    pub fn fail_requests(&self, fragment: Option<&str>) {
        self.shared.lock().failing = fragment.map(str::to_string);
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Writes `dir/kubeconfig` pointing at [`ApiServer::url`] with no authentication and the
    /// context namespace `default`, and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: in-test
  cluster:
    server: {url}
users:
- name: in-test
  user: {{}}
contexts:
- name: in-test
  context:
    cluster: in-test
    user: in-test
    namespace: default
current-context: in-test
",
            url = self.url()
        );
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("write the kubeconfig {}: {e}", path.display()));
        path
    }

    /// Creates or replaces an object by (apiVersion, kind, namespace, name), as an administrator
    /// would: no resourceVersion check, status kept as given. Open watches see ADDED or MODIFIED.
    /// A namespaced object without a namespace goes to `default`.
    pub fn apply(&self, obj: Value) {
        let (res, ns, name) = locate(&obj);
        self.shared.lock().store(res, &ns, &name, obj, false);
    }

    /// [`ApiServer::apply`] for each object, in order.
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) {
        for obj in objs {
            self.apply(obj);
        }
    }

    /// Deletes an object if it exists; open watches see DELETED.
    pub fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
        let res = known_kind(api_version, kind);
        let ns = scoped_ns(res, ns);
        self.shared.lock().remove(res, &ns, name, false);
    }

    /// The stored object, as a GET would answer it.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = known_kind(api_version, kind);
        let ns = scoped_ns(res, ns);
        self.shared
            .lock()
            .objects
            .get(&(res, ns, name.to_owned()))
            .cloned()
    }

    /// Every stored object of a kind, in all namespaces, ordered by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let res = known_kind(api_version, kind);
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == res)
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// Abruptly ends every open watch stream, as a dropped connection would: the client sees
    /// the chunked body cut short and has to watch again from its last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|generation| *generation += 1);
    }

    /// Forgets the history: from now on a watch (or continue token) resuming from any
    /// resourceVersion issued before this call gets 410 Expired and must list again. Watches
    /// already open keep streaming; combine with [`ApiServer::drop_watches`] to force them out.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.rv += 1;
        state.oldest = state.rv;
        state.history.clear();
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Every request so far, oldest first, as `"METHOD /path?query"` (the query as sent).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Polls `f` every 20 ms until it holds; panics naming `what` (and listing the requests
    /// seen) if it does not within `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&ApiServer) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; requests so far:\n{}",
                    self.requests().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn known_kind(api_version: &str, kind: &str) -> usize {
    resource_by_kind(api_version, kind)
        .unwrap_or_else(|| panic!("the in-test API server does not serve {api_version} {kind}"))
}

fn scoped_ns(res: usize, ns: Option<&str>) -> String {
    if RESOURCES[res].namespaced {
        ns.unwrap_or("default").to_owned()
    } else {
        String::new()
    }
}

/// (resource, namespace, name) of an object handed to [`ApiServer::apply`].
fn locate(obj: &Value) -> (usize, String, String) {
    let api_version = obj["apiVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("an applied object needs an apiVersion: {obj}"));
    let kind = obj["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("an applied object needs a kind: {obj}"));
    let res = known_kind(api_version, kind);
    let name = meta_str(obj, "name")
        .unwrap_or_else(|| panic!("an applied object needs metadata.name: {obj}"))
        .to_owned();
    let ns = scoped_ns(res, meta_str(obj, "namespace"));
    (res, ns, name)
}

// ---------------------------------------------------------------------------------------------
// The store

impl State {
    /// Stamps and stores `obj` (created or replacing what is there), logs and broadcasts the
    /// change, and returns the stored object. With `dry_run`, only returns what would be stored.
    fn store(&mut self, res: usize, ns: &str, name: &str, mut obj: Value, dry_run: bool) -> Value {
        let r = &RESOURCES[res];
        let key = (res, ns.to_owned(), name.to_owned());
        let old = self.objects.get(&key).cloned();
        if !obj.is_object() {
            obj = Value::Object(Map::new());
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        let generation = if r.generation {
            Some(match &old {
                None => 1,
                Some(o) => {
                    let before = o["metadata"]["generation"].as_i64().unwrap_or(1);
                    if o.get("spec") == obj.get("spec") {
                        before
                    } else {
                        before + 1
                    }
                }
            })
        } else {
            None
        };
        let uid = match &old {
            Some(o) => meta_str(o, "uid").map(str::to_owned),
            None => None,
        };
        let created = match &old {
            Some(o) => o["metadata"].get("creationTimestamp").cloned(),
            None => None,
        };
        let fresh_uid = if uid.is_none() && meta_str(&obj, "uid").is_none() {
            self.uid_seq += 1;
            Some(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                self.uid_seed, self.uid_seq
            ))
        } else {
            None
        };
        let meta = object_field(&mut obj, "metadata");
        meta.insert("name".into(), json!(name));
        if r.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        if let Some(uid) = uid.or(fresh_uid) {
            meta.insert("uid".into(), json!(uid));
        }
        match created {
            Some(created) => {
                meta.insert("creationTimestamp".into(), created);
            }
            None => {
                if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                    meta.insert("creationTimestamp".into(), json!(now()));
                }
            }
        }
        if let Some(generation) = generation {
            meta.insert("generation".into(), json!(generation));
        }
        if dry_run {
            return obj;
        }
        self.rv += 1;
        let rv = self.rv;
        object_field(&mut obj, "metadata").insert("resourceVersion".into(), json!(rv.to_string()));
        self.objects.insert(key, obj.clone());
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            rv,
            res,
            ns: ns.to_owned(),
            kind,
            old,
            new: obj.clone(),
        });
        obj
    }

    /// Removes an object, logs and broadcasts the deletion, and returns the object's last state
    /// (with the deletion's resourceVersion). With `dry_run`, only returns it.
    fn remove(&mut self, res: usize, ns: &str, name: &str, dry_run: bool) -> Option<Value> {
        let key = (res, ns.to_owned(), name.to_owned());
        if dry_run {
            return self.objects.get(&key).cloned();
        }
        let mut obj = self.objects.remove(&key)?;
        self.rv += 1;
        let rv = self.rv;
        object_field(&mut obj, "metadata").insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(Change {
            rv,
            res,
            ns: ns.to_owned(),
            kind: ChangeKind::Deleted,
            old: None,
            new: obj.clone(),
        });
        Some(obj)
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(forgotten) = self.history.pop_front() {
                self.oldest = forgotten.rv;
            }
        }
        // No receiver (no open watch) is fine.
        let _ = self.changes.send(change);
    }
}

/// `v[key]` as a JSON object, made one if it is missing or something else. `v` must be an object.
fn object_field<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let Value::Object(map) = v else {
        unreachable!("made an object above")
    };
    let field = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !field.is_object() {
        *field = Value::Object(Map::new());
    }
    let Value::Object(field) = field else {
        unreachable!("made an object above")
    };
    field
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Errors as Status objects

struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    fn path_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn method_not_allowed(method: &Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    fn about(mut self, r: &Resource, name: &str) -> Self {
        self.details = Some(json!({ "name": name, "group": r.group, "kind": r.plural }));
        self
    }

    fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", r.group_resource()),
        )
        .about(r, name)
    }

    fn already_exists(r: &Resource, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.group_resource()),
        )
        .about(r, name)
    }

    fn conflict(r: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                r.group_resource()
            ),
        )
        .about(r, name)
    }

    fn stale(r: &Resource, name: &str) -> Self {
        Self::conflict(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn expired(message: String) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    fn into_response(self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    json_response_as(code, value, "application/json")
}

fn json_response_as(code: StatusCode, value: &Value, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

// ---------------------------------------------------------------------------------------------
// HTTP

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping this set (when the server task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The parts of a request the handlers read besides its path: method, decoded query, media type
/// and body.
struct Call<'a> {
    method: &'a Method,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Bytes,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let logged = if raw_query.is_empty() {
        format!("{method} {path}")
    } else {
        format!("{method} {path}?{raw_query}")
    };
    let failing = {
        let mut state = shared.lock();
        state.requests.push(logged);
        state.failing.clone()
    };
    if failing.is_some_and(|f| path.contains(&f)) {
        return Ok(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("the in-test API server was told to fail {path}"),
        )
        .into_response());
    }
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_type = header(CONTENT_TYPE);
    let accept = header(ACCEPT);
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(
                ApiError::bad_request(format!("reading the request body: {e}")).into_response(),
            );
        }
    };
    let answer = parse_query(&raw_query).and_then(|query| {
        let call = Call {
            method: &method,
            query,
            content_type,
            body,
        };
        route(&shared, &path, &accept, &call)
    });
    Ok(answer.unwrap_or_else(ApiError::into_response))
}

fn route(
    shared: &Arc<Shared>,
    path: &str,
    accept: &str,
    call: &Call<'_>,
) -> Result<Response<Body>, ApiError> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect::<Result<_, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let aggregated = accept.contains("as=APIGroupDiscoveryList");
    let discovery = |value: Value| {
        if call.method == Method::GET {
            Ok(json_response(StatusCode::OK, &value))
        } else {
            Err(ApiError::method_not_allowed(call.method))
        }
    };
    let (group, version, rest) = match segments.as_slice() {
        [] => {
            return discovery(json!({
                "paths": ["/api", "/api/v1", "/apis", "/version"]
            }));
        }
        ["version"] => return discovery(version_info()),
        ["api"] if aggregated => {
            return Ok(json_response_as(
                StatusCode::OK,
                &aggregated_discovery(&[""]),
                AGGREGATED_DISCOVERY,
            ));
        }
        ["api"] => {
            return discovery(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    { "clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string() }
                ],
            }));
        }
        ["apis"] if aggregated => {
            return Ok(json_response_as(
                StatusCode::OK,
                &aggregated_discovery(&named_groups()),
                AGGREGATED_DISCOVERY,
            ));
        }
        ["apis"] => {
            let groups: Vec<Value> = named_groups().into_iter().map(api_group).collect();
            return discovery(
                json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
            );
        }
        ["apis", group] if named_groups().contains(group) => {
            let mut g = api_group(group);
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            return discovery(g);
        }
        ["api", "v1"] => return discovery(resource_list("", "v1")),
        ["apis", group, version] if named_groups().contains(group) && *version == "v1" => {
            return discovery(resource_list(group, version));
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let (plural, ns, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (
            *plural,
            Some(*ns),
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (*plural, None, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(ApiError::path_not_found()),
    };
    if rest.len() > 5 || (ns.is_none() && rest.len() > 3) {
        return Err(ApiError::path_not_found());
    }
    let res = resource_by_path(group, version, plural).ok_or_else(ApiError::path_not_found)?;
    let r = &RESOURCES[res];
    if ns.is_some() && !r.namespaced {
        return Err(ApiError::path_not_found());
    }
    match (name, sub) {
        (None, _) => collection(shared, res, ns, call),
        (Some(name), None) => {
            if r.namespaced && ns.is_none() {
                return Err(ApiError::path_not_found());
            }
            object(shared, res, ns.unwrap_or(""), name, false, call)
        }
        (Some(name), Some("status")) if r.status => {
            if r.namespaced && ns.is_none() {
                return Err(ApiError::path_not_found());
            }
            object(shared, res, ns.unwrap_or(""), name, true, call)
        }
        (Some(_), Some(_)) => Err(ApiError::path_not_found()),
    }
}

fn collection(
    shared: &Arc<Shared>,
    res: usize,
    ns: Option<&str>,
    call: &Call<'_>,
) -> Result<Response<Body>, ApiError> {
    let selector = Selector::from_query(&call.query)?;
    match *call.method {
        Method::GET => {
            if matches!(
                call.query.get("watch").map(String::as_str),
                Some("true" | "1")
            ) {
                watch(shared, res, ns, selector, &call.query)
            } else {
                let list = list(&shared.lock(), res, ns, &selector, &call.query)?;
                Ok(json_response(StatusCode::OK, &list))
            }
        }
        Method::POST => {
            let Some(ns) = ns.or(if RESOURCES[res].namespaced {
                None
            } else {
                Some("")
            }) else {
                return Err(ApiError::method_not_allowed(call.method));
            };
            let created = create(&mut shared.lock(), res, ns, call)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        Method::DELETE => {
            let dry_run = call.query.contains_key("dryRun");
            let mut state = shared.lock();
            let doomed: Vec<Key> = state
                .objects
                .iter()
                .filter(|((r, n, _), obj)| {
                    *r == res && ns.is_none_or(|ns| ns == n) && selector.matches(obj)
                })
                .map(|(key, _)| key.clone())
                .collect();
            let items: Vec<Value> = doomed
                .into_iter()
                .filter_map(|(r, n, name)| state.remove(r, &n, &name, dry_run))
                .collect();
            let rv = state.rv.to_string();
            Ok(json_response(
                StatusCode::OK,
                &list_of(res, items, json!({ "resourceVersion": rv })),
            ))
        }
        _ => Err(ApiError::method_not_allowed(call.method)),
    }
}

fn object(
    shared: &Arc<Shared>,
    res: usize,
    ns: &str,
    name: &str,
    status: bool,
    call: &Call<'_>,
) -> Result<Response<Body>, ApiError> {
    let r = &RESOURCES[res];
    let key = (res, ns.to_owned(), name.to_owned());
    let dry_run = call.query.contains_key("dryRun");
    let mut state = shared.lock();
    match *call.method {
        Method::GET => {
            let obj = state
                .objects
                .get(&key)
                .ok_or_else(|| ApiError::not_found(r, name))?;
            Ok(json_response(StatusCode::OK, obj))
        }
        Method::PUT => {
            let mut body = json_body(&call.body)?;
            check_identity(r, ns, name, &mut body)?;
            let stored = state
                .objects
                .get(&key)
                .ok_or_else(|| ApiError::not_found(r, name))?;
            if let Some(rv) = meta_str(&body, "resourceVersion")
                && !rv.is_empty()
                && Some(rv) != meta_str(stored, "resourceVersion")
            {
                return Err(ApiError::stale(r, name));
            }
            let new = keep_status_rules(r, stored, body, status);
            let stored = state.store(res, ns, name, new, dry_run);
            Ok(json_response(StatusCode::OK, &stored))
        }
        Method::PATCH => {
            let media = call.content_type.split(';').next().unwrap_or("").trim();
            let mut patch = match media {
                "application/merge-patch+json" => json_body(&call.body)?,
                "application/strategic-merge-patch+json" => {
                    let mut patch = json_body(&call.body)?;
                    drop_directives(&mut patch);
                    patch
                }
                "application/apply-patch+yaml" => {
                    if call.query.get("fieldManager").is_none_or(String::is_empty) {
                        return Err(ApiError::bad_request(
                            "PATCH, application/apply-patch+yaml requests must specify a fieldManager",
                        ));
                    }
                    let patch: Value = serde_yaml::from_slice(&call.body).map_err(|e| {
                        ApiError::bad_request(format!("the apply patch is not YAML: {e}"))
                    })?;
                    if !patch.is_object() {
                        return Err(ApiError::bad_request("the apply patch is not an object"));
                    }
                    patch
                }
                other => {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                        ),
                    ));
                }
            };
            let Some(stored) = state.objects.get(&key) else {
                if media == "application/apply-patch+yaml" && !status {
                    // Server-side apply creates what does not exist yet.
                    check_identity(r, ns, name, &mut patch)?;
                    if r.status
                        && let Some(fields) = patch.as_object_mut()
                    {
                        fields.remove("status");
                    }
                    let created = state.store(res, ns, name, patch, dry_run);
                    return Ok(json_response(StatusCode::CREATED, &created));
                }
                return Err(ApiError::not_found(r, name));
            };
            if let Some(rv) = patch["metadata"]
                .get("resourceVersion")
                .and_then(Value::as_str)
                && Some(rv) != meta_str(stored, "resourceVersion")
            {
                return Err(ApiError::stale(r, name));
            }
            let mut merged = stored.clone();
            merge_patch(&mut merged, &patch);
            let new = keep_status_rules(r, stored, merged, status);
            let stored = state.store(res, ns, name, new, dry_run);
            Ok(json_response(StatusCode::OK, &stored))
        }
        Method::DELETE if !status => {
            let stored = state
                .objects
                .get(&key)
                .ok_or_else(|| ApiError::not_found(r, name))?;
            if !call.body.is_empty() {
                let options = json_body(&call.body)?;
                let pre = &options["preconditions"];
                if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
                    && Some(rv) != meta_str(stored, "resourceVersion")
                {
                    return Err(ApiError::conflict(
                        r,
                        name,
                        &format!(
                            "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record"
                        ),
                    ));
                }
                if let Some(uid) = pre.get("uid").and_then(Value::as_str)
                    && Some(uid) != meta_str(stored, "uid")
                {
                    return Err(ApiError::conflict(
                        r,
                        name,
                        &format!(
                            "the UID in the precondition ({uid}) does not match the UID in record"
                        ),
                    ));
                }
            }
            let deleted = state
                .remove(res, ns, name, dry_run)
                .ok_or_else(|| ApiError::not_found(r, name))?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        _ => Err(ApiError::method_not_allowed(call.method)),
    }
}

/// For a write to `/status`, the stored object with only `status` taken from `new`; for a write
/// to the object itself of a kind with a status subresource, `new` with the stored status.
fn keep_status_rules(r: &Resource, stored: &Value, mut new: Value, status: bool) -> Value {
    if status {
        let mut result = stored.clone();
        match new.get("status") {
            Some(s) => result["status"] = s.clone(),
            None => {
                if let Some(fields) = result.as_object_mut() {
                    fields.remove("status");
                }
            }
        }
        result
    } else {
        if r.status {
            match stored.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(fields) = new.as_object_mut() {
                        fields.remove("status");
                    }
                }
            }
        }
        new
    }
}

fn create(state: &mut State, res: usize, ns: &str, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = &RESOURCES[res];
    let mut body = json_body(&call.body)?;
    let name = match meta_str(&body, "name").filter(|n| !n.is_empty()) {
        Some(name) => name.to_owned(),
        None => match meta_str(&body, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => {
                state.uid_seq += 1;
                format!("{prefix}{}", suffix(state.uid_seq))
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    r.kind
                )));
            }
        },
    };
    check_identity(r, ns, &name, &mut body)?;
    if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if state
        .objects
        .contains_key(&(res, ns.to_owned(), name.clone()))
    {
        return Err(ApiError::already_exists(r, &name));
    }
    if r.status
        && let Some(fields) = body.as_object_mut()
    {
        fields.remove("status");
    }
    Ok(state.store(res, ns, &name, body, call.query.contains_key("dryRun")))
}

/// Five base-36 characters for `generateName`.
fn suffix(mut n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for _ in 0..5 {
        out.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
        n /= ALPHABET.len() as u64;
    }
    out
}

/// Checks that the body's kind, apiVersion, name and namespace (where given) agree with the
/// path, and fills in the name.
fn check_identity(r: &Resource, ns: &str, name: &str, body: &mut Value) -> Result<(), ApiError> {
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != r.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind on the URL ({})",
            r.kind
        )));
    }
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str)
        && api_version != r.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            r.api_version()
        )));
    }
    if let Some(body_name) = meta_str(body, "name")
        && !body_name.is_empty()
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if r.namespaced
        && let Some(body_ns) = meta_str(body, "namespace")
        && !body_ns.is_empty()
        && body_ns != ns
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
        )));
    }
    object_field(body, "metadata").insert("name".into(), json!(name));
    Ok(())
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ))
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Drops strategic-merge-patch directives (`$patch`, `$setElementOrder/...`, `$retainKeys`...).
fn drop_directives(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(drop_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_directives),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Queries and selectors

fn parse_query(raw: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut query = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.insert(percent_decode(k, true)?, percent_decode(v, true)?);
    }
    Ok(query)
}

fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("bad percent-encoding in {s:?}"))
                    })?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not UTF-8 once decoded")))
}

#[derive(Debug)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Default)]
struct Selector {
    labels: Vec<LabelReq>,
    /// (dotted path, equal?, value)
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    fn from_query(query: &BTreeMap<String, String>) -> Result<Selector, ApiError> {
        let mut selector = Selector::default();
        if let Some(labels) = query.get("labelSelector") {
            selector.labels = parse_label_selector(labels)?;
        }
        if let Some(fields) = query.get("fieldSelector") {
            for term in fields.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                    (p, false, v)
                } else if let Some((p, v)) = term.split_once("==") {
                    (p, true, v)
                } else if let Some((p, v)) = term.split_once('=') {
                    (p, true, v)
                } else {
                    return Err(ApiError::bad_request(format!(
                        "invalid field selector term {term:?}"
                    )));
                };
                selector
                    .fields
                    .push((path.trim().to_owned(), equal, value.trim().to_owned()));
            }
        }
        Ok(selector)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|req| match req {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, values) => label(k).is_some_and(|v| values.iter().any(|x| x == v)),
            LabelReq::NotIn(k, values) => label(k).is_none_or(|v| values.iter().all(|x| x != v)),
        });
        labels_match
            && self.fields.iter().all(|(path, equal, value)| {
                let mut at = obj;
                for part in path.split('.') {
                    at = &at[part];
                }
                let actual = match at {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (actual == *value) == *equal
            })
    }
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "unable to parse requirement: {why} in label selector {s:?}"
        ))
    };
    // Split on commas outside parentheses.
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(bad("unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced parentheses"));
    }
    terms.push(&s[start..]);
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let mut reqs = Vec::new();
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_owned())
        } else if let Some(open) = term.find('(') {
            let close = term
                .rfind(')')
                .filter(|c| *c == term.len() - 1)
                .ok_or_else(|| bad("expected ')' at the end"))?;
            let mut head = term[..open].split_whitespace();
            let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
                return Err(bad("expected `key in (...)` or `key notin (...)`"));
            };
            let values: Vec<String> = term[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            match op {
                "in" => LabelReq::In(key.to_owned(), values),
                "notin" => LabelReq::NotIn(key.to_owned(), values),
                _ => return Err(bad("unknown set operator")),
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::NotIn(k.trim().to_owned(), vec![v.trim().to_owned()])
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelReq::In(k.trim().to_owned(), vec![v.trim().to_owned()])
        } else {
            LabelReq::Exists(term.to_owned())
        };
        let key = match &req {
            LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => k,
        };
        if !valid_key(key) {
            return Err(bad(&format!("invalid label key {key:?}")));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

// ---------------------------------------------------------------------------------------------
// LIST

fn list_of(res: usize, items: Vec<Value>, metadata: Value) -> Value {
    let r = &RESOURCES[res];
    json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

fn list(
    state: &State,
    res: usize,
    ns: Option<&str>,
    selector: &Selector,
    query: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let limit = match query.get("limit").map(String::as_str) {
        None | Some("") => None,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(ApiError::bad_request(format!("invalid limit {l:?}"))),
        },
    };
    // A continue token is "RV:NAMESPACE/NAME": the list's resourceVersion and the last key sent.
    let (rv, after) = match query.get("continue").map(String::as_str) {
        None | Some("") => (state.rv, None),
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.split_once('/')?)));
            let Some((rv, (after_ns, after_name))) = parsed else {
                return Err(ApiError::bad_request(format!(
                    "invalid continue token {token:?}"
                )));
            };
            if rv < state.oldest {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                ));
            }
            (rv, Some((after_ns.to_owned(), after_name.to_owned())))
        }
    };
    let matching: Vec<(&Key, &Value)> = state
        .objects
        .iter()
        .filter(|((r, n, name), obj)| {
            *r == res
                && ns.is_none_or(|ns| ns == n)
                && after
                    .as_ref()
                    .is_none_or(|(a_ns, a_name)| (n, name) > (a_ns, a_name))
                && selector.matches(obj)
        })
        .collect();
    let take = limit.unwrap_or(matching.len()).min(matching.len());
    let items: Vec<Value> = matching[..take]
        .iter()
        .map(|(_, obj)| (*obj).clone())
        .collect();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if take < matching.len()
        && let Some(((_, last_ns, last_name), _)) = matching[..take].last()
    {
        metadata["continue"] = json!(format!("{rv}:{last_ns}/{last_name}"));
        metadata["remainingItemCount"] = json!(matching.len() - take);
    }
    Ok(list_of(res, items, metadata))
}

// ---------------------------------------------------------------------------------------------
// WATCH

/// What `change` looks like to a watch of `res` in `ns` (all if `None`) through `selector`:
/// the event type and object, or nothing. An object that starts or stops matching the selector
/// is ADDED or DELETED, as the real server sends it.
fn visible<'c>(
    change: &'c Change,
    res: usize,
    ns: Option<&str>,
    selector: &Selector,
) -> Option<(&'static str, &'c Value)> {
    if change.res != res || ns.is_some_and(|ns| ns != change.ns) {
        return None;
    }
    let now = selector.matches(&change.new);
    let kind = match change.kind {
        ChangeKind::Added => now.then_some("ADDED"),
        ChangeKind::Deleted => now.then_some("DELETED"),
        ChangeKind::Modified => {
            let before = change.old.as_ref().is_some_and(|o| selector.matches(o));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }?;
    Some((kind, &change.new))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(res: usize, rv: u64, initial_events_end: bool) -> Bytes {
    let r = &RESOURCES[res];
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": r.kind, "apiVersion": r.api_version(), "metadata": metadata }),
    )
}

/// Counts an open watch for [`ApiServer::open_watches`] while alive.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch(
    shared: &Arc<Shared>,
    res: usize,
    ns: Option<&str>,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let timeout = match query.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => None,
        Some(t) => Some(Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
        })?)),
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let initial_events = query.get("sendInitialEvents").is_some_and(|b| b == "true");
    if initial_events && !bookmarks {
        return Err(ApiError::invalid(
            "sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let ns = ns.map(str::to_owned);
    let mut lines = Vec::new();
    // Under the lock: the initial events, then the live subscription, so nothing falls between.
    let (mut changes, mut drops, mut cursor) = {
        let state = shared.lock();
        match from {
            Some(rv) if initial_events || rv >= state.oldest => {
                if initial_events {
                    lines.extend(current(&state, res, ns.as_deref(), &selector));
                    lines.push(bookmark(res, state.rv, true));
                } else {
                    for change in state.history.iter().filter(|c| c.rv > rv) {
                        if let Some((kind, obj)) = visible(change, res, ns.as_deref(), &selector) {
                            lines.push(event_line(kind, obj));
                        }
                    }
                }
            }
            Some(rv) => {
                let expired =
                    ApiError::expired(format!("too old resource version: {rv} ({})", state.oldest));
                let mut resp = Response::new(full(event_line("ERROR", &expired.status())));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(resp);
            }
            None => {
                lines.extend(current(&state, res, ns.as_deref(), &selector));
                if initial_events {
                    lines.push(bookmark(res, state.rv, true));
                }
            }
        }
        (
            state.changes.subscribe(),
            shared.drops.subscribe(),
            state.rv,
        )
    };
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let open = OpenWatch(shared.clone());
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(64);
    tokio::spawn(async move {
        let _open = open;
        for line in lines {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600)));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            let frame = tokio::select! {
                // A dropped connection wins over anything else that is ready.
                biased;
                _ = drops.changed() => {
                    let _ = tx.send(Err(io::Error::other("watch dropped by the test"))).await;
                    return;
                }
                () = tx.closed() => return,
                () = &mut deadline => return,
                got = changes.recv() => match got {
                    Ok(change) => {
                        cursor = change.rv;
                        match visible(&change, res, ns.as_deref(), &selector) {
                            Some((kind, obj)) => event_line(kind, obj),
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(io::Error::other("watch fell behind"))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => bookmark(res, cursor, false),
            };
            if tx.send(Ok(Frame::data(frame))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Synthetic ADDED events for the matching objects that exist.
fn current(state: &State, res: usize, ns: Option<&str>, selector: &Selector) -> Vec<Bytes> {
    state
        .objects
        .iter()
        .filter(|((r, n, _), obj)| {
            *r == res && ns.is_none_or(|ns| ns == n) && selector.matches(obj)
        })
        .map(|(_, obj)| event_line("ADDED", obj))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Discovery

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-wasmgress-in-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_group(group: &str) -> Value {
    let gv = json!({ "groupVersion": format!("{group}/v1"), "version": "v1" });
    json!({ "name": group, "versions": [gv.clone()], "preferredVersion": gv })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") },
        "resources": resources,
    })
}

fn aggregated_discovery(groups: &[&str]) -> Value {
    let items: Vec<Value> = groups
        .iter()
        .map(|group| {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == *group)
                .map(|r| {
                    let gvk = json!({ "group": r.group, "version": r.version, "kind": r.kind });
                    let subresources: Vec<Value> = if r.status {
                        vec![json!({ "subresource": "status", "responseKind": gvk, "verbs": STATUS_VERBS })]
                    } else {
                        Vec::new()
                    };
                    json!({
                        "resource": r.plural,
                        "responseKind": gvk,
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": VERBS,
                        "shortNames": r.short_names,
                        "subresources": subresources,
                    })
                })
                .collect();
            json!({
                "metadata": { "name": group },
                "versions": [{ "version": "v1", "resources": resources, "freshness": "Current" }],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

// ---------------------------------------------------------------------------------------------
// Self-tests: the real kube-rs client, watcher, reflector and Recorder against this server.

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;
    use std::path::Path;
    use std::time::Duration;

    use futures_util::{Stream, StreamExt};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{
        Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
        Preconditions, WatchEvent, WatchParams,
    };
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::core::GroupVersionKind;
    use kube::discovery::{Discovery, Scope};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::runtime::{reflector, watcher};
    use kube::{Client, Resource, ResourceExt};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::ApiServer;

    const WAIT: Duration = Duration::from_secs(10);
    const INGRESS: (&str, &str) = ("networking.k8s.io/v1", "Ingress");

    /// A kube Client built from the kubeconfig file, as `wasmgress run --kube --kubeconfig` does.
    async fn client(server: &ApiServer, dir: &Path) -> Client {
        let path = server.kubeconfig(dir);
        let kubeconfig = Kubeconfig::read_from(&path).expect("read the kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("a kube Config from the kubeconfig");
        assert_eq!(config.default_namespace, "default");
        assert_eq!(
            config.cluster_url.to_string().trim_end_matches('/'),
            server.url()
        );
        Client::try_from(config).expect("a kube Client")
    }

    fn ingress(ns: &str, name: &str, host: &str) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "rules": [{ "host": host }] },
        })
    }

    fn config_map(ns: &str, name: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": ns, "labels": labels },
            "data": { "k": "v" },
        })
    }

    /// Drives a stream on its own task (so a watcher keeps watching while the test waits) and
    /// hands its items over.
    fn spawn_stream<T: Send + 'static>(
        stream: impl Stream<Item = T> + Send + 'static,
    ) -> mpsc::UnboundedReceiver<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        rx
    }

    type Events<K> = mpsc::UnboundedReceiver<watcher::Result<watcher::Event<K>>>;

    async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the next item in time")
            .expect("the stream goes on")
    }

    /// The next watcher event that is not an error (errors are expected around cut connections).
    async fn next_ok<K>(events: &mut Events<K>) -> watcher::Event<K> {
        loop {
            if let Ok(event) = next(events).await {
                return event;
            }
        }
    }

    fn describe<K: ResourceExt>(event: &watcher::Event<K>) -> String {
        let id = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        match event {
            watcher::Event::Apply(o) => format!("Apply {}", id(o)),
            watcher::Event::Delete(o) => format!("Delete {}", id(o)),
            watcher::Event::Init => "Init".into(),
            watcher::Event::InitApply(o) => format!("InitApply {}", id(o)),
            watcher::Event::InitDone => "InitDone".into(),
        }
    }

    async fn next_change<K: ResourceExt>(events: &mut Events<K>) -> String {
        describe(&next_ok(events).await)
    }

    /// The names from `Init` to `InitDone`.
    async fn initial_names<K: ResourceExt + Debug>(events: &mut Events<K>) -> Vec<String> {
        let first = next_ok(events).await;
        assert!(
            matches!(first, watcher::Event::Init),
            "expected Init, got {first:?}"
        );
        let mut names = Vec::new();
        loop {
            match next_ok(events).await {
                watcher::Event::InitApply(o) => names.push(o.name_any()),
                watcher::Event::InitDone => return names,
                other => panic!("expected InitApply or InitDone, got {other:?}"),
            }
        }
    }

    /// LIST requests (not watches) on a resource's paths.
    fn lists(server: &ApiServer, plural: &str) -> Vec<String> {
        server
            .requests()
            .into_iter()
            .filter(|r| {
                r.starts_with("GET ")
                    && r.contains(&format!("/{plural}"))
                    && !r.contains("watch=true")
            })
            .collect()
    }

    fn watches(server: &ApiServer, plural: &str) -> Vec<String> {
        server
            .requests()
            .into_iter()
            .filter(|r| {
                r.starts_with("GET ")
                    && r.contains(&format!("/{plural}"))
                    && r.contains("watch=true")
            })
            .collect()
    }

    fn api_code(result: Result<impl Debug, kube::Error>) -> (u16, String) {
        match result {
            Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
            other => panic!("expected an API error Status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn watcher_lists_in_pages_then_streams_changes() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply_all([
            ingress("default", "a", "a.example"),
            ingress("default", "b", "b.example"),
            ingress("other", "c", "c.example"),
        ]);
        let client = client(&server, dir.path()).await;
        let api: Api<Ingress> = Api::all(client);
        let mut events = spawn_stream(watcher(api, watcher::Config::default().page_size(1)));
        assert_eq!(initial_names(&mut events).await, ["a", "b", "c"]);
        server
            .wait_for("the watch to open", WAIT, |s| s.open_watches() == 1)
            .await;

        server.apply(ingress("default", "d", "d.example"));
        assert_eq!(next_change(&mut events).await, "Apply default/d");
        server.apply(ingress("default", "a", "a2.example"));
        match next_ok(&mut events).await {
            watcher::Event::Apply(ing) => {
                let rules = ing.spec.and_then(|s| s.rules).unwrap_or_default();
                assert_eq!(rules[0].host.as_deref(), Some("a2.example"));
                assert_eq!(
                    ing.metadata.generation,
                    Some(2),
                    "a spec change bumps the generation"
                );
            }
            other => panic!("expected Apply a, got {other:?}"),
        }
        server.delete(INGRESS.0, INGRESS.1, Some("default"), "a");
        assert_eq!(next_change(&mut events).await, "Delete default/a");

        let pages = lists(&server, "ingresses");
        assert_eq!(pages.len(), 3, "one page per Ingress: {pages:#?}");
        assert!(pages.iter().all(|p| p.contains("limit=1")), "{pages:#?}");
        assert!(
            pages[1].contains("continue=") && pages[2].contains("continue="),
            "{pages:#?}"
        );
        let watches = watches(&server, "ingresses");
        assert_eq!(watches.len(), 1, "{watches:#?}");
        assert!(
            watches[0].contains("allowWatchBookmarks=true")
                && watches[0].contains("resourceVersion="),
            "{watches:#?}"
        );
    }

    #[tokio::test]
    async fn watcher_resumes_after_a_dropped_connection_without_relisting() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply(ingress("default", "a", "a.example"));
        let client = client(&server, dir.path()).await;
        let api: Api<Ingress> = Api::default_namespaced(client);
        let mut events = spawn_stream(watcher(api, watcher::Config::default()));
        assert_eq!(initial_names(&mut events).await, ["a"]);
        server
            .wait_for("the watch to open", WAIT, |s| s.open_watches() == 1)
            .await;

        server.drop_watches();
        // Written while the watcher is cut off: it must get them from the history on resuming.
        server.apply(ingress("default", "b", "b.example"));
        server.apply(ingress("default", "a", "a2.example"));
        assert_eq!(next_change(&mut events).await, "Apply default/b");
        assert_eq!(next_change(&mut events).await, "Apply default/a");
        server
            .wait_for("the watch to reopen", WAIT, |s| {
                watches(s, "ingresses").len() == 2 && s.open_watches() == 1
            })
            .await;
        server.apply(ingress("default", "c", "c.example"));
        assert_eq!(next_change(&mut events).await, "Apply default/c");
        assert_eq!(
            lists(&server, "ingresses").len(),
            1,
            "resumed, not relisted: {:#?}",
            server.requests()
        );
    }

    #[tokio::test]
    async fn compaction_makes_the_watcher_relist_and_the_reflector_stays_right() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply_all([
            ingress("default", "a", "a.example"),
            ingress("default", "b", "b.example"),
        ]);
        let client = client(&server, dir.path()).await;
        let api: Api<Ingress> = Api::default_namespaced(client);
        let (reader, writer) = reflector::store::<Ingress>();
        let mut events = spawn_stream(reflector(writer, watcher(api, watcher::Config::default())));
        tokio::time::timeout(WAIT, reader.wait_until_ready())
            .await
            .expect("the store gets ready in time")
            .expect("the writer is alive");
        let names =
            || -> BTreeSet<String> { reader.state().iter().map(|i| i.name_any()).collect() };
        assert_eq!(names(), BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        server
            .wait_for("the watch to open", WAIT, |s| s.open_watches() == 1)
            .await;

        server.compact();
        server.drop_watches();
        server.apply(ingress("default", "c", "c.example"));
        server.delete(INGRESS.0, INGRESS.1, Some("default"), "a");

        loop {
            match next(&mut events).await {
                Err(watcher::Error::WatchError(status)) => {
                    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                    break;
                }
                Err(_) | Ok(_) => continue,
            }
        }
        server
            .wait_for("the store to hold b and c", WAIT, |_| {
                names() == BTreeSet::from(["b".to_owned(), "c".to_owned()])
            })
            .await;
        assert_eq!(
            lists(&server, "ingresses").len(),
            2,
            "listed again after 410: {:#?}",
            server.requests()
        );
    }

    #[tokio::test]
    async fn label_and_field_selectors_filter_lists_and_watches() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply_all([
            config_map(
                "default",
                "web-front",
                json!({ "app": "web", "tier": "front" }),
            ),
            config_map("default", "db", json!({ "app": "db" })),
            config_map("default", "plain", json!({})),
            config_map("other", "web-other", json!({ "app": "web" })),
        ]);
        let client = client(&server, dir.path()).await;
        let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let names = async |api: &Api<ConfigMap>, lp: ListParams| -> Vec<String> {
            let list = api.list(&lp).await.expect("list ConfigMaps");
            list.items.iter().map(|cm| cm.name_any()).collect()
        };
        for (selector, expected) in [
            ("app=web", vec!["web-front"]),
            ("app==db", vec!["db"]),
            ("app", vec!["db", "web-front"]),
            ("!tier", vec!["db", "plain"]),
            ("app=web,tier", vec!["web-front"]),
            ("app in (web,db),!tier", vec!["db"]),
            ("app!=web", vec!["db", "plain"]),
            ("app notin (web)", vec!["db", "plain"]),
        ] {
            assert_eq!(
                names(&api, ListParams::default().labels(selector)).await,
                expected,
                "labelSelector {selector}"
            );
        }
        let everywhere: Api<ConfigMap> = Api::all(client.clone());
        assert_eq!(
            names(&everywhere, ListParams::default().labels("app=web")).await,
            ["web-front", "web-other"]
        );
        assert_eq!(
            names(&api, ListParams::default().fields("metadata.name=db")).await,
            ["db"]
        );
        assert_eq!(
            api_code(api.list(&ListParams::default().labels("app in (web")).await),
            (400, "BadRequest".to_owned())
        );

        let mut events = spawn_stream(watcher(
            api.clone(),
            watcher::Config::default().labels("app=web"),
        ));
        assert_eq!(initial_names(&mut events).await, ["web-front"]);
        server.apply(config_map("default", "plain", json!({ "app": "web" })));
        assert_eq!(
            next_change(&mut events).await,
            "Apply default/plain",
            "starts matching"
        );
        server.apply(config_map("default", "plain", json!({})));
        assert_eq!(
            next_change(&mut events).await,
            "Delete default/plain",
            "stops matching"
        );
        server.apply(config_map(
            "default",
            "db",
            json!({ "app": "db", "x": "y" }),
        ));
        server.apply(config_map(
            "default",
            "web-front",
            json!({ "app": "web", "tier": "back" }),
        ));
        assert_eq!(
            next_change(&mut events).await,
            "Apply default/web-front",
            "db never matched"
        );
        assert!(watches(&server, "configmaps")[0].contains("labelSelector=app%3Dweb"));
    }

    #[tokio::test]
    async fn leases_create_get_and_conflict_on_a_stale_resource_version() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let client = client(&server, dir.path()).await;
        let leases: Api<Lease> = Api::default_namespaced(client);
        let name = "wasmgress-leader";
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "holderIdentity": "pod-a", "leaseDurationSeconds": 15 },
        }))
        .expect("a Lease");
        let created = leases
            .create(&PostParams::default(), &lease)
            .await
            .expect("create the Lease");
        assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        assert_eq!(
            api_code(leases.create(&PostParams::default(), &lease).await),
            (409, "AlreadyExists".to_owned())
        );

        let mut current = leases.get(name).await.expect("get the Lease");
        let mut stale = current.clone();
        current.spec.as_mut().expect("spec").holder_identity = Some("pod-b".into());
        let replaced = leases
            .replace(name, &PostParams::default(), &current)
            .await
            .expect("replace with the current resourceVersion");
        assert_ne!(
            replaced.metadata.resource_version,
            stale.metadata.resource_version
        );
        stale.spec.as_mut().expect("spec").holder_identity = Some("pod-c".into());
        assert_eq!(
            api_code(leases.replace(name, &PostParams::default(), &stale).await),
            (409, "Conflict".to_owned())
        );
        let stored = server
            .get("coordination.k8s.io/v1", "Lease", Some("default"), name)
            .expect("stored");
        assert_eq!(stored["spec"]["holderIdentity"], "pod-b");

        assert!(leases.get_opt("missing").await.expect("get_opt").is_none());
        assert_eq!(
            api_code(leases.get("missing").await),
            (404, "NotFound".to_owned())
        );

        // A single-object watch, as leader election and kube's watch_object do it.
        let mut object = spawn_stream(watcher::watch_object(leases.clone(), name));
        let holder = |l: &Option<Lease>| l.as_ref().and_then(|l| l.spec.clone()?.holder_identity);
        assert_eq!(
            holder(&next(&mut object).await.expect("watch_object")),
            Some("pod-b".into())
        );
        let mut by_admin = stored.clone();
        by_admin["spec"]["holderIdentity"] = json!("pod-d");
        server.apply(by_admin);
        assert_eq!(
            holder(&next(&mut object).await.expect("watch_object")),
            Some("pod-d".into())
        );
        assert!(
            server.requests().iter().any(|r| r.contains("watch=true")
                && r.contains("fieldSelector=metadata.name%3Dwasmgress-leader")),
            "{:#?}",
            server.requests()
        );

        let stale_delete = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: replaced.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        assert_eq!(
            api_code(leases.delete(name, &stale_delete).await),
            (409, "Conflict".to_owned())
        );
        leases
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete the Lease");
        assert_eq!(next(&mut object).await.expect("watch_object"), None);
        assert_eq!(
            api_code(leases.delete(name, &DeleteParams::default()).await),
            (404, "NotFound".to_owned())
        );
    }

    #[tokio::test]
    async fn ingress_status_writes_touch_only_status() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply(ingress("default", "a", "a.example"));
        let client = client(&server, dir.path()).await;
        let api: Api<Ingress> = Api::default_namespaced(client);
        let lb_ip = |ing: &Ingress| {
            ing.status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?
                .ip
                .clone()
        };

        let patched = api
            .patch_status(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "spec": { "ingressClassName": "sneaky" },
                    "status": { "loadBalancer": { "ingress": [{ "ip": "127.0.0.1" }] } },
                })),
            )
            .await
            .expect("patch the status");
        assert_eq!(lb_ip(&patched).as_deref(), Some("127.0.0.1"));
        assert_eq!(
            patched
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.clone()),
            None
        );
        let stored = server
            .get(INGRESS.0, INGRESS.1, Some("default"), "a")
            .expect("stored");
        assert_eq!(
            stored["status"]["loadBalancer"]["ingress"][0]["ip"],
            "127.0.0.1"
        );
        assert_eq!(stored["metadata"]["generation"], 1);

        // A write to the object itself keeps the status.
        let patched = api
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "metadata": { "labels": { "team": "edge" } }, "status": null }),
                ),
            )
            .await
            .expect("patch the Ingress");
        assert_eq!(
            patched.labels().get("team").map(String::as_str),
            Some("edge")
        );
        assert_eq!(lb_ip(&patched).as_deref(), Some("127.0.0.1"));
        let patched = api
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Strategic(json!({ "spec": { "ingressClassName": "wasmgress" } })),
            )
            .await
            .expect("strategic merge patch");
        assert_eq!(
            patched
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref()),
            Some("wasmgress")
        );
        assert_eq!(patched.metadata.generation, Some(2));

        let applied = api
            .patch_status(
                "a",
                &PatchParams::apply("wasmgress").force(),
                &Patch::Apply(json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "Ingress",
                    "status": { "loadBalancer": { "ingress": [{ "hostname": "lb.example" }] } },
                })),
            )
            .await
            .expect("server-side apply of the status");
        let first = applied
            .status
            .clone()
            .and_then(|s| s.load_balancer?.ingress?.into_iter().next());
        assert_eq!(
            first.and_then(|i| i.hostname).as_deref(),
            Some("lb.example")
        );

        let mut current = api.get("a").await.expect("get");
        let stale = current.clone();
        current.spec.as_mut().expect("spec").ingress_class_name = Some("ignored".into());
        current.status = serde_json::from_value(
            json!({ "loadBalancer": { "ingress": [{ "ip": "10.0.0.9" }] } }),
        )
        .expect("status");
        let replaced = api
            .replace_status("a", &PostParams::default(), &current)
            .await
            .expect("replace the status");
        assert_eq!(lb_ip(&replaced).as_deref(), Some("10.0.0.9"));
        assert_eq!(
            replaced
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref()),
            Some("wasmgress")
        );
        assert_eq!(
            api_code(
                api.replace_status("a", &PostParams::default(), &stale)
                    .await
            ),
            (409, "Conflict".to_owned())
        );
        assert_eq!(
            api_code(
                api.patch_status("missing", &PatchParams::default(), &Patch::Merge(json!({})))
                    .await
            ),
            (404, "NotFound".to_owned())
        );
    }

    #[tokio::test]
    async fn recorder_creates_then_patches_an_event() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply(ingress("default", "a", "a.example"));
        let client = client(&server, dir.path()).await;
        let ing = Api::<Ingress>::default_namespaced(client.clone())
            .get("a")
            .await
            .expect("get");
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "wasmgress".into(),
                instance: Some("wasmgress-0".into()),
            },
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "Rejected".into(),
            note: Some("unknown annotation".into()),
            action: "Compile".into(),
            secondary: None,
        };
        recorder
            .publish(&event, &ing.object_ref(&()))
            .await
            .expect("first publish");
        recorder
            .publish(&event, &ing.object_ref(&()))
            .await
            .expect("second publish");

        let stored = server.list("events.k8s.io/v1", "Event");
        assert_eq!(stored.len(), 1, "{stored:#?}");
        assert_eq!(stored[0]["series"]["count"], 2);
        assert_eq!(stored[0]["regarding"]["name"], "a");
        assert_eq!(stored[0]["regarding"]["kind"], "Ingress");
        assert_eq!(stored[0]["reason"], "Rejected");
        let writes: Vec<String> = server
            .requests()
            .into_iter()
            .filter(|r| r.contains("/apis/events.k8s.io/v1/namespaces/default/events"))
            .collect();
        assert_eq!(writes.len(), 2, "{writes:#?}");
        assert!(writes[0].starts_with("POST "), "{writes:#?}");
        assert!(writes[1].starts_with("PATCH "), "{writes:#?}");
        let typed = Api::<K8sEvent>::default_namespaced(client)
            .list(&ListParams::default())
            .await
            .expect("list Events");
        assert_eq!(typed.items[0].series.as_ref().map(|s| s.count), Some(2));
    }

    #[tokio::test]
    async fn discovery_and_version_answer_kube_rs() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply(ingress("default", "a", "a.example"));
        let client = client(&server, dir.path()).await;
        let info = client.apiserver_version().await.expect("/version");
        assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "33"));
        let plain = Discovery::new(client.clone())
            .run()
            .await
            .expect("discovery");
        let aggregated = Discovery::new(client.clone())
            .run_aggregated()
            .await
            .expect("aggregated discovery");
        for discovery in [plain, aggregated] {
            let (ar, caps) = discovery
                .resolve_gvk(&GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress"))
                .expect("Ingress is discovered");
            assert_eq!(
                (ar.plural.as_str(), caps.scope.clone()),
                ("ingresses", Scope::Namespaced)
            );
            let (_, caps) = discovery
                .resolve_gvk(&GroupVersionKind::gvk(
                    "networking.k8s.io",
                    "v1",
                    "IngressClass",
                ))
                .expect("IngressClass is discovered");
            assert_eq!(caps.scope, Scope::Cluster);
            assert!(
                discovery
                    .resolve_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"))
                    .is_some()
            );
            let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let names: Vec<String> = dynamic
                .list(&ListParams::default())
                .await
                .expect("dynamic list")
                .items
                .iter()
                .map(|o| o.name_any())
                .collect();
            assert_eq!(names, ["a"]);
        }
    }

    #[tokio::test]
    async fn streaming_list_watcher_gets_initial_events_then_changes() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply(ingress("default", "a", "a.example"));
        let client = client(&server, dir.path()).await;
        let api: Api<Ingress> = Api::default_namespaced(client);
        let mut events = spawn_stream(watcher(api, watcher::Config::default().streaming_lists()));
        assert_eq!(initial_names(&mut events).await, ["a"]);
        server.apply(ingress("default", "b", "b.example"));
        assert_eq!(next_change(&mut events).await, "Apply default/b");
        assert!(lists(&server, "ingresses").is_empty());
        assert!(watches(&server, "ingresses")[0].contains("sendInitialEvents=true"));
    }

    #[tokio::test]
    async fn watches_time_out_send_bookmarks_and_expire() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        server.apply(ingress("default", "a", "a.example"));
        let client = client(&server, dir.path()).await;
        let api: Api<Ingress> = Api::default_namespaced(client);

        let started = Instant::now();
        let stream = api
            .watch(&WatchParams::default().timeout(2), "0")
            .await
            .expect("watch");
        let events: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
            .await
            .expect("the watch ends by itself");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        let added = events
            .iter()
            .find_map(|e| match e {
                Ok(WatchEvent::Added(ing)) => Some(ing.clone()),
                _ => None,
            })
            .expect("a synthetic ADDED");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))),
            "{events:?}"
        );

        // Pagination tokens and watches from before a compaction expire.
        let page = api
            .list(&ListParams::default().limit(1))
            .await
            .expect("list");
        assert!(
            page.metadata.continue_.is_none(),
            "one Ingress fits one page"
        );
        server.apply(ingress("default", "b", "b.example"));
        let page = api
            .list(&ListParams::default().limit(1))
            .await
            .expect("list");
        let token = page.metadata.continue_.expect("a continue token");
        server.compact();
        assert_eq!(
            api_code(
                api.list(&ListParams::default().limit(1).continue_token(&token))
                    .await
            ),
            (410, "Expired".to_owned())
        );
        let old = added.resource_version().expect("resourceVersion");
        let mut stream = api
            .watch(&WatchParams::default(), &old)
            .await
            .expect("watch")
            .boxed();
        match stream.next().await {
            Some(Ok(WatchEvent::Error(status))) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            }
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
        assert!(
            stream.next().await.is_none(),
            "the stream ends after the ERROR"
        );
    }

    #[tokio::test]
    async fn malformed_and_odd_requests_get_status_answers() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(server.url().starts_with("http://127.0.0.1:"));
        let client = client(&server, dir.path()).await;
        let raw = |method: &str, uri: &str, content_type: &str, body: &[u8]| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", content_type)
                .body(body.to_vec())
                .expect("request")
        };
        let cms = "/api/v1/namespaces/default/configmaps";
        for (request, expected) in [
            (
                raw("PUT", &format!("{cms}/x"), "application/json", b"{not json"),
                (400, "BadRequest"),
            ),
            (
                raw("POST", cms, "application/json", b"[1]"),
                (400, "BadRequest"),
            ),
            (
                raw("POST", cms, "application/json", b"{\"metadata\":{}}"),
                (422, "Invalid"),
            ),
            (
                raw("GET", &format!("{cms}?limit=abc"), "", b""),
                (400, "BadRequest"),
            ),
            (
                raw("GET", &format!("{cms}?continue=nonsense"), "", b""),
                (400, "BadRequest"),
            ),
            (
                raw(
                    "GET",
                    &format!("{cms}?watch=true&resourceVersion=x"),
                    "",
                    b"",
                ),
                (400, "BadRequest"),
            ),
            (
                raw("GET", &format!("{cms}?labelSelector=%ZZ"), "", b""),
                (400, "BadRequest"),
            ),
            (
                raw("GET", "/apis/example.com/v1/widgets", "", b""),
                (404, "NotFound"),
            ),
            (
                raw(
                    "GET",
                    "/api/v1/namespaces/default/configmaps/x/status",
                    "",
                    b"",
                ),
                (404, "NotFound"),
            ),
            (
                raw("POST", "/api/v1/configmaps", "application/json", b"{}"),
                (405, "MethodNotAllowed"),
            ),
            (
                raw(
                    "PATCH",
                    &format!("{cms}/x"),
                    "application/json-patch+json",
                    b"[]",
                ),
                (415, "UnsupportedMediaType"),
            ),
            (
                raw(
                    "PATCH",
                    &format!("{cms}/x"),
                    "application/apply-patch+yaml",
                    b"{}",
                ),
                (400, "BadRequest"),
            ),
        ] {
            let described = format!("{} {}", request.method(), request.uri());
            let (code, reason) = api_code(client.request_text(request).await);
            assert_eq!((code, reason.as_str()), expected, "{described}");
        }

        // dryRun stores nothing; server-side apply creates; delete_collection honours labels.
        let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let cm: ConfigMap =
            serde_json::from_value(config_map("default", "dry", json!({}))).expect("cm");
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        api.create(&dry, &cm).await.expect("dry-run create");
        assert!(
            server
                .get("v1", "ConfigMap", Some("default"), "dry")
                .is_none()
        );
        api.patch(
            "applied",
            &PatchParams::apply("test"),
            &Patch::Apply(config_map("default", "applied", json!({ "app": "web" }))),
        )
        .await
        .expect("server-side apply creates");
        server.apply(config_map("default", "kept", json!({ "app": "db" })));
        api.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=web"),
        )
        .await
        .expect("delete_collection");
        let left: Vec<Value> = server.list("v1", "ConfigMap");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["metadata"]["name"], "kept");
        assert!(left[0]["metadata"]["uid"].is_string());
        assert!(left[0]["metadata"]["creationTimestamp"].is_string());
        assert_eq!(left[0]["kind"], "ConfigMap");
    }
    /// The wire format as bytes: a chunked body with one JSON event per line, and a watch cut by
    /// `drop_watches` ends without the terminating chunk (kube-rs reads that as a resumable end).
    #[tokio::test]
    async fn dropped_watches_are_cut_mid_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let server = ApiServer::start().await;
        server.apply(config_map("default", "a", json!({})));
        let addr = server.url().trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let request = format!(
            "GET /api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await.expect("send");
        server
            .wait_for("the watch to open", WAIT, |s| s.open_watches() == 1)
            .await;
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&received).contains("\"ADDED\"") {
            let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
                .await
                .expect("the ADDED event in time")
                .expect("read");
            assert!(
                n > 0,
                "the watch ended early: {}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buf[..n]);
        }
        server.drop_watches();
        loop {
            let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
                .await
                .expect("the connection closes in time")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&received);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert!(head.contains("application/json"), "{head}");
        let line = body
            .lines()
            .find(|l| l.starts_with('{'))
            .expect("an event line");
        let event: Value = serde_json::from_str(line).expect("one JSON event per line");
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event["object"]["metadata"]["name"], "a");
        assert!(
            !body.ends_with("0\r\n\r\n"),
            "cut without the last chunk: {body:?}"
        );
        server
            .wait_for("the watch to close", WAIT, |s| s.open_watches() == 0)
            .await;
    }
}

//! The file source: a folder of Kubernetes YAML, as `kubectl apply -f DIR` would read it.
//!
//! Every `*.yaml`/`*.yml` below the folder (recursively, hidden entries skipped, symlinked files
//! followed so a mounted ConfigMap works) is read as multi-document YAML and typed with
//! k8s-openapi. Unknown kinds are skipped. A file that stops parsing keeps its last good
//! objects, with an error diagnostic, so a half-saved edit never takes routes away. This module
//! owns reading and watching files; it never interprets the objects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use notify::Watcher;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Snapshot, Sourced};
use crate::diagnostic::Diagnostic;

/// Reading the folder itself failed; a single bad file is a diagnostic instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read manifest folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch manifest folder {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

#[derive(Clone, Debug)]
enum Object {
    Ingress(Box<Ingress>),
    IngressClass(Box<IngressClass>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Endpoints(Box<Endpoints>),
    Secret(Box<Secret>),
    ConfigMap(Box<ConfigMap>),
}

/// A folder of manifests, remembering each file's last good parse.
#[derive(Debug)]
pub struct FileSource {
    root: PathBuf,
    last_good: HashMap<PathBuf, Vec<(Arc<str>, Object)>>,
}

impl FileSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            last_good: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the whole folder into a snapshot.
    pub fn load(&mut self) -> Result<Snapshot, Error> {
        let mut files = Vec::new();
        collect_manifests(&self.root, &mut files).map_err(|source| Error::Folder {
            path: self.root.clone(),
            source,
        })?;
        files.sort();

        let mut snapshot = Snapshot::default();
        let mut seen = HashMap::with_capacity(files.len());
        for path in files {
            let display = path.display().to_string();
            let objects = match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let (objects, problems) = parse_documents(&display, &text);
                    let broken = problems
                        .iter()
                        .any(|d| d.severity == crate::diagnostic::Severity::Error);
                    snapshot.problems.extend(problems);
                    match (broken, self.last_good.get(&path)) {
                        (true, Some(previous)) => {
                            snapshot.problems.push(
                                Diagnostic::error(
                                    "",
                                    "",
                                    "keeping the objects of its last good version",
                                )
                                .at(Some(display.as_str().into())),
                            );
                            previous.clone()
                        }
                        _ => objects,
                    }
                }
                Err(e) => {
                    snapshot.problems.push(
                        Diagnostic::error("", "", format!("cannot read file: {e}"))
                            .at(Some(display.as_str().into())),
                    );
                    self.last_good.get(&path).cloned().unwrap_or_default()
                }
            };
            for (origin, object) in &objects {
                push(&mut snapshot, origin.clone(), object.clone());
            }
            seen.insert(path, objects);
        }
        // Files that disappeared are forgotten: deleting a file deletes its objects.
        self.last_good = seen;
        Ok(snapshot)
    }

    /// Watches the folder; see [`watch`].
    pub fn watch(
        &self,
        debounce: Duration,
    ) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), Error> {
        watch(&self.root, debounce)
    }
}

/// Watches a folder recursively; each burst of changes becomes one message after `debounce` of
/// quiet. The returned watcher must be kept alive for as long as messages are wanted.
pub fn watch(
    root: &Path,
    debounce: Duration,
) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), Error> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let failed = |source| Error::Watch {
        path: root.to_owned(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = raw_tx.send(());
        }
    })
    .map_err(failed)?;
    watcher
        .watch(root, notify::RecursiveMode::Recursive)
        .map_err(failed)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Editors write a file in several steps: wait for the burst to end.
            loop {
                match tokio::time::timeout(debounce, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok((watcher, rx))
}

fn collect_manifests(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks: ConfigMap mounts are links into a hidden `..data` folder.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_manifests(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn push(snapshot: &mut Snapshot, origin: Arc<str>, object: Object) {
    let origin = Some(origin);
    match object {
        Object::Ingress(o) => snapshot.ingresses.push(Sourced { origin, object: *o }),
        Object::IngressClass(o) => snapshot
            .ingress_classes
            .push(Sourced { origin, object: *o }),
        Object::Service(o) => snapshot.services.push(Sourced { origin, object: *o }),
        Object::EndpointSlice(o) => snapshot
            .endpoint_slices
            .push(Sourced { origin, object: *o }),
        Object::Endpoints(o) => snapshot.endpoints.push(Sourced { origin, object: *o }),
        Object::Secret(o) => snapshot.secrets.push(Sourced { origin, object: *o }),
        Object::ConfigMap(o) => snapshot.config_maps.push(Sourced { origin, object: *o }),
    }
}

/// Parses every document of one file. Origins are `FILE` or, for multi-document files,
/// `FILE#N` (1-based), so a diagnostic points at the document.
fn parse_documents(file: &str, text: &str) -> (Vec<(Arc<str>, Object)>, Vec<Diagnostic>) {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => docs.push(value),
            Err(e) => {
                // A syntax error ends the stream: nothing after it can be trusted.
                problems.push(
                    Diagnostic::error("", "", format!("invalid YAML: {e}")).at(Some(file.into())),
                );
                return (Vec::new(), problems);
            }
        }
    }
    let many = docs.len() > 1;
    let mut objects = Vec::with_capacity(docs.len());
    for (i, value) in docs.into_iter().enumerate() {
        let origin: Arc<str> = if many {
            format!("{file}#{}", i + 1).into()
        } else {
            file.into()
        };
        parse_object(&origin, value, &mut objects, &mut problems);
    }
    (objects, problems)
}

fn parse_object(
    origin: &Arc<str>,
    value: serde_yaml::Value,
    objects: &mut Vec<(Arc<str>, Object)>,
    problems: &mut Vec<Diagnostic>,
) {
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>")
        .to_owned();
    let label = format!("{kind} {name}");

    fn typed<T: serde::de::DeserializeOwned>(
        value: serde_yaml::Value,
        origin: &Arc<str>,
        label: &str,
        problems: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(object) => Some(object),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                problems.push(
                    Diagnostic::error(label, path, format!("invalid {label}: {}", e.inner()))
                        .at(Some(origin.clone())),
                );
                None
            }
        }
    }

    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    parse_object(origin, item, objects, problems);
                }
            }
            return;
        }
        ("networking.k8s.io/v1", "Ingress") => {
            typed(value, origin, &label, problems).map(|o| Object::Ingress(Box::new(defaulted(o))))
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            typed(value, origin, &label, problems).map(|o| Object::IngressClass(Box::new(o)))
        }
        ("v1", "Service") => {
            typed(value, origin, &label, problems).map(|o| Object::Service(Box::new(defaulted(o))))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => typed(value, origin, &label, problems)
            .map(|o| Object::EndpointSlice(Box::new(defaulted(o)))),
        ("v1", "Endpoints") => typed(value, origin, &label, problems)
            .map(|o| Object::Endpoints(Box::new(defaulted(o)))),
        ("v1", "Secret") => typed::<Secret>(value, origin, &label, problems)
            .map(|o| Object::Secret(Box::new(merge_string_data(defaulted(o))))),
        ("v1", "ConfigMap") => typed::<ConfigMap>(value, origin, &label, problems)
            .map(|o| Object::ConfigMap(Box::new(defaulted(o)))),
        (
            _,
            "Ingress" | "IngressClass" | "Service" | "EndpointSlice" | "Endpoints" | "Secret"
            | "ConfigMap",
        ) => {
            problems.push(
                Diagnostic::warning(
                    label,
                    "apiVersion",
                    format!("apiVersion {api_version:?} is not supported for {kind}; skipped"),
                )
                .at(Some(origin.clone())),
            );
            None
        }
        _ => {
            tracing::debug!(%origin, %api_version, %kind, "skipping object of a kind wasmgress does not use");
            None
        }
    };
    if let Some(object) = object {
        objects.push((origin.clone(), object));
    }
}

/// Objects without a namespace land in `default`, as `kubectl apply` would put them.
fn defaulted<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(mut object: T) -> T {
    let meta = object.metadata_mut();
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".into());
    }
    object
}

/// The API server folds `stringData` into `data`; do the same so compile sees one field.
fn merge_string_data(mut secret: Secret) -> Secret {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (k, v) in strings {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_files_and_points_at_bad_documents() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n\
                    apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: b}\nspec: {rules: [{host: 7}]}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: c}\n";
        let (objects, problems) = parse_documents("x.yaml", text);
        assert_eq!(objects.len(), 1, "only the Service is usable");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert_eq!(p.origin.as_deref(), Some("x.yaml#2"));
        assert_eq!(p.object, "Ingress b");
        assert_eq!(p.field, "spec.rules[0].host");
    }

    #[test]
    fn fills_default_namespace_and_string_data() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\nstringData: {tls.crt: abc}\n";
        let (objects, problems) = parse_documents("s.yaml", text);
        assert!(problems.is_empty(), "{problems:?}");
        let Object::Secret(secret) = &objects[0].1 else {
            panic!("expected a Secret");
        };
        assert_eq!(secret.metadata.namespace.as_deref(), Some("default"));
        let data = secret.data.as_ref().expect("data");
        assert_eq!(data["tls.crt"].0, b"abc");
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
        )
        .expect("write");
        let mut source = FileSource::new(dir.path());
        assert_eq!(source.load().expect("load").services.len(), 1);
        std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n")
            .expect("write");
        let snapshot = source.load().expect("load");
        assert_eq!(snapshot.services.len(), 1, "last good Service kept");
        assert!(
            snapshot
                .problems
                .iter()
                .any(|d| d.message.contains("invalid YAML"))
        );
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(
            source.load().expect("load").services.len(),
            0,
            "deleted file forgotten"
        );
    }
}

//! Kubernetes Events on Ingresses: what compile said about each one, where `kubectl describe
//! ingress` shows it.
//!
//! Owns the `events.k8s.io/v1` Events it posts (through kube-runtime's [`Recorder`]) and the
//! memory of which are standing. It must not touch the Ingresses themselves, and it posts only
//! while this replica leads: every replica compiles the same snapshot into the same
//! diagnostics, so N replicas posting would put N copies of every Event on each Ingress.
//!
//! An Event is posted when its (type, reason, note) appears for a revision of an Ingress, not
//! on every compile: an unchanged problem is said once, a problem that goes away and comes back
//! is said again (as a repeat of the same Event, which the API counts), and editing the Ingress
//! starts afresh.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::watch;

use super::Outcome;
use crate::diagnostic::{Diagnostic, Severity};

/// The API's limit on an Event's note, in bytes.
const NOTE_LIMIT: usize = 1024;
/// Events no longer standing that are remembered per Ingress revision, so that a problem that
/// comes back repeats its Event instead of adding one.
const KEEP_INACTIVE: usize = 16;
/// Upper bound of one Event write.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delays after failed posts, doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// The `action` of every Event: what we did to the Ingress that the Event reports on.
const ACTION: &str = "Compile";

/// Reason of an error: the Ingress (or that version of it) is not served.
pub(crate) const REJECTED: &str = "Rejected";
/// Reason of a warning: served, but something deserves a look.
pub(crate) const WARNING: &str = "Warning";
/// Reason of an accepted Ingress, as ingress-nginx says it.
pub(crate) const SYNC: &str = "Sync";

/// One Event to stand on an Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// The Events one Ingress should carry for one outcome.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    /// The Ingress's uid (its namespace/name if it has none).
    pub id: String,
    /// Changes when the user edits what compile reads (spec, annotations); not on status
    /// writes, which change the resourceVersion too (our own status writes among them).
    pub revision: u64,
    pub reference: ObjectReference,
    pub events: Vec<Spec>,
}

/// `field: message`: the Event already names the Ingress and the severity.
fn note(d: &Diagnostic) -> String {
    let text = if d.field.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.field, d.message)
    };
    truncate(text, NOTE_LIMIT)
}

/// Cuts `text` to at most `limit` bytes on a character boundary, marking the cut.
fn truncate(mut text: String, limit: usize) -> String {
    const MORE: &str = "…";
    if text.len() <= limit {
        return text;
    }
    let mut end = limit.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MORE);
    text
}

fn accepted_note(ingress: &Ingress) -> String {
    let spec = ingress.spec.as_ref();
    let paths: usize = spec
        .and_then(|s| s.rules.as_ref())
        .map(|rules| {
            rules
                .iter()
                .map(|r| r.http.as_ref().map_or(0, |h| h.paths.len()))
                .sum()
        })
        .unwrap_or(0);
    let default = spec.and_then(|s| s.default_backend.as_ref()).is_some();
    let plural = if paths == 1 { "" } else { "s" };
    match (paths, default) {
        (0, false) => "accepted: nothing to serve".to_owned(),
        (0, true) => "accepted: serving its default backend".to_owned(),
        (n, false) => format!("accepted: serving {n} path{plural}"),
        (n, true) => format!("accepted: serving {n} path{plural} and a default backend"),
    }
}

fn revision(ingress: &Ingress) -> u64 {
    let mut h = DefaultHasher::new();
    // Serialising typed k8s-openapi objects cannot fail; an empty string would only make an
    // edit go unnoticed.
    serde_json::to_string(&ingress.spec)
        .unwrap_or_default()
        .hash(&mut h);
    ingress.metadata.annotations.hash(&mut h);
    h.finish()
}

fn reference(ingress: &Ingress, namespace: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("Ingress".into()),
        namespace: Some(namespace.to_owned()),
        name: ingress.metadata.name.clone(),
        uid: ingress.metadata.uid.clone(),
        resource_version: ingress.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The Events each Ingress of ours should carry after `outcome`.
///
/// Ours means served, or named by an error or warning: compile only says those about
/// Ingresses it claimed (the others get an info "ignored"), so other controllers' Ingresses
/// never get our Events. Info diagnostics are not posted.
pub(crate) fn wanted(outcome: &Outcome) -> Vec<Wanted> {
    let mut said: HashMap<&str, Vec<&Diagnostic>> = HashMap::new();
    for d in outcome.diagnostics.iter() {
        if d.severity == Severity::Info {
            continue;
        }
        if let Some(key) = d.object.strip_prefix("Ingress ") {
            said.entry(key).or_default().push(d);
        }
    }
    let mut wanted = Vec::new();
    for sourced in &outcome.snapshot.ingresses {
        let ingress = &sourced.object;
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let key = format!(
            "{namespace}/{}",
            ingress.metadata.name.as_deref().unwrap_or("")
        );
        let diagnostics = said.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let served = outcome.served.contains(&key);
        if !served && diagnostics.is_empty() {
            continue;
        }
        let rejected = diagnostics.iter().any(|d| d.severity == Severity::Error);
        let mut events: Vec<Spec> = Vec::new();
        if served && !rejected {
            events.push(Spec {
                type_: EventType::Normal,
                reason: SYNC,
                note: accepted_note(ingress),
            });
        }
        for d in diagnostics {
            let spec = Spec {
                type_: EventType::Warning,
                reason: if d.severity == Severity::Error {
                    REJECTED
                } else {
                    WARNING
                },
                note: note(d),
            };
            if !events.contains(&spec) {
                events.push(spec);
            }
        }
        wanted.push(Wanted {
            id: ingress.metadata.uid.clone().unwrap_or(key),
            revision: revision(ingress),
            reference: reference(ingress, namespace),
            events,
        });
    }
    wanted
}

/// An Event to post: `wanted[ingress].events[event]`, with the handle that posted it before
/// when it is a repeat.
#[derive(Debug)]
pub(crate) struct Due<H> {
    pub ingress: usize,
    pub event: usize,
    pub handle: Option<H>,
}

#[derive(Debug)]
struct Entry<H> {
    spec: Spec,
    /// In the latest outcome and posted: nothing to do.
    active: bool,
    handle: H,
}

#[derive(Debug)]
struct Seen<H> {
    revision: u64,
    /// Oldest post first.
    events: Vec<Entry<H>>,
}

/// Which Events are standing, per Ingress. `H` is what posted an Event (a [`Recorder`], whose
/// cache turns a repeat into a count on the same Event); tests use plain values.
#[derive(Debug)]
pub(crate) struct Memory<H> {
    ingresses: HashMap<String, Seen<H>>,
}

impl<H> Default for Memory<H> {
    fn default() -> Self {
        Memory {
            ingresses: HashMap::new(),
        }
    }
}

impl<H: Clone> Memory<H> {
    /// The Events of `wanted` that are not standing yet. Forgets Ingresses that are gone (or no
    /// longer ours) and what was said about older revisions, and marks Events that are no
    /// longer wanted as not standing, so they are posted again should they come back.
    pub(crate) fn due(&mut self, wanted: &[Wanted]) -> Vec<Due<H>> {
        let ids: HashSet<&str> = wanted.iter().map(|w| w.id.as_str()).collect();
        self.ingresses.retain(|id, _| ids.contains(id.as_str()));
        let mut due = Vec::new();
        for (i, w) in wanted.iter().enumerate() {
            let seen = self.ingresses.entry(w.id.clone()).or_insert_with(|| Seen {
                revision: w.revision,
                events: Vec::new(),
            });
            if seen.revision != w.revision {
                seen.revision = w.revision;
                seen.events.clear();
            }
            for entry in &mut seen.events {
                entry.active = entry.active && w.events.contains(&entry.spec);
            }
            for (j, spec) in w.events.iter().enumerate() {
                match seen.events.iter().find(|e| &e.spec == spec) {
                    Some(e) if e.active => {}
                    found => due.push(Due {
                        ingress: i,
                        event: j,
                        handle: found.map(|e| e.handle.clone()),
                    }),
                }
            }
            let inactive = seen.events.iter().filter(|e| !e.active).count();
            let mut forget = inactive.saturating_sub(KEEP_INACTIVE);
            seen.events.retain(|e| {
                let drop = forget > 0 && !e.active;
                forget -= usize::from(drop);
                !drop
            });
        }
        due
    }

    /// Records that `spec` now stands on Ingress `id`, posted by `handle`.
    pub(crate) fn posted(&mut self, id: &str, spec: &Spec, handle: H) {
        let Some(seen) = self.ingresses.get_mut(id) else {
            return;
        };
        seen.events.retain(|e| &e.spec != spec);
        seen.events.push(Entry {
            spec: spec.clone(),
            active: true,
            handle,
        });
    }
}

/// Posts Events for every outcome while leading, until the outcome channel closes.
pub(crate) async fn run(
    client: Client,
    reporter: Reporter,
    mut outcomes: watch::Receiver<Option<Arc<Outcome>>>,
    mut leadership: watch::Receiver<bool>,
) {
    let mut memory: Memory<Recorder> = Memory::default();
    let mut retry: Option<Duration> = None;
    loop {
        tokio::select! {
            changed = outcomes.changed() => if changed.is_err() { return },
            changed = leadership.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
        }
        let Some(outcome) = outcomes.borrow_and_update().clone() else {
            continue;
        };
        if !*leadership.borrow_and_update() {
            retry = None;
            continue;
        }
        let wanted = wanted(&outcome);
        let mut failed = 0usize;
        let mut first_error = None;
        for due in memory.due(&wanted) {
            // Leadership may end mid-pass; the new leader posts what is left.
            if !*leadership.borrow() {
                break;
            }
            let w = &wanted[due.ingress];
            let spec = &w.events[due.event];
            // One Recorder per distinct Event: its cache keys on (type, reason, action, object)
            // but not the note, so a shared one would turn a *different* problem with the same
            // reason into a repeat of the first, with the first one's text.
            let recorder = due
                .handle
                .unwrap_or_else(|| Recorder::new(client.clone(), reporter.clone()));
            let event = Event {
                type_: spec.type_,
                reason: spec.reason.to_owned(),
                note: Some(spec.note.clone()),
                action: ACTION.to_owned(),
                secondary: None,
            };
            let result = tokio::time::timeout(CALL_TIMEOUT, recorder.publish(&event, &w.reference))
                .await
                .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            match result {
                Ok(()) => memory.posted(&w.id, spec, recorder),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            // One line per pass, not per Event: when Events fail they tend to all fail.
            tracing::warn!(failed, %error, "cannot post Ingress Events; will retry");
        }
        retry = (failed > 0).then(|| match retry {
            Some(d) => (d * 2).min(BACKOFF.1),
            None => BACKOFF.0,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressBackend, IngressRule, IngressSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::source::{Snapshot, Sourced};

    fn ingress(name: &str, paths: usize) -> Sourced<Ingress> {
        Sourced {
            origin: None,
            object: Ingress {
                metadata: ObjectMeta {
                    namespace: Some("default".into()),
                    name: Some(name.into()),
                    uid: Some(format!("uid-{name}")),
                    resource_version: Some("1".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(IngressSpec {
                    rules: Some(vec![IngressRule {
                        host: Some("example.com".into()),
                        http: Some(HTTPIngressRuleValue {
                            paths: (0..paths)
                                .map(|i| HTTPIngressPath {
                                    path: Some(format!("/{i}")),
                                    path_type: "Prefix".into(),
                                    backend: IngressBackend::default(),
                                })
                                .collect(),
                        }),
                    }]),
                    ..IngressSpec::default()
                }),
                status: None,
            },
        }
    }

    fn outcome(ingresses: Vec<Sourced<Ingress>>, served: &[&str], d: Vec<Diagnostic>) -> Outcome {
        Outcome {
            snapshot: Arc::new(Snapshot {
                ingresses,
                ..Snapshot::default()
            }),
            served: served.iter().map(|s| s.to_string()).collect(),
            diagnostics: Arc::new(d),
        }
    }

    type Summary = (String, Vec<(EventType, &'static str, String)>);

    fn summary(w: &[Wanted]) -> Vec<Summary> {
        w.iter()
            .map(|w| {
                (
                    w.id.clone(),
                    w.events
                        .iter()
                        .map(|e| (e.type_, e.reason, e.note.clone()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn diagnostics_map_to_events_on_our_ingresses_only() {
        let o = outcome(
            vec![
                ingress("good", 2),
                ingress("warned", 1),
                ingress("broken", 1),
                ingress("stale", 1),
                ingress("theirs", 1),
            ],
            &["default/good", "default/warned", "default/stale"],
            vec![
                Diagnostic::info("Ingress default/theirs", "", "ignored: not ours"),
                Diagnostic::info("Ingress default/good", "x", "fyi"),
                Diagnostic::warning("Ingress default/warned", "spec.rules[0]", "no endpoints"),
                Diagnostic::error(
                    "Ingress default/broken",
                    "spec.tls[0].secretName",
                    "missing",
                ),
                Diagnostic::error("Ingress default/broken", "", "rejected; not serving"),
                Diagnostic::error("Ingress default/broken", "", "rejected; not serving"),
                Diagnostic::error(
                    "Ingress default/stale",
                    "",
                    "rejected; still serving its last good version",
                ),
                Diagnostic::error("Service default/x", "", "not an Ingress"),
            ],
        );
        use EventType::{Normal, Warning};
        assert_eq!(
            summary(&wanted(&o)),
            vec![
                (
                    "uid-good".into(),
                    vec![(Normal, SYNC, "accepted: serving 2 paths".into())]
                ),
                (
                    "uid-warned".into(),
                    vec![
                        (Normal, SYNC, "accepted: serving 1 path".into()),
                        (Warning, WARNING, "spec.rules[0]: no endpoints".into()),
                    ]
                ),
                (
                    "uid-broken".into(),
                    vec![
                        (Warning, REJECTED, "spec.tls[0].secretName: missing".into()),
                        (Warning, REJECTED, "rejected; not serving".into()),
                    ]
                ),
                (
                    "uid-stale".into(),
                    vec![(
                        Warning,
                        REJECTED,
                        "rejected; still serving its last good version".into()
                    )]
                ),
            ]
        );
    }

    #[test]
    fn the_reference_names_the_ingress_version() {
        let o = outcome(vec![ingress("good", 1)], &["default/good"], Vec::new());
        let r = &wanted(&o)[0].reference;
        assert_eq!(r.api_version.as_deref(), Some("networking.k8s.io/v1"));
        assert_eq!(r.kind.as_deref(), Some("Ingress"));
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("good"));
        assert_eq!(r.uid.as_deref(), Some("uid-good"));
        assert_eq!(r.resource_version.as_deref(), Some("1"));
    }

    #[test]
    fn notes_are_cut_to_one_kib_on_a_char_boundary() {
        let long = "é".repeat(600); // 1200 bytes
        let d = Diagnostic::error("Ingress default/a", "", long);
        let n = note(&d);
        assert!(n.len() <= NOTE_LIMIT, "{}", n.len());
        assert!(n.ends_with('…'));
        assert!(n.len() > NOTE_LIMIT - 8);
        assert_eq!(truncate("short".into(), NOTE_LIMIT), "short");
    }

    #[test]
    fn a_status_write_is_not_an_edit() {
        let a = ingress("a", 1).object;
        let mut b = a.clone();
        b.metadata.resource_version = Some("2".into());
        b.status = Some(Default::default());
        assert_eq!(revision(&a), revision(&b));
        let mut c = a.clone();
        c.metadata.annotations = Some(BTreeMap::from([("k".into(), "v".into())]));
        assert_ne!(revision(&a), revision(&c));
        let d = ingress("a", 2).object;
        assert_ne!(revision(&a), revision(&d));
    }

    fn wanted_one(id: &str, revision: u64, notes: &[&str]) -> Wanted {
        Wanted {
            id: id.into(),
            revision,
            reference: ObjectReference::default(),
            events: notes
                .iter()
                .map(|n| Spec {
                    type_: EventType::Warning,
                    reason: REJECTED,
                    note: n.to_string(),
                })
                .collect(),
        }
    }

    /// Posts everything due with handle `n`, returning (note, repeat-of-handle).
    fn post(m: &mut Memory<u32>, wanted: &[Wanted], n: u32) -> Vec<(String, Option<u32>)> {
        let due = m.due(wanted);
        let mut out = Vec::new();
        for d in due {
            let w = &wanted[d.ingress];
            let spec = &w.events[d.event];
            out.push((spec.note.clone(), d.handle));
            m.posted(&w.id, spec, d.handle.unwrap_or(n));
        }
        out
    }

    #[test]
    fn identical_events_are_posted_once() {
        let mut m = Memory::default();
        let w = vec![wanted_one("a", 1, &["x", "y"])];
        assert_eq!(
            post(&mut m, &w, 1),
            vec![("x".into(), None), ("y".into(), None)]
        );
        assert!(post(&mut m, &w, 2).is_empty());
        assert!(post(&mut m, &w, 3).is_empty());
    }

    #[test]
    fn a_failed_post_is_due_again() {
        let mut m: Memory<u32> = Memory::default();
        let w = vec![wanted_one("a", 1, &["x"])];
        assert_eq!(m.due(&w).len(), 1);
        assert_eq!(m.due(&w).len(), 1);
    }

    #[test]
    fn a_problem_that_comes_back_repeats_its_event_and_an_edit_starts_afresh() {
        let mut m = Memory::default();
        post(&mut m, &[wanted_one("a", 1, &["x"])], 1);
        assert_eq!(
            post(&mut m, &[wanted_one("a", 1, &["y"])], 2),
            vec![("y".into(), None)]
        );
        assert_eq!(
            post(&mut m, &[wanted_one("a", 1, &["x"])], 3),
            vec![("x".into(), Some(1))]
        );
        assert_eq!(
            post(&mut m, &[wanted_one("a", 2, &["x"])], 4),
            vec![("x".into(), None)]
        );
    }

    #[test]
    fn memory_is_bounded_and_forgets_vanished_ingresses() {
        let mut m = Memory::default();
        for i in 0..100 {
            let note = format!("n{i}");
            post(&mut m, &[wanted_one("a", 1, &[note.as_str()])], i);
        }
        post(&mut m, &[wanted_one("a", 1, &["last"])], 100);
        let seen = &m.ingresses["a"];
        assert_eq!(seen.events.len(), KEEP_INACTIVE + 1);
        // The most recent inactive ones are kept: "n99" repeats, "n0" starts afresh.
        assert_eq!(
            post(&mut m, &[wanted_one("a", 1, &["n99"])], 101),
            vec![("n99".into(), Some(99))]
        );
        assert_eq!(
            post(&mut m, &[wanted_one("a", 1, &["n0"])], 102),
            vec![("n0".into(), None)]
        );
        post(&mut m, &[wanted_one("b", 1, &["x"])], 103);
        assert!(!m.ingresses.contains_key("a"));
    }
}

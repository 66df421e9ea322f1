//! `status.loadBalancer.ingress` of the Ingresses we serve.
//!
//! Owns that one field, through the `ingresses/status` subresource only, and only while this
//! replica leads. It must never touch an Ingress's spec or metadata, must not write while
//! following (every replica would race to write the same thing), and must not clear anything
//! on shutdown: the other replicas keep serving, so the addresses stay true (ingress-nginx keeps
//! status across rolling updates for the same reason).
//!
//! The addresses come from `--publish-status-address`, else from the publish Service as seen in
//! the snapshot. Every decision is made against the Ingress as the snapshot shows it, so a
//! pass writes only what differs, and a failed write is simply planned again.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::Outcome;
use crate::diagnostic::Severity;

/// Status writes in flight at once: enough to reconcile many Ingresses quickly after taking
/// over, few enough not to look like a flood to the API server.
const CONCURRENCY: usize = 8;
/// Upper bound of one PATCH.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delays after failed writes, doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Where the addresses to publish come from.
#[derive(Clone, Debug, Default)]
pub(crate) struct AddressSource {
    /// `--publish-status-address`: wins when not empty.
    pub fixed: Vec<String>,
    /// `--publish-service` as (namespace, name).
    pub service: Option<(String, String)>,
}

/// One address as the Ingress status API wants it: an IP, else a host name.
fn entry(address: &str) -> IngressLoadBalancerIngress {
    match address.parse::<IpAddr>() {
        Ok(ip) => IngressLoadBalancerIngress {
            ip: Some(ip.to_string()),
            ..IngressLoadBalancerIngress::default()
        },
        Err(_) => IngressLoadBalancerIngress {
            hostname: Some(address.to_owned()),
            ..IngressLoadBalancerIngress::default()
        },
    }
}

/// The comparable form of a status list: (ip, hostname) pairs, sorted (host names first, as
/// ingress-nginx orders them) and without repeats.
/// Ports are left out: we never write them, and a difference there is not ours to fix.
type Key = Vec<(Option<String>, Option<String>)>;

fn key_of(entries: &[IngressLoadBalancerIngress]) -> Key {
    let mut key: Key = entries
        .iter()
        .map(|e| (e.ip.clone(), e.hostname.clone()))
        .filter(|(ip, host)| ip.is_some() || host.is_some())
        .collect();
    key.sort();
    key.dedup();
    key
}

fn entries_of(key: &Key) -> Vec<IngressLoadBalancerIngress> {
    key.iter()
        .map(|(ip, hostname)| IngressLoadBalancerIngress {
            ip: ip.clone(),
            hostname: hostname.clone(),
            ports: None,
        })
        .collect()
}

/// The addresses to publish, sorted, or why there are none (said once in the log).
pub(crate) fn addresses(
    source: &AddressSource,
    services: &[crate::source::Sourced<Service>],
) -> Result<Vec<IngressLoadBalancerIngress>, String> {
    // Accept "a,b" in one element too: the flag's syntax is IP[,IP].
    let fixed: Vec<IngressLoadBalancerIngress> = source
        .fixed
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(entry)
        .collect();
    if !fixed.is_empty() {
        return Ok(entries_of(&key_of(&fixed)));
    }
    let Some((namespace, name)) = &source.service else {
        return Err(
            "neither --publish-service nor --publish-status-address is set: not writing Ingress status"
                .into(),
        );
    };
    let service = services.iter().map(|s| &s.object).find(|s| {
        s.metadata.namespace.as_deref() == Some(namespace.as_str())
            && s.metadata.name.as_deref() == Some(name.as_str())
    });
    let Some(service) = service else {
        return Err(format!(
            "publish Service {namespace}/{name} not found (is its namespace watched?): not writing Ingress status"
        ));
    };
    let kind = service
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP");
    if kind == "LoadBalancer" {
        let assigned: Vec<IngressLoadBalancerIngress> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|lb| IngressLoadBalancerIngress {
                ip: lb.ip.clone(),
                hostname: lb.hostname.clone(),
                ports: None,
            })
            .collect();
        let key = key_of(&assigned);
        if !key.is_empty() {
            return Ok(entries_of(&key));
        }
    }
    let external: Vec<IngressLoadBalancerIngress> = service
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| entry(ip))
        .collect();
    if !external.is_empty() {
        return Ok(entries_of(&key_of(&external)));
    }
    Err(if kind == "LoadBalancer" {
        format!(
            "publish Service {namespace}/{name} has no load-balancer address yet and no externalIPs: not writing Ingress status"
        )
    } else {
        format!(
            "publish Service {namespace}/{name} is of type {kind} without externalIPs: not writing Ingress status"
        )
    })
}

/// One status write.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Write {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub name: String,
    /// The resourceVersion the Ingress had when planned.
    pub seen: Option<String>,
    /// `Some`: set these addresses; `None`: clear the field.
    pub set: Option<Vec<IngressLoadBalancerIngress>>,
}

impl Write {
    fn patch(&self) -> serde_json::Value {
        // A JSON merge patch replaces lists whole, and `null` deletes the field.
        serde_json::json!({ "status": { "loadBalancer": { "ingress": self.set } } })
    }
}

/// What the status writer remembers between passes.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Ingresses we served at some point in this process (or saw rejected) and have not cleared
    /// since: the ones that may carry our addresses without being served. Bounded by the
    /// snapshot: deleted Ingresses are dropped.
    released: BTreeSet<String>,
    /// The last successful write to each Ingress, and the resourceVersion it had before.
    /// Until the snapshot shows a newer version it cannot reflect the write, and repeating the
    /// write would only cost a request.
    written: HashMap<String, (Option<String>, Option<Key>)>,
}

fn ingress_key(ingress: &Ingress) -> String {
    format!(
        "{}/{}",
        ingress.metadata.namespace.as_deref().unwrap_or("default"),
        ingress.metadata.name.as_deref().unwrap_or("")
    )
}

fn current(ingress: &Ingress) -> Key {
    key_of(
        ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default(),
    )
}

/// The Ingress keys with an error diagnostic: ours, and rejected.
fn rejected(outcome: &Outcome) -> BTreeSet<String> {
    outcome
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .filter_map(|d| d.object.strip_prefix("Ingress "))
        .map(str::to_owned)
        .collect()
}

impl Tracker {
    /// Remembers what an outcome served. Called for every outcome, leading or not, so that a
    /// replica that takes over knows which Ingresses it saw stop being served.
    pub(crate) fn observe(&mut self, outcome: &Outcome) {
        let present: BTreeSet<String> = outcome
            .snapshot
            .ingresses
            .iter()
            .map(|i| ingress_key(&i.object))
            .collect();
        self.released.extend(outcome.served.iter().cloned());
        self.released.extend(rejected(outcome));
        // Deleted Ingresses have no status left to fix.
        self.released.retain(|k| present.contains(k));
        self.written.retain(|k, _| present.contains(k));
    }

    /// The writes that make the cluster show `addresses` on every served Ingress, and no
    /// longer show them on Ingresses we stopped serving.
    ///
    /// Clearing only removes *exactly our current addresses*: an Ingress whose class moved to
    /// another controller may already carry that controller's addresses, and erasing them would
    /// be worse than leaving ours (which that controller overwrites anyway). The price: after
    /// our own addresses change, Ingresses we stopped serving before the change keep the old
    /// ones.
    pub(crate) fn plan(
        &mut self,
        outcome: &Outcome,
        addresses: &[IngressLoadBalancerIngress],
    ) -> Vec<Write> {
        let ours = key_of(addresses);
        let mut writes = Vec::new();
        for sourced in &outcome.snapshot.ingresses {
            let ingress = &sourced.object;
            let key = ingress_key(ingress);
            let serve = outcome.served.contains(&key);
            if !serve && !self.released.contains(&key) {
                continue;
            }
            let now = current(ingress);
            let target = if serve {
                if now == ours {
                    continue;
                }
                Some(ours.clone())
            } else if !ours.is_empty() && now == ours {
                None
            } else {
                // Nothing of ours to clear. Kept in `released` all the same: a write of ours
                // still in flight may land later.
                continue;
            };
            let rv = ingress.metadata.resource_version.clone();
            if self.written.get(&key) == Some(&(rv.clone(), target.clone())) {
                continue;
            }
            writes.push(Write {
                namespace: ingress
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: ingress.metadata.name.clone().unwrap_or_default(),
                key,
                seen: rv,
                set: target.as_ref().map(entries_of),
            });
        }
        writes
    }

    /// Records a write the API accepted.
    pub(crate) fn done(&mut self, write: &Write) {
        let target = write.set.as_deref().map(key_of);
        if target.is_none() {
            self.released.remove(&write.key);
        }
        self.written
            .insert(write.key.clone(), (write.seen.clone(), target));
    }
}

async fn apply(client: &Client, write: &Write) -> Result<(), String> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), &write.namespace);
    let params = PatchParams::default();
    let patch = Patch::Merge(write.patch());
    let call = api.patch_status(&write.name, &params, &patch);
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// Writes status for every outcome while leading, until the outcome channel closes.
pub(crate) async fn run(
    client: Client,
    source: AddressSource,
    mut outcomes: watch::Receiver<Option<Arc<Outcome>>>,
    mut leadership: watch::Receiver<bool>,
) {
    let mut tracker = Tracker::default();
    // The addresses (or why there are none) as last logged: said once per change, not once
    // per compile.
    let mut said: Option<Result<Vec<IngressLoadBalancerIngress>, String>> = None;
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
        tracker.observe(&outcome);
        if !*leadership.borrow_and_update() {
            retry = None;
            continue;
        }
        let found = addresses(&source, &outcome.snapshot.services);
        if said.as_ref() != Some(&found) {
            match &found {
                Ok(a) => tracing::info!(
                    addresses = ?addresses_text(a),
                    "publishing these addresses in Ingress status"
                ),
                Err(why) => tracing::warn!("{why}"),
            }
            said = Some(found.clone());
        }
        let Ok(addresses) = found else {
            retry = None;
            continue;
        };
        let writes = tracker.plan(&outcome, &addresses);
        let leading = leadership.clone();
        // `None`: skipped because leadership ended mid-pass; the new leader redoes the rest.
        let results: Vec<(Write, Option<Result<(), String>>)> = futures_util::stream::iter(writes)
            .map(|w| {
                let client = &client;
                let leading = &leading;
                async move {
                    if !*leading.borrow() {
                        return (w, None);
                    }
                    let r = apply(client, &w).await;
                    (w, Some(r))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = false;
        for (write, result) in results {
            let action = if write.set.is_some() {
                "set"
            } else {
                "cleared"
            };
            match result {
                Some(Ok(())) => {
                    tracing::debug!(ingress = %write.key, action, "Ingress status written");
                    tracker.done(&write);
                }
                Some(Err(e)) => {
                    failed = true;
                    tracing::warn!(
                        ingress = %write.key,
                        action,
                        error = %e,
                        "cannot write Ingress status; will retry"
                    );
                }
                None => {}
            }
        }
        retry = failed.then(|| match retry {
            Some(d) => (d * 2).min(BACKOFF.1),
            None => BACKOFF.0,
        });
    }
}

fn addresses_text(entries: &[IngressLoadBalancerIngress]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e.ip.clone().or_else(|| e.hostname.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerStatus, IngressStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::diagnostic::Diagnostic;
    use crate::source::{Snapshot, Sourced};

    fn service(kind: &str, lb: &[(&str, bool)], external: &[&str]) -> Sourced<Service> {
        Sourced {
            origin: None,
            object: Service {
                metadata: ObjectMeta {
                    namespace: Some("wasmgress".into()),
                    name: Some("wasmgress".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    type_: Some(kind.into()),
                    external_ips: (!external.is_empty())
                        .then(|| external.iter().map(|s| s.to_string()).collect()),
                    ..ServiceSpec::default()
                }),
                status: Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus {
                        ingress: Some(
                            lb.iter()
                                .map(|(a, is_ip)| LoadBalancerIngress {
                                    ip: is_ip.then(|| a.to_string()),
                                    hostname: (!is_ip).then(|| a.to_string()),
                                    ..LoadBalancerIngress::default()
                                })
                                .collect(),
                        ),
                    }),
                    ..ServiceStatus::default()
                }),
            },
        }
    }

    fn from_service() -> AddressSource {
        AddressSource {
            fixed: Vec::new(),
            service: Some(("wasmgress".into(), "wasmgress".into())),
        }
    }

    fn ip(a: &str) -> IngressLoadBalancerIngress {
        entry(a)
    }

    #[test]
    fn fixed_addresses_win_and_split_ips_from_host_names() {
        let source = AddressSource {
            fixed: vec!["10.0.0.2, lb.example.com".into(), "10.0.0.1".into()],
            service: Some(("wasmgress".into(), "wasmgress".into())),
        };
        let got = addresses(
            &source,
            &[service("LoadBalancer", &[("1.2.3.4", true)], &[])],
        )
        .expect("addresses");
        assert_eq!(
            got,
            vec![
                IngressLoadBalancerIngress {
                    hostname: Some("lb.example.com".into()),
                    ..Default::default()
                },
                ip("10.0.0.1"),
                ip("10.0.0.2"),
            ]
        );
    }

    #[test]
    fn load_balancer_status_then_external_ips() {
        let lb = service(
            "LoadBalancer",
            &[("5.6.7.8", true), ("lb.cloud", false)],
            &["9.9.9.9"],
        );
        let got = addresses(&from_service(), &[lb]).expect("addresses");
        // Host names sort first (no ip), like ingress-nginx's order.
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].hostname.as_deref(), Some("lb.cloud"));
        assert_eq!(got[1].ip.as_deref(), Some("5.6.7.8"));
        assert_eq!(got[1].hostname, None);

        let pending = service("LoadBalancer", &[], &["9.9.9.9"]);
        assert_eq!(
            addresses(&from_service(), &[pending]).expect("addresses"),
            vec![ip("9.9.9.9")]
        );
        let cluster_ip = service("ClusterIP", &[], &["9.9.9.8"]);
        assert_eq!(
            addresses(&from_service(), &[cluster_ip]).expect("addresses"),
            vec![ip("9.9.9.8")]
        );
    }

    #[test]
    fn no_addresses_says_why() {
        let pending = service("LoadBalancer", &[], &[]);
        let why = addresses(&from_service(), &[pending]).expect_err("none");
        assert!(why.contains("no load-balancer address yet"), "{why}");
        let why = addresses(&from_service(), &[service("NodePort", &[], &[])]).expect_err("none");
        assert!(why.contains("type NodePort"), "{why}");
        let why = addresses(&from_service(), &[]).expect_err("none");
        assert!(why.contains("not found"), "{why}");
        let why = addresses(&AddressSource::default(), &[]).expect_err("none");
        assert!(why.contains("neither"), "{why}");
    }

    fn ingress(name: &str, rv: &str, status: &[&str]) -> Sourced<Ingress> {
        Sourced {
            origin: None,
            object: Ingress {
                metadata: ObjectMeta {
                    namespace: Some("default".into()),
                    name: Some(name.into()),
                    resource_version: Some(rv.into()),
                    ..ObjectMeta::default()
                },
                spec: None,
                status: Some(IngressStatus {
                    load_balancer: Some(IngressLoadBalancerStatus {
                        ingress: Some(status.iter().map(|a| entry(a)).collect()),
                    }),
                }),
            },
        }
    }

    fn outcome(ingresses: Vec<Sourced<Ingress>>, served: &[&str], errors: &[&str]) -> Outcome {
        Outcome {
            snapshot: Arc::new(Snapshot {
                ingresses,
                ..Snapshot::default()
            }),
            served: served.iter().map(|s| s.to_string()).collect(),
            diagnostics: Arc::new(
                errors
                    .iter()
                    .map(|k| Diagnostic::error(format!("Ingress {k}"), "", "broken"))
                    .collect(),
            ),
        }
    }

    fn plan(tracker: &mut Tracker, outcome: &Outcome, addrs: &[&str]) -> Vec<(String, bool)> {
        tracker.observe(outcome);
        let addrs: Vec<_> = addrs.iter().map(|a| entry(a)).collect();
        tracker
            .plan(outcome, &addrs)
            .into_iter()
            .map(|w| (w.key, w.set.is_some()))
            .collect()
    }

    #[test]
    fn served_ingresses_get_our_addresses_unless_they_already_show_them() {
        let mut t = Tracker::default();
        let o = outcome(
            vec![
                ingress("a", "1", &[]),
                ingress("b", "1", &["10.0.0.1"]),
                ingress("c", "1", &["10.0.0.9"]),
                ingress("theirs", "1", &["10.0.0.9"]),
            ],
            &["default/a", "default/b", "default/c"],
            &[],
        );
        assert_eq!(
            plan(&mut t, &o, &["10.0.0.1"]),
            vec![("default/a".into(), true), ("default/c".into(), true)]
        );
    }

    #[test]
    fn the_patch_is_a_merge_of_the_one_field() {
        let w = Write {
            key: "default/a".into(),
            namespace: "default".into(),
            name: "a".into(),
            seen: None,
            set: Some(vec![ip("10.0.0.1")]),
        };
        assert_eq!(
            w.patch(),
            serde_json::json!({"status":{"loadBalancer":{"ingress":[{"ip":"10.0.0.1"}]}}})
        );
        let clear = Write { set: None, ..w };
        assert_eq!(
            clear.patch(),
            serde_json::json!({"status":{"loadBalancer":{"ingress":null}}})
        );
    }

    #[test]
    fn ingresses_no_longer_served_are_cleared_only_of_our_addresses() {
        let mut t = Tracker::default();
        let first = outcome(
            vec![
                ingress("moved", "1", &["10.0.0.1"]),
                ingress("taken", "1", &["10.0.0.1"]),
            ],
            &["default/moved", "default/taken"],
            &[],
        );
        assert!(plan(&mut t, &first, &["10.0.0.1"]).is_empty());
        // Both changed class; the other controller already wrote its address on "taken".
        let second = outcome(
            vec![
                ingress("moved", "2", &["10.0.0.1"]),
                ingress("taken", "2", &["172.16.0.1"]),
                ingress("never", "1", &["10.0.0.1"]),
            ],
            &[],
            &[],
        );
        assert_eq!(
            plan(&mut t, &second, &["10.0.0.1"]),
            vec![("default/moved".into(), false)]
        );
    }

    #[test]
    fn rejected_ingresses_showing_our_addresses_are_cleared_even_if_never_served_here() {
        let mut t = Tracker::default();
        // A fresh process: the Ingress broke while an earlier leader served it.
        let o = outcome(
            vec![ingress("broken", "5", &["10.0.0.1"])],
            &[],
            &["default/broken"],
        );
        assert_eq!(
            plan(&mut t, &o, &["10.0.0.1"]),
            vec![("default/broken".into(), false)]
        );
        // Rejected but still serving its last good version: keeps the status.
        let o = outcome(
            vec![ingress("broken", "5", &["10.0.0.1"])],
            &["default/broken"],
            &["default/broken"],
        );
        assert!(plan(&mut t, &o, &["10.0.0.1"]).is_empty());
    }

    #[test]
    fn a_write_is_not_repeated_until_the_snapshot_catches_up_and_a_failure_is() {
        let mut t = Tracker::default();
        let o = outcome(vec![ingress("a", "1", &[])], &["default/a"], &[]);
        let addrs = vec![ip("10.0.0.1")];
        t.observe(&o);
        let writes = t.plan(&o, &addrs);
        assert_eq!(writes.len(), 1);
        // Not recorded as done (the PATCH failed): planned again.
        assert_eq!(t.plan(&o, &addrs), writes);
        t.done(&writes[0]);
        assert!(t.plan(&o, &addrs).is_empty());
        // A newer version that lost our addresses (someone cleared them) is fixed again.
        let o = outcome(vec![ingress("a", "3", &[])], &["default/a"], &[]);
        t.observe(&o);
        assert_eq!(t.plan(&o, &addrs).len(), 1);
    }

    #[test]
    fn a_confirmed_clear_is_forgotten_and_deleted_ingresses_are_dropped() {
        let mut t = Tracker::default();
        let o = outcome(vec![ingress("a", "1", &["10.0.0.1"])], &["default/a"], &[]);
        t.observe(&o);
        let o = outcome(vec![ingress("a", "2", &["10.0.0.1"])], &[], &[]);
        t.observe(&o);
        let writes = t.plan(&o, &[ip("10.0.0.1")]);
        assert_eq!(writes.len(), 1);
        t.done(&writes[0]);
        assert!(t.released.is_empty());
        let o = outcome(vec![ingress("b", "1", &[])], &["default/b"], &[]);
        t.observe(&o);
        assert!(t.written.is_empty());
        assert_eq!(t.released.iter().collect::<Vec<_>>(), vec!["default/b"]);
    }
}

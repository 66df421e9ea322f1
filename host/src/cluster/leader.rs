//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's `leaderelection`
//! does it.
//!
//! Owns exactly one Lease (`election_namespace/election_id`): creating it, renewing it while we
//! hold it, taking it over when it is free or has expired, and releasing it on graceful
//! shutdown. Whether this replica leads is published on a watch channel. It must not touch any
//! other object, and serving must never depend on it: a replica that loses the Lease (or the API
//! server) keeps proxying; only the cluster writes (status, Events) stop.
//!
//! Expiry is judged by our own clock, never the holder's: we record *when we saw* the Lease
//! record change, and consider it expired once it has stayed unchanged for its
//! `leaseDurationSeconds`. Nodes' clocks disagree; elapsed time on one clock does not.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a follower looks at the Lease, and how soon a failed attempt is retried
/// (client-go's `RetryPeriod`).
const RETRY: Duration = Duration::from_secs(2);

/// What the election loop needs to know.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub identity: String,
    pub name: String,
    pub lease_duration: Duration,
}

impl Settings {
    /// `leaseDurationSeconds` as written into the Lease: at least one second, because the API
    /// rejects zero and a sub-second lease could never be renewed in time anyway.
    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// How long a holder goes between renewals when all is well.
    fn renew_interval(&self) -> Duration {
        self.lease_duration / 3
    }

    /// How long after its last successful renewal a leader stops acting as one. Shorter than
    /// the lease (client-go's 10 s of 15 s) so that we have stopped writing before any
    /// follower, whose clock only starts when it sees our last renewal, can take over.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Upper bound of one API round trip, so a hung connection cannot keep us believing we lead.
    fn call_timeout(&self) -> Duration {
        self.renew_interval().max(Duration::from_secs(1))
    }

    /// Upper bound of releasing the Lease on shutdown (a read and a write).
    pub(crate) fn release_timeout(&self) -> Duration {
        self.call_timeout()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("Lease API: {0}")]
    Api(#[from] kube::Error),
    #[error("Lease API call took longer than {0:?}")]
    Timeout(Duration),
}

/// The Lease record we last saw and when (by our clock) we first saw it that way.
#[derive(Clone, Debug)]
pub(crate) struct Observed {
    spec: Option<LeaseSpec>,
    at: Instant,
}

impl Observed {
    /// Folds a fresh read into what we knew: the time only moves when the record changed,
    /// which is what lets a follower measure how long a holder has been silent.
    pub(crate) fn update(
        previous: Option<Observed>,
        spec: Option<&LeaseSpec>,
        now: Instant,
    ) -> Self {
        match previous {
            Some(p) if p.spec.as_ref() == spec => p,
            _ => Observed {
                spec: spec.cloned(),
                at: now,
            },
        }
    }
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Decision {
    /// There is no Lease: create it, held by us.
    Create(LeaseSpec),
    /// We hold it: replace it with a fresh renewTime.
    Renew(LeaseSpec),
    /// It is free or expired: replace it, held by us.
    TakeOver(LeaseSpec),
    /// Someone else holds it and has renewed recently enough.
    Follow { holder: String },
}

/// The election's one decision, pure so it can be tested without an API server.
///
/// `lease` is the Lease as just read (`None`: it does not exist), `observed` what
/// [`Observed::update`] made of that read, `now` our monotonic clock and `wall` the time written
/// into the record.
pub(crate) fn decide(
    lease: Option<&Lease>,
    observed: &Observed,
    now: Instant,
    wall: Timestamp,
    settings: &Settings,
) -> Decision {
    let me = settings.identity.as_str();
    let seconds = settings.duration_seconds();
    let Some(lease) = lease else {
        return Decision::Create(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        });
    };
    let current = lease.spec.clone().unwrap_or_default();
    let holder = current.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew(LeaseSpec {
            renew_time: Some(MicroTime(wall)),
            lease_duration_seconds: Some(seconds),
            acquire_time: current.acquire_time.clone().or(Some(MicroTime(wall))),
            lease_transitions: current.lease_transitions.or(Some(0)),
            ..current
        });
    }
    if !holder.is_empty() {
        // The holder's own promise, not ours: it renews on its schedule. A missing or
        // nonsensical duration falls back to ours.
        let held_for = current
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(settings.lease_duration, Duration::from_secs);
        if now < observed.at + held_for {
            return Decision::Follow {
                holder: holder.to_owned(),
            };
        }
    }
    Decision::TakeOver(LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(MicroTime(wall)),
        renew_time: Some(MicroTime(wall)),
        lease_transitions: Some(current.lease_transitions.unwrap_or(0).saturating_add(1)),
        ..current
    })
}

/// The record a leader leaves behind on graceful shutdown: no holder and a one-second
/// duration, so a follower takes over on its next look instead of waiting out the lease
/// (client-go's `ReleaseOnCancel`).
pub(crate) fn released(current: &LeaseSpec, wall: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(wall)),
        renew_time: Some(MicroTime(wall)),
        ..current.clone()
    }
}

/// The result of one look at the Lease.
#[derive(Debug)]
enum Attempt {
    /// We hold the Lease; `acquired` when we did not before this attempt.
    Leading {
        acquired: bool,
    },
    Following {
        holder: String,
    },
    /// Someone wrote the Lease between our read and our write (409): they won this round.
    Conflict,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.is_conflict() || s.is_already_exists())
}

struct Elector {
    api: Api<Lease>,
    settings: Settings,
    observed: Option<Observed>,
}

impl Elector {
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let name = self.settings.name.clone();
        let lease = self.api.get_opt(&name).await?;
        let now = Instant::now();
        let observed = Observed::update(
            self.observed.take(),
            lease.as_ref().and_then(|l| l.spec.as_ref()),
            now,
        );
        let decision = decide(
            lease.as_ref(),
            &observed,
            now,
            Timestamp::now(),
            &self.settings,
        );
        self.observed = Some(observed);
        let (written, acquired) = match (decision, lease) {
            (Decision::Follow { holder }, _) => return Ok(Attempt::Following { holder }),
            (Decision::Create(spec), _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                (self.api.create(&PostParams::default(), &lease).await, true)
            }
            (Decision::Renew(spec), Some(mut lease)) => {
                lease.spec = Some(spec);
                (
                    self.api
                        .replace(&name, &PostParams::default(), &lease)
                        .await,
                    false,
                )
            }
            (Decision::TakeOver(spec), Some(mut lease)) => {
                // `lease` keeps the resourceVersion we read: if anyone wrote in between, the
                // API answers 409 and they won.
                lease.spec = Some(spec);
                (
                    self.api
                        .replace(&name, &PostParams::default(), &lease)
                        .await,
                    true,
                )
            }
            // `decide` only asks to renew or take over a Lease that exists.
            (Decision::Renew(_) | Decision::TakeOver(_), None) => return Ok(Attempt::Conflict),
        };
        match written {
            Ok(lease) => {
                // What we wrote is the newest record; by client-go's rule it counts from now.
                self.observed = Some(Observed::update(None, lease.spec.as_ref(), Instant::now()));
                Ok(Attempt::Leading { acquired })
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let current = lease.spec.clone().unwrap_or_default();
        if current.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(&current, Timestamp::now()));
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

/// Runs the election until `stop` changes (or its sender is dropped), then, if leading,
/// steps down and releases the Lease.
pub(crate) async fn run(
    api: Api<Lease>,
    settings: Settings,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    if settings.identity.is_empty() {
        // An empty holderIdentity means "free" to every candidate: leading with it would let
        // all replicas lead at once. Serving does not need us, so stay a follower.
        tracing::error!("leader election disabled: this replica has no identity");
        let _ = stop.changed().await;
        return;
    }
    let mut elector = Elector {
        api,
        settings: settings.clone(),
        observed: None,
    };
    let set = |leading: bool| {
        leader.send_if_modified(|l| std::mem::replace(l, leading) != leading);
    };
    // When our last successful write started; `Some` exactly while we lead.
    let mut renewed: Option<Instant> = None;
    let mut last_holder: Option<String> = None;
    loop {
        let started = Instant::now();
        let limit = match renewed {
            Some(at) => (at + settings.renew_deadline())
                .saturating_duration_since(started)
                .min(settings.call_timeout()),
            None => settings.call_timeout(),
        };
        let result = tokio::select! {
            r = tokio::time::timeout(limit, elector.attempt()) => match r {
                Ok(r) => r.map_err(Error::from),
                Err(_) => Err(Error::Timeout(limit)),
            },
            _ = stop.changed() => break,
        };
        let wait = match result {
            Ok(Attempt::Leading { acquired }) => {
                if renewed.is_none() {
                    tracing::info!(
                        identity = %settings.identity,
                        lease = %settings.name,
                        acquired,
                        "became leader: writing Ingress status and Events"
                    );
                }
                // Count from before the request: the record we wrote says `started`, and
                // followers' clocks start even later.
                renewed = Some(started);
                last_holder = Some(settings.identity.clone());
                set(true);
                settings.renew_interval()
            }
            Ok(Attempt::Following { holder }) => {
                if renewed.take().is_some() {
                    tracing::info!(%holder, "stopped leading: the Lease is held by another replica");
                }
                if last_holder.as_deref() != Some(holder.as_str()) {
                    tracing::info!(%holder, lease = %settings.name, "following the leader");
                    last_holder = Some(holder);
                }
                set(false);
                RETRY
            }
            Ok(Attempt::Conflict) => {
                // Someone else changed the Lease under us: while it is unclear who holds it,
                // the safe answer is "not us".
                if renewed.take().is_some() {
                    tracing::info!("stopped leading: the Lease was changed by another replica");
                }
                set(false);
                RETRY
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %settings.name, "leader election attempt failed");
                if let Some(at) = renewed {
                    let left =
                        (at + settings.renew_deadline()).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::info!(
                            deadline = ?settings.renew_deadline(),
                            "stopped leading: could not renew the Lease in time"
                        );
                        renewed = None;
                        set(false);
                        RETRY
                    } else {
                        RETRY.min(left)
                    }
                } else {
                    RETRY
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    if renewed.is_some() {
        // Stop acting as leader before anyone else can start.
        set(false);
        match tokio::time::timeout(settings.release_timeout(), elector.release()).await {
            Ok(Ok(())) => tracing::info!(lease = %settings.name, "released the Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the Lease; it expires on its own")
            }
            Err(_) => tracing::warn!("releasing the Lease timed out; it expires on its own"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            identity: "me".into(),
            name: "wasmgress-leader".into(),
            lease_duration: Duration::from_secs(15),
        }
    }

    fn lease(holder: &str, duration: i32, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("wasmgress-leader".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    fn wall() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("valid timestamp")
    }

    #[test]
    fn absent_lease_is_created_held_by_us() {
        let now = Instant::now();
        let observed = Observed::update(None, None, now);
        let Decision::Create(spec) = decide(None, &observed, now, wall(), &settings()) else {
            panic!("expected Create");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(wall())));
        assert_eq!(spec.renew_time, Some(MicroTime(wall())));
    }

    #[test]
    fn our_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let now = Instant::now();
        let l = lease("me", 15, 3);
        let observed = Observed::update(None, l.spec.as_ref(), now);
        let Decision::Renew(spec) = decide(Some(&l), &observed, now, wall(), &settings()) else {
            panic!("expected Renew");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.renew_time, Some(MicroTime(wall())));
        assert_eq!(spec.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn another_holder_is_followed_until_silent_for_its_duration_by_our_clock() {
        let start = Instant::now();
        let l = lease("other", 10, 2);
        let observed = Observed::update(None, l.spec.as_ref(), start);
        // The record's renewTime is decades old by the wall clock; that must not matter.
        let follow = decide(
            Some(&l),
            &observed,
            start + Duration::from_secs(9),
            wall(),
            &settings(),
        );
        assert_eq!(
            follow,
            Decision::Follow {
                holder: "other".into()
            }
        );
        // Its own 10 s, not our 15 s.
        let later = start + Duration::from_secs(11);
        let observed = Observed::update(Some(observed), l.spec.as_ref(), later);
        let Decision::TakeOver(spec) = decide(Some(&l), &observed, later, wall(), &settings())
        else {
            panic!("expected TakeOver");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(wall())));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn a_renewal_we_observe_restarts_our_clock() {
        let start = Instant::now();
        let first = lease("other", 10, 2);
        let observed = Observed::update(None, first.spec.as_ref(), start);
        let mut renewed = first.clone();
        if let Some(spec) = renewed.spec.as_mut() {
            spec.renew_time = Some(MicroTime(wall()));
        }
        let seen = start + Duration::from_secs(8);
        let observed = Observed::update(Some(observed), renewed.spec.as_ref(), seen);
        assert_eq!(observed.at, seen);
        let decision = decide(
            Some(&renewed),
            &observed,
            start + Duration::from_secs(12),
            wall(),
            &settings(),
        );
        assert!(matches!(decision, Decision::Follow { .. }), "{decision:?}");
    }

    #[test]
    fn an_empty_holder_is_taken_over_at_once() {
        let now = Instant::now();
        let l = lease("", 1, 4);
        let observed = Observed::update(None, l.spec.as_ref(), now);
        let Decision::TakeOver(spec) = decide(Some(&l), &observed, now, wall(), &settings()) else {
            panic!("expected TakeOver");
        };
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    }

    #[test]
    fn a_lease_without_spec_is_taken_over() {
        let now = Instant::now();
        let l = Lease {
            spec: None,
            ..lease("x", 1, 0)
        };
        let observed = Observed::update(None, None, now);
        let Decision::TakeOver(spec) = decide(Some(&l), &observed, now, wall(), &settings()) else {
            panic!("expected TakeOver");
        };
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[test]
    fn release_empties_the_holder_and_shortens_the_lease() {
        let l = lease("me", 15, 3);
        let spec = released(l.spec.as_ref().expect("spec"), wall());
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn timings_follow_client_go_proportions() {
        let s = settings();
        assert_eq!(s.renew_interval(), Duration::from_secs(5));
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
        assert_eq!(s.duration_seconds(), 15);
        let tiny = Settings {
            lease_duration: Duration::from_millis(10),
            ..s
        };
        assert_eq!(tiny.duration_seconds(), 1);
        assert_eq!(tiny.call_timeout(), Duration::from_secs(1));
    }
}

//! Passive health: endpoints that keep failing are skipped for a while.
//!
//! An attempt that cannot connect, or that times out or breaks before the response head, counts
//! as a failure of its endpoint; any answer resets the count. After [`MAX_FAILS`] failures in a
//! row the endpoint is skipped for [`FAIL_TIMEOUT`] (nginx's `max_fails` / `fail_timeout`, with
//! Envoy's consecutive-failure rule so that one slow answer does not take a pod out), then
//! tried again by the next request; failing again ejects it again. A backend never skips all
//! its endpoints at once: when every one is ejected, the round-robin goes on over all of them.
//!
//! The state is per address and kept across generations ([`HealthRegistry`]), so an
//! EndpointSlice change does not forgive a failing pod. This module keeps the state; choosing
//! among endpoints is [`super::Backend::pick`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Failures in a row that eject an endpoint.
pub const MAX_FAILS: u32 = 3;
/// How long an ejected endpoint is skipped.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// Milliseconds on the process's monotonic clock (never 0, which means "not ejected").
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// One address's passive health.
#[derive(Debug, Default)]
pub struct Health {
    fails: AtomicU32,
    /// Until when (see [`now_ms`]) the endpoint is skipped; 0 when it is not.
    down_until: AtomicU64,
}

impl Health {
    /// Whether the endpoint may take requests at `now` (reads no clock when it never failed).
    pub fn is_up(&self, now: impl FnOnce() -> u64) -> bool {
        match self.down_until.load(Ordering::Relaxed) {
            0 => true,
            until => now() >= until,
        }
    }

    /// An attempt failed at `now`; returns whether this ejected the endpoint.
    pub fn failed(&self, now: u64) -> bool {
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails < MAX_FAILS {
            return false;
        }
        self.fails.store(0, Ordering::Relaxed);
        let until = now + u64::try_from(FAIL_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        self.down_until.store(until, Ordering::Relaxed);
        true
    }

    /// An attempt got an answer: the failures are forgiven.
    pub fn answered(&self) {
        // Loads first: the common case (nothing to forgive) writes nothing shared.
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the endpoint is ejected now, for `/debug/routes` and metrics.
    pub fn ejected(&self) -> bool {
        !self.is_up(now_ms)
    }
}

/// Per-address state kept across generations (health, load); addresses no generation holds
/// are forgotten.
#[derive(Debug)]
pub struct PerAddress<T> {
    by_addr: Mutex<HashMap<SocketAddr, Weak<T>>>,
}

impl<T> Default for PerAddress<T> {
    fn default() -> Self {
        Self {
            by_addr: Mutex::default(),
        }
    }
}

/// Health by address.
pub type HealthRegistry = PerAddress<Health>;

impl<T: Default> PerAddress<T> {
    /// The state of `addr` (used at compile time only).
    pub fn get(&self, addr: SocketAddr) -> Arc<T> {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = map.get(&addr).and_then(Weak::upgrade) {
            return live;
        }
        let state = Arc::new(T::default());
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(addr, Arc::downgrade(&state));
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_for_the_fail_timeout() {
        let h = Health::default();
        let t0 = 1_000;
        assert!(!h.failed(t0));
        assert!(!h.failed(t0));
        assert!(h.is_up(|| t0), "two failures do not eject");
        assert!(h.failed(t0), "the third in a row does");
        assert!(!h.is_up(|| t0 + 9_999));
        assert!(
            h.is_up(|| t0 + 10_000),
            "tried again after the fail timeout"
        );
        // Failing again right away: three more failures to eject again.
        assert!(!h.failed(t0 + 10_001));
    }

    #[test]
    fn an_answer_forgives_failures() {
        let h = Health::default();
        h.failed(5);
        h.failed(5);
        h.answered();
        assert!(!h.failed(5), "the count started over");
        assert!(!h.failed(5));
        assert!(h.failed(5));
        h.answered();
        assert!(
            h.is_up(|| 6),
            "an answer from an ejected endpoint brings it back"
        );
    }

    #[test]
    fn the_registry_shares_health_by_address_while_held() {
        let r = HealthRegistry::default();
        let addr: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let a = r.get(addr);
        a.failed(1);
        a.failed(1);
        a.failed(1);
        assert!(
            !r.get(addr).is_up(|| 2),
            "the next generation sees the ejection"
        );
        drop(a);
        assert!(
            r.get(addr).is_up(|| 2),
            "forgotten once no generation holds it"
        );
    }
}

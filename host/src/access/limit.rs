//! Per-client request limits: ingress-nginx's `limit-rps`, `limit-rpm` (with
//! `limit-burst-multiplier`), `limit-connections` and `limit-allowlist`, keyed by the client
//! address the request edge computed, per replica, as nginx's `limit_req`/`limit_conn` zones
//! are.
//!
//! Owns the counting. Rates are GCRA (the token-bucket equivalent nginx's leaky bucket with
//! `nodelay` behaves as: `burst + 1` requests at once, then one per interval). State lives in
//! [`Table`]s split into many independently locked shards by a keyed hash of the address, so
//! requests of different clients almost never wait on one another, and a lock is held for a
//! map lookup only. Memory is bounded: each shard holds at most [`SHARD_CAPACITY`] clients;
//! a client whose bucket has refilled is indistinguishable from a new one and is dropped
//! first, and when every entry is busy the one closest to refilled goes (nginx's zones evict
//! their least recently used entries the same way), so a flood of distinct addresses costs a
//! fixed amount of memory. This module must not build responses.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::source::Sources;
use ipnet::IpNet;

/// Shards per table: enough that concurrent clients rarely share one.
const SHARDS: usize = 256;
/// Clients per shard: 256 × 256 = 65 536 clients tracked per limit, a few MiB at most.
pub const SHARD_CAPACITY: usize = 256;

/// The limits as a plugin stated them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitRule {
    /// Requests per second per client; 0: none.
    pub rps: u32,
    /// Requests per minute per client; 0: none.
    pub rpm: u32,
    /// Burst = rate × this (ingress-nginx default 5).
    pub burst_multiplier: u32,
    /// Requests in progress per client; 0: none.
    pub connections: u32,
    /// Clients these limits do not apply to.
    pub exempt: Vec<IpNet>,
}

/// A map from client address to `V`, split into locked shards.
struct Table<V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, V>>]>,
}

impl<V> Table<V> {
    fn new() -> Self {
        Table {
            // Keyed per table: an attacker cannot aim many addresses at one shard.
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, V>> {
        let i = (self.hasher.hash_one(ip) as usize) % SHARDS;
        // A panic while holding the lock cannot leave a map of plain numbers inconsistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One rate: an emission interval and how far ahead of now a client may run.
struct Gcra {
    /// Nanoseconds per request.
    interval: u64,
    /// How far the theoretical arrival time may lead the clock: `burst × interval`.
    tolerance: u64,
    /// Theoretical arrival time per client, in nanoseconds since `epoch`.
    tat: Table<u64>,
}

impl Gcra {
    fn new(per: Duration, count: u32, burst: u32) -> Self {
        let interval = (per.as_nanos() / u128::from(count.max(1))) as u64;
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            tat: Table::new(),
        }
    }

    /// Admit one request of `ip` at `now` (nanoseconds since the epoch)? Only an admitted
    /// request is counted, and only when `charge` is set.
    fn admit(&self, ip: IpAddr, now: u64, charge: bool) -> bool {
        let mut shard = self.tat.shard(&ip);
        let tat = shard.get(&ip).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            return false;
        }
        if !charge {
            return true;
        }
        let next = tat + self.interval;
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&ip) {
            make_room(&mut shard, now);
        }
        shard.insert(ip, next);
        true
    }
}

/// Drop the refilled entries of a full shard, or else the one closest to refilled.
fn make_room(shard: &mut HashMap<IpAddr, u64>, now: u64) {
    shard.retain(|_, tat| *tat > now);
    if shard.len() >= SHARD_CAPACITY
        && let Some(ip) = shard.iter().min_by_key(|(_, tat)| **tat).map(|(ip, _)| *ip)
    {
        shard.remove(&ip);
    }
}

/// Requests in progress per client.
struct Concurrency {
    limit: u32,
    counts: Table<u32>,
}

/// One request in progress, counted until dropped (keep it as long as the response).
pub struct Slot {
    owner: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(c) = &self.owner.concurrency else {
            return;
        };
        let mut shard = c.counts.shard(&self.ip);
        if let Some(n) = shard.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("ip", &self.ip).finish()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over `limit-rps` or `limit-rpm` (`--limit-req-status-code`).
    Rate,
    /// Over `limit-connections` (`--limit-conn-status-code`).
    Connections,
}

/// A route's limits, shared by every route of its Ingress (one zone per Ingress, as in
/// ingress-nginx) and kept across configuration reloads while the rule stays the same.
pub struct Limits {
    rule: LimitRule,
    epoch: Instant,
    rates: Vec<Gcra>,
    concurrency: Option<Concurrency>,
    exempt: Option<Sources>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("rule", &self.rule).finish()
    }
}

impl Limits {
    pub fn new(rule: LimitRule) -> Arc<Limits> {
        let multiplier = rule.burst_multiplier.max(1);
        let mut rates = Vec::new();
        if rule.rps > 0 {
            let burst = rule.rps.saturating_mul(multiplier);
            rates.push(Gcra::new(Duration::from_secs(1), rule.rps, burst));
        }
        if rule.rpm > 0 {
            let burst = rule.rpm.saturating_mul(multiplier);
            rates.push(Gcra::new(Duration::from_secs(60), rule.rpm, burst));
        }
        let concurrency = (rule.connections > 0).then(|| Concurrency {
            limit: rule.connections,
            counts: Table::new(),
        });
        let exempt =
            (!rule.exempt.is_empty()).then(|| Sources::new(rule.exempt.clone(), Vec::new()));
        Arc::new(Limits {
            rule,
            epoch: Instant::now(),
            rates,
            concurrency,
            exempt,
        })
    }

    /// The rule these limits enforce (compile reuses limits whose rule is unchanged).
    pub fn rule(&self) -> &LimitRule {
        &self.rule
    }

    /// Count one request of `client`. `Ok(Some(slot))`: admitted, counted as in progress
    /// until the slot is dropped.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Option<Slot>, Refused> {
        self.admit_at(client, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, client: IpAddr, now: Instant) -> Result<Option<Slot>, Refused> {
        let client = client.to_canonical();
        if self.exempt.as_ref().is_some_and(|e| e.admits(client)) {
            return Ok(None);
        }
        let at = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        // As nginx does with several zones: a refused request is charged to none of them.
        let admitted = match self.rates.as_slice() {
            [one] => one.admit(client, at, true),
            rates => {
                rates.iter().all(|r| r.admit(client, at, false))
                    && rates.iter().all(|r| r.admit(client, at, true))
            }
        };
        if !admitted {
            return Err(Refused::Rate);
        }
        let Some(c) = &self.concurrency else {
            return Ok(None);
        };
        let mut shard = c.counts.shard(&client);
        let n = shard.entry(client).or_insert(0);
        if *n >= c.limit {
            return Err(Refused::Connections);
        }
        *n += 1;
        Ok(Some(Slot {
            owner: self.clone(),
            ip: client,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn rps(n: u32, multiplier: u32) -> Arc<Limits> {
        Limits::new(LimitRule {
            rps: n,
            burst_multiplier: multiplier,
            ..LimitRule::default()
        })
    }

    #[test]
    fn burst_then_the_rate_as_nginx_nodelay() {
        let l = rps(2, 5);
        let t0 = Instant::now();
        let passed = (0..30)
            .filter(|_| l.admit_at(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(passed, 11, "burst (2 x 5) + 1 at once");
        // Half a second later one more request's worth has refilled.
        assert!(
            l.admit_at(ip("192.0.2.1"), t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            l.admit_at(ip("192.0.2.1"), t0 + Duration::from_millis(500))
                .is_err()
        );
        // Another client is not affected.
        assert!(l.admit_at(ip("192.0.2.2"), t0).is_ok());
    }

    #[test]
    fn allowlisted_clients_are_never_limited() {
        let l = Limits::new(LimitRule {
            rps: 1,
            burst_multiplier: 1,
            exempt: vec!["10.0.0.0/8".parse().expect("cidr")],
            ..LimitRule::default()
        });
        let t0 = Instant::now();
        assert!((0..100).all(|_| l.admit_at(ip("10.1.1.1"), t0).is_ok()));
        assert!((0..3).any(|_| l.admit_at(ip("192.0.2.1"), t0).is_err()));
    }

    #[test]
    fn connections_are_counted_until_the_slot_drops() {
        let l = Limits::new(LimitRule {
            connections: 2,
            ..LimitRule::default()
        });
        let a = l.admit(ip("192.0.2.1")).expect("first").expect("slot");
        let b = l.admit(ip("192.0.2.1")).expect("second").expect("slot");
        assert_eq!(l.admit(ip("192.0.2.1")).err(), Some(Refused::Connections));
        assert!(l.admit(ip("192.0.2.9")).is_ok(), "per client");
        drop(a);
        let c = l.admit(ip("192.0.2.1")).expect("a slot freed");
        drop((b, c));
        let shards = &l.concurrency.as_ref().expect("limit").counts.shards;
        let tracked: usize = shards.iter().map(|s| s.lock().expect("lock").len()).sum();
        assert_eq!(tracked, 0, "no entry outlives its requests");
    }

    /// A flood of distinct addresses cannot grow the table past its bound, and a busy client
    /// keeps being limited while the flood goes on.
    #[test]
    fn a_flood_of_addresses_is_bounded() {
        let l = rps(1, 1);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let addr = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) + 1));
            let _ = l.admit_at(addr, t0);
        }
        let tracked: usize = l.rates[0]
            .tat
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").len())
            .sum();
        assert!(tracked <= SHARDS * SHARD_CAPACITY, "{tracked}");
    }

    #[test]
    fn a_request_refused_by_one_rate_is_charged_to_none() {
        let l = Limits::new(LimitRule {
            rps: 100,
            rpm: 1,
            burst_multiplier: 1,
            ..LimitRule::default()
        });
        let t0 = Instant::now();
        let passed = (0..50)
            .filter(|_| l.admit_at(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(passed, 2, "rpm: burst 1 + 1");
        // The 48 refused requests did not use up the per-second budget.
        let tat = l.rates[0]
            .tat
            .shard(&ip("192.0.2.1"))
            .get(&ip("192.0.2.1"))
            .copied();
        let at = t0.saturating_duration_since(l.epoch).as_nanos() as u64;
        assert_eq!(tat, Some(at + 2 * l.rates[0].interval));
    }

    #[test]
    fn rpm_counts_per_minute() {
        let l = Limits::new(LimitRule {
            rpm: 60,
            burst_multiplier: 1,
            ..LimitRule::default()
        });
        let t0 = Instant::now();
        let passed = (0..10)
            .filter(|_| l.admit_at(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(passed, 10, "burst 60 + 1 covers 10 at once");
        let l = Limits::new(LimitRule {
            rpm: 2,
            burst_multiplier: 1,
            ..LimitRule::default()
        });
        let passed = (0..10)
            .filter(|_| l.admit_at(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(passed, 3);
        assert!(
            l.admit_at(ip("192.0.2.1"), t0 + Duration::from_secs(29))
                .is_err()
        );
        assert!(
            l.admit_at(ip("192.0.2.1"), t0 + Duration::from_secs(31))
                .is_ok()
        );
    }
}

//! The `counters` capability: fixed-window counters and token buckets shared by every instance
//! of a plugin on this replica, keyed by string.
//!
//! Owns scoping and bounds. A [`Scope`] belongs to one (plugin, namespace) pair, so a tenant's
//! plugin never reads, fills or evicts another namespace's keys; scopes outlive
//! configuration reloads (a reload must not reset every rate limit) and go when no route uses
//! them. Memory is bounded per scope ([`MAX_KEYS`] keys of at most [`MAX_KEY_BYTES`]); a full
//! shard first forgets keys at rest (a window that ended, a bucket that refilled) and then
//! refuses new keys, which fails closed: `add` answers `None` and `take` does not admit. Time
//! comes from a [`Clock`] so tests can drive it. This module must not know about WIT.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

/// Keys per scope, across its shards.
pub const MAX_KEYS: usize = 65_536;
/// Longest key.
pub const MAX_KEY_BYTES: usize = 256;
const SHARDS: usize = 16;
const KEYS_PER_SHARD: usize = MAX_KEYS / SHARDS;

/// Monotonic nanoseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ns(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Nanoseconds since the process's first call: the `clock` capability's monotonic time too.
pub fn monotonic_ns() -> u64 {
    static START: OnceLock<SystemClock> = OnceLock::new();
    START.get_or_init(|| SystemClock(Instant::now())).now_ns()
}

#[derive(Debug)]
struct Process;

impl Clock for Process {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    /// Count in window number `window` of `width_ms`.
    Window {
        width_ms: u32,
        window: u64,
        count: u64,
    },
    /// A GCRA bucket: the theoretical arrival time of the next token, in ns.
    Bucket { tat: u64 },
}

impl Entry {
    /// True when forgetting the entry changes nothing a caller could observe.
    fn at_rest(&self, now: u64) -> bool {
        match *self {
            Entry::Window {
                width_ms, window, ..
            } => now / (u64::from(width_ms) * 1_000_000) > window,
            Entry::Bucket { tat } => tat <= now,
        }
    }
}

/// What `take` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub admitted: bool,
    pub remaining: u32,
    pub retry_after_ms: u32,
}

impl Taken {
    const REFUSED: Taken = Taken {
        admitted: false,
        remaining: 0,
        retry_after_ms: u32::MAX,
    };
}

type Shard = Mutex<HashMap<Box<str>, Entry>>;

/// The counters of one plugin in one namespace.
#[derive(Debug)]
pub struct Scope {
    shards: Box<[Shard]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl Scope {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Scope {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            clock,
        }
    }

    fn with<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&mut Entry>, u64) -> (R, Option<Entry>),
    ) -> Option<R> {
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
        let now = self.clock.now_ns();
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(key) {
            let (r, _) = f(Some(entry), now);
            return Some(r);
        }
        let (r, new) = f(None, now);
        if let Some(new) = new {
            if map.len() >= KEYS_PER_SHARD {
                map.retain(|_, e| !e.at_rest(now));
            }
            if map.len() >= KEYS_PER_SHARD {
                return None;
            }
            map.insert(key.into(), new);
        }
        Some(r)
    }

    /// Adds `delta` in the current window of `width_ms` and returns the window's count.
    pub fn add(&self, key: &str, delta: u64, width_ms: u32) -> Option<u64> {
        let width_ms = width_ms.max(1);
        self.with(key, |entry, now| {
            let window = now / (u64::from(width_ms) * 1_000_000);
            match entry {
                Some(Entry::Window {
                    width_ms: w,
                    window: n,
                    count,
                }) if *w == width_ms && *n == window => {
                    *count = count.saturating_add(delta);
                    (*count, None)
                }
                Some(e) => {
                    *e = Entry::Window {
                        width_ms,
                        window,
                        count: delta,
                    };
                    (delta, None)
                }
                None => (
                    delta,
                    Some(Entry::Window {
                        width_ms,
                        window,
                        count: delta,
                    }),
                ),
            }
        })
    }

    /// Takes `tokens` from a bucket of `burst` refilled at `rate` per second (GCRA).
    pub fn take(&self, key: &str, rate: u32, burst: u32, tokens: u32) -> Taken {
        if rate == 0 || burst == 0 || tokens > burst {
            return Taken::REFUSED;
        }
        let interval = 1_000_000_000 / u64::from(rate);
        let tolerance = interval * u64::from(burst);
        let decide = |tat: u64, now: u64| {
            let start = tat.max(now);
            let next = start + interval * u64::from(tokens);
            if next - now > tolerance {
                let wait_ns = next - now - tolerance;
                let taken = Taken {
                    admitted: false,
                    remaining: u32::try_from((tolerance - (start - now).min(tolerance)) / interval)
                        .unwrap_or(0),
                    retry_after_ms: u32::try_from(wait_ns.div_ceil(1_000_000)).unwrap_or(u32::MAX),
                };
                (taken, tat)
            } else {
                let taken = Taken {
                    admitted: true,
                    remaining: u32::try_from((tolerance - (next - now)) / interval)
                        .unwrap_or(u32::MAX),
                    retry_after_ms: 0,
                };
                (taken, next)
            }
        };
        self.with(key, |entry, now| match entry {
            Some(e) => {
                let tat = match *e {
                    Entry::Bucket { tat } => tat,
                    Entry::Window { .. } => now,
                };
                let (taken, tat) = decide(tat, now);
                *e = Entry::Bucket { tat };
                (taken, None)
            }
            None => {
                let (taken, tat) = decide(now, now);
                (taken, Some(Entry::Bucket { tat }))
            }
        })
        .unwrap_or(Taken::REFUSED)
    }

    /// Keys held (for tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Scopes = HashMap<(String, String), Weak<Scope>>;

/// The live scope of `plugin` in `namespace`, created on first use; kept across reloads as
/// long as some route's instances hold it.
pub fn scope(plugin: &str, namespace: &str) -> Arc<Scope> {
    static SCOPES: OnceLock<Mutex<Scopes>> = OnceLock::new();
    let mut scopes = SCOPES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let key = (plugin.to_string(), namespace.to_string());
    if let Some(live) = scopes.get(&key).and_then(Weak::upgrade) {
        return live;
    }
    scopes.retain(|_, w| w.strong_count() > 0);
    let scope = Arc::new(Scope::new(Arc::new(Process)));
    scopes.insert(key, Arc::downgrade(&scope));
    scope
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug, Default)]
    struct Manual(AtomicU64);

    impl Clock for Manual {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn scope() -> (Arc<Manual>, Scope) {
        let clock = Arc::new(Manual::default());
        clock.0.store(10_000_000_000, Ordering::Relaxed);
        (clock.clone(), Scope::new(clock))
    }

    fn advance(clock: &Manual, ms: u64) {
        clock.0.fetch_add(ms * 1_000_000, Ordering::Relaxed);
    }

    #[test]
    fn windows_count_and_reset() {
        let (clock, s) = scope();
        assert_eq!(s.add("a", 1, 1000), Some(1));
        assert_eq!(s.add("a", 2, 1000), Some(3));
        assert_eq!(s.add("b", 5, 1000), Some(5));
        advance(&clock, 1000);
        assert_eq!(s.add("a", 1, 1000), Some(1));
    }

    #[test]
    fn buckets_admit_the_burst_then_the_rate() {
        let (clock, s) = scope();
        for i in 0..5 {
            let t = s.take("k", 10, 5, 1);
            assert!(t.admitted, "{i}");
            assert_eq!(t.remaining, 4 - i);
        }
        let refused = s.take("k", 10, 5, 1);
        assert!(!refused.admitted);
        assert_eq!(refused.retry_after_ms, 100);
        advance(&clock, 100);
        assert!(s.take("k", 10, 5, 1).admitted);
        assert!(!s.take("k", 10, 5, 1).admitted);
        // Another key has its own bucket.
        assert!(s.take("other", 10, 5, 5).admitted);
        // Impossible requests fail closed.
        assert!(!s.take("k", 0, 5, 1).admitted);
        assert!(!s.take("k", 10, 5, 6).admitted);
    }

    #[test]
    fn full_scopes_forget_keys_at_rest_then_refuse() {
        let (clock, s) = scope();
        let mut refused = Vec::new();
        for i in 0..MAX_KEYS + 1000 {
            let key = format!("k{i}");
            if s.add(&key, 1, 1000).is_none() {
                refused.push(key);
            }
        }
        assert!(refused.len() >= 1000, "{}", refused.len());
        assert!(s.len() <= MAX_KEYS);
        // A refused key's shard is full (keys spread over shards by hash, so another key
        // might land in a shard that still has room).
        let full = &refused[0];
        assert!(!s.take(full, 1, 1, 1).admitted, "a full scope fails closed");
        advance(&clock, 1000);
        assert_eq!(s.add(full, 1, 1000), Some(1), "ended windows make room");
        assert_eq!(s.add(&"x".repeat(MAX_KEY_BYTES + 1), 1, 1000), None);
    }

    #[test]
    fn scopes_are_per_plugin_and_namespace_and_kept_while_used() {
        let a = super::scope("p", "team-a");
        let b = super::scope("p", "team-b");
        a.add("k", 1, 60_000);
        assert_eq!(b.add("k", 1, 60_000), Some(1));
        assert_eq!(super::scope("p", "team-a").add("k", 1, 60_000), Some(2));
        drop(a);
        assert_eq!(super::scope("p", "team-a").add("k", 1, 60_000), Some(1));
    }
}

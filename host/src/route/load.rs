//! Peak-EWMA load (ingress-nginx `load-balance: ewma`): how busy and how slow each endpoint
//! has been, and the choice between two random endpoints by it.
//!
//! As ingress-nginx's Lua balancer (itself after Finagle's `PeakEwma`): each endpoint keeps an
//! exponentially weighted moving average of its response times that decays with the time
//! since it was last updated (over [`DECAY`]), and jumps to a slower response at once (the
//! "peak"); a request picks two distinct endpoints at random and takes the one whose score,
//! the decayed average times its requests in flight plus one (Finagle's load factor), is
//! lower. Endpoints a backend gains start at the average of the others (ingress-nginx's slow
//! start), so a new pod is not flooded for having no history.
//!
//! Updates are lock-free and may race (two responses landing at once keep one of the two
//! updates), as a balancer's estimate can afford. The state is per address and outlives
//! generations ([`super::health::PerAddress`]). Round-robin routes never touch it.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The EWMA's time constant: ingress-nginx's `DECAY_TIME`.
pub const DECAY: Duration = Duration::from_secs(10);

/// Microseconds on the process's monotonic clock (never 0, which means "never updated").
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// One address's load.
#[derive(Debug, Default)]
pub struct Load {
    /// The average response time in µs, as `f64` bits.
    ewma: AtomicU64,
    /// When it was last updated ([`now_us`]); 0: never.
    touched: AtomicU64,
    in_flight: AtomicU32,
}

/// The weight an old average keeps after `elapsed_us`.
fn kept(elapsed_us: u64) -> f64 {
    (-(elapsed_us as f64) / DECAY.as_micros() as f64).exp()
}

impl Load {
    fn ewma(&self) -> f64 {
        f64::from_bits(self.ewma.load(Ordering::Relaxed))
    }

    /// The endpoint's cost at `now`: its average decayed towards 0 since its last update
    /// (as ingress-nginx scores), times its requests in flight plus one.
    pub fn score(&self, now: u64) -> f64 {
        let touched = self.touched.load(Ordering::Relaxed);
        let decayed = self.ewma() * kept(now.saturating_sub(touched));
        decayed * f64::from(self.in_flight.load(Ordering::Relaxed).saturating_add(1))
    }

    /// A response took `rtt` at `now`.
    pub fn observe(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_micros() as f64;
        let old = self.ewma();
        let touched = self.touched.load(Ordering::Relaxed);
        let w = kept(now.saturating_sub(touched));
        let new = if rtt > old {
            rtt
        } else {
            old * w + rtt * (1.0 - w)
        };
        self.ewma.store(new.to_bits(), Ordering::Relaxed);
        self.touched.store(now, Ordering::Relaxed);
    }

    /// Whether it has ever been updated.
    pub fn seen(&self) -> bool {
        self.touched.load(Ordering::Relaxed) != 0
    }

    /// Starts a new endpoint at `ewma` (slow start).
    pub fn seed(&self, ewma: f64, now: u64) {
        self.ewma.store(ewma.to_bits(), Ordering::Relaxed);
        self.touched.store(now, Ordering::Relaxed);
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint (see [`Load::begin`]).
pub struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Seeds the never-seen loads among `loads` with the average of the seen ones.
pub fn slow_start<'a>(loads: impl Iterator<Item = &'a Load> + Clone, now: u64) {
    let (sum, count) = loads
        .clone()
        .filter(|l| l.seen())
        .fold((0.0, 0u32), |(s, c), l| (s + l.ewma(), c + 1));
    if count == 0 {
        return;
    }
    let average = sum / f64::from(count);
    for load in loads.filter(|l| !l.seen()) {
        load.seed(average, now);
    }
}

/// Two distinct indices below `n` (n ≥ 2) from `draw` (a uniform draw below its argument).
pub fn two_of(n: usize, mut draw: impl FnMut(usize) -> usize) -> (usize, usize) {
    let a = draw(n);
    let mut b = draw(n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    #[test]
    fn a_slower_response_counts_at_once_and_fades_with_time() {
        let l = Load::default();
        l.observe(Duration::from_millis(100), 1);
        assert_eq!(
            l.score(1).round(),
            100_000.0,
            "the first response is the average"
        );
        // Peak: slower counts in full.
        l.observe(Duration::from_millis(300), 2);
        assert_eq!(l.score(2).round(), 300_000.0);
        // Faster moves the average by the share of the decay time that passed.
        l.observe(Duration::from_millis(0), 2 + 10_000 * MS);
        let expected = 300_000.0 * (-1.0f64).exp();
        assert!((l.score(2 + 10_000 * MS) - expected).abs() < 1.0);
        // Unused, the score decays towards 0 (an idle endpoint is tried again).
        assert!(l.score(2 + 60_000 * MS) < expected / 100.0);
    }

    #[test]
    fn requests_in_flight_multiply_the_score() {
        let l = Arc::new(Load::default());
        l.observe(Duration::from_millis(10), 1);
        let one = l.begin();
        let two = l.begin();
        assert_eq!(l.score(1).round(), 30_000.0);
        drop((one, two));
        assert_eq!(l.score(1).round(), 10_000.0);
    }

    #[test]
    fn new_endpoints_start_at_the_average() {
        let (a, b, fresh) = (Load::default(), Load::default(), Load::default());
        a.observe(Duration::from_millis(10), 5);
        b.observe(Duration::from_millis(30), 5);
        slow_start([&a, &b, &fresh].into_iter(), 5);
        assert_eq!(fresh.score(5).round(), 20_000.0);
        // Nothing seen yet: nothing to seed from.
        let (c, d) = (Load::default(), Load::default());
        slow_start([&c, &d].into_iter(), 5);
        assert!(!c.seen() && !d.seen());
    }

    #[test]
    fn two_choices_are_distinct() {
        for first in 0..4 {
            for second in 0..3 {
                let mut draws = [first, second].into_iter();
                let (a, b) = two_of(4, |_| draws.next().expect("two draws"));
                assert_ne!(a, b);
                assert!(a < 4 && b < 4);
            }
        }
    }
}

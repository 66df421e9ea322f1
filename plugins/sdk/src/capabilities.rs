//! The capabilities a plugin may import. Calling one of these functions makes the component
//! import its interface, and the route attaching the plugin must then grant it
//! (`wasmgress.io/plugin.<name>.capabilities: "clock, random, counters, secrets(NAME, ...)"`),
//! or the plugin fails to attach with a diagnostic naming the capability. A plugin that never
//! calls them imports nothing and needs no grant. They work in `configure` and in every hook.

/// Time (`clock`).
pub mod clock {
    use crate::bindings::wasmgress::plugin::clock;

    /// Nanoseconds since an arbitrary point; never goes back.
    pub fn monotonic_ns() -> u64 {
        clock::monotonic_now()
    }

    /// Nanoseconds since the Unix epoch.
    pub fn wall_ns() -> u64 {
        clock::wall_now()
    }

    /// Whole seconds since the Unix epoch (what JWT `exp` and `nbf` count).
    pub fn unix_seconds() -> u64 {
        clock::wall_now() / 1_000_000_000
    }
}

/// Randomness from the host's secure generator (`random`).
pub mod random {
    use crate::bindings::wasmgress::plugin::random;
    use alloc::vec::Vec;

    /// `len` random bytes (at most 4096).
    pub fn bytes(len: u32) -> Vec<u8> {
        random::get_bytes(len)
    }

    /// A random 64-bit number.
    pub fn u64() -> u64 {
        random::get_u64()
    }
}

/// Counters and token buckets shared by every instance of the plugin on this replica, per
/// namespace (`counters`).
pub mod counters {
    use crate::bindings::wasmgress::plugin::counters;

    pub use counters::Taken;

    /// Adds `delta` to `key` in the current window of `window_ms` and returns the window's
    /// count; `None` when the host refused a new key (its table is full, or the key is over
    /// 256 bytes): treat it as over any limit.
    pub fn add(key: &str, delta: u64, window_ms: u32) -> Option<u64> {
        counters::add(key, delta, window_ms)
    }

    /// Takes `tokens` from the bucket `key` (at most `burst` tokens, refilled at
    /// `rate_per_second`; a new bucket starts full).
    pub fn take(key: &str, rate_per_second: u32, burst: u32, tokens: u32) -> Taken {
        counters::take(key, rate_per_second, burst, tokens)
    }
}

/// Values of the Secrets the route grants by name (`secrets`).
pub mod secrets {
    use crate::bindings::wasmgress::plugin::secrets;
    use alloc::vec::Vec;

    /// The value of `key` in the granted Secret `name`.
    pub fn get(name: &str, key: &str) -> Option<Vec<u8>> {
        secrets::get(name, key)
    }
}

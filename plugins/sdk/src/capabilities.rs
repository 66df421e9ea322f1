//! The capabilities a plugin may import. Calling one of these functions makes the component
//! import its interface, and the route attaching the plugin must then grant it
//! (`wasmgress.io/plugin.<name>.capabilities: "clock, random, counters, secrets(NAME, ...),
//! http(HOST[:PORT], ...)"`), or the plugin fails to attach with a diagnostic naming the
//! capability. A plugin that never calls them imports nothing and needs no grant. They work in
//! `configure` and in every hook (`http` calls are only made for hooks that return
//! [`Action::Wait`](crate::Action::Wait)).

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

/// Outbound HTTP calls to the hosts the route grants (`http(HOST[:PORT], ...)`).
///
/// A call is only queued by [`send`](http::send): the host makes it once the hook returns
/// [`Action::Wait`](crate::Action::Wait), then hands every queued call's result, in order, to
/// [`Plugin::on_http_responses`](crate::Plugin::on_http_responses), on any instance configured
/// for the route (keep what it needs with `Request::set_value`). Calls
/// queued by a hook that does not return `Wait` are never made. Only the request hook and
/// `on_http_responses` may wait. Limits: 4 calls queued per hook call (the fifth is refused,
/// `too-many`), 4 waits per request and plugin, a request body of at most 64 KiB, an answer of
/// at most 1 MiB (`too-large`), a deadline per call (0: 1000 ms; at most 30000 ms).
pub mod http {
    use crate::bindings::wasmgress::plugin::http;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    pub use crate::{HttpError, HttpRequest, HttpResponse};

    /// Queues `request` and returns its place among this hook call's queued calls (0, 1...),
    /// the index of its result in `on_http_responses`. Refused at once
    /// ([`HttpError::Invalid`], [`HttpError::NotGranted`], [`HttpError::TooMany`]) when the
    /// method, URL, a header or the body is invalid, the URL's host is not granted (or is an
    /// address the proxy never calls), or 4 calls are already queued.
    pub fn send(request: &HttpRequest) -> Result<u32, HttpError> {
        http::send(request)
    }

    /// Queues a `GET` of `url` with these headers and no body; `timeout_ms` 0 is the host's
    /// default (1000 ms). See [`send`].
    pub fn get(url: &str, headers: &[(&str, &[u8])], timeout_ms: u32) -> Result<u32, HttpError> {
        send(&HttpRequest {
            method: "GET".to_string(),
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect(),
            body: Vec::new(),
            timeout_ms,
        })
    }
}

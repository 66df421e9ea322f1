//! The plugin's `metrics` (always available) and the capability imports of ABI 0.2.0
//! (`clock`, `random`, `counters`, `secrets`), over what
//! the instance's route granted ([`Granted`](crate::plugin::capability::Granted), in the
//! store). Each call checks the grant: a call the route did not grant traps (attaching
//! already refuses such plugins; this is the second lock).

use super::StoreState;
use super::v0_2::wasmgress::plugin::{clock, counters, http, metrics, random, secrets, types};
use crate::plugin::capability::Capability;
use crate::plugin::counters::monotonic_ns;
use crate::plugin::outbound::{self, Asked, CallFailure};

/// Largest `random.get-bytes` answer.
const MAX_RANDOM_BYTES: u32 = 4096;

impl StoreState {
    fn granted(&self, c: Capability) -> wasmtime::Result<()> {
        if self.granted.allows(c) {
            Ok(())
        } else {
            Err(wasmtime::Error::msg(format!(
                "the `{c}` capability is not granted to this plugin on this route"
            )))
        }
    }
}

/// The clock's resolution: plugins of different tenants share threads and locks, so a
/// nanosecond clock would make timing side channels easier than they need to be.
const CLOCK_RESOLUTION_NS: u64 = 1_000;

impl clock::Host for StoreState {
    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        self.granted(Capability::Clock)?;
        Ok(monotonic_ns() / CLOCK_RESOLUTION_NS * CLOCK_RESOLUTION_NS)
    }

    fn wall_now(&mut self) -> wasmtime::Result<u64> {
        self.granted(Capability::Clock)?;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ns = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        Ok(ns / CLOCK_RESOLUTION_NS * CLOCK_RESOLUTION_NS)
    }
}

impl random::Host for StoreState {
    fn get_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        self.granted(Capability::Random)?;
        let mut out = vec![0; len.min(MAX_RANDOM_BYTES) as usize];
        fill(&mut out)?;
        Ok(out)
    }

    fn get_u64(&mut self) -> wasmtime::Result<u64> {
        self.granted(Capability::Random)?;
        let mut out = [0; 8];
        fill(&mut out)?;
        Ok(u64::from_le_bytes(out))
    }
}

fn fill(out: &mut [u8]) -> wasmtime::Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| wasmtime::Error::msg("the system's random generator failed"))
}

impl counters::Host for StoreState {
    fn add(&mut self, key: String, delta: u64, window_ms: u32) -> wasmtime::Result<Option<u64>> {
        self.granted(Capability::Counters)?;
        Ok(self
            .granted
            .counters()
            .and_then(|s| s.add(&key, delta, window_ms)))
    }

    fn take(
        &mut self,
        key: String,
        rate_per_second: u32,
        burst: u32,
        tokens: u32,
    ) -> wasmtime::Result<counters::Taken> {
        self.granted(Capability::Counters)?;
        let taken = match self.granted.counters() {
            Some(s) => s.take(&key, rate_per_second, burst, tokens),
            None => return Err(wasmtime::Error::msg("no counter scope")),
        };
        Ok(counters::Taken {
            admitted: taken.admitted,
            remaining: taken.remaining,
            retry_after_ms: taken.retry_after_ms,
        })
    }
}

impl secrets::Host for StoreState {
    fn get(&mut self, name: String, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.granted(Capability::Secrets)?;
        Ok(self.granted.secret(&name, &key).map(<[u8]>::to_vec))
    }
}

impl metrics::Host for StoreState {
    fn add(&mut self, index: u32, label: String, value: u64) -> wasmtime::Result<()> {
        self.metrics
            .add(index, &self.granted.namespace, &label, value);
        Ok(())
    }

    fn observe(&mut self, index: u32, label: String, value: f64) -> wasmtime::Result<()> {
        self.metrics
            .observe(index, &self.granted.namespace, &label, value);
        Ok(())
    }
}

impl http::Host for StoreState {
    fn send(
        &mut self,
        request: types::HttpRequest,
    ) -> wasmtime::Result<Result<u32, types::HttpError>> {
        self.granted(Capability::Http)?;
        if !self.may_wait {
            // Only a call that can return `wait` may queue one.
            return Ok(Err(types::HttpError::Invalid));
        }
        let asked = Asked {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        let queued = self.calls.len();
        Ok(match outbound::check(asked, &self.granted, queued) {
            Ok(call) => {
                self.calls.push(call);
                Ok(u32::try_from(queued).unwrap_or(u32::MAX))
            }
            Err(why) => Err(http_error(why)),
        })
    }
}

/// The WIT's name for a call's failure.
pub(crate) fn http_error(why: CallFailure) -> types::HttpError {
    match why {
        CallFailure::NotGranted => types::HttpError::NotGranted,
        CallFailure::Invalid => types::HttpError::Invalid,
        CallFailure::TooMany => types::HttpError::TooMany,
        CallFailure::Timeout => types::HttpError::Timeout,
        CallFailure::Failed => types::HttpError::Failed,
        CallFailure::TooLarge => types::HttpError::TooLarge,
    }
}

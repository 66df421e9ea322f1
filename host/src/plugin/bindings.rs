//! Host side of the `wasmgress:plugin/filter` world: the generated bindings and the two
//! imported interfaces a plugin may call, `types.fields` (the header handle) and `log`.
//!
//! Owns what a guest can do to the host during a call, and nothing else: it sees only the
//! header map the hook was handed (moved into the store for the duration of the call) and a
//! bounded log. It must not grow capabilities beyond the WIT world (no clocks, files, network).

use super::engine::StoreState;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::Resource;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "filter",
    // Arguments to the guest's exports are borrowed: a hook call lends the request line
    // instead of copying it into four new strings first.
    ownership: Borrowing { duplicate_if_necessary: true },
    with: {
        // The `fields` handle carries no data of its own: the map lives in the store state.
        "wasmgress:plugin/types.fields": FieldsHandle,
    },
});

pub use wasmgress::plugin::log::Level as LogLevel;
pub use wasmgress::plugin::types as wit;

/// Marker type for the `fields` resource (the map itself is [`StoreState::headers`]).
pub struct FieldsHandle;

/// Headers the proxy manages; a plugin may read them but not change them. Changing them
/// would break message framing or connection management.
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// The rep of the single `fields` handle alive during a hook call.
pub(crate) const FIELDS_REP: u32 = 0;

/// At most this many log lines per call, each at most [`MAX_LOG_BYTES`]: a plugin must not be
/// able to flood the host's log.
const MAX_LOG_LINES_PER_CALL: u32 = 16;
const MAX_LOG_BYTES: usize = 1024;

fn editable_name(name: &str) -> Result<HeaderName, wit::HeaderError> {
    let name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| wit::HeaderError::InvalidName)?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(wit::HeaderError::Forbidden);
    }
    Ok(name)
}

fn value(bytes: Vec<u8>) -> Result<HeaderValue, wit::HeaderError> {
    // The lifted vector becomes the value's storage: no second allocation and copy per edit.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes))
        .map_err(|_| wit::HeaderError::InvalidValue)
}

impl StoreState {
    fn map(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }
}

impl wit::HostFields for StoreState {
    fn get(&mut self, _handle: Resource<FieldsHandle>, name: String) -> Option<Vec<u8>> {
        self.map().get(name.as_str()).map(|v| v.as_bytes().to_vec())
    }

    fn get_all(&mut self, _handle: Resource<FieldsHandle>, name: String) -> Vec<Vec<u8>> {
        self.map()
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    fn set(
        &mut self,
        _handle: Resource<FieldsHandle>,
        name: String,
        value_bytes: Vec<u8>,
    ) -> Result<(), wit::HeaderError> {
        let name = editable_name(&name)?;
        let v = value(value_bytes)?;
        self.map().insert(name, v);
        Ok(())
    }

    fn append(
        &mut self,
        _handle: Resource<FieldsHandle>,
        name: String,
        value_bytes: Vec<u8>,
    ) -> Result<(), wit::HeaderError> {
        let name = editable_name(&name)?;
        let v = value(value_bytes)?;
        self.map().append(name, v);
        Ok(())
    }

    fn remove(
        &mut self,
        _handle: Resource<FieldsHandle>,
        name: String,
    ) -> Result<(), wit::HeaderError> {
        let name = editable_name(&name)?;
        self.map().remove(name);
        Ok(())
    }

    fn drop(&mut self, _handle: Resource<FieldsHandle>) -> wasmtime::Result<()> {
        // Only borrows are ever handed out; there is nothing to free.
        Ok(())
    }
}

impl wit::Host for StoreState {}

impl wasmgress::plugin::log::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) {
        if self.log_lines >= MAX_LOG_LINES_PER_CALL {
            return;
        }
        self.log_lines += 1;
        let mut end = message.len().min(MAX_LOG_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let msg = &message[..end];
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(target: "wasmgress::plugin", plugin, "{msg}"),
            LogLevel::Debug => tracing::debug!(target: "wasmgress::plugin", plugin, "{msg}"),
            LogLevel::Info => tracing::info!(target: "wasmgress::plugin", plugin, "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "wasmgress::plugin", plugin, "{msg}"),
            LogLevel::Error => tracing::error!(target: "wasmgress::plugin", plugin, "{msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::HostFields;

    fn state() -> StoreState {
        let mut s = StoreState::new("t".into(), 1 << 20);
        s.headers
            .insert("content-length", HeaderValue::from_static("5"));
        s
    }

    fn handle() -> Resource<FieldsHandle> {
        Resource::new_borrow(FIELDS_REP)
    }

    #[test]
    fn edits_land_in_the_lent_map() {
        let mut s = state();
        assert_eq!(s.set(handle(), "X-A".into(), b"1".to_vec()), Ok(()));
        assert_eq!(s.append(handle(), "x-a".into(), b"2".to_vec()), Ok(()));
        assert_eq!(
            s.get_all(handle(), "x-a".into()),
            vec![b"1".to_vec(), b"2".to_vec()]
        );
        assert_eq!(s.remove(handle(), "x-a".into()), Ok(()));
        assert_eq!(s.get(handle(), "x-a".into()), None);
    }

    /// A plugin can neither smuggle a second header or line into the request nor touch the
    /// headers that frame the message.
    #[test]
    fn injection_and_framing_headers_are_refused() {
        let mut s = state();
        for bad in [&b"a\r\nSet-Cookie: x"[..], b"a\nb", b"a\0b"] {
            assert_eq!(
                s.set(handle(), "x-a".into(), bad.to_vec()),
                Err(wit::HeaderError::InvalidValue),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.set(handle(), "x a:".into(), b"1".to_vec()),
            Err(wit::HeaderError::InvalidName)
        );
        for reserved in ["Content-Length", "transfer-encoding", "connection"] {
            assert_eq!(
                s.set(handle(), reserved.into(), b"0".to_vec()),
                Err(wit::HeaderError::Forbidden),
                "{reserved}"
            );
            assert_eq!(
                s.remove(handle(), reserved.into()),
                Err(wit::HeaderError::Forbidden)
            );
        }
        assert_eq!(
            s.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert_eq!(s.headers.len(), 1);
    }
}

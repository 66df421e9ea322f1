//! Host side of the `wasmgress:plugin/filter` world, in every ABI version the host links: the
//! generated bindings ([`v0_2`], the current one, and the frozen [`v0_1`]) and the two imported
//! interfaces a plugin may call, `types.fields` (the header handle) and `log`.
//!
//! Owns what a guest can do to the host during a call, and nothing else: it sees only the
//! header map the hook was handed (moved into the store for the duration of the call) and a
//! bounded log. It must not grow capabilities beyond the WIT world (no clocks, files, network).
//! Both versions' imports share one implementation; [`upgrade`] turns what a 0.1.0 component
//! returns into 0.2.0 values, so the rest of the host only knows the current version.

use super::engine::StoreState;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::Resource;

pub mod upgrade;

/// `wasmgress:plugin@0.2.0`, the current ABI (`wit/plugin.wit`).
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        // Arguments to the guest's exports are borrowed: a hook call lends the request line
        // instead of copying it into four new strings first.
        ownership: Borrowing { duplicate_if_necessary: true },
        // A host function may trap its call (a handle used outside its call, a capability
        // the route did not grant).
        imports: { default: trappable },
        with: {
            // The handles carry no data of their own: the map and the request live in the
            // store state for the duration of a hook call.
            "wasmgress:plugin/types.fields": super::FieldsHandle,
            "wasmgress:plugin/types.request": super::RequestHandle,
        },
    });
}

/// `wasmgress:plugin@0.1.0`, frozen (`wit/0.1.0/plugin.wit`): components built against it
/// keep loading.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "filter",
        ownership: Borrowing { duplicate_if_necessary: true },
        // A host function may trap its call (a handle used outside its call, a capability
        // the route did not grant).
        imports: { default: trappable },
        with: {
            "wasmgress:plugin/types.fields": super::FieldsHandle,
        },
    });
}

pub use v0_2::wasmgress::plugin::types as wit;

/// Marker type for the `fields` resource (the map itself is [`StoreState::headers`]).
pub struct FieldsHandle;

/// Marker type for the `request` resource (the request itself is [`StoreState::request`]).
pub struct RequestHandle;

/// The rep of the single `request` handle alive during a hook call.
pub(crate) const REQUEST_REP: u32 = 0;

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

fn editable_name(name: &str) -> Result<HeaderName, Refusal> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Refusal::InvalidName)?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(Refusal::Forbidden);
    }
    Ok(name)
}

fn value_of(bytes: Vec<u8>) -> Result<HeaderValue, Refusal> {
    // The lifted vector becomes the value's storage: no second allocation and copy per edit.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).map_err(|_| Refusal::InvalidValue)
}

/// Why a header edit was refused, whatever the ABI version (each maps it to its own enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    InvalidName,
    InvalidValue,
    Forbidden,
}

fn editable(
    name: &str,
    value: Option<Vec<u8>>,
) -> Result<(HeaderName, Option<HeaderValue>), Refusal> {
    let name = editable_name(name)?;
    let value = value.map(value_of).transpose()?;
    Ok((name, value))
}

/// The header handle's operations, shared by every ABI version.
impl StoreState {
    fn map(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    pub(crate) fn fields_get(&mut self, name: &str) -> Option<Vec<u8>> {
        self.map().get(name).map(|v| v.as_bytes().to_vec())
    }

    pub(crate) fn fields_get_all(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.map()
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    pub(crate) fn fields_set(&mut self, name: &str, value: Vec<u8>) -> Result<(), Refusal> {
        let (name, value) = editable(name, Some(value))?;
        if let Some(v) = value {
            self.map().insert(name, v);
        }
        Ok(())
    }

    pub(crate) fn fields_append(&mut self, name: &str, value: Vec<u8>) -> Result<(), Refusal> {
        let (name, value) = editable(name, Some(value))?;
        if let Some(v) = value {
            self.map().append(name, v);
        }
        Ok(())
    }

    pub(crate) fn fields_remove(&mut self, name: &str) -> Result<(), Refusal> {
        let (name, _) = editable(name, None)?;
        self.map().remove(name);
        Ok(())
    }

    fn log_line(&mut self, level: tracing::Level, message: &str) {
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
            tracing::Level::TRACE => tracing::trace!(target: "wasmgress::plugin", plugin, "{msg}"),
            tracing::Level::DEBUG => tracing::debug!(target: "wasmgress::plugin", plugin, "{msg}"),
            tracing::Level::INFO => tracing::info!(target: "wasmgress::plugin", plugin, "{msg}"),
            tracing::Level::WARN => tracing::warn!(target: "wasmgress::plugin", plugin, "{msg}"),
            tracing::Level::ERROR => tracing::error!(target: "wasmgress::plugin", plugin, "{msg}"),
        }
    }
}

/// Implements one ABI version's imports over the shared operations above. The versions'
/// generated traits and enums are distinct types with the same shape, hence a macro.
macro_rules! imports {
    ($types:path, $log:path) => {
        const _: () = {
            use $log as log;
            use $types as types;

            fn refusal(r: Refusal) -> types::HeaderError {
                match r {
                    Refusal::InvalidName => types::HeaderError::InvalidName,
                    Refusal::InvalidValue => types::HeaderError::InvalidValue,
                    Refusal::Forbidden => types::HeaderError::Forbidden,
                }
            }

            impl types::HostFields for StoreState {
                fn get(
                    &mut self,
                    _: Resource<FieldsHandle>,
                    name: String,
                ) -> wasmtime::Result<Option<Vec<u8>>> {
                    Ok(self.fields_get(&name))
                }

                fn get_all(
                    &mut self,
                    _: Resource<FieldsHandle>,
                    name: String,
                ) -> wasmtime::Result<Vec<Vec<u8>>> {
                    Ok(self.fields_get_all(&name))
                }

                fn set(
                    &mut self,
                    _: Resource<FieldsHandle>,
                    name: String,
                    value: Vec<u8>,
                ) -> wasmtime::Result<Result<(), types::HeaderError>> {
                    Ok(self.fields_set(&name, value).map_err(refusal))
                }

                fn append(
                    &mut self,
                    _: Resource<FieldsHandle>,
                    name: String,
                    value: Vec<u8>,
                ) -> wasmtime::Result<Result<(), types::HeaderError>> {
                    Ok(self.fields_append(&name, value).map_err(refusal))
                }

                fn remove(
                    &mut self,
                    _: Resource<FieldsHandle>,
                    name: String,
                ) -> wasmtime::Result<Result<(), types::HeaderError>> {
                    Ok(self.fields_remove(&name).map_err(refusal))
                }

                fn drop(&mut self, _: Resource<FieldsHandle>) -> wasmtime::Result<()> {
                    // Only borrows are ever handed out; there is nothing to free.
                    Ok(())
                }
            }

            impl types::Host for StoreState {}

            impl log::Host for StoreState {
                fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
                    let level = match level {
                        log::Level::Trace => tracing::Level::TRACE,
                        log::Level::Debug => tracing::Level::DEBUG,
                        log::Level::Info => tracing::Level::INFO,
                        log::Level::Warn => tracing::Level::WARN,
                        log::Level::Error => tracing::Level::ERROR,
                    };
                    self.log_line(level, &message);
                    Ok(())
                }
            }
        };
    };
}

imports!(v0_2::wasmgress::plugin::types, v0_2::wasmgress::plugin::log);
mod capabilities;
pub(crate) use capabilities::http_error;
mod request;
imports!(v0_1::wasmgress::plugin::types, v0_1::wasmgress::plugin::log);

#[cfg(test)]
mod tests {
    use super::*;
    use wit::HostFields;

    fn state() -> StoreState {
        let metrics = crate::plugin::metrics::for_plugin("t", Vec::new());
        let mut s = StoreState::new("t".into(), 1 << 20, Default::default(), metrics);
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
        assert_eq!(
            s.set(handle(), "X-A".into(), b"1".to_vec()).unwrap(),
            Ok(())
        );
        assert_eq!(
            s.append(handle(), "x-a".into(), b"2".to_vec()).unwrap(),
            Ok(())
        );
        assert_eq!(
            s.get_all(handle(), "x-a".into()).unwrap(),
            vec![b"1".to_vec(), b"2".to_vec()]
        );
        assert_eq!(s.remove(handle(), "x-a".into()).unwrap(), Ok(()));
        assert_eq!(s.get(handle(), "x-a".into()).unwrap(), None);
    }

    /// A plugin can neither smuggle a second header or line into the request nor touch the
    /// headers that frame the message.
    #[test]
    fn injection_and_framing_headers_are_refused() {
        let mut s = state();
        for bad in [&b"a\r\nSet-Cookie: x"[..], b"a\nb", b"a\0b"] {
            assert_eq!(
                s.set(handle(), "x-a".into(), bad.to_vec()).unwrap(),
                Err(wit::HeaderError::InvalidValue),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.set(handle(), "x a:".into(), b"1".to_vec()).unwrap(),
            Err(wit::HeaderError::InvalidName)
        );
        for reserved in ["Content-Length", "transfer-encoding", "connection"] {
            assert_eq!(
                s.set(handle(), reserved.into(), b"0".to_vec()).unwrap(),
                Err(wit::HeaderError::Forbidden),
                "{reserved}"
            );
            assert_eq!(
                s.remove(handle(), reserved.into()).unwrap(),
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

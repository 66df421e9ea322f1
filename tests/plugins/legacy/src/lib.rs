//! Test plugin `legacy`, built against the frozen `wasmgress:plugin@0.1.0` ABI
//! (`wit/0.1.0/`) with wit-bindgen directly, as plugins were written before 0.2.0. The host
//! must keep loading and running it unchanged.
//!
//! Its policy uses 0.1.0's record fields: a static request header `x-legacy-static: 1` and a
//! 30 s read timeout; its request hook sets `x-legacy-hook: <method> <path>` and answers 403
//! itself when the request carries `x-legacy-deny`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/0.1.0",
        world: "filter",
    });
}

use alloc::string::ToString;
use alloc::vec::Vec;
use bindings::wasmgress::plugin::types::{
    Action, Diagnostic, Fields, Header, HeaderEdit, HeaderValue, Hook, Info, Policy, RequestHead,
    Response,
};

struct Legacy;

impl bindings::Guest for Legacy {
    fn describe() -> Info {
        Info {
            name: "legacy".to_string(),
            version: "0.1.0".to_string(),
            keys: Vec::new(),
            prefixes: Vec::new(),
            hooks: alloc::vec![Hook::RequestHeaders],
        }
    }

    fn configure(
        _annotations: Vec<(alloc::string::String, alloc::string::String)>,
    ) -> Result<Policy, Vec<Diagnostic>> {
        Ok(Policy {
            upstream_protocol: None,
            connect_timeout_ms: None,
            read_timeout_ms: Some(30_000),
            send_timeout_ms: None,
            upstream_http_version: None,
            request_headers: alloc::vec![HeaderEdit::Set(Header {
                name: "x-legacy-static".to_string(),
                value: HeaderValue::Text("1".to_string()),
            })],
            response_headers: Vec::new(),
            respond: None,
            app_root: None,
            ssl_redirect: None,
            force_ssl_redirect: None,
            rewrite_target: None,
            use_regex: None,
            hooks: alloc::vec![Hook::RequestHeaders],
            notes: Vec::new(),
        })
    }

    fn on_request_headers(head: RequestHead, headers: &Fields) -> Action {
        if headers.get("x-legacy-deny").is_some() {
            return Action::RespondNow(Response {
                status: 403,
                headers: Vec::new(),
                body: b"legacy says no\n".to_vec(),
            });
        }
        let mut seen = head.method;
        seen.push(' ');
        seen.push_str(&head.path);
        // Only this ASCII header name is set, which the host never refuses.
        let _ = headers.set("x-legacy-hook", seen.as_bytes());
        Action::Continue
    }

    fn on_response_headers(_status: u16, _headers: &Fields) -> Action {
        Action::Continue
    }
}

bindings::export!(Legacy with_types_in bindings);

/// What a `no_std` component needs at run time (as the 0.1.0 SDK supplied it): an allocator
/// over linear memory, the canonical ABI's `cabi_realloc`, and a panic handler that traps.
#[cfg(target_arch = "wasm32")]
mod rt {
    #[link(name = "c")]
    unsafe extern "C" {}

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// # Safety
    /// Called by the host per the canonical ABI.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        use alloc::alloc::{Layout, alloc, realloc};
        if new_len == 0 {
            return align as *mut u8;
        }
        let Ok(layout) = Layout::from_size_align(new_len, align) else {
            core::arch::wasm32::unreachable()
        };
        // SAFETY: per the function's contract.
        let ptr = unsafe {
            if old_len == 0 {
                alloc(layout)
            } else {
                let Ok(old) = Layout::from_size_align(old_len, align) else {
                    core::arch::wasm32::unreachable()
                };
                realloc(old_ptr, old, new_len)
            }
        };
        if ptr.is_null() {
            core::arch::wasm32::unreachable()
        }
        ptr
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        core::arch::wasm32::unreachable()
    }
}

//! Test plugin `grow`: allocates without bound in `on-request-headers`, never freeing.
//! Exercises the host's memory cap: the growth that crosses it fails the call.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Headers, Hook, Info, Plugin, Policy, Request, Settings, export_plugin, info,
};

struct Grow;

impl Plugin for Grow {
    type Config = ();

    fn info() -> Info {
        info("grow", "0.1.0", &[], &[], &[Hook::RequestHeaders])
    }

    fn configure(_: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders],
            ..Policy::default()
        };
        Ok((policy, ()))
    }

    fn on_request_headers(_: &(), _: &Request<'_>, _: &Headers<'_>) -> Action {
        // Ask for linear memory 1 MiB at a time without touching it, so the memory cap is what
        // stops the plugin (long before its deadline), as it would stop a real leak.
        #[cfg(target_arch = "wasm32")]
        loop {
            core::hint::black_box(core::arch::wasm32::memory_grow(0, 16));
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(core::hint::black_box(alloc::vec![1u8; 1 << 20]));
            }
        }
    }
}

export_plugin!(Grow);

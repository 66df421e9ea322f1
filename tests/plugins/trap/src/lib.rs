//! Test plugin `trap`: executes `unreachable` in `on-request-headers` (or in `configure`, with
//! `wasmgress.io/plugin.trap.at: configure`). Exercises trap isolation in the host.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Headers, Hook, Info, Plugin, Policy, Request, Settings, export_plugin, info,
};

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    unreachable!("the trap plugin only traps inside a wasm instance")
}

struct Trap;

impl Plugin for Trap {
    type Config = ();

    fn info() -> Info {
        info("trap", "0.1.0", &[], &[], &[Hook::RequestHeaders])
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        if annotations.get("wasmgress.io/plugin.trap.at") == Some("configure") {
            trap();
        }
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders],
            ..Policy::default()
        };
        Ok((policy, ()))
    }

    fn on_request_headers(_: &(), _: &Request<'_>, _: &Headers<'_>) -> Action {
        trap()
    }
}

export_plugin!(Trap);

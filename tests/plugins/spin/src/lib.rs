//! Test plugin `spin`: never returns. Exercises the host's per-call deadline (epoch
//! interruption). By default it spins in `on-request-headers`; with the annotation
//! `wasmgress.io/plugin.spin.at: configure` it spins in `configure` instead (compile-time
//! deadline).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Headers, Hook, Info, Plugin, Policy, Request, Settings, export_plugin, info,
};

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        // `black_box` keeps the loop from being optimised into something else.
        n = core::hint::black_box(n.wrapping_add(1));
    }
}

struct Spin;

impl Plugin for Spin {
    type Config = ();

    fn info() -> Info {
        info("spin", "0.1.0", &[], &[], &[Hook::RequestHeaders])
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        if annotations.get("wasmgress.io/plugin.spin.at") == Some("configure") {
            spin();
        }
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders],
            ..Policy::default()
        };
        Ok((policy, ()))
    }

    fn on_request_headers(_: &(), _: &Request<'_>, _: &Headers<'_>) -> Action {
        spin()
    }
}

export_plugin!(Spin);

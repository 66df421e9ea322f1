//! The plugin platform's host side: runs sandboxed WebAssembly components (the
//! `wasmgress:plugin/filter` world in `wit/`) at compile time and, only when asked, per request.
//!
//! Owns: the wasmtime engine and its limits ([`RuntimeConfig`]), loading plugins
//! ([`Registry`]: embedded built-ins, `*.wasm` from a directory, SHA-256 pins), configuring
//! them for an Ingress ([`configure_ingress`] -> a merged [`PluginPolicy`], made of the proxy's
//! own [`crate::policy`] types), and running their hooks ([`HookChain`]). It must not touch
//! routing, TLS or the proxy: the compile stage calls [`configure_ingress`] and folds the
//! result into each route's [`crate::policy::Policy`] ([`PluginPolicy::apply_to`] does the
//! one-to-one fields); the proxy executes that data natively and calls
//! [`HookChain::run_request`] / [`HookChain::run_response`] only when the chain is not empty
//! (a static policy costs zero Wasm calls per request).
//!
//! # Sandbox
//!
//! One [`wasmtime::Engine`] per process (pooling allocator, epoch interruption, no WASI: a
//! plugin imports only `wasmgress:plugin/types`, `log`, `metrics` and the capabilities
//! `clock`, `random`, `counters`, `secrets`, `http`, checked at load; each capability must also be
//! granted by the route that attaches the plugin, checked at attach ([`capability`])). One ticker thread
//! advances the epoch every [`EPOCH_TICK`]; each call sets its own deadline (default 5 ms at
//! request time, 100 ms at compile time). A store's memory is capped (default 16 MiB) by
//! `StoreLimits`, and growth past it traps. A trap, deadline or memory failure fails that call
//! with a [`CallError`] (counted in [`PluginStats`]) and the instance is dropped; other calls,
//! on other instances, are unaffected.
//!
//! # Instances and isolation: per (plugin, Ingress), chosen by measurement
//!
//! A hook needs its Ingress's configuration. Two designs were weighed:
//!
//! 1. *Config blob*: `configure` returns opaque bytes, the host passes them back on every
//!    call, and any instance of a plugin serves any Ingress.
//! 2. *Configured instances* (chosen): `configure` runs on a fresh instance, which keeps what
//!    it parsed in its own memory; the instance, and every further one created for load
//!    (instantiate + `configure` with the same annotations), serves that Ingress only, from a
//!    free list owned by its [`BoundPlugin`]. A failed instance is dropped, never reused.
//!
//! Measured with `cargo bench --bench plugin_hook` (release, on the shared 2-core development
//! machine; medians of 31 batch means, ns per request; ABI 0.2.0, 2026-12-05):
//!
//! | case | ns | x baseline |
//! | --- | ---: | ---: |
//! | baseline: clone a 6-header request map, empty hook chain | 99 | 1.0 |
//! | static policy (3 header edits, zero Wasm calls) | 300 | 3.0 |
//! | `on-request-headers` of a header-setting plugin, reused configured instance, with the per-request `request` handle | 904 | 9.1 |
//! | fresh instance + `configure` for an Ingress (once per instance, not per call) | 32 486 | 329 |
//!
//! So a hook call costs about 0.8 µs over the baseline. (An earlier measurement of the
//! alternative, a config blob copied into the guest on every call, found 256 more bytes lost
//! in the noise, but the guest would also decode the blob on every call.) The blob would only
//! save instantiations (about 30 µs each, once per instance), at the price of weaker
//! isolation: with instances shared between Ingresses, a plugin's globals could carry one
//! Ingress's data into another's request. Configured instances never can, and give plugin
//! authors parsed configuration for free (`Plugin::Config` in the SDK). Because hook calls are
//! synchronous, an Ingress never needs more instances than there are proxy worker threads: a
//! hook that waits for outbound calls gives its instance back for the wait, and the
//! continuation (`on-http-responses`) takes any instance of the route.
//!
//! The pool holds at most 1000 component instances process-wide (each a 4 GiB virtual
//! reservation, not memory): instances for configure are short-lived, and hook instances
//! number at most (Ingresses with hooks) x (worker threads). An instantiation that finds the
//! pool exhausted fails that call like a trap would.
//!
//! # Per request
//!
//! On a route with hooks the proxy builds one [`HookRequest`] per request ([`request`]): the
//! facts hooks read through the `request` handle (line, id, client, TLS, route), the values
//! each plugin keeps between its hooks, and the method, path and query changes request hooks
//! ask for. Request hooks run in attach order; response hooks in reverse attach order over
//! every answer of the route; WebSocket message hooks per message ([`HookChain::run_message`]).
//! A request hook may wait for outbound HTTP calls ([`outbound`]): the chain stops with a
//! [`Suspended`], the proxy awaits [`HookChain::resume`] in the request's own task (no worker
//! is blocked), and the chain goes on. Body and trailers hooks ([`BodyHooks`]) filter request
//! and upstream response bodies chunk by chunk as they stream; a hook may also send the
//! request to another backend its route grants (`request.set-backend`).
//! Counters ([`counters`]) and plugin metrics ([`metrics`]) are shared per plugin and
//! namespace, bounded, and kept across reloads.
//!
//! # Policies
//!
//! [`PluginPolicy`] is data. Merge rule for several plugins, in attach order (built-ins that own a
//! present annotation first, then `wasmgress.io/plugins` in order): a scalar set by a later
//! plugin wins (with a warning when it changes a value), header edits concatenate, hooks
//! concatenate. Annotations under `nginx.ingress.kubernetes.io/` or `wasmgress.io/` that no
//! attached plugin owns produce a warning each.

mod bindings;
mod body;
pub mod capability;
mod configure;
pub mod counters;
mod engine;
mod error;
mod hooks;
mod instance;
pub mod metrics;
pub mod outbound;
mod policy;
mod registry;
pub mod request;
pub mod scaffold;

#[cfg(test)]
mod tests;

pub use body::BodyHooks;
pub use capability::{Capabilities, Capability, NoSecrets, SecretData, SecretSource};
pub use configure::{Configured, PluginDiagnostic, attached_plugins, configure_ingress};
pub use engine::{EPOCH_TICK, MAX_MEMORY_LIMIT, RuntimeConfig};
pub use error::{CallError, CallErrorKind, DirError, LoadError};
pub use hooks::{
    BodyOutcome, BoundPlugin, Direction, HOOK_FAILED_CLOSE, HookAction, HookChain, HookOutcome,
    MAX_BODY_CHUNK, MAX_MESSAGE_BYTES, Message, MessageOutcome, Suspended, plugin_failure_response,
};
pub use instance::{
    HookSet, LoadedPlugin, PluginInfo, PluginOrigin, PluginStats, Route, StatsSnapshot,
};
pub use policy::{
    AccessRules, BasicAuthRule, ClientTlsRule, ClientVerify, DigestAuthRule, ExternalAuthRule,
    FixedResponse, ObjectRef, PluginPolicy,
};
pub use registry::{PLUGIN_PREFIX, PLUGINS_ANNOTATION, Registry, all_stats};
pub use request::{HookRequest, RequestFacts, RouteInfo, TlsInfo};

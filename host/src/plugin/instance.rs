//! A compiled plugin ([`LoadedPlugin`]) and one live instance of it ([`PluginInstance`]).
//!
//! Owns the call discipline: every call into a guest gets a fresh epoch deadline, a reset log
//! budget and, for hooks, the header map moved into the store for exactly the duration of the
//! call; every failure is classified into a [`CallError`] and counted. A caller must drop an
//! instance whose call failed (the methods consume nothing, but the contract is that a failed
//! instance is never reused: its memory may be in any state). This module does not decide
//! which instance serves which Ingress; `hooks` and `configure` do.

use super::bindings::{
    FIELDS_REP, FieldsHandle, REQUEST_REP, RequestHandle, upgrade, v0_1, v0_2, wit,
};
use super::capability::{Capabilities, Granted};
use super::engine::{Running, RuntimeConfig, StoreState, running, ticks};
use super::error::{CallError, CallErrorKind};
use super::request::HookRequest;
use http::HeaderMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

/// Per-plugin counters, readable at any time (for metrics). Monotonic.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Compile-time calls (describe, configure); [`PluginStats::snapshot`] adds the hook calls
    /// to report every call (one counter per hook call, not two).
    pub calls: AtomicU64,
    /// Request-time hook calls only: zero for plugins whose policies are static.
    pub hook_calls: AtomicU64,
    /// Calls that trapped (including memory failures).
    pub traps: AtomicU64,
    /// Calls interrupted at their deadline.
    pub deadline_hits: AtomicU64,
    /// Calls that hit the memory cap (also counted in `traps`).
    pub memory_failures: AtomicU64,
    /// Instances created.
    pub instances: AtomicU64,
}

/// A plain copy of [`PluginStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub hook_calls: u64,
    pub traps: u64,
    pub deadline_hits: u64,
    pub memory_failures: u64,
    pub instances: u64,
}

impl PluginStats {
    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed) + self.hook_calls.load(Ordering::Relaxed),
            hook_calls: self.hook_calls.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            deadline_hits: self.deadline_hits.load(Ordering::Relaxed),
            memory_failures: self.memory_failures.load(Ordering::Relaxed),
            instances: self.instances.load(Ordering::Relaxed),
        }
    }
}

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginOrigin {
    /// Compiled from `plugins/` and embedded in the binary.
    Builtin,
    /// Loaded from a file (for example `--plugin-dir`).
    File(String),
}

impl std::fmt::Display for PluginOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginOrigin::Builtin => f.write_str("built-in"),
            PluginOrigin::File(path) => f.write_str(path),
        }
    }
}

/// The per-request hooks a plugin may use or a policy may ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet {
    pub request_headers: bool,
    pub response_headers: bool,
    pub websocket_message: bool,
    pub request_body: bool,
    pub response_body: bool,
    pub request_trailers: bool,
    pub response_trailers: bool,
}

impl HookSet {
    pub(crate) fn from_wit(hooks: &[wit::Hook]) -> Self {
        let mut set = HookSet::default();
        for h in hooks {
            match h {
                wit::Hook::RequestHeaders => set.request_headers = true,
                wit::Hook::ResponseHeaders => set.response_headers = true,
                wit::Hook::WebsocketMessage => set.websocket_message = true,
                wit::Hook::RequestBody => set.request_body = true,
                wit::Hook::ResponseBody => set.response_body = true,
                wit::Hook::RequestTrailers => set.request_trailers = true,
                wit::Hook::ResponseTrailers => set.response_trailers = true,
            }
        }
        set
    }

    /// Each hook with its WIT name, in WIT order. Exhaustive on purpose: a new hook must be
    /// listed here, and everything built on this list follows.
    pub fn named(self) -> [(bool, &'static str); 7] {
        let HookSet {
            request_headers,
            response_headers,
            websocket_message,
            request_body,
            response_body,
            request_trailers,
            response_trailers,
        } = self;
        [
            (request_headers, "request-headers"),
            (response_headers, "response-headers"),
            (websocket_message, "websocket-message"),
            (request_body, "request-body"),
            (response_body, "response-body"),
            (request_trailers, "request-trailers"),
            (response_trailers, "response-trailers"),
        ]
    }

    fn bits(self) -> u8 {
        self.named()
            .iter()
            .enumerate()
            .fold(0, |acc, (i, (on, _))| acc | (u8::from(*on) << i))
    }

    fn from_bits(bits: u8) -> Self {
        let on = |i: u8| bits & (1 << i) != 0;
        HookSet {
            request_headers: on(0),
            response_headers: on(1),
            websocket_message: on(2),
            request_body: on(3),
            response_body: on(4),
            request_trailers: on(5),
            response_trailers: on(6),
        }
    }

    /// Every hook of `self` or `other`.
    pub fn union(self, other: HookSet) -> HookSet {
        HookSet::from_bits(self.bits() | other.bits())
    }

    /// True when no hook is used.
    pub fn is_empty(&self) -> bool {
        self.bits() == 0
    }

    /// True when every hook in `self` is also in `other`.
    pub fn is_subset_of(&self, other: &HookSet) -> bool {
        self.bits() & !other.bits() == 0
    }

    /// True when some body or trailers hook is used (the proxy then passes bodies through
    /// the chain).
    pub fn touches_bodies(&self) -> bool {
        self.request_body || self.response_body || self.request_trailers || self.response_trailers
    }
}

#[cfg(test)]
mod hook_set_tests {
    use super::HookSet;

    #[test]
    fn bits_round_trip_every_hook() {
        for i in 0..7 {
            let set = HookSet::from_bits(1 << i);
            assert_eq!(set.bits(), 1 << i);
            assert_eq!(set.named().iter().filter(|(on, _)| *on).count(), 1);
        }
        let a = HookSet {
            request_body: true,
            ..HookSet::default()
        };
        let b = HookSet {
            response_trailers: true,
            ..HookSet::default()
        };
        let both = a.union(b);
        assert!(a.is_subset_of(&both) && b.is_subset_of(&both) && !both.is_subset_of(&a));
        assert!(both.touches_bodies() && !HookSet::default().touches_bodies());
    }
}

/// What a plugin says about itself (`describe`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// Exact annotation keys owned.
    pub keys: Vec<String>,
    /// Annotation key prefixes owned (besides `wasmgress.io/plugin.<name>.`).
    pub prefixes: Vec<String>,
    /// Hooks the plugin may ask for.
    pub hooks: HookSet,
    /// Metrics the plugin declared.
    pub metrics: Vec<super::metrics::MetricDecl>,
}

/// A pre-linked component, in the ABI version it was built against.
pub(crate) enum Pre {
    V0_1(v0_1::FilterPre<StoreState>),
    V0_2(v0_2::FilterPre<StoreState>),
}

impl Pre {
    /// `0.1.0` or `0.2.0`.
    pub(crate) fn abi(&self) -> &'static str {
        match self {
            Pre::V0_1(_) => "0.1.0",
            Pre::V0_2(_) => "0.2.0",
        }
    }

    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::V0_1(pre) => pre.engine(),
            Pre::V0_2(pre) => pre.engine(),
        }
    }
}

/// The bindings into one instance, in its ABI version.
enum Bindings {
    V0_1(v0_1::Filter),
    V0_2(v0_2::Filter),
}

/// A compiled, pre-linked plugin: instantiating it costs microseconds.
pub struct LoadedPlugin {
    pub(crate) info: PluginInfo,
    pub(crate) name: Arc<str>,
    pub(crate) origin: PluginOrigin,
    pub(crate) sha256: [u8; 32],
    /// The capability interfaces the component imports.
    pub(crate) capabilities: Capabilities,
    /// The series of its declared metrics.
    pub(crate) metrics: Arc<super::metrics::PluginMetrics>,
    pub(crate) pre: Pre,
    pub(crate) stats: Arc<PluginStats>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("info", &self.info)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// What the plugin said about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Where it came from.
    pub fn origin(&self) -> &PluginOrigin {
        &self.origin
    }

    /// SHA-256 of the component bytes, lower-case hex (what `wasmgress.io/plugin.<name>.sha256`
    /// pins).
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The plugin's counters.
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.stats
    }

    /// The ABI version the component was built against (`0.1.0`, `0.2.0`).
    pub fn abi(&self) -> &'static str {
        self.pre.abi()
    }

    /// The capabilities the component imports (each must be granted where it is attached).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// A fresh instance, reaching what `granted` allows.
    pub(crate) fn instantiate(
        &self,
        config: &RuntimeConfig,
        granted: &Arc<Granted>,
    ) -> Result<PluginInstance, CallError> {
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            self.pre.engine(),
            StoreState::new(
                self.name.clone(),
                config.memory_limit,
                granted.clone(),
                self.metrics.clone(),
            ),
        );
        store.limiter(|s| &mut s.limiter);
        // Instantiation runs the component's start-up code: bound it like a compile-time call.
        store.set_epoch_deadline(ticks(config.compile_deadline));
        let running = running(ticks(config.compile_deadline));
        let instantiated = match &self.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Bindings::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Bindings::V0_2),
        };
        drop(running);
        match instantiated {
            Ok(filter) => Ok(PluginInstance {
                store,
                filter,
                stats: self.stats.clone(),
            }),
            Err(e) => Err(CallError {
                plugin: self.name.to_string(),
                call: "instantiate",
                kind: CallErrorKind::Instantiate,
                deadline: config.compile_deadline,
                detail: format!("{e:#}"),
            }),
        }
    }
}

/// The route a plugin is configured for, as `configure` is told (0.2.0 and later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `Ingress`, `HTTPRoute`...
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Route {
    /// The Ingress `namespace/name`.
    pub fn ingress(namespace: &str, name: &str) -> Self {
        Route {
            kind: "Ingress",
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// One live instance: a store and the bindings into it.
pub(crate) struct PluginInstance {
    store: Store<StoreState>,
    filter: Bindings,
    stats: Arc<PluginStats>,
}

impl PluginInstance {
    /// Classify a failed call, count it and build the error.
    fn fail(&mut self, e: wasmtime::Error, call: &'static str, deadline: Duration) -> CallError {
        let stats = &self.stats;
        let plugin = self.store.data().plugin.to_string();
        let (kind, detail) = if self.store.data().limiter.exceeded {
            stats.traps.fetch_add(1, Ordering::Relaxed);
            stats.memory_failures.fetch_add(1, Ordering::Relaxed);
            (CallErrorKind::Memory, String::from("memory growth refused"))
        } else if let Some(trap) = e.downcast_ref::<Trap>() {
            if *trap == Trap::Interrupt {
                stats.deadline_hits.fetch_add(1, Ordering::Relaxed);
                (CallErrorKind::Deadline, String::new())
            } else {
                stats.traps.fetch_add(1, Ordering::Relaxed);
                (CallErrorKind::Trap, trap.to_string())
            }
        } else {
            stats.traps.fetch_add(1, Ordering::Relaxed);
            (CallErrorKind::Trap, format!("{e:#}"))
        };
        CallError {
            plugin,
            call,
            kind,
            deadline,
            detail,
        }
    }

    /// Starts a compile-time call; the guard keeps the epoch ticker running until it returns.
    #[must_use]
    fn begin(&mut self, deadline: Duration) -> Running {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.start(deadline)
    }

    /// Starts a request-time hook call.
    #[must_use]
    fn begin_hook(&mut self, deadline: Duration) -> Running {
        self.stats.hook_calls.fetch_add(1, Ordering::Relaxed);
        self.start(deadline)
    }

    fn start(&mut self, deadline: Duration) -> Running {
        let ticks = ticks(deadline);
        let running = running(ticks);
        self.store.set_epoch_deadline(ticks);
        let state = self.store.data_mut();
        state.log_lines = 0;
        // Calls an earlier call queued without waiting for them are never made.
        state.calls.clear();
        state.may_wait = false;
        running
    }

    /// The outbound calls the last call queued (`http.send`).
    pub(crate) fn take_calls(&mut self) -> Vec<super::outbound::Call> {
        std::mem::take(&mut self.store.data_mut().calls)
    }

    pub(crate) fn describe(&mut self, deadline: Duration) -> Result<wit::Info, CallError> {
        let _running = self.begin(deadline);
        let r = match &self.filter {
            Bindings::V0_1(f) => f.call_describe(&mut self.store).map(upgrade::info),
            Bindings::V0_2(f) => f.call_describe(&mut self.store),
        };
        r.map_err(|e| self.fail(e, "describe", deadline))
    }

    pub(crate) fn configure(
        &mut self,
        route: &Route,
        settings: &[(String, String)],
        deadline: Duration,
    ) -> Result<Result<wit::Policy, Vec<wit::Diagnostic>>, CallError> {
        let _running = self.begin(deadline);
        // Compile time only: borrowing the pairs costs one small vector.
        let settings: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = match &self.filter {
            // 0.1.0 learns nothing about its route: it was built before routes had a name.
            Bindings::V0_1(f) => f
                .call_configure(&mut self.store, &settings)
                .map(upgrade::configured),
            Bindings::V0_2(f) => {
                let config = wit::Config {
                    route: wit::RouteRef {
                        kind: route.kind,
                        namespace: &route.namespace,
                        name: &route.name,
                    },
                    settings: &settings,
                };
                f.call_configure(&mut self.store, config)
            }
        };
        r.map_err(|e| self.fail(e, "configure", deadline))
    }

    /// Run `on-request-headers` over `headers` (edited in place by the guest).
    pub(crate) fn on_request_headers(
        &mut self,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
        deadline: Duration,
    ) -> Result<wit::Action, CallError> {
        let running = self.begin_hook(deadline);
        self.store.data_mut().may_wait = true;
        let fields = Resource::<FieldsHandle>::new_borrow(FIELDS_REP);
        let r = match &self.filter {
            Bindings::V0_1(f) => {
                // 0.1.0 gets the request line by value, as it was built to.
                let Some(req) = request.as_deref() else {
                    drop(running);
                    return Err(no_request(&self.store, "on-request-headers", deadline));
                };
                let target = req.path().as_str();
                let head = v0_1::wasmgress::plugin::types::RequestHead {
                    method: req.method().as_str(),
                    scheme: req.scheme(),
                    authority: req.authority(),
                    path: target,
                };
                self.store.data_mut().headers = std::mem::take(headers);
                let r = f
                    .call_on_request_headers(&mut self.store, head, fields)
                    .map(upgrade::action);
                *headers = std::mem::take(&mut self.store.data_mut().headers);
                r
            }
            Bindings::V0_2(f) => {
                let handle = Resource::<RequestHandle>::new_borrow(REQUEST_REP);
                lend(&mut self.store, request, headers);
                let r = f.call_on_request_headers(&mut self.store, handle, fields);
                take_back(&mut self.store, request, headers);
                r
            }
        };
        drop(running);
        r.map_err(|e| self.fail(e, "on-request-headers", deadline))
    }

    /// Run `on-response-headers` over `headers` (edited in place by the guest).
    pub(crate) fn on_response_headers(
        &mut self,
        request: &mut Option<Box<HookRequest>>,
        status: u16,
        headers: &mut HeaderMap,
        deadline: Duration,
    ) -> Result<wit::Action, CallError> {
        let running = self.begin_hook(deadline);
        let fields = Resource::<FieldsHandle>::new_borrow(FIELDS_REP);
        let r = match &self.filter {
            Bindings::V0_1(f) => {
                self.store.data_mut().headers = std::mem::take(headers);
                let r = f
                    .call_on_response_headers(&mut self.store, status, fields)
                    .map(upgrade::action);
                *headers = std::mem::take(&mut self.store.data_mut().headers);
                r
            }
            Bindings::V0_2(f) => {
                let handle = Resource::<RequestHandle>::new_borrow(REQUEST_REP);
                lend(&mut self.store, request, headers);
                let r = f.call_on_response_headers(&mut self.store, handle, status, fields);
                take_back(&mut self.store, request, headers);
                r
            }
        };
        drop(running);
        r.map_err(|e| self.fail(e, "on-response-headers", deadline))
    }

    /// Run `on-websocket-message` over one message (0.2.0 and later; 0.1.0 components cannot
    /// ask for the hook).
    pub(crate) fn on_websocket_message(
        &mut self,
        request: &mut Option<Box<HookRequest>>,
        direction: wit::Direction,
        kind: wit::MessageKind,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<wit::MessageAction, CallError> {
        let running = self.begin_hook(deadline);
        let r = match &self.filter {
            Bindings::V0_1(_) => Ok(wit::MessageAction::Forward),
            Bindings::V0_2(f) => {
                let handle = Resource::<RequestHandle>::new_borrow(REQUEST_REP);
                self.store.data_mut().request = request.take();
                let r =
                    f.call_on_websocket_message(&mut self.store, handle, direction, kind, payload);
                *request = self.store.data_mut().request.take();
                r
            }
        };
        drop(running);
        r.map_err(|e| self.fail(e, "on-websocket-message", deadline))
    }
}

impl PluginInstance {
    /// Run `on-http-responses` with the results of the calls the last call waited for
    /// (0.2.0 and later: a 0.1.0 component cannot import `http`, so never waits).
    pub(crate) fn on_http_responses(
        &mut self,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
        results: &[Result<super::outbound::Answer, super::outbound::CallFailure>],
        deadline: Duration,
    ) -> Result<wit::Action, CallError> {
        let running = self.begin_hook(deadline);
        self.store.data_mut().may_wait = true;
        let r = match &self.filter {
            // A 0.1.0 component cannot import `http`, so never waits: never here.
            Bindings::V0_1(_) => Err(wasmtime::Error::msg(
                "a 0.1.0 component was handed outbound answers",
            )),
            Bindings::V0_2(f) => {
                let pairs: Vec<Vec<(&str, &[u8])>> = results
                    .iter()
                    .map(|r| match r {
                        Ok(a) => a
                            .headers
                            .iter()
                            .map(|(n, v)| (n.as_str(), v.as_slice()))
                            .collect(),
                        Err(_) => Vec::new(),
                    })
                    .collect();
                let lifted: Vec<Result<wit::HttpResponse<'_>, wit::HttpError>> = results
                    .iter()
                    .zip(&pairs)
                    .map(|(r, pairs)| match r {
                        Ok(a) => Ok(wit::HttpResponse {
                            status: a.status,
                            headers: pairs,
                            body: &a.body,
                        }),
                        Err(e) => Err(super::bindings::http_error(*e)),
                    })
                    .collect();
                let handle = Resource::<RequestHandle>::new_borrow(REQUEST_REP);
                let fields = Resource::<FieldsHandle>::new_borrow(FIELDS_REP);
                lend(&mut self.store, request, headers);
                let r = f.call_on_http_responses(&mut self.store, handle, fields, &lifted);
                take_back(&mut self.store, request, headers);
                r
            }
        };
        drop(running);
        r.map_err(|e| self.fail(e, "on-http-responses", deadline))
    }

    /// Run `on-request-body` (towards the upstream) or `on-response-body` over one chunk.
    pub(crate) fn on_body(
        &mut self,
        direction: wit::Direction,
        request: &mut Option<Box<HookRequest>>,
        chunk: &[u8],
        end: bool,
        deadline: Duration,
    ) -> Result<wit::BodyAction, CallError> {
        let running = self.begin_hook(deadline);
        let (r, call) = match &self.filter {
            Bindings::V0_1(_) => (Ok(wit::BodyAction::Forward), "on-request-body"),
            Bindings::V0_2(f) => {
                let handle = Resource::<RequestHandle>::new_borrow(REQUEST_REP);
                self.store.data_mut().request = request.take();
                let r = match direction {
                    wit::Direction::ToUpstream => (
                        f.call_on_request_body(&mut self.store, handle, chunk, end),
                        "on-request-body",
                    ),
                    wit::Direction::ToClient => (
                        f.call_on_response_body(&mut self.store, handle, chunk, end),
                        "on-response-body",
                    ),
                };
                *request = self.store.data_mut().request.take();
                r
            }
        };
        drop(running);
        r.map_err(|e| self.fail(e, call, deadline))
    }

    /// Run `on-request-trailers` or `on-response-trailers` (edited in place by the guest).
    pub(crate) fn on_trailers(
        &mut self,
        direction: wit::Direction,
        request: &mut Option<Box<HookRequest>>,
        trailers: &mut HeaderMap,
        deadline: Duration,
    ) -> Result<(), CallError> {
        let running = self.begin_hook(deadline);
        let (r, call) = match &self.filter {
            Bindings::V0_1(_) => (Ok(()), "on-request-trailers"),
            Bindings::V0_2(f) => {
                let handle = Resource::<RequestHandle>::new_borrow(REQUEST_REP);
                let fields = Resource::<FieldsHandle>::new_borrow(FIELDS_REP);
                lend(&mut self.store, request, trailers);
                let r = match direction {
                    wit::Direction::ToUpstream => (
                        f.call_on_request_trailers(&mut self.store, handle, fields),
                        "on-request-trailers",
                    ),
                    wit::Direction::ToClient => (
                        f.call_on_response_trailers(&mut self.store, handle, fields),
                        "on-response-trailers",
                    ),
                };
                take_back(&mut self.store, request, trailers);
                r
            }
        };
        drop(running);
        r.map_err(|e| self.fail(e, call, deadline))
    }
}

/// Lends the request and its headers to the store for one hook call.
fn lend(
    store: &mut Store<StoreState>,
    request: &mut Option<Box<HookRequest>>,
    headers: &mut HeaderMap,
) {
    let state = store.data_mut();
    state.headers = std::mem::take(headers);
    state.request = request.take();
}

/// Takes back what [`lend`] lent, whether the call succeeded or not.
fn take_back(
    store: &mut Store<StoreState>,
    request: &mut Option<Box<HookRequest>>,
    headers: &mut HeaderMap,
) {
    let state = store.data_mut();
    *headers = std::mem::take(&mut state.headers);
    *request = state.request.take();
}

fn no_request(store: &Store<StoreState>, call: &'static str, deadline: Duration) -> CallError {
    CallError {
        plugin: store.data().plugin.to_string(),
        call,
        kind: CallErrorKind::InvalidOutput,
        deadline,
        detail: "no request to hand to the hook".into(),
    }
}

//! Request-time hooks: plugins configured for one Ingress ([`BoundPlugin`]) and the ordered
//! chain the proxy runs ([`HookChain`]).
//!
//! Owns instance reuse and isolation. A `BoundPlugin` keeps a free list of instances that were
//! configured with exactly this Ingress's annotations; an instance is never handed to another
//! Ingress, and one whose call failed (trap, deadline, memory) is dropped, never returned to
//! the list. New instances are created on demand (instantiate + `configure`), so concurrency
//! needs no up-front sizing. Calls are synchronous and bounded by the request deadline (plus,
//! on a cold free list, one instantiation and `configure` under the compile deadline).
//! This module must not interpret policies; it only runs hooks and reports what they decided.

use super::bindings::wit;
use super::engine::RuntimeConfig;
use super::error::{CallError, CallErrorKind};
use super::instance::{HookSet, LoadedPlugin, PluginInstance, RequestHead, Route};
use super::policy::{FixedResponse, fixed_response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::sync::{Arc, Mutex, PoisonError};

/// A plugin configured for one Ingress, with the hooks its policy asked for.
pub struct BoundPlugin {
    plugin: Arc<LoadedPlugin>,
    /// Exactly what `configure` was given, to configure further instances the same way.
    route: Route,
    settings: Vec<(String, String)>,
    hooks: HookSet,
    fail_open: bool,
    config: RuntimeConfig,
    idle: Mutex<Vec<PluginInstance>>,
}

impl std::fmt::Debug for BoundPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundPlugin")
            .field("plugin", &self.plugin.info().name)
            .field("hooks", &self.hooks)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    Continue,
    Respond(FixedResponse),
}

impl BoundPlugin {
    pub(crate) fn new(
        plugin: Arc<LoadedPlugin>,
        route: Route,
        settings: Vec<(String, String)>,
        hooks: HookSet,
        fail_open: bool,
        config: RuntimeConfig,
        configured: PluginInstance,
    ) -> Self {
        BoundPlugin {
            plugin,
            route,
            settings,
            hooks,
            fail_open,
            config,
            idle: Mutex::new(vec![configured]),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.plugin.info().name
    }

    /// The hooks this Ingress's policy asked for.
    pub fn hooks(&self) -> HookSet {
        self.hooks
    }

    /// When true, a failed hook lets the request continue instead of answering 500.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Idle instances currently kept (for tests and metrics).
    pub fn idle_instances(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn checkout(&self) -> Result<PluginInstance, CallError> {
        // A panic while holding the lock cannot leave the Vec inconsistent: keep going.
        if let Some(inst) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(inst);
        }
        let mut inst = self.plugin.instantiate(&self.config)?;
        match inst.configure(&self.route, &self.settings, self.config.compile_deadline)? {
            Ok(_) => Ok(inst),
            // `configure` is meant to be pure; one that now refuses what it accepted before
            // cannot be trusted with this Ingress's requests.
            Err(diags) => Err(CallError {
                plugin: self.name().to_string(),
                call: "configure",
                kind: CallErrorKind::InvalidOutput,
                deadline: self.config.compile_deadline,
                detail: format!(
                    "it refused, on a new instance, the configuration it accepted before: {}",
                    diags
                        .iter()
                        .map(|d| d.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }),
        }
    }

    fn checkin(&self, inst: PluginInstance) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.config.max_idle_instances {
            idle.push(inst);
        }
    }

    fn finish(
        &self,
        inst: PluginInstance,
        call: &'static str,
        result: Result<wit::Action, CallError>,
    ) -> Result<HookAction, CallError> {
        // A failed instance is dropped here (never checked in): its state is unknown.
        let action = result?;
        self.checkin(inst);
        match action {
            wit::Action::Continue => Ok(HookAction::Continue),
            wit::Action::RespondNow(r) => fixed_response(r.status, r.headers, r.body)
                .map(HookAction::Respond)
                .map_err(|detail| CallError {
                    plugin: self.name().to_string(),
                    call,
                    kind: CallErrorKind::InvalidOutput,
                    deadline: self.config.request_deadline,
                    detail,
                }),
        }
    }

    /// Run `on-request-headers`; the guest edits `headers` in place.
    pub fn on_request_headers(
        &self,
        head: &RequestHead<'_>,
        headers: &mut HeaderMap,
    ) -> Result<HookAction, CallError> {
        let mut inst = self.checkout()?;
        let r = inst.on_request_headers(head, headers, self.config.request_deadline);
        self.finish(inst, "on-request-headers", r)
    }

    /// Run `on-response-headers`; the guest edits `headers` in place.
    pub fn on_response_headers(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Result<HookAction, CallError> {
        let mut inst = self.checkout()?;
        let r = inst.on_response_headers(status.as_u16(), headers, self.config.request_deadline);
        self.finish(inst, "on-response-headers", r)
    }
}

/// What the proxy does after running a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Go on (to the upstream, or to the client).
    Continue,
    /// Send this response instead.
    Respond(FixedResponse),
}

/// The hooks of one Ingress, in attach order. Cheap to clone (shared instances).
#[derive(Debug, Clone, Default)]
pub struct HookChain {
    plugins: Vec<Arc<BoundPlugin>>,
}

impl HookChain {
    pub(crate) fn push(&mut self, p: Arc<BoundPlugin>) {
        self.plugins.push(p);
    }

    pub(crate) fn extend(&mut self, other: HookChain) {
        self.plugins.extend(other.plugins);
    }

    /// No hook at all: requests cost zero Wasm calls.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// True when some plugin hooks responses.
    pub fn has_response_hooks(&self) -> bool {
        self.plugins.iter().any(|p| p.hooks().response_headers)
    }

    /// The bound plugins, in order.
    pub fn plugins(&self) -> &[Arc<BoundPlugin>] {
        &self.plugins
    }

    /// Run every request hook in order until one answers. A failing plugin answers 500, or is
    /// skipped if the Ingress marked it fail-open; either way the failure is logged.
    pub fn run_request(&self, head: &RequestHead<'_>, headers: &mut HeaderMap) -> HookOutcome {
        for p in self.plugins.iter().filter(|p| p.hooks().request_headers) {
            match p.on_request_headers(head, headers) {
                Ok(HookAction::Continue) => {}
                Ok(HookAction::Respond(r)) => return HookOutcome::Respond(r),
                Err(e) => {
                    if let Some(outcome) = failed(p, &e) {
                        return outcome;
                    }
                }
            }
        }
        HookOutcome::Continue
    }

    /// Run every response hook in order until one answers (its response replaces the
    /// upstream's). Failures as in [`HookChain::run_request`].
    pub fn run_response(&self, status: StatusCode, headers: &mut HeaderMap) -> HookOutcome {
        for p in self.plugins.iter().filter(|p| p.hooks().response_headers) {
            match p.on_response_headers(status, headers) {
                Ok(HookAction::Continue) => {}
                Ok(HookAction::Respond(r)) => return HookOutcome::Respond(r),
                Err(e) => {
                    if let Some(outcome) = failed(p, &e) {
                        return outcome;
                    }
                }
            }
        }
        HookOutcome::Continue
    }
}

fn failed(p: &BoundPlugin, e: &CallError) -> Option<HookOutcome> {
    if p.fail_open() {
        tracing::warn!(plugin = p.name(), error = %e, "plugin failed; continuing (fail-open)");
        None
    } else {
        tracing::error!(plugin = p.name(), error = %e, "plugin failed; answering 500");
        Some(HookOutcome::Respond(plugin_failure_response(&e.plugin)))
    }
}

/// The 500 sent when a fail-closed plugin fails: names the plugin, says nothing else.
pub fn plugin_failure_response(plugin: &str) -> FixedResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    FixedResponse {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers,
        body: Bytes::from(format!("plugin {plugin} failed\n")),
    }
}

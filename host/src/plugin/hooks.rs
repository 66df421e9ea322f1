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
use super::capability::Granted;
use super::engine::RuntimeConfig;
use super::error::{CallError, CallErrorKind};
use super::instance::{HookSet, LoadedPlugin, PluginInstance, Route};
use super::outbound;
use super::policy::{FixedResponse, fixed_response};
use super::request::{HookRequest, RouteInfo};
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
    /// What the route granted; every instance gets the same.
    granted: Arc<Granted>,
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

/// How a plugin is attached to a route: what it was configured with and what it may do.
pub(crate) struct Attachment {
    pub route: Route,
    pub settings: Vec<(String, String)>,
    pub hooks: HookSet,
    pub fail_open: bool,
    pub granted: Arc<Granted>,
}

/// What a hook decided.
#[derive(Debug)]
pub enum HookAction {
    Continue,
    Respond(FixedResponse),
    /// Wait for these outbound calls, then ask the plugin again (`on-http-responses`). The
    /// instance that asked went back to the free list: a wait holds no instance (a slow
    /// service cannot exhaust the process-wide pool), and the continuation runs on any
    /// instance configured for the route (what it needs travels in the request's values).
    Wait(Vec<outbound::Call>),
}

impl BoundPlugin {
    pub(crate) fn new(
        plugin: Arc<LoadedPlugin>,
        attached: Attachment,
        config: RuntimeConfig,
        configured: PluginInstance,
    ) -> Self {
        let Attachment {
            route,
            settings,
            hooks,
            fail_open,
            granted,
        } = attached;
        BoundPlugin {
            plugin,
            route,
            settings,
            hooks,
            fail_open,
            config,
            granted,
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
        let mut inst = self.plugin.instantiate(&self.config, &self.granted)?;
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
        mut inst: PluginInstance,
        call: &'static str,
        result: Result<wit::Action, CallError>,
    ) -> Result<HookAction, CallError> {
        // A failed instance is dropped here (never checked in): its state is unknown.
        let action = result?;
        let calls = inst.take_calls();
        let invalid = |detail: String| CallError {
            plugin: self.name().to_string(),
            call,
            kind: CallErrorKind::InvalidOutput,
            deadline: self.config.request_deadline,
            detail,
        };
        match action {
            // Only request hooks and `on-http-responses` can queue calls (`http.send`
            // refuses elsewhere), so a response hook's wait lands here too.
            wit::Action::Wait if calls.is_empty() => Err(invalid(
                "it returned `wait` with no call queued (only request hooks can queue calls)"
                    .into(),
            )),
            wit::Action::Wait => {
                self.checkin(inst);
                Ok(HookAction::Wait(calls))
            }
            wit::Action::Continue => {
                self.checkin(inst);
                Ok(HookAction::Continue)
            }
            wit::Action::RespondNow(r) => {
                self.checkin(inst);
                fixed_response(r.status, r.headers, r.body)
                    .map(HookAction::Respond)
                    .map_err(invalid)
            }
        }
    }

    /// Run `on-http-responses` with the results of the calls a hook waited for.
    pub fn on_http_responses(
        &self,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
        results: &[Result<outbound::Answer, outbound::CallFailure>],
    ) -> Result<HookAction, CallError> {
        let mut inst = self.checkout()?;
        // The answers (up to 4 MiB) must at least be read: as for messages and body chunks.
        let bytes: usize = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |a| a.body.len()))
            .sum();
        let deadline = message_deadline(self.config.request_deadline, bytes);
        let r = inst.on_http_responses(request, headers, results, deadline);
        self.finish(inst, "on-http-responses", r)
    }

    /// Run `on-request-body` (`ToUpstream`) or `on-response-body` (`ToClient`) over a chunk.
    pub fn on_body(
        &self,
        direction: Direction,
        request: &mut Option<Box<HookRequest>>,
        chunk: &[u8],
        end: bool,
    ) -> Result<wit::BodyAction, CallError> {
        let mut inst = self.checkout()?;
        let deadline = message_deadline(self.config.request_deadline, chunk.len());
        let r = inst.on_body(direction.wit(), request, chunk, end, deadline);
        // A failed instance is dropped here (never checked in): its state is unknown.
        let action = r?;
        self.checkin(inst);
        Ok(action)
    }

    /// Run `on-request-trailers` or `on-response-trailers` over `trailers`.
    pub fn on_trailers(
        &self,
        direction: Direction,
        request: &mut Option<Box<HookRequest>>,
        trailers: &mut HeaderMap,
    ) -> Result<(), CallError> {
        let mut inst = self.checkout()?;
        let deadline = self.config.request_deadline;
        inst.on_trailers(direction.wit(), request, trailers, deadline)?;
        self.checkin(inst);
        Ok(())
    }

    /// Run `on-request-headers`; the guest edits `headers` and the request in place.
    pub fn on_request_headers(
        &self,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
    ) -> Result<HookAction, CallError> {
        let mut inst = self.checkout()?;
        let r = inst.on_request_headers(request, headers, self.config.request_deadline);
        self.finish(inst, "on-request-headers", r)
    }

    /// Run `on-websocket-message` over one message.
    pub fn on_websocket_message(
        &self,
        request: &mut Option<Box<HookRequest>>,
        direction: Direction,
        message: &Message,
    ) -> Result<wit::MessageAction, CallError> {
        let mut inst = self.checkout()?;
        let direction = direction.wit();
        let kind = if message.text {
            wit::MessageKind::Text
        } else {
            wit::MessageKind::Binary
        };
        let deadline = message_deadline(self.config.request_deadline, message.payload.len());
        let r = inst.on_websocket_message(request, direction, kind, &message.payload, deadline);
        // A failed instance is dropped here (never checked in): its state is unknown.
        let action = r?;
        self.checkin(inst);
        Ok(action)
    }

    /// Run `on-response-headers`; the guest edits `headers` in place.
    pub fn on_response_headers(
        &self,
        request: &mut Option<Box<HookRequest>>,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Result<HookAction, CallError> {
        let mut inst = self.checkout()?;
        let deadline = self.config.request_deadline;
        let r = inst.on_response_headers(request, status.as_u16(), headers, deadline);
        self.finish(inst, "on-response-headers", r)
    }
}

/// Which way a WebSocket message or a body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    fn wit(self) -> wit::Direction {
        match self {
            Direction::ToUpstream => wit::Direction::ToUpstream,
            Direction::ToClient => wit::Direction::ToClient,
        }
    }
}

/// A WebSocket data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Text (UTF-8) or binary.
    pub text: bool,
    pub payload: Bytes,
}

/// What becomes of a WebSocket message after the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    Forward(Message),
    Drop,
    /// Close both sides with this code and reason.
    Close(u16, String),
}

/// The close code when a message hook fails fail-closed (1011: internal error).
pub const HOOK_FAILED_CLOSE: u16 = 1011;

/// Largest WebSocket message, received or made by a plugin's `replace`.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What the proxy does after running a chain.
#[derive(Debug)]
pub enum HookOutcome {
    /// Go on (to the upstream, or to the client).
    Continue,
    /// Send this response instead.
    Respond(FixedResponse),
    /// A request hook waits for outbound calls: hand this to [`HookChain::resume`].
    Wait(Box<Suspended>),
}

impl PartialEq for HookOutcome {
    /// Waits are never equal: each holds its own instance and calls.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HookOutcome::Continue, HookOutcome::Continue) => true,
            (HookOutcome::Respond(a), HookOutcome::Respond(b)) => a == b,
            _ => false,
        }
    }
}

/// A request chain stopped at the plugin at `index`, which waits.
#[derive(Debug)]
pub struct Suspended {
    index: usize,
    calls: Vec<outbound::Call>,
    /// Waits so far by this plugin for this request.
    round: u8,
}

/// What becomes of a body chunk after the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Pass these bytes on (possibly none).
    Forward(Bytes),
    /// Cut the body off.
    Abort,
}

/// Largest chunk a body hook is handed; bigger frames are split.
pub const MAX_BODY_CHUNK: usize = 64 << 10;

/// The hooks of one route, in attach order, and what they are told about the route. Cheap to
/// clone (shared instances).
#[derive(Debug, Clone, Default)]
pub struct HookChain {
    plugins: Vec<Arc<BoundPlugin>>,
    /// Every hook some plugin of the chain uses, kept as plugins are added so the per-request
    /// checks do not walk the chain.
    hooks: HookSet,
    route: Option<Arc<RouteInfo>>,
}

impl HookChain {
    pub(crate) fn push(&mut self, p: Arc<BoundPlugin>) {
        self.hooks = self.hooks.union(p.hooks());
        self.plugins.push(p);
    }

    pub(crate) fn extend(&mut self, other: HookChain) {
        for p in other.plugins {
            self.push(p);
        }
    }

    /// Tells the hooks which route they run for (`request.route()`).
    pub fn set_route(&mut self, route: RouteInfo) {
        self.route = Some(Arc::new(route));
    }

    /// Every backend some plugin of the chain may choose (`SERVICE:PORT`), each once.
    pub fn backends(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for p in &self.plugins {
            for b in p.granted.backends() {
                if !all.contains(b) {
                    all.push(b.clone());
                }
            }
        }
        all
    }

    /// The route the hooks run for.
    pub fn route(&self) -> Option<&Arc<RouteInfo>> {
        self.route.as_ref()
    }

    /// No hook at all: requests cost zero Wasm calls.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// True when some plugin hooks requests.
    pub fn has_request_hooks(&self) -> bool {
        self.hooks.request_headers
    }

    /// True when some plugin hooks responses.
    pub fn has_response_hooks(&self) -> bool {
        self.hooks.response_headers
    }

    /// True when some plugin hooks WebSocket messages (the tunnel then parses frames).
    pub fn has_message_hooks(&self) -> bool {
        self.hooks.websocket_message
    }

    /// Run the message hooks over one message: in attach order towards the upstream, reverse
    /// attach order towards the client. A replacement is what the next hook sees; a drop or a
    /// close ends the chain. A failing fail-closed plugin closes the tunnel (1011); a
    /// fail-open one is skipped.
    pub fn run_message(
        &self,
        request: &mut Option<Box<HookRequest>>,
        direction: Direction,
        mut message: Message,
    ) -> MessageOutcome {
        let n = self.plugins.len();
        for k in 0..n {
            let i = match direction {
                Direction::ToUpstream => k,
                Direction::ToClient => n - 1 - k,
            };
            let p = &self.plugins[i];
            if !p.hooks().websocket_message {
                continue;
            }
            if let Some(r) = request.as_deref_mut() {
                r.current = slot(i);
                r.open = false;
            }
            match p.on_websocket_message(request, direction, &message) {
                Ok(wit::MessageAction::Forward) => {}
                Ok(wit::MessageAction::Replace(payload)) => {
                    if payload.len() > MAX_MESSAGE_BYTES {
                        tracing::warn!(
                            plugin = p.name(),
                            "plugin replaced a message with one over 1 MiB; closing"
                        );
                        return MessageOutcome::Close(1009, "message too big".into());
                    }
                    if message.text && std::str::from_utf8(&payload).is_err() {
                        tracing::warn!(
                            plugin = p.name(),
                            "plugin replaced a text message with invalid UTF-8; closing"
                        );
                        return MessageOutcome::Close(HOOK_FAILED_CLOSE, String::new());
                    }
                    message.payload = Bytes::from(payload);
                }
                Ok(wit::MessageAction::Drop) => return MessageOutcome::Drop,
                Ok(wit::MessageAction::Close((code, reason))) => return close(code, reason),
                Err(e) => {
                    if p.fail_open() {
                        tracing::warn!(plugin = p.name(), error = %e, "plugin failed; forwarding the message (fail-open)");
                    } else {
                        tracing::error!(plugin = p.name(), error = %e, "plugin failed; closing the WebSocket (1011)");
                        return MessageOutcome::Close(HOOK_FAILED_CLOSE, String::new());
                    }
                }
            }
        }
        MessageOutcome::Forward(message)
    }

    /// The bound plugins, in order.
    pub fn plugins(&self) -> &[Arc<BoundPlugin>] {
        &self.plugins
    }

    /// Run every request hook in attach order until one answers or waits. A failing plugin
    /// answers 500, or is skipped if the route marked it fail-open; either way the failure is
    /// logged. Changes to the method, path and query are accepted only during these calls
    /// (and the `on-http-responses` calls of [`HookChain::resume`]).
    pub fn run_request(
        &self,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
    ) -> HookOutcome {
        self.run_request_from(0, request, headers)
    }

    fn run_request_from(
        &self,
        start: usize,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
    ) -> HookOutcome {
        let outcome = self.run_request_hooks(start, request, headers);
        if let Some(r) = request.as_deref_mut() {
            r.open = false;
        }
        outcome
    }

    fn run_request_hooks(
        &self,
        start: usize,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
    ) -> HookOutcome {
        for (i, p) in self.plugins.iter().enumerate().skip(start) {
            if !p.hooks().request_headers {
                continue;
            }
            open(request, i);
            match p.on_request_headers(request, headers) {
                Ok(HookAction::Continue) => {}
                Ok(HookAction::Respond(r)) => return HookOutcome::Respond(r),
                Ok(HookAction::Wait(calls)) => {
                    return HookOutcome::Wait(Box::new(Suspended {
                        index: i,
                        calls,
                        round: 1,
                    }));
                }
                Err(e) => {
                    if let Some(outcome) = failed(p, &e) {
                        return outcome;
                    }
                }
            }
        }
        HookOutcome::Continue
    }

    /// Makes the calls a suspended chain waits for (the request's task awaits them; no
    /// worker is held), hands their results to the plugin that waited, and runs the rest of
    /// the chain, waiting again as often as plugins ask (each at most
    /// [`outbound::MAX_ROUNDS`] times per request). `Some` is the answer to send instead of
    /// going upstream.
    pub async fn resume(
        &self,
        mut suspended: Box<Suspended>,
        request: &mut Option<Box<HookRequest>>,
        headers: &mut HeaderMap,
    ) -> Option<FixedResponse> {
        loop {
            let Suspended {
                index,
                calls,
                round,
            } = *suspended;
            let results = outbound::run(calls).await;
            let p = &self.plugins[index];
            open(request, index);
            let decided = p.on_http_responses(request, headers, &results);
            if let Some(r) = request.as_deref_mut() {
                r.open = false;
            }
            let failure = match decided {
                Ok(HookAction::Continue) => None,
                Ok(HookAction::Respond(r)) => return Some(r),
                Ok(HookAction::Wait(calls)) if round < outbound::MAX_ROUNDS => {
                    *suspended = Suspended {
                        index,
                        calls,
                        round: round + 1,
                    };
                    continue;
                }
                Ok(HookAction::Wait(_)) => Some(CallError {
                    plugin: p.name().to_string(),
                    call: "on-http-responses",
                    kind: CallErrorKind::InvalidOutput,
                    deadline: p.config.request_deadline,
                    detail: format!("it waited more than {} times", outbound::MAX_ROUNDS),
                }),
                Err(e) => Some(e),
            };
            if let Some(HookOutcome::Respond(r)) = failure.and_then(|e| failed(p, &e)) {
                return Some(r);
            }
            match self.run_request_from(index + 1, request, headers) {
                HookOutcome::Continue => return None,
                HookOutcome::Respond(r) => return Some(r),
                HookOutcome::Wait(more) => suspended = more,
            }
        }
    }

    /// True when some plugin hooks the request body or its trailers.
    pub fn has_request_body_hooks(&self) -> bool {
        self.hooks.request_body || self.hooks.request_trailers
    }

    /// True when some plugin hooks upstream response bodies or their trailers.
    pub fn has_response_body_hooks(&self) -> bool {
        self.hooks.response_body || self.hooks.response_trailers
    }

    /// The body hooks of `direction`'s plugins, in its order (attach order towards the
    /// upstream, reverse towards the client).
    fn body_order(&self, direction: Direction) -> impl Iterator<Item = (usize, &Arc<BoundPlugin>)> {
        let n = self.plugins.len();
        (0..n).map(move |k| {
            let i = match direction {
                Direction::ToUpstream => k,
                Direction::ToClient => n - 1 - k,
            };
            (i, &self.plugins[i])
        })
    }

    /// Run the body hooks of `direction` over one chunk (at most [`MAX_BODY_CHUNK`]): a
    /// replacement is what the next hook sees; an abort, or a fail-closed failure, cuts the
    /// body off; a fail-open failure passes the chunk on as it was.
    pub fn run_body(
        &self,
        direction: Direction,
        request: &mut Option<Box<HookRequest>>,
        mut chunk: Bytes,
        end: bool,
    ) -> BodyOutcome {
        for (i, p) in self.body_order(direction) {
            let hooked = match direction {
                Direction::ToUpstream => p.hooks().request_body,
                Direction::ToClient => p.hooks().response_body,
            };
            if !hooked {
                continue;
            }
            closed(request, i);
            match p.on_body(direction, request, &chunk, end) {
                Ok(wit::BodyAction::Forward) => {}
                Ok(wit::BodyAction::Replace(bytes)) if bytes.len() > MAX_MESSAGE_BYTES => {
                    tracing::warn!(
                        plugin = p.name(),
                        "plugin replaced a body chunk with over 1 MiB; aborting the body"
                    );
                    return BodyOutcome::Abort;
                }
                Ok(wit::BodyAction::Replace(bytes)) => chunk = Bytes::from(bytes),
                Ok(wit::BodyAction::Abort) => return BodyOutcome::Abort,
                Err(e) if p.fail_open() => {
                    tracing::warn!(plugin = p.name(), error = %e, "plugin failed; passing the body chunk on (fail-open)");
                }
                Err(e) => {
                    tracing::error!(plugin = p.name(), error = %e, "plugin failed; aborting the body");
                    return BodyOutcome::Abort;
                }
            }
        }
        BodyOutcome::Forward(chunk)
    }

    /// Run the trailers hooks of `direction` over `trailers`, edited in place; `false` when a
    /// fail-closed plugin failed (the body is then cut off).
    pub fn run_trailers(
        &self,
        direction: Direction,
        request: &mut Option<Box<HookRequest>>,
        trailers: &mut HeaderMap,
    ) -> bool {
        for (i, p) in self.body_order(direction) {
            let hooked = match direction {
                Direction::ToUpstream => p.hooks().request_trailers,
                Direction::ToClient => p.hooks().response_trailers,
            };
            if !hooked {
                continue;
            }
            closed(request, i);
            if let Err(e) = p.on_trailers(direction, request, trailers) {
                if !p.fail_open() {
                    tracing::error!(plugin = p.name(), error = %e, "plugin failed; aborting the body");
                    return false;
                }
                tracing::warn!(plugin = p.name(), error = %e, "plugin failed; passing the trailers on (fail-open)");
            }
        }
        true
    }

    /// Run every response hook in reverse attach order. A hook that answers replaces the
    /// response in hand (`status`, `headers` and the returned body), and the hooks after it
    /// see the replacement. Failures as in [`HookChain::run_request`]: a fail-closed failure
    /// replaces the response with the 500 and the remaining hooks still see it.
    pub fn run_response(
        &self,
        request: &mut Option<Box<HookRequest>>,
        status: &mut StatusCode,
        headers: &mut HeaderMap,
    ) -> Option<FixedResponse> {
        let mut replaced: Option<FixedResponse> = None;
        for (i, p) in self.plugins.iter().enumerate().rev() {
            if !p.hooks().response_headers {
                continue;
            }
            if let Some(r) = request.as_deref_mut() {
                r.current = slot(i);
                r.open = false;
            }
            let mut answer = match p.on_response_headers(request, *status, headers) {
                // `finish` turns a response hook's wait into an error: never here.
                Ok(HookAction::Continue | HookAction::Wait(_)) => continue,
                Ok(HookAction::Respond(r)) => r,
                Err(e) => match failed(p, &e) {
                    Some(HookOutcome::Respond(r)) => r,
                    _ => continue,
                },
            };
            *status = answer.status;
            *headers = std::mem::take(&mut answer.headers);
            replaced = Some(answer);
        }
        replaced.map(|mut r| {
            // The last replacement's head, as later hooks edited it.
            r.status = *status;
            r.headers = std::mem::take(headers);
            r
        })
    }
}

/// A plugin's close, with the code and reason made valid for a close frame: a code an
/// endpoint may send (1000 to 1003, 1007 to 1011, RFC 6455 section 7.4.1) or an application
/// code (3000 to 4999), otherwise 1008 (policy violation); the reason cut to 123 bytes on a
/// character boundary.
fn close(code: u16, mut reason: String) -> MessageOutcome {
    let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
    let code = if sendable { code } else { 1008 };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    MessageOutcome::Close(code, reason)
}

/// A message hook's deadline: the request deadline plus 1 ms per 64 KiB of payload, since a
/// plugin must at least read what it is handed (21 ms for a 1 MiB message by default).
fn message_deadline(base: std::time::Duration, len: usize) -> std::time::Duration {
    base + std::time::Duration::from_micros(u64::try_from(len / 64).unwrap_or(u64::MAX))
}

/// The request is the plugin at `i`'s, and changes are accepted (request hooks).
fn open(request: &mut Option<Box<HookRequest>>, i: usize) {
    if let Some(r) = request.as_deref_mut() {
        r.current = slot(i);
        r.open = true;
    }
}

/// The request is the plugin at `i`'s; changes are refused (every later hook).
fn closed(request: &mut Option<Box<HookRequest>>, i: usize) {
    if let Some(r) = request.as_deref_mut() {
        r.current = slot(i);
        r.open = false;
    }
}

/// A plugin's place in its chain, as the request's values are keyed.
fn slot(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
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

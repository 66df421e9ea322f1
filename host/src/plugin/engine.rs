//! The process-wide wasmtime [`Engine`], its epoch ticker, and what every [`Store`] carries.
//!
//! Owns the engine configuration (pooling allocator, epoch interruption, no WASI) and the one
//! ticker thread that advances the epoch for every store in the process: a timer per call
//! would cost orders of magnitude more than the calls. The ticker parks when no guest call has
//! run for a while; calls hold a [`Running`] guard, which wakes it. Deadlines are expressed in ticks of
//! [`EPOCH_TICK`]. This module must not know about plugins, policies or registries.

use super::capability::Granted;
use super::error::LoadError;
use super::metrics::PluginMetrics;
use super::request::HookRequest;
use http::HeaderMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter,
    StoreLimits, StoreLimitsBuilder,
};

/// How often the epoch advances; the granularity of every deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Component instances alive at once, process-wide (pooled instances for hooks plus the
/// short-lived ones used by `configure`). Each costs virtual address space, not memory.
const POOL_COMPONENT_INSTANCES: u32 = 1000;

/// Hard ceiling for any one linear memory; [`RuntimeConfig::memory_limit`] is the
/// per-store cap actually enforced and must stay below this.
pub const MAX_MEMORY_LIMIT: usize = 256 << 20;

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Linear memory cap per instance (default 16 MiB; at most [`MAX_MEMORY_LIMIT`]).
    pub memory_limit: usize,
    /// Deadline of one request-time hook call (default 5 ms).
    pub request_deadline: Duration,
    /// Deadline of one compile-time call: `describe`, `configure` (default 100 ms).
    pub compile_deadline: Duration,
    /// Idle instances kept per (plugin, Ingress) for the hooks (default 16); more are created
    /// under load and dropped when returned to a full free list.
    pub max_idle_instances: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            memory_limit: 16 << 20,
            request_deadline: Duration::from_millis(5),
            compile_deadline: Duration::from_millis(100),
            max_idle_instances: 16,
        }
    }
}

/// Deadline in epoch ticks, rounded up, at least one: a call gets at least its deadline and
/// at most one tick more.
pub(crate) fn ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let n = deadline.as_nanos().div_ceil(tick);
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// The shared engine; the first call creates it and starts the ticker thread.
pub fn engine() -> Result<&'static Engine, LoadError> {
    ENGINE
        .get_or_init(|| {
            let engine = create().map_err(|e| format!("{e:#}"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("wasmgress-epoch".into())
                .spawn(move || tick(&ticker))
                .map_err(|e| format!("cannot start the epoch ticker thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(|e| LoadError::new("the plugin engine", e.clone()))
}

/// Guest calls in progress whose deadline is not well inside the idle window (instantiation,
/// `configure`, hooks under a long `--plugin-hook-deadline-ms`), process-wide.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Set by every call, cleared by the ticker at each tick: calls happened since the last one.
static RECENT: AtomicBool = AtomicBool::new(false);
/// The ticker is parked (or about to park) and must be woken by the next call.
static PARKED: AtomicBool = AtomicBool::new(false);
/// The ticker thread, for waking it.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();
/// Ticks in a row without any call before the ticker parks. Under steady hook traffic it never
/// does, so calls do not pay for waking it; after a quiet spell the first call does, once.
const IDLE_TICKS_BEFORE_PARKING: u32 = 100;

/// Marks a guest call in progress while alive: the epoch keeps advancing (deadlines keep
/// working) as long as one exists. Every call into a guest must hold one.
///
/// Two kinds: a call whose deadline is well inside the ticker's idle window (every hook call
/// at the default deadlines) only marks [`RECENT`], which keeps the ticker awake for the whole
/// window, longer than the call may run; a longer one is also counted in [`ACTIVE`], which
/// keeps the ticker awake however long it runs. Hook calls thus touch no shared counter.
pub(crate) struct Running {
    counted: bool,
}

/// Starts a [`Running`] guard for a call of `deadline_ticks`, waking the ticker if it is
/// parked.
pub(crate) fn running(deadline_ticks: u64) -> Running {
    let counted = deadline_ticks >= u64::from(IDLE_TICKS_BEFORE_PARKING / 2);
    if counted {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
    }
    // SeqCst pairs with the ticker's store of PARKED and its loads of RECENT and ACTIVE:
    // either the ticker sees this call (RECENT, or ACTIVE) and stays awake, or this call sees
    // PARKED and wakes it. Load first: a store on every call would bounce the cache line
    // between cores; RECENT already set means the ticker has not parked since.
    if !RECENT.load(Ordering::SeqCst) {
        RECENT.store(true, Ordering::SeqCst);
    }
    if PARKED.load(Ordering::SeqCst)
        && PARKED.swap(false, Ordering::SeqCst)
        && let Some(t) = TICKER.get()
    {
        t.unpark();
    }
    Running { counted }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.counted {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The ticker thread: advances the epoch every [`EPOCH_TICK`] while guest calls run or ran
/// recently, and parks when there were none for a while, so a proxy whose routes call no
/// plugin has no thread waking up a thousand times a second.
fn tick(engine: &Engine) {
    TICKER.get_or_init(std::thread::current);
    let mut idle = 0;
    loop {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        if ACTIVE.load(Ordering::SeqCst) > 0 || RECENT.swap(false, Ordering::SeqCst) {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS_BEFORE_PARKING {
            continue;
        }
        PARKED.store(true, Ordering::SeqCst);
        // A call that started before PARKED was visible did not wake us, but set RECENT (or
        // is counted in ACTIVE): keep ticking for it. `park` may also return spuriously,
        // hence the loop.
        while PARKED.load(Ordering::SeqCst)
            && ACTIVE.load(Ordering::SeqCst) == 0
            && !RECENT.load(Ordering::SeqCst)
        {
            std::thread::park();
        }
        PARKED.store(false, Ordering::SeqCst);
        idle = 0;
    }
}

fn create() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_COMPONENT_INSTANCES)
        // A wit-component plugin has its main module plus a few adapter shims.
        .total_core_instances(POOL_COMPONENT_INSTANCES * 4)
        .total_memories(POOL_COMPONENT_INSTANCES)
        .total_tables(POOL_COMPONENT_INSTANCES * 2)
        .max_memory_size(MAX_MEMORY_LIMIT);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Per-store memory limiter: [`StoreLimits`] plus a note of whether it refused growth, so a
/// memory failure can be told apart from other traps.
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub(crate) exceeded: bool,
}

impl Limiter {
    pub(crate) fn new(memory_limit: usize) -> Self {
        Limiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                // Trap at once instead of returning -1: a plugin that ignores allocation
                // failure would otherwise spin until its deadline.
                .trap_on_grow_failure(true)
                .build(),
            exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.exceeded = true;
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

/// What each plugin [`wasmtime::Store`] holds.
pub(crate) struct StoreState {
    /// The header map of the hook call in progress (moved in for the call, then back out);
    /// empty outside hook calls.
    pub(crate) headers: HeaderMap,
    /// The request of the hook call in progress (lent like `headers`); `None` outside them.
    pub(crate) request: Option<Box<HookRequest>>,
    /// What the instance's route granted (fixed for the instance's life: it serves one route).
    pub(crate) granted: Arc<Granted>,
    /// The plugin's declared metrics.
    pub(crate) metrics: Arc<PluginMetrics>,
    /// Plugin name, for log lines.
    pub(crate) plugin: Arc<str>,
    /// Log lines emitted during the current call.
    pub(crate) log_lines: u32,
    pub(crate) limiter: Limiter,
    /// Outbound calls queued by the current call (`http.send`), made if it returns `wait`.
    pub(crate) calls: Vec<super::outbound::Call>,
    /// The current call may wait (`on-request-headers`, `on-http-responses`): elsewhere
    /// `http.send` is refused at once instead of queueing a call that is never made.
    pub(crate) may_wait: bool,
}

impl StoreState {
    pub(crate) fn new(
        plugin: Arc<str>,
        memory_limit: usize,
        granted: Arc<Granted>,
        metrics: Arc<PluginMetrics>,
    ) -> Self {
        StoreState {
            headers: HeaderMap::new(),
            request: None,
            granted,
            metrics,
            plugin,
            log_lines: 0,
            limiter: Limiter::new(memory_limit),
            calls: Vec::new(),
            may_wait: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::from_millis(5)), 5);
        assert_eq!(ticks(Duration::from_micros(4500)), 5);
        assert_eq!(ticks(Duration::ZERO), 1);
    }
}

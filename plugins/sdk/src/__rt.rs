//! Glue between the generated `Guest` trait and [`Plugin`](crate::Plugin). Used by
//! [`export_plugin!`](crate::export_plugin); not a public API.
//!
//! On wasm32 it also supplies what a `no_std` component needs: the global allocator (dlmalloc,
//! growing linear memory, which the host caps) and a panic handler that logs the message and
//! traps, so the host discards the instance.

pub use alloc::format;
pub use alloc::string::String;
pub use alloc::vec::Vec;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use crate::bindings::wasmgress::plugin::types::Request as RequestHandle;
    use crate::log;
    use crate::{
        Action, BodyAction, Config, Diagnostic, Direction, Fields, Headers, HttpError,
        HttpResponse, Info, Level, MessageAction, MessageKind, Plugin, Policy, Request, Settings,
    };
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::any::Any;
    use core::cell::UnsafeCell;

    // `memcpy`, `memcmp`, `memset`... come from wasi-libc on wasi targets, even for `no_std`
    // code (compiler-builtins leaves them to libc there). Linking libc with `--gc-sections`
    // only pulls in those pure functions: no WASI import is referenced by them.
    #[link(name = "c")]
    unsafe extern "C" {}

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// The canonical ABI's allocator export, through which the host writes arguments (strings,
    /// lists) into the instance. On `wasm32-wasip2` wit-bindgen leaves it to std, which a
    /// `no_std` plugin does not link, so the SDK defines it over the same global allocator the
    /// Rust code frees with.
    ///
    /// # Safety
    /// Called by the host per the canonical ABI: `old_ptr`/`old_len`/`align` describe a block
    /// previously returned here (or `old_len == 0`), `align` is a power of two.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        use alloc::alloc::{Layout, alloc, handle_alloc_error, realloc};
        if new_len == 0 {
            // A zero-sized block: any well-aligned non-null pointer will do.
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
            handle_alloc_error(layout);
        }
        ptr
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        use core::sync::atomic::{AtomicBool, Ordering};
        // A panic while formatting the message (allocation failure) must not recurse.
        static PANICKING: AtomicBool = AtomicBool::new(false);
        if !PANICKING.swap(true, Ordering::Relaxed) {
            log(Level::Error, &alloc::format!("plugin panicked: {info}"));
        }
        core::arch::wasm32::unreachable()
    }

    /// The configuration `configure` produced, for the hooks of this instance.
    struct ConfigSlot(UnsafeCell<Option<Box<dyn Any>>>);

    // SAFETY: a component instance runs on one thread at a time (the filter world has no
    // threads) and the host never re-enters an export while another one runs, so there is
    // never concurrent access to the slot.
    unsafe impl Sync for ConfigSlot {}

    static CONFIG: ConfigSlot = ConfigSlot(UnsafeCell::new(None));

    fn config<P: Plugin>() -> Option<&'static P::Config> {
        // SAFETY: see `ConfigSlot`; the slot is only written by `configure`, which cannot run
        // while a hook holds this reference.
        let slot = unsafe { &*CONFIG.0.get() };
        slot.as_ref().and_then(|b| b.downcast_ref::<P::Config>())
    }

    pub fn describe<P: Plugin>() -> Info {
        P::info()
    }

    pub fn configure<P: Plugin>(config: Config) -> Result<Policy, Vec<Diagnostic>> {
        let settings = Settings::from_config(config);
        let (policy, config) = P::configure(&settings)?;
        // SAFETY: see `ConfigSlot`; no hook runs during `configure`.
        unsafe { *CONFIG.0.get() = Some(Box::new(config)) };
        Ok(policy)
    }

    pub fn on_request_headers<P: Plugin>(request: &RequestHandle, fields: &Fields) -> Action {
        match config::<P>() {
            Some(config) => {
                P::on_request_headers(config, &Request::new(request), &Headers::new(fields))
            }
            None => not_configured(),
        }
    }

    pub fn on_response_headers<P: Plugin>(
        request: &RequestHandle,
        status: u16,
        fields: &Fields,
    ) -> Action {
        match config::<P>() {
            Some(config) => P::on_response_headers(
                config,
                &Request::new(request),
                status,
                &Headers::new(fields),
            ),
            None => not_configured(),
        }
    }

    pub fn on_websocket_message<P: Plugin>(
        request: &RequestHandle,
        direction: Direction,
        kind: MessageKind,
        payload: Vec<u8>,
    ) -> MessageAction {
        match config::<P>() {
            Some(config) => {
                P::on_websocket_message(config, &Request::new(request), direction, kind, payload)
            }
            None => {
                log_not_configured();
                MessageAction::Close((1011, "plugin not configured".into()))
            }
        }
    }

    pub fn on_http_responses<P: Plugin>(
        request: &RequestHandle,
        fields: &Fields,
        responses: Vec<Result<HttpResponse, HttpError>>,
    ) -> Action {
        match config::<P>() {
            Some(config) => P::on_http_responses(
                config,
                &Request::new(request),
                &Headers::new(fields),
                responses,
            ),
            None => not_configured(),
        }
    }

    pub fn on_request_body<P: Plugin>(
        request: &RequestHandle,
        chunk: Vec<u8>,
        end: bool,
    ) -> BodyAction {
        match config::<P>() {
            Some(config) => P::on_request_body(config, &Request::new(request), chunk, end),
            None => {
                log_not_configured();
                BodyAction::Abort
            }
        }
    }

    pub fn on_response_body<P: Plugin>(
        request: &RequestHandle,
        chunk: Vec<u8>,
        end: bool,
    ) -> BodyAction {
        match config::<P>() {
            Some(config) => P::on_response_body(config, &Request::new(request), chunk, end),
            None => {
                log_not_configured();
                BodyAction::Abort
            }
        }
    }

    pub fn on_request_trailers<P: Plugin>(request: &RequestHandle, fields: &Fields) {
        match config::<P>() {
            Some(config) => {
                P::on_request_trailers(config, &Request::new(request), &Headers::new(fields))
            }
            None => log_not_configured(),
        }
    }

    pub fn on_response_trailers<P: Plugin>(request: &RequestHandle, fields: &Fields) {
        match config::<P>() {
            Some(config) => {
                P::on_response_trailers(config, &Request::new(request), &Headers::new(fields))
            }
            None => log_not_configured(),
        }
    }

    // The host always configures an instance before its hooks run; failing closed (a 500, an
    // aborted body, a closed tunnel) is the safe answer if that contract is ever broken.
    // Trailer hooks have no answer to give: they only log.
    fn log_not_configured() {
        log(
            Level::Error,
            "hook called on an instance that was not configured",
        );
    }

    fn not_configured() -> Action {
        log_not_configured();
        Action::respond_text(500, "plugin not configured\n")
    }
}

#[cfg(target_arch = "wasm32")]
pub use wasm::*;

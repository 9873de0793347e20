//! The napi bindings: argument conversion, one call into a backend, error mapping. Nothing else
//! lives here (no loops, no retries, no I/O): that is in `distlock-core` and the backend crates.
//!
//! - `provider`: `NativeProvider`, one per backend, and the calls it takes;
//! - `options`: the providers' options objects and the backends they build;
//! - `handle`: `NativeHandle` (a held lock) and the channel that settles the calls that wait;
//! - `cancel`: `CancelToken`, an `AbortSignal`'s native side;
//! - `errors`: how a failure crosses to JS (an `Error` with `code` and cause fields);
//! - `uvloop`: the event-loop driver (libuv), with its unsafe FFI;
//! - `log` and `cli`: the `tracing` bridge and the CLI's spawn.

mod cancel;
#[cfg(unix)]
pub mod cli;
mod errors;
mod fence;
mod handle;
pub mod log;
mod options;
mod provider;
mod uvloop;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use errors::to_js;

/// Checks a lock name now, so `createLock('')` throws at once rather than at acquire.
#[napi]
pub fn validate_name(env: Env, name: String) -> Result<()> {
    distlock_core::validate_name(&name).map_err(|e| to_js(&env, e))
}

/// Checks a semaphore's `maxCount` now, so `createSemaphore(name, 0)` throws at once.
#[napi]
pub fn validate_max_count(env: Env, max_count: f64) -> Result<()> {
    distlock_core::validate_max_count(max_count)
        .map(drop)
        .map_err(|e| to_js(&env, e))
}

/// The runtime every backend runs on: one worker thread by default. distlock's work is waiting
/// on sockets and timers; a second worker mostly adds wake-ups between threads (measured: fewer
/// ops/s and more CPU per op with two). `DISTLOCK_WORKER_THREADS` overrides it.
#[napi_derive::module_init]
fn init_runtime() {
    let workers = std::env::var("DISTLOCK_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1);
    if let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("distlock-rt")
        .enable_all()
        .build()
    {
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}

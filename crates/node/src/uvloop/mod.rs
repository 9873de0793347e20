//! The JS thread's own event loop (libuv), for the calls that have to wait: their futures are
//! polled on the JS thread, their sockets are watched there, and their promises are settled
//! there, with no thread in between.
//!
//! - [`Loop`] is one per Node environment (thread-local): a `uv_async_t` that wakes it from
//!   other threads, a queue of woken tasks, and the async context JS is called back in
//!   (`event_loop`).
//! - A task is a pending call: polled on the JS thread whenever its waker fires; its answer
//!   goes straight to the provider's settle function with `napi_make_callback` (which then runs
//!   the microtasks, as Node does after its own callbacks).
//! - [`Loop`] is also the `Reactor` the network backends watch their sockets with
//!   (`uv_poll_t`; `poll`).
//! - `driver` chooses, once per process, whether the event loop can run here at all (not in a
//!   runtime known to stand in for libuv, not without every function used here, and not unless
//!   a `uv_poll_t` on a private loop really reports a socket readable), and reads
//!   `DISTLOCK_DRIVER`. Where it cannot, or with `DISTLOCK_DRIVER=tokio`, there is no [`Loop`]
//!   and the bindings use the tokio runtime for everything.
//! - `ffi` holds every `unsafe` FFI call of the driver (libuv and raw Node-API), each with its
//!   safety comment, behind safe functions that check what those calls rely on.

mod driver;
mod event_loop;
mod ffi;
mod poll;

pub use event_loop::{Answer, Loop, Settle};
pub use ffi::JsFn;

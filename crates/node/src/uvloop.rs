//! The JS thread's own event loop (libuv), for the calls that have to wait: their futures are
//! polled on the JS thread, their sockets are watched there, and their promises are settled
//! there, with no thread in between.
//!
//! - [`Loop`] is one per Node environment (thread-local): a `uv_async_t` that wakes it from
//!   other threads, a queue of woken tasks, and the async context JS is called back in.
//! - A task is a pending call: polled on the JS thread whenever its waker fires; its answer
//!   goes straight to the provider's settle function with `napi_make_callback` (which then runs
//!   the microtasks, as Node does after its own callbacks).
//! - [`Loop`] is also the [`Reactor`] the network backends watch their sockets with
//!   (`uv_poll_t`).
//!
//! libuv's functions are resolved from the host process at run time, the way napi-sys resolves
//! Node-API. That they resolve proves nothing: Bun and Deno export `uv_*` functions of their own
//! (Bun's poll functions abort the process; with Deno's, replies on watched sockets go unread). So the driver is chosen by [`Loop::current`] from what the host can do
//! ([`unavailable`]): not in a runtime known to stand in for libuv, not without every function
//! used here, and not unless a `uv_poll_t` on a private loop really reports a socket readable.
//! Otherwise, or with `DISTLOCK_DRIVER=tokio`, there is no [`Loop`] and the bindings use the
//! tokio runtime for everything. Every `unsafe` FFI call of the crate is in this file.

use std::cell::RefCell;
use std::ffi::{CStr, c_int, c_void};
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

use distlock_core::reactor::{RawSocket, Reactor, Ready, Watch};
use napi::sys;

/// What a task answers: its call id and a handle, nothing, or an error message with its code.
pub type Answer = std::result::Result<Option<distlock_core::Held>, String>;

/// Settles one answer on the JS thread; given the environment and the answer.
pub trait Settle: Send + Sync + 'static {
    /// Calls the provider's settle function with `(id, answer)`, or drops the answer when the
    /// provider is gone.
    fn settle(&self, env: sys::napi_env, ctx: sys::napi_async_context, id: u32, answer: Answer);
}

type UvLoop = sys::uv_loop_s;
type Handle = *mut c_void;
type AsyncCb = unsafe extern "C" fn(Handle);
type PollCb = unsafe extern "C" fn(Handle, c_int, c_int);
type CloseCb = unsafe extern "C" fn(Handle);
#[cfg(unix)]
type UvSocket = c_int;
#[cfg(windows)]
type UvSocket = usize;

const UV_ASYNC: c_int = 1;
const UV_POLL: c_int = 8;
const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;
const UV_RUN_NOWAIT: c_int = 2;

/// The libuv functions we use, resolved from the host process.
struct Uv {
    handle_size: unsafe extern "C" fn(c_int) -> usize,
    async_init: unsafe extern "C" fn(*mut UvLoop, Handle, AsyncCb) -> c_int,
    async_send: unsafe extern "C" fn(Handle) -> c_int,
    poll_init_socket: unsafe extern "C" fn(*mut UvLoop, Handle, UvSocket) -> c_int,
    poll_start: unsafe extern "C" fn(Handle, c_int, PollCb) -> c_int,
    poll_stop: unsafe extern "C" fn(Handle) -> c_int,
    close: unsafe extern "C" fn(Handle, CloseCb),
    unref: unsafe extern "C" fn(Handle),
    // Only for the probe on a private loop ([`probe`]).
    loop_size: unsafe extern "C" fn() -> usize,
    loop_init: unsafe extern "C" fn(*mut UvLoop) -> c_int,
    run: unsafe extern "C" fn(*mut UvLoop, c_int) -> c_int,
    loop_close: unsafe extern "C" fn(*mut UvLoop) -> c_int,
}

/// The host's libuv functions, or the name of the first one it does not have.
fn resolve() -> Result<Uv, &'static str> {
    #[cfg(unix)]
    let host: libloading::Library = libloading::os::unix::Library::this().into();
    #[cfg(windows)]
    let host: libloading::Library = libloading::os::windows::Library::this()
        .map_err(|_| "the host process")?
        .into();
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol is libuv's function of that name, whose C signature is the
            // field's type (uv.h, stable across libuv 1.x); the host library stays loaded for
            // the life of the process (it is the process itself).
            *unsafe { host.get(concat!($name, "\0").as_bytes()) }.map_err(|_| $name)?
        };
    }
    let uv = Uv {
        handle_size: sym!("uv_handle_size"),
        async_init: sym!("uv_async_init"),
        async_send: sym!("uv_async_send"),
        poll_init_socket: sym!("uv_poll_init_socket"),
        poll_start: sym!("uv_poll_start"),
        poll_stop: sym!("uv_poll_stop"),
        close: sym!("uv_close"),
        unref: sym!("uv_unref"),
        loop_size: sym!("uv_loop_size"),
        loop_init: sym!("uv_loop_init"),
        run: sym!("uv_run"),
        loop_close: sym!("uv_loop_close"),
    };
    std::mem::forget(host);
    Ok(uv)
}

/// libuv, once [`unavailable`] has found that the event-loop driver can run here.
fn uv() -> Option<&'static Uv> {
    UV.get().and_then(|u| u.as_ref().ok())
}

static UV: OnceLock<Result<Uv, String>> = OnceLock::new();

/// Why the event-loop driver cannot run in this process, or `None` when it can; found once,
/// on the first call (on a JS thread, inside a Node-API call with its live `env`). The order
/// matters: a runtime that stands in for libuv is recognised before any `uv_*` function is
/// called (Bun's abort the process), and the functions are called only once all resolve.
fn unavailable(env: sys::napi_env) -> Option<&'static str> {
    UV.get_or_init(|| {
        if let Some(host) = stand_in_runtime(env) {
            return Err(host);
        }
        let uv = resolve().map_err(|name| format!("the host has no libuv function {name}"))?;
        probe(&uv)?;
        Ok(uv)
    })
    .as_ref()
    .err()
    .map(String::as_str)
}

/// What `DISTLOCK_DRIVER` asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Asked {
    /// Unset, empty or `auto`: the event loop where it can run, else tokio.
    Auto,
    /// `event-loop`: the event loop, or an error that says why it cannot run.
    EventLoop,
    /// `tokio`: the tokio runtime for everything.
    Tokio,
}

fn asked_driver() -> distlock_core::Result<Asked> {
    parse_driver(std::env::var_os("DISTLOCK_DRIVER").as_deref())
}

fn parse_driver(value: Option<&std::ffi::OsStr>) -> distlock_core::Result<Asked> {
    match value.map(|v| v.to_str()) {
        None | Some(Some("" | "auto")) => Ok(Asked::Auto),
        Some(Some("event-loop")) => Ok(Asked::EventLoop),
        Some(Some("tokio")) => Ok(Asked::Tokio),
        Some(other) => Err(distlock_core::Error::invalid(
            "DISTLOCK_DRIVER",
            format!(
                "is {:?}: it takes \"event-loop\", \"tokio\" or \"auto\" (the same as unset)",
                other.unwrap_or("(not UTF-8)")
            ),
        )),
    }
}

/// The runtimes whose `uv_*` functions are their own stand-ins, not libuv: how it is known and
/// what their functions do. They say who they are in `process.versions` (and their globals).
/// Node with a global named `Bun` or `Deno` (a shim) gets the tokio driver too: slower, never
/// wrong, where missing a real Bun would abort the process.
fn stand_in_runtime(env: sys::napi_env) -> Option<String> {
    const STAND_INS: [(&CStr, &CStr, &str); 2] = [
        (
            c"bun",
            c"Bun",
            "its uv_poll_* functions abort the process (\"unsupported uv function\")",
        ),
        (
            c"deno",
            c"Deno",
            "its uv_* functions are its own emulation of libuv, and replies on sockets watched \
             through them go unread (PostgreSQL and Redis calls time out)",
        ),
    ];
    // SAFETY: on the JS thread inside a Node-API call with its live `env`; every value read
    // belongs to the caller's handle scope.
    unsafe {
        let mut global: sys::napi_value = std::ptr::null_mut();
        if sys::napi_get_global(env, &mut global) != sys::Status::napi_ok {
            return None;
        }
        let versions = property(env, property(env, global, c"process"), c"versions");
        for (key, global_name, why) in STAND_INS {
            let version = string(env, property(env, versions, key));
            if version.is_some() || !property(env, global, global_name).is_null() {
                let name = global_name.to_string_lossy();
                let version = version.map(|v| format!(" {v}")).unwrap_or_default();
                return Some(format!("{name}{version} is not Node: {why}"));
            }
        }
    }
    None
}

/// `object[name]` when `object` is an object and the property is neither `undefined` nor
/// `null`, else null (an exception a getter threw is cleared).
///
/// # Safety
/// On the JS thread inside a Node-API call with its live `env`; `object` is null or a value of
/// the current handle scope.
unsafe fn property(env: sys::napi_env, object: sys::napi_value, name: &CStr) -> sys::napi_value {
    let mut out: sys::napi_value = std::ptr::null_mut();
    let mut kind: sys::napi_valuetype = sys::ValueType::napi_undefined;
    // SAFETY: as the function's contract says.
    unsafe {
        if object.is_null()
            || sys::napi_typeof(env, object, &mut kind) != sys::Status::napi_ok
            || !(kind == sys::ValueType::napi_object || kind == sys::ValueType::napi_function)
        {
            return std::ptr::null_mut();
        }
        if sys::napi_get_named_property(env, object, name.as_ptr(), &mut out)
            != sys::Status::napi_ok
        {
            let mut exception: sys::napi_value = std::ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env, &mut exception);
            return std::ptr::null_mut();
        }
        if sys::napi_typeof(env, out, &mut kind) != sys::Status::napi_ok
            || kind == sys::ValueType::napi_undefined
            || kind == sys::ValueType::napi_null
        {
            return std::ptr::null_mut();
        }
    }
    out
}

/// A JS string's text (at most 63 bytes), or `None` for anything else.
///
/// # Safety
/// As for [`property`].
unsafe fn string(env: sys::napi_env, value: sys::napi_value) -> Option<String> {
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    // SAFETY: as the function's contract says; napi writes at most `buf.len()` bytes with the
    // NUL and reports the length without it.
    let status = unsafe {
        if value.is_null() {
            return None;
        }
        sys::napi_get_value_string_utf8(env, value, buf.as_mut_ptr().cast(), buf.len(), &mut len)
    };
    (status == sys::Status::napi_ok).then(|| String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Checks that the host's libuv really watches sockets: on a private loop (never the
/// environment's, which is running), a `uv_poll_t` on one end of a socket pair must report it
/// readable within a few non-blocking turns once a byte is written to the other end, and the
/// handle and the loop must close after.
fn probe(uv: &Uv) -> Result<(), String> {
    let (mine, mut theirs) =
        socket_pair().map_err(|e| format!("libuv probe: no socket pair: {e}"))?;
    let fail = |what: &str, rc: c_int| format!("libuv probe: {what} failed ({rc})");
    // SAFETY: uv_loop_size takes nothing and only returns a size.
    let loop_words = unsafe { (uv.loop_size)() }.div_ceil(8).max(1);
    let uv_loop = Box::into_raw(vec![0u64; loop_words].into_boxed_slice());
    let state = ProbeState::default();
    // SAFETY: the loop and the handle are fresh memory of their types' sizes, used on this
    // thread only; the handle's data slot points at `state`, which outlives both. Each is freed
    // only once libuv is done with it (the handle's close callback ran, the loop closed); a
    // loop or handle that will not close is leaked instead.
    let outcome = unsafe {
        let l = uv_loop.cast::<UvLoop>();
        match (uv.loop_init)(l) {
            0 => {}
            rc => {
                drop(Box::from_raw(uv_loop));
                return Err(fail("uv_loop_init", rc));
            }
        }
        let h = alloc_handle(uv, UV_POLL);
        let outcome = match (uv.poll_init_socket)(l, h, raw_socket(&mine)) {
            0 => {
                *data_slot(h) = (&raw const state).cast_mut().cast::<c_void>();
                let outcome = match (uv.poll_start)(h, UV_READABLE, on_probe) {
                    0 => theirs
                        .write_all(b"?")
                        .map_err(|e| format!("libuv probe: write: {e}")),
                    rc => Err(fail("uv_poll_start", rc)),
                };
                for _ in 0..3 {
                    if outcome.is_err() || state.seen.get() != 0 {
                        break;
                    }
                    (uv.run)(l, UV_RUN_NOWAIT);
                }
                (uv.poll_stop)(h);
                (uv.close)(h, on_closed_probe);
                (uv.run)(l, UV_RUN_NOWAIT);
                if state.closed.get() {
                    free_sized(uv, h, UV_POLL);
                }
                outcome
            }
            rc => {
                free_sized(uv, h, UV_POLL);
                Err(fail("uv_poll_init_socket", rc))
            }
        };
        match (uv.loop_close)(l) {
            0 => drop(Box::from_raw(uv_loop)),
            rc => return outcome.and(Err(fail("uv_loop_close", rc))),
        }
        outcome
    };
    outcome?;
    if state.seen.get() & UV_READABLE == 0 || !state.closed.get() {
        return Err(String::from(
            "libuv probe: a uv_poll_t did not report a readable socket, or did not close",
        ));
    }
    Ok(())
}

/// What the probe's callbacks saw.
#[derive(Default)]
struct ProbeState {
    seen: std::cell::Cell<c_int>,
    closed: std::cell::Cell<bool>,
}

unsafe extern "C" fn on_probe(h: Handle, status: c_int, events: c_int) {
    // SAFETY: the data slot points at the probe's state while the handle is open.
    let state = unsafe { &*(*data_slot(h)).cast::<ProbeState>() };
    if status == 0 {
        state.seen.set(state.seen.get() | events);
    }
}

unsafe extern "C" fn on_closed_probe(h: Handle) {
    // SAFETY: as in on_probe; the probe frees the handle once this has run.
    unsafe { &*(*data_slot(h)).cast::<ProbeState>() }
        .closed
        .set(true);
}

/// A connected pair of sockets: a Unix socket pair, or on Windows a loopback TCP connection.
#[cfg(unix)]
fn socket_pair() -> io::Result<(
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    std::os::unix::net::UnixStream::pair()
}

#[cfg(windows)]
fn socket_pair() -> io::Result<(std::net::TcpStream, std::net::TcpStream)> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let theirs = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (mine, _) = listener.accept()?;
    Ok((mine, theirs))
}

#[cfg(unix)]
fn raw_socket(s: &impl std::os::fd::AsRawFd) -> UvSocket {
    s.as_raw_fd()
}

#[cfg(windows)]
fn raw_socket(s: &impl std::os::windows::io::AsRawSocket) -> UvSocket {
    s.as_raw_socket() as UvSocket
}

/// Memory for one uv handle of `kind`, pointer-aligned; freed by [`free_sized`].
fn alloc_handle(uv: &Uv, kind: c_int) -> Handle {
    // SAFETY: uv_handle_size only reads its argument.
    let size = unsafe { (uv.handle_size)(kind) };
    let words = size.div_ceil(8).max(1);
    let mem: Box<[u64]> = vec![0u64; words].into_boxed_slice();
    Box::into_raw(mem).cast::<c_void>()
}

/// The user-data slot every uv handle starts with (`void* data`, uv.h's UV_HANDLE_FIELDS).
fn data_slot(h: Handle) -> *mut *mut c_void {
    h.cast::<*mut c_void>()
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Loop>>> = const { RefCell::new(None) };
}

/// The JS thread's loop of one environment.
pub struct Loop {
    env: sys::napi_env,
    uv_loop: *mut UvLoop,
    wake_handle: Handle,
    ctx: sys::napi_async_context,
    thread: ThreadId,
    woken: Mutex<Vec<Arc<Task>>>,
    /// Work sent from other threads that must run on the loop (closing a watch).
    jobs: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// Set while the loop drains: a wake-up then needs no `uv_async_send`.
    draining: AtomicBool,
    /// The poll handles open now, closed at the latest when the environment ends (a worker
    /// thread's loop must have no open handle left when Node closes it).
    polls: Mutex<std::collections::HashSet<usize>>,
    /// The background tasks ([`Reactor::spawn`]), dropped when the environment ends (each
    /// drives a connection whose socket is watched here).
    spawned: Mutex<Vec<std::sync::Weak<Task>>>,
    /// Itself, for the tasks spawned from other threads.
    this: OnceLock<std::sync::Weak<Loop>>,
    dead: AtomicBool,
}

// SAFETY: the raw pointers (environment, loop, handles, async context) are only dereferenced on
// the loop's own thread (`on_loop` is checked before each use), except `uv_async_send`, which
// libuv documents as safe to call from any thread.
unsafe impl Send for Loop {}
// SAFETY: as above; the shared state is behind mutexes and atomics.
unsafe impl Sync for Loop {}

impl Loop {
    /// This thread's loop, set up on first use, or `None` for the tokio fallback: when
    /// `DISTLOCK_DRIVER=tokio` asks for it, or (unset or `auto`) when the event-loop driver
    /// cannot run here. `DISTLOCK_DRIVER=event-loop` insists: where the driver cannot run, it
    /// is an error that says why, never a process the host aborts. Called on the JS thread
    /// inside a Node-API call with its live `env`.
    pub fn current(env: sys::napi_env) -> distlock_core::Result<Option<Arc<Loop>>> {
        let asked = asked_driver()?;
        if asked == Asked::Tokio {
            return Ok(None);
        }
        if let Some(l) = CURRENT.with(|c| c.borrow().clone()) {
            return Ok(Some(l));
        }
        let started = match (unavailable(env), uv()) {
            (None, Some(uv)) => Self::start(uv, env),
            (why, _) => Err(why.unwrap_or("libuv is not available")),
        };
        let l = match started {
            Ok(l) => Arc::new(l),
            Err(why) if asked == Asked::EventLoop => {
                return Err(distlock_core::Error::invalid(
                    "DISTLOCK_DRIVER",
                    format!(
                        "is \"event-loop\", but the event-loop driver cannot run here: {why}; \
                         unset DISTLOCK_DRIVER (or set it to \"tokio\") to use the runtime driver"
                    ),
                ));
            }
            Err(why) => {
                tracing::debug!("the runtime driver answers the calls that wait: {why}");
                return Ok(None);
            }
        };
        let _ = l.this.set(Arc::downgrade(&l));
        CURRENT.with(|c| *c.borrow_mut() = Some(l.clone()));
        Ok(Some(l))
    }

    fn start(uv: &Uv, env: sys::napi_env) -> Result<Loop, &'static str> {
        let mut uv_loop: *mut UvLoop = std::ptr::null_mut();
        // SAFETY: called on the JS thread inside a Node-API call with its live `env`.
        if unsafe { sys::napi_get_uv_event_loop(env, &mut uv_loop) } != sys::Status::napi_ok
            || uv_loop.is_null()
        {
            return Err("napi_get_uv_event_loop gave no loop");
        }
        let mut ctx: sys::napi_async_context = std::ptr::null_mut();
        let mut resource: sys::napi_value = std::ptr::null_mut();
        let mut name: sys::napi_value = std::ptr::null_mut();
        // SAFETY: as above; the values live in the caller's handle scope and the async context
        // lives as long as the environment.
        unsafe {
            if sys::napi_create_object(env, &mut resource) != sys::Status::napi_ok
                || sys::napi_create_string_utf8(env, c"distlock".as_ptr(), 8, &mut name)
                    != sys::Status::napi_ok
                || sys::napi_async_init(env, resource, name, &mut ctx) != sys::Status::napi_ok
            {
                return Err("napi_async_init failed");
            }
        }
        let wake_handle = alloc_handle(uv, UV_ASYNC);
        // SAFETY: `wake_handle` is fresh memory of uv_async_t's size, initialised on the loop
        // thread; it is unref'd so an idle loop does not keep the process alive.
        unsafe {
            if (uv.async_init)(uv_loop, wake_handle, on_wake) != 0 {
                free_sized(uv, wake_handle, UV_ASYNC);
                return Err("uv_async_init failed");
            }
            (uv.unref)(wake_handle);
        }
        let l = Loop {
            env,
            uv_loop,
            wake_handle,
            ctx,
            thread: std::thread::current().id(),
            woken: Mutex::default(),
            jobs: Mutex::default(),
            draining: AtomicBool::new(false),
            polls: Mutex::default(),
            spawned: Mutex::default(),
            this: OnceLock::new(),
            dead: AtomicBool::new(false),
        };
        // SAFETY: the cleanup hook runs once on the JS thread when the environment ends; its
        // argument is the thread-local Arc's target, alive until then.
        unsafe {
            sys::napi_add_env_cleanup_hook(env, Some(on_env_cleanup), std::ptr::null_mut());
        }
        Ok(l)
    }

    fn on_this_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn wake_up(&self) {
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        if self.draining.load(Ordering::Acquire) && self.on_this_thread() {
            return;
        }
        if let Some(uv) = uv() {
            // SAFETY: uv_async_send is thread-safe; the handle stays open until the
            // environment's cleanup marks the loop dead first.
            unsafe { (uv.async_send)(self.wake_handle) };
        }
    }

    /// Runs `f` on the loop thread: now if this is it, else at the next wake-up.
    fn on_loop_thread(&self, f: Box<dyn FnOnce() + Send>) {
        if self.on_this_thread() {
            f();
        } else {
            lock(&self.jobs).push(f);
            self.wake_up();
        }
    }

    /// Polls every woken task until none is left, settling the finished ones.
    fn drain(&self) {
        let was = self.draining.swap(true, Ordering::AcqRel);
        loop {
            let jobs = std::mem::take(&mut *lock(&self.jobs));
            for job in jobs {
                job();
            }
            let batch = std::mem::take(&mut *lock(&self.woken));
            if batch.is_empty() {
                break;
            }
            for task in batch {
                task.queued.store(false, Ordering::Release);
                if let Some((Some(sink), id, answer)) = task.poll() {
                    self.settle(&*sink, id, answer);
                }
            }
        }
        self.draining.store(was, Ordering::Release);
    }

    fn settle(&self, sink: &dyn Settle, id: u32, answer: Answer) {
        let mut scope: sys::napi_handle_scope = std::ptr::null_mut();
        // SAFETY: on the JS thread (drain runs from libuv callbacks or Node-API calls there);
        // the scope is closed below before returning.
        if unsafe { sys::napi_open_handle_scope(self.env, &mut scope) } != sys::Status::napi_ok {
            return;
        }
        sink.settle(self.env, self.ctx, id, answer);
        // SAFETY: closes the scope opened above.
        unsafe { sys::napi_close_handle_scope(self.env, scope) };
    }

    /// Polls `fut` once now; if it is not ready, keeps polling it on this loop whenever it is
    /// woken, and settles its answer through `sink` with `id`.
    pub fn run(
        self: &Arc<Self>,
        fut: Pin<Box<dyn Future<Output = Answer> + Send>>,
        sink: Arc<dyn Settle>,
        id: u32,
    ) -> Option<Answer> {
        let task = Arc::new(Task {
            core: self.clone(),
            fut: Mutex::new(Some((fut, Some(sink), id))),
            queued: AtomicBool::new(false),
            background: false,
        });
        let was = self.draining.swap(true, Ordering::AcqRel);
        let out = task.poll().map(|(_, _, answer)| answer);
        if !was {
            self.poll_background();
        }
        self.draining.store(was, Ordering::Release);
        if !was && !lock(&self.woken).is_empty() {
            self.wake_up();
        }
        out
    }

    /// Polls the woken background tasks now, leaving the woken calls queued: a call made from
    /// JS that queued a request for a connection driven here gets it written before it returns
    /// (the calls it may have woken are settled at the next turn, never inside a call from JS).
    fn poll_background(&self) {
        loop {
            let due: Vec<Arc<Task>> = {
                let mut woken = lock(&self.woken);
                if !woken.iter().any(|t| t.background) {
                    return;
                }
                let (due, calls) = std::mem::take(&mut *woken)
                    .into_iter()
                    .partition(|t| t.background);
                *woken = calls;
                due
            };
            for task in due {
                task.queued.store(false, Ordering::Release);
                task.poll();
            }
        }
    }
}

/// A finished task: where its answer goes (nothing for a background task), its call id, the answer.
type Finished = (Option<Arc<dyn Settle>>, u32, Answer);

/// A call being answered on the loop.
pub struct Task {
    core: Arc<Loop>,
    #[allow(clippy::type_complexity)]
    fut: Mutex<
        Option<(
            Pin<Box<dyn Future<Output = Answer> + Send>>,
            Option<Arc<dyn Settle>>,
            u32,
        )>,
    >,
    queued: AtomicBool,
    /// Spawned with [`Reactor::spawn`]: nothing to settle.
    background: bool,
}

impl Task {
    /// Polls once; the answer and where it goes when the future finished.
    fn poll(self: &Arc<Self>) -> Option<Finished> {
        let mut slot = lock(&self.fut);
        let (fut, _, _) = slot.as_mut()?;
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            napi::bindgen_prelude::within_runtime_if_available(|| fut.as_mut().poll(&mut cx))
        }));
        let answer = match polled {
            Ok(Poll::Pending) => return None,
            Ok(Poll::Ready(answer)) => answer,
            Err(_) => Err(String::from("ERR_INTERNAL: the call panicked")),
        };
        let (_, sink, id) = slot.take()?;
        Some((sink, id, answer))
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.core.woken).push(self.clone());
            self.core.wake_up();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe extern "C" fn on_wake(_h: Handle) {
    if let Some(l) = CURRENT.with(|c| c.borrow().clone()) {
        l.drain();
    }
}

unsafe extern "C" fn on_env_cleanup(_arg: *mut c_void) {
    let Some(l) = CURRENT.with(|c| c.borrow_mut().take()) else {
        return;
    };
    l.dead.store(true, Ordering::Release);
    lock(&l.woken).clear();
    lock(&l.jobs).clear();
    // A background task and the wakers it left behind point at each other: drop its future.
    for task in std::mem::take(&mut *lock(&l.spawned)) {
        if let Some(task) = task.upgrade() {
            drop(lock(&task.fut).take());
        }
    }
    let polls: Vec<usize> = lock(&l.polls).drain().collect();
    if let Some(uv) = uv() {
        // SAFETY: on the JS thread at environment teardown; every handle was initialised by
        // `start` or `watch` and is closed once here (a watch dropped later finds the loop dead
        // and leaves it alone).
        unsafe {
            for h in polls {
                (uv.poll_stop)(h as Handle);
                (uv.close)(h as Handle, on_closed_poll);
            }
            (uv.close)(l.wake_handle, on_closed_async);
        }
    }
}

unsafe extern "C" fn on_closed_async(h: Handle) {
    if let Some(uv) = uv() {
        // SAFETY: libuv is done with the handle.
        unsafe { free_sized(uv, h, UV_ASYNC) };
    }
}

unsafe extern "C" fn on_closed_poll(h: Handle) {
    // SAFETY: libuv is done with the handle; its data slot holds the watch state.
    unsafe {
        let state = *data_slot(h);
        if !state.is_null() {
            drop(Box::from_raw(state.cast::<PollState>()));
        }
        if let Some(uv) = uv() {
            free_sized(uv, h, UV_POLL);
        }
    }
}

/// Frees a handle of `kind` from [`alloc_handle`].
///
/// # Safety
/// `h` came from `alloc_handle(uv, kind)` and libuv no longer uses it.
unsafe fn free_sized(uv: &Uv, h: Handle, kind: c_int) {
    // SAFETY: uv_handle_size only reads its argument.
    let size = unsafe { (uv.handle_size)(kind) };
    let words = size.div_ceil(8).max(1);
    // SAFETY: the memory is the boxed slice of `words` u64 that alloc_handle leaked.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(h.cast::<u64>(), words)) });
}

/// What a watched socket's handle carries.
struct PollState {
    ready: Arc<dyn Ready>,
    /// Closes the socket when dropped, after the handle is closed.
    _owner: Box<dyn Send + Sync>,
}

unsafe extern "C" fn on_poll(h: Handle, status: c_int, events: c_int) {
    // SAFETY: the data slot holds the PollState set by `watch` until the handle is closed.
    let state = unsafe { *data_slot(h) }.cast::<PollState>();
    if state.is_null() {
        return;
    }
    let Some(l) = CURRENT.with(|c| c.borrow().clone()) else {
        return;
    };
    let was = l.draining.swap(true, Ordering::AcqRel);
    // An error status is reported as readable: the reader meets the error itself.
    let (readable, writable) = if status < 0 {
        (true, false)
    } else {
        (events & UV_READABLE != 0, events & UV_WRITABLE != 0)
    };
    // SAFETY: as above.
    let ready = unsafe { &*state }.ready.clone();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ready.ready(readable, writable);
    }));
    l.draining.store(was, Ordering::Release);
    l.drain();
}

/// A socket watched with a `uv_poll_t`.
struct UvWatch {
    core: Arc<Loop>,
    handle: usize,
    writable: AtomicBool,
}

impl Watch for UvWatch {
    fn want_writable(&self, on: bool) {
        if self.writable.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let h = self.handle;
        let core = self.core.clone();
        self.core.on_loop_thread(Box::new(move || {
            if core.dead.load(Ordering::Acquire) || !lock(&core.polls).contains(&h) {
                return;
            }
            let Some(uv) = uv() else { return };
            let events = UV_READABLE | if on { UV_WRITABLE } else { 0 };
            // SAFETY: on the loop thread, and the handle is still open (it is in `polls`).
            unsafe { (uv.poll_start)(h as Handle, events, on_poll) };
        }));
    }
}

impl Drop for UvWatch {
    fn drop(&mut self) {
        let h = self.handle;
        let core = self.core.clone();
        self.core.on_loop_thread(Box::new(move || {
            if core.dead.load(Ordering::Acquire) || !lock(&core.polls).remove(&h) {
                return;
            }
            let Some(uv) = uv() else { return };
            // SAFETY: on the loop thread; the handle was initialised by `watch` and is closed
            // once, here; on_closed_poll frees it.
            unsafe {
                (uv.poll_stop)(h as Handle);
                (uv.close)(h as Handle, on_closed_poll);
            }
        }));
    }
}

impl Reactor for Loop {
    fn on_loop(&self) -> bool {
        self.on_this_thread() && !self.dead.load(Ordering::Acquire)
    }

    fn watch(
        &self,
        socket: RawSocket,
        owner: Box<dyn Send + Sync>,
        ready: Arc<dyn Ready>,
    ) -> io::Result<Box<dyn Watch>> {
        if !self.on_loop() {
            return Err(io::Error::other("not on the event loop's thread"));
        }
        let Some(uv) = uv() else {
            return Err(io::Error::other("libuv is not available"));
        };
        let core = CURRENT
            .with(|c| c.borrow().clone())
            .ok_or_else(|| io::Error::other("the event loop is gone"))?;
        let h = alloc_handle(uv, UV_POLL);
        #[allow(clippy::unnecessary_cast)]
        let sock = socket as UvSocket;
        // SAFETY: on the loop thread; `h` is fresh memory of uv_poll_t's size; the state box
        // is owned by the handle until on_closed_poll frees it.
        unsafe {
            let rc = (uv.poll_init_socket)(self.uv_loop, h, sock);
            if rc != 0 {
                free_sized(uv, h, UV_POLL);
                return Err(io::Error::other(format!(
                    "uv_poll_init_socket failed ({rc})"
                )));
            }
            *data_slot(h) = Box::into_raw(Box::new(PollState {
                ready,
                _owner: owner,
            }))
            .cast::<c_void>();
            (uv.unref)(h);
            let rc = (uv.poll_start)(h, UV_READABLE, on_poll);
            if rc != 0 {
                (uv.close)(h, on_closed_poll);
                return Err(io::Error::other(format!("uv_poll_start failed ({rc})")));
            }
        }
        lock(&self.polls).insert(h as usize);
        Ok(Box::new(UvWatch {
            core,
            handle: h as usize,
            writable: AtomicBool::new(false),
        }))
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>) {
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        let Some(core) = self.this.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let fut: Pin<Box<dyn Future<Output = Answer> + Send>> = Box::pin(async move {
            task.await;
            Ok(None)
        });
        let task = Arc::new(Task {
            core,
            fut: Mutex::new(Some((fut, None, 0))),
            queued: AtomicBool::new(false),
            background: true,
        });
        {
            let mut spawned = lock(&self.spawned);
            spawned.retain(|t| t.strong_count() > 0);
            spawned.push(Arc::downgrade(&task));
        }
        task.wake_by_ref();
    }
}

/// A JS function held weakly (it stays alive only while JS keeps it), called on the JS thread.
pub struct JsFn {
    fref: sys::napi_ref,
}

// SAFETY: the reference is only used on its environment's JS thread (by the loop's drain).
unsafe impl Send for JsFn {}
// SAFETY: as above.
unsafe impl Sync for JsFn {}

impl JsFn {
    /// A weak reference to `value` (a function), made inside a Node-API call.
    pub fn new(env: sys::napi_env, value: sys::napi_value) -> Option<Self> {
        let mut fref: sys::napi_ref = std::ptr::null_mut();
        // SAFETY: called on the JS thread with the call's live env and value; a count of 0
        // makes the reference weak.
        let status = unsafe { sys::napi_create_reference(env, value, 0, &mut fref) };
        (status == sys::Status::napi_ok && !fref.is_null()).then_some(Self { fref })
    }

    /// Calls the function with three arguments as a callback from the event loop (Node then
    /// runs the microtasks it queued); a throw becomes an uncaught exception, as it would from
    /// any Node callback. Does nothing if the function was collected. Must run inside a handle
    /// scope on the JS thread, which [`Loop`]'s drain provides.
    pub fn call3<A, B, C>(
        &self,
        env: sys::napi_env,
        ctx: sys::napi_async_context,
        (a, b, c): (A, B, C),
    ) where
        A: napi::bindgen_prelude::ToNapiValue,
        B: napi::bindgen_prelude::ToNapiValue,
        C: napi::bindgen_prelude::ToNapiValue,
    {
        // SAFETY: on the JS thread inside the drain's handle scope; every value made here
        // belongs to that scope.
        unsafe {
            let mut f: sys::napi_value = std::ptr::null_mut();
            if sys::napi_get_reference_value(env, self.fref, &mut f) != sys::Status::napi_ok
                || f.is_null()
            {
                return;
            }
            let (Ok(a), Ok(b), Ok(c)) = (
                A::to_napi_value(env, a),
                B::to_napi_value(env, b),
                C::to_napi_value(env, c),
            ) else {
                return;
            };
            // napi_make_callback wants an object as `this`.
            let mut recv: sys::napi_value = std::ptr::null_mut();
            sys::napi_get_global(env, &mut recv);
            let argv = [a, b, c];
            let mut result: sys::napi_value = std::ptr::null_mut();
            let status = sys::napi_make_callback(env, ctx, recv, f, 3, argv.as_ptr(), &mut result);
            if status == sys::Status::napi_pending_exception {
                let mut exc: sys::napi_value = std::ptr::null_mut();
                sys::napi_get_and_clear_last_exception(env, &mut exc);
                sys::napi_fatal_exception(env, exc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names() {
        let parse = |v: Option<&str>| parse_driver(v.map(std::ffi::OsStr::new));
        assert_eq!(parse(None).ok(), Some(Asked::Auto));
        assert_eq!(parse(Some("")).ok(), Some(Asked::Auto));
        assert_eq!(parse(Some("auto")).ok(), Some(Asked::Auto));
        assert_eq!(parse(Some("event-loop")).ok(), Some(Asked::EventLoop));
        assert_eq!(parse(Some("tokio")).ok(), Some(Asked::Tokio));
        let err = parse(Some("Tokio")).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "DISTLOCK_DRIVER is \"Tokio\": it takes \"event-loop\", \"tokio\" or \"auto\" \
                 (the same as unset)"
            )
        );
    }
}

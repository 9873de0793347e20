//! Every `unsafe` FFI call of the event-loop driver: libuv's functions, resolved from the host
//! process at run time (the way napi-sys resolves Node-API), the handles made with them, and
//! the raw Node-API calls the driver needs. (The crate's only other `unsafe` code is the CLI's
//! fork/exec system calls, in `cli.rs`.) Each `unsafe` block says why it is sound. The rest of
//! [`super`] calls the safe functions here, which check themselves what their blocks rely on
//! (the loop's own thread, a handle that is still open), and this module imports nothing from
//! the rest of the crate: what the loop's callbacks run is handed in ([`Hooks`]).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{CStr, c_int, c_void};
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use distlock_core::reactor::{RawSocket, Ready};
use napi::sys;

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
pub(super) struct Uv {
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
pub(super) fn resolve() -> Result<Uv, &'static str> {
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

/// libuv, or why the event-loop driver cannot run in this process; found once, by the driver
/// choice (`driver::unavailable`).
pub(super) static UV: OnceLock<Result<Uv, String>> = OnceLock::new();

/// libuv, once the driver choice has found that the event-loop driver can run here.
fn uv() -> Option<&'static Uv> {
    UV.get().and_then(|u| u.as_ref().ok())
}

/// Memory for one uv handle of `kind`, pointer-aligned; freed by [`free_sized`].
fn alloc_handle(uv: &Uv, kind: c_int) -> Handle {
    // SAFETY: uv_handle_size only reads its argument.
    let size = unsafe { (uv.handle_size)(kind) };
    let words = size.div_ceil(8).max(1);
    let mem: Box<[u64]> = vec![0u64; words].into_boxed_slice();
    Box::into_raw(mem).cast::<c_void>()
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

/// The user-data slot every uv handle starts with (`void* data`, uv.h's UV_HANDLE_FIELDS).
fn data_slot(h: Handle) -> *mut *mut c_void {
    h.cast::<*mut c_void>()
}

/// Checks that the host's libuv really watches sockets: on a private loop (never the
/// environment's, which is running), a `uv_poll_t` on one end of a socket pair must report it
/// readable within a few non-blocking turns once a byte is written to the other end, and the
/// handle and the loop must close after.
pub(super) fn probe(uv: &Uv) -> Result<(), String> {
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
    seen: Cell<c_int>,
    closed: Cell<bool>,
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

/// What the host says of the runtime `key` (`bun`, `deno`): `process.versions[key]` when it is
/// a string, and whether it has a global `global_name`; `None` when the global object cannot
/// be read. Called on the JS thread inside a Node-API call with its live `env`.
pub(super) fn runtime_marks(
    env: sys::napi_env,
    key: &CStr,
    global_name: &CStr,
) -> Option<(Option<String>, bool)> {
    // SAFETY: on the JS thread inside a Node-API call with its live `env`; every value read
    // belongs to the caller's handle scope.
    unsafe {
        let mut global: sys::napi_value = std::ptr::null_mut();
        if sys::napi_get_global(env, &mut global) != sys::Status::napi_ok {
            return None;
        }
        let versions = property(env, property(env, global, c"process"), c"versions");
        let version = string(env, property(env, versions, key));
        Some((version, !property(env, global, global_name).is_null()))
    }
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

/// What the loop's callbacks run, the same for every environment: set by the first
/// [`LoopHandles::open`].
pub(super) struct Hooks {
    /// The wake-up handle fired: poll what was woken.
    pub on_wake: fn(),
    /// A watched socket is ready (an error counts as readable: the reader meets it itself).
    pub on_ready: fn(Arc<dyn Ready>, bool, bool),
    /// The environment is ending: let go of everything, then [`LoopHandles::close`].
    pub on_cleanup: fn(),
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// What a watched socket's handle carries.
struct PollState {
    ready: Arc<dyn Ready>,
    /// Closes the socket when dropped, after the handle is closed.
    _owner: Box<dyn Send + Sync>,
}

/// The libuv side of one environment's event loop: the loop, the `uv_async_t` that wakes it
/// from other threads, the async context JS is called back in, and the `uv_poll_t` handles of
/// the sockets watched on it. Every handle is closed once, at the latest when the environment
/// ends ([`LoopHandles::close`]): a worker thread's loop must have no open handle left when
/// Node closes it.
pub(super) struct LoopHandles {
    env: sys::napi_env,
    uv_loop: *mut UvLoop,
    wake: Handle,
    ctx: sys::napi_async_context,
    thread: ThreadId,
    /// The poll handles open now.
    polls: Mutex<HashSet<usize>>,
    /// Set once [`LoopHandles::close`] has closed every handle.
    closed: AtomicBool,
}

// SAFETY: the raw pointers (environment, loop, handles, async context) are only dereferenced on
// the loop's own thread (each method checks it), except `uv_async_send`, which libuv documents
// as safe to call from any thread.
unsafe impl Send for LoopHandles {}
// SAFETY: as above; the shared state is behind a mutex and an atomic.
unsafe impl Sync for LoopHandles {}

impl LoopHandles {
    /// The handles of `env`'s loop, set up on its JS thread inside a Node-API call with its live
    /// `env`; `hooks` are what the callbacks run (the first call's are kept). Once the driver
    /// choice found that libuv can run here.
    pub(super) fn open(env: sys::napi_env, hooks: Hooks) -> Result<Self, &'static str> {
        let Some(uv) = uv() else {
            return Err("libuv is not available");
        };
        let _ = HOOKS.set(hooks);
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
        let wake = alloc_handle(uv, UV_ASYNC);
        // SAFETY: `wake` is fresh memory of uv_async_t's size, initialised on the loop
        // thread; it is unref'd so an idle loop does not keep the process alive.
        unsafe {
            if (uv.async_init)(uv_loop, wake, on_wake) != 0 {
                free_sized(uv, wake, UV_ASYNC);
                return Err("uv_async_init failed");
            }
            (uv.unref)(wake);
        }
        // SAFETY: the cleanup hook runs once on the JS thread when the environment ends; it
        // takes no argument (the hook finds the environment's loop on its own thread).
        unsafe {
            sys::napi_add_env_cleanup_hook(env, Some(on_env_cleanup), std::ptr::null_mut());
        }
        Ok(Self {
            env,
            uv_loop,
            wake,
            ctx,
            thread: std::thread::current().id(),
            polls: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether the caller runs on the loop's thread.
    pub(super) fn on_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn open_on_this_thread(&self) -> bool {
        self.on_thread() && !self.closed.load(Ordering::Acquire)
    }

    /// Wakes the loop (from any thread); its `on_wake` hook runs at its next turn.
    pub(super) fn wake(&self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Some(uv) = uv() {
            // SAFETY: uv_async_send is thread-safe; the handle stays open until `close`, which
            // sets `closed` first (the environment's cleanup marks the loop dead before that).
            unsafe { (uv.async_send)(self.wake) };
        }
    }

    /// Runs `f(env, ctx)` inside a handle scope of its own, on the loop's thread (elsewhere,
    /// or once closed, it does not run): where JS may be called back.
    pub(super) fn in_scope(&self, f: impl FnOnce(sys::napi_env, sys::napi_async_context)) {
        if !self.open_on_this_thread() {
            return;
        }
        let mut scope: sys::napi_handle_scope = std::ptr::null_mut();
        // SAFETY: on the JS thread (checked above; the loop's callbacks and Node-API calls run
        // there); the scope is closed below before returning.
        if unsafe { sys::napi_open_handle_scope(self.env, &mut scope) } != sys::Status::napi_ok {
            return;
        }
        f(self.env, self.ctx);
        // SAFETY: closes the scope opened above.
        unsafe { sys::napi_close_handle_scope(self.env, scope) };
    }

    /// Watches `socket` for readability with a new `uv_poll_t`, on the loop's thread; the
    /// `on_ready` hook gets `ready`. The handle owns `owner` until it is closed. Returns the
    /// handle, for [`LoopHandles::want_writable`] and [`LoopHandles::unwatch`].
    pub(super) fn watch(
        &self,
        socket: RawSocket,
        owner: Box<dyn Send + Sync>,
        ready: Arc<dyn Ready>,
    ) -> io::Result<usize> {
        if !self.open_on_this_thread() {
            return Err(io::Error::other("not on the event loop's thread"));
        }
        let Some(uv) = uv() else {
            return Err(io::Error::other("libuv is not available"));
        };
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
        Ok(h as usize)
    }

    /// Also watches the socket of `h` for writability, or stops; on the loop's thread, while
    /// the handle is open (else nothing).
    pub(super) fn want_writable(&self, h: usize, on: bool) {
        if !self.open_on_this_thread() || !lock(&self.polls).contains(&h) {
            return;
        }
        let Some(uv) = uv() else { return };
        let events = UV_READABLE | if on { UV_WRITABLE } else { 0 };
        // SAFETY: on the loop thread, and the handle is still open (it is in `polls`).
        unsafe { (uv.poll_start)(h as Handle, events, on_poll) };
    }

    /// Stops watching and closes `h`; on the loop's thread, once (else nothing).
    pub(super) fn unwatch(&self, h: usize) {
        if !self.open_on_this_thread() || !lock(&self.polls).remove(&h) {
            return;
        }
        let Some(uv) = uv() else { return };
        // SAFETY: on the loop thread; the handle was initialised by `watch` and is closed
        // once, here (it left `polls`); on_closed_poll frees it.
        unsafe {
            (uv.poll_stop)(h as Handle);
            (uv.close)(h as Handle, on_closed_poll);
        }
    }

    /// Closes every handle, once, at environment teardown on the loop's thread; afterwards
    /// every method does nothing.
    pub(super) fn close(&self) {
        if !self.on_thread() || self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let polls: Vec<usize> = lock(&self.polls).drain().collect();
        if let Some(uv) = uv() {
            // SAFETY: on the JS thread at environment teardown; every handle was initialised by
            // `open` or `watch` and is closed once here (`closed` keeps every other method off
            // them from now on).
            unsafe {
                for h in polls {
                    (uv.poll_stop)(h as Handle);
                    (uv.close)(h as Handle, on_closed_poll);
                }
                (uv.close)(self.wake, on_closed_async);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe extern "C" fn on_wake(_h: Handle) {
    if let Some(hooks) = HOOKS.get() {
        (hooks.on_wake)();
    }
}

unsafe extern "C" fn on_env_cleanup(_arg: *mut c_void) {
    if let Some(hooks) = HOOKS.get() {
        (hooks.on_cleanup)();
    }
}

unsafe extern "C" fn on_poll(h: Handle, status: c_int, events: c_int) {
    // SAFETY: the data slot holds the PollState set by `watch` until the handle is closed.
    let state = unsafe { *data_slot(h) }.cast::<PollState>();
    if state.is_null() {
        return;
    }
    let Some(hooks) = HOOKS.get() else { return };
    // An error status is reported as readable: the reader meets the error itself.
    let (readable, writable) = if status < 0 {
        (true, false)
    } else {
        (events & UV_READABLE != 0, events & UV_WRITABLE != 0)
    };
    // SAFETY: as above.
    let ready = unsafe { &*state }.ready.clone();
    (hooks.on_ready)(ready, readable, writable);
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
    /// scope on the JS thread, which [`LoopHandles::in_scope`] provides.
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

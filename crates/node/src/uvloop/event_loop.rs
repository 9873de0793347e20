//! [`Loop`], one per Node environment (thread-local), and its tasks: the pending calls and the
//! background work polled on the JS thread whenever their wakers fire, and the settling of a
//! call's answer there.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};

use distlock_core::reactor::Ready;
use napi::sys;

use super::driver;
use super::ffi::{Hooks, LoopHandles};
use crate::errors::Failure;

/// What a task answers: a handle, nothing, or the failure.
pub type Answer = std::result::Result<Option<distlock_core::Held>, Failure>;

/// Settles one answer on the JS thread; given the environment and the answer.
pub trait Settle: Send + Sync + 'static {
    /// Calls the provider's settle function with `(id, answer)`, or drops the answer when the
    /// provider is gone.
    fn settle(&self, env: sys::napi_env, ctx: sys::napi_async_context, id: u32, answer: Answer);
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Loop>>> = const { RefCell::new(None) };
}

/// This thread's loop, if it has one.
pub(super) fn current_loop() -> Option<Arc<Loop>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The JS thread's loop of one environment.
pub struct Loop {
    handles: LoopHandles,
    woken: Mutex<Vec<Arc<Task>>>,
    /// Work sent from other threads that must run on the loop (closing a watch).
    jobs: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// Set while the loop drains: a wake-up then needs no `uv_async_send`.
    draining: AtomicBool,
    /// The background tasks ([`Loop::spawn_background`]), dropped when the environment ends
    /// (each drives a connection whose socket is watched here).
    spawned: Mutex<Vec<Weak<Task>>>,
    /// Itself, for the tasks spawned from other threads.
    this: OnceLock<Weak<Loop>>,
    dead: AtomicBool,
}

impl Loop {
    /// This thread's loop, set up on first use, or `None` for the tokio fallback: when
    /// `DISTLOCK_DRIVER=tokio` asks for it, or (unset or `auto`) when the event-loop driver
    /// cannot run here. `DISTLOCK_DRIVER=event-loop` insists: where the driver cannot run, it
    /// is an error that says why, never a process the host aborts. Called on the JS thread
    /// inside a Node-API call with its live `env`.
    pub fn current(env: sys::napi_env) -> distlock_core::Result<Option<Arc<Loop>>> {
        let asked = driver::asked()?;
        if asked == driver::Asked::Tokio {
            return Ok(None);
        }
        if let Some(l) = current_loop() {
            return Ok(Some(l));
        }
        let started = match driver::unavailable(env) {
            None => Self::start(env),
            Some(why) => Err(why),
        };
        let l = match started {
            Ok(l) => Arc::new(l),
            Err(why) => return driver::fallback(asked, why),
        };
        let _ = l.this.set(Arc::downgrade(&l));
        CURRENT.with(|c| *c.borrow_mut() = Some(l.clone()));
        Ok(Some(l))
    }

    fn start(env: sys::napi_env) -> Result<Loop, &'static str> {
        let hooks = Hooks {
            on_wake,
            on_ready,
            on_cleanup: on_env_cleanup,
        };
        Ok(Loop {
            handles: LoopHandles::open(env, hooks)?,
            woken: Mutex::default(),
            jobs: Mutex::default(),
            draining: AtomicBool::new(false),
            spawned: Mutex::default(),
            this: OnceLock::new(),
            dead: AtomicBool::new(false),
        })
    }

    /// The libuv handles of this loop.
    pub(super) fn handles(&self) -> &LoopHandles {
        &self.handles
    }

    /// Whether the environment has ended: nothing runs on the loop any more.
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn wake_up(&self) {
        if self.is_dead() {
            return;
        }
        if self.draining.load(Ordering::Acquire) && self.handles.on_thread() {
            return;
        }
        self.handles.wake();
    }

    /// Runs `f` on the loop thread: now if this is it, else at the next wake-up.
    pub(super) fn on_loop_thread(&self, f: Box<dyn FnOnce() + Send>) {
        if self.handles.on_thread() {
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
                    self.handles
                        .in_scope(|env, ctx| sink.settle(env, ctx, id, answer));
                }
            }
        }
        self.draining.store(was, Ordering::Release);
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

    /// Runs `task` on the loop thread until it ends (see `Reactor::spawn`); callable from any
    /// thread. Nothing is settled when it ends.
    pub(super) fn spawn_background(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>) {
        if self.is_dead() {
            return;
        }
        let Some(core) = self.this.get().and_then(Weak::upgrade) else {
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
    /// Spawned with [`Loop::spawn_background`]: nothing to settle.
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
            Err(_) => Err(Failure::internal("the call panicked")),
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wake-up handle fired.
fn on_wake() {
    if let Some(l) = current_loop() {
        l.drain();
    }
}

/// A watched socket is ready: its reader runs as part of a drain (so what it wakes is polled
/// in this turn, with no `uv_async_send`), then the drain polls what it woke.
fn on_ready(ready: Arc<dyn Ready>, readable: bool, writable: bool) {
    let Some(l) = current_loop() else {
        return;
    };
    let was = l.draining.swap(true, Ordering::AcqRel);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ready.ready(readable, writable);
    }));
    l.draining.store(was, Ordering::Release);
    l.drain();
}

/// The environment is ending: the loop is dead, its work is dropped and its handles closed.
fn on_env_cleanup() {
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
    l.handles.close();
}

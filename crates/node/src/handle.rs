//! A held lock as JS sees it ([`NativeHandle`]), and how the calls that could not answer at once
//! settle: the provider's [`SettleChannel`], which hands out those handles.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use distlock_core::{CancellationToken, Held};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::errors::{Failure, promise, to_js};
use crate::uvloop::{self, JsFn, Loop};

/// What a call that could not answer at once settles with: a new handle, nothing (a timeout,
/// or a release), or the failure.
type Settled = (u32, std::result::Result<Option<Held>, Failure>);

type LeakFn = ThreadsafeFunction<String, (), String, Status, false, true>;

/// The arguments of the JS settle callback: `(id, handle | null, error | null)`, the error
/// being the JS object of [`Failure::into_js`].
type Answered = (u32, Option<NativeHandle>, Option<Error>);

/// [`Answered`], as a JS function takes it.
pub type SettleArgs = FnArgs<Answered>;

/// The JS settle callback of one provider, callable from any thread.
type SettleFn = ThreadsafeFunction<Settled, (), SettleArgs, Status, false, true>;

/// One long-lived channel per provider that settles every call that had to wait.
///
/// With the event-loop driver ([`uvloop`]) a pending call is polled on the JS thread and
/// settled there by calling the provider's settle function directly. The fallback (tokio)
/// polls it on the runtime and settles through one threadsafe function, and so one libuv
/// handle, however many calls are pending (a handle per call makes every wake-up of the event
/// loop walk all of them: quadratic with many waiters). Both hold the function weakly: a
/// pending call keeps the process alive through the TS layer, an idle provider does not.
pub struct SettleChannel {
    tsfn: OnceLock<Arc<SettleFn>>,
    /// Told the name of each handle garbage-collected while it still held its lock.
    leaked: OnceLock<LeakFn>,
    direct: OnceLock<JsFn>,
    event_loop: Option<Arc<Loop>>,
    me: Weak<SettleChannel>,
}

pub type Channel = Arc<SettleChannel>;

impl SettleChannel {
    pub fn new(event_loop: Option<Arc<Loop>>) -> Channel {
        Arc::new_cyclic(|me| Self {
            tsfn: OnceLock::new(),
            leaked: OnceLock::new(),
            direct: OnceLock::new(),
            event_loop,
            me: me.clone(),
        })
    }

    /// Whether pending calls are answered on the JS thread's event loop.
    pub fn on_event_loop(&self) -> bool {
        self.event_loop.is_some()
    }

    /// Sets the JS function `(id, handle | null, error | null)` that settles the calls that had
    /// to wait (once; a second call keeps the first function).
    pub fn listen(&self, callback: Function<SettleArgs, ()>) -> Result<()> {
        if let Some(f) = JsFn::new(callback.value().env, callback.value().value) {
            let _ = self.direct.set(f);
        }
        let channel = self.me.clone();
        let tsfn: SettleFn = callback
            .build_threadsafe_function::<Settled>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(move |ctx| {
                let (id, out) = ctx.value;
                Ok(FnArgs::from(answered(&ctx.env, &channel, id, out)))
            })?;
        let _ = self.tsfn.set(Arc::new(tsfn));
        Ok(())
    }

    /// Sets the function told the name of each handle garbage-collected while it still held
    /// its lock (once). It does not keep the process alive.
    pub fn on_leak(&self, callback: Function<String, ()>) -> Result<()> {
        let tsfn: LeakFn = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let _ = self.leaked.set(tsfn);
        Ok(())
    }
}

/// The settle callback's arguments for call `id`'s answer; on the JS thread of `env`.
fn answered(env: &Env, channel: &Weak<SettleChannel>, id: u32, answer: uvloop::Answer) -> Answered {
    match answer {
        Ok(held) => (
            id,
            held.map(|h| NativeHandle::new(h, channel.clone())),
            None,
        ),
        Err(failure) => (id, None, Some(failure.into_js(env))),
    }
}

impl uvloop::Settle for SettleChannel {
    fn settle(
        &self,
        env: napi::sys::napi_env,
        ctx: napi::sys::napi_async_context,
        id: u32,
        answer: uvloop::Answer,
    ) {
        let Some(f) = self.direct.get() else { return };
        f.call3(
            env,
            ctx,
            answered(&Env::from_raw(env), &self.me, id, answer),
        );
    }
}

/// Runs `fut` to its answer: at once on the JS thread when it is ready on its first poll (an
/// uncontended file acquire, a file release), returning `Some`. Else it goes on, on the JS
/// thread's event loop when there is one (woken there, settled there), or on the tokio runtime,
/// and settles through the provider's channel with `id`, returning `None`. Polls run inside the
/// runtime's context, and a pending future keeps its state (and its place in the waiter queue)
/// wherever it goes on.
pub fn now_or_settle<T, F>(
    channel: &Channel,
    id: u32,
    fut: F,
    settled: fn(T) -> Option<Held>,
) -> std::result::Result<Option<Option<Held>>, Failure>
where
    T: Send + 'static,
    F: Future<Output = distlock_core::Result<T>> + Send + 'static,
{
    let answering = async move { fut.await.map(settled).map_err(Failure::from) };
    if let Some(l) = &channel.event_loop
        && channel.direct.get().is_some()
    {
        let sink: Arc<dyn uvloop::Settle> = match channel.me.upgrade() {
            Some(c) => c,
            None => return Err(Failure::internal("the provider's settle channel is gone")),
        };
        return match l.run(Box::pin(answering), sink, id) {
            Some(answer) => answer.map(Some),
            None => Ok(None),
        };
    }
    let mut fut = Box::pin(answering);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match napi::bindgen_prelude::within_runtime_if_available(|| fut.as_mut().poll(&mut cx)) {
        Poll::Ready(answer) => answer.map(Some),
        Poll::Pending => {
            let Some(tsfn) = channel.tsfn.get() else {
                return Err(Failure::internal(
                    "the provider's settle channel is not set up",
                ));
            };
            let tsfn = Arc::clone(tsfn);
            napi::bindgen_prelude::spawn(async move {
                let out = fut.await;
                tsfn.call((id, out), ThreadsafeFunctionCallMode::NonBlocking);
            });
            Ok(None)
        }
    }
}

/// A held lock. Dropping it (garbage collection) releases the lock.
#[napi]
pub struct NativeHandle {
    held: Mutex<Option<Held>>,
    channel: Weak<SettleChannel>,
    token: u64,
    /// Ends the lost-signal watcher once the handle is released.
    done: CancellationToken,
}

impl NativeHandle {
    pub fn new(held: Held, channel: Weak<SettleChannel>) -> Self {
        let token = held.fencing_token();
        Self {
            held: Mutex::new(Some(held)),
            channel,
            token,
            done: CancellationToken::new(),
        }
    }

    fn take(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The held lock, while the handle is not released.
    pub fn current(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[napi]
impl NativeHandle {
    /// The fencing token of this grant.
    #[napi(getter)]
    pub fn fencing_token(&self) -> BigInt {
        BigInt::from(self.token)
    }

    /// Whether the lock has been released (by `release`, or by the provider on close).
    #[napi(getter)]
    pub fn is_released(&self) -> bool {
        self.current().is_none_or(|h| h.is_released())
    }

    /// Whether the lock is held right now, checked against the clock at the call: false once it
    /// is released, lost, past its local lease deadline, or on a connection in doubt.
    #[napi(getter)]
    pub fn is_held(&self) -> bool {
        self.current().is_some_and(|h| h.is_held())
    }

    /// What is left of the lease by the local deadline, in ms (0 once lost); `null` for
    /// backends whose locks have no lease, and once released.
    #[napi(getter)]
    pub fn lease_remaining_ms(&self) -> Option<f64> {
        let held = self.current()?;
        if held.is_released() {
            return None;
        }
        held.lease_remaining().map(|d| d.as_secs_f64() * 1e3)
    }

    /// Ends the lock as lost with `reason` (its signal fires); the caller then releases it.
    /// Does nothing once released or lost.
    #[napi]
    pub fn expire(&self, reason: String) {
        if let Some(held) = self.current()
            && !held.is_released()
        {
            held.lost().fire(reason);
        }
    }

    /// Why the lock was lost, if it was (`null` while it is held or after a normal release).
    #[napi(getter)]
    pub fn lost_reason(&self) -> Option<String> {
        self.current()
            .and_then(|h| h.lost().reason().map(str::to_owned))
    }

    /// Calls `callback(reason)` once if the lock is lost while held. The callback does not keep
    /// the process alive.
    #[napi]
    pub fn on_lost(&self, callback: Function<String, ()>) -> Result<()> {
        let Some(held) = self.current() else {
            return Ok(());
        };
        let tsfn = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let lost = held.lost().clone();
        let done = self.done.clone();
        drop(held);
        napi::bindgen_prelude::spawn(async move {
            tokio::select! {
                // Lost first: a lock lost and then released (maxHoldMs, a release right after
                // the loss) still reports the loss.
                biased;
                reason = lost.lost() => { tsfn.call(reason, ThreadsafeFunctionCallMode::NonBlocking); }
                _ = done.cancelled() => {}
            }
        });
        Ok(())
    }

    /// Extends the lease to `ms` from now (backends with leases; a no-op for the others).
    #[napi]
    pub fn extend<'env>(&self, env: &'env Env, ms: f64) -> Result<PromiseRaw<'env, ()>> {
        let lease = distlock_core::options::lease_ms(ms).map_err(|e| to_js(env, e))?;
        let held = self.current();
        promise(env, async move {
            match held {
                Some(h) => h.extend(lease).await.map_err(Failure::from),
                None => Err(Failure::from(distlock_core::Error::invalid(
                    "handle",
                    "was released; a released lock cannot be extended",
                ))),
            }
        })
    }

    /// Writes to etcd only while this grant still holds there (etcd locks; see `fence.rs`).
    #[napi(ts_return_type = "Promise<FencedAnswer>")]
    pub fn fenced_txn<'env>(
        &self,
        env: &'env Env,
        writes: Vec<crate::fence::FencedWrite>,
    ) -> Result<PromiseRaw<'env, crate::fence::FencedAnswer>> {
        promise(env, crate::fence::fenced_txn(self.current(), writes))
    }

    /// Releases the lock; idempotent. Returns true when done, false when the release goes on
    /// and settles through the provider's channel with `id`.
    #[napi]
    pub fn release(&self, env: &Env, id: u32) -> Result<bool> {
        self.done.cancel();
        let held = self.take();
        let releasing = async move {
            match held {
                Some(h) => h.release().await,
                None => Ok(()),
            }
        };
        let Some(channel) = self.channel.upgrade() else {
            // The provider object is gone: nobody can be told; release in the background.
            napi::bindgen_prelude::spawn(async move {
                let _ = releasing.await;
            });
            return Ok(true);
        };
        match now_or_settle(&channel, id, releasing, |()| None) {
            Ok(done) => Ok(done.is_some()),
            Err(failure) => Err(failure.into_js(env)),
        }
    }
}

impl Drop for NativeHandle {
    fn drop(&mut self) {
        self.done.cancel();
        // Garbage-collected while still holding: the lock is released now (the held lock's own
        // drop does that), and the provider hears of it, to warn about the leak.
        let held = self
            .held
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(held) = held
            && !held.is_released()
            && let Some(channel) = self.channel.upgrade()
            && let Some(leaked) = channel.leaked.get()
        {
            leaked.call(
                held.target().to_owned(),
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        }
    }
}

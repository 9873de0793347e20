//! The interface every backend implements, and the wait helper they share.
//!
//! A backend turns an [`AcquireRequest`] into a held lock. Acquisition has two halves: a
//! synchronous half (validate, join the in-process queue) that runs in the caller's call, so
//! callers are served in call order, and an asynchronous half (wait for the queue, then the
//! server or OS) returned as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, Target};
use crate::held::{HeldCore, HeldSet};
use crate::lost::LostSignal;
use crate::options::Timeout;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which primitive, and which side of it, a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// An exclusive lock.
    Mutex,
    /// The shared (reader) side of a reader-writer lock.
    Read,
    /// The exclusive (writer) side of a reader-writer lock.
    Write,
    /// `permits` of the `max_count` permits of a semaphore, taken all or nothing.
    Semaphore {
        /// How many permits the semaphore has.
        max_count: u32,
        /// How many of them this request takes (1..=max_count; inspection ignores it).
        permits: u32,
    },
}

impl LockKind {
    /// A semaphore request for one of `max_count` permits.
    pub fn semaphore(max_count: u32) -> Self {
        LockKind::Semaphore {
            max_count,
            permits: 1,
        }
    }

    /// A semaphore's `(max_count, permits)`; `(1, 1)` for the other kinds (one holder, which
    /// takes all of it).
    pub fn counts(self) -> (u32, u32) {
        match self {
            LockKind::Semaphore { max_count, permits } => (max_count, permits),
            LockKind::Mutex | LockKind::Read | LockKind::Write => (1, 1),
        }
    }

    /// The primitive's name as error messages show it.
    pub fn primitive(self) -> &'static str {
        match self {
            LockKind::Mutex => "lock",
            LockKind::Read | LockKind::Write => "reader-writer lock",
            LockKind::Semaphore { .. } => "semaphore",
        }
    }
}

/// One acquire call, validated.
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    /// The lock's name, as the user gave it (non-empty).
    pub name: String,
    /// What to acquire.
    pub kind: LockKind,
    /// How long to wait.
    pub timeout: Timeout,
    /// Cancels the wait when fired (from a JS `AbortSignal`).
    pub cancel: Option<CancellationToken>,
    /// A per-acquire lease override, for backends with leases.
    pub lease: Option<Duration>,
    /// For backends with leases: whether the lease is renewed in the background while held
    /// (`true`), or ends after its length unless extended (`false`).
    pub auto_renew: bool,
}

impl AcquireRequest {
    /// The error target for this request on `backend`.
    pub fn target(&self, backend: &'static str) -> Target {
        Target::new(backend, self.kind.primitive(), self.name.clone())
    }
}

/// A lock that is held. Releasing is idempotent; dropping the last reference releases too.
///
/// A backend's held lock embeds a [`HeldCore`] (token, lost signal, how messages name it, the
/// released flag) and returns it from [`HeldLock::core`]; the common questions are answered from
/// it, and a backend overrides only what is its own (a lease, a descriptor, a release). It is
/// `Any`, so that a backend's own calls on its grants (etcd's fenced transaction) can find
/// their type behind a [`Held`].
pub trait HeldLock: std::any::Any + Send + Sync {
    /// The common half of this held lock.
    fn core(&self) -> &HeldCore;
    /// The fencing token of this grant: strictly greater than every earlier grant's of the name.
    fn fencing_token(&self) -> u64 {
        self.core().token()
    }
    /// Fires when the lock is known to be lost.
    fn lost(&self) -> &LostSignal {
        self.core().lost()
    }
    /// How messages name this lock, e.g. `file lock "orders:42"`.
    fn target(&self) -> &str {
        self.core().target()
    }
    /// Whether `release` has run (or the provider released it on close).
    fn is_released(&self) -> bool {
        self.core().is_released()
    }
    /// Whether the lock is held right now, as far as this process can tell without a round
    /// trip: not released, not lost, and, for backends with leases, its local deadline not
    /// passed (read from the clock at the call, so a process that was paused past its lease
    /// sees `false` before any timer of its own has run) and no connection it depends on in
    /// doubt. Check it synchronously before each step of work the lock protects.
    fn is_held(&self) -> bool {
        self.core().is_held()
    }
    /// What is left of the lease by this process's local deadline, for backends whose locks
    /// expire (zero once it passed); `None` for locks without a lease.
    fn lease_remaining(&self) -> Option<Duration> {
        None
    }
    /// Releases the lock. Never fails because the lock was already lost or released.
    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>>;
    /// Extends the lease to `lease` from now, for backends whose locks expire. A lock without a
    /// lease (file, PostgreSQL, memory) cannot expire while held, so the default does nothing.
    fn extend(self: Arc<Self>, lease: Duration) -> BoxFuture<'static, Result<()>> {
        let _ = lease;
        Box::pin(async { Ok(()) })
    }
    /// A new descriptor for the open file whose OS lock this is, for a child process to
    /// inherit so that the lock lives as long as the child does (`flock(1)`'s model), or `None`
    /// for backends whose lock is not held by a descriptor (all but the file backend) or a lock
    /// no longer held. The duplicate shares the lock: closing it never releases the lock while
    /// another descriptor of the same open file stays open.
    #[cfg(unix)]
    fn duplicate_descriptor(&self) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        None
    }
}

// Here rather than in `held`, beside the `HeldLock` it needs.
impl<T: HeldLock> HeldSet<T> {
    /// The first half of every provider's `close`: `closed` is cancelled (new acquires are
    /// refused and waits end), then every lock still alive is taken out of the set with its
    /// lost signal fired for `reason`, for the backend to release.
    pub fn close(&self, closed: &CancellationToken, reason: &str) -> Vec<Arc<T>> {
        closed.cancel();
        let held = self.drain();
        for h in &held {
            h.lost().fire(reason);
        }
        held
    }
}

/// What a backend reports about its connections and leases as it happens, for observers (the
/// `distlock:renewal-failure`, `distlock:disconnect` and `distlock:reconnect` channels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// A renewal of `name`'s lease got no answer either way; it is retried before the deadline.
    RenewalFailed {
        /// The lock's name.
        name: String,
        /// What happened, and what comes next.
        detail: String,
    },
    /// The connection to `server` dropped; the locks that depend on it are in doubt.
    Disconnected {
        /// The server, as messages name it.
        server: String,
    },
    /// The connection to `server` is back (after it had been up before).
    Reconnected {
        /// The server, as messages name it.
        server: String,
    },
    /// An acquire with no timeout has been unable to reach its store for `waited` (the store's
    /// last answer, if any, was before that) and goes on waiting: what it waits for, since
    /// nothing else would say (see `patience::STALL_AFTER`).
    Stalled {
        /// The lock, as messages name it (`redis lock "orders"`).
        lock: String,
        /// How long the store has been unreachable for this acquire.
        waited: Duration,
        /// The fault being ridden out.
        detail: String,
    },
}

/// Receives [`BackendEvent`]s, on whatever thread the backend runs them; it must not block.
pub type Observer = Arc<dyn Fn(BackendEvent) + Send + Sync>;

/// A snapshot of a lock's state, for monitoring: it may be stale by the time it is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether an acquire would have to wait: the lock (or, for a reader-writer lock, either
    /// side) is held; for a semaphore, every permit is taken.
    pub held: bool,
    /// How many holders there are, where the backend can count them.
    pub holders: Option<u32>,
    /// The longest remaining lease among the holders, for backends with leases.
    pub lease_remaining: Option<Duration>,
    /// The last fencing token granted for the name, where the backend keeps one per name.
    pub fencing_token: Option<u64>,
}

/// A held lock behind a shared pointer.
pub type Held = Arc<dyn HeldLock>;

/// What the asynchronous half of an acquire resolves to: the lock, or `None` when the timeout
/// ran out (busy is data, not an error).
pub type Acquiring = BoxFuture<'static, Result<Option<Held>>>;

/// A lock backend: one per provider.
pub trait Backend: Send + Sync + 'static {
    /// The backend's short name (`file`, `postgres`, `redis`, `memory`).
    fn name(&self) -> &'static str;
    /// Validates the request and joins the queue now; the returned future does the waiting.
    fn acquire(&self, request: AcquireRequest) -> Result<Acquiring>;
    /// Looks at the lock of `name` (`kind` picks the lock family or the semaphore) without
    /// acquiring it.
    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>>;
    /// Whether `close` has been called.
    fn is_closed(&self) -> bool;
    /// Rejects pending waits, releases every held lock (their lost signals fire) and frees
    /// connections. Idempotent.
    fn close(&self) -> BoxFuture<'static, Result<()>>;
    /// Offers the host's event loop: a network backend may then do the socket I/O of calls
    /// made on the loop thread there. The default ignores it.
    /// Sets who hears this backend's [`BackendEvent`]s (the first call wins). Backends with
    /// nothing to report ignore it.
    fn observe(&self, observer: Observer) {
        let _ = observer;
    }

    fn attach(&self, reactor: Arc<dyn crate::reactor::Reactor>) {
        drop(reactor);
    }
}

/// How a raced wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<T> {
    /// The awaited thing happened first.
    Done(T),
    /// The deadline passed first.
    TimedOut,
    /// The caller's cancel token fired first.
    Cancelled,
    /// The provider was closed first.
    Closed,
}

impl<T> Waited<T> {
    /// The value if the awaited thing happened, else why not.
    pub fn done(self) -> std::result::Result<T, Interrupted> {
        match self {
            Waited::Done(v) => Ok(v),
            Waited::TimedOut => Err(Interrupted::TimedOut),
            Waited::Cancelled => Err(Interrupted::Cancelled),
            Waited::Closed => Err(Interrupted::Closed),
        }
    }
}

/// Why a wait ended without its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupted {
    /// The deadline passed.
    TimedOut,
    /// The caller cancelled.
    Cancelled,
    /// The provider was closed.
    Closed,
}

impl Interrupted {
    /// What an acquire reports for this interruption: a timeout is `Ok(None)` (busy is data),
    /// a cancel is [`Error::Cancelled`], a close is [`Error::Closed`].
    pub fn into_outcome<T>(
        self,
        request: &AcquireRequest,
        backend: &'static str,
    ) -> Result<Option<T>> {
        match self {
            Interrupted::TimedOut => Ok(None),
            Interrupted::Cancelled => Err(Error::Cancelled {
                target: request.target(backend),
            }),
            Interrupted::Closed => Err(Error::Closed {
                backend,
                detail: format!("; stopped waiting for {}", request.target(backend)),
            }),
        }
    }
}

/// Races `fut` against an optional deadline, the caller's optional cancel token and the
/// provider's close token. A cancel or close that already happened wins over a ready `fut`; a
/// deadline in the past does not (a zero timeout is one attempt, not no attempt).
pub async fn race<F: Future>(
    fut: F,
    deadline: Option<Instant>,
    cancel: Option<&CancellationToken>,
    closed: &CancellationToken,
) -> Waited<F::Output> {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        match cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = cancelled => Waited::Cancelled,
        _ = closed.cancelled() => Waited::Closed,
        out = fut => Waited::Done(out),
        _ = sleep => Waited::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn race_outcomes() {
        let open = CancellationToken::new();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            race(async { 7 }, Some(Instant::now()), None, &open).await,
            Waited::Done(7)
        );
        assert_eq!(
            race(std::future::pending::<()>(), Some(soon), None, &open).await,
            Waited::TimedOut
        );
        let token = CancellationToken::new();
        token.cancel();
        assert_eq!(
            race(std::future::pending::<()>(), None, Some(&token), &open).await,
            Waited::Cancelled
        );
        let closed = CancellationToken::new();
        closed.cancel();
        assert_eq!(
            race(std::future::pending::<()>(), None, None, &closed).await,
            Waited::Closed
        );
    }
}

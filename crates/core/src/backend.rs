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
use crate::options::{Timeout, validate_name};

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

/// The half of a provider every backend keeps the same way: its name, its close token and the
/// locks it holds. A backend's provider embeds one and returns it from [`Backend::core`]; the
/// common steps (the closed check before an acquire, `is_closed`, `held_count`) are answered
/// from it, and the backend supplies only what is its own.
#[derive(Debug)]
pub struct ProviderCore<H> {
    backend: &'static str,
    closed: CancellationToken,
    held: HeldSet<H>,
}

impl<H> ProviderCore<H> {
    /// The common half of an open provider of `backend` (its short name, as errors show it).
    pub fn new(backend: &'static str) -> Self {
        Self {
            backend,
            closed: CancellationToken::new(),
            held: HeldSet::default(),
        }
    }

    /// Cancelled when the provider is closed: new acquires are refused and waits end.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// The locks held through this provider now.
    pub fn held(&self) -> &HeldSet<H> {
        &self.held
    }
}

impl<H: HeldLock> ProviderCore<H> {
    /// The first half of every provider's `close`: the close token is cancelled (new acquires
    /// are refused and waits end), then every lock still alive is taken out of the set with its
    /// lost signal fired for `reason`, for the backend to release.
    pub fn close(&self, reason: &str) -> Vec<Arc<H>> {
        self.closed.cancel();
        let held = self.held.drain();
        for h in &held {
            h.lost().fire(reason);
        }
        held
    }
}

/// What [`Backend`]'s provided methods read from a [`ProviderCore`], whatever its held lock type
/// (so that `Backend` stays usable as `dyn Backend`).
pub trait ProviderState: Send + Sync {
    /// The backend's short name.
    fn backend(&self) -> &'static str;
    /// The provider's close token.
    fn closed(&self) -> &CancellationToken;
    /// How many locks are held through the provider now.
    fn held_count(&self) -> usize;
}

impl<H: Send + Sync> ProviderState for ProviderCore<H> {
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    fn held_count(&self) -> usize {
        self.held.len()
    }
}

/// The checks every acquire passes before any queue is joined: the name, and that `backend`'s
/// provider (whose close token is `closed`) is open.
pub fn check_open(
    req: &AcquireRequest,
    backend: &'static str,
    closed: &CancellationToken,
) -> Result<()> {
    validate_name(&req.name)?;
    if closed.is_cancelled() {
        return Err(Error::Closed {
            backend,
            detail: format!("; cannot acquire {}", req.target(backend)),
        });
    }
    Ok(())
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
///
/// A backend embeds a [`ProviderCore`] and returns it from [`Backend::core`]; what every
/// backend does the same way is provided here from it, and the backend supplies only what is
/// its own: [`Backend::begin`] (its part of an acquire), `inspect` and `close`.
pub trait Backend: Send + Sync + 'static {
    /// The common half of this provider.
    fn core(&self) -> &dyn ProviderState;
    /// The backend's short name (`file`, `postgres`, `redis`, `memory`).
    fn name(&self) -> &'static str {
        self.core().backend()
    }
    /// Validates the request and joins the queue now; the returned future does the waiting.
    /// The name is checked and a closed provider refuses here, once for every backend; the
    /// rest is the backend's [`Backend::begin`]. Not meant to be overridden.
    fn acquire(&self, request: AcquireRequest) -> Result<Acquiring> {
        let core = self.core();
        check_open(&request, core.backend(), core.closed())?;
        self.begin(request)
    }
    /// The backend's own half of [`Backend::acquire`], for a request whose name is valid on an
    /// open provider: its own checks, then it joins the in-process queue now; the returned
    /// future does the waiting. Called by `acquire` only.
    fn begin(&self, request: AcquireRequest) -> Result<Acquiring>;
    /// Looks at the lock of `name` (`kind` picks the lock family or the semaphore) without
    /// acquiring it.
    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>>;
    /// Whether `close` has been called.
    fn is_closed(&self) -> bool {
        self.core().closed().is_cancelled()
    }
    /// Locks held through this provider now.
    fn held_count(&self) -> usize {
        self.core().held_count()
    }
    /// Rejects pending waits, releases every held lock (their lost signals fire) and frees
    /// connections. Idempotent.
    fn close(&self) -> BoxFuture<'static, Result<()>>;
    /// Sets who hears this backend's [`BackendEvent`]s (the first call wins). Backends with
    /// nothing to report ignore it.
    fn observe(&self, observer: Observer) {
        let _ = observer;
    }
    /// Offers the host's event loop: a network backend may then do the socket I/O of calls
    /// made on the loop thread there. The default ignores it.
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

    fn req(name: &str) -> AcquireRequest {
        AcquireRequest {
            name: name.into(),
            kind: LockKind::Mutex,
            timeout: Timeout::Forever,
            cancel: None,
            lease: None,
            auto_renew: true,
        }
    }

    #[test]
    fn check_open_refuses_a_bad_name_then_a_closed_provider() {
        let core: ProviderCore<()> = ProviderCore::new("file");
        assert!(check_open(&req("a"), core.backend(), core.closed()).is_ok());
        let e = check_open(&req(""), "file", core.closed()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    argument: "name",
                    ..
                }
            ),
            "{e}"
        );
        core.closed().cancel();
        let e = check_open(&req("a"), core.backend(), core.closed()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the file lock provider is closed; cannot acquire file lock \"a\""
        );
        let e = check_open(&req(""), "file", core.closed()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }),
            "the name is checked first: {e}"
        );
    }

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

//! The contract every backend keeps, as Rust tests (feature `testing`): the twin of
//! `__test__/contract.spec.ts`, run by each backend crate's `tests/contract.rs` against its real
//! server, and by the memory backend here.
//!
//! A backend crate calls [`run`] with a [`Subject`]: a way to open providers on one store (two
//! providers stand in for two processes: the in-process queue of one provider never hides a
//! missing exclusion on the store) and what the backend supports. Every check panics with a
//! message that names the rule it found broken.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{AcquireRequest, Backend, Held, LockKind};
use crate::error::{Error, Result};
use crate::options::Timeout;

/// What a contract run needs of a backend.
pub struct Subject {
    /// Opens a provider on the store under test; each call a new one.
    pub open: Box<dyn Fn() -> Arc<dyn Backend> + Send + Sync>,
    /// A prefix for the names the run uses, unique to this run (the store may be shared).
    pub prefix: String,
    /// Whether the backend has reader-writer locks (MySQL does not). Where it has none, the
    /// contract checks that asking for one is refused up front, as an invalid argument.
    pub read_write: bool,
    /// Whether the backend has semaphores (RedLock does not); refused up front where not.
    pub semaphore: bool,
    /// Whether the providers `open` returns share one store that outlives each of them (every
    /// backend but memory, whose store is its provider: there `open` returns handles of one
    /// provider: `open` returns a new one, each rule uses it for both roles, and what needs a
    /// second store is skipped).
    pub shared_store: bool,
}

/// Two providers on the store: two processes' worth where the store is shared.
fn pair(s: &Subject) -> (Arc<dyn Backend>, Arc<dyn Backend>) {
    let a = (s.open)();
    let b = if s.shared_store {
        (s.open)()
    } else {
        a.clone()
    };
    (a, b)
}

/// How long any single step of the contract may take before it counts as a hang.
const STEP: Duration = Duration::from_secs(20);

fn request(name: &str, kind: LockKind, timeout: Timeout) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        kind,
        timeout,
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

async fn acquire(p: &dyn Backend, req: AcquireRequest) -> Result<Option<Held>> {
    let what = format!("acquiring {:?} {:?}", req.name, req.kind);
    let fut = p.acquire(req)?;
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not settle within {STEP:?}"),
    }
}

async fn held(p: &dyn Backend, name: &str, kind: LockKind, timeout: Timeout) -> Held {
    match acquire(p, request(name, kind, timeout)).await {
        Ok(Some(h)) => h,
        other => panic!(
            "{name:?} {kind:?} should be granted, got {:?}",
            other.map(|h| h.map(|_| "held"))
        ),
    }
}

async fn busy(p: &dyn Backend, name: &str, kind: LockKind, why: &str) {
    match acquire(p, request(name, kind, Timeout::Zero)).await {
        Ok(None) => {}
        Ok(Some(_)) => panic!("{why}: a try of {name:?} {kind:?} was granted"),
        Err(e) => panic!("{why}: a try of {name:?} {kind:?} failed instead of reporting busy: {e}"),
    }
}

async fn release(h: Held) {
    let target = h.target().to_owned();
    match tokio::time::timeout(STEP, h.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("releasing {target} failed: {e}"),
        Err(_) => panic!("releasing {target} did not settle within {STEP:?}"),
    }
}

async fn close(p: &dyn Backend) {
    match tokio::time::timeout(STEP, p.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("close failed: {e}"),
        Err(_) => panic!("close did not settle within {STEP:?}"),
    }
}

/// Runs every rule of the contract against `subject`.
pub async fn run(subject: &Subject) {
    excludes_and_reports_busy_as_none(subject).await;
    hands_over_in_arrival_order_with_increasing_tokens(subject).await;
    a_cancel_ends_a_wait_and_leaves_nothing_held(subject).await;
    close_rejects_waits_and_fires_lost(subject).await;
    bad_input_is_refused_and_leaves_nothing_locked(subject).await;
    if subject.read_write {
        readers_share_and_writers_exclude(subject).await;
    } else {
        refused(subject, &[LockKind::Read, LockKind::Write]).await;
    }
    if subject.semaphore {
        a_semaphore_admits_max_count_permits(subject).await;
    } else {
        refused(subject, &[LockKind::semaphore(3)]).await;
    }
}

/// A primitive the backend lacks is refused when asked for, as an invalid argument (the
/// documented refusal), never a busy result or a wait; the name stays free for a mutex.
pub async fn refused(s: &Subject, kinds: &[LockKind]) {
    let a = (s.open)();
    let name = format!("{}absent", s.prefix);
    for &kind in kinds {
        match a.acquire(request(&name, kind, Timeout::Zero)) {
            Err(Error::InvalidArgument { .. }) => {}
            Err(e) => panic!("{kind:?} is not offered, so it should be an invalid argument: {e}"),
            Ok(_) => panic!("{kind:?} is not offered, yet an acquire of it was accepted"),
        }
    }
    let h = held(&*a, &name, LockKind::Mutex, Timeout::Zero).await;
    release(h).await;
    close(&*a).await;
}

/// Two providers exclude each other; a try of a held lock is `None`; a bounded wait ends with
/// `None` no sooner than its timeout; release is idempotent and frees the lock.
pub async fn excludes_and_reports_busy_as_none(s: &Subject) {
    let (a, b) = pair(s);
    let name = format!("{}excl", s.prefix);
    let h = held(&*a, &name, LockKind::Mutex, Timeout::Forever).await;
    assert!(h.is_held(), "a fresh grant reports is_held");
    busy(&*b, &name, LockKind::Mutex, "another provider holds it").await;
    busy(
        &*a,
        &name,
        LockKind::Mutex,
        "the same provider holds it (not reentrant)",
    )
    .await;
    let t0 = Instant::now();
    let waited = acquire(
        &*b,
        request(
            &name,
            LockKind::Mutex,
            Timeout::After(Duration::from_millis(300)),
        ),
    )
    .await;
    assert!(
        matches!(waited, Ok(None)),
        "a bounded wait on a held lock ends busy: {:?}",
        waited.map(|h| h.is_some())
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "a bounded wait ended before its timeout"
    );
    release(h.clone()).await;
    assert!(h.is_released() && !h.is_held(), "a released lock says so");
    release(h).await;
    let again = held(&*b, &name, LockKind::Mutex, Timeout::Zero).await;
    release(again).await;
    close(&*a).await;
    close(&*b).await;
}

/// Waiters of one provider are served in the order they called; each grant's fencing token is
/// larger than the one before it, across providers too.
pub async fn hands_over_in_arrival_order_with_increasing_tokens(s: &Subject) {
    let (a, b) = pair(s);
    let name = format!("{}fifo", s.prefix);
    let first = held(&*b, &name, LockKind::Mutex, Timeout::Forever).await;
    let mut last = first.fencing_token();
    let waits: Vec<_> = (0..4)
        .map(|_| a.acquire(request(&name, LockKind::Mutex, Timeout::Forever)))
        .collect::<Result<_>>()
        .unwrap_or_else(|e| panic!("joining the queue failed: {e}"));
    release(first).await;
    for (i, w) in waits.into_iter().enumerate() {
        let h = match tokio::time::timeout(STEP, w).await {
            Ok(Ok(Some(h))) => h,
            other => panic!(
                "waiter {i} was not granted: {:?}",
                other.map(|r| r.map(|h| h.is_some()))
            ),
        };
        assert!(
            h.fencing_token() > last,
            "waiter {i}'s token {} is not above {last}",
            h.fencing_token()
        );
        last = h.fencing_token();
        release(h).await;
    }
    close(&*a).await;
    close(&*b).await;
}

/// A cancelled wait ends with [`Error::Cancelled`] and holds nothing afterwards.
pub async fn a_cancel_ends_a_wait_and_leaves_nothing_held(s: &Subject) {
    let (a, b) = pair(s);
    let name = format!("{}cancel", s.prefix);
    let h = held(&*a, &name, LockKind::Mutex, Timeout::Forever).await;
    let token = CancellationToken::new();
    let mut req = request(&name, LockKind::Mutex, Timeout::Forever);
    req.cancel = Some(token.clone());
    let wait = b
        .acquire(req)
        .unwrap_or_else(|e| panic!("joining the queue failed: {e}"));
    let fire = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fire.cancel();
    });
    match tokio::time::timeout(STEP, wait).await {
        Ok(Err(Error::Cancelled { .. })) => {}
        other => panic!(
            "a cancelled wait should end Cancelled: {:?}",
            other.map(|r| r.map(|h| h.is_some()))
        ),
    }
    release(h).await;
    let after = held(&*a, &name, LockKind::Mutex, Timeout::Zero).await;
    release(after).await;
    close(&*a).await;
    close(&*b).await;
}

/// `close` rejects a pending wait with [`Error::Closed`], fires the held locks' lost signals,
/// frees them for others, and refuses new acquires.
pub async fn close_rejects_waits_and_fires_lost(s: &Subject) {
    let (a, b) = pair(s);
    let (name, other) = (format!("{}close", s.prefix), format!("{}close2", s.prefix));
    let h = held(&*a, &name, LockKind::Mutex, Timeout::Forever).await;
    let blocker = held(&*b, &other, LockKind::Mutex, Timeout::Forever).await;
    let wait = a
        .acquire(request(&other, LockKind::Mutex, Timeout::Forever))
        .unwrap_or_else(|e| panic!("joining the queue failed: {e}"));
    let waiting = tokio::spawn(wait);
    tokio::time::sleep(Duration::from_millis(50)).await;
    close(&*a).await;
    match tokio::time::timeout(STEP, waiting).await {
        Ok(Ok(Err(Error::Closed { .. }))) => {}
        other => panic!(
            "a wait pending at close should end Closed: {:?}",
            other.map(|r| r.map(|r| r.map(|h| h.is_some())))
        ),
    }
    assert!(h.lost().is_lost(), "close fires a held lock's lost signal");
    assert!(!h.is_held(), "a lock closed away is not held");
    assert!(a.is_closed(), "is_closed after close");
    assert!(
        matches!(
            a.acquire(request(&name, LockKind::Mutex, Timeout::Zero)),
            Err(Error::Closed { .. })
        ),
        "a closed provider refuses acquires"
    );
    if s.shared_store {
        let freed = held(
            &*b,
            &name,
            LockKind::Mutex,
            Timeout::After(Duration::from_secs(10)),
        )
        .await;
        release(freed).await;
    }
    release(blocker).await;
    close(&*b).await;
}

/// An empty name is refused with an error that names it; nothing stays locked.
pub async fn bad_input_is_refused_and_leaves_nothing_locked(s: &Subject) {
    let a = (s.open)();
    match a.acquire(request("", LockKind::Mutex, Timeout::Zero)) {
        Err(Error::InvalidArgument {
            argument: "name", ..
        }) => {}
        Err(e) => panic!("an empty name should be an invalid argument named `name`, got {e}"),
        Ok(_) => panic!("an empty name was accepted"),
    }
    let name = format!("{}bad", s.prefix);
    let h = held(&*a, &name, LockKind::Mutex, Timeout::Zero).await;
    release(h).await;
    close(&*a).await;
}

/// Readers share; a writer excludes readers and writers, across providers.
pub async fn readers_share_and_writers_exclude(s: &Subject) {
    let (a, b) = pair(s);
    let name = format!("{}rw", s.prefix);
    let r1 = held(&*a, &name, LockKind::Read, Timeout::Zero).await;
    let r2 = held(&*b, &name, LockKind::Read, Timeout::Zero).await;
    busy(&*b, &name, LockKind::Write, "readers hold it").await;
    release(r1).await;
    release(r2).await;
    let w = held(&*a, &name, LockKind::Write, Timeout::Zero).await;
    busy(&*b, &name, LockKind::Read, "a writer holds it").await;
    busy(&*b, &name, LockKind::Write, "a writer holds it").await;
    release(w).await;
    close(&*a).await;
    close(&*b).await;
}

/// A semaphore of 3 admits 3 holders across providers, refuses the 4th, and takes several
/// permits all or none.
pub async fn a_semaphore_admits_max_count_permits(s: &Subject) {
    let (a, b) = pair(s);
    let name = format!("{}sem", s.prefix);
    let one = LockKind::semaphore(3);
    let h1 = held(&*a, &name, one, Timeout::Zero).await;
    let h2 = held(&*b, &name, one, Timeout::Zero).await;
    let two = LockKind::Semaphore {
        max_count: 3,
        permits: 2,
    };
    busy(&*b, &name, two, "one permit of three is left").await;
    let h3 = held(&*b, &name, one, Timeout::Zero).await;
    busy(&*a, &name, one, "all three permits are taken").await;
    release(h1).await;
    release(h2).await;
    let pair = held(&*a, &name, two, Timeout::Zero).await;
    busy(&*b, &name, one, "two permits and one are taken").await;
    release(pair).await;
    release(h3).await;
    close(&*a).await;
    close(&*b).await;
}

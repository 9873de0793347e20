//! distlock-etcd: locks on etcd v3 — keys with leases, ordered by create revision.
//!
//! - Layout (`keys.rs`): one key per waiting or holding acquire, `<keyPrefix><name>/<marker><unique>`,
//!   put with a lease and only if absent (a transaction comparing `create_revision == 0`).
//! - Order: the etcd `concurrency` recipe. Keys of a name are ordered by create revision. A
//!   mutex or writer holds when no key of the lock family, and no foreign key (one distlock did
//!   not write: `etcdctl lock`, the Lock RPC), has a smaller create revision; a reader holds
//!   when no writer key and no foreign key has; a semaphore acquire holds when no foreign key
//!   has and the permits of every semaphore key with a create revision up to its own sum to at
//!   most `maxCount` (strict FIFO: a big request is not overtaken by smaller ones behind it).
//!   Writer preference follows from the order: a queued writer holds back the readers that came
//!   after it. etcd's own recipe waits for every key before its own, distlock's included, so
//!   the two exclude each other both ways (`keys.rs` has the table).
//! - Waiting, without polling: a waiter watches (etcd Watch, deletes only) the newest key before
//!   it that it must wait for — for a writer any key of the family or foreign key, for a reader
//!   a writer or foreign key, for a semaphore a foreign key — and checks again when it is
//!   deleted. A semaphore waiter with none of those watches the semaphore's keys for deletes.
//!   A watch that breaks or is cancelled (compaction, lost leader) leads to a fresh check, not
//!   to a missed wake-up.
//! - In process: callers of one process queue first in the core's [`FairQueue`] (one per name,
//!   like the other backends), so a process puts at most one key per name in etcd at a time for
//!   a mutex (a semaphore: one per permit holder, a reader-writer lock: one per reader), and its
//!   callers are served in call order. Between processes, etcd's revision order is FIFO.
//! - `maxCount`: each acquire trusts its own. Callers that disagree each judge the keys by their
//!   own count (a key's value records only its permits); within one process a second count for
//!   the same name is refused.
//! - Fencing token: the holder key's create revision, which only grows in an etcd cluster.
//! - Leases (`session.rs`): one shared lease per provider (TTL `leaseMs`, granted on first use,
//!   kept alive every TTL/3 with `LeaseKeepAlive`) carries every auto-renewed acquire. An
//!   acquire with its own `lease`, or with `auto_renew: false`, gets a lease of its own; one
//!   without auto-renewal is kept alive only while it waits and then ends after its TTL unless
//!   `extend` is called. etcd cannot change a lease's TTL, so `extend(d)` sends one keep-alive
//!   (the lease then has its full TTL again) and accepts only `d` up to the TTL.
//! - Lost: a lock's signal fires when its lease is reported gone, when no keep-alive succeeded
//!   by the local deadline (a timer on the monotonic clock: the send instant of the last
//!   successful keep-alive plus the TTL, less 1 %; this is before the server can expire the
//!   lease), or when a check at keep-alive time finds its key deleted by someone else. After the
//!   shared lease is lost, the next acquire grants a new one.
//! - Release deletes the key (an own lease is revoked instead, taking the key with it), within
//!   `opTimeoutMs`, and always reports success: a lost lock releases quietly, and a delete that
//!   gets no answer in time goes on in the background (retried for up to five minutes — the
//!   shared lease lives as long as the provider, so it would not end the key), after which the
//!   key is left to its lease. An own lease that cannot be revoked ends after its TTL (it is no
//!   longer kept alive).
//! - Giving up: a waiter that times out, is cancelled or is closed deletes its key in the
//!   background, so it does not hold back its successors until its lease ends; a grant that
//!   raced the give-up is deleted the same way. A try (`timeout` 0) creates its key, checks
//!   once, and deletes the key before answering busy.
//! - Errors: an unreachable cluster, refused credentials or a refused request is a backend
//!   error naming the lock and the endpoints, never "busy". Waiters retry transient trouble
//!   (pausing 50 ms, doubling to 1 s) for as long as their timeout lasts; a timeout that ends
//!   while the last request failed, or before etcd answered at all, reports that as a backend
//!   error. Not retried: refused credentials or permissions, and a try (`timeout` 0).
//! - Connection (`pool.rs`, `grpc/`): our own thin gRPC client (hand-written messages, tonic's
//!   generic client, no code generation), one connection per endpoint, one in use at a time; a
//!   request that fails in a way a retry may cure moves the provider to the next endpoint and
//!   is retried there within its bound (balancing over every endpoint keeps sending a share of
//!   requests to a dead member). User/password authentication (a refused token is replaced by
//!   authenticating again) and TLS through rustls (ring): a private CA, or the system's roots,
//!   and an optional client certificate. Requests carry "require leader", so a member cut off
//!   from its cluster fails them fast. HTTP/2 pings every 10 s find dead connections.
//!
//! # Time bounds
//!
//! | call | settles by |
//! |---|---|
//! | `acquire` with `timeout` T > 0 | T (then the waiter's key is deleted in the background) |
//! | `acquire` with `timeout` 0 (try) | `opTimeoutMs` for connecting, the lease, the attempt and the delete of a busy try's key |
//! | `release` | `opTimeoutMs` |
//! | `inspect`, `extend` | `opTimeoutMs` |
//! | `close` | 5 s for the releases, then `opTimeoutMs` to revoke the shared lease |
//!
//! [`FairQueue`]: distlock_core::FairQueue

mod error;
#[doc(hidden)]
pub mod grpc;
mod keys;
mod options;
mod pool;
mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Cause, Error, Held, HeldLock,
    HeldSet, Interrupted, LockInfo, LockKind, LostSignal, Observer, Registry, Result,
    SHARED_CAPACITY, Target, Ticket, Timeout, Waited, race,
};
use grpc::wire::{
    Compare, FILTER_NO_PUT, KeyValue, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    prefix_end,
};
use tokio::time::Instant;

use error::Trouble;
use keys::{Class, Keys, Side, Span};
pub use options::{EtcdOptions, MAX_LEASE_MS, MIN_LEASE_MS};
use pool::Pool;
use session::Session;

/// The backend's name in errors and logs.
pub const BACKEND: &str = "etcd";

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain field updates: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A lock provider on one etcd cluster.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

struct Inner {
    opts: EtcdOptions,
    label: String,
    pool: Arc<Pool>,
    /// The provider's shared lease (granted on first use, again after it is lost).
    shared: tokio::sync::Mutex<Option<Arc<Session>>>,
    locks: Registry<String, ()>,
    semaphores: Registry<String, ()>,
    held: HeldSet<EtcdHeld>,
    closed: CancellationToken,
    runtime: OnceLock<tokio::runtime::Handle>,
    observer: OnceLock<Observer>,
}

/// Which lease an acquire hangs on.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Shared,
    Own { ttl: Duration, renew: bool },
}

/// One acquire's place in etcd.
struct Waiter {
    keys: Keys,
    side: Side,
    session: Option<Arc<Session>>,
    key: Option<String>,
    rev: Option<i64>,
    last_error: Option<String>,
    /// Whether etcd answered a request of this acquire.
    answered: bool,
}

/// What one step of a wait found.
enum Step {
    Granted(i64),
    Busy,
    Again,
}

impl EtcdBackend {
    /// A provider with these options. Connects lazily, on first use.
    pub fn new(opts: EtcdOptions) -> Result<Self> {
        opts.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                label: opts.label(),
                pool: Arc::new(Pool::new(&opts)),
                opts,
                shared: tokio::sync::Mutex::new(None),
                locks: Registry::default(),
                semaphores: Registry::default(),
                held: HeldSet::default(),
                closed: CancellationToken::new(),
                runtime: OnceLock::new(),
                observer: OnceLock::new(),
            }),
        })
    }

    /// Locks held through this provider now.
    pub fn held_count(&self) -> usize {
        self.inner.held.len()
    }
}

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn acquire(&self, req: AcquireRequest) -> Result<Acquiring> {
        distlock_core::validate_name(&req.name)?;
        let inner = self.inner.clone();
        if inner.closed.is_cancelled() {
            return Err(Error::Closed {
                backend: BACKEND,
                detail: format!("; cannot acquire {}", req.target(BACKEND)),
            });
        }
        let own_ttl = req.lease.map(options::request_lease).transpose()?;
        let plan = match (own_ttl, req.auto_renew) {
            (None, true) => Plan::Shared,
            (ttl, renew) => Plan::Own {
                ttl: ttl.unwrap_or(inner.opts.lease),
                renew,
            },
        };
        let prefix = &inner.opts.key_prefix;
        let (keys, side, entry, weight, max) = match req.kind {
            LockKind::Mutex | LockKind::Write | LockKind::Read => {
                let entry = inner.locks.entry(&req.name, SHARED_CAPACITY, || ());
                let (side, weight) = if req.kind == LockKind::Read {
                    (Side::Reader, 1)
                } else {
                    (Side::Writer, SHARED_CAPACITY)
                };
                (Keys::lock(prefix, &req.name), side, entry, weight, 0)
            }
            LockKind::Semaphore { max_count, permits } => {
                let entry = inner
                    .semaphores
                    .entry(&req.name, u64::from(max_count), || ());
                if entry.queue.capacity() != u64::from(max_count) {
                    return Err(Error::invalid(
                        "maxCount",
                        format!(
                            "of {} is {max_count}, but this process already uses it with maxCount {}",
                            req.target(BACKEND),
                            entry.queue.capacity()
                        ),
                    ));
                }
                (
                    Keys::semaphore(prefix, &req.name),
                    Side::Permits(permits),
                    entry,
                    u64::from(permits),
                    max_count,
                )
            }
        };
        let ticket = entry.queue.enqueue(weight);
        let waiter = Waiter {
            keys,
            side,
            session: None,
            key: None,
            rev: None,
            last_error: None,
            answered: false,
        };
        Ok(Box::pin(async move {
            inner.acquire(req, plan, waiter, max, entry, ticket).await
        }))
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move {
            distlock_core::validate_name(&name)?;
            inner.inspect(&name, kind).await
        })
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.closed.cancel();
            let mut releases = tokio::task::JoinSet::new();
            for h in inner.held.drain() {
                h.lost.fire("the lock provider was closed");
                releases.spawn(async move { h.release_now().await });
            }
            // One bound for the whole close, `opTimeoutMs`, whatever the servers do: the releases
            // and the revoke of the shared lease go out together (revoking it deletes the keys
            // on it anyway), not one bound after the other.
            let bound = inner.opts.op_timeout;
            let shared = inner.shared.lock().await.take();
            let revoke = async {
                if let Some(s) = &shared {
                    s.revoke(&inner.pool, bound).await;
                }
            };
            let _ = tokio::time::timeout(bound, async {
                tokio::join!(releases.join_all(), revoke);
            })
            .await;
            Ok(())
        })
    }

    fn observe(&self, observer: Observer) {
        let _ = self.inner.observer.set(observer);
    }
}

impl Inner {
    fn cause(&self, detail: &str, server: Option<&str>) -> Cause {
        Cause {
            server: Some(server.unwrap_or(&self.label).to_owned()),
            message: Some(detail.to_owned()),
            ..Cause::default()
        }
        .with_os_error_in(detail)
    }

    fn backend_error(&self, what: &str, target: &Target, detail: &str) -> Error {
        self.trouble_error(what, target, &Trouble::transient(detail.to_owned()))
    }

    fn trouble_error(&self, what: &str, target: &Target, t: &Trouble) -> Error {
        let server = t.server.as_deref();
        Error::backend(
            BACKEND,
            format!(
                "{what} {target} on {}: {}",
                server.unwrap_or(&self.label),
                t.message
            ),
            self.cause(&t.message, server),
        )
    }

    /// A lease for `plan`: the shared one while it lives, else a new one.
    async fn session_for(&self, plan: Plan) -> std::result::Result<Arc<Session>, Trouble> {
        let observer = self.observer.get().cloned();
        match plan {
            Plan::Shared => {
                let mut shared = self.shared.lock().await;
                if let Some(s) = shared.as_ref()
                    && s.is_live()
                {
                    return Ok(s.clone());
                }
                let s = session::grant(
                    &self.pool,
                    self.opts.lease,
                    true,
                    true,
                    &self.closed,
                    observer,
                )
                .await?;
                *shared = Some(s.clone());
                Ok(s)
            }
            Plan::Own { ttl, .. } => {
                // Kept alive while it waits; one without auto-renewal stops at the grant.
                session::grant(&self.pool, ttl, true, false, &self.closed, observer).await
            }
        }
    }

    fn interrupted_outcome(
        &self,
        why: Interrupted,
        w: &Waiter,
        req: &AcquireRequest,
    ) -> Result<Option<Held>> {
        if why == Interrupted::TimedOut {
            // Busy only if etcd said so: a timeout without an answer is trouble, not a lock.
            let detail = match (&w.last_error, w.answered) {
                (Some(detail), _) => Some(detail.clone()),
                (None, false) => Some(String::from("no answer from etcd")),
                (None, true) => None,
            };
            if let Some(detail) = detail {
                return Err(self.backend_error(
                    "acquiring",
                    &req.target(BACKEND),
                    &format!("the timeout ran out while etcd could not be reached: {detail}"),
                ));
            }
        }
        why.into_outcome(req, BACKEND)
    }

    async fn acquire(
        self: Arc<Self>,
        req: AcquireRequest,
        plan: Plan,
        mut w: Waiter,
        max: u32,
        entry: Arc<Entry<()>>,
        mut ticket: Ticket,
    ) -> Result<Option<Held>> {
        let _ = self.runtime.get_or_init(tokio::runtime::Handle::current);
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        let cancel = req.cancel.as_ref();
        if !ticket.is_granted()
            && let Err(why) = race(ticket.granted(), deadline, cancel, &self.closed)
                .await
                .done()
        {
            return why.into_outcome(&req, BACKEND);
        }
        let once = req.timeout == Timeout::Zero;
        // A try gets one attempt, bounded by the request timeout instead of none at all.
        let bound = if once {
            Some(start + self.opts.op_timeout)
        } else {
            deadline
        };
        let waiting = self.wait_turn(&mut w, plan, once, max);
        let outcome = race(waiting, bound, cancel, &self.closed).await;
        let waited_us = start.elapsed().as_micros() as u64;
        let result = match outcome {
            Waited::Done(Ok(Some(rev))) => match (w.session.take(), w.key.take()) {
                (Some(session), Some(key)) => {
                    let held = self.grant(&req, plan, session, key, rev, entry, ticket);
                    tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, token = rev, waited_us, "acquired");
                    return Ok(Some(held));
                }
                // Not reached: a granted waiter has both.
                _ => Err(self.backend_error(
                    "acquiring",
                    &req.target(BACKEND),
                    "internal error: granted without a key",
                )),
            },
            Waited::Done(Ok(None)) => {
                // Within what is left of the try's budget; a delete that needs longer goes on
                // in the background.
                let left = bound.map_or(self.opts.op_timeout, |b| {
                    b.saturating_duration_since(Instant::now())
                });
                self.give_up(w, left).await;
                Ok(None)
            }
            Waited::Done(Err(trouble)) => {
                let err = self.trouble_error("acquiring", &req.target(BACKEND), &trouble);
                self.give_up_later(w);
                Err(err)
            }
            Waited::TimedOut if once => {
                let detail = w.last_error.clone().unwrap_or_else(|| {
                    format!(
                        "no answer within opTimeoutMs ({} ms)",
                        self.opts.op_timeout.as_millis()
                    )
                });
                self.give_up_later(w);
                Err(self.backend_error("acquiring", &req.target(BACKEND), &detail))
            }
            Waited::TimedOut => {
                let out = self.interrupted_outcome(Interrupted::TimedOut, &w, &req);
                self.give_up_later(w);
                out
            }
            Waited::Cancelled => {
                let out = self.interrupted_outcome(Interrupted::Cancelled, &w, &req);
                self.give_up_later(w);
                out
            }
            Waited::Closed => {
                let out = self.interrupted_outcome(Interrupted::Closed, &w, &req);
                self.give_up_later(w);
                out
            }
        };
        let outcome = match &result {
            Ok(_) => "busy",
            Err(e) => e.code(),
        };
        tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, outcome, waited_us, "not acquired");
        result
    }

    /// Waits until the waiter holds (`Some(revision)`), or, for a try, finds it busy (`None`).
    async fn wait_turn(
        &self,
        w: &mut Waiter,
        plan: Plan,
        once: bool,
        max: u32,
    ) -> std::result::Result<Option<i64>, Trouble> {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.step(w, plan, once, max).await {
                Ok(Step::Granted(rev)) => return Ok(Some(rev)),
                Ok(Step::Busy) => return Ok(None),
                Ok(Step::Again) => pause = FIRST_PAUSE,
                Err(t) if t.fatal || once => return Err(t),
                Err(t) => {
                    tracing::debug!(backend = BACKEND, error = %t.message, pause_ms = pause.as_millis() as u64, "retrying");
                    w.last_error = Some(t.message);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    /// One step: make sure the waiter has a live lease and a key, check its turn, and if it
    /// must wait, watch until something it waits for is deleted.
    async fn step(
        &self,
        w: &mut Waiter,
        plan: Plan,
        once: bool,
        max: u32,
    ) -> std::result::Result<Step, Trouble> {
        let bound = self.opts.op_timeout;
        let session = match &w.session {
            Some(s) if s.is_live() => s.clone(),
            _ => {
                // The lease is gone (or there was none yet): so is the key, if there was one.
                self.forget_key(w);
                let s = self.session_for(plan).await?;
                w.session = Some(s.clone());
                s
            }
        };
        let key = match &w.key {
            Some(k) => k.clone(),
            None => {
                let k = w.keys.fresh(w.side, session.id);
                w.key = Some(k.clone());
                k
            }
        };
        let (ci, c) = self.pool.client().await?;
        let ahead = w.keys.ahead(w.side);
        let permits = matches!(w.side, Side::Permits(_));
        // The requests: (the put, at creation), a semaphore's whole family, then one range per
        // span of `ahead`.
        let Some(rev) = w.rev else {
            // Create the key and look at what is ahead of it in one round trip.
            let value = match w.side {
                Side::Permits(n) => n.to_string(),
                _ => String::new(),
            };
            let mut success = vec![RequestOp::put(key.clone(), value, session.id)];
            if permits {
                success.push(RequestOp::range(RangeRequest::prefix(
                    w.keys.family.clone(),
                )));
            }
            success.extend(ranges(&ahead, |r| r.by_create(true).limit(1)));
            let txn = TxnRequest {
                compare: vec![Compare::created_at(key.clone(), 0)],
                success,
                failure: vec![RequestOp::range(RangeRequest::between(
                    key.clone(),
                    Vec::new(),
                ))],
            };
            let mut answer = self.request(ci, &session, bound, c.txn(txn)).await?;
            w.last_error = None;
            w.answered = true;
            let rev = answer.revision();
            if !answer.succeeded {
                // An earlier attempt whose answer was lost created it: adopt it.
                match answer.range(0).first() {
                    Some(kv) if kv.lease == session.id => w.rev = Some(kv.create_revision),
                    _ => w.key = None,
                }
                return Ok(Step::Again);
            }
            w.rev = Some(rev);
            // The transaction wrote the key at `rev`: every other key is older.
            let first = if permits { 2 } else { 1 };
            let clear = (first..first + ahead.len())
                .flat_map(|i| answer.range(i))
                .all(|kv| kv.create_revision >= rev);
            let holds = clear && (!permits || permits_sum(&answer.range(1)) <= u64::from(max));
            return Ok(if holds {
                Step::Granted(rev)
            } else if once {
                Step::Busy
            } else {
                Step::Again
            });
        };
        // Check the turn: is the key still there, and what comes before it?
        let mut success = Vec::new();
        if permits {
            success.push(RequestOp::range(
                RangeRequest::prefix(w.keys.family.clone()).created_by(rev),
            ));
        }
        success.extend(ranges(&ahead, |r| {
            r.by_create(false).created_by(rev - 1).limit(1)
        }));
        let txn = TxnRequest {
            compare: vec![Compare::created_at(key.clone(), rev)],
            success,
            failure: Vec::new(),
        };
        let mut answer = self.request(ci, &session, bound, c.txn(txn)).await?;
        w.last_error = None;
        w.answered = true;
        if !answer.succeeded {
            // Deleted by someone else, or its lease ended: queue again.
            tracing::debug!(backend = BACKEND, key = %key, "the waiter's key is gone; queueing again");
            w.key = None;
            w.rev = None;
            return Ok(Step::Again);
        }
        let seen = answer.revision();
        let first = usize::from(permits);
        // The newest key before this one that it must wait for (etcd's recipe: wait for its
        // deletion, then look again).
        let before = (first..first + ahead.len())
            .flat_map(|i| answer.range(i))
            .max_by_key(|kv| kv.create_revision);
        let watch = match before {
            Some(kv) => (kv.key, false),
            None if !permits || permits_sum(&answer.range(0)) <= u64::from(max) => {
                return Ok(Step::Granted(rev));
            }
            None => (w.keys.family.clone().into_bytes(), true),
        };
        if once {
            return Ok(Step::Busy);
        }
        // A watch that starts at a past revision joins etcd's unsynced watchers, which the
        // server catches up only every 100 ms: under contention every hand-over waited for
        // that. So a watch on the predecessor key starts now, and once it is created one look
        // tells whether the key went in between. A semaphore's family watch starts after the
        // revision it checked (any delete since matters, not one key's).
        let (target, prefix) = watch;
        let mut create = WatchCreateRequest {
            filters: vec![FILTER_NO_PUT],
            ..WatchCreateRequest::default()
        };
        if prefix {
            create.range_end = prefix_end(&target);
            create.start_revision = seen + 1;
        }
        create.key = target.clone();
        let mut stream = self.request(ci, &session, bound, c.watch(create)).await?;
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(resp)) if resp.canceled => {
                        let reason = resp.cancel_reason;
                        if resp.compact_revision > 0 || reason.is_empty() {
                            return Ok(Step::Again);
                        }
                        self.pool.failed(ci);
                        let message = format!("etcd cancelled the watch: {reason}");
                        return Err(if reason.contains("permission denied") {
                            Trouble::fatal(message)
                        } else {
                            Trouble::transient(message)
                        });
                    }
                    Ok(Some(resp)) if resp.created && !prefix => {
                        let look = RangeRequest { key: target.clone(), count_only: true, ..RangeRequest::default() };
                        let gone = self
                            .request(ci, &session, bound, c.range(look))
                            .await?
                            .count
                            == 0;
                        if gone {
                            return Ok(Step::Again);
                        }
                    }
                    Ok(Some(resp)) if !resp.events.is_empty() => return Ok(Step::Again),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.pool.failed(ci);
                        return Err(Trouble::transient(String::from("the watch stream ended")));
                    }
                    Err(e) => {
                        self.pool.failed(ci);
                        return Err(Trouble::from_grpc(&e));
                    }
                },
                _ = session.lost.lost() => return Ok(Step::Again),
            }
        }
    }

    /// Runs one request within `bound`; a "lease not found" answer marks `session` lost.
    async fn request<T>(
        &self,
        ci: usize,
        session: &Session,
        bound: Duration,
        fut: impl std::future::Future<Output = std::result::Result<T, grpc::Error>>,
    ) -> std::result::Result<T, Trouble> {
        match tokio::time::timeout(bound, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let t = Trouble::from_grpc(&e).at(self.pool.endpoint(ci));
                if t.message.contains("lease not found") {
                    session
                        .lost
                        .fire("etcd reports its lease gone (expired or revoked)");
                    return Err(Trouble { fatal: false, ..t });
                }
                if !t.fatal {
                    self.pool.failed(ci);
                }
                Err(t)
            }
            Err(_) => {
                self.pool.failed(ci);
                Err(Trouble::timeout(bound).at(self.pool.endpoint(ci)))
            }
        }
    }

    /// Drops the waiter's key (deleted in the background; it may exist) and revision.
    fn forget_key(&self, w: &mut Waiter) {
        w.rev = None;
        if let Some(key) = w.key.take() {
            self.delete_later(key);
        }
        if let Some(s) = w.session.take()
            && !s.shared
        {
            self.revoke_later(s);
        }
    }

    fn delete_later(&self, key: String) {
        let Some(rt) = self.runtime.get() else {
            return;
        };
        let (pool, bound) = (self.pool.clone(), self.opts.op_timeout);
        rt.spawn(async move { delete(&pool, bound, key).await });
    }

    fn revoke_later(&self, s: Arc<Session>) {
        let Some(rt) = self.runtime.get() else {
            return;
        };
        let (pool, bound) = (self.pool.clone(), self.opts.op_timeout);
        rt.spawn(async move { s.revoke(&pool, bound).await });
    }

    /// A waiter that gave up: its key goes now (its own lease with it), within `bound`.
    async fn give_up(&self, mut w: Waiter, bound: Duration) {
        match w.session.take() {
            Some(s) if !s.shared => {
                // Finished in the background if it needs longer than `bound`.
                let (pool, op) = (self.pool.clone(), self.opts.op_timeout);
                let revoking = tokio::spawn(async move { s.revoke(&pool, op).await });
                let _ = tokio::time::timeout(bound, revoking).await;
            }
            _ => {
                if let Some(key) = w.key.take() {
                    delete(&self.pool, bound, key).await;
                }
            }
        }
    }

    /// The same in the background.
    fn give_up_later(&self, mut w: Waiter) {
        self.forget_key(&mut w);
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        plan: Plan,
        session: Arc<Session>,
        key: String,
        rev: i64,
        entry: Arc<Entry<()>>,
        ticket: Ticket,
    ) -> Held {
        if let Plan::Own { renew: false, .. } = plan {
            session.stop_renewing();
        }
        let uid = self.held.next_id();
        let lost = LostSignal::new();
        let done = CancellationToken::new();
        let turn: Turn = Arc::new(Mutex::new(Some((ticket, entry))));
        let held = Arc::new(EtcdHeld {
            inner: self.clone(),
            uid,
            target: req.target(BACKEND),
            shown: req.target(BACKEND).to_string(),
            key,
            rev: u64::try_from(rev).unwrap_or(0),
            session: session.clone(),
            lost: lost.clone(),
            released: AtomicBool::new(false),
            done: done.clone(),
            turn: turn.clone(),
        });
        self.held.insert(uid, &held);
        session.attach(uid, &req.name, &held.key, &lost, Instant::now());
        // A lost lock gives its in-process turn back at once, as a release would.
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.lost() => drop(lock(&turn).take()),
                _ = done.cancelled() => {}
            }
        });
        held
    }

    async fn inspect(&self, name: &str, kind: LockKind) -> Result<LockInfo> {
        let prefix = &self.opts.key_prefix;
        let (keys, max) = match kind {
            LockKind::Semaphore { max_count, .. } => {
                (Keys::semaphore(prefix, name), Some(max_count))
            }
            _ => (Keys::lock(prefix, name), None),
        };
        let target = Target::new(BACKEND, kind.primitive(), name);
        let bound = self.opts.op_timeout;
        let every = keys.name.clone();
        let looking = self.pool.call(bound, |c| {
            let every = every.clone();
            async move { c.range(RangeRequest::prefix(every).by_create(true)).await }
        });
        let answer = match looking.await {
            Ok(a) => a,
            Err(t) => return Err(self.trouble_error("inspecting", &target, &t)),
        };
        // This family's keys and the foreign ones, oldest first.
        let kvs: Vec<(Class, &KeyValue)> = answer
            .kvs
            .iter()
            .map(|kv| (keys.class(&kv.key), kv))
            .filter(|(class, _)| match max {
                Some(_) => matches!(class, Class::Permits | Class::Foreign),
                None => *class != Class::Permits,
            })
            .collect();
        let fencing_token = kvs
            .iter()
            .map(|(_, kv)| kv.create_revision)
            .max()
            .and_then(|r| u64::try_from(r).ok());
        let (held, holders) = match max {
            Some(max) => {
                // Holders: the permits that fit, up to the first foreign key (which holds or
                // waits alone, and everything after it waits too).
                let mut sum = 0u64;
                let mut waiting = false;
                for (class, kv) in &kvs {
                    let p = permits_of(kv);
                    if *class == Class::Foreign || sum + p > u64::from(max) {
                        waiting = true;
                        break;
                    }
                    sum += p;
                }
                (waiting || sum >= u64::from(max), sum)
            }
            None => {
                let holders = match kvs.first() {
                    None => 0,
                    Some((Class::Reader, _)) => kvs
                        .iter()
                        .take_while(|(class, _)| *class == Class::Reader)
                        .count() as u64,
                    Some(_) => 1,
                };
                (holders > 0, holders)
            }
        };
        Ok(LockInfo {
            held,
            holders: Some(u32::try_from(holders).unwrap_or(u32::MAX)),
            lease_remaining: None,
            fencing_token,
        })
    }
}

/// How long a delete that failed keeps trying in the background.
const DELETE_FOR: Duration = Duration::from_secs(300);

/// Deletes `key`, retrying within `bound`. A delete that did not get through goes on in the
/// background (the key's lease may be the shared one, which lives as long as the provider):
/// retried for up to five minutes, then left to the lease.
async fn delete(pool: &Arc<Pool>, bound: Duration, key: String) {
    let attempt = |pool: Arc<Pool>, key: String, bound: Duration| async move {
        pool.call(bound, |c| {
            let key = key.clone();
            async move { c.delete(key).await }
        })
        .await
    };
    let r = attempt(pool.clone(), key.clone(), bound).await;
    match r {
        Ok(_) => {}
        Err(t) if t.fatal => {
            tracing::warn!(backend = BACKEND, key = %key, error = %t.message, "cannot delete; the lease ends the key");
        }
        Err(t) => {
            tracing::debug!(backend = BACKEND, key = %key, error = %t.message, "delete failed; retrying in the background");
            let pool = pool.clone();
            tokio::spawn(async move {
                if let Err(t) = attempt(pool, key.clone(), DELETE_FOR).await {
                    tracing::warn!(backend = BACKEND, key = %key, error = %t.message, "cannot delete; the lease ends the key");
                }
            });
        }
    }
}

/// The permits a semaphore key records (1 if its value is not a count).
fn permits_of(kv: &KeyValue) -> u64 {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&p| p > 0)
        .unwrap_or(1)
}

/// One range request per span, shaped by `shape` (sort order, limit, revision bound).
fn ranges(spans: &[Span], shape: impl Fn(RangeRequest) -> RangeRequest) -> Vec<RequestOp> {
    spans
        .iter()
        .map(|(start, end)| {
            RequestOp::range(shape(RangeRequest::between(start.clone(), end.clone())))
        })
        .collect()
}

fn permits_sum(kvs: &[KeyValue]) -> u64 {
    kvs.iter().map(permits_of).sum()
}

type Turn = Arc<Mutex<Option<(Ticket, Arc<Entry<()>>)>>>;

/// A lock held in etcd.
struct EtcdHeld {
    inner: Arc<Inner>,
    uid: u64,
    target: Target,
    shown: String,
    key: String,
    rev: u64,
    session: Arc<Session>,
    lost: LostSignal,
    released: AtomicBool,
    /// Ends the task that gives the turn back on loss.
    done: CancellationToken,
    /// This handle's in-process turn; given back after the release, or when lost.
    turn: Turn,
}

impl EtcdHeld {
    async fn release_now(&self) -> Result<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.done.cancel();
        self.inner.held.remove(self.uid);
        let bound = self.inner.opts.op_timeout;
        let s = &self.session;
        s.detach(self.uid);
        if s.shared {
            delete(&self.inner.pool, bound, self.key.clone()).await;
        } else {
            s.revoke(&self.inner.pool, bound).await;
        }
        drop(lock(&self.turn).take());
        tracing::debug!(backend = BACKEND, token = self.rev, "released");
        Ok(())
    }

    async fn extend_now(&self, lease: Duration) -> Result<()> {
        let lost = |reason: &str| Error::Lost {
            target: self.target.clone(),
            reason: reason.to_owned(),
        };
        if self.is_released() {
            return Err(lost("it was released"));
        }
        let session = &self.session;
        if lease > session.ttl {
            return Err(Error::invalid(
                "leaseMs",
                format!(
                    "of {} ms is longer than the lease of {} ({} ms): etcd cannot change a lease's TTL, so extend renews the lease to its full TTL and accepts at most that; acquire with a longer lease instead",
                    lease.as_millis(),
                    self.shown,
                    session.ttl.as_millis()
                ),
            ));
        }
        if !self.is_held() {
            return Err(lost(self.lost.reason().unwrap_or(session::DEADLINE)));
        }
        let bound = self.inner.opts.op_timeout;
        match session.keep_alive_once(&self.inner.pool, bound).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(lost(self.lost.reason().unwrap_or("its lease is gone"))),
            Err(t) => Err(self.inner.backend_error(
                "extending",
                &self.target,
                &format!(
                    "{}; the lease ends within {} ms unless a keep-alive succeeds",
                    t.message,
                    session.lease.remaining(Instant::now()).as_millis()
                ),
            )),
        }
    }
}

impl HeldLock for EtcdHeld {
    fn fencing_token(&self) -> u64 {
        self.rev
    }

    fn lost(&self) -> &LostSignal {
        &self.lost
    }

    fn target(&self) -> &str {
        &self.shown
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn is_held(&self) -> bool {
        if self.is_released() || self.lost.is_lost() {
            return false;
        }
        if Instant::now() < self.session.lease.deadline() {
            return true;
        }
        self.lost.fire(session::DEADLINE);
        false
    }

    fn lease_remaining(&self) -> Option<Duration> {
        if self.lost.is_lost() {
            return Some(Duration::ZERO);
        }
        Some(self.session.lease.remaining(Instant::now()))
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.release_now().await })
    }

    fn extend(self: Arc<Self>, lease: Duration) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.extend_now(lease).await })
    }
}

impl Drop for EtcdHeld {
    fn drop(&mut self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        // Dropped without release (a garbage-collected handle): release in the background.
        self.done.cancel();
        self.inner.held.remove(self.uid);
        let turn = lock(&self.turn).take();
        let s = self.session.clone();
        s.detach(self.uid);
        if s.shared {
            let key = std::mem::take(&mut self.key);
            self.inner.delete_later(key);
        } else {
            self.inner.revoke_later(s);
        }
        drop(turn);
    }
}

//! distlock-etcd: locks on etcd v3 — keys with leases, ordered by create revision.
//!
//! - Layout (`keys.rs`): one key per waiting or holding acquire, `<keyPrefix><name>/<marker><unique>`,
//!   put with a lease and only if absent (a transaction comparing `create_revision == 0`).
//! - Order (`order.rs`, I/O-free; `acquire.rs` drives it): the etcd `concurrency` recipe. Keys
//!   of a name are ordered by create revision. A mutex or writer holds when no key of the lock
//!   family, and no foreign key (one distlock did not write: `etcdctl lock`, the Lock RPC), has
//!   a smaller create revision; a reader holds
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

mod acquire;
mod cleanup;
mod error;
mod fence;
#[doc(hidden)]
pub mod grpc;
mod held;
mod keys;
mod options;
mod order;
mod pool;
mod session;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, Error, Fault, LockInfo, LockKind, Observer,
    ProviderCore, ProviderState, Result, Target, Turns,
};
use grpc::wire::RangeRequest;

use acquire::Waiter;
pub use fence::{Fenced, FencedOp};
use held::EtcdHeld;
pub use held::fenced_txn;
use keys::{Keys, Side};
pub use options::{EtcdOptions, MAX_LEASE_MS, MIN_LEASE_MS};
use order::Place;
use pool::Pool;
use session::Session;

/// The backend's name in errors and logs.
pub const BACKEND: &str = "etcd";

/// A lock provider on one etcd cluster.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    opts: EtcdOptions,
    label: String,
    pool: Arc<Pool>,
    /// The provider's shared lease (granted on first use, again after it is lost).
    shared: tokio::sync::Mutex<Option<Arc<Session>>>,
    core: ProviderCore<EtcdHeld>,
    turns: Turns<()>,
    runtime: OnceLock<tokio::runtime::Handle>,
    observer: OnceLock<Observer>,
}

/// Which lease an acquire hangs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Plan {
    Shared,
    Own { ttl: Duration, renew: bool },
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
                core: ProviderCore::new(BACKEND),
                turns: Turns::default(),
                runtime: OnceLock::new(),
                observer: OnceLock::new(),
            }),
        })
    }
}

impl Backend for EtcdBackend {
    fn core(&self) -> &dyn ProviderState {
        &self.inner.core
    }

    fn begin(&self, req: AcquireRequest) -> Result<Acquiring> {
        let inner = self.inner.clone();
        let own_ttl = req.lease.map(options::request_lease).transpose()?;
        let plan = match (own_ttl, req.auto_renew) {
            (None, true) => Plan::Shared,
            (ttl, renew) => Plan::Own {
                ttl: ttl.unwrap_or(inner.opts.lease),
                renew,
            },
        };
        let prefix = &inner.opts.key_prefix;
        let (keys, side, max) = match req.kind {
            LockKind::Mutex | LockKind::Write => (Keys::lock(prefix, &req.name), Side::Writer, 0),
            LockKind::Read => (Keys::lock(prefix, &req.name), Side::Reader, 0),
            LockKind::Semaphore { max_count, permits } => (
                Keys::semaphore(prefix, &req.name),
                Side::Permits(permits),
                max_count,
            ),
        };
        let admitted = inner.turns.admit(&req, BACKEND, || ())?;
        let waiter = Waiter::new(Place::new(keys, side, max));
        Ok(Box::pin(async move {
            inner.acquire(req, plan, waiter, admitted).await
        }))
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move {
            distlock_core::validate_name(&name)?;
            inner.inspect(&name, kind).await
        })
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut releases = tokio::task::JoinSet::new();
            for h in inner.core.close("the lock provider was closed") {
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
    /// `f`, as it ends an operation `what` (`acquiring`, `inspecting`) on `target`: the
    /// message names the lock and the endpoint (the cluster where none is known); the cause
    /// keeps the failure's own text.
    fn named(&self, what: &str, target: &Target, mut f: Fault) -> Fault {
        let server = f.cause.server.get_or_insert_with(|| self.label.clone());
        let message = format!("{what} {target} on {server}: {}", f.message);
        f.cause.message.get_or_insert(f.message);
        Fault { message, ..f }
    }

    /// The backend error of `f` ending `what` on `target` (see [`Inner::named`]).
    fn fault_error(&self, what: &str, target: &Target, f: Fault) -> Error {
        self.named(what, target, f)
            .into_error(BACKEND, Some(&self.label))
    }

    /// A lease for `plan`: the shared one while it lives, else a new one.
    async fn session_for(&self, plan: Plan) -> std::result::Result<Arc<Session>, Fault> {
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
                    self.core.closed(),
                    observer,
                )
                .await?;
                *shared = Some(s.clone());
                Ok(s)
            }
            Plan::Own { ttl, .. } => {
                // Kept alive while it waits; one without auto-renewal stops at the grant.
                session::grant(&self.pool, ttl, true, false, self.core.closed(), observer).await
            }
        }
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
            Err(f) => return Err(self.fault_error("inspecting", &target, f)),
        };
        let (held, holders, fencing_token) = order::holders(&keys, max, &answer.kvs);
        Ok(LockInfo {
            held,
            holders: Some(u32::try_from(holders).unwrap_or(u32::MAX)),
            lease_remaining: None,
            fencing_token,
        })
    }
}

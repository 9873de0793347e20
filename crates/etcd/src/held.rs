//! A lock held in etcd: its key on a lease, its in-process turn, release and extend.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::{
    AcquireRequest, BoxFuture, CancellationToken, Error, Fault, Held, HeldCore, HeldLock,
    LostSignal, Result, Target, Ticket,
};
use tokio::time::Instant;

use crate::cleanup::delete;
use crate::fence::{self, Fenced, FencedOp};
use crate::session::{self, Session};
use crate::{BACKEND, Inner, Plan};

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grant(
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
        let uid = self.core.held().next_id();
        let lost = LostSignal::new();
        let done = CancellationToken::new();
        let turn: Turn = Arc::new(Mutex::new(Some((ticket, entry))));
        let held = Arc::new(EtcdHeld {
            inner: self.clone(),
            uid,
            target: req.target(BACKEND),
            core: HeldCore::with_lost(
                req.target(BACKEND).to_string(),
                u64::try_from(rev).unwrap_or(0),
                lost.clone(),
            ),
            key,
            session: session.clone(),
            done: done.clone(),
            turn: turn.clone(),
        });
        self.core.held().insert(uid, &held);
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
}

type Turn = Arc<Mutex<Option<(Ticket, Arc<Entry<()>>)>>>;

/// Runs `ops` as one transaction that writes only while `held` still holds in etcd (see
/// `fence.rs`), or `None` when `held` is not an etcd lock.
pub fn fenced_txn(held: &Held, ops: Vec<FencedOp>) -> Option<BoxFuture<'static, Result<Fenced>>> {
    let any: Arc<dyn Any + Send + Sync> = held.clone();
    let etcd = any.downcast::<EtcdHeld>().ok()?;
    Some(Box::pin(async move { etcd.fenced(ops).await }))
}

/// A lock held in etcd.
pub(crate) struct EtcdHeld {
    inner: Arc<Inner>,
    uid: u64,
    target: Target,
    core: HeldCore,
    key: String,
    session: Arc<Session>,
    /// Ends the task that gives the turn back on loss.
    done: CancellationToken,
    /// This handle's in-process turn; given back after the release, or when lost.
    turn: Turn,
}

impl EtcdHeld {
    pub(crate) async fn release_now(&self) -> Result<()> {
        if !self.core.mark_released() {
            return Ok(());
        }
        self.done.cancel();
        self.inner.core.held().remove(self.uid);
        let bound = self.inner.opts.op_timeout;
        let s = &self.session;
        s.detach(self.uid);
        if s.shared {
            delete(&self.inner.pool, bound, self.key.clone()).await;
        } else {
            s.revoke(&self.inner.pool, bound).await;
        }
        drop(lock(&self.turn).take());
        tracing::debug!(backend = BACKEND, token = self.core.token(), "released");
        Ok(())
    }

    /// Runs `ops` only while this grant still holds in etcd (see `fence.rs`), within
    /// `opTimeoutMs`. A retry after a lost answer runs the same compare and writes again: the
    /// writes are puts and deletes, so the second landing leaves what the first did.
    pub(crate) async fn fenced(&self, ops: Vec<FencedOp>) -> Result<Fenced> {
        let token = i64::try_from(self.core.token()).unwrap_or(i64::MAX);
        let txn = fence::request(&self.key, token, fence::name_prefix(&self.key), ops);
        let bound = self.inner.opts.op_timeout;
        let answer = self
            .inner
            .pool
            .call(bound, |c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        match answer {
            Ok(mut r) => Ok(fence::outcome(&mut r, self.core.token())),
            Err(f) => Err(self
                .inner
                .fault_error("a fenced write under", &self.target, f)),
        }
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
                    self.core.target(),
                    session.ttl.as_millis()
                ),
            ));
        }
        if !self.is_held() {
            return Err(lost(self.core.lost().reason().unwrap_or(session::DEADLINE)));
        }
        let bound = self.inner.opts.op_timeout;
        match session.keep_alive_once(&self.inner.pool, bound).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(lost(
                self.core.lost().reason().unwrap_or("its lease is gone"),
            )),
            Err(f) => Err(self.inner.fault_error(
                "extending",
                &self.target,
                Fault::transient(format!(
                    "{}; the lease ends within {} ms unless a keep-alive succeeds",
                    f.message,
                    session.lease.remaining(Instant::now()).as_millis()
                )),
            )),
        }
    }
}

impl HeldLock for EtcdHeld {
    fn core(&self) -> &HeldCore {
        &self.core
    }

    fn is_held(&self) -> bool {
        let lease = &self.session.lease;
        self.core.is_held_by_lease(lease, || {
            self.core.lost().fire(session::DEADLINE);
        })
    }

    fn lease_remaining(&self) -> Option<Duration> {
        Some(self.core.lease_remaining(&self.session.lease))
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
        if !self.core.mark_released() {
            return;
        }
        // Dropped without release (a garbage-collected handle): release in the background.
        self.done.cancel();
        self.inner.core.held().remove(self.uid);
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

//! A lock held on Redis: its release (quorum, bounded, the in-process turn handed on as the
//! release leaves), extend, `is_held` (no doubt among the servers that granted it), and the
//! release of a handle dropped without one. [`Inner::grant`] makes it from a granted attempt.

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::{
    AcquireRequest, BoxFuture, Error, Held, HeldCore, HeldLock, Lease, LostSignal, Result, Ticket,
};
use tokio::time::Instant;

use crate::machine::lease::Slot;
use crate::machine::{drift, ms};
use crate::op::Op;
use crate::renew::{self, Turn};
use crate::{BACKEND, Inner};

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        op: Op,
        fence: u64,
        by: Vec<usize>,
        lease: Duration,
        sent: Instant,
        entry: Arc<Entry<()>>,
        ticket: Ticket,
    ) -> Held {
        let uid = self.core.held().next_id();
        self.saw(&op.keys, fence);
        let lease_state = Arc::new(Lease::new(lease - drift(lease), sent));
        let lost = LostSignal::new();
        // Renewals and the release carry the token as the counter's floor to every server: on
        // RedLock the servers' counters differ, and a server restarted empty forgets its own.
        let floor = fence;
        let turn: Turn = Arc::new(Mutex::new(Some((ticket, entry))));
        let held = Arc::new(RedisHeld {
            inner: self.clone(),
            uid,
            target: req.target(BACKEND),
            core: HeldCore::with_lost(req.target(BACKEND).to_string(), fence, lost.clone()),
            op: op.clone(),
            floor,
            by,
            lease_len: lease,
            lease: lease_state.clone(),
            turn: turn.clone(),
        });
        self.core.held().insert(uid, &held);
        self.renewals.track(
            self,
            uid,
            renew::Tracked {
                op,
                lease_ms: ms(lease),
                lease: lease_state,
                lost,
                floor,
                turn,
                slot: if req.auto_renew {
                    Slot::new(sent, self.renew_period(lease))
                } else {
                    Slot {
                        due: renew::never_due(sent),
                        in_flight: false,
                    }
                },
                renew: req.auto_renew,
                name: req.name.clone(),
            },
        );
        held
    }
}

/// A lock held on Redis.
pub(crate) struct RedisHeld {
    inner: Arc<Inner>,
    uid: u64,
    /// The lock, for errors, and as messages name it (built once per grant).
    target: distlock_core::Target,
    pub(crate) core: HeldCore,
    op: Op,
    floor: u64,
    /// The servers whose grants made the quorum.
    by: Vec<usize>,
    lease_len: Duration,
    lease: Arc<Lease>,
    /// This handle's in-process turn; given back after the server release, or when lost.
    turn: Turn,
}

impl RedisHeld {
    pub(crate) async fn release_now(&self) -> Result<()> {
        if !self.core.mark_released() {
            return Ok(());
        }
        self.inner.renewals.untrack(self.uid);
        self.inner.core.held().remove(self.uid);
        let expired = self.core.lost().is_lost() || Instant::now() >= self.lease.deadline();
        // Bounded: a server that does not answer in time is revoked in the background.
        let bound = self.inner.opts.server_timeout + Duration::from_millis(50);
        let releasing = self
            .inner
            .release(&self.op, self.floor, self.lease_len, &self.by);
        let mut releasing = std::pin::pin!(tokio::time::timeout(bound, releasing));
        // Once the release is on its way, the in-process turn goes to the next caller, whose
        // attempt then follows the release on the same connection instead of a round trip
        // later. It cannot win before the release lands: no grant is re-entrant (the key or
        // entry holds this grant's token until the script removes it), so an attempt that
        // arrives first finds the lock busy and waits for the release's wake-up.
        let sent = std::future::poll_fn(|cx| Poll::Ready(releasing.as_mut().poll(cx))).await;
        drop(lock(&self.turn).take());
        let answered = match sent {
            Poll::Ready(answered) => answered,
            Poll::Pending => releasing.await,
        };
        let result = answered.unwrap_or_else(|_| {
            Err(format!(
                "no quorum of servers answered within {} ms",
                bound.as_millis()
            ))
        });
        match result {
            Ok(()) => Ok(()),
            // Expired already: there is nothing left to release, and nothing to report.
            Err(_) if expired => Ok(()),
            Err(e) => Err(Error::backend(
                BACKEND,
                format!(
                    "releasing {}: {e}; the lease ends on its own within {} ms",
                    self.target,
                    self.lease.remaining(Instant::now()).as_millis()
                ),
                self.inner.cause_of(&e),
            )),
        }
    }

    /// Fires the lost signal and gives the in-process turn back.
    fn lose(&self, reason: &str) {
        self.core.lost().fire(reason);
        drop(lock(&self.turn).take());
    }

    /// Sets the lease to `lease` from now on every server, and uses it for later renewals.
    async fn extend_now(&self, lease: Duration) -> Result<()> {
        distlock_core::options::lease_ms(lease.as_millis() as f64)?;
        let lost = |reason: String| Error::Lost {
            target: self.target.clone(),
            reason,
        };
        if self.is_released() {
            return Err(lost(String::from("it was released")));
        }
        if !self.is_held()
            && let Some(reason) = self.core.lost().reason()
        {
            return Err(lost(reason.to_owned()));
        }
        let sent = Instant::now();
        let renewing = self.inner.renew_one(&self.op, ms(lease), self.floor);
        let bound = self.inner.opts.server_timeout + Duration::from_millis(20);
        match tokio::time::timeout(bound, renewing).await.ok().flatten() {
            Some(true) => {
                self.lease.set_length(lease - drift(lease));
                self.lease.renewed(sent);
                let due = sent + self.inner.renew_period(lease);
                self.inner.renewals.set_lease(self.uid, ms(lease), due);
                Ok(())
            }
            Some(false) => {
                let reason = "an extend found its key gone or owned by someone else";
                self.lose(reason);
                Err(lost(reason.to_owned()))
            }
            None => {
                let message = format!(
                    "extending {}: no quorum of servers answered; the lease ends within {} ms unless a renewal succeeds",
                    self.target,
                    self.lease.remaining(Instant::now()).as_millis()
                );
                let cause = self.inner.cause_of(&message);
                Err(Error::backend(BACKEND, message, cause))
            }
        }
    }
}

impl HeldLock for RedisHeld {
    fn core(&self) -> &HeldCore {
        &self.core
    }

    /// Held: not released, not lost, the local lease deadline not passed (checked against the
    /// clock now, whether or not any timer ran), and no connection in doubt among the servers
    /// whose grants made the quorum.
    fn is_held(&self) -> bool {
        let expired = || {
            self.lose("its lease ran out at the local deadline without a successful renewal");
        };
        if !self.core.is_held_by_lease(&self.lease, expired) {
            return false;
        }
        let sure = self
            .by
            .iter()
            .filter(|&&i| !self.inner.servers[i].in_doubt())
            .count();
        sure >= self.inner.quorum
    }

    fn lease_remaining(&self) -> Option<Duration> {
        Some(self.core.lease_remaining(&self.lease))
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.release_now().await })
    }

    fn extend(self: Arc<Self>, lease: Duration) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.extend_now(lease).await })
    }
}

impl Drop for RedisHeld {
    fn drop(&mut self) {
        if !self.core.mark_released() {
            return;
        }
        // Dropped without release (a garbage-collected handle): release in the background.
        self.inner.renewals.untrack(self.uid);
        self.inner.core.held().remove(self.uid);
        let (inner, op, floor, lease, by) = (
            self.inner.clone(),
            self.op.clone(),
            self.floor,
            self.lease_len,
            self.by.clone(),
        );
        let turn = lock(&self.turn).take();
        if let Some(rt) = self.inner.runtime.get() {
            rt.spawn(async move {
                let _ = inner.release(&op, floor, lease, &by).await;
                drop(turn);
            });
        }
    }
}

//! A held lock: its share of the server (the session it lives on and how to unlock it there)
//! and its share of this process (its turn in the in-process queue, a semaphore's permit
//! slots, where the next caller's attempt should go), and how releasing gives both back.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use distlock_core::sync::lock;
use distlock_core::turn::{self, Slots};
use distlock_core::{AcquireRequest, BoxFuture, Held, HeldCore, HeldLock, LostSignal, Result};
use tokio::time::Instant;

use crate::config::Scope;
use crate::fault::describe;
use crate::session::{Session, Stmt};
use crate::{BACKEND, Inner};

/// Where the last release of a name in this process queued its unlock, for the next caller's
/// attempt (see [`PgHeld::take_and_unlock`]).
#[derive(Default)]
pub(crate) struct Handoff {
    pub(crate) session: Mutex<Option<Weak<Session>>>,
}

#[derive(Default)]
pub(crate) struct SemState {
    /// Permit slots this process holds (the server would let one session take a key twice).
    pub(crate) slots: Slots,
    /// Held from choosing the free slots of an attempt until the slots it won are taken in
    /// `slots`: two callers of this process whose turns overlap (a semaphore admits several)
    /// would otherwise try the same slots, and on a shared session both would get them.
    pub(crate) gate: Arc<tokio::sync::Mutex<()>>,
}

impl AsRef<Slots> for SemState {
    fn as_ref(&self) -> &Slots {
        &self.slots
    }
}

/// A grant's share of this process (core's): its turn, and the name's [`Handoff`] or a
/// semaphore's permit slots.
pub(crate) type Turn = turn::Turn<Handoff, SemState>;
pub(crate) type Keep = turn::Keep<Handoff, SemState>;

impl Inner {
    /// Hands out the grant of `token` on `session` (undone there by `unlock`), keeping `turn`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        session: Arc<Session>,
        unlock: Stmt,
        token: u64,
        turn: Turn,
        start: Instant,
    ) -> Result<Option<Held>> {
        let id = self.core.held().next_id();
        let lost = LostSignal::new();
        let turn = Arc::new(Mutex::new(Some(turn)));
        // A session that dies gives the turn back after the lost signal fired: the name is
        // free in this process at once, without waiting for the holder's release().
        let on_lost = {
            let turn = turn.clone();
            Box::new(move || drop(lock(&turn).take()))
        };
        session.hold(id, lost.clone(), on_lost);
        if self.pool.opts.scope == Scope::Session {
            session.unbusy();
        }
        let held = Arc::new(PgHeld {
            id,
            core: HeldCore::with_lost(req.target(BACKEND).to_string(), token, lost),
            grant: Mutex::new(Some(Grant { session, unlock })),
            turn,
            scope: self.pool.opts.scope,
            op_timeout: self.pool.opts.op_timeout,
            runtime: tokio::runtime::Handle::current(),
            owner: Arc::downgrade(self),
        });
        self.core.held().insert(id, &held);
        tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, token, waited_us = start.elapsed().as_micros() as u64, "acquired");
        if self.core.closed().is_cancelled() {
            held.core.lost().fire("the lock provider was closed");
            let undo = held.take_and_unlock();
            tokio::spawn(undo);
            return Err(self.closed_error(req));
        }
        Ok(Some(held))
    }
}

/// A grant's share of the server: the session it lives on and how to undo it there.
struct Grant {
    session: Arc<Session>,
    unlock: Stmt,
}

pub(crate) struct PgHeld {
    id: u64,
    pub(crate) core: HeldCore,
    grant: Mutex<Option<Grant>>,
    /// Shared with the session, which drops it if it dies first.
    turn: Arc<Mutex<Option<Turn>>>,
    scope: Scope,
    op_timeout: Duration,
    runtime: tokio::runtime::Handle,
    owner: Weak<Inner>,
}

impl PgHeld {
    /// Takes the grant (once) and returns the future that unlocks it on the server (within
    /// `op_timeout`, else the session is closed), then lets the next caller of this process in.
    pub(crate) fn take_and_unlock(&self) -> impl Future<Output = ()> + Send + use<> {
        let grant = lock(&self.grant).take();
        self.core.mark_released();
        if let Some(owner) = self.owner.upgrade() {
            owner.core.held().remove(self.id);
        }
        let (id, token, scope, op) = (self.id, self.core.token(), self.scope, self.op_timeout);
        let turn = self.turn.clone();
        async move {
            let Some(grant) = grant else { return };
            let s = grant.session;
            if !s.is_dead() {
                // In session scope, once the unlock is queued on its session the next caller of
                // this process may go, and its attempt is sent to that session behind the
                // unlock, so one round trip answers both. The order keeps the server's queue
                // between processes: the unlock comes first, so a session of another process
                // that waits for the lock is granted it there, and the attempt finds it busy.
                // Exclusion does not depend on the order: the turn passes only once the holder
                // released, and the server lock stays with the session until its unlocks
                // balance its grants. An attempt on another session is an ordinary one (busy if
                // it arrives first). When the unlock cannot be queued at once (a statement this
                // session has not prepared yet), the turn passes after its answer.
                let queued = if scope == Scope::Session {
                    s.send_prepared(&grant.unlock)
                } else {
                    None
                };
                if queued.is_some() {
                    let next = lock(&turn).take();
                    if let Some(Turn {
                        keep: Keep::Entry(entry),
                        ..
                    }) = &next
                    {
                        *lock(&entry.state.session) = Some(Arc::downgrade(&s));
                    }
                    drop(next);
                }
                let unlocking = async {
                    match queued {
                        Some(answer) => answer.await,
                        None => s.execute(&grant.unlock).await,
                    }
                };
                let mut unlocking = std::pin::pin!(unlocking);
                match s.within(op, &mut unlocking).await {
                    Some(Ok(rows)) => {
                        let held = rows.first().and_then(|r| r.try_get::<_, bool>(0).ok());
                        if scope == Scope::Session && held == Some(false) {
                            tracing::warn!(
                                backend = BACKEND,
                                token,
                                "unlock found the lock not held"
                            );
                        }
                    }
                    Some(Err(e)) if !s.is_dead() => {
                        // The lock may still be held on a live session: close it so the server
                        // frees it (the session's other locks report lost).
                        s.kill(format!("unlocking failed: {}", describe(&e)));
                    }
                    Some(Err(_)) => {}
                    None => s.kill(format!(
                        "an unlock got no answer within {} ms",
                        op.as_millis()
                    )),
                }
            }
            s.forget(id);
            if scope == Scope::Transaction {
                s.unbusy();
            }
            drop(lock(&turn).take());
            tracing::debug!(backend = BACKEND, token, "released");
        }
    }
}

impl HeldLock for PgHeld {
    fn core(&self) -> &HeldCore {
        &self.core
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        let undo = self.take_and_unlock();
        Box::pin(async move {
            undo.await;
            Ok(())
        })
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        if lock(&self.grant).is_some() {
            // Dropped without release (a garbage-collected handle): unlock in the background.
            let undo = self.take_and_unlock();
            self.runtime.spawn(undo);
        }
    }
}

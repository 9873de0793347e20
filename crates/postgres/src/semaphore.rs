//! A semaphore acquire: `permits` of the `maxCount` permit keys, all or none, in one statement
//! that never waits, repeated under core's patience (woken at once by a permit freed in this
//! process, else polled with [`two_phase::SLOT_POLL`]) until the deadline.

use std::sync::Arc;

use distlock_core::queue::Entry;
use distlock_core::two_phase::{self, Answer, TwoPhase};
use distlock_core::{AcquireRequest, Admitted, BoxFuture, Fault, Held, Reporter, Result};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::config::Scope;
use crate::held::{Keep, SemState, Turn};
use crate::session::Session;
use crate::sql::{bigint_cell, parse_token, rollback, slot_cells, slots_attempt, slots_unlock};
use crate::{BACKEND, Inner};

/// Acquires `permits` of semaphore `req.name` (of `max_count`) once `ticket` comes up.
pub(crate) async fn acquire(
    inner: Arc<Inner>,
    req: AcquireRequest,
    Admitted { entry, mut ticket }: Admitted<SemState>,
) -> Result<Option<Held>> {
    let start = Instant::now();
    inner.start_keepalive();
    let (max_count, permits) = req.kind.counts();
    let slots = Arc::new(SlotLock {
        inner: inner.clone(),
        entry: entry.clone(),
        name: req.name.clone(),
        max_count,
        permits,
        target: req.target(BACKEND).to_string(),
    });
    let policy = two_phase::polled(inner.policy());
    let closed = inner.core.closed();
    let reporter = Reporter::of(inner.pool.observer.get(), &req, BACKEND);
    match two_phase::after_turn(slots, policy, &req, &mut ticket, start, reporter, closed).await {
        Ok(SlotGrant {
            session,
            slots,
            token,
            gate,
        }) => {
            entry.state.slots.take(&slots);
            drop(gate);
            let unlock = match inner.pool.opts.scope {
                Scope::Session => slots_unlock(&req.name, &slots),
                Scope::Transaction => rollback(),
            };
            let turn = Turn {
                ticket,
                keep: Keep::Slots(entry, slots),
            };
            inner.grant(&req, session, unlock, token, turn, start)
        }
        Err(end) => inner.finish(&req, end),
    }
}

/// The permits of one acquire, as core's two-phase acquire sees them (tries only: a busy
/// semaphore is polled, not waited for on the server).
struct SlotLock {
    inner: Arc<Inner>,
    entry: Arc<Entry<SemState>>,
    name: String,
    max_count: u32,
    permits: u32,
    target: String,
}

/// A semaphore attempt that won: its session, slots and token, and the gate of the name's
/// attempts in this process, held until the slots are marked taken.
struct SlotGrant {
    session: Arc<Session>,
    slots: Vec<u32>,
    token: u64,
    gate: OwnedMutexGuard<()>,
}

impl TwoPhase for SlotLock {
    type Grant = SlotGrant;
    /// The session, and the gate held from choosing the free slots of an attempt until the
    /// slots it won are marked taken.
    type Shared = (Arc<Session>, OwnedMutexGuard<()>);
    /// A semaphore never waits on the server (`waits` is false).
    type Waiter = ();

    fn shared(&self) -> BoxFuture<'static, std::result::Result<Self::Shared, Fault>> {
        let (inner, target) = (self.inner.clone(), self.target.clone());
        let gate = self.entry.state.gate.clone();
        Box::pin(async move {
            let gate = gate.lock_owned().await;
            Ok((inner.attempt_session(&target, None).await?, gate))
        })
    }

    fn try_lock(&self, (s, gate): Self::Shared) -> Answer<SlotGrant> {
        let (inner, target) = (self.inner.clone(), self.target.clone());
        let free = self.entry.state.slots.free(self.max_count);
        let permits = self.permits;
        let (scope, seq) = (inner.pool.opts.scope, &inner.pool.opts.fencing_sequence);
        let stmt = slots_attempt(&self.name, &free, permits, scope, seq);
        Box::pin(async move {
            let rows = inner.run_attempt(&s, stmt, &target).await?;
            if rows.is_empty() {
                drop(gate);
                inner.end_attempt(&s).await;
                return Ok(None);
            }
            let cells = (slot_cells(&rows), bigint_cell(&rows, 1));
            let granted = match &cells {
                (Some(slots), Ok(token)) if slots.len() == permits as usize => {
                    parse_token(*token).ok().map(|t| (slots.clone(), t))
                }
                _ => None,
            };
            match granted {
                Some(_) if s.is_dead() => Err(Inner::ended_at_grant(&target, &s)),
                Some((slots, token)) => Ok(Some(SlotGrant {
                    session: s,
                    slots,
                    token,
                    gate,
                })),
                None => {
                    s.kill(String::from(
                        "the server answered a semaphore attempt unexpectedly",
                    ));
                    Err(Fault::fatal(format!(
                        "unexpected answer {cells:?} acquiring {target}"
                    )))
                }
            }
        })
    }

    fn undo(&self, grant: SlotGrant) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        let unlock = slots_unlock(&self.name, &grant.slots);
        Box::pin(async move { inner.undo(&grant.session, unlock).await })
    }

    fn waits(&self) -> bool {
        false
    }

    fn woken(&self) -> BoxFuture<'static, ()> {
        self.entry.state.slots.woken()
    }
}

//! A semaphore acquire: `permits` of the `maxCount` named locks derived from the name, all or
//! none, with tries that never wait, repeated under core's patience (woken at once by a permit
//! freed in this process, else polled with [`two_phase::SLOT_POLL`]) until the deadline.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::two_phase::{self, Answer, TwoPhase};
use distlock_core::{AcquireRequest, Admitted, BoxFuture, Fault, Held, Reporter, Result};
use tokio::time::Instant;

use crate::held::{Claims, Got, Keep, SemState, Turn};
use crate::session::{Session, Use};
use crate::statements::{bump, release_all, semaphore_fence, slot_name, try_all, uuid_short};
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
    let slots = Arc::new(Slots {
        inner: inner.clone(),
        entry: entry.clone(),
        name: req.name.clone(),
        max_count,
        permits,
    });
    let policy = two_phase::polled(inner.policy());
    let closed = inner.core.closed();
    let reporter = Reporter::of(inner.pool.observer.get(), &req, BACKEND);
    match two_phase::after_turn(slots, policy, &req, &mut ticket, start, reporter, closed).await {
        Ok(mut got) => {
            if let Some(claims) = got.claims.take() {
                claims.keep();
            }
            let turn = Turn {
                ticket,
                keep: Keep::Slots(entry, got.slots.clone()),
            };
            Ok(Some(inner.grant(&req, got, turn, start)))
        }
        Err(end) => inner.finish(&req, end),
    }
}

/// The permits of one acquire, as core's two-phase acquire sees them (tries only: a busy
/// semaphore is polled, not waited for on the server).
struct Slots {
    inner: Arc<Inner>,
    entry: Arc<Entry<SemState>>,
    name: String,
    max_count: u32,
    permits: u32,
}

impl TwoPhase for Slots {
    type Grant = Got;
    type Shared = Use;
    /// A semaphore never waits on the server (`waits` is false).
    type Waiter = ();

    fn shared(&self) -> BoxFuture<'static, std::result::Result<Use, Fault>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.ensure_table().await?;
            inner.pool.shared().await
        })
    }

    /// Claims as many untried, unclaimed slots as are still needed and tries them in one
    /// statement, until `permits` are won or none is left to try; then bumps the fencing
    /// counter. Slots won by an attempt that does not get them all are given back.
    fn try_lock(&self, u: Use) -> Answer<Got> {
        let (inner, entry, name) = (self.inner.clone(), self.entry.clone(), self.name.clone());
        let (max_count, permits) = (self.max_count, self.permits);
        let first = (std::process::id() ^ inner.core.held().next_id() as u32) % max_count;
        Box::pin(async move {
            let s = u.session.clone();
            let limit = inner.op_timeout();
            let claims = Claims::new(entry);
            let mut got: Vec<u32> = Vec::new();
            let mut order = (0..max_count).map(|i| (first + i) % max_count);
            while got.len() < permits as usize {
                let need = permits as usize - got.len();
                let batch: Vec<u32> = order
                    .by_ref()
                    .filter(|&i| claims.claim(i))
                    .take(need)
                    .collect();
                if batch.is_empty() {
                    break;
                }
                let names: Vec<String> = batch.iter().map(|&i| slot_name(&name, i)).collect();
                let won = match s.run(Some(limit), try_all(names)).await {
                    Ok(won) => won,
                    Err(f) => {
                        give_back(&s, &name, &got, limit).await;
                        return Err(f);
                    }
                };
                for (i, w) in batch
                    .into_iter()
                    .zip(won.into_iter().chain(std::iter::repeat(false)))
                {
                    if w {
                        got.push(i);
                    } else {
                        claims.unclaim(i);
                    }
                }
            }
            if got.len() < permits as usize {
                give_back(&s, &name, &got, limit).await;
                return Ok(None);
            }
            let token = if inner.pool.opts.uuid_short {
                uuid_short()
            } else {
                bump(&inner.pool.opts.fencing_table, semaphore_fence(&name))
            };
            match s.run(Some(limit), token).await {
                Ok(Some(token)) => {
                    let names = got.iter().map(|&i| slot_name(&name, i)).collect();
                    let mut g = Got::new(s, Some(u), names, token);
                    g.slots = got;
                    g.claims = Some(claims);
                    Ok(Some(g))
                }
                other => {
                    give_back(&s, &name, &got, limit).await;
                    Err(match other {
                        Err(f) => f,
                        _ => Fault::fatal("the fencing counter gave no token"),
                    })
                }
            }
        })
    }

    fn undo(&self, got: Got) -> BoxFuture<'static, ()> {
        let limit = self.inner.op_timeout();
        Box::pin(async move {
            let _ = got.session.run(Some(limit), release_all(got.names)).await;
            // The claims go with `got`, once the permits are given back.
        })
    }

    fn waits(&self) -> bool {
        false
    }

    fn woken(&self) -> BoxFuture<'static, ()> {
        self.entry.state.woken()
    }
}

/// Releases the permit `slots` an attempt won but cannot keep.
async fn give_back(s: &Arc<Session>, name: &str, slots: &[u32], limit: Duration) {
    if slots.is_empty() {
        return;
    }
    let names = slots.iter().map(|&i| slot_name(name, i)).collect();
    let _ = s.run(Some(limit), release_all(names)).await;
}

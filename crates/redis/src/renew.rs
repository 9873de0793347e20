//! Background lease renewal, batched: one task per provider, and per wake-up one script per
//! server (per cluster slot) carrying every lease that is due, instead of a timer and a round
//! trip per lock. The same task fires the lost signal of a lock whose local deadline passed
//! without a successful renewal. This file is the driver: when each lock is due, what a
//! renewal's answers mean and when to wake are decided by the machine
//! ([`crate::machine::lease`], [`crate::machine::vote::tally`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::{Lease, LostSignal, Ticket};
use fred::types::{Key, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Inner;
use crate::machine::lease::{Look, Scan, Slot, wakes_renewer};
use crate::machine::vote::{Renewal, tally};
use crate::op::{Op, Side};
use crate::scripts::Scripts;
use distlock_core::sync::lock;

/// Most leases one script renews.
const CHUNK: usize = 500;

/// A held lock's in-process turn: given back at release, or the moment the lock is lost;
/// shared by the handle and its renewal entry.
pub(crate) type Turn = Arc<Mutex<Option<(Ticket, Arc<Entry<()>>)>>>;

/// One held lock the renewer looks after.
pub struct Tracked {
    pub op: Op,
    pub lease_ms: i64,
    pub lease: Arc<Lease>,
    pub lost: LostSignal,
    pub floor: u64,
    /// The lock's in-process turn, given back the moment it is lost.
    pub turn: Turn,
    /// Its place in the renewal schedule.
    pub slot: Slot,
    /// Renewed in the background (`autoRenew`); if not, only its deadline is watched.
    pub renew: bool,
    /// The lock's name, for events.
    pub name: String,
}

/// When a lock that is not renewed in the background falls due: never, in practice (its local
/// deadline still ends it).
pub fn never_due(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}

#[derive(Default)]
pub struct Renewals {
    locks: Mutex<HashMap<u64, Tracked>>,
    changed: Arc<Notify>,
    started: OnceLock<()>,
    /// When the renewer wakes next; a lock due earlier than that wakes it now.
    wake_at: Mutex<Option<Instant>>,
    sent: AtomicU64,
    batches: AtomicU64,
}

impl Tracked {
    /// Fires the lost signal (unless it fired already) and gives the in-process turn back.
    fn lose(&self, reason: Option<&str>) {
        if let Some(reason) = reason {
            self.lost.fire(reason);
        }
        drop(lock(&self.turn).take());
    }
}

impl Renewals {
    pub fn track(&self, inner: &Arc<Inner>, uid: u64, t: Tracked) {
        let due = t.slot.due;
        let mut locks = lock(&self.locks);
        locks.insert(uid, t);
        if self.started.set(()).is_ok() {
            tokio::spawn(run(Arc::downgrade(inner)));
        }
        // Under the locks' mutex, which the renewer also holds while it sets `wake_at`.
        self.wake_by(due);
        drop(locks);
    }

    /// Wakes the renewer if it sleeps past `at` (it rescans every lock when it wakes, so it is
    /// not woken for locks that fall due after its next wake anyway). Call with the locks'
    /// mutex held.
    fn wake_by(&self, at: Instant) {
        if wakes_renewer(*lock(&self.wake_at), at) {
            self.changed.notify_one();
        }
    }

    /// A manual extend changed the lease length renewals use, and so their period: the next
    /// renewal falls due one period of the new lease after `now`.
    pub fn set_lease(&self, uid: u64, lease_ms: i64, due: Instant) {
        let mut locks = lock(&self.locks);
        if let Some(t) = locks.get_mut(&uid) {
            t.lease_ms = lease_ms;
            // An extend of a lock without auto-renewal moves its deadline, not its renewals.
            t.slot.due = if t.renew { due } else { never_due(due) };
            // Its deadline moved too: the renewer watches it.
            self.wake_by(due);
        }
    }

    /// Renews every tracked lock now (to confirm them after a reconnect), and returns when the
    /// answers are in: `true` when server `server` answered for every one of them.
    pub async fn renew_all(&self, inner: &Arc<Inner>, server: usize) -> bool {
        let now = Instant::now();
        let batch: Vec<(u64, Op, i64, u64)> = lock(&self.locks)
            .iter_mut()
            .filter(|(_, t)| !t.lost.is_lost())
            .filter_map(|(uid, t)| {
                // A lock without auto-renewal is checked with what is left of its lease, so
                // the check does not lengthen it.
                let ms = if t.renew {
                    t.lease_ms
                } else {
                    i64::try_from(t.lease.remaining(now).as_millis()).unwrap_or(i64::MAX)
                };
                (ms > 0).then(|| {
                    t.slot.in_flight = true;
                    (*uid, t.op.clone(), ms, t.floor)
                })
            })
            .collect();
        let chunks: Vec<_> = chunks(inner, batch)
            .into_iter()
            .map(|c| renew_chunk(inner.clone(), c))
            .collect();
        let mut answered = true;
        for c in chunks {
            answered &= c.await.get(server).copied().unwrap_or(false);
        }
        answered
    }

    pub fn untrack(&self, uid: u64) {
        lock(&self.locks).remove(&uid);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

async fn run(inner: Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.core.closed().is_cancelled() {
            return;
        }
        let mut scan = Scan::new(Instant::now(), me.opts.renew_period());
        let mut batch: Vec<(u64, Op, i64, u64)> = Vec::new();
        {
            let mut locks = lock(&me.renewals.locks);
            let mut gone = Vec::new();
            for (uid, t) in locks.iter_mut() {
                match scan.look(&mut t.slot, t.lease.deadline(), t.lost.is_lost()) {
                    Look::Forget => t.lose(None),
                    Look::Expired => t.lose(Some(
                        "its lease ran out at the local deadline without a successful renewal",
                    )),
                    Look::Renew => {
                        batch.push((*uid, t.op.clone(), t.lease_ms, t.floor));
                        continue;
                    }
                    Look::Later => continue,
                }
                gone.push(*uid);
            }
            for uid in gone {
                locks.remove(&uid);
            }
            *lock(&me.renewals.wake_at) = Some(scan.next_wake());
        }
        if !batch.is_empty() {
            for chunk in chunks(&me, batch) {
                tokio::spawn(renew_chunk(me.clone(), chunk));
            }
        }
        let changed = me.renewals.changed.clone();
        let closed = me.core.closed().clone();
        drop(me);
        tokio::select! {
            _ = tokio::time::sleep_until(scan.next_wake()) => {}
            _ = changed.notified() => {}
            _ = closed.cancelled() => return,
        }
    }
}

/// Splits a batch into scripts: by cluster slot on a cluster (a script's keys share a slot),
/// and at most [`CHUNK`] leases each.
fn chunks(inner: &Inner, batch: Vec<(u64, Op, i64, u64)>) -> Vec<Vec<(u64, Op, i64, u64)>> {
    let mut groups: HashMap<u16, Vec<(u64, Op, i64, u64)>> = HashMap::new();
    for b in batch {
        let slot = if inner.cluster { b.1.keys.slot } else { 0 };
        groups.entry(slot).or_default().push(b);
    }
    let mut out = Vec::new();
    for (_, mut g) in groups {
        while g.len() > CHUNK {
            let rest = g.split_off(CHUNK);
            out.push(g);
            g = rest;
        }
        out.push(g);
    }
    out
}

impl Inner {
    /// Renews one lock now: `Some(true)` renewed on a quorum, `Some(false)` gone, `None` unknown.
    pub(crate) async fn renew_one(
        self: &Arc<Self>,
        op: &Op,
        lease_ms: i64,
        floor: u64,
    ) -> Option<bool> {
        let (outcome, _) = vote(self, &[(0, op.clone(), lease_ms, floor)]).await;
        match outcome.first() {
            Some(Renewal::Renewed) => Some(true),
            Some(Renewal::Gone) => Some(false),
            _ => None,
        }
    }
}

/// Runs one renewal script for `chunk` on every server and counts the votes per lease; also
/// says which servers answered.
async fn vote(inner: &Arc<Inner>, chunk: &[(u64, Op, i64, u64)]) -> (Vec<Renewal>, Vec<bool>) {
    let mut keys: Vec<Key> = Vec::with_capacity(chunk.len() * 2);
    let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
    for (_, op, lease_ms, floor) in chunk {
        keys.push(Key::from(op.grant_key()));
        keys.push(Key::from(op.keys.fence.as_str()));
        args.push(Value::from(op.side.code().as_ref()));
        args.push(Value::from(op.id.as_ref()));
        args.push(Value::from(*lease_ms));
        args.push(Value::from(i64::try_from(*floor).unwrap_or(i64::MAX)));
    }
    let keys: Arc<[Key]> = Arc::from(keys);
    let script = &Scripts::get().renew;
    let answers = futures_join(inner.servers.iter().map(|s| {
        let (s, keys, args) = (s.clone(), Arc::clone(&keys), args.clone());
        inner.renewals.batches.fetch_add(1, Ordering::Relaxed);
        async move { s.eval(script, keys, args).await.ok() }
    }))
    .await;
    let n = inner.servers.len();
    let outcomes = (0..chunk.len())
        .map(|i| tally(&answers, i, n, inner.quorum))
        .collect();
    (outcomes, answers.iter().map(Option::is_some).collect())
}

/// Renews `chunk`'s leases; returns which servers answered.
async fn renew_chunk(inner: Arc<Inner>, chunk: Vec<(u64, Op, i64, u64)>) -> Vec<bool> {
    let sent = Instant::now();
    inner
        .renewals
        .sent
        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    let (outcomes, answered) = vote(&inner, &chunk).await;
    let now = Instant::now();
    let mut soonest: Option<Instant> = None;
    let mut locks = lock(&inner.renewals.locks);
    for ((uid, ..), outcome) in chunk.iter().zip(outcomes) {
        let Some(t) = locks.get_mut(uid) else {
            continue;
        };
        let lease = Duration::from_millis(u64::try_from(t.lease_ms).unwrap_or(0));
        let period = inner.renew_period(lease);
        let Some(due) = t.slot.renewed(outcome, sent, now, period) else {
            let side = if t.op.side == Side::W { "key" } else { "entry" };
            t.lose(Some(&format!(
                "a renewal found its {side} gone or owned by someone else"
            )));
            locks.remove(uid);
            continue;
        };
        if !t.renew {
            // A check after a reconnect set the key to what was left of its lease: the local
            // deadline stays where it was, and no renewal falls due.
            t.slot.due = never_due(now);
            continue;
        }
        if outcome == Renewal::Renewed {
            t.lease.renewed(sent);
        } else {
            inner.emit(distlock_core::BackendEvent::RenewalFailed {
                name: t.name.clone(),
                detail: format!(
                    "no quorum of servers answered a renewal; tried again in {} ms, {} ms before the local deadline",
                    due.saturating_duration_since(now).as_millis(),
                    t.lease.remaining(now).as_millis()
                ),
            });
        }
        soonest = Some(soonest.map_or(due, |s| s.min(due)));
    }
    if let Some(at) = soonest {
        inner.renewals.wake_by(at);
    }
    drop(locks);
    answered
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

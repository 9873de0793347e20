//! What every backend's held lock shares: [`HeldCore`], its common half, and [`HeldSet`], the
//! locks a provider holds right now, so `close` can release them and report them lost. Set
//! entries are weak: a handle dropped without release still runs its own `Drop`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::Lease;
use crate::lost::LostSignal;

/// The half of a held lock every backend keeps the same way: how messages name it, its fencing
/// token, its lost signal and whether it was released. A backend's held lock embeds one and
/// answers [`HeldLock`](crate::HeldLock)'s common questions from it.
#[derive(Debug)]
pub struct HeldCore {
    target: String,
    token: u64,
    lost: LostSignal,
    released: AtomicBool,
}

impl HeldCore {
    /// The common half of a grant of `target` (as messages name it) with fencing `token`.
    pub fn new(target: impl Into<String>, token: u64) -> Self {
        Self::with_lost(target, token, LostSignal::new())
    }

    /// The same, with a lost signal made earlier (one a renewer or a session already watches).
    pub fn with_lost(target: impl Into<String>, token: u64, lost: LostSignal) -> Self {
        Self {
            target: target.into(),
            token,
            lost,
            released: AtomicBool::new(false),
        }
    }

    /// How messages name the lock, e.g. `redis lock "orders:42"`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The grant's fencing token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Fires when the lock is known lost.
    pub fn lost(&self) -> &LostSignal {
        &self.lost
    }

    /// Whether the lock was released (by `release`, a drop or the provider's close).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Marks the lock released. `true` for the first call only: the caller that gets `true`
    /// does the release, every later one (a second `release`, the drop after it) does nothing.
    pub fn mark_released(&self) -> bool {
        !self.released.swap(true, Ordering::AcqRel)
    }

    /// Not released and not lost (backends with leases also check their deadline).
    pub fn is_held(&self) -> bool {
        !self.is_released() && !self.lost.is_lost()
    }

    /// For a lock with `lease`: held, and the lease's local deadline not passed, read from the
    /// clock now (whether or not any timer ran). A deadline found passed calls `expired`, which
    /// reports the lock lost the backend's way.
    pub fn is_held_by_lease(&self, lease: &Lease, expired: impl FnOnce()) -> bool {
        if !self.is_held() {
            return false;
        }
        if Instant::now() < lease.deadline() {
            return true;
        }
        expired();
        false
    }

    /// What is left of `lease` by the local deadline: zero once the lock is lost.
    pub fn lease_remaining(&self, lease: &Lease) -> Duration {
        if self.lost.is_lost() {
            return Duration::ZERO;
        }
        lease.remaining(Instant::now())
    }
}

/// Held locks of one provider, by id.
#[derive(Debug)]
pub struct HeldSet<T> {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Weak<T>>>,
}

impl<T> Default for HeldSet<T> {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> HeldSet<T> {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Weak<T>>> {
        // Single inserts and removals: a poisoned lock is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id for a lock about to be inserted.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Records `held` under `id`.
    pub fn insert(&self, id: u64, held: &Arc<T>) {
        self.map().insert(id, Arc::downgrade(held));
    }

    /// Forgets `id` (its lock was released).
    pub fn remove(&self, id: u64) {
        self.map().remove(&id);
    }

    /// How many locks are recorded.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Takes every lock still alive out of the set (for `close`).
    pub fn drain(&self) -> Vec<Arc<T>> {
        self.map()
            .drain()
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_core_releases_once() {
        let core = HeldCore::new("memory lock \"a\"", 7);
        assert!(core.is_held());
        assert_eq!((core.target(), core.token()), ("memory lock \"a\"", 7));
        assert!(core.mark_released());
        assert!(!core.mark_released(), "a second release does nothing");
        assert!(core.is_released() && !core.is_held());
        let lost = HeldCore::new("x", 1);
        lost.lost().fire("gone");
        assert!(!lost.is_held() && !lost.is_released());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leased_lock_is_held_until_its_local_deadline() {
        let ms = std::time::Duration::from_millis;
        let core = HeldCore::new("etcd lock \"a\"", 1);
        let lease = Lease::new(ms(100), Instant::now());
        let expired = std::cell::Cell::new(0);
        assert!(core.is_held_by_lease(&lease, || expired.set(expired.get() + 1)));
        assert_eq!(core.lease_remaining(&lease), ms(100));
        tokio::time::advance(ms(100)).await;
        assert!(!core.is_held_by_lease(&lease, || expired.set(expired.get() + 1)));
        assert_eq!(
            expired.get(),
            1,
            "a passed deadline is reported once per call"
        );
        core.lost().fire("gone");
        assert!(!core.is_held_by_lease(&lease, || expired.set(expired.get() + 1)));
        assert_eq!(
            expired.get(),
            1,
            "a lost lock is not held, and not expired again"
        );
        assert_eq!(core.lease_remaining(&lease), ms(0));
    }

    #[test]
    fn drain_returns_the_live_entries_only() {
        let set: HeldSet<u8> = HeldSet::default();
        let (a, b) = (Arc::new(1), Arc::new(2));
        let (ia, ib) = (set.next_id(), set.next_id());
        assert_ne!(ia, ib);
        set.insert(ia, &a);
        set.insert(ib, &b);
        drop(b);
        assert_eq!(set.len(), 2);
        let live = set.drain();
        assert_eq!(live.len(), 1);
        assert_eq!(*live[0], 1);
        assert!(set.is_empty());
    }
}

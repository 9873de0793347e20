//! The locks a provider holds right now, so `close` can release them and report them lost.
//! Entries are weak: a handle dropped without release still runs its own `Drop`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

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

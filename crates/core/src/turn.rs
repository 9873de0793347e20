//! A grant's share of this process, the same for the SQL backends: its turn in the name's
//! in-process queue and, for a semaphore, the permit slots it holds, which other callers of
//! this process must not try (a session that holds a server lock is granted it again, so two
//! callers of one process on one session would both get it).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::backend::BoxFuture;
use crate::queue::{Entry, Ticket};
use crate::sync::lock;

/// The permit slots of one semaphore name that this process holds or is trying, and the
/// wake-up of its waiters when one is given back.
#[derive(Debug, Default)]
pub struct Slots {
    taken: Mutex<HashSet<u32>>,
    freed: Arc<Notify>,
}

impl AsRef<Slots> for Slots {
    fn as_ref(&self) -> &Slots {
        self
    }
}

impl Slots {
    /// Marks `slot` taken; `false` when this process already holds or tries it.
    pub fn claim(&self, slot: u32) -> bool {
        lock(&self.taken).insert(slot)
    }

    /// Marks `slots` taken.
    pub fn take(&self, slots: &[u32]) {
        lock(&self.taken).extend(slots.iter().copied());
    }

    /// Of the slots `0..max_count`, those this process neither holds nor tries.
    pub fn free(&self, max_count: u32) -> Vec<u32> {
        let taken = lock(&self.taken);
        (0..max_count).filter(|i| !taken.contains(i)).collect()
    }

    /// Forgets `slot` without waking anyone: an attempt that tried it and did not win it (nothing
    /// was given back that a waiter could take).
    pub fn unclaim(&self, slot: u32) {
        lock(&self.taken).remove(&slot);
    }

    /// Gives `slots` back and wakes the name's waiters in this process.
    pub fn give_back(&self, slots: &[u32]) {
        let mut taken = lock(&self.taken);
        for slot in slots {
            taken.remove(slot);
        }
        drop(taken);
        self.freed.notify_waiters();
    }

    /// Completes when a slot of this process is given back after this call (a polled
    /// semaphore's wake-up, asked for before its try so a release in between is not missed).
    pub fn woken(&self) -> BoxFuture<'static, ()> {
        let mut freed = Box::pin(self.freed.clone().notified_owned());
        freed.as_mut().enable();
        Box::pin(freed)
    }
}

/// What a grant keeps of this process besides its ticket: the entry of its lock name (state
/// `L`), or the entry of its semaphore name (state `S`, which has the name's [`Slots`]) and
/// the slots it holds.
#[derive(Debug)]
pub enum Keep<L, S: AsRef<Slots>> {
    /// A lock's name.
    Entry(Arc<Entry<L>>),
    /// A semaphore's name and the permit slots held.
    Slots(Arc<Entry<S>>, Vec<u32>),
}

/// A grant's share of this process. Dropping it gives a semaphore's slots back (waking the
/// name's waiters) and lets the next caller of this process in.
#[derive(Debug)]
pub struct Turn<L, S: AsRef<Slots>> {
    /// The place in the name's queue, granted.
    pub ticket: Ticket,
    /// What else is kept.
    pub keep: Keep<L, S>,
}

impl<L, S: AsRef<Slots>> Drop for Turn<L, S> {
    fn drop(&mut self) {
        if let Keep::Slots(entry, slots) = &self.keep {
            entry.state.as_ref().give_back(slots);
        }
        // The ticket is dropped after this body: the queue moves on once the slots are free.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_given_back_are_free_again_and_wake_a_waiter() {
        let slots = Slots::default();
        assert!(slots.claim(1));
        assert!(!slots.claim(1), "a slot is claimed once");
        slots.take(&[2]);
        assert_eq!(slots.free(4), vec![0, 3]);
        slots.unclaim(1);
        assert_eq!(slots.free(4), vec![0, 1, 3]);
        let woken = slots.woken();
        slots.give_back(&[2]);
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("a give-back wakes a waiter that asked before it");
        assert_eq!(slots.free(4), vec![0, 1, 2, 3]);
    }
}

//! Admission: the synchronous half of every acquire, the same for every backend.
//!
//! In the caller's own call, before anything is awaited: the name is checked, a closed provider
//! refuses (both in [`Backend::acquire`](crate::Backend::acquire), before the backend's own
//! checks), a semaphore's `maxCount` must agree with what this process already uses for the
//! name, and the request joins the name's in-process FIFO queue (so callers are served in call
//! order). What comes back is the request's place in that queue; the backend's asynchronous
//! half waits for it, then for the store.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use tokio::time::Instant;

use crate::backend::{AcquireRequest, Interrupted, LockKind, race};
use crate::error::{Error, Result};
use crate::queue::{Entry, Registry, SHARED_CAPACITY, Ticket};

/// One provider's in-process queues: one per lock name (its mutex and both sides of its
/// reader-writer lock share it) with the backend's state `L` for the name beside it, and one
/// per semaphore name with state `S`.
#[derive(Debug)]
pub struct Turns<L, S = L> {
    locks: Registry<String, L>,
    semaphores: Registry<String, S>,
}

impl<L, S> Default for Turns<L, S> {
    fn default() -> Self {
        Self {
            locks: Registry::default(),
            semaphores: Registry::default(),
        }
    }
}

/// An admitted acquire: its name's entry and its place in the name's queue.
#[derive(Debug)]
pub struct Admitted<T> {
    /// The name's queue and the backend's state for it.
    pub entry: Arc<Entry<T>>,
    /// The place in the queue; granted when the acquire's in-process turn comes.
    pub ticket: Ticket,
}

/// Waits for `ticket`'s turn in this process, until `deadline` (`None`: no end), the request's
/// cancel token or the provider's close token `closed`, whichever comes first.
pub async fn wait_turn(
    req: &AcquireRequest,
    ticket: &mut Ticket,
    deadline: Option<Instant>,
    closed: &CancellationToken,
) -> std::result::Result<(), Interrupted> {
    race(ticket.granted(), deadline, req.cancel.as_ref(), closed)
        .await
        .done()
}

impl<L, S> Turns<L, S> {
    /// Joins the queue of `req`'s lock name (a mutex or either side of a reader-writer lock;
    /// after [`check_open`](crate::check_open)). A reader takes one unit of the name's capacity; a writer or a
    /// mutex takes all of it. `make` creates the backend's state for a name nobody uses now.
    pub fn lock(&self, req: &AcquireRequest, make: impl FnOnce() -> L) -> Admitted<L> {
        let weight = if req.kind == LockKind::Read {
            1
        } else {
            SHARED_CAPACITY
        };
        let entry = self.locks.entry(&req.name, SHARED_CAPACITY, make);
        let ticket = entry.queue.enqueue(weight);
        Admitted { entry, ticket }
    }

    /// Joins the queue of `req`'s semaphore name for its permits (after
    /// [`check_open`](crate::check_open)),
    /// once its `maxCount` agrees with what this process already uses for the name.
    pub fn semaphore(
        &self,
        req: &AcquireRequest,
        backend: &'static str,
        make: impl FnOnce() -> S,
    ) -> Result<Admitted<S>> {
        let (max_count, permits) = req.kind.counts();
        let entry = self.semaphores.entry(&req.name, u64::from(max_count), make);
        if entry.queue.capacity() != u64::from(max_count) {
            return Err(Error::invalid(
                "maxCount",
                format!(
                    "of {} is {max_count}, but this process already uses it with maxCount {}",
                    req.target(backend),
                    entry.queue.capacity()
                ),
            ));
        }
        let ticket = entry.queue.enqueue(u64::from(permits));
        Ok(Admitted { entry, ticket })
    }

    /// The entry of lock name `name`, if someone in this process holds or waits on it.
    pub fn lock_entry(&self, name: &str) -> Option<Arc<Entry<L>>> {
        self.locks.get(&name.to_owned())
    }

    /// The entry of semaphore name `name`, if someone in this process holds or waits on it.
    pub fn semaphore_entry(&self, name: &str) -> Option<Arc<Entry<S>>> {
        self.semaphores.get(&name.to_owned())
    }
}

impl<T> Turns<T, T> {
    /// Admits `req` (after [`check_open`](crate::check_open)) to `backend`'s provider: see the
    /// module documentation. `make` creates the backend's state for a name nobody uses now.
    pub fn admit(
        &self,
        req: &AcquireRequest,
        backend: &'static str,
        make: impl FnOnce() -> T,
    ) -> Result<Admitted<T>> {
        match req.kind {
            LockKind::Semaphore { .. } => self.semaphore(req, backend, make),
            LockKind::Mutex | LockKind::Read | LockKind::Write => Ok(self.lock(req, make)),
        }
    }

    /// The entry of `name` for `kind`'s family, if someone in this process holds or waits on it.
    pub fn get(&self, name: &str, kind: LockKind) -> Option<Arc<Entry<T>>> {
        match kind {
            LockKind::Semaphore { .. } => self.semaphore_entry(name),
            _ => self.lock_entry(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Timeout;

    fn req(name: &str, kind: LockKind) -> AcquireRequest {
        AcquireRequest {
            name: name.into(),
            kind,
            timeout: Timeout::Forever,
            cancel: None,
            lease: None,
            auto_renew: true,
        }
    }

    #[test]
    fn admits_in_call_order_and_shares_a_name_between_its_lock_kinds() {
        let turns: Turns<()> = Turns::default();
        let mut first = turns
            .admit(&req("a", LockKind::Mutex), "memory", || ())
            .unwrap();
        let mut reader = turns
            .admit(&req("a", LockKind::Read), "memory", || ())
            .unwrap();
        assert!(first.ticket.is_granted());
        assert!(
            !reader.ticket.is_granted(),
            "a reader queues behind a writer of the name"
        );
        assert!(Arc::ptr_eq(&first.entry, &reader.entry));
        drop(first);
        assert!(reader.ticket.is_granted());
        assert!(turns.get("a", LockKind::Write).is_some());
        assert!(
            turns.get("a", LockKind::semaphore(2)).is_none(),
            "semaphores are their own family"
        );
    }

    #[test]
    fn refuses_a_max_count_that_disagrees() {
        let turns: Turns<()> = Turns::default();
        let held = turns
            .admit(&req("s", LockKind::semaphore(3)), "redis", || ())
            .unwrap();
        let e = turns
            .admit(&req("s", LockKind::semaphore(4)), "redis", || ())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "maxCount of redis semaphore \"s\" is 4, but this process already uses it with maxCount 3"
        );
        drop(held);
        assert!(
            turns
                .admit(&req("s", LockKind::semaphore(4)), "redis", || ())
                .is_ok(),
            "a name nobody uses any more takes a new maxCount"
        );
    }
}

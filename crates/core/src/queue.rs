//! The in-process waiter queue: strict FIFO, weighted, registered synchronously.
//!
//! Every backend queues the callers of one process on one name here before any of them talks to
//! the server or the OS, so one process sends at most one waiter per name to the backend, and
//! callers are served in the order they called (the order of the synchronous `enqueue`, not the
//! order in which a multi-threaded runtime happens to poll their futures).
//!
//! The queue is a weighted semaphore: a mutex has capacity 1 and weight 1; a reader-writer lock
//! gives readers weight 1 and writers the whole capacity, so a queued writer holds back the
//! readers behind it (writer preference); a semaphore has capacity `maxCount`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::oneshot;

/// Capacity used for reader-writer queues: readers take 1, writers take all of it.
pub const SHARED_CAPACITY: u64 = 1 << 32;

/// A FIFO weighted semaphore with synchronous registration.
#[derive(Debug)]
pub struct FairQueue {
    capacity: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    next_id: u64,
    /// Waiters by enqueue id: ids only grow, so the first entry is the head of the FIFO, and a
    /// waiter that leaves is removed by id in O(log n) (a linear search here made a storm of
    /// timeouts or cancellations quadratic).
    waiters: BTreeMap<u64, Waiter>,
}

#[derive(Debug)]
struct Waiter {
    weight: u64,
    wake: oneshot::Sender<()>,
}

impl FairQueue {
    /// A queue that grants at most `capacity` units at a time.
    pub fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            state: Mutex::new(State::default()),
        })
    }

    /// The capacity this queue was created with.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave `State` inconsistent (every update is a
        // single assignment or push/pop), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the queue for `weight` units (clamped to the capacity). Returns at once; the ticket
    /// is either granted already or waits its turn behind everyone who enqueued before it.
    pub fn enqueue(self: &Arc<Self>, weight: u64) -> Ticket {
        let weight = weight.clamp(1, self.capacity);
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        if st.waiters.is_empty() && st.used + weight <= self.capacity {
            st.used += weight;
            return Ticket {
                queue: self.clone(),
                weight,
                state: TicketState::Granted,
            };
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.insert(id, Waiter { weight, wake: tx });
        Ticket {
            queue: self.clone(),
            weight,
            state: TicketState::Waiting { id, rx },
        }
    }

    /// Units granted right now (for tests and inspection).
    pub fn in_use(&self) -> u64 {
        self.lock().used
    }

    /// Callers waiting right now (for tests and inspection).
    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    fn give_back(&self, weight: u64) {
        let mut st = self.lock();
        st.used -= weight;
        Self::grant(&mut st, self.capacity);
    }

    fn grant(st: &mut State, capacity: u64) {
        while let Some(front) = st.waiters.first_entry() {
            if st.used + front.get().weight > capacity {
                break;
            }
            let w = front.remove();
            st.used += w.weight;
            // A waiter is removed from the queue (under this lock) before its receiver is
            // dropped, so the send only fails if the ticket was leaked without Drop; then the
            // units come straight back.
            if w.wake.send(()).is_err() {
                st.used -= w.weight;
            }
        }
    }
}

#[derive(Debug)]
enum TicketState {
    Waiting { id: u64, rx: oneshot::Receiver<()> },
    Granted,
    Released,
}

/// A place in a [`FairQueue`]. Dropping it leaves the queue, or gives the units back if they
/// were granted, so a cancelled wait can never strand capacity.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<FairQueue>,
    weight: u64,
    state: TicketState,
}

impl Ticket {
    /// Whether the units are granted, without waiting.
    pub fn is_granted(&mut self) -> bool {
        if let TicketState::Waiting { rx, .. } = &mut self.state
            && rx.try_recv().is_ok()
        {
            self.state = TicketState::Granted;
        }
        matches!(self.state, TicketState::Granted)
    }

    /// Waits for the grant. Cancel-safe: dropping the future keeps the place in the queue;
    /// dropping the ticket leaves it.
    pub async fn granted(&mut self) {
        if let TicketState::Waiting { rx, .. } = &mut self.state {
            // The sender lives in the queue until it fires; an error would mean the queue
            // dropped the waiter, which it only does together with the send.
            let _ = rx.await;
            self.state = TicketState::Granted;
        }
    }

    /// The weight this ticket asked for.
    pub fn weight(&self) -> u64 {
        self.weight
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, TicketState::Released) {
            TicketState::Released => {}
            TicketState::Granted => self.queue.give_back(self.weight),
            TicketState::Waiting { id, mut rx } => {
                let mut st = self.queue.lock();
                if st.waiters.remove(&id).is_some() {
                    // Leaving may let the waiters behind us go (a writer leaving lets readers in).
                    FairQueue::grant(&mut st, self.queue.capacity);
                } else if rx.try_recv().is_ok() {
                    st.used -= self.weight;
                    FairQueue::grant(&mut st, self.queue.capacity);
                }
            }
        }
    }
}

/// One [`FairQueue`] (plus backend state `T`) per key, created on first use and dropped when
/// nobody holds or waits on the key any more.
#[derive(Debug)]
pub struct Registry<K, T> {
    entries: Mutex<HashMap<K, Weak<Entry<T>>>>,
}

/// A registry entry: the queue of one key and whatever the backend keeps beside it.
#[derive(Debug)]
pub struct Entry<T> {
    /// The key's waiter queue.
    pub queue: Arc<FairQueue>,
    /// Backend state for the key (e.g. the file backend's shared OS lock).
    pub state: T,
}

impl<K: Hash + Eq + Clone, T> Default for Registry<K, T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, T> Registry<K, T> {
    /// The entry for `key`, created with `capacity` and `make()` if nobody uses the key now.
    /// Returns the existing entry otherwise, whatever its capacity (callers check it).
    pub fn entry(&self, key: &K, capacity: u64, make: impl FnOnce() -> T) -> Arc<Entry<T>> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = map.get(key).and_then(Weak::upgrade) {
            return found;
        }
        // Sweep dead entries now and then so the map does not grow with every name ever used.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let entry = Arc::new(Entry {
            queue: FairQueue::new(capacity),
            state: make(),
        });
        map.insert(key.clone(), Arc::downgrade(&entry));
        entry
    }

    /// The entry for `key` if someone holds or waits on it now.
    pub fn get(&self, key: &K) -> Option<Arc<Entry<T>>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).and_then(Weak::upgrade)
    }

    /// Keys with a live entry (for tests and inspection).
    pub fn live(&self) -> usize {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn grants_in_enqueue_order() {
        let q = FairQueue::new(1);
        let first = q.enqueue(1);
        let mut tickets: Vec<Ticket> = (0..100).map(|_| q.enqueue(1)).collect();
        assert_eq!(q.waiting(), 100);
        drop(first);
        for i in 0..100 {
            let mut t = tickets.remove(0);
            assert!(t.is_granted(), "ticket {i} should be next");
            for other in tickets.iter_mut() {
                assert!(!other.is_granted());
            }
            drop(t);
        }
        assert_eq!(q.in_use(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_no_trace() {
        let q = FairQueue::new(1);
        let held = q.enqueue(1);
        let mut waiter = q.enqueue(1);
        let res = tokio::time::timeout(Duration::from_millis(20), waiter.granted()).await;
        assert!(res.is_err(), "must still be waiting");
        drop(waiter);
        assert_eq!(q.waiting(), 0);
        drop(held);
        assert_eq!(q.in_use(), 0);
        let mut again = q.enqueue(1);
        assert!(again.is_granted());
    }

    #[tokio::test]
    async fn dropping_a_granted_but_unobserved_ticket_gives_units_back() {
        let q = FairQueue::new(1);
        let held = q.enqueue(1);
        let waiter = q.enqueue(1);
        drop(held); // grants `waiter` through its channel
        assert_eq!(q.in_use(), 1);
        drop(waiter); // never looked at its grant
        assert_eq!(q.in_use(), 0);
    }

    #[tokio::test]
    async fn readers_share_and_a_queued_writer_holds_back_later_readers() {
        let q = FairQueue::new(SHARED_CAPACITY);
        let mut r1 = q.enqueue(1);
        let mut r2 = q.enqueue(1);
        assert!(r1.is_granted() && r2.is_granted());
        let mut w = q.enqueue(SHARED_CAPACITY);
        let mut r3 = q.enqueue(1);
        assert!(!w.is_granted());
        assert!(
            !r3.is_granted(),
            "writer preference: a reader behind a queued writer waits"
        );
        drop(r1);
        drop(r2);
        assert!(w.is_granted());
        assert!(!r3.is_granted());
        drop(w);
        assert!(r3.is_granted());
    }

    #[tokio::test]
    async fn a_writer_leaving_the_queue_lets_readers_behind_it_in() {
        let q = FairQueue::new(SHARED_CAPACITY);
        let _r1 = q.enqueue(1);
        let w = q.enqueue(SHARED_CAPACITY);
        let mut r2 = q.enqueue(1);
        assert!(!r2.is_granted());
        drop(w);
        assert!(r2.is_granted());
    }

    #[tokio::test]
    async fn semaphore_capacity() {
        let q = FairQueue::new(3);
        let mut t: Vec<Ticket> = (0..5).map(|_| q.enqueue(1)).collect();
        let granted = t
            .iter_mut()
            .filter_map(|t| t.is_granted().then_some(()))
            .count();
        assert_eq!(granted, 3);
        t.remove(0);
        assert!(t[2].is_granted());
        assert!(!t[3].is_granted());
    }

    #[tokio::test]
    async fn thousand_async_waiters_complete_in_order() {
        let q = FairQueue::new(1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..1000 {
            let mut t = q.enqueue(1);
            let order = order.clone();
            handles.push(tokio::spawn(async move {
                t.granted().await;
                order.lock().unwrap().push(i);
                tokio::task::yield_now().await;
                drop(t);
            }));
        }
        for h in handles {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .unwrap()
                .unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(*order, (0..1000).collect::<Vec<_>>());
    }

    /// A hundred thousand waiters on one queue: half of them leave (from the back, the worst
    /// order for a linear search), the rest are granted one at a time in enqueue order, and a
    /// writer leaving from the middle lets the readers behind it in. Counts and order only; the
    /// speed is measured by the waiter-drain bench.
    #[test]
    fn a_hundred_thousand_waiters_leave_and_drain_in_order() {
        const N: usize = 100_000;
        let q = FairQueue::new(1);
        let first = q.enqueue(1);
        let mut tickets: Vec<Option<Ticket>> = (0..N).map(|_| Some(q.enqueue(1))).collect();
        assert_eq!(q.waiting(), N);
        for i in (0..N).rev().filter(|i| i % 2 == 1) {
            tickets[i] = None;
        }
        assert_eq!(q.waiting(), N / 2);
        drop(first);
        let mut granted = 0;
        for (i, slot) in tickets.iter_mut().enumerate() {
            let Some(mut t) = slot.take() else { continue };
            assert!(t.is_granted(), "ticket {i} is next");
            granted += 1;
            drop(t);
        }
        assert_eq!(granted, N / 2);
        assert_eq!((q.in_use(), q.waiting()), (0, 0));

        let rw = FairQueue::new(SHARED_CAPACITY);
        let reader = rw.enqueue(1);
        let writers: Vec<Ticket> = (0..N).map(|_| rw.enqueue(SHARED_CAPACITY)).collect();
        let mut late_reader = rw.enqueue(1);
        assert!(!late_reader.is_granted(), "writer preference");
        drop(writers);
        assert!(late_reader.is_granted(), "no writer is left ahead of it");
        drop((reader, late_reader));
        assert_eq!(rw.in_use(), 0);
    }

    #[test]
    fn registry_drops_unused_entries() {
        let reg: Registry<String, ()> = Registry::default();
        let a = reg.entry(&"a".to_string(), 1, || ());
        let a2 = reg.entry(&"a".to_string(), 1, || ());
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(reg.live(), 1);
        drop(a);
        drop(a2);
        assert_eq!(reg.live(), 0);
        let b = reg.entry(&"a".to_string(), 5, || ());
        assert_eq!(b.queue.capacity(), 5);
    }
}

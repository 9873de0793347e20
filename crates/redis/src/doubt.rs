//! The doubt about one server's locks: whether its connection dropped (or moved) since the
//! locks there were last confirmed, how many times that happened, and the Sentinel failover
//! that may hold them in doubt.
//!
//! Three things put a server in doubt: fred's command client reporting a connection error
//! (`server.rs`), the event loop's own connection breaking (`direct.rs`), and the master moving
//! (a Sentinel failover, a `READONLY` reply). Each of them goes through [`Doubt::lose`], so the
//! flag, the loss count and the announcement to the provider always change together. Only a
//! confirmation round ([`crate::machine::confirm`]) that started after the last loss clears it
//! ([`Doubt::confirmed`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distlock_core::sync::lock;
use tokio::sync::mpsc::UnboundedSender;

/// The longest a Sentinel failover holds a server's locks in doubt without any word from the
/// sentinels about its end (a missed announcement): then a confirmation decides.
const FAILOVER_HOLD: Duration = Duration::from_secs(60);

/// What the command connection of server `.0` went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connection closed or failed: locks granted there are in doubt.
    Lost(usize),
    /// The client (re)connected.
    Connected(usize),
}

/// One server's doubt, shared by its connections (see the module documentation).
pub struct Doubt {
    index: usize,
    /// The connection dropped and no renewal has confirmed the locks since.
    doubt: AtomicBool,
    /// Counts connection losses, so a confirmation that raced a new loss does not clear it.
    losses: AtomicU64,
    /// Since when a Sentinel failover is under way: the locks stay in doubt until the sentinels
    /// announce its end (for at most [`FAILOVER_HOLD`]), whatever the old master says.
    failover: Mutex<Option<Instant>>,
    events: UnboundedSender<Event>,
}

impl Doubt {
    /// The doubt of server `index`, announced to the provider on `events`.
    pub fn new(index: usize, events: UnboundedSender<Event>) -> Self {
        Self {
            index,
            doubt: AtomicBool::new(false),
            losses: AtomicU64::new(0),
            failover: Mutex::new(None),
            events,
        }
    }

    /// Whether the connection dropped and the locks there are not yet confirmed.
    pub fn in_doubt(&self) -> bool {
        self.doubt.load(Ordering::Acquire)
    }

    /// How many times the connection was lost so far.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    /// A connection was lost: counts it, puts the locks in doubt and announces `event` (of this
    /// server) to the provider, which confirms the locks. `false` when the provider is gone.
    pub fn lose(&self, event: fn(usize) -> Event) -> bool {
        self.losses.fetch_add(1, Ordering::AcqRel);
        self.doubt.store(true, Ordering::Release);
        self.announce(event)
    }

    /// Tells the provider `event` of this server; `false` when the provider is gone.
    pub fn announce(&self, event: fn(usize) -> Event) -> bool {
        self.events.send(event(self.index)).is_ok()
    }

    /// Puts the locks here in doubt until the next confirmation (a reconnect that no error
    /// announced: the connection may have moved to another server).
    pub fn suspect(&self) {
        self.doubt.store(true, Ordering::Release);
    }

    /// A Sentinel failover begins: the locks are in doubt and stay so until its end.
    pub fn hold(&self) {
        *lock(&self.failover) = Some(Instant::now());
        self.lose(Event::Lost);
    }

    /// The failover ended without a new master: check the locks where they are.
    pub fn recheck(&self) {
        *lock(&self.failover) = None;
        self.announce(Event::Connected);
    }

    /// The master moved: the failover hold ends and the locks are in doubt until confirmed on
    /// the new master.
    pub fn moved(&self) {
        *lock(&self.failover) = None;
        self.lose(Event::Lost);
    }

    /// How much longer a Sentinel failover holds the locks in doubt, if one does: until the
    /// sentinels announce its end (which reconnects or rechecks), at most [`FAILOVER_HOLD`]
    /// after it began, should that announcement be missed.
    pub fn hold_left(&self) -> Option<Duration> {
        lock(&self.failover)
            .and_then(|since| FAILOVER_HOLD.checked_sub(since.elapsed()))
            .filter(|left| !left.is_zero())
    }

    /// The locks there were confirmed by a round that started after `losses` losses: the doubt
    /// ends unless the connection was lost again meanwhile or a failover holds it.
    pub fn confirmed(&self, losses: u64) {
        if self.losses() == losses && self.hold_left().is_none() {
            self.doubt.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doubt() -> (Doubt, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Doubt::new(3, tx), rx)
    }

    #[test]
    fn a_loss_puts_the_locks_in_doubt_until_a_round_that_started_after_it_confirms() {
        let (d, mut rx) = doubt();
        assert!(!d.in_doubt());
        assert!(d.lose(Event::Lost));
        assert_eq!(rx.try_recv(), Ok(Event::Lost(3)));
        let seen = d.losses();
        assert!(d.lose(Event::Connected));
        assert_eq!(rx.try_recv(), Ok(Event::Connected(3)));
        d.confirmed(seen);
        assert!(d.in_doubt(), "a round that raced a loss confirms nothing");
        d.confirmed(d.losses());
        assert!(!d.in_doubt());
        d.suspect();
        assert!(d.in_doubt());
    }

    #[test]
    fn a_failover_holds_the_doubt_until_it_ends() {
        let (d, mut rx) = doubt();
        d.hold();
        assert_eq!(rx.try_recv(), Ok(Event::Lost(3)));
        assert!(d.hold_left().is_some_and(|l| l <= FAILOVER_HOLD));
        d.confirmed(d.losses());
        assert!(d.in_doubt(), "held by the failover");
        d.recheck();
        assert_eq!(rx.try_recv(), Ok(Event::Connected(3)));
        assert_eq!(d.hold_left(), None);
        d.confirmed(d.losses());
        assert!(!d.in_doubt());
        d.hold();
        d.moved();
        assert_eq!(d.hold_left(), None);
        assert!(d.in_doubt());
        drop(rx);
        assert!(!d.lose(Event::Lost), "the provider is gone");
    }
}

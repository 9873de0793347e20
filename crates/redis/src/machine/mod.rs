//! The I/O-free core of the Redis backend: every decision the backend makes, with no socket,
//! no task, no timer and no clock of its own. Replies and time come in as arguments; what to
//! send, revoke, sleep or hand out comes back as values. The drivers (the acquire loop and the
//! renewer in `acquire.rs` and `renew.rs`, over fred or the event loop's own connection) only carry
//! those out.
//!
//! - [`vote`]: one acquire attempt on one server or on a RedLock quorum, the release and the
//!   renewal votes, and the script replies they read.
//! - [`waiter`]: what an acquire does between attempts — ride out trouble, back off after a
//!   split vote, join the wake-ups, wait — and what it reports when it stops.
//! - [`lease`]: the renewal schedule of held locks and the local lease deadline.
//! - [`confirm`]: when a server's locks count as confirmed after a reconnect, and the pauses
//!   between confirmation rounds until then.
//!
//! The protocol itself (RESP framing) is the other I/O-free half, in `wire.rs`.

pub mod confirm;
pub mod lease;
pub mod vote;
pub mod waiter;

use std::time::Duration;

use distlock_core::{Backoff, Policy};

/// How a Redis acquire spends its budget (core's [`Patience`](distlock_core::Patience)); the waiter, the
/// confirmation rounds and the revoke loop all pace by it.
pub const PATIENCE: Policy = Policy {
    // Transient trouble: the first retry after 20 ms (a reset connection is usually back
    // within fred's first reconnects, 1 + 4 + 16 ms), doubling to 1 s, so a server that stays
    // down costs one script a second per waiting process.
    fault_pause: Backoff::new(Duration::from_millis(20), Duration::from_secs(1)),
    // A busy lock is waited on by the waiter's own wake-up side (pub/sub, the holder's lease
    // end, the re-checks above), not by core's polling.
    busy_poll: None,
    // Both clients reconnect by themselves, and a try's one attempt already waits for the
    // connection within its budget: an immediate second attempt would find the same.
    try_retries: 0,
    // Set per provider by [`waiter::policy`]: the server timeout plus `waiter::TRY_SLACK`.
    try_budget: Duration::ZERO,
};

/// The margin RedLock takes off a lease for clock-rate drift between client and servers.
pub fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// Whole milliseconds, saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

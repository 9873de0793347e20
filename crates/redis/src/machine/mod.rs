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

/// The margin RedLock takes off a lease for clock-rate drift between client and servers.
pub fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// Whole milliseconds, saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

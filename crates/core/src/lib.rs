//! distlock-core: what every distlock backend shares and nothing backend-specific.
//!
//! - [`Error`] with stable codes ([`Error::code`]) that the bindings turn into JS error classes;
//! - validated options ([`Timeout`], names, counts);
//! - [`queue`]: the in-process FIFO waiter queue, one per name;
//! - [`LostSignal`] and [`Lease`]: how a held lock reports that it is lost;
//! - the [`Backend`] and [`HeldLock`] traits the providers implement, and [`ProviderCore`] and
//!   [`HeldCore`], the common halves they embed;
//! - [`patience`]: how an acquire spends its budget (attempts, pauses, busy versus trouble), one
//!   I/O-free machine every backend drives, and [`Fault`], the failure it reports;
//! - [`reactor`]: the host event loop a network backend may do its socket I/O on;
//! - [`sync::lock`]: the poison-tolerant mutex lock every crate uses;
//! - [`turn`]: a grant's share of this process (its turn, a semaphore's permit slots);
//! - [`two_phase`]: the SQL backends' acquire (a try on a shared session, then a wait on one of
//!   its own, interrupted when the caller stops) and their pools' session pick.

pub mod admission;
pub mod backend;
pub mod drive;
pub mod error;
pub mod fault;
pub mod held;
pub mod lease;
pub mod lost;
pub mod memory;
pub mod options;
pub mod patience;
pub mod queue;
pub mod reactor;
pub mod stall;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod turn;
pub mod two_phase;

pub use admission::{Admitted, Turns, wait_turn};
pub use backend::{
    AcquireRequest, Acquiring, Backend, BackendEvent, BoxFuture, Held, HeldLock, Interrupted,
    LockInfo, LockKind, Observer, ProviderCore, ProviderState, Waited, check_open, race,
};
pub use drive::{Attempted, drive};
pub use error::{Cause, Error, Result, Target};
pub use fault::Fault;
pub use held::{HeldCore, HeldSet};
pub use lease::Lease;
pub use lost::LostSignal;
pub use memory::MemoryBackend;
pub use options::{Timeout, TlsPem, validate_max_count, validate_name, validate_permits};
pub use patience::{Backoff, End, Input, Patience, Policy, Step};
pub use queue::{FairQueue, Registry, SHARED_CAPACITY, Ticket};
pub use stall::Reporter;
pub use tokio_util::sync::CancellationToken;
pub use two_phase::TwoPhase;

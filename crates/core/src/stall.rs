//! What a wait with no timeout says while its store cannot be reached: the report's shape and
//! pace. The patience machine decides when; the backend's observer hears it.

use std::time::Duration;

use crate::backend::{AcquireRequest, Observer};
use crate::options::Timeout;

/// How long an acquire with no timeout rides out an unreachable store before it says so
/// ([`crate::backend::BackendEvent::Stalled`]); it says so again every [`STALL_EVERY`] while it lasts. With a
/// timeout, the error at the deadline says it.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How often a stalled wait repeats its report.
pub const STALL_EVERY: Duration = Duration::from_secs(30);

/// Where an acquire with no timeout reports that it cannot reach its store: the backend's
/// observer, and the lock as messages name it.
#[derive(Clone)]
pub struct Reporter {
    pub(crate) observer: Observer,
    pub(crate) lock: String,
}

impl Reporter {
    /// Reports of the acquire of `lock` (as messages name it) to `observer`.
    pub fn new(observer: Observer, lock: impl Into<String>) -> Self {
        Self {
            observer,
            lock: lock.into(),
        }
    }

    /// The reporter of `req` on `backend`, when an observer listens and the request has no
    /// timeout (with one, nothing would be reported).
    pub fn of(
        observer: Option<&Observer>,
        req: &AcquireRequest,
        backend: &'static str,
    ) -> Option<Self> {
        match (observer, req.timeout) {
            (Some(o), Timeout::Forever) => {
                Some(Self::new(o.clone(), req.target(backend).to_string()))
            }
            _ => None,
        }
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("lock", &self.lock)
            .finish()
    }
}

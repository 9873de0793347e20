//! The I/O-free decisions of the PostgreSQL backend: which session a statement runs on, which
//! errors a reconnect can cure, when a waiter rides out a fault and for how long it pauses, and
//! what an acquire reports when it stops. No connection, task or clock here: the driver (the
//! acquire rounds in `lib.rs`, the pool in `pool.rs`, over tokio-postgres) passes in what it
//! saw and carries out what comes back. The lock queue itself is the server's (FIFO), and the
//! in-process queue is core's `FairQueue`.

use std::time::Duration;

use distlock_core::{AcquireRequest, Error, Interrupted, Result};

use crate::BACKEND;
use crate::pool::Fault;

/// The first and the longest pause between reconnects of a waiter riding out a fault.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why one round of an acquire did not end in a grant or a "busy".
#[derive(Debug)]
pub(crate) enum Miss {
    /// The deadline passed, the caller cancelled, or the provider closed.
    Stop(Interrupted),
    /// The server failed or could not be reached.
    Fault(Fault),
    /// The deadline passed with no answer at all from the server since the call began.
    Silent(String),
}

/// Whether an error with SQLSTATE `code` (`None`: no server error, the connection broke) is
/// one a reconnect can cure: a connection exception (class 08), the server shutting down,
/// restarting or out of connections, or our statement cancelled by someone else. Refusals
/// (authentication, permissions, syntax) are not.
pub(crate) fn transient_sqlstate(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "57014")
        }
        None => true,
    }
}

/// A waiter's reconnect state: how long to pause next, and the fault it is riding out
/// (cleared once the server answers again).
#[derive(Debug)]
pub(crate) struct Retry {
    backoff: Duration,
    cause: Option<String>,
}

impl Retry {
    pub(crate) fn new() -> Self {
        Self {
            backoff: FIRST_BACKOFF,
            cause: None,
        }
    }

    /// The server answered: the fault being ridden out is over.
    pub(crate) fn answered(&mut self) {
        self.cause = None;
    }

    /// After a round of an acquire missed with `miss`: the pause before the next round, or
    /// `None` when the acquire ends here (then [`Retry::outcome`]). Only transient faults are
    /// ridden out, and never by a try (`zero`).
    pub(crate) fn again(&mut self, miss: &Miss, zero: bool) -> Option<Duration> {
        let Miss::Fault(f) = miss else {
            return None;
        };
        if !f.transient || zero {
            return None;
        }
        self.cause = Some(f.message.clone());
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(pause)
    }

    /// What an acquire that stops with `miss` returns; `server` names the server. Out of time
    /// while riding out a fault is a backend error naming the fault (the server was not
    /// reachable, which is not the same as the lock being busy).
    pub(crate) fn outcome<T>(
        &self,
        miss: Miss,
        req: &AcquireRequest,
        server: &str,
    ) -> Result<Option<T>> {
        match miss {
            Miss::Fault(f) => Err(f.into_error(server)),
            Miss::Silent(message) => {
                let facts =
                    crate::pool::cause_of(server, self.cause.as_deref().unwrap_or(&message));
                Err(Error::backend(
                    BACKEND,
                    match &self.cause {
                        Some(cause) => format!("{message}; earlier: {cause}"),
                        None => message,
                    },
                    facts,
                ))
            }
            Miss::Stop(Interrupted::TimedOut) => match &self.cause {
                Some(cause) => Err(Error::backend(
                    BACKEND,
                    format!(
                        "the timeout of {} ran out while {server} could not be reached: {cause}",
                        req.target(BACKEND)
                    ),
                    crate::pool::cause_of(server, cause),
                )),
                None => Ok(None),
            },
            Miss::Stop(why) => why.into_outcome(req, BACKEND),
        }
    }
}

/// What the pool knows of one open session when it chooses one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) dead: bool,
    /// Owned by one caller (a blocking wait, or a transaction-scoped lock).
    pub(crate) busy: bool,
    /// Statements sent and not yet answered.
    pub(crate) inflight: usize,
    /// Locks held on it.
    pub(crate) holds: bool,
}

/// A shared session's rank for a statement that never waits (lower is better), or `None` if it
/// cannot take one. Shared use spreads statements by how many are in flight and packs locks
/// onto sessions that already hold some, keeping empty ones free for blocking waits.
pub(crate) fn shared_rank(l: Load) -> Option<(usize, bool)> {
    (!l.dead && !l.busy).then_some((l.inflight, !l.holds))
}

/// Whether a session can be handed to one caller for a blocking wait (or a transaction): it
/// holds nothing, runs nothing and is alive.
pub(crate) fn free_for_wait(l: Load) -> bool {
    !l.dead && !l.busy && !l.holds && l.inflight == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlock_core::{LockKind, Timeout};

    fn req() -> AcquireRequest {
        AcquireRequest {
            name: "orders".into(),
            kind: LockKind::Mutex,
            timeout: Timeout::Forever,
            lease: None,
            auto_renew: true,
            cancel: None,
        }
    }

    fn fault(transient: bool) -> Miss {
        Miss::Fault(Fault {
            message: "the connection was reset".into(),
            transient,
        })
    }

    fn backend_message(r: Result<Option<()>>) -> String {
        match r {
            Err(Error::Backend { message, .. }) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sqlstates_a_reconnect_cures() {
        for c in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "57014",
        ] {
            assert!(transient_sqlstate(Some(c)), "{c}");
        }
        for c in ["28P01", "42501", "42601", "55P03", "40P01"] {
            assert!(!transient_sqlstate(Some(c)), "{c}");
        }
        assert!(transient_sqlstate(None), "a broken connection");
    }

    #[test]
    fn a_waiter_rides_out_transient_faults_with_doubling_pauses() {
        let mut r = Retry::new();
        let pauses: Vec<u128> = (0..7)
            .map(|_| r.again(&fault(true), false).map_or(0, |d| d.as_millis()))
            .collect();
        assert_eq!(pauses, vec![50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            r.again(&fault(false), false),
            None,
            "a refusal ends the acquire"
        );
        assert_eq!(
            Retry::new().again(&fault(true), true),
            None,
            "a try never retries"
        );
        assert_eq!(r.again(&Miss::Stop(Interrupted::TimedOut), false), None);
    }

    #[test]
    fn a_timeout_is_busy_unless_a_fault_was_being_ridden_out() {
        let req = req();
        let r = Retry::new();
        assert!(matches!(
            r.outcome::<()>(Miss::Stop(Interrupted::TimedOut), &req, "127.0.0.1:5432"),
            Ok(None)
        ));
        let mut r = Retry::new();
        r.again(&fault(true), false);
        let m = backend_message(r.outcome(Miss::Stop(Interrupted::TimedOut), &req, "db:5432"));
        assert!(
            m.contains("ran out while db:5432 could not be reached: the connection was reset"),
            "{m}"
        );
        // The server answered since: plain busy again.
        r.answered();
        assert!(matches!(
            r.outcome::<()>(Miss::Stop(Interrupted::TimedOut), &req, "db:5432"),
            Ok(None)
        ));
        r.again(&fault(true), false);
        let m = backend_message(r.outcome(
            Miss::Silent("no answer from db:5432".into()),
            &req,
            "db:5432",
        ));
        assert_eq!(
            m,
            "no answer from db:5432; earlier: the connection was reset"
        );
        assert!(matches!(
            r.outcome::<()>(Miss::Stop(Interrupted::Cancelled), &req, "db:5432"),
            Err(Error::Cancelled { .. })
        ));
        assert_eq!(
            backend_message(r.outcome(fault(false), &req, "db:5432")),
            "the connection was reset"
        );
    }

    #[test]
    fn shared_statements_go_to_the_least_loaded_session_that_already_holds_locks() {
        let l = |inflight, holds| Load {
            dead: false,
            busy: false,
            inflight,
            holds,
        };
        let sessions = [l(2, true), l(1, false), l(1, true), l(0, false)];
        let best = |s: &[Load]| {
            s.iter()
                .enumerate()
                .filter_map(|(i, x)| shared_rank(*x).map(|r| (r, i)))
                .min()
                .map(|(_, i)| i)
        };
        assert_eq!(best(&sessions), Some(3), "fewest in flight first");
        assert_eq!(
            best(&sessions[..3]),
            Some(2),
            "then the one that holds locks"
        );
        let gone = [
            Load {
                dead: true,
                ..l(0, true)
            },
            Load {
                busy: true,
                ..l(0, true)
            },
        ];
        assert_eq!(best(&gone), None);
    }

    #[test]
    fn only_an_idle_empty_live_session_is_handed_out_for_a_wait() {
        let idle = Load {
            dead: false,
            busy: false,
            inflight: 0,
            holds: false,
        };
        assert!(free_for_wait(idle));
        assert!(!free_for_wait(Load {
            holds: true,
            ..idle
        }));
        assert!(!free_for_wait(Load {
            inflight: 1,
            ..idle
        }));
        assert!(!free_for_wait(Load { busy: true, ..idle }));
        assert!(!free_for_wait(Load { dead: true, ..idle }));
    }
}

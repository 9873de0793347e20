//! Patience: how an acquire spends its budget once its in-process turn has come.
//!
//! Every backend runs the same loop: attempt; when the lock is busy, wait for a wake-up (or
//! re-check after a pause, where nothing can wake it); when the store fails in a way a retry may
//! cure, pause and attempt again; stop at the deadline, the caller's cancel or the provider's
//! close. What the acquire reports when it stops is one rule for every backend:
//!
//! - the store said "busy" more recently than it failed: the lock is busy (`Ok(None)`, which the
//!   caller turns into a `LockTimeoutError`);
//! - the store was failing when the budget ended, or never answered at all: the backend is in
//!   trouble (`LockBackendError` naming the fault), never "busy";
//! - a fault no retry can cure ends the acquire at once, with that fault; so does any fault of a
//!   try (timeout 0), except for the backend's one immediate retry of a stale pooled session.
//!
//! [`Patience`] is that loop as an I/O-free machine with one entry point, [`Patience::step`]:
//! the driver feeds what happened ([`Input`]) with the time it read, and carries out the
//! [`Step`] it gets back. The machine owns the deadline and the pauses; the driver owns the
//! sockets, the timers and the wake-ups. The driver's loop is always the same:
//!
//! ```text
//! let mut step = patience.step(Input::Begin, now);
//! loop {
//!     step = match step {
//!         Step::Attempt { until }  => match attempt(until) {       // bounded by `until`
//!             granted              => return granted,
//!             busy                 => patience.step(Input::Busy, now),
//!             answered, not done   => patience.step(Input::Answered, now),
//!             fault                => patience.step(Input::Fault(fault), now),
//!             `until` passed       => patience.step(Input::Elapsed, now),
//!         },
//!         Step::Pause { until }    => sleep until `until`, then Input::Elapsed,
//!         Step::Wait { until }     => the backend's wake-up (Input::Woken), or `until` (Input::Elapsed),
//!         Step::Done(end)          => return end.into_result(..),
//!     }                            // a cancel or close at any point: Input::Cancelled / Input::Closed
//! }
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{AcquireRequest, BackendEvent, Interrupted};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::options::Timeout;
use crate::stall::{Reporter, STALL_AFTER, STALL_EVERY};

/// A pause that doubles after each use, from `first` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `first` doubling to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    fn after(self, pause: Duration) -> Duration {
        (pause * 2).min(self.max)
    }
}

/// What differs between backends in how they spend a budget. Each backend passes its values
/// with the reason for each beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The pauses between attempts while a transient fault is ridden out.
    pub fault_pause: Backoff,
    /// How a busy lock is waited on. `None`: the backend is woken when the lock may be free (the
    /// server's own queue, pub/sub, a watch), so it waits for that ([`Input::Woken`]) or the
    /// deadline. `Some`: nothing can wake it (another process's OS lock, a slot taken by a
    /// foreign session), so it re-checks after these pauses, and a wake-up it does get (a
    /// release in this process) cuts the pause short.
    pub busy_poll: Option<Backoff>,
    /// How many times a try (timeout 0) attempts again, at once, after a transient fault: a
    /// pooled session the server closed while it sat idle (a restart, an idle timeout) is not
    /// a reason for a try to fail. 0 for backends whose connections reconnect by themselves.
    pub try_retries: u32,
    /// How long one attempt of a try (timeout 0) may take: a try has no budget of its own, so
    /// it is bounded by the backend's connect and operation timeouts.
    pub try_budget: Duration,
}

/// What happened, as the driver feeds it to [`Patience::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The acquire's in-process turn came: it may start attempting.
    Begin,
    /// An attempt found the lock held by someone else: the store answered.
    Busy,
    /// The store answered and the acquire is neither granted nor refused: go again at once
    /// (etcd re-plans after its predecessor went away, a semaphore's slot changed hands).
    Answered,
    /// An attempt failed.
    Fault(Fault),
    /// The time the last step named (an attempt's, a pause's or a wait's `until`) has come.
    Elapsed,
    /// The backend's wake-up for a busy lock came: it may be free now.
    Woken,
    /// The caller cancelled.
    Cancelled,
    /// The provider was closed.
    Closed,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Attempt now; an attempt still running at `until` is abandoned (its undo is the
    /// backend's) and reported as [`Input::Elapsed`].
    Attempt {
        /// When the attempt must have answered; `None` for no bound.
        until: Option<Instant>,
    },
    /// Sleep until `until`, then feed [`Input::Elapsed`]. A transient fault is being ridden out.
    Pause {
        /// When to attempt again.
        until: Instant,
    },
    /// The lock is busy: wait for the backend's wake-up ([`Input::Woken`]) or `until`
    /// ([`Input::Elapsed`]), whichever comes first.
    Wait {
        /// The deadline, or the next re-check of a backend that polls; `None`: wait for the
        /// wake-up alone.
        until: Option<Instant>,
    },
    /// The acquire is over, without a grant.
    Done(End),
}

/// How an acquire that was not granted ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The budget ran out while the lock was busy.
    Busy,
    /// A fault ended it: one no retry cures, or one of a try.
    Failed(Fault),
    /// The budget ran out while the store was failing (`fault`: the last failure, not cured by
    /// an answer since), or before it answered at all (`fault` `None`).
    Unreachable {
        /// The failure being ridden out when the budget ended.
        fault: Option<Fault>,
        /// How long the acquire had attempted.
        waited: Duration,
    },
    /// The caller cancelled.
    Cancelled,
    /// The provider was closed.
    Closed,
}

impl From<Interrupted> for End {
    /// How an acquire ends when its wait for the in-process turn was cut: the deadline reads
    /// busy (the lock is held in this process), a cancel or a close as themselves.
    fn from(why: Interrupted) -> Self {
        match why {
            Interrupted::TimedOut => End::Busy,
            Interrupted::Cancelled => End::Cancelled,
            Interrupted::Closed => End::Closed,
        }
    }
}

impl End {
    /// What the acquire returns: `Ok(None)` for a busy lock, else the error a user sees.
    /// `backend` and `server` name where it failed (`server` as messages show it, e.g.
    /// `127.0.0.1:5432/postgres`, or a list of servers).
    pub fn into_result<T>(
        self,
        req: &AcquireRequest,
        backend: &'static str,
        server: &str,
    ) -> Result<Option<T>> {
        match self {
            End::Busy => Ok(None),
            End::Failed(f) => Err(f.into_error(backend, Some(server))),
            End::Unreachable { fault, waited } => {
                let target = req.target(backend);
                let ms = waited.as_millis();
                Err(match fault {
                    Some(f) => {
                        let cause = f.cause_on(Some(server));
                        let message = format!(
                            "the timeout of {target} ran out after {ms} ms while {server} could not be reached: {}",
                            f.message
                        );
                        Error::backend(backend, message, cause)
                    }
                    None => {
                        let message = format!(
                            "the timeout of {target} ran out after {ms} ms with no answer from {server}"
                        );
                        let cause = Fault::transient(message.clone()).cause_on(Some(server));
                        Error::backend(backend, message, cause)
                    }
                })
            }
            End::Cancelled => Interrupted::Cancelled.into_outcome(req, backend),
            End::Closed => Interrupted::Closed.into_outcome(req, backend),
        }
    }
}

/// One acquire's patience: see the module documentation for the loop that drives it.
#[derive(Debug)]
pub struct Patience {
    policy: Policy,
    zero: bool,
    started: Instant,
    deadline: Option<Instant>,
    /// The next pause while riding out a fault.
    fault_pause: Duration,
    /// The next re-check of a busy lock, for backends that poll.
    busy_pause: Option<Duration>,
    /// The fault being ridden out; cleared by an answer.
    trouble: Option<Fault>,
    /// Since when the store has failed without an answer in between.
    trouble_since: Option<Instant>,
    /// Who hears of a wait with no timeout that cannot reach its store, and when next.
    reporter: Option<Reporter>,
    next_report: Option<Instant>,
    /// Whether the store has answered since the acquire began.
    answered: bool,
    /// A try's immediate retries left.
    try_retries: u32,
    /// How it ended, once the machine has returned [`Step::Done`].
    done: Option<End>,
}

impl Patience {
    /// The patience of an acquire with `timeout`, whose turn began at `now`.
    pub fn new(policy: Policy, timeout: Timeout, now: Instant) -> Self {
        Self {
            policy,
            zero: timeout == Timeout::Zero,
            started: now,
            deadline: match timeout {
                Timeout::Zero => Some(now + policy.try_budget),
                other => other.deadline(now),
            },
            fault_pause: policy.fault_pause.first,
            busy_pause: policy.busy_poll.map(|b| b.first),
            trouble: None,
            trouble_since: None,
            reporter: None,
            next_report: None,
            answered: false,
            try_retries: policy.try_retries,
            done: None,
        }
    }

    /// Reports to `reporter` when the acquire has no timeout and its store stays unreachable
    /// for [`STALL_AFTER`] (then every [`STALL_EVERY`]); `None` reports nothing.
    pub fn reporting(mut self, reporter: Option<Reporter>) -> Self {
        self.reporter = reporter;
        self
    }

    /// When the acquire's budget ends (for a try, its attempt's bound); `None` for no bound.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The fault being ridden out right now, if any (for logs and diagnostics).
    pub fn trouble(&self) -> Option<&Fault> {
        self.trouble.as_ref()
    }

    /// Whether the store has answered since the acquire began.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// Feeds what happened at `now`; returns what to do next. After [`Step::Done`] every input
    /// returns the same end again.
    pub fn step(&mut self, input: Input, now: Instant) -> Step {
        if let Some(end) = &self.done {
            return Step::Done(end.clone());
        }
        let step = match input {
            Input::Begin => self.attempt(),
            Input::Cancelled => Step::Done(End::Cancelled),
            Input::Closed => Step::Done(End::Closed),
            Input::Busy => {
                self.heard();
                if self.zero || self.past(now) {
                    Step::Done(End::Busy)
                } else {
                    self.wait(now)
                }
            }
            Input::Answered => {
                self.heard();
                if self.past(now) && !self.zero {
                    Step::Done(End::Busy)
                } else {
                    self.attempt()
                }
            }
            Input::Fault(f) => self.fault(f, now),
            Input::Elapsed | Input::Woken => {
                if self.past(now) {
                    Step::Done(self.end_at_deadline(now))
                } else {
                    self.attempt()
                }
            }
        };
        if let Step::Done(end) = &step {
            self.done = Some(end.clone());
        }
        step
    }

    fn heard(&mut self) {
        self.answered = true;
        self.trouble = None;
        self.trouble_since = None;
        self.next_report = None;
        self.fault_pause = self.policy.fault_pause.first;
    }

    fn past(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    fn attempt(&self) -> Step {
        Step::Attempt {
            until: self.deadline,
        }
    }

    fn wait(&mut self, now: Instant) -> Step {
        let recheck = self.busy_pause.map(|pause| {
            if let Some(b) = self.policy.busy_poll {
                self.busy_pause = Some(b.after(pause));
            }
            now + pause
        });
        let until = match (recheck, self.deadline) {
            (Some(r), Some(d)) => Some(r.min(d)),
            (r, d) => r.or(d),
        };
        Step::Wait { until }
    }

    fn fault(&mut self, f: Fault, now: Instant) -> Step {
        if !f.transient {
            return Step::Done(End::Failed(f));
        }
        if self.zero {
            if self.try_retries > 0 && !self.past(now) {
                self.try_retries -= 1;
                return self.attempt();
            }
            return Step::Done(End::Failed(f));
        }
        // A store that never answered has been unreachable since the acquire began.
        let began = if self.answered { now } else { self.started };
        let since = *self.trouble_since.get_or_insert(began);
        self.trouble = Some(f);
        if self.past(now) {
            return Step::Done(self.end_at_deadline(now));
        }
        self.report_stall(since, now);
        let pause = self.fault_pause;
        self.fault_pause = self.policy.fault_pause.after(pause);
        let until = now + pause;
        Step::Pause {
            until: self.deadline.map_or(until, |d| until.min(d)),
        }
    }

    /// A wait with no deadline says what it waits for once the store has been unreachable for
    /// [`STALL_AFTER`], and again every [`STALL_EVERY`].
    fn report_stall(&mut self, since: Instant, now: Instant) {
        let (None, Some(reporter), Some(fault)) = (self.deadline, &self.reporter, &self.trouble)
        else {
            return;
        };
        let waited = now.saturating_duration_since(since);
        if waited < STALL_AFTER || self.next_report.is_some_and(|at| now < at) {
            return;
        }
        self.next_report = Some(now + STALL_EVERY);
        (reporter.observer)(BackendEvent::Stalled {
            lock: reporter.lock.clone(),
            waited,
            detail: fault.message.clone(),
        });
    }

    /// The one rule for an acquire whose budget ended: trouble when the store was failing or
    /// never answered, busy when it answered last.
    fn end_at_deadline(&self, now: Instant) -> End {
        if self.trouble.is_none() && self.answered {
            return End::Busy;
        }
        End::Unreachable {
            fault: self.trouble.clone(),
            waited: now.saturating_duration_since(self.started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LockKind;

    const MS: Duration = Duration::from_millis(1);

    fn policy(busy_poll: Option<Backoff>) -> Policy {
        Policy {
            fault_pause: Backoff::new(50 * MS, 1000 * MS),
            busy_poll,
            try_retries: 1,
            try_budget: 300 * MS,
        }
    }

    fn req(timeout: Timeout) -> AcquireRequest {
        AcquireRequest {
            name: "orders".into(),
            kind: LockKind::Mutex,
            timeout,
            cancel: None,
            lease: None,
            auto_renew: true,
        }
    }

    fn at(t0: Instant, ms: u32) -> Instant {
        t0 + ms * MS
    }

    fn lost() -> Fault {
        Fault::transient("the connection was reset")
    }

    fn refused() -> Fault {
        Fault::fatal("password authentication failed")
    }

    /// A machine for `timeout` that has begun at `t0` and been told its first attempt's answer.
    fn begun(timeout: Timeout, busy_poll: Option<Backoff>) -> (Patience, Instant) {
        let t0 = Instant::now();
        let mut p = Patience::new(policy(busy_poll), timeout, t0);
        let deadline = p.deadline();
        assert_eq!(p.step(Input::Begin, t0), Step::Attempt { until: deadline });
        (p, t0)
    }

    fn message<T: std::fmt::Debug>(r: Result<Option<T>>) -> String {
        match r {
            Err(Error::Backend { message, .. }) => message,
            other => panic!("not a backend error: {other:?}"),
        }
    }

    #[test]
    fn begin_attempts_within_the_budget_or_a_tries_bound() {
        let t0 = Instant::now();
        let mut p = Patience::new(policy(None), Timeout::After(500 * MS), t0);
        assert_eq!(
            p.step(Input::Begin, t0),
            Step::Attempt {
                until: Some(at(t0, 500))
            }
        );
        let mut p = Patience::new(policy(None), Timeout::Forever, t0);
        assert_eq!(p.step(Input::Begin, t0), Step::Attempt { until: None });
        let mut p = Patience::new(policy(None), Timeout::Zero, t0);
        assert_eq!(
            p.step(Input::Begin, t0),
            Step::Attempt {
                until: Some(at(t0, 300))
            },
            "a try is bounded by the backend's try budget"
        );
    }

    #[test]
    fn busy_ends_a_try_and_waits_for_a_wake_up_until_the_deadline() {
        let (mut p, t0) = begun(Timeout::Zero, None);
        assert_eq!(p.step(Input::Busy, at(t0, 2)), Step::Done(End::Busy));

        let (mut p, t0) = begun(Timeout::After(500 * MS), None);
        assert_eq!(
            p.step(Input::Busy, at(t0, 2)),
            Step::Wait {
                until: Some(at(t0, 500))
            }
        );
        assert_eq!(
            p.step(Input::Woken, at(t0, 100)),
            Step::Attempt {
                until: Some(at(t0, 500))
            }
        );
        assert_eq!(
            p.step(Input::Busy, at(t0, 101)),
            Step::Wait {
                until: Some(at(t0, 500))
            }
        );
        assert_eq!(p.step(Input::Elapsed, at(t0, 500)), Step::Done(End::Busy));

        let (mut p, t0) = begun(Timeout::Forever, None);
        assert_eq!(p.step(Input::Busy, at(t0, 2)), Step::Wait { until: None });
    }

    #[test]
    fn a_backend_that_polls_re_checks_a_busy_lock_with_doubling_pauses_cut_at_the_deadline() {
        let poll = Backoff::new(MS, 8 * MS);
        let (mut p, t0) = begun(Timeout::After(20 * MS), Some(poll));
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..8 {
            let Step::Wait { until: Some(u) } = p.step(Input::Busy, now) else {
                break;
            };
            waits.push((u - now).as_millis());
            now = u;
            match p.step(Input::Elapsed, now) {
                Step::Attempt { .. } => {}
                Step::Done(End::Busy) => break,
                other => panic!("{other:?}"),
            }
        }
        // 1, 2, 4, 8, then the 5 ms left before the deadline at 20 ms.
        assert_eq!(waits, vec![1, 2, 4, 8, 5]);
        assert_eq!(now, at(t0, 20));
        let (mut p, _) = begun(Timeout::Forever, Some(poll));
        let now = Instant::now();
        assert_eq!(
            p.step(Input::Busy, now),
            Step::Wait {
                until: Some(now + MS)
            }
        );
    }

    #[test]
    fn transient_faults_are_ridden_out_with_pauses_doubling_to_a_second() {
        let (mut p, t0) = begun(Timeout::Forever, None);
        let mut now = t0;
        let mut pauses = vec![];
        for _ in 0..7 {
            let Step::Pause { until } = p.step(Input::Fault(lost()), now) else {
                panic!("a transient fault is ridden out");
            };
            pauses.push((until - now).as_millis());
            now = until;
            assert_eq!(p.step(Input::Elapsed, now), Step::Attempt { until: None });
        }
        assert_eq!(pauses, vec![50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.trouble(), Some(&lost()));
        // An answer ends the trouble and resets the pause.
        assert_eq!(p.step(Input::Busy, now), Step::Wait { until: None });
        assert_eq!(p.trouble(), None);
        assert_eq!(p.step(Input::Woken, now), Step::Attempt { until: None });
        assert_eq!(
            p.step(Input::Fault(lost()), now),
            Step::Pause {
                until: now + 50 * MS
            }
        );
    }

    #[test]
    fn a_pause_never_outlasts_the_deadline() {
        let (mut p, t0) = begun(Timeout::After(30 * MS), None);
        assert_eq!(
            p.step(Input::Fault(lost()), at(t0, 1)),
            Step::Pause { until: at(t0, 30) }
        );
    }

    #[test]
    fn the_deadline_during_trouble_is_a_backend_error_naming_the_fault() {
        let (mut p, t0) = begun(Timeout::After(120 * MS), None);
        assert!(matches!(p.step(Input::Busy, at(t0, 1)), Step::Wait { .. }));
        assert_eq!(
            p.step(Input::Woken, at(t0, 10)),
            Step::Attempt {
                until: Some(at(t0, 120))
            }
        );
        assert!(matches!(
            p.step(Input::Fault(lost()), at(t0, 20)),
            Step::Pause { .. }
        ));
        let end = p.step(Input::Elapsed, at(t0, 120));
        assert_eq!(
            end,
            Step::Done(End::Unreachable {
                fault: Some(lost()),
                waited: 120 * MS
            })
        );
        let Step::Done(end) = end else { unreachable!() };
        let text =
            message(end.into_result::<()>(&req(Timeout::After(120 * MS)), "postgres", "db:5432"));
        assert_eq!(
            text,
            "the timeout of postgres lock \"orders\" ran out after 120 ms while db:5432 could not be reached: the connection was reset"
        );
    }

    #[test]
    fn a_fault_reported_at_the_deadline_is_trouble_too() {
        let (mut p, t0) = begun(Timeout::After(100 * MS), None);
        assert!(matches!(p.step(Input::Busy, at(t0, 1)), Step::Wait { .. }));
        assert!(matches!(
            p.step(Input::Fault(lost()), at(t0, 100)),
            Step::Done(End::Unreachable { fault: Some(_), .. })
        ));
    }

    #[test]
    fn the_deadline_with_no_answer_ever_is_trouble_not_busy() {
        let (mut p, t0) = begun(Timeout::After(500 * MS), None);
        let end = p.step(Input::Elapsed, at(t0, 500));
        assert_eq!(
            end,
            Step::Done(End::Unreachable {
                fault: None,
                waited: 500 * MS
            })
        );
        let Step::Done(end) = end else { unreachable!() };
        let text =
            message(end.into_result::<()>(&req(Timeout::After(500 * MS)), "mysql", "db:3306"));
        assert!(text.contains("with no answer from db:3306"), "{text}");
        // A try that gets no answer within its bound is trouble as well.
        let (mut p, t0) = begun(Timeout::Zero, None);
        assert!(matches!(
            p.step(Input::Elapsed, at(t0, 300)),
            Step::Done(End::Unreachable { fault: None, .. })
        ));
    }

    #[test]
    fn the_deadline_after_an_answer_is_busy() {
        let (mut p, t0) = begun(Timeout::After(100 * MS), None);
        assert!(matches!(
            p.step(Input::Answered, at(t0, 5)),
            Step::Attempt { .. }
        ));
        assert_eq!(p.step(Input::Elapsed, at(t0, 100)), Step::Done(End::Busy));
        let (mut p, t0) = begun(Timeout::After(100 * MS), None);
        assert_eq!(p.step(Input::Answered, at(t0, 100)), Step::Done(End::Busy));
    }

    #[test]
    fn a_fault_no_retry_cures_ends_the_acquire_at_once() {
        for timeout in [Timeout::Zero, Timeout::After(MS * 1000), Timeout::Forever] {
            let (mut p, t0) = begun(timeout, None);
            assert_eq!(
                p.step(Input::Fault(refused()), at(t0, 1)),
                Step::Done(End::Failed(refused())),
                "{timeout:?}"
            );
        }
        let (mut p, t0) = begun(Timeout::Forever, None);
        let _ = p.step(Input::Fault(lost()), t0);
        assert_eq!(
            p.step(Input::Elapsed, at(t0, 50)),
            Step::Attempt { until: None }
        );
        assert_eq!(
            p.step(Input::Fault(refused()), at(t0, 51)),
            Step::Done(End::Failed(refused())),
            "a refusal while riding out trouble still ends it"
        );
    }

    #[test]
    fn a_try_retries_a_transient_fault_once_at_once_then_fails_with_it() {
        let (mut p, t0) = begun(Timeout::Zero, None);
        assert_eq!(
            p.step(Input::Fault(lost()), at(t0, 1)),
            Step::Attempt {
                until: Some(at(t0, 300))
            }
        );
        assert_eq!(
            p.step(Input::Fault(lost()), at(t0, 2)),
            Step::Done(End::Failed(lost()))
        );
        let mut none = policy(None);
        none.try_retries = 0;
        let mut p = Patience::new(none, Timeout::Zero, t0);
        let _ = p.step(Input::Begin, t0);
        assert_eq!(
            p.step(Input::Fault(lost()), t0),
            Step::Done(End::Failed(lost()))
        );
        // No retry once the try's bound has passed.
        let (mut p, t0) = begun(Timeout::Zero, None);
        assert_eq!(
            p.step(Input::Fault(lost()), at(t0, 300)),
            Step::Done(End::Failed(lost()))
        );
    }

    #[test]
    fn cancel_and_close_end_every_state() {
        type Setup = fn(&mut Patience, Instant);
        let states: [(&str, Setup); 4] = [
            ("attempting", |_, _| {}),
            ("waiting", |p, t| {
                let _ = p.step(Input::Busy, t);
            }),
            ("pausing", |p, t| {
                let _ = p.step(Input::Fault(lost()), t);
            }),
            ("re-attempting", |p, t| {
                let _ = p.step(Input::Busy, t);
                let _ = p.step(Input::Woken, t);
            }),
        ];
        for (state, setup) in states {
            for (input, end) in [
                (Input::Cancelled, End::Cancelled),
                (Input::Closed, End::Closed),
            ] {
                let (mut p, t0) = begun(Timeout::Forever, None);
                setup(&mut p, t0);
                assert_eq!(
                    p.step(input.clone(), t0),
                    Step::Done(end.clone()),
                    "{state}"
                );
            }
        }
        let r = req(Timeout::Forever);
        assert!(matches!(
            End::Cancelled.into_result::<()>(&r, "redis", "a:1"),
            Err(Error::Cancelled { .. })
        ));
        assert!(matches!(
            End::Closed.into_result::<()>(&r, "redis", "a:1"),
            Err(Error::Closed { .. })
        ));
        assert!(matches!(
            End::Busy.into_result::<()>(&r, "redis", "a:1"),
            Ok(None)
        ));
    }

    #[test]
    fn a_finished_machine_stays_finished() {
        let (mut p, t0) = begun(Timeout::Zero, None);
        assert_eq!(p.step(Input::Busy, t0), Step::Done(End::Busy));
        assert_eq!(p.step(Input::Woken, t0), Step::Done(End::Busy));
        assert!(matches!(p.step(Input::Begin, t0), Step::Done(_)));
    }

    #[test]
    fn a_failed_end_names_the_server_and_keeps_the_facts() {
        let r = req(Timeout::Forever);
        let Err(Error::Backend { message, cause, .. }) =
            End::Failed(refused()).into_result::<()>(&r, "postgres", "db:5432")
        else {
            panic!("not a backend error");
        };
        assert_eq!(message, "password authentication failed");
        assert_eq!(cause.server.as_deref(), Some("db:5432"));
    }
}

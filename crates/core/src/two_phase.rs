//! The two-phase acquire of the SQL backends, and how their pools pick a session.
//!
//! PostgreSQL advisory locks and MySQL named locks are taken the same way: first a *try* that
//! never waits on the server, on a session shared with other callers (pipelined, or one
//! statement after another), so a free lock costs one round trip and no session of its own;
//! when the lock is busy, a *wait* on a session of the caller's own, with a timeout the server
//! keeps by itself (`lock_timeout`, `GET_LOCK(name, seconds)`), so a wait whose caller is gone
//! never turns into a grant long after its deadline. A wait the caller stops early (deadline,
//! cancel, close) is *interrupted* on the server (a cancel request, `KILL CONNECTION`), and a
//! grant whose answer came after the caller stopped waiting is *undone*.
//!
//! [`TwoPhase`] is what a backend supplies: the statements and sessions, as futures that own
//! what they need (so they can run to their end after the caller left). [`acquire`] is the
//! strategy, run under core's [`Patience`] (attempts, pauses, busy versus trouble at the
//! deadline). [`pick`] is the one rule for which open session a statement goes to.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::wait_turn;
use crate::backend::{AcquireRequest, BoxFuture, Interrupted, Waited, race};
use crate::fault::Fault;
use crate::options::Timeout;
use crate::patience::{Backoff, End, Input, Patience, Policy, Step};
use crate::queue::Ticket;
use crate::stall::Reporter;

/// How a SQL backend's waiter riding out a fault paces its reconnects: after 50 ms, doubling to
/// 1 s, quick after a passing reset, and at most one connection attempt a second against a
/// server that is down.
pub const FAULT_PAUSE: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// How a SQL backend's semaphore polls for permits freed by other processes (its permits are
/// taken by tries; one freed in this process wakes the waiter at once): after 2 ms, doubling to
/// 50 ms. A permit is usually given back within a few milliseconds, and 50 ms keeps a long
/// wait's load small.
pub const SLOT_POLL: Backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));

/// A SQL backend's `policy` for a semaphore: the same, with its permits polled at
/// [`SLOT_POLL`].
pub fn polled(policy: Policy) -> Policy {
    Policy {
        busy_poll: Some(SLOT_POLL),
        ..policy
    }
}

/// An answer to come: a grant, `None` (busy, or the server's own timeout), or a fault.
pub type Answer<G> = BoxFuture<'static, Result<Option<G>, Fault>>;

/// What a SQL backend supplies to the two-phase acquire of one lock.
///
/// Every future returned here owns what it needs (`'static`): a try or a wait whose caller
/// stopped waiting is not dropped but run to its end in the background, where a grant it
/// brings is undone ([`TwoPhase::undo`], [`TwoPhase::interrupt`]). Each future bounds itself
/// by the backend's operation timeout where the server may stay silent.
pub trait TwoPhase: Send + Sync + 'static {
    /// A grant: its session, its fencing token, and whatever the backend keeps until the lock
    /// is handed out.
    type Grant: Send + 'static;
    /// A shared session, taken for one try (with whatever else the try needs first: the
    /// fencing sequence or table, the in-process gate of a semaphore's slots).
    type Shared: Send + 'static;
    /// A session owned by one waiter for its blocking wait.
    type Waiter: Send + 'static;

    /// A shared session for the next try. Nothing is sent that needs undoing before it
    /// answers: a caller that stops waiting drops this future.
    fn shared(&self) -> BoxFuture<'static, Result<Self::Shared, Fault>>;

    /// The try on `shared`, a statement that never waits on the server: `Some` grant, or
    /// `None` when the lock is busy (the session then handed back).
    fn try_lock(&self, shared: Self::Shared) -> Answer<Self::Grant>;

    /// Undoes a grant whose answer came after its caller stopped waiting.
    fn undo(&self, grant: Self::Grant) -> BoxFuture<'static, ()>;

    /// Whether a busy try is followed by a blocking wait. `false`: the lock is polled (a
    /// semaphore's permits, tried together; the policy's `busy_poll` paces it and
    /// [`TwoPhase::woken`] cuts a pause short).
    fn waits(&self) -> bool {
        true
    }

    /// A session of the caller's own for the wait; `None` when none can be had now (every
    /// session holds locks and the pool is full): the acquire tries again. (This and the three
    /// below are never called for a polled lock, which keeps the defaults.)
    fn waiter(&self) -> BoxFuture<'static, Result<Option<Self::Waiter>, Fault>> {
        Box::pin(async { Ok(None) })
    }

    /// The blocking wait on `waiter`; the server gives up by itself at `until` (`None`: never),
    /// answering `None`. The future hands the session back when it answers without a grant.
    fn wait(&self, _waiter: &Self::Waiter, _until: Option<Instant>) -> Answer<Self::Grant> {
        Box::pin(async { Ok(None) })
    }

    /// Ends a wait whose caller stopped waiting (`why`): interrupts it on the server (a cancel
    /// request, `KILL CONNECTION`), undoes a grant that raced the interrupt, and cleans up or
    /// closes `waiter`. The caller waits up to [`TwoPhase::settle`] for this future; it runs
    /// on in the background after that.
    fn interrupt(
        &self,
        _why: Interrupted,
        _waiter: Self::Waiter,
        _wait: Answer<Self::Grant>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// How long a caller whose wait was interrupted for `why` waits for [`TwoPhase::interrupt`]
    /// before it settles anyway.
    fn settle(&self, _why: Interrupted) -> Duration {
        Duration::ZERO
    }

    /// A wake-up for a polled lock ([`TwoPhase::waits`] `false`): completes when it may be
    /// free (a permit given back in this process). Asked for before each try, so a release
    /// between the try and the pause is not missed. Never, by default.
    fn woken(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

/// The asynchronous half of a SQL backend's acquire of `req`, begun at `start`: the wait for
/// `ticket`'s turn in this process, then [`acquire`] of `lock` under `policy` (with the
/// request's timeout and cancel token). A stalled wait tells `reporter`.
pub async fn after_turn<S: TwoPhase>(
    lock: Arc<S>,
    policy: Policy,
    req: &AcquireRequest,
    ticket: &mut Ticket,
    start: Instant,
    reporter: Option<Reporter>,
    closed: &CancellationToken,
) -> Result<S::Grant, End> {
    wait_turn(req, ticket, req.timeout.deadline(start), closed).await?;
    let cancel = req.cancel.as_ref();
    acquire(lock, policy, req.timeout, start, reporter, cancel, closed).await
}

/// Runs the two-phase acquire of `lock` with `timeout`, begun at `start` (the acquire's own
/// start, so the in-process turn counts against the budget), under `policy`: the grant, or how
/// the acquire ended without one (see [`End::into_result`]). A wait with no timeout that
/// cannot reach the server tells `reporter` (see [`Patience::reporting`]).
pub async fn acquire<S: TwoPhase>(
    lock: Arc<S>,
    policy: Policy,
    timeout: Timeout,
    start: Instant,
    reporter: Option<Reporter>,
    cancel: Option<&CancellationToken>,
    closed: &CancellationToken,
) -> Result<S::Grant, End> {
    let zero = timeout == Timeout::Zero;
    let mut patience = Patience::new(policy, timeout, start).reporting(reporter);
    let mut woken: Option<BoxFuture<'static, ()>> = None;
    let mut step = patience.step(Input::Begin, Instant::now());
    loop {
        let input = match step {
            Step::Done(end) => return Err(end),
            Step::Attempt { until } => {
                woken = Some(lock.woken());
                match round(&lock, zero, until, cancel, closed).await {
                    Ok(grant) => return Ok(grant),
                    Err(input) => input,
                }
            }
            Step::Pause { until } => {
                let sleep = tokio::time::sleep_until(until);
                interrupted(race(sleep, None, cancel, closed).await, Input::Elapsed)
            }
            Step::Wait { until } => {
                let wake = woken.take().unwrap_or_else(|| lock.woken());
                interrupted(race(wake, until, cancel, closed).await, Input::Woken)
            }
        };
        step = patience.step(input, Instant::now());
    }
}

/// One attempt: the try, then (the lock busy, time to wait) the wait.
async fn round<S: TwoPhase>(
    lock: &Arc<S>,
    zero: bool,
    until: Option<Instant>,
    cancel: Option<&CancellationToken>,
    closed: &CancellationToken,
) -> Result<S::Grant, Input> {
    let shared = match race(lock.shared(), until, cancel, closed).await {
        Waited::Done(Ok(s)) => s,
        Waited::Done(Err(f)) => return Err(Input::Fault(f)),
        other => return Err(interrupted(other, Input::Elapsed)),
    };
    let mut tried = lock.try_lock(shared);
    match race(&mut tried, until, cancel, closed).await {
        Waited::Done(Ok(Some(grant))) => return Ok(grant),
        Waited::Done(Ok(None)) => {}
        Waited::Done(Err(f)) => return Err(Input::Fault(f)),
        other => {
            // The answer still comes: what it grants is given back.
            let lock = lock.clone();
            tokio::spawn(async move {
                if let Ok(Some(grant)) = tried.await {
                    lock.undo(grant).await;
                }
            });
            return Err(interrupted(other, Input::Elapsed));
        }
    }
    if zero || !lock.waits() {
        return Err(Input::Busy);
    }
    // From here on the server has answered this round: a deadline is "busy".
    let waiter = match race(lock.waiter(), until, cancel, closed).await {
        Waited::Done(Ok(Some(w))) => w,
        Waited::Done(Ok(None)) => return Err(Input::Answered),
        Waited::Done(Err(f)) => return Err(Input::Fault(f)),
        other => return Err(interrupted(other, Input::Busy)),
    };
    let mut waiting = lock.wait(&waiter, until);
    match race(&mut waiting, until, cancel, closed).await {
        Waited::Done(Ok(Some(grant))) => Ok(grant),
        // The server's own timeout: at the deadline that is "busy", before it (a timeout the
        // server rounds) the acquire goes again.
        Waited::Done(Ok(None)) => Err(Input::Answered),
        Waited::Done(Err(f)) => Err(Input::Fault(f)),
        other => {
            let why = match other {
                Waited::Cancelled => Interrupted::Cancelled,
                Waited::Closed => Interrupted::Closed,
                _ => Interrupted::TimedOut,
            };
            let ending = tokio::spawn(lock.interrupt(why, waiter, waiting));
            let _ = tokio::time::timeout(lock.settle(why), ending).await;
            Err(interrupted(other, Input::Busy))
        }
    }
}

/// The input for a race that ended: `done` when the future or the deadline ended it.
fn interrupted<T>(w: Waited<T>, done: Input) -> Input {
    match w {
        Waited::Cancelled => Input::Cancelled,
        Waited::Closed => Input::Closed,
        Waited::Done(_) | Waited::TimedOut => done,
    }
}

/// What a pool knows of one open session when it picks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// The connection ended.
    pub dead: bool,
    /// Owned by one caller (a blocking wait, or a transaction-scoped lock).
    pub owned: bool,
    /// Statements (or callers) on it now.
    pub inflight: usize,
    /// Locks held on it.
    pub holds: bool,
}

/// What a statement needs of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Shared with other callers: statements that never wait, on sessions whose statements
    /// queue one after another (`pipelined` false) or go out together (`pipelined` true).
    Shared {
        /// Whether a session takes a statement while others are in flight on it.
        pipelined: bool,
    },
    /// Owned by the caller: a blocking wait (or a transaction-scoped lock).
    Own,
}

/// Which session a pool gives a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick<T = usize> {
    /// The open session at this index (the pool marks it used or owned at once).
    Take(T),
    /// A new session: there is room and no open one fits well.
    Open,
    /// None now: wait until a session is freed or closes.
    Later,
}

impl<T> Pick<T> {
    /// The same pick with the session named by `f` (the index turned into the session).
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Pick<U> {
        match self {
            Pick::Take(t) => Pick::Take(f(t)),
            Pick::Open => Pick::Open,
            Pick::Later => Pick::Later,
        }
    }
}

/// The one rule for which session a statement for `usage` goes to, among the open ones
/// (`room`: whether the pool may open another).
///
/// - Shared use spreads statements by how many are in flight and packs locks onto sessions that
///   already hold some, keeping empty ones free for blocking waits. A session whose statements
///   queue is only taken while busy when the pool is full (else a new one is opened).
/// - A wait (or a transaction) is only given a session that holds nothing and runs nothing, so
///   an unlock never queues behind a wait.
pub fn pick(sessions: &[Load], usage: Usage, room: bool) -> Pick {
    let chosen = match usage {
        Usage::Shared { pipelined } => sessions
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.dead && !l.owned)
            .min_by_key(|(_, l)| (l.inflight, !l.holds))
            .filter(|(_, l)| pipelined || l.inflight == 0 || !room),
        Usage::Own => sessions
            .iter()
            .enumerate()
            .find(|(_, l)| !l.dead && !l.owned && !l.holds && l.inflight == 0),
    };
    match chosen {
        Some((i, _)) => Pick::Take(i),
        None if room => Pick::Open,
        None => Pick::Later,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::patience::Backoff;

    const MS: Duration = Duration::from_millis(1);

    /// A grant: the fake's lock and when it was granted.
    #[derive(Debug, PartialEq, Eq)]
    struct Grant(&'static str);

    /// An in-memory lock on one server: `holder` is someone else holding it until `free_at`;
    /// every statement answers after `rtt`; faults are scripted.
    struct Fake {
        rtt: Duration,
        /// When the other holder lets go (`None`: never).
        free_at: Mutex<Option<Instant>>,
        /// Faults the next tries answer with, in order.
        try_faults: Mutex<Vec<Fault>>,
        waits: bool,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Fake {
        fn new(free_after: Option<Duration>) -> Self {
            Self {
                rtt: MS,
                free_at: Mutex::new(free_after.map(|d| Instant::now() + d)),
                try_faults: Mutex::new(Vec::new()),
                waits: true,
                log: Arc::default(),
            }
        }

        fn note(log: &Mutex<Vec<String>>, what: String) {
            log.lock().unwrap().push(what);
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }

        fn free_at(&self) -> Option<Instant> {
            *self.free_at.lock().unwrap()
        }
    }

    fn ms_since(t0: Instant) -> u128 {
        (Instant::now() - t0).as_millis()
    }

    impl TwoPhase for Fake {
        type Grant = Grant;
        type Shared = ();
        type Waiter = u32;

        fn shared(&self) -> BoxFuture<'static, Result<(), Fault>> {
            Box::pin(async { Ok(()) })
        }

        fn try_lock(&self, (): ()) -> Answer<Grant> {
            let (rtt, log, free_at) = (self.rtt, self.log.clone(), self.free_at());
            let fault = self.try_faults.lock().unwrap().pop();
            Box::pin(async move {
                tokio::time::sleep(rtt).await;
                if let Some(f) = fault {
                    Fake::note(&log, "try: fault".into());
                    return Err(f);
                }
                let free = free_at.is_some_and(|t| Instant::now() >= t);
                Fake::note(
                    &log,
                    format!("try: {}", if free { "granted" } else { "busy" }),
                );
                Ok(free.then_some(Grant("try")))
            })
        }

        fn undo(&self, grant: Grant) -> BoxFuture<'static, ()> {
            let log = self.log.clone();
            Box::pin(async move { Fake::note(&log, format!("undo {}", grant.0)) })
        }

        fn waits(&self) -> bool {
            self.waits
        }

        fn waiter(&self) -> BoxFuture<'static, Result<Option<u32>, Fault>> {
            Box::pin(async { Ok(Some(7)) })
        }

        fn wait(&self, waiter: &u32, until: Option<Instant>) -> Answer<Grant> {
            let (log, free_at, w) = (self.log.clone(), self.free_at(), *waiter);
            Box::pin(async move {
                // The server grants at free_at, or gives up at its own timeout.
                let grant_at = free_at.filter(|f| until.is_none_or(|u| *f <= u));
                match (grant_at, until) {
                    (Some(at), _) => tokio::time::sleep_until(at).await,
                    (None, Some(u)) => tokio::time::sleep_until(u + 5 * MS).await,
                    (None, None) => std::future::pending().await,
                }
                Fake::note(&log, format!("wait on {w}: {}", grant_at.is_some()));
                Ok(grant_at.map(|_| Grant("wait")))
            })
        }

        fn interrupt(
            &self,
            why: Interrupted,
            waiter: u32,
            wait: Answer<Grant>,
        ) -> BoxFuture<'static, ()> {
            let log = self.log.clone();
            Box::pin(async move {
                drop(wait);
                // The server confirms the interrupt after 30 ms.
                tokio::time::sleep(30 * MS).await;
                Fake::note(&log, format!("interrupted {waiter}: {why:?}"));
            })
        }

        fn settle(&self, _: Interrupted) -> Duration {
            100 * MS
        }

        fn woken(&self) -> BoxFuture<'static, ()> {
            let free_at = self.free_at();
            Box::pin(async move {
                match free_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn policy(busy_poll: Option<Backoff>) -> Policy {
        Policy {
            fault_pause: Backoff::new(50 * MS, 1000 * MS),
            busy_poll,
            try_retries: 1,
            try_budget: 300 * MS,
        }
    }

    async fn run(
        fake: Fake,
        timeout: Timeout,
        cancel: Option<&CancellationToken>,
    ) -> (Result<Grant, End>, Arc<Fake>) {
        let fake = Arc::new(fake);
        let t0 = Instant::now();
        let busy_poll = (!fake.waits).then(|| Backoff::new(20 * MS, 40 * MS));
        let out = acquire(
            fake.clone(),
            policy(busy_poll),
            timeout,
            t0,
            None,
            cancel,
            &CancellationToken::new(),
        )
        .await;
        (out, fake)
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_lock_is_granted_by_the_try_alone() {
        let t0 = Instant::now();
        let (out, fake) = run(Fake::new(Some(Duration::ZERO)), Timeout::Forever, None).await;
        assert_eq!(out.unwrap(), Grant("try"));
        assert_eq!(fake.log(), vec!["try: granted"]);
        assert_eq!(ms_since(t0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_lock_is_waited_for_on_a_session_of_its_own() {
        let t0 = Instant::now();
        let (out, fake) = run(Fake::new(Some(200 * MS)), Timeout::After(1000 * MS), None).await;
        assert_eq!(out.unwrap(), Grant("wait"));
        assert_eq!(fake.log(), vec!["try: busy", "wait on 7: true"]);
        assert_eq!(ms_since(t0), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_never_waits() {
        let (out, fake) = run(Fake::new(None), Timeout::Zero, None).await;
        assert_eq!(out.unwrap_err(), End::Busy);
        assert_eq!(fake.log(), vec!["try: busy"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_cut_by_the_deadline_is_interrupted_and_reads_busy() {
        let t0 = Instant::now();
        let (out, fake) = run(Fake::new(None), Timeout::After(150 * MS), None).await;
        assert_eq!(out.unwrap_err(), End::Busy);
        // The caller waited for the server's confirmation (30 ms < the 100 ms settle).
        assert_eq!(ms_since(t0), 180);
        assert_eq!(
            fake.log(),
            vec!["try: busy", "interrupted 7: TimedOut"],
            "the wait was dropped by its interrupt, not run to the server's timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_settles_within_the_settle_time() {
        let token = CancellationToken::new();
        let fire = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(50 * MS).await;
            fire.cancel();
        });
        let mut fake = Fake::new(None);
        fake.rtt = MS;
        let t0 = Instant::now();
        let (out, fake) = run(fake, Timeout::Forever, Some(&token)).await;
        assert_eq!(out.unwrap_err(), End::Cancelled);
        assert_eq!(ms_since(t0), 80);
        assert_eq!(fake.log(), vec!["try: busy", "interrupted 7: Cancelled"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_answered_after_the_deadline_is_undone() {
        let mut fake = Fake::new(Some(Duration::ZERO));
        fake.rtt = 400 * MS; // longer than the try's 300 ms budget
        let (out, fake) = run(fake, Timeout::Zero, None).await;
        assert_eq!(
            out.unwrap_err(),
            End::Unreachable {
                fault: None,
                waited: 300 * MS
            }
        );
        assert!(fake.log().is_empty());
        tokio::time::sleep(200 * MS).await;
        assert_eq!(fake.log(), vec!["try: granted", "undo try"]);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_faults_are_ridden_out_and_a_fatal_one_ends_it() {
        let fake = Fake::new(Some(Duration::ZERO));
        *fake.try_faults.lock().unwrap() = vec![Fault::transient("reset"); 2];
        let t0 = Instant::now();
        let (out, fake) = run(fake, Timeout::After(1000 * MS), None).await;
        assert_eq!(out.unwrap(), Grant("try"));
        assert_eq!(fake.log(), vec!["try: fault", "try: fault", "try: granted"]);
        // Three round trips of 1 ms and pauses of 50 and 100 ms.
        assert_eq!(ms_since(t0), 153);

        let fake = Fake::new(Some(Duration::ZERO));
        *fake.try_faults.lock().unwrap() = vec![Fault::fatal("denied")];
        let (out, _) = run(fake, Timeout::Forever, None).await;
        assert_eq!(out.unwrap_err(), End::Failed(Fault::fatal("denied")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_retries_one_transient_fault_at_once() {
        let fake = Fake::new(Some(Duration::ZERO));
        *fake.try_faults.lock().unwrap() = vec![Fault::transient("stale")];
        let (out, fake) = run(fake, Timeout::Zero, None).await;
        assert_eq!(out.unwrap(), Grant("try"));
        assert_eq!(fake.log(), vec!["try: fault", "try: granted"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_polled_lock_is_retried_when_woken_or_after_its_pause() {
        let mut fake = Fake::new(Some(70 * MS));
        fake.waits = false;
        let t0 = Instant::now();
        let (out, fake) = run(fake, Timeout::After(1000 * MS), None).await;
        assert_eq!(out.unwrap(), Grant("try"));
        // Tries at 0, 21 (20 ms pause), 62 (40 ms), then the wake-up at 70.
        assert_eq!(
            fake.log(),
            vec!["try: busy", "try: busy", "try: busy", "try: granted"]
        );
        assert_eq!(ms_since(t0), 71);
    }

    #[test]
    fn shared_statements_go_to_the_least_loaded_session_that_already_holds_locks() {
        let l = |inflight, holds| Load {
            dead: false,
            owned: false,
            inflight,
            holds,
        };
        let piped = Usage::Shared { pipelined: true };
        let sessions = [l(2, true), l(1, false), l(1, true), l(0, false)];
        assert_eq!(pick(&sessions, piped, false), Pick::Take(3));
        assert_eq!(pick(&sessions[..3], piped, false), Pick::Take(2));
        let gone = [
            Load {
                dead: true,
                ..l(0, true)
            },
            Load {
                owned: true,
                ..l(0, true)
            },
        ];
        assert_eq!(pick(&gone, piped, true), Pick::Open);
        assert_eq!(pick(&gone, piped, false), Pick::Later);
        // Sessions that run one statement at a time: a busy one only when the pool is full.
        let queued = Usage::Shared { pipelined: false };
        assert_eq!(pick(&sessions[..3], queued, true), Pick::Open);
        assert_eq!(pick(&sessions[..3], queued, false), Pick::Take(2));
        assert_eq!(pick(&sessions, queued, true), Pick::Take(3));
    }

    #[test]
    fn only_an_idle_empty_live_session_is_handed_out_for_a_wait() {
        let idle = Load {
            dead: false,
            owned: false,
            inflight: 0,
            holds: false,
        };
        assert_eq!(pick(&[idle], Usage::Own, false), Pick::Take(0));
        for taken in [
            Load {
                holds: true,
                ..idle
            },
            Load {
                inflight: 1,
                ..idle
            },
            Load {
                owned: true,
                ..idle
            },
            Load { dead: true, ..idle },
        ] {
            assert_eq!(pick(&[taken, idle], Usage::Own, false), Pick::Take(1));
            assert_eq!(pick(&[taken], Usage::Own, true), Pick::Open);
            assert_eq!(pick(&[taken], Usage::Own, false), Pick::Later);
        }
    }
}

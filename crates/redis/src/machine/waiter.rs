//! One acquire from its in-process turn to its end: when to attempt, what to do after each
//! verdict, and what it reports when it stops.
//!
//! How the budget is spent is core's [`Patience`], which the waiter holds and feeds: riding out
//! transient trouble (a reset, a stalled or restarting server, a deployment being confirmed
//! after a reconnect) with pauses doubling from 20 ms to 1 s ([`PATIENCE`]), and the one rule
//! for busy versus trouble when the deadline comes ([`End`], turned into the user's result by
//! [`End::into_result`]). What is Redis's own is how a busy lock is waited on — the wake-up
//! side of core's [`Step::Wait`]:
//!
//! - The first time, join the wake-ups (then look again at once, so a release that happened
//!   while joining is not missed); after that, wait for a wake-up, the holder's lease end (the
//!   hint), or the periodic re-check, whichever comes first. Behind one of distlock's holders
//!   the re-check is once a second: their release wakes the waiter, and the re-check only keeps
//!   its place in the server queue and covers a lost message. Behind a foreign holder (the
//!   server says so: the key's value lacks distlock's mark) nothing will wake the waiter, so it
//!   re-checks every 15–35 ms. A re-check and a pub/sub message both count as core's
//!   [`Input::Woken`](distlock_core::Input::Woken).
//! - RedLock split vote (some servers granted, no quorum): nobody holds the lock and no release
//!   will announce the next round, so retry after a random pause in a window that doubles with
//!   each split in a row (16 to 256 ms). Waiters woken together by a release spread out by a
//!   random 0–15 ms, so they do not split the next vote.
//! - While the one deployment's locks are being confirmed after a reconnect or failover
//!   ([`super::confirm`]), nothing is granted (the deployment may have moved): that is trouble
//!   for the patience, ridden out in naps of at most 50 ms so the confirmation's end is seen
//!   soon.
//!
//! The interface is one step: [`Waiter::step`] takes what happened ([`Input`]) with what the
//! driver sees now ([`Now`]: the time, the deployment's doubt, the subscriptions, a source of
//! randomness) and returns the next [`Action`]. The driver's loop:
//!
//! ```text
//! let mut input = Input::Begin;                  // once the in-process turn came
//! loop {
//!     input = match waiter.step(input, &mut now()) {
//!         Action::Attempt { until, join } => {    // join the wake-ups first when `join`
//!             match attempt(until) {              // a fresh grant token, queue TTL `queue_ttl()`
//!                 verdict          => Input::Verdict(verdict),
//!                 `until` passed   => Input::Cut { unreachable },  // revoke it everywhere first
//!             }
//!         }
//!         Action::Sleep { until } => sleep until `until`, then Input::Elapsed,
//!         Action::Wait { until }  => a wake-up (Input::Woken) or `until` (Input::Elapsed),
//!         Action::Granted { .. }  => return the held lock,
//!         Action::Done(end)       => leave the server queue (`queues()`), return end.into_result(..),
//!     }                           // a cancel or close at any point: Input::Cancelled / Input::Closed
//! }
//! ```
//!
//! Time and randomness come in as arguments: the driver sleeps, the machine decides how long.

use std::time::Duration;

use distlock_core::patience::Input as Told;
use distlock_core::{End, Fault, Patience, Policy, Step, Timeout};
use tokio::time::Instant;

pub use super::PATIENCE;
use super::vote::Verdict;

/// How long a waiter stays in a server queue without re-checking (a dead waiter is skipped
/// after this).
pub const QUEUE_TTL: Duration = Duration::from_secs(3);
/// How often a waiter re-checks without a wake-up.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How often, on average, a waiter whose turn it is re-checks behind a foreign holder. The
/// redlock package, redis-py's `Lock` and a plain `DEL` publish nothing when they let go, so
/// this bounds how late such a release is noticed: at most 35 ms plus a round trip (on RedLock
/// plus the 0–15 ms spread; redlock's own default retry delay is 200 ms). Each pause is drawn from 15–35 ms, because a fixed period
/// can fall in step with a foreign loop's hold-release cycle and keep landing while it holds
/// (measured with a fixed 25 ms: 28 grants of 526 against a redlock retrying every 25 ms).
///
/// Why re-checks and not server notifications: keyspace events need `notify-keyspace-events`
/// in the server's config, which a library cannot count on, and client-side tracking needs RESP3
/// or a redirect connection per server, with its own reconnect handling, for what is the rare
/// case. The acquire script says when the holder is foreign (its value lacks distlock's mark),
/// so a wait behind distlock's own holders sends nothing more than before. Behind a foreign
/// holder only the waiter at the head of the server queue re-checks this often (those behind it
/// wait for its release): one script per 25 ms per name and process. RedLock has no server
/// queue, so there every waiting process does.
pub const FOREIGN_REFRESH: Duration = Duration::from_millis(25);
/// How far a re-check behind a foreign holder may fall from [`FOREIGN_REFRESH`], either way.
const FOREIGN_SPREAD_MS: u64 = 10;
const FOREIGN_SPREAD: Duration = Duration::from_millis(FOREIGN_SPREAD_MS);
/// How often a waiter re-checks while the wake-up subscription is not up.
pub const REFRESH_UNSUBSCRIBED: Duration = Duration::from_millis(50);
/// [`PATIENCE`] for a provider whose commands time out after `server_timeout`: a try's one
/// attempt may take that long, plus [`TRY_SLACK`].
pub fn policy(server_timeout: Duration) -> Policy {
    Policy {
        try_budget: server_timeout + TRY_SLACK,
        ..PATIENCE
    }
}

/// The longest nap while a deployment is being confirmed.
const CONFIRM_NAP: Duration = Duration::from_millis(50);
/// The slack a try gets past the server timeout for its one attempt.
const TRY_SLACK: Duration = Duration::from_millis(20);
/// The most split votes in a row that widen the pause window (16 ms << 4 = 256 ms).
const MAX_SPLITS: u32 = 4;
/// The window of the random spread of RedLock waiters woken together (0–15 ms).
const SPREAD_MS: u64 = 16;

/// What happened, as the driver feeds it to [`Waiter::step`].
#[derive(Debug)]
pub enum Input {
    /// The acquire's in-process turn came.
    Begin,
    /// The attempt was decided.
    Verdict(Verdict),
    /// The attempt's bound passed before its verdict; the driver revoked it everywhere.
    /// `unreachable`: why no quorum can be reached now, when the servers' connections say so.
    Cut { unreachable: Option<String> },
    /// The `until` of the last [`Action::Sleep`] or [`Action::Wait`] came.
    Elapsed,
    /// A wake-up for this waiter came (a release's message, a resubscription).
    Woken,
    /// The caller cancelled.
    Cancelled,
    /// The provider was closed.
    Closed,
}

/// What the driver sees at a step.
pub struct Now<'a> {
    /// The time it read.
    pub at: Instant,
    /// The one deployment, while its locks are being confirmed after a reconnect or failover.
    pub confirming: Option<&'a str>,
    /// Whether every server's wake-up subscription is up.
    pub subscribed: bool,
    /// A random number below its argument (which is above 0).
    pub random: &'a mut dyn FnMut(u64) -> u64,
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an attempt with a fresh grant token; one still unanswered at `until` is cut
    /// ([`Input::Cut`]). When `join`, join the wake-ups for this lock first.
    Attempt { until: Option<Instant>, join: bool },
    /// Sleep until `until`, then feed [`Input::Elapsed`].
    Sleep { until: Instant },
    /// Wait for a wake-up ([`Input::Woken`]) or `until` ([`Input::Elapsed`]).
    Wait { until: Option<Instant> },
    /// The lock is granted: `fence` the token, `by` the servers whose grants made the quorum.
    Granted { fence: u64, by: Vec<usize> },
    /// Over without a grant: leave the server queue ([`Waiter::queues`]) and report
    /// [`End::into_result`].
    Done(End),
}

/// What the waiter is doing between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Attempting,
    Sleeping,
    Waiting,
}

/// One acquire's waiter: see the module documentation for its step and the loop that drives it.
#[derive(Debug)]
pub struct Waiter {
    patience: Patience,
    /// Waiters queue on the one deployment's server; RedLock has no server queue.
    fair: bool,
    /// A try: one attempt, never queued on the server.
    zero: bool,
    /// How long a server may take to answer, for a try's silence.
    server_timeout: Duration,
    phase: Phase,
    /// Split votes in a row (RedLock), capped at [`MAX_SPLITS`].
    splits: u32,
    joined: bool,
    /// The next attempt joins the wake-ups first.
    join: bool,
    /// The holder's remaining lease from the last busy answer.
    hint: Option<Duration>,
    /// The last busy answer named a foreign holder (whose release sends no wake-up).
    foreign: bool,
}

impl Waiter {
    /// The waiter of an acquire with `timeout`, called at `start` (its deadline counts from
    /// there), on one deployment (`fair`) or RedLock, on servers that answer within
    /// `server_timeout`.
    pub fn new(fair: bool, server_timeout: Duration, timeout: Timeout, start: Instant) -> Self {
        Self {
            patience: Patience::new(policy(server_timeout), timeout, start),
            fair,
            zero: timeout == Timeout::Zero,
            server_timeout,
            phase: Phase::Attempting,
            splits: 0,
            joined: false,
            join: false,
            hint: None,
            foreign: false,
        }
    }

    /// Tells `reporter` when a wait with no timeout cannot reach its servers (see
    /// `Patience::reporting`).
    pub fn reporting(self, reporter: Option<distlock_core::Reporter>) -> Self {
        Self {
            patience: self.patience.reporting(reporter),
            ..self
        }
    }

    /// How long the server keeps this waiter in its queue between attempts (none for a try).
    pub fn queue_ttl(&self) -> Duration {
        if self.zero { Duration::ZERO } else { QUEUE_TTL }
    }

    /// Whether the waiter has a place in a server queue to leave when it stops.
    pub fn queues(&self) -> bool {
        self.fair && !self.zero
    }

    /// Feeds what happened; returns what to do next.
    pub fn step(&mut self, input: Input, now: &mut Now<'_>) -> Action {
        let told = match input {
            Input::Begin => Told::Begin,
            Input::Cancelled => Told::Cancelled,
            Input::Closed => Told::Closed,
            Input::Verdict(v) => {
                self.hint = None;
                match v {
                    Verdict::Granted { fence, by } => return Action::Granted { fence, by },
                    Verdict::Busy {
                        hint,
                        split,
                        foreign,
                        ..
                    } => {
                        self.hint = hint;
                        self.foreign = foreign;
                        self.splits = if split {
                            (self.splits + 1).min(MAX_SPLITS)
                        } else {
                            0
                        };
                        Told::Busy
                    }
                    Verdict::Failed { fault, .. } => Told::Fault(fault),
                }
            }
            Input::Cut { unreachable } => {
                self.hint = None;
                // A wait's attempt runs until the deadline: its silence is judged there. A
                // try's is bounded by the server timeout: its silence is its failure.
                // The trouble already being ridden out names the cause better than a
                // connection that is down because of it.
                match unreachable {
                    Some(why) if self.zero || self.patience.trouble().is_none() => {
                        Told::Fault(Fault::transient(why))
                    }
                    None if self.zero => Told::Fault(Fault::transient(format!(
                        "no answer within {} ms",
                        self.server_timeout.as_millis()
                    ))),
                    _ => Told::Elapsed,
                }
            }
            Input::Elapsed | Input::Woken => {
                if self.phase == Phase::Waiting && !self.fair && !self.past(now.at) {
                    // RedLock waiters woken together spread out before they vote.
                    let spread = (now.random)(SPREAD_MS);
                    return self.sleep(now.at + Duration::from_millis(spread));
                }
                Told::Woken
            }
        };
        let step = self.patience.step(told, now.at);
        self.follow(step, now)
    }

    /// Carries core's step out the Redis way.
    fn follow(&mut self, step: Step, now: &mut Now<'_>) -> Action {
        match step {
            Step::Attempt { until } => {
                if let Some(label) = now.confirming.filter(|_| self.fair) {
                    let f = Fault::transient(format!(
                        "{label} is being confirmed after a reconnect or failover"
                    ));
                    return match self.patience.step(Told::Fault(f), now.at) {
                        Step::Pause { until } => self.sleep(until.min(now.at + CONFIRM_NAP)),
                        other => self.follow(other, now),
                    };
                }
                self.phase = Phase::Attempting;
                let join = std::mem::take(&mut self.join);
                Action::Attempt { until, join }
            }
            Step::Pause { until } => self.sleep(until),
            Step::Wait { until } => self.busy(until, now),
            Step::Done(end) => Action::Done(end),
        }
    }

    /// The lock is busy and core would wait for a wake-up until `until` (the deadline).
    fn busy(&mut self, until: Option<Instant>, now: &mut Now<'_>) -> Action {
        if !self.fair && self.splits > 0 {
            let pause = (now.random)(16u64 << self.splits);
            return self.sleep(bound(now.at + Duration::from_millis(pause), until));
        }
        if !self.joined {
            // Listen for releases; the next attempt looks again at once, so a release that
            // happened while joining is not missed.
            self.joined = true;
            self.join = true;
            let step = self.patience.step(Told::Woken, now.at);
            return self.follow(step, now);
        }
        let refresh = if self.foreign {
            let jitter = Duration::from_millis((now.random)(2 * FOREIGN_SPREAD_MS + 1));
            FOREIGN_REFRESH - FOREIGN_SPREAD + jitter
        } else if now.subscribed {
            REFRESH
        } else {
            REFRESH_UNSUBSCRIBED
        };
        let recheck = now.at + self.hint.map_or(refresh, |h| h.min(refresh));
        self.phase = Phase::Waiting;
        Action::Wait {
            until: Some(bound(recheck, until)),
        }
    }

    fn sleep(&mut self, until: Instant) -> Action {
        self.phase = Phase::Sleeping;
        Action::Sleep {
            until: bound(until, self.patience.deadline()),
        }
    }

    fn past(&self, at: Instant) -> bool {
        self.patience.deadline().is_some_and(|d| at >= d)
    }
}

/// `t`, but no later than `until`.
fn bound(t: Instant, until: Option<Instant>) -> Instant {
    until.map_or(t, |u| t.min(u))
}

/// Why no quorum can be reached now: `down` lists the servers whose last connect failed (with
/// the cause), of `n` servers with quorum `quorum`.
pub fn unreachable(down: &[String], n: usize, quorum: usize) -> Option<String> {
    (down.len() > n - quorum).then(|| format!("cannot reach {}", down.join(", ")))
}

/// The servers an acquire that ended without a grant names: those of `labels` not `heard`
/// (answered) in its last attempt, or all of them when each was.
pub fn unheard(labels: &[&str], heard: &[bool]) -> String {
    let silent: Vec<&str> = labels
        .iter()
        .zip(heard)
        .filter(|(_, h)| !**h)
        .map(|(l, _)| *l)
        .collect();
    if silent.is_empty() {
        labels.join(", ")
    } else {
        silent.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use distlock_core::{AcquireRequest, Error, LockKind};

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SERVER: Duration = Duration::from_millis(300);

    fn busy(hint: Option<Duration>, split: bool) -> Input {
        Input::Verdict(Verdict::Busy {
            hint,
            split,
            foreign: false,
            revoke: vec![],
        })
    }

    fn foreign(hint: Option<Duration>) -> Input {
        Input::Verdict(Verdict::Busy {
            hint,
            split: false,
            foreign: true,
            revoke: vec![],
        })
    }

    fn down(transient: bool) -> Fault {
        Fault::new("s0: down", transient)
    }

    fn failed(transient: bool) -> Input {
        Input::Verdict(Verdict::Failed {
            fault: down(transient),
            revoke: vec![],
        })
    }

    fn top(n: u64) -> u64 {
        n - 1
    }

    /// One step at `at`, with the subscriptions up, nothing being confirmed, and the largest
    /// random numbers.
    fn go(w: &mut Waiter, input: Input, at: Instant) -> Action {
        go_with(w, input, at, None, true, &mut top)
    }

    fn go_with(
        w: &mut Waiter,
        input: Input,
        at: Instant,
        confirming: Option<&str>,
        subscribed: bool,
        random: &mut dyn FnMut(u64) -> u64,
    ) -> Action {
        let mut now = Now {
            at,
            confirming,
            subscribed,
            random,
        };
        w.step(input, &mut now)
    }

    fn attempt(until: Option<Instant>, join: bool) -> Action {
        Action::Attempt { until, join }
    }

    fn message(end: Action, timeout: Timeout, servers: &str) -> String {
        let Action::Done(end) = end else {
            panic!("not over: {end:?}")
        };
        let req = AcquireRequest {
            name: "x".into(),
            kind: LockKind::Mutex,
            timeout,
            cancel: None,
            lease: None,
            auto_renew: true,
        };
        match end.into_result::<()>(&req, "redis", servers) {
            Err(Error::Backend { message, .. }) => message,
            other => panic!("not a backend error: {other:?}"),
        }
    }

    #[test]
    fn a_busy_lock_is_joined_first_then_waited_on_until_the_holders_lease_end() {
        let t0 = Instant::now();
        let mut w = Waiter::new(true, SERVER, Timeout::Forever, t0);
        assert_eq!(go(&mut w, Input::Begin, t0), attempt(None, false));
        assert_eq!(go(&mut w, busy(None, false), t0), attempt(None, true));
        assert_eq!(
            go(&mut w, busy(Some(300 * MS), false), t0),
            Action::Wait {
                until: Some(t0 + 300 * MS)
            }
        );
        assert_eq!(
            go(&mut w, Input::Woken, t0),
            attempt(None, false),
            "server-queued waiters need no spread"
        );
        assert_eq!(
            go(&mut w, busy(Some(Duration::from_secs(9)), false), t0),
            Action::Wait {
                until: Some(t0 + REFRESH)
            }
        );
        assert_eq!(
            go(&mut w, Input::Elapsed, t0 + REFRESH),
            attempt(None, false)
        );
        let unsubscribed = go_with(&mut w, busy(None, false), t0, None, false, &mut top);
        assert_eq!(
            unsubscribed,
            Action::Wait {
                until: Some(t0 + REFRESH_UNSUBSCRIBED)
            }
        );
    }

    #[test]
    fn a_foreign_holder_is_re_checked_every_15_to_35_ms_and_one_of_ours_only_once_a_second() {
        for fair in [true, false] {
            let t0 = Instant::now();
            let mut w = Waiter::new(fair, SERVER, Timeout::Forever, t0);
            let _ = go(&mut w, Input::Begin, t0);
            let nine = Some(Duration::from_secs(9));
            assert_eq!(go(&mut w, foreign(nine), t0), attempt(None, true));
            let longest = FOREIGN_REFRESH + FOREIGN_SPREAD;
            let wait = |d| Action::Wait {
                until: Some(t0 + d),
            };
            assert_eq!(go(&mut w, foreign(nine), t0), wait(longest));
            let mut seen = 0;
            let mut bottom = |n: u64| {
                seen = n;
                0
            };
            let shortest = FOREIGN_REFRESH - FOREIGN_SPREAD;
            let got = go_with(&mut w, foreign(None), t0, None, false, &mut bottom);
            assert_eq!(got, wait(shortest));
            assert_eq!(seen, 21, "15 to 35 ms");
            assert_eq!(go(&mut w, foreign(Some(3 * MS)), t0), wait(3 * MS));
            // The foreign holder let go and one of ours took it: back to its wake-up.
            assert_eq!(go(&mut w, busy(nine, false), t0), wait(REFRESH));
        }
    }

    #[test]
    fn trouble_backs_off_doubling_to_a_second_and_an_answer_resets_it() {
        let t0 = Instant::now();
        let mut w = Waiter::new(true, SERVER, Timeout::Forever, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let mut naps = Vec::new();
        for _ in 0..8 {
            let Action::Sleep { until } = go(&mut w, failed(true), t0) else {
                panic!("trouble sleeps")
            };
            naps.push((until - t0).as_millis());
            assert_eq!(go(&mut w, Input::Elapsed, t0), attempt(None, false));
        }
        assert_eq!(naps, vec![20, 40, 80, 160, 320, 640, 1000, 1000]);
        let _ = go(&mut w, busy(None, false), t0);
        assert_eq!(
            go(&mut w, failed(true), t0),
            Action::Sleep {
                until: t0 + PATIENCE.fault_pause.first
            }
        );
    }

    #[test]
    fn a_permanent_failure_or_a_grant_ends_the_acquire() {
        let t0 = Instant::now();
        let mut w = Waiter::new(true, SERVER, Timeout::Forever, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let grant = Input::Verdict(Verdict::Granted {
            fence: 3,
            by: vec![0],
        });
        assert_eq!(
            go(&mut w, grant, t0),
            Action::Granted {
                fence: 3,
                by: vec![0]
            }
        );
        assert_eq!(
            go(&mut w, failed(false), t0),
            Action::Done(End::Failed(down(false)))
        );
    }

    #[test]
    fn a_deployment_being_confirmed_grants_nothing_and_naps_at_most_50_ms() {
        let t0 = Instant::now();
        let timeout = Timeout::After(120 * MS);
        let mut w = Waiter::new(true, SERVER, timeout, t0);
        let mut naps = Vec::new();
        let mut input = Input::Begin;
        for at in [0, 20, 60] {
            let got = go_with(&mut w, input, t0 + at * MS, Some("a:1"), true, &mut top);
            let Action::Sleep { until } = got else {
                panic!("a nap, not {got:?}")
            };
            naps.push((until - t0).as_millis() - u128::from(at));
            input = Input::Elapsed;
        }
        assert_eq!(naps, vec![20, 40, 50]);
        let end = go_with(
            &mut w,
            Input::Elapsed,
            t0 + 120 * MS,
            Some("a:1"),
            true,
            &mut top,
        );
        assert_eq!(
            message(end, timeout, "a:1"),
            "the timeout of redis lock \"x\" ran out after 120 ms while a:1 could not be reached: a:1 is being confirmed after a reconnect or failover"
        );
        // Confirmed: the next attempt goes out.
        let mut w = Waiter::new(true, SERVER, Timeout::Forever, t0);
        let _ = go_with(&mut w, Input::Begin, t0, Some("a:1"), true, &mut top);
        assert_eq!(go(&mut w, Input::Elapsed, t0), attempt(None, false));
        // RedLock has no single deployment to confirm: its servers vote.
        let mut r = Waiter::new(false, SERVER, Timeout::Forever, t0);
        let got = go_with(&mut r, Input::Begin, t0, Some("a:1"), true, &mut top);
        assert_eq!(got, attempt(None, false));
    }

    #[test]
    fn split_votes_widen_a_random_pause_to_256_ms_and_a_clean_vote_resets_it() {
        let t0 = Instant::now();
        let mut w = Waiter::new(false, SERVER, Timeout::Forever, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let mut windows = Vec::new();
        for _ in 0..6 {
            let mut seen = 0;
            let mut rnd = |n: u64| {
                seen = n;
                0
            };
            let got = go_with(&mut w, busy(None, true), t0, None, true, &mut rnd);
            assert_eq!(got, Action::Sleep { until: t0 });
            windows.push(seen);
            assert_eq!(go(&mut w, Input::Elapsed, t0), attempt(None, false));
        }
        assert_eq!(windows, vec![32, 64, 128, 256, 256, 256]);
        assert_eq!(go(&mut w, busy(None, false), t0), attempt(None, true));
        let _ = go(&mut w, busy(None, false), t0);
        // Woken together, RedLock waiters spread out by 0–15 ms before they vote.
        let spread = t0 + 15 * MS;
        assert_eq!(
            go(&mut w, Input::Woken, t0),
            Action::Sleep { until: spread }
        );
        assert_eq!(go(&mut w, Input::Elapsed, spread), attempt(None, false));
        // On one deployment a split cannot happen; if reported, it is not paused on.
        let mut f = Waiter::new(true, SERVER, Timeout::Forever, t0);
        let _ = go(&mut f, Input::Begin, t0);
        assert_eq!(go(&mut f, busy(None, true), t0), attempt(None, true));
    }

    #[test]
    fn a_timeout_is_busy_only_when_the_servers_answered_and_nothing_is_wrong() {
        let t0 = Instant::now();
        let timeout = Timeout::After(5 * MS);
        let deadline = Some(t0 + 5 * MS);
        let late = t0 + 5 * MS;
        let cut = || Input::Cut { unreachable: None };
        // Never answered: trouble, naming the servers that did not answer.
        let mut w = Waiter::new(false, SERVER, timeout, t0);
        assert_eq!(go(&mut w, Input::Begin, t0), attempt(deadline, false));
        let servers = unheard(&["a:1", "b:2", "c:3"], &[false, true, false]);
        assert_eq!(
            message(go(&mut w, cut(), late), timeout, &servers),
            "the timeout of redis lock \"x\" ran out after 5 ms with no answer from a:1, c:3"
        );
        // Answered busy: a timeout.
        let mut w = Waiter::new(true, SERVER, timeout, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let _ = go(&mut w, busy(None, false), t0);
        assert_eq!(go(&mut w, cut(), late), Action::Done(End::Busy));
        // Answered, then the servers' connections failed: the trouble is the error.
        let mut w = Waiter::new(false, SERVER, timeout, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let _ = go(&mut w, busy(None, false), t0);
        let why = unreachable(&["a:1 (refused)".into(), "b:2 (refused)".into()], 3, 2);
        let gone = go(&mut w, Input::Cut { unreachable: why }, late);
        assert_eq!(
            message(gone, timeout, "a:1, b:2"),
            "the timeout of redis lock \"x\" ran out after 5 ms while a:1, b:2 could not be reached: cannot reach a:1 (refused), b:2 (refused)"
        );
        assert_eq!(unreachable(&["a:1 (refused)".into()], 3, 2), None);
        // Trouble that lasts until the deadline.
        let mut w = Waiter::new(true, SERVER, timeout, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let _ = go(&mut w, busy(None, false), t0);
        let _ = go(&mut w, failed(true), t0);
        assert!(message(go(&mut w, Input::Elapsed, late), timeout, "a:1").ends_with(": s0: down"));
        // ... and stays the error when the attempt after it is cut with the servers down.
        let mut w = Waiter::new(false, SERVER, timeout, t0);
        let _ = go(&mut w, Input::Begin, t0);
        let _ = go(&mut w, failed(true), t0);
        let _ = go(&mut w, Input::Elapsed, t0);
        let why = unreachable(&["a:1 (refused)".into(), "b:2 (refused)".into()], 3, 2);
        let gone = go(&mut w, Input::Cut { unreachable: why }, late);
        assert!(message(gone, timeout, "a:1, b:2").ends_with(": s0: down"));
    }

    #[test]
    fn a_try_gets_one_bounded_attempt_and_reports_silence_as_trouble() {
        let t0 = Instant::now();
        let mut t = Waiter::new(true, SERVER, Timeout::Zero, t0);
        assert_eq!(t.queue_ttl(), Duration::ZERO);
        assert!(!t.queues());
        assert_eq!(
            go(&mut t, Input::Begin, t0),
            attempt(Some(t0 + 320 * MS), false)
        );
        let silent = go(&mut t, Input::Cut { unreachable: None }, t0 + 320 * MS);
        assert_eq!(
            silent,
            Action::Done(End::Failed(Fault::transient("no answer within 300 ms")))
        );
        let mut t = Waiter::new(true, SERVER, Timeout::Zero, t0);
        let _ = go(&mut t, Input::Begin, t0);
        assert_eq!(go(&mut t, busy(None, false), t0), Action::Done(End::Busy));
        let mut t = Waiter::new(true, SERVER, Timeout::Zero, t0);
        let confirming = go_with(&mut t, Input::Begin, t0, Some("a:1"), true, &mut top);
        assert!(
            matches!(confirming, Action::Done(End::Failed(f)) if f.message.contains("being confirmed"))
        );
        let w = Waiter::new(true, SERVER, Timeout::Forever, t0);
        assert_eq!(w.queue_ttl(), QUEUE_TTL);
        assert!(w.queues());
    }

    #[test]
    fn cancel_and_close_end_it_whatever_it_was_doing() {
        let t0 = Instant::now();
        for (input, end) in [
            (Input::Cancelled, End::Cancelled),
            (Input::Closed, End::Closed),
        ] {
            let mut w = Waiter::new(true, SERVER, Timeout::Forever, t0);
            let _ = go(&mut w, Input::Begin, t0);
            let _ = go(&mut w, busy(None, false), t0);
            let _ = go(&mut w, busy(None, false), t0);
            assert_eq!(go(&mut w, input, t0), Action::Done(end));
        }
    }

    #[test]
    fn the_silent_servers_are_named_not_all_of_them() {
        let labels = ["a:1", "b:2", "c:3"];
        assert_eq!(unheard(&labels, &[true, false, false]), "b:2, c:3");
        assert_eq!(unheard(&labels, &[false, false, false]), "a:1, b:2, c:3");
        // Each answered (the end is not about silence): all of them.
        assert_eq!(unheard(&labels, &[true, true, true]), "a:1, b:2, c:3");
        assert_eq!(unheard(&["a:1"], &[true]), "a:1");
    }
}

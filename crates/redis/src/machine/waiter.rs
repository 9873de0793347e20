//! One acquire between its attempts: what it does after each verdict, and what it reports when
//! it stops.
//!
//! - Busy: the first time, join the wake-ups (then look again at once, so a release that
//!   happened while joining is not missed); after that, wait for a wake-up, the holder's lease
//!   end (the hint), or the periodic re-check, whichever comes first. Behind one of distlock's
//!   holders the re-check is once a second: their release wakes the waiter, and the re-check
//!   only keeps its place in the server queue and covers a lost message. Behind a foreign holder
//!   (the server says so: the key's value lacks distlock's mark) nothing will wake the waiter,
//!   so it re-checks every 15–35 ms.
//! - Transient trouble (a reset, a stalled or restarting server, a deployment being confirmed
//!   after a reconnect): back off, doubling from 20 ms to 1 s, then try again.
//! - RedLock split vote (some servers granted, no quorum): nobody holds the lock and no release
//!   will announce the next round, so retry after a random pause in a window that doubles with
//!   each split in a row (16 to 256 ms). Waiters woken together by a release spread out by a
//!   random 0–15 ms, so they do not split the next vote.
//! - Stopped by its deadline: a timeout is "busy" only if the servers answered and no trouble
//!   is ongoing; otherwise the trouble is the error.
//!
//! Time and randomness come in as arguments: the driver sleeps, the machine decides how long.

use std::time::Duration;

use tokio::time::Instant;

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
/// Backoff between attempts that met transient trouble: from the first to the last value.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));
/// The longest nap while a deployment is being confirmed.
const CONFIRM_NAP: Duration = Duration::from_millis(50);
/// The slack a try gets past the server timeout for its one attempt.
const TRY_SLACK: Duration = Duration::from_millis(20);
/// The most split votes in a row that widen the pause window (16 ms << 4 = 256 ms).
const MAX_SPLITS: u32 = 4;

/// How an acquire ends at a verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Granted {
        fence: u64,
        by: Vec<usize>,
    },
    /// A failure that trying again cannot mend (a wrong password, a wrong key type).
    Failed(String),
}

/// What to do after an attempt that did not end the acquire.
#[derive(Debug, PartialEq, Eq)]
pub enum Pause {
    /// Sleep this long (bounded by the caller's deadline and cancel), then attempt again.
    Sleep(Duration),
    /// Join the wake-ups for this lock, then attempt again at once.
    Join,
    /// Wait for a wake-up, or at most this long, then attempt again.
    Wait(Duration),
}

#[derive(Debug)]
pub struct Waiter {
    /// Waiters queue on the one deployment's server; RedLock has no server queue.
    fair: bool,
    /// A try: one attempt, never queued on the server.
    zero: bool,
    /// The transient trouble being ridden out, while it lasts.
    trouble: Option<String>,
    backoff: Duration,
    /// Some server answered at all (a timeout then means busy, not unreachable).
    answered: bool,
    /// Split votes in a row (RedLock), capped at [`MAX_SPLITS`].
    splits: u32,
    joined: bool,
    /// The holder's remaining lease from the last busy answer.
    hint: Option<Duration>,
    /// The last busy answer named a foreign holder (whose release sends no wake-up).
    foreign: bool,
}

impl Waiter {
    pub fn new(fair: bool, zero: bool) -> Self {
        Self {
            fair,
            zero,
            trouble: None,
            backoff: BACKOFF.0,
            answered: false,
            splits: 0,
            joined: false,
            hint: None,
            foreign: false,
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

    /// Before an attempt: `confirming` names the one deployment while its locks are being
    /// confirmed after a reconnect or failover. Nothing is granted then (the deployment may
    /// have moved); returns the nap to take instead of the attempt.
    pub fn before(&mut self, confirming: Option<&str>) -> Option<Duration> {
        let label = confirming.filter(|_| self.fair)?;
        self.trouble = Some(format!(
            "{label} is being confirmed after a reconnect or failover"
        ));
        let nap = self.backoff.min(CONFIRM_NAP);
        self.backoff = (self.backoff * 2).min(BACKOFF.1);
        Some(nap)
    }

    /// Until when an attempt sent at `sent` may run: a try gets the server timeout, a wait its
    /// own deadline.
    pub fn bound(
        &self,
        sent: Instant,
        server_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        if self.zero {
            Some(sent + server_timeout + TRY_SLACK)
        } else {
            deadline
        }
    }

    /// Takes an attempt's verdict; returns the end of the acquire if this is it. (The driver
    /// revokes the verdict's partial grants either way.)
    pub fn verdict(&mut self, v: Verdict) -> Option<End> {
        self.hint = None;
        match v {
            Verdict::Granted { fence, by } => Some(End::Granted { fence, by }),
            Verdict::Busy {
                hint,
                split,
                foreign,
                ..
            } => {
                (self.trouble, self.backoff, self.answered, self.hint) =
                    (None, BACKOFF.0, true, hint);
                self.foreign = foreign;
                self.splits = if split {
                    (self.splits + 1).min(MAX_SPLITS)
                } else {
                    0
                };
                None
            }
            Verdict::Failed {
                message,
                transient: false,
                ..
            } => Some(End::Failed(message)),
            Verdict::Failed { message, .. } => {
                self.trouble = Some(message);
                None
            }
        }
    }

    /// The attempt was cut off before its verdict (its bound passed, the caller cancelled or
    /// the provider closed); the driver revokes it everywhere. A try that found no answer in
    /// time reports `cause` if it stops now.
    pub fn unanswered(&mut self, timed_out: bool, cause: impl FnOnce() -> String) {
        self.hint = None;
        if self.zero && timed_out {
            self.trouble = Some(cause());
        }
    }

    /// What to do next, when the acquire was neither ended nor interrupted. `subscribed`:
    /// whether every server's wake-up subscription is up; `random_below(n)` is in `0..n`.
    pub fn pause(&mut self, subscribed: bool, random_below: &mut dyn FnMut(u64) -> u64) -> Pause {
        if self.trouble.is_some() {
            let nap = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF.1);
            return Pause::Sleep(nap);
        }
        if !self.fair && self.splits > 0 {
            return Pause::Sleep(Duration::from_millis(random_below(16u64 << self.splits)));
        }
        if !self.joined {
            self.joined = true;
            return Pause::Join;
        }
        let refresh = if self.foreign {
            let jitter = Duration::from_millis(random_below(2 * FOREIGN_SPREAD_MS + 1));
            FOREIGN_REFRESH - FOREIGN_SPREAD + jitter
        } else if subscribed {
            REFRESH
        } else {
            REFRESH_UNSUBSCRIBED
        };
        Pause::Wait(self.hint.map_or(refresh, |h| h.min(refresh)))
    }

    /// After a wake-up: RedLock waiters woken together spread out before they vote.
    pub fn spread(&self, random_below: &mut dyn FnMut(u64) -> u64) -> Option<Duration> {
        (!self.fair).then(|| Duration::from_millis(random_below(16)))
    }

    /// Why an acquire that stopped `elapsed` after it began is a backend failure rather than
    /// the outcome of its interruption (busy on a timeout, a cancel, a close). `unreachable`:
    /// why no quorum can be reached now, if so; `labels`: the servers.
    pub fn gave_up(
        &self,
        timed_out: bool,
        elapsed: Duration,
        unreachable: Option<String>,
        labels: &[&str],
    ) -> Option<String> {
        if !timed_out {
            return None;
        }
        let cause = self.trouble.clone().or(unreachable).or_else(|| {
            (!self.answered).then(|| format!("no answer from {}", labels.join(", ")))
        })?;
        Some(format!("gave up after {} ms: {cause}", elapsed.as_millis()))
    }
}

/// Why no quorum can be reached now: `down` lists the servers whose last connect failed (with
/// the cause), of `n` servers with quorum `quorum`.
pub fn unreachable(down: &[String], n: usize, quorum: usize) -> Option<String> {
    (down.len() > n - quorum).then(|| format!("cannot reach {}", down.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(hint: Option<Duration>, split: bool) -> Verdict {
        Verdict::Busy {
            hint,
            split,
            foreign: false,
            revoke: vec![],
        }
    }

    fn foreign(hint: Option<Duration>) -> Verdict {
        Verdict::Busy {
            hint,
            split: false,
            foreign: true,
            revoke: vec![],
        }
    }

    fn failed(transient: bool) -> Verdict {
        Verdict::Failed {
            message: "s0: down".into(),
            transient,
            revoke: vec![],
        }
    }

    fn top(n: u64) -> u64 {
        n - 1
    }

    #[test]
    fn a_busy_lock_is_joined_first_then_waited_on_until_the_holders_lease_end() {
        let mut w = Waiter::new(true, false);
        assert_eq!(w.before(None), None);
        assert_eq!(w.verdict(busy(None, false)), None);
        assert_eq!(w.pause(true, &mut top), Pause::Join);
        w.verdict(busy(Some(Duration::from_millis(300)), false));
        assert_eq!(
            w.pause(true, &mut top),
            Pause::Wait(Duration::from_millis(300))
        );
        w.verdict(busy(Some(Duration::from_secs(9)), false));
        assert_eq!(w.pause(true, &mut top), Pause::Wait(REFRESH));
        w.verdict(busy(None, false));
        assert_eq!(w.pause(false, &mut top), Pause::Wait(REFRESH_UNSUBSCRIBED));
        assert_eq!(
            w.spread(&mut top),
            None,
            "server-queued waiters need no spread"
        );
    }

    #[test]
    fn a_foreign_holder_is_re_checked_every_15_to_35_ms_and_one_of_ours_only_once_a_second() {
        for fair in [true, false] {
            let mut w = Waiter::new(fair, false);
            w.verdict(foreign(Some(Duration::from_secs(9))));
            assert_eq!(w.pause(true, &mut top), Pause::Join);
            w.verdict(foreign(Some(Duration::from_secs(9))));
            let longest = FOREIGN_REFRESH + FOREIGN_SPREAD;
            assert_eq!(w.pause(true, &mut top), Pause::Wait(longest));
            w.verdict(foreign(None));
            let mut seen = 0;
            let mut bottom = |n: u64| {
                seen = n;
                0
            };
            let shortest = FOREIGN_REFRESH - FOREIGN_SPREAD;
            assert_eq!(w.pause(false, &mut bottom), Pause::Wait(shortest));
            assert_eq!(seen, 21, "15 to 35 ms");
            w.verdict(foreign(Some(Duration::from_millis(3))));
            assert_eq!(
                w.pause(true, &mut top),
                Pause::Wait(Duration::from_millis(3))
            );
            // The foreign holder let go and one of ours took it: back to its wake-up.
            w.verdict(busy(Some(Duration::from_secs(9)), false));
            assert_eq!(w.pause(true, &mut top), Pause::Wait(REFRESH));
        }
    }

    #[test]
    fn trouble_backs_off_doubling_to_a_second_and_an_answer_resets_it() {
        let mut w = Waiter::new(true, false);
        let mut naps = Vec::new();
        for _ in 0..8 {
            assert_eq!(w.verdict(failed(true)), None);
            let Pause::Sleep(d) = w.pause(true, &mut top) else {
                panic!("trouble sleeps")
            };
            naps.push(d.as_millis());
        }
        assert_eq!(naps, vec![20, 40, 80, 160, 320, 640, 1000, 1000]);
        w.verdict(busy(None, false));
        w.verdict(failed(true));
        assert_eq!(w.pause(true, &mut top), Pause::Sleep(BACKOFF.0));
    }

    #[test]
    fn a_permanent_failure_or_a_grant_ends_the_acquire() {
        let mut w = Waiter::new(true, false);
        assert_eq!(
            w.verdict(failed(false)),
            Some(End::Failed("s0: down".into()))
        );
        assert_eq!(
            w.verdict(Verdict::Granted {
                fence: 3,
                by: vec![0]
            }),
            Some(End::Granted {
                fence: 3,
                by: vec![0]
            })
        );
    }

    #[test]
    fn a_deployment_being_confirmed_grants_nothing_and_naps_at_most_50_ms() {
        let mut w = Waiter::new(true, false);
        assert_eq!(w.before(Some("a:1")), Some(Duration::from_millis(20)));
        assert_eq!(w.before(Some("a:1")), Some(Duration::from_millis(40)));
        assert_eq!(w.before(Some("a:1")), Some(Duration::from_millis(50)));
        let why = w.gave_up(true, Duration::from_millis(120), None, &["a:1"]);
        assert_eq!(
            why.as_deref(),
            Some("gave up after 120 ms: a:1 is being confirmed after a reconnect or failover")
        );
        // RedLock has no single deployment to confirm: its servers vote.
        assert_eq!(Waiter::new(false, false).before(Some("a:1")), None);
    }

    #[test]
    fn split_votes_widen_a_random_pause_to_256_ms_and_a_clean_vote_resets_it() {
        let mut w = Waiter::new(false, false);
        let mut windows = Vec::new();
        for _ in 0..6 {
            w.verdict(busy(None, true));
            let mut seen = 0;
            let mut rnd = |n: u64| {
                seen = n;
                0
            };
            assert_eq!(w.pause(true, &mut rnd), Pause::Sleep(Duration::ZERO));
            windows.push(seen);
        }
        assert_eq!(windows, vec![32, 64, 128, 256, 256, 256]);
        w.verdict(busy(None, false));
        assert_eq!(w.pause(true, &mut top), Pause::Join);
        assert_eq!(w.spread(&mut top), Some(Duration::from_millis(15)));
        // On one deployment a split cannot happen; if reported, it is not paused on.
        let mut f = Waiter::new(true, false);
        f.verdict(busy(None, true));
        assert_eq!(f.pause(true, &mut top), Pause::Join);
    }

    #[test]
    fn a_timeout_is_busy_only_when_the_servers_answered_and_nothing_is_wrong() {
        let labels = ["a:1", "b:2"];
        let w = Waiter::new(true, false);
        assert_eq!(
            w.gave_up(true, Duration::from_millis(5), None, &labels)
                .as_deref(),
            Some("gave up after 5 ms: no answer from a:1, b:2")
        );
        assert_eq!(
            w.gave_up(false, Duration::from_millis(5), None, &labels),
            None
        );
        let mut w = Waiter::new(true, false);
        w.verdict(busy(None, false));
        assert_eq!(
            w.gave_up(true, Duration::from_millis(5), None, &labels),
            None
        );
        let down = unreachable(&["a:1 (refused)".into(), "b:2 (refused)".into()], 3, 2);
        assert_eq!(
            w.gave_up(true, Duration::from_millis(5), down, &labels)
                .as_deref(),
            Some("gave up after 5 ms: cannot reach a:1 (refused), b:2 (refused)")
        );
        w.verdict(failed(true));
        assert_eq!(
            w.gave_up(true, Duration::from_millis(7), None, &labels)
                .as_deref(),
            Some("gave up after 7 ms: s0: down")
        );
        assert_eq!(unreachable(&["a:1 (refused)".into()], 3, 2), None);
    }

    #[test]
    fn a_try_gets_one_bounded_attempt_and_reports_silence_as_trouble() {
        let now = Instant::now();
        let server = Duration::from_millis(300);
        let mut t = Waiter::new(true, true);
        assert_eq!(t.queue_ttl(), Duration::ZERO);
        assert!(!t.queues());
        assert_eq!(
            t.bound(now, server, None),
            Some(now + Duration::from_millis(320))
        );
        t.unanswered(true, || "no answer within 300 ms".into());
        assert!(
            t.gave_up(true, server, None, &["a:1"])
                .is_some_and(|m| m.ends_with("no answer within 300 ms"))
        );
        let mut w = Waiter::new(true, false);
        let deadline = Some(now + Duration::from_secs(5));
        assert_eq!(w.bound(now, server, deadline), deadline);
        assert_eq!(w.queue_ttl(), QUEUE_TTL);
        assert!(w.queues());
        w.unanswered(true, || {
            unreachable!("a wait's silence is judged at its deadline")
        });
    }
}

//! The renewal schedule of held locks: when each lease is renewed, which renewals share a round
//! trip, when a lock is lost at its local deadline, and when the renewer wakes next.
//!
//! A lock falls due one renewal period after its grant (or its last renewal), where the period
//! is the provider's but at most a third of the lock's own lease. A scan at `now` renews, in one
//! batch, every lock due within half a provider period (early rather than alone), fires the
//! lost signal of every lock whose local deadline has passed, and wakes again at the earliest
//! due time or deadline, and at least every half period. A renewal that got no answer either
//! way is retried after a quarter period (at least 10 ms), well before the deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::vote::Renewal;

/// The shortest pause before a renewal that failed is tried again.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// The renewal period of a lock whose lease is `lease` (a per-acquire `leaseMs` or an
/// `extend`): the provider's `period`, but at most a third of that lease, so a lease shorter
/// than the provider's period is renewed in time too.
pub fn period_for(period: Duration, lease: Duration) -> Duration {
    period.min(lease / 3)
}

/// One held lock's place in the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// When its next renewal should be sent.
    pub due: Instant,
    /// A renewal of it is on its way.
    pub in_flight: bool,
}

impl Slot {
    /// A lock granted (or extended) by a request sent at `sent`, renewed every `period`.
    pub fn new(sent: Instant, period: Duration) -> Self {
        Self {
            due: sent + period,
            in_flight: false,
        }
    }

    /// Counts a renewal of this lock sent at `sent` and answered with `outcome` at `now`;
    /// `period` is its renewal period. Returns when it is due next, or `None` when it is gone.
    pub fn renewed(
        &mut self,
        outcome: Renewal,
        sent: Instant,
        now: Instant,
        period: Duration,
    ) -> Option<Instant> {
        self.in_flight = false;
        self.due = match outcome {
            Renewal::Renewed => sent + period,
            Renewal::Gone => return None,
            Renewal::Unknown => now + (period / 4).max(MIN_RETRY),
        };
        Some(self.due)
    }
}

/// What a scan found for one lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Its lost signal fired already: stop tracking it.
    Forget,
    /// Its local deadline passed without a successful renewal: it is lost.
    Expired,
    /// Renew it in this round (it is now in flight).
    Renew,
    /// Nothing to do yet.
    Later,
}

/// One pass of the renewer over every held lock.
#[derive(Debug)]
pub struct Scan {
    now: Instant,
    horizon: Instant,
    next: Instant,
}

impl Scan {
    /// A scan at `now` for a provider whose renewal period is `period`.
    pub fn new(now: Instant, period: Duration) -> Self {
        let horizon = now + period / 2;
        // With nothing due, wake at the horizon anyway: a lock granted meanwhile falls due a
        // whole period after its grant, so it needs no wake-up of its own.
        Self {
            now,
            horizon,
            next: horizon,
        }
    }

    /// Looks at one lock whose local lease deadline is `deadline`; `lost` when its lost signal
    /// fired already.
    pub fn look(&mut self, slot: &mut Slot, deadline: Instant, lost: bool) -> Look {
        if lost {
            return Look::Forget;
        }
        if self.now >= deadline {
            return Look::Expired;
        }
        self.next = self.next.min(deadline);
        if slot.in_flight {
            return Look::Later;
        }
        if slot.due <= self.horizon {
            slot.in_flight = true;
            return Look::Renew;
        }
        self.next = self.next.min(slot.due);
        Look::Later
    }

    /// When the renewer should wake next.
    pub fn next_wake(&self) -> Instant {
        self.next
    }
}

/// Whether a lock due `at` needs the renewer woken, when it sleeps until `wake_at` (it rescans
/// every lock when it wakes, so a lock due after that needs nothing).
pub fn wakes_renewer(wake_at: Option<Instant>, at: Instant) -> bool {
    wake_at.is_none_or(|w| at < w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_short_lease_is_renewed_at_a_third_of_itself() {
        assert_eq!(period_for(P, Duration::from_secs(30)), P);
        assert_eq!(period_for(P, ms(900)), ms(300));
    }

    #[test]
    fn a_scan_batches_what_is_due_within_half_a_period() {
        let t0 = Instant::now();
        let mut scan = Scan::new(t0, P);
        let mut due_now = Slot::new(t0 - P, P);
        let mut due_soon = Slot {
            due: t0 + ms(4_000),
            in_flight: false,
        };
        let mut due_later = Slot {
            due: t0 + ms(7_000),
            in_flight: false,
        };
        let far = t0 + Duration::from_secs(30);
        assert_eq!(scan.look(&mut due_now, far, false), Look::Renew);
        assert!(due_now.in_flight);
        assert_eq!(scan.look(&mut due_soon, far, false), Look::Renew);
        assert_eq!(scan.look(&mut due_later, far, false), Look::Later);
        assert_eq!(
            scan.next_wake(),
            t0 + ms(5_000),
            "at least every half period"
        );
        // In flight: not sent twice.
        let mut scan = Scan::new(t0, P);
        assert_eq!(scan.look(&mut due_now, far, false), Look::Later);
    }

    #[test]
    fn a_passed_deadline_is_lost_and_the_renewer_wakes_for_the_nearest_one() {
        let t0 = Instant::now();
        let mut scan = Scan::new(t0, P);
        let mut s = Slot::new(t0, P);
        assert_eq!(scan.look(&mut s, t0, false), Look::Expired);
        assert_eq!(scan.look(&mut s, t0 + ms(200), true), Look::Forget);
        assert_eq!(scan.look(&mut s, t0 + ms(200), false), Look::Later);
        assert_eq!(scan.next_wake(), t0 + ms(200));
        // An in-flight renewal does not hide its lock's deadline from the wake-up.
        let mut flying = Slot {
            due: t0,
            in_flight: true,
        };
        let mut scan = Scan::new(t0, P);
        assert_eq!(scan.look(&mut flying, t0 + ms(70), false), Look::Later);
        assert_eq!(scan.next_wake(), t0 + ms(70));
    }

    #[test]
    fn renewal_outcomes_set_the_next_due_time() {
        let t0 = Instant::now();
        let (sent, now) = (t0, t0 + ms(40));
        let mut s = Slot {
            due: t0,
            in_flight: true,
        };
        assert_eq!(s.renewed(Renewal::Renewed, sent, now, P), Some(sent + P));
        assert!(!s.in_flight);
        assert_eq!(
            s.renewed(Renewal::Unknown, sent, now, P),
            Some(now + ms(2_500))
        );
        assert_eq!(
            s.renewed(Renewal::Unknown, sent, now, ms(20)),
            Some(now + ms(10))
        );
        assert_eq!(s.renewed(Renewal::Gone, sent, now, P), None);
    }

    #[test]
    fn a_lock_held_through_many_rounds_is_renewed_before_every_deadline() {
        // Simulated time: a 900 ms lease on a provider with a 10 s period, renewals answered
        // after 30 ms; the deadline moves with each renewal. The lock must never expire.
        let lease = ms(900);
        let period = period_for(P, lease);
        let t0 = Instant::now();
        let mut slot = Slot::new(t0, period);
        let mut deadline = t0 + lease;
        let mut now = t0;
        let mut renewals = 0;
        for _ in 0..200 {
            let mut scan = Scan::new(now, P.min(period * 2));
            match scan.look(&mut slot, deadline, false) {
                Look::Renew => {
                    let sent = now;
                    now += ms(30);
                    slot.renewed(Renewal::Renewed, sent, now, period);
                    deadline = sent + lease;
                    renewals += 1;
                }
                Look::Later => now = scan.next_wake().max(now + ms(1)),
                other => panic!("{other:?} at {:?}", now - t0),
            }
        }
        assert!(renewals > 20, "{renewals}");
    }

    #[test]
    fn only_an_earlier_lock_wakes_the_renewer() {
        let t0 = Instant::now();
        assert!(wakes_renewer(None, t0));
        assert!(wakes_renewer(Some(t0 + ms(5)), t0));
        assert!(!wakes_renewer(Some(t0), t0 + ms(5)));
    }
}

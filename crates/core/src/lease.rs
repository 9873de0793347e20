//! Lease bookkeeping for backends whose locks expire unless renewed (Redis, and any lease-based
//! backend): validity is measured on the monotonic clock from the moment a request was *sent*, so
//! time spent in flight always counts against the lease, never in its favour.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::lost::LostSignal;

/// A lease of a fixed length whose local deadline moves forward with each successful renewal.
#[derive(Debug)]
pub struct Lease {
    length: Mutex<Duration>,
    deadline: Mutex<Instant>,
}

impl Lease {
    /// A lease of `length` granted by a request sent at `sent_at`.
    pub fn new(length: Duration, sent_at: Instant) -> Self {
        Self {
            length: Mutex::new(length),
            deadline: Mutex::new(sent_at + length),
        }
    }

    /// The lease length renewals extend by.
    pub fn length(&self) -> Duration {
        *self.length.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the length used by later renewals (a manual `extend(ms)`).
    pub fn set_length(&self, length: Duration) {
        *self.length.lock().unwrap_or_else(|p| p.into_inner()) = length;
    }

    /// Records a successful renewal whose request was sent at `sent_at`. A late answer to an old
    /// request never moves the deadline backwards.
    pub fn renewed(&self, sent_at: Instant) {
        let candidate = sent_at + self.length();
        let mut deadline = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        if candidate > *deadline {
            *deadline = candidate;
        }
    }

    /// The local deadline: past it, the lock must be assumed lost.
    pub fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline().saturating_duration_since(now)
    }

    /// Sleeps until the deadline passes without a renewal moving it, then fires `lost`.
    /// Returns early (without firing) if `lost` fires for another reason first.
    pub async fn expire_into(&self, lost: &LostSignal, reason: &str) {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = lost.lost() => return,
            }
            if Instant::now() >= self.deadline() {
                lost.fire(reason);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renewal_moves_forward_only() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_secs(10), t0);
        lease.renewed(t0 + Duration::from_secs(3));
        assert_eq!(lease.deadline(), t0 + Duration::from_secs(13));
        lease.renewed(t0 + Duration::from_secs(1)); // a late answer to an older request
        assert_eq!(lease.deadline(), t0 + Duration::from_secs(13));
        assert_eq!(
            lease.remaining(t0 + Duration::from_secs(20)),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fires_lost_at_the_deadline_unless_renewed() {
        let lease = Arc::new(Lease::new(Duration::from_millis(100), Instant::now()));
        let lost = LostSignal::new();
        let (l2, s2) = (lease.clone(), lost.clone());
        let watch = tokio::spawn(async move { l2.expire_into(&s2, "lease expired").await });
        tokio::time::sleep(Duration::from_millis(60)).await;
        lease.renewed(Instant::now()); // deadline now ~160 ms
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            !lost.is_lost(),
            "renewed lease must not expire at the old deadline"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        watch.await.unwrap();
        assert_eq!(lost.reason(), Some("lease expired"));
    }
}

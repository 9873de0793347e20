//! The confirmation of one server's locks after its connection dropped (or moved): rounds that
//! renew every held lock there and raise the fencing counters back to their floors, until one
//! round is answered in full with no new loss of the connection while it ran.
//!
//! Until then the server is in doubt (its locks are not `isHeld`, a single deployment grants
//! nothing), so the confirmation must always end. A round that fails (a partition that has not
//! healed yet, a server still loading) is followed by another after a pause, never left for a
//! later reconnect to retry: a partition that heals may bring no reconnect at all (the
//! connection that noticed it may be idle, the other may never have dropped). The pauses
//! double from the first fault pause of [`PATIENCE`] up to half the server timeout, so a heal is confirmed
//! within about one server timeout, whenever it comes. Locks that no round can reach are lost
//! at their local deadline (the renewer), and a round that finds a key gone fires its lock's
//! lost signal: either way the doubt about them ends.

use std::time::Duration;

use super::PATIENCE;

/// The pauses between rounds start where an acquire's pauses in trouble start, and never grow
/// past theirs.
const FIRST: Duration = PATIENCE.fault_pause.first;
const LONGEST: Duration = PATIENCE.fault_pause.max;

/// What to do after a confirmation round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The locks are confirmed: clear the doubt.
    Confirmed,
    /// Run another round after this pause (or at once when the connection comes back).
    Retry(Duration),
}

/// The pacing of one server's confirmation rounds.
#[derive(Debug)]
pub struct Confirmation {
    pause: Duration,
    longest: Duration,
}

impl Confirmation {
    /// A confirmation on a server whose commands time out after `server_timeout`.
    pub fn new(server_timeout: Duration) -> Self {
        Self {
            pause: FIRST,
            longest: (server_timeout / 2).clamp(FIRST, LONGEST),
        }
    }

    /// A round ended. `answered`: the server answered every renewal and floor of it; `stable`:
    /// no connection loss was counted while it ran (a round that raced a loss may have been
    /// answered by the connection that was lost, or before a failover).
    pub fn ended(&mut self, answered: bool, stable: bool) -> Next {
        match (answered, stable) {
            (true, true) => {
                self.pause = FIRST;
                Next::Confirmed
            }
            // Answered, but a loss came in meanwhile: the connection is back, check again soon.
            (true, false) => Next::Retry(FIRST),
            (false, _) => {
                let pause = self.pause;
                self.pause = (self.pause * 2).min(self.longest);
                Next::Retry(pause)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(1_000);

    #[test]
    fn a_full_answer_with_no_loss_in_between_confirms() {
        let mut c = Confirmation::new(T);
        assert_eq!(c.ended(true, true), Next::Confirmed);
    }

    #[test]
    fn a_failed_round_is_retried_with_pauses_that_stop_growing_at_half_the_server_timeout() {
        let mut c = Confirmation::new(T);
        let pauses: Vec<u64> = (0..8)
            .map(|_| match c.ended(false, true) {
                Next::Retry(p) => p.as_millis() as u64,
                Next::Confirmed => panic!("nothing was answered"),
            })
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 500, 500, 500]);
        // Never given up: the hundredth failure is retried like the first.
        for _ in 0..100 {
            assert!(matches!(c.ended(false, false), Next::Retry(_)));
        }
        // Confirmed at last, and the next confirmation starts with short pauses again.
        assert_eq!(c.ended(true, true), Next::Confirmed);
        assert_eq!(c.ended(false, true), Next::Retry(FIRST));
    }

    #[test]
    fn a_round_that_raced_a_loss_is_run_again_soon_not_trusted() {
        let mut c = Confirmation::new(T);
        assert_eq!(c.ended(true, false), Next::Retry(FIRST));
        assert_eq!(c.ended(true, true), Next::Confirmed);
    }

    #[test]
    fn the_longest_pause_follows_the_server_timeout_within_the_backoff_range() {
        let longest = |t: u64| Confirmation::new(Duration::from_millis(t)).longest;
        assert_eq!(longest(10), FIRST);
        assert_eq!(longest(200), Duration::from_millis(100));
        assert_eq!(longest(60_000), LONGEST);
    }
}

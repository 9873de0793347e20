//! Votes: an acquire attempt decided on one server or at RedLock's quorum ⌊N/2⌋+1, a release
//! done once a quorum answered, and a batched renewal counted per lease.
//!
//! An acquire attempt is sent to every server at once; each answer is [`Vote::count`]ed as it
//! arrives and the attempt is decided as soon as the outcome cannot change: a quorum granted,
//! or so many refused or failed that a quorum is out of reach (a hung server costs nothing).
//! A RedLock grant counts only if it is still valid: the time since the request was sent plus
//! the clock-drift margin is below the lease. Whatever did not end in a grant is taken back:
//! [`Verdict`] lists the servers that granted, and [`late_needs_revoke`] tells which answers
//! that come after the verdict must be revoked too.

use std::time::Duration;

use distlock_core::{Cause, Fault};
use fred::types::Value;

use super::drift;

/// One server's answer to an acquire attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Granted, with the name's fencing counter on that server.
    Granted(u64),
    /// Held by someone else: `hint`, the holder's remaining lease when the server told it;
    /// `foreign` when the holder is not one of distlock's (its release publishes no wake-up).
    Busy {
        hint: Option<Duration>,
        foreign: bool,
    },
    /// The attempt had been revoked before it arrived (its caller gave up on it).
    Revoked,
    /// No answer, an error or a reply of the wrong shape: the script may have run, or may
    /// still run. The fault says whether trying again may help.
    Failed(Fault),
}

impl Reply {
    /// Reads the acquire script's reply: `{1, fence}`, `{0, pttl, foreign}` or `{2}`.
    pub fn parse(v: &Value) -> Option<Reply> {
        let Value::Array(items) = v else {
            return None;
        };
        let n = |i: usize| items.get(i).and_then(Value::as_i64);
        match n(0)? {
            1 => Some(Reply::Granted(u64::try_from(n(1)?).ok()?)),
            2 => Some(Reply::Revoked),
            0 => Some(Reply::Busy {
                hint: u64::try_from(n(1)?)
                    .ok()
                    .filter(|&h| h > 0)
                    .map(|h| Duration::from_millis(h + 1)),
                foreign: n(2)? == 1,
            }),
            _ => None,
        }
    }
}

/// How an acquire attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Granted by `by` (a quorum on RedLock); the token is the largest of their counters.
    Granted { fence: u64, by: Vec<usize> },
    /// Not granted: busy somewhere. `split` when some servers granted but not a quorum (on
    /// RedLock nobody may hold a majority then). `foreign`: some server's holder is not one of
    /// distlock's. `revoke`: servers whose grants to take back.
    Busy {
        hint: Option<Duration>,
        split: bool,
        foreign: bool,
        revoke: Vec<usize>,
    },
    /// Not granted: too many servers failed for a quorum. `revoke` as for `Busy`.
    Failed { fault: Fault, revoke: Vec<usize> },
}

/// Whether an answer that arrived after a verdict other than a grant must be revoked: a grant
/// must, and so must anything that is not a plain "busy" (it may still turn into one).
pub fn late_needs_revoke(reply: &Reply) -> bool {
    !matches!(reply, Reply::Busy { .. })
}

/// The count of one acquire attempt over `n` servers.
#[derive(Debug)]
pub struct Vote {
    n: usize,
    quorum: usize,
    granted: Vec<(usize, u64)>,
    busy: usize,
    hint: Option<Duration>,
    foreign: bool,
    errors: Vec<Fault>,
}

impl Vote {
    pub fn new(n: usize, quorum: usize) -> Self {
        Self {
            n,
            quorum,
            granted: Vec::new(),
            busy: 0,
            hint: None,
            foreign: false,
            errors: Vec::new(),
        }
    }

    /// Counts server `i`'s answer. Returns whether the attempt must be revoked there now (it
    /// failed: the script may have run, or may run later).
    pub fn count(&mut self, i: usize, reply: Reply) -> bool {
        match reply {
            Reply::Granted(fence) => self.granted.push((i, fence)),
            Reply::Busy { hint, foreign } => {
                self.busy += 1;
                self.foreign |= foreign;
                if let Some(h) = hint {
                    self.hint = Some(self.hint.map_or(h, |a| a.min(h)));
                }
            }
            Reply::Revoked => self.busy += 1,
            Reply::Failed(fault) => {
                self.errors.push(fault);
                return true;
            }
        }
        false
    }

    /// Whether more answers can no longer change the outcome.
    pub fn is_decided(&self) -> bool {
        self.granted.len() >= self.quorum || self.busy + self.errors.len() > self.n - self.quorum
    }

    /// The outcome, `elapsed` after the attempt was sent, for a lease of `lease`. A single
    /// server's grant needs no validity check: its lease is measured from the send anyway.
    pub fn verdict(self, elapsed: Duration, lease: Duration) -> Verdict {
        let valid = self.n == 1 || elapsed + drift(lease) < lease;
        if self.granted.len() >= self.quorum && valid {
            return Verdict::Granted {
                fence: self.granted.iter().map(|g| g.1).max().unwrap_or(0),
                by: self.granted.iter().map(|g| g.0).collect(),
            };
        }
        let revoke: Vec<usize> = self.granted.iter().map(|g| g.0).collect();
        if self.errors.len() > self.n - self.quorum {
            return Verdict::Failed {
                fault: self.failure(),
                revoke,
            };
        }
        Verdict::Busy {
            hint: self.hint,
            split: !revoke.is_empty(),
            foreign: self.foreign,
            revoke,
        }
    }
}

impl Vote {
    /// The one fault of a server, or, on RedLock, one naming every server's cause: permanent
    /// when any cause is, its facts those of the first cause that has any.
    fn failure(mut self) -> Fault {
        if self.n == 1 && self.errors.len() == 1 {
            return self.errors.remove(0);
        }
        let causes: Vec<&str> = self.errors.iter().map(|f| f.message.as_str()).collect();
        let message = format!(
            "no quorum of {} of {} servers could be reached: {}",
            self.quorum,
            self.n,
            causes.join("; ")
        );
        let transient = self.errors.iter().all(|f| f.transient);
        let cause = Cause {
            redis: self.errors.iter().find_map(|f| f.cause.redis.clone()),
            ..Cause::default()
        };
        Fault::new(message, transient).with_cause(cause)
    }
}

/// The count of one release over the servers: done once a quorum released (the rest may go
/// on in the background); failed only if no server answered.
#[derive(Debug)]
pub struct ReleaseVote {
    quorum: usize,
    ok: usize,
    errors: Vec<String>,
}

impl ReleaseVote {
    pub fn new(quorum: usize) -> Self {
        Self {
            quorum,
            ok: 0,
            errors: Vec::new(),
        }
    }

    /// Counts one server's answer; `Some` once the release is done.
    pub fn count(&mut self, answer: std::result::Result<(), String>) -> Option<()> {
        match answer {
            Ok(()) => self.ok += 1,
            Err(e) => self.errors.push(e),
        }
        (self.ok >= self.quorum).then_some(())
    }

    /// The outcome once every server answered.
    pub fn finish(self) -> std::result::Result<(), String> {
        if self.ok > 0 {
            Ok(())
        } else {
            Err(self.errors.join("; "))
        }
    }
}

/// What a renewal found for one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// A quorum extended it.
    Renewed,
    /// So many servers found it gone (or owned by another) that no quorum can hold it.
    Gone,
    /// Not enough answers either way (a failed round trip): try again soon.
    Unknown,
}

/// Counts the per-lease flags of one renewal script's answers (`None`: that server did not
/// answer) for the lease at `index`.
pub fn tally(answers: &[Option<Value>], index: usize, n: usize, quorum: usize) -> Renewal {
    let (mut yes, mut no) = (0, 0);
    for a in answers {
        match a.as_ref().and_then(|v| flag(v, index)) {
            Some(true) => yes += 1,
            Some(false) => no += 1,
            None => {}
        }
    }
    if yes >= quorum {
        Renewal::Renewed
    } else if no > n - quorum {
        Renewal::Gone
    } else {
        Renewal::Unknown
    }
}

/// The renewal script's flag for the lease at `i`: 1 renewed, 0 gone.
fn flag(v: &Value, i: usize) -> Option<bool> {
    match v {
        Value::Array(items) => items.get(i).and_then(Value::as_i64).map(|x| x == 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);
    const FAST: Duration = Duration::from_millis(5);

    fn busy(hint: Option<Duration>) -> Reply {
        Reply::Busy {
            hint,
            foreign: false,
        }
    }

    fn failed(m: &str, transient: bool) -> Reply {
        Reply::Failed(Fault::new(m, transient))
    }

    /// Counts `replies` in order until decided; returns the verdict and how many were read.
    fn run(
        n: usize,
        replies: &[(usize, Reply)],
        elapsed: Duration,
    ) -> (Verdict, usize, Vec<usize>) {
        let mut v = Vote::new(n, n / 2 + 1);
        let mut read = 0;
        let mut revoked_now = Vec::new();
        for (i, r) in replies {
            read += 1;
            if v.count(*i, r.clone()) {
                revoked_now.push(*i);
            }
            if v.is_decided() {
                break;
            }
        }
        (v.verdict(elapsed, LEASE), read, revoked_now)
    }

    #[test]
    fn parses_the_acquire_scripts_replies() {
        let arr = |v: Vec<i64>| Value::Array(v.into_iter().map(Value::from).collect());
        assert_eq!(Reply::parse(&arr(vec![1, 42])), Some(Reply::Granted(42)));
        assert_eq!(
            Reply::parse(&arr(vec![0, 250, 0])),
            Some(busy(Some(Duration::from_millis(251))))
        );
        assert_eq!(Reply::parse(&arr(vec![0, -1, 0])), Some(busy(None)));
        assert_eq!(Reply::parse(&arr(vec![0, 0, 0])), Some(busy(None)));
        assert_eq!(
            Reply::parse(&arr(vec![0, -1, 1])),
            Some(Reply::Busy {
                hint: None,
                foreign: true
            })
        );
        assert_eq!(Reply::parse(&arr(vec![0, 250])), None);
        assert_eq!(Reply::parse(&arr(vec![2])), Some(Reply::Revoked));
        assert_eq!(Reply::parse(&arr(vec![1, -3])), None);
        assert_eq!(Reply::parse(&arr(vec![7, 1])), None);
        assert_eq!(Reply::parse(&Value::from("OK")), None);
        assert_eq!(Reply::parse(&arr(vec![1])), None);
    }

    #[test]
    fn one_server_grants_busies_and_fails_as_it_answers() {
        let (v, ..) = run(1, &[(0, Reply::Granted(7))], FAST);
        assert_eq!(
            v,
            Verdict::Granted {
                fence: 7,
                by: vec![0]
            }
        );
        // A single server's grant is handed out however late (its lease counts from the send).
        let (v, ..) = run(1, &[(0, Reply::Granted(7))], LEASE * 2);
        assert_eq!(
            v,
            Verdict::Granted {
                fence: 7,
                by: vec![0]
            }
        );
        let (v, ..) = run(1, &[(0, busy(Some(FAST)))], FAST);
        assert_eq!(
            v,
            Verdict::Busy {
                hint: Some(FAST),
                split: false,
                foreign: false,
                revoke: vec![]
            }
        );
        let (v, _, now) = run(1, &[(0, failed("s0: reset", true))], FAST);
        assert_eq!(
            v,
            Verdict::Failed {
                fault: Fault::transient("s0: reset"),
                revoke: vec![]
            }
        );
        assert_eq!(
            now,
            vec![0],
            "a failed attempt is revoked where it may have run"
        );
    }

    #[test]
    fn redlock_decides_at_quorum_without_waiting_for_the_rest() {
        let (v, read, _) = run(
            3,
            &[
                (2, Reply::Granted(5)),
                (0, Reply::Granted(9)),
                (1, busy(None)),
            ],
            FAST,
        );
        assert_eq!(read, 2, "a hung third server costs nothing");
        assert_eq!(
            v,
            Verdict::Granted {
                fence: 9,
                by: vec![2, 0]
            }
        );
        let (v, read, _) = run(
            5,
            &[(0, busy(None)), (1, busy(None)), (2, busy(None))],
            FAST,
        );
        assert_eq!(read, 3, "3 of 5 busy: a quorum is out of reach");
        assert!(matches!(v, Verdict::Busy { split: false, .. }));
    }

    #[test]
    fn a_foreign_holder_on_any_server_makes_the_verdict_foreign() {
        let theirs = Reply::Busy {
            hint: None,
            foreign: true,
        };
        let (v, ..) = run(3, &[(0, busy(None)), (1, theirs)], FAST);
        assert!(matches!(v, Verdict::Busy { foreign: true, .. }));
        let (v, ..) = run(3, &[(0, busy(None)), (1, busy(None))], FAST);
        assert!(matches!(v, Verdict::Busy { foreign: false, .. }));
    }

    #[test]
    fn a_split_vote_is_busy_and_revokes_the_partial_grants() {
        let (v, ..) = run(
            3,
            &[
                (0, Reply::Granted(3)),
                (1, busy(Some(FAST))),
                (2, Reply::Revoked),
            ],
            FAST,
        );
        assert_eq!(
            v,
            Verdict::Busy {
                hint: Some(FAST),
                split: true,
                foreign: false,
                revoke: vec![0]
            }
        );
    }

    #[test]
    fn a_grant_past_its_validity_is_not_a_grant() {
        // 10 s lease: drift is 102 ms, so 9.9 s after the send the grants are worthless.
        let replies = [(0, Reply::Granted(1)), (1, Reply::Granted(2))];
        let (v, ..) = run(3, &replies, Duration::from_millis(9_899));
        assert!(matches!(v, Verdict::Busy { split: true, ref revoke, .. } if revoke == &[0, 1]));
        let (v, ..) = run(3, &replies, Duration::from_millis(9_897));
        assert!(matches!(v, Verdict::Granted { fence: 2, .. }));
    }

    #[test]
    fn a_majority_failed_is_a_failure_naming_every_cause() {
        let (v, _, now) = run(
            3,
            &[
                (0, Reply::Granted(1)),
                (1, failed("s1: refused", true)),
                (2, failed("s2: WRONGPASS", false)),
            ],
            FAST,
        );
        assert_eq!(now, vec![1, 2]);
        match v {
            Verdict::Failed { fault, revoke } => {
                assert_eq!(
                    fault.message,
                    "no quorum of 2 of 3 servers could be reached: s1: refused; s2: WRONGPASS"
                );
                assert!(
                    !fault.transient,
                    "one permanent cause makes the failure permanent"
                );
                assert_eq!(revoke, vec![0]);
            }
            other => panic!("{other:?}"),
        }
        // One failure of three is not a failure: the other two decide.
        let (v, ..) = run(
            3,
            &[
                (1, failed("s1: timeout", true)),
                (0, Reply::Granted(4)),
                (2, Reply::Granted(3)),
            ],
            FAST,
        );
        assert_eq!(
            v,
            Verdict::Granted {
                fence: 4,
                by: vec![0, 2]
            }
        );
    }

    #[test]
    fn every_order_of_answers_grants_exactly_when_a_quorum_granted() {
        // All 3^5 mixes of grant / busy / failure over 5 servers, each in two orders.
        let n = 5;
        for mix in 0..3usize.pow(5) {
            let mut replies = Vec::new();
            let mut m = mix;
            for i in 0..n {
                replies.push((
                    i,
                    match m % 3 {
                        0 => Reply::Granted(i as u64 + 1),
                        1 => busy(None),
                        _ => failed("down", true),
                    },
                ));
                m /= 3;
            }
            let grants = replies
                .iter()
                .filter(|r| matches!(r.1, Reply::Granted(_)))
                .count();
            let fails = replies
                .iter()
                .filter(|r| matches!(r.1, Reply::Failed { .. }))
                .count();
            let mut reversed = replies.clone();
            reversed.reverse();
            for order in [&replies, &reversed] {
                // Granted exactly when a quorum granted, whatever the order; a failure only
                // when a majority failed (an early "busy" may come before all failures).
                let (v, ..) = run(n, order, FAST);
                match v {
                    Verdict::Granted { by, .. } => {
                        assert!(grants >= 3 && by.len() >= 3, "mix {mix}");
                    }
                    Verdict::Failed { .. } => assert!(grants < 3 && fails >= 3, "mix {mix}"),
                    Verdict::Busy { .. } => assert!(grants < 3, "mix {mix}"),
                }
            }
        }
    }

    #[test]
    fn late_answers_after_a_failed_attempt_are_revoked_unless_busy() {
        assert!(late_needs_revoke(&Reply::Granted(1)));
        assert!(late_needs_revoke(&failed("x", true)));
        assert!(late_needs_revoke(&Reply::Revoked));
        assert!(!late_needs_revoke(&busy(None)));
    }

    #[test]
    fn a_release_is_done_at_quorum_and_fails_only_when_nobody_answered() {
        let mut r = ReleaseVote::new(2);
        assert_eq!(r.count(Err("s0: down".into())), None);
        assert_eq!(r.count(Ok(())), None);
        assert_eq!(r.count(Ok(())), Some(()));
        let mut r = ReleaseVote::new(2);
        r.count(Err("s0: down".into()));
        r.count(Ok(()));
        r.count(Err("s2: down".into()));
        assert_eq!(r.finish(), Ok(()));
        let mut r = ReleaseVote::new(1);
        r.count(Err("s0: down".into()));
        assert_eq!(r.finish(), Err("s0: down".into()));
    }

    #[test]
    fn renewals_are_counted_per_lease() {
        let flags = |v: Vec<i64>| Some(Value::Array(v.into_iter().map(Value::from).collect()));
        // Three servers; lease 0 renewed on two, lease 1 gone on two, lease 2 one each way.
        let answers = vec![flags(vec![1, 0, 1]), flags(vec![1, 0, 0]), None];
        assert_eq!(tally(&answers, 0, 3, 2), Renewal::Renewed);
        assert_eq!(tally(&answers, 1, 3, 2), Renewal::Gone);
        assert_eq!(tally(&answers, 2, 3, 2), Renewal::Unknown);
        assert_eq!(tally(&[None], 0, 1, 1), Renewal::Unknown);
        assert_eq!(tally(&[flags(vec![0])], 0, 1, 1), Renewal::Gone);
    }
}

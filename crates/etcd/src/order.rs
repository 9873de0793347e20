//! The order of a name's keys: who holds, who waits for whom. I/O-free.
//!
//! One acquire's [`Place`] is its key and that key's create revision. The driver asks it for
//! the next transaction ([`Place::txn`]), sends it, and feeds the answer back
//! ([`Place::judge`]), which returns a [`Verdict`]:
//!
//! - the first transaction creates the key (only if absent) and, in the same round trip, looks
//!   at what is ahead of it: granted when nothing it waits for is older (see `keys.rs` for the
//!   table); else it checks again, which finds the key to wait for;
//! - every later transaction checks that the key is still there (its create revision is the
//!   one seen) and reads the newest key before it that it must wait for: granted when there is
//!   none (and, for a semaphore, the permits up to its own fit `maxCount`), else a [`Watch`] on
//!   that key (etcd's recipe: wait for its deletion, then look again) — or, for a semaphore
//!   waiting on its own family, on the family's deletes after the revision it checked;
//! - a create whose answer was lost and is tried again finds the key there: it adopts it when
//!   it hangs on its own lease; a key deleted by someone else (or whose lease ended) is queued
//!   again with a fresh key.
//!
//! While it waits the driver reads the watch and feeds each message to [`heard`]. [`holders`]
//! is the same rule read from outside, for `inspect`.

use distlock_core::Fault;

use crate::grpc::wire::{
    Compare, FILTER_NO_PUT, KeyValue, RangeRequest, RequestOp, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchResponse, prefix_end,
};
use crate::keys::{Class, Keys, Side, Span};

/// One acquire's place in the order of its name.
#[derive(Debug)]
pub(crate) struct Place {
    keys: Keys,
    side: Side,
    /// A semaphore's `maxCount` (0 for the lock family).
    max: u32,
    /// The acquire's key, once chosen.
    key: Option<String>,
    /// The key's create revision, once known to exist.
    rev: Option<i64>,
}

/// What an answer to [`Place::txn`] means.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The key holds; the fencing token is its create revision.
    Granted(i64),
    /// Someone comes first. `Some`: wait on this watch, then check again; `None`: check again
    /// at once to learn which key to wait for.
    Busy(Option<Watch>),
    /// Check again at once: the key was adopted, or is gone and queues again.
    Again,
}

/// What a waiting acquire watches (deletes only).
#[derive(Debug, PartialEq)]
pub(crate) struct Watch {
    /// The watch to create.
    pub create: WatchCreateRequest,
    /// For a watch on one key, which starts now: once it is created, this count tells whether
    /// the key went before it began. `None` for a family watch, which starts after the
    /// revision checked and so misses nothing.
    pub look: Option<RangeRequest>,
}

/// What one message of the watch means.
#[derive(Debug, PartialEq)]
pub(crate) enum Heard {
    /// Something it waited for may be gone: check again.
    Again,
    /// The watch on one key is in place: look whether the key went before (a count of 0:
    /// check again).
    Look,
    /// Nothing yet.
    Nothing,
    /// etcd cancelled the watch for a reason a check cannot cure at once.
    Failed(Fault),
}

impl Place {
    /// The place of an acquire on `side` of `keys`, not in etcd yet.
    pub fn new(keys: Keys, side: Side, max: u32) -> Self {
        Self {
            keys,
            side,
            max,
            key: None,
            rev: None,
        }
    }

    /// The key, if chosen.
    #[cfg(test)]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Gives the key up (its lease went, or the acquire did): the next transaction queues a
    /// fresh one. Returns the key, which may exist in etcd.
    pub fn forget(&mut self) -> Option<String> {
        self.rev = None;
        self.key.take()
    }

    /// The key and its create revision once granted.
    pub fn into_grant(self) -> Option<(String, i64)> {
        Some((self.key?, self.rev?))
    }

    fn permits(&self) -> bool {
        matches!(self.side, Side::Permits(_))
    }

    /// The next transaction, for a key on `lease`: create the key and look ahead, or check it.
    pub fn txn(&mut self, lease: i64) -> TxnRequest {
        let key = match &self.key {
            Some(k) => k.clone(),
            None => {
                let k = self.keys.fresh(self.side, lease);
                self.key = Some(k.clone());
                k
            }
        };
        let ahead = self.keys.ahead(self.side);
        let family = self.keys.family.clone();
        // The requests: (the put, at creation), a semaphore's whole family, then one range per
        // span of `ahead`.
        let Some(rev) = self.rev else {
            let value = match self.side {
                Side::Permits(n) => n.to_string(),
                _ => String::new(),
            };
            let mut success = vec![RequestOp::put(key.clone(), value, lease)];
            if self.permits() {
                success.push(RequestOp::range(RangeRequest::prefix(family)));
            }
            success.extend(ranges(&ahead, |r| r.by_create(true).limit(1)));
            return TxnRequest {
                compare: vec![Compare::created_at(key.clone(), 0)],
                success,
                failure: vec![RequestOp::range(RangeRequest::between(key, Vec::new()))],
            };
        };
        let mut success = Vec::new();
        if self.permits() {
            success.push(RequestOp::range(
                RangeRequest::prefix(family).created_by(rev),
            ));
        }
        success.extend(ranges(&ahead, |r| {
            r.by_create(false).created_by(rev - 1).limit(1)
        }));
        TxnRequest {
            compare: vec![Compare::created_at(key, rev)],
            success,
            failure: Vec::new(),
        }
    }

    /// Judges the answer to the last [`Place::txn`], sent for a key on `lease`.
    pub fn judge(&mut self, mut answer: TxnResponse, lease: i64) -> Verdict {
        let ahead = self.keys.ahead(self.side).len();
        let permits = self.permits();
        let Some(rev) = self.rev else {
            if !answer.succeeded {
                // An earlier attempt whose answer was lost created it: adopt it.
                match answer.range(0).first() {
                    Some(kv) if kv.lease == lease => self.rev = Some(kv.create_revision),
                    _ => self.key = None,
                }
                return Verdict::Again;
            }
            let rev = answer.revision();
            self.rev = Some(rev);
            // The transaction wrote the key at `rev`: every other key is older.
            let first = if permits { 2 } else { 1 };
            let clear = (first..first + ahead)
                .flat_map(|i| answer.range(i))
                .all(|kv| kv.create_revision >= rev);
            let fits = !permits || permits_sum(&answer.range(1)) <= u64::from(self.max);
            return if clear && fits {
                Verdict::Granted(rev)
            } else {
                Verdict::Busy(None)
            };
        };
        if !answer.succeeded {
            // Deleted by someone else, or its lease ended: queue again.
            self.forget();
            return Verdict::Again;
        }
        let seen = answer.revision();
        let first = usize::from(permits);
        // The newest key before this one that it must wait for.
        let before = (first..first + ahead)
            .flat_map(|i| answer.range(i))
            .max_by_key(|kv| kv.create_revision);
        let mut create = WatchCreateRequest {
            filters: vec![FILTER_NO_PUT],
            ..WatchCreateRequest::default()
        };
        // A watch that starts at a past revision joins etcd's unsynced watchers, which the
        // server catches up only every 100 ms: under contention every hand-over waited for
        // that. So a watch on the predecessor key starts now, and once it is created one look
        // tells whether the key went in between. A semaphore's family watch starts after the
        // revision it checked (any delete since matters, not one key's).
        let look = match before {
            Some(kv) => {
                create.key = kv.key.clone();
                Some(RangeRequest {
                    key: kv.key,
                    count_only: true,
                    ..RangeRequest::default()
                })
            }
            None if !permits || permits_sum(&answer.range(0)) <= u64::from(self.max) => {
                return Verdict::Granted(rev);
            }
            None => {
                create.key = self.keys.family.clone().into_bytes();
                create.range_end = prefix_end(&create.key);
                create.start_revision = seen + 1;
                None
            }
        };
        Verdict::Busy(Some(Watch { create, look }))
    }
}

/// What one message of a watch means.
pub(crate) fn heard(resp: &WatchResponse, watch: &Watch) -> Heard {
    if resp.canceled {
        let reason = &resp.cancel_reason;
        // Compacted past its start, or cancelled without a reason (a lost leader): check again.
        if resp.compact_revision > 0 || reason.is_empty() {
            return Heard::Again;
        }
        let message = format!("etcd cancelled the watch: {reason}");
        return Heard::Failed(Fault::new(message, !reason.contains("permission denied")));
    }
    if resp.created && watch.look.is_some() {
        return Heard::Look;
    }
    if resp.events.is_empty() {
        Heard::Nothing
    } else {
        Heard::Again
    }
}

/// Who holds a name now, judged from all its keys (`kvs`, oldest first) by `keys`' family:
/// whether it is held, by how many holders (a semaphore: permits), and the newest create
/// revision (the last fencing token given). `max`: a semaphore's `maxCount`.
pub(crate) fn holders(keys: &Keys, max: Option<u32>, kvs: &[KeyValue]) -> (bool, u64, Option<u64>) {
    // This family's keys and the foreign ones.
    let kvs: Vec<(Class, &KeyValue)> = kvs
        .iter()
        .map(|kv| (keys.class(&kv.key), kv))
        .filter(|(class, _)| match max {
            Some(_) => matches!(class, Class::Permits | Class::Foreign),
            None => *class != Class::Permits,
        })
        .collect();
    let fencing_token = kvs
        .iter()
        .map(|(_, kv)| kv.create_revision)
        .max()
        .and_then(|r| u64::try_from(r).ok());
    let (held, holders) = match max {
        Some(max) => {
            // Holders: the permits that fit, up to the first foreign key (which holds or
            // waits alone, and everything after it waits too).
            let mut sum = 0u64;
            let mut waiting = false;
            for (class, kv) in &kvs {
                let p = permits_of(kv);
                if *class == Class::Foreign || sum + p > u64::from(max) {
                    waiting = true;
                    break;
                }
                sum += p;
            }
            (waiting || sum >= u64::from(max), sum)
        }
        None => {
            let holders = match kvs.first() {
                None => 0,
                Some((Class::Reader, _)) => kvs
                    .iter()
                    .take_while(|(class, _)| *class == Class::Reader)
                    .count() as u64,
                Some(_) => 1,
            };
            (holders > 0, holders)
        }
    };
    (held, holders, fencing_token)
}

/// The permits a semaphore key records (1 if its value is not a count).
fn permits_of(kv: &KeyValue) -> u64 {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&p| p > 0)
        .unwrap_or(1)
}

fn permits_sum(kvs: &[KeyValue]) -> u64 {
    kvs.iter().map(permits_of).sum()
}

/// One range request per span, shaped by `shape` (sort order, limit, revision bound).
fn ranges(spans: &[Span], shape: impl Fn(RangeRequest) -> RangeRequest) -> Vec<RequestOp> {
    spans
        .iter()
        .map(|(start, end)| {
            RequestOp::range(shape(RangeRequest::between(start.clone(), end.clone())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::wire::{
        EVENT_DELETE, Event, RangeResponse, Request, Response, ResponseHeader, ResponseOp,
    };

    const LEASE: i64 = 0x694d;

    fn kv(key: &str, rev: i64, value: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: rev,
            value: value.as_bytes().to_vec(),
            lease: LEASE + 1,
            ..KeyValue::default()
        }
    }

    /// An answer at `revision`, `succeeded` or not, with one range answer per entry.
    fn answer(succeeded: bool, revision: i64, ranges: Vec<Vec<KeyValue>>) -> TxnResponse {
        TxnResponse {
            header: Some(ResponseHeader {
                revision,
                ..ResponseHeader::default()
            }),
            succeeded,
            responses: ranges
                .into_iter()
                .map(|kvs| ResponseOp {
                    response: Some(Response::Range(RangeResponse {
                        kvs,
                        ..RangeResponse::default()
                    })),
                })
                .collect(),
        }
    }

    fn writer() -> Place {
        Place::new(Keys::lock("p/", "a"), Side::Writer, 0)
    }

    fn semaphore(permits: u32, max: u32) -> Place {
        Place::new(Keys::semaphore("p/", "a"), Side::Permits(permits), max)
    }

    /// A place whose key was created at `rev` and must wait (so the next txn is a check).
    fn created(mut p: Place, rev: i64) -> Place {
        p.txn(LEASE);
        let older = vec![kv("p/a/lw1-0", rev - 1, "")];
        let ranges = match p.side {
            Side::Permits(_) => vec![vec![], vec![kv("p/a/s1-0", rev - 1, "9")], vec![]],
            _ => vec![vec![], older],
        };
        assert_eq!(
            p.judge(answer(true, rev, ranges), LEASE),
            Verdict::Busy(None)
        );
        p
    }

    #[test]
    fn the_first_txn_creates_the_key_only_if_absent_and_looks_ahead() {
        let mut p = writer();
        let t = p.txn(LEASE);
        let key = p.key().unwrap().to_owned();
        assert!(key.starts_with("p/a/lw694d-"), "{key}");
        assert_eq!(t.compare, vec![Compare::created_at(key.clone(), 0)]);
        // The put on the lease, then one range per span ahead of a writer.
        assert_eq!(t.success[0], RequestOp::put(key.clone(), "", LEASE));
        assert_eq!(
            t.success.len(),
            1 + Keys::lock("p/", "a").ahead(Side::Writer).len()
        );
        assert!(matches!(
            &t.success[1].request,
            Some(Request::Range(r)) if r.limit == 1
        ));
        assert_eq!(t.failure.len(), 1);
        // A semaphore's put records its permits and reads the whole family too.
        let mut s = semaphore(3, 5);
        let t = s.txn(LEASE);
        assert_eq!(t.success[0], RequestOp::put(s.key().unwrap(), "3", LEASE));
        assert_eq!(
            t.success[1],
            RequestOp::range(RangeRequest::prefix("p/a/s"))
        );
    }

    #[test]
    fn a_new_key_with_nothing_older_ahead_holds_at_once() {
        let mut p = writer();
        p.txn(LEASE);
        // Keys ahead that are newer than ours do not count.
        let newer = vec![kv("p/a/lw1-0", 12, "")];
        let v = p.judge(answer(true, 10, vec![vec![], newer]), LEASE);
        assert_eq!(v, Verdict::Granted(10));
        let (key, rev) = p.into_grant().unwrap();
        assert!(key.starts_with("p/a/lw"));
        assert_eq!(rev, 10);
    }

    #[test]
    fn a_new_key_behind_an_older_one_checks_again_to_learn_what_to_watch() {
        let mut p = created(writer(), 10);
        // The next txn checks the key is still there at its revision.
        let key = p.key().unwrap().to_owned();
        let t = p.txn(LEASE);
        assert_eq!(t.compare, vec![Compare::created_at(key, 10)]);
        assert!(t.failure.is_empty());
    }

    #[test]
    fn a_semaphore_holds_while_the_permits_up_to_its_own_fit() {
        let mut s = semaphore(2, 5);
        s.txn(LEASE);
        let family = vec![kv("p/a/s1-0", 8, "3"), kv("p/a/s1-1", 10, "2")];
        let v = s.judge(answer(true, 10, vec![vec![], family, vec![]]), LEASE);
        assert_eq!(v, Verdict::Granted(10));
        let mut s = semaphore(3, 5);
        s.txn(LEASE);
        let family = vec![kv("p/a/s1-0", 8, "3"), kv("p/a/s1-1", 10, "3")];
        let v = s.judge(answer(true, 10, vec![vec![], family, vec![]]), LEASE);
        assert_eq!(v, Verdict::Busy(None));
    }

    #[test]
    fn a_create_whose_answer_was_lost_adopts_its_own_key_only() {
        let mut p = writer();
        p.txn(LEASE);
        let key = p.key().unwrap().to_owned();
        let mut mine = kv(&key, 7, "");
        mine.lease = LEASE;
        assert_eq!(
            p.judge(answer(false, 9, vec![vec![mine]]), LEASE),
            Verdict::Again
        );
        assert_eq!(p.key(), Some(key.as_str()));
        assert_eq!(
            p.txn(LEASE).compare,
            vec![Compare::created_at(key.clone(), 7)]
        );
        // On another lease: not ours; a fresh key is created next.
        let mut p = writer();
        p.txn(LEASE);
        let theirs = kv(p.key().unwrap(), 7, "");
        assert_eq!(
            p.judge(answer(false, 9, vec![vec![theirs]]), LEASE),
            Verdict::Again
        );
        assert_eq!(p.key(), None);
        let t = p.txn(LEASE);
        assert_eq!(t.compare[0], Compare::created_at(p.key().unwrap(), 0));
    }

    #[test]
    fn a_key_deleted_by_someone_else_queues_again_with_a_fresh_key() {
        let mut p = created(writer(), 10);
        let old = p.key().unwrap().to_owned();
        p.txn(LEASE);
        assert_eq!(p.judge(answer(false, 11, vec![]), LEASE), Verdict::Again);
        p.txn(LEASE);
        let fresh = p.key().unwrap();
        assert_ne!(fresh, old);
        assert_eq!(p.into_grant(), None);
    }

    #[test]
    fn a_waiter_watches_the_newest_key_before_it_from_now() {
        let mut p = created(writer(), 10);
        p.txn(LEASE);
        // One range per span: the newest key of each span before ours.
        let spans = vec![vec![kv("p/a/lr5-0", 6, "")], vec![kv("p/a/694d", 8, "")]];
        let Verdict::Busy(Some(w)) = p.judge(answer(true, 12, spans), LEASE) else {
            panic!("not a watch");
        };
        assert_eq!(w.create.key, b"p/a/694d");
        assert!(w.create.range_end.is_empty());
        assert_eq!(w.create.start_revision, 0);
        assert_eq!(w.create.filters, vec![FILTER_NO_PUT]);
        assert_eq!(w.look.unwrap().key, b"p/a/694d");
        // With nothing before it, the same check grants.
        p.txn(LEASE);
        assert_eq!(
            p.judge(answer(true, 13, vec![vec![], vec![]]), LEASE),
            Verdict::Granted(10)
        );
    }

    #[test]
    fn a_semaphore_that_does_not_fit_watches_its_family_after_the_checked_revision() {
        let mut s = created(semaphore(3, 5), 10);
        s.txn(LEASE);
        let family = vec![kv("p/a/s1-0", 8, "3"), kv("p/a/s1-1", 10, "3")];
        let Verdict::Busy(Some(w)) = s.judge(
            answer(true, 14, vec![family, vec![], vec![], vec![]]),
            LEASE,
        ) else {
            panic!("not a watch");
        };
        assert_eq!(w.create.key, b"p/a/s");
        assert_eq!(w.create.range_end, prefix_end(b"p/a/s"));
        assert_eq!(w.create.start_revision, 15);
        assert_eq!(w.look, None);
    }

    #[test]
    fn watch_messages() {
        let one = Watch {
            create: WatchCreateRequest::default(),
            look: Some(RangeRequest::default()),
        };
        let family = Watch {
            create: WatchCreateRequest::default(),
            look: None,
        };
        let msg = |f: fn(&mut WatchResponse)| {
            let mut r = WatchResponse::default();
            f(&mut r);
            r
        };
        let created = msg(|r| r.created = true);
        assert_eq!(heard(&created, &one), Heard::Look);
        assert_eq!(heard(&created, &family), Heard::Nothing);
        let deleted = msg(|r| {
            r.events = vec![Event {
                kind: EVENT_DELETE,
                kv: None,
            }]
        });
        assert_eq!(heard(&deleted, &one), Heard::Again);
        let compacted = msg(|r| {
            r.canceled = true;
            r.compact_revision = 3;
            r.cancel_reason = "compacted".into();
        });
        assert_eq!(heard(&compacted, &one), Heard::Again);
        assert_eq!(heard(&msg(|r| r.canceled = true), &one), Heard::Again);
        let denied = msg(|r| {
            r.canceled = true;
            r.cancel_reason = "permission denied".into();
        });
        let Heard::Failed(f) = heard(&denied, &one) else {
            panic!("not a failure");
        };
        assert!(!f.transient);
        assert_eq!(f.message, "etcd cancelled the watch: permission denied");
        let other = msg(|r| {
            r.canceled = true;
            r.cancel_reason = "mvcc: required revision is a future revision".into();
        });
        assert!(matches!(heard(&other, &one), Heard::Failed(f) if f.transient));
    }

    #[test]
    fn holders_as_inspect_reports_them() {
        let l = Keys::lock("p/", "a");
        let none: Vec<KeyValue> = vec![];
        assert_eq!(holders(&l, None, &none), (false, 0, None));
        // Readers at the front hold together; the writer behind them waits.
        let kvs = vec![
            kv("p/a/lr1-0", 3, ""),
            kv("p/a/lr1-1", 4, ""),
            kv("p/a/lw1-2", 5, ""),
            kv("p/a/s1-3", 9, "1"),
        ];
        assert_eq!(holders(&l, None, &kvs), (true, 2, Some(5)));
        // A semaphore counts permits up to the first foreign key.
        let s = Keys::semaphore("p/", "a");
        let kvs = vec![
            kv("p/a/s1-0", 3, "2"),
            kv("p/a/694d", 4, ""),
            kv("p/a/s1-1", 5, "1"),
        ];
        assert_eq!(holders(&s, Some(5), &kvs), (true, 2, Some(5)));
        let kvs = vec![kv("p/a/s1-0", 3, "2"), kv("p/a/s1-1", 5, "x")];
        assert_eq!(holders(&s, Some(5), &kvs), (false, 3, Some(5)));
        assert_eq!(holders(&s, Some(3), &kvs), (true, 3, Some(5)));
    }
}

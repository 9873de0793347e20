//! The etcd fencing guard: writes that land only while this grant still holds in etcd.
//!
//! A grant holds as long as its own key stands with the create revision it was granted at (the
//! fencing token). A transaction that compares the key's create revision with the token, then
//! writes, is etcd's own "is owner" check: the comparison and the write are one atomic step on
//! the cluster, so a holder whose lease ran out while it was paused (its key deleted, a later
//! holder granted) writes nothing, whatever its own clock says. No fence of its own is needed.
//! The check is the store's alone: a holder whose local deadline has passed but whose key etcd
//! still keeps still holds, and its write lands. This file is the protocol (the transaction
//! and what its answer means); `held.rs` sends it.

use crate::grpc::wire::{
    Compare, DeleteRangeRequest, RangeRequest, Request, RequestOp, TxnRequest, TxnResponse,
    prefix_end,
};

/// One write of a fenced transaction, on the user's own keys (no key prefix is added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FencedOp {
    /// Sets `key` to `value` (no lease: the data outlives the lock).
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Deletes `key`, or every key that starts with it when `prefix`.
    Delete { key: Vec<u8>, prefix: bool },
}

/// How a fenced transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The grant still held: every write landed, at this revision of the cluster.
    Written { revision: i64 },
    /// The grant no longer holds (its key is gone or was created again): nothing was written.
    /// `current` is later than the grant's token: the token of the name's oldest key now (a
    /// mutex's holder) when that is later, else the cluster's revision at the refusal.
    Stale { current: u64 },
}

impl From<FencedOp> for RequestOp {
    fn from(op: FencedOp) -> Self {
        match op {
            FencedOp::Put { key, value } => RequestOp::put(key, value, 0),
            FencedOp::Delete { key, prefix } => Self {
                request: Some(Request::DeleteRange(DeleteRangeRequest {
                    range_end: if prefix { prefix_end(&key) } else { Vec::new() },
                    key,
                })),
            },
        }
    }
}

/// The transaction: `ops` if `key` still has create revision `token`, else a look at the oldest
/// key under `name_prefix` (who holds now).
pub(crate) fn request(key: &str, token: i64, name_prefix: &str, ops: Vec<FencedOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare::created_at(key, token)],
        success: ops.into_iter().map(RequestOp::from).collect(),
        failure: vec![RequestOp::range(RangeRequest {
            keys_only: true,
            ..RangeRequest::prefix(name_prefix).by_create(true).limit(1)
        })],
    }
}

/// The part of a lock key that names its lock: everything up to its last `/` (a name's `/` is
/// escaped, and the marker after it has none).
pub(crate) fn name_prefix(key: &str) -> &str {
    key.rfind('/').map_or(key, |i| &key[..=i])
}

/// What the cluster's answer to [`request`] for a grant with `token` means.
pub(crate) fn outcome(r: &mut TxnResponse, token: u64) -> Fenced {
    if r.succeeded {
        return Fenced::Written {
            revision: r.revision(),
        };
    }
    // The key was deleted (or created again) after `token`, so the cluster's revision is past it.
    let revision = u64::try_from(r.revision()).unwrap_or(0);
    let holder = r
        .range(0)
        .first()
        .and_then(|kv| u64::try_from(kv.create_revision).ok())
        .filter(|&t| t > token);
    Fenced::Stale {
        current: holder.unwrap_or(revision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::wire::{
        CompareWith, KeyValue, RangeResponse, Response, ResponseHeader, ResponseOp,
    };

    #[test]
    fn compares_the_lock_key_with_the_token_and_writes_only_then() {
        let ops = vec![
            FencedOp::Put {
                key: b"data/a".to_vec(),
                value: b"1".to_vec(),
            },
            FencedOp::Delete {
                key: b"data/old/".to_vec(),
                prefix: true,
            },
        ];
        let t = request("app/orders/lw1a-0", 42, "app/orders/", ops);
        assert_eq!(t.compare.len(), 1);
        assert_eq!(t.compare[0].key, b"app/orders/lw1a-0");
        assert_eq!(
            t.compare[0].target_union,
            Some(CompareWith::CreateRevision(42))
        );
        match &t.success[0].request {
            Some(Request::Put(p)) => assert_eq!(
                (&p.key[..], &p.value[..], p.lease),
                (&b"data/a"[..], &b"1"[..], 0)
            ),
            other => panic!("expected a put, got {other:?}"),
        }
        match &t.success[1].request {
            Some(Request::DeleteRange(d)) => assert_eq!(
                (&d.key[..], &d.range_end[..]),
                (&b"data/old/"[..], &b"data/old0"[..])
            ),
            other => panic!("expected a delete, got {other:?}"),
        }
        match &t.failure[0].request {
            Some(Request::Range(r)) => {
                assert_eq!(
                    (&r.key[..], &r.range_end[..], r.limit),
                    (&b"app/orders/"[..], &b"app/orders0"[..], 1)
                );
            }
            other => panic!("expected a range, got {other:?}"),
        }
    }

    #[test]
    fn a_single_delete_has_no_range_end() {
        let op: RequestOp = FencedOp::Delete {
            key: b"k".to_vec(),
            prefix: false,
        }
        .into();
        match op.request {
            Some(Request::DeleteRange(d)) => assert!(d.range_end.is_empty()),
            other => panic!("expected a delete, got {other:?}"),
        }
    }

    #[test]
    fn the_name_prefix_ends_at_the_last_slash() {
        assert_eq!(name_prefix("app/x%2Fy/lw1-2"), "app/x%2Fy/");
        assert_eq!(name_prefix("orders/s3-4"), "orders/");
    }

    #[test]
    fn a_stale_answer_names_a_later_token() {
        let stale = |holder: Option<i64>| TxnResponse {
            header: Some(ResponseHeader {
                revision: 90,
                ..Default::default()
            }),
            succeeded: false,
            responses: vec![ResponseOp {
                response: Some(Response::Range(RangeResponse {
                    kvs: holder
                        .map(|rev| KeyValue {
                            key: b"app/orders/lw9".to_vec(),
                            create_revision: rev,
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })),
            }],
        };
        // The next holder's token.
        assert_eq!(
            outcome(&mut stale(Some(57)), 42),
            Fenced::Stale { current: 57 }
        );
        // No holder, or an older one (a semaphore's first permit): the cluster's revision.
        assert_eq!(outcome(&mut stale(None), 42), Fenced::Stale { current: 90 });
        assert_eq!(
            outcome(&mut stale(Some(30)), 42),
            Fenced::Stale { current: 90 }
        );
        let mut ok = TxnResponse {
            succeeded: true,
            ..stale(None)
        };
        assert_eq!(outcome(&mut ok, 42), Fenced::Written { revision: 90 });
    }
}

//! The etcd fencing guard as JS calls it: `fencedTxn` on a held etcd lock's handle. The writes
//! arrive as plain objects; the transaction and its check are the etcd crate's.

use distlock_core::{Error, Held};
use distlock_etcd::{Fenced, FencedOp};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::errors::Failure;

/// One write of a fenced etcd transaction, as the TS layer passes it.
#[napi(object)]
pub struct FencedWrite {
    /// `put` or `delete`.
    pub op: String,
    pub key: Buffer,
    /// The value of a `put`.
    pub value: Option<Buffer>,
    /// A `delete` of every key starting with `key`.
    pub prefix: Option<bool>,
}

/// How a fenced etcd transaction ended: `written` at the cluster's `revision`, or refused
/// (nothing was written), `revision` then being the later token that refused it (the
/// `current` of the TS layer's `StaleFencingTokenError`).
#[napi(object)]
pub struct FencedAnswer {
    pub written: bool,
    pub revision: BigInt,
}

/// The writes the TS layer checked, as the etcd crate takes them.
fn ops(writes: Vec<FencedWrite>) -> std::result::Result<Vec<FencedOp>, Error> {
    writes
        .into_iter()
        .map(|w| match w.op.as_str() {
            "put" => Ok(FencedOp::Put {
                key: w.key.to_vec(),
                value: w.value.map(|v| v.to_vec()).unwrap_or_default(),
            }),
            "delete" => Ok(FencedOp::Delete {
                key: w.key.to_vec(),
                prefix: w.prefix.unwrap_or(false),
            }),
            other => Err(Error::invalid(
                "ops",
                format!("must hold put or delete writes, got {other:?}"),
            )),
        })
        .collect()
}

/// Runs `writes` on `held`'s cluster only while it still holds there.
pub async fn fenced_txn(
    held: Option<Held>,
    writes: Vec<FencedWrite>,
) -> std::result::Result<FencedAnswer, Failure> {
    let Some(held) = held else {
        return Err(Failure::from(Error::invalid(
            "handle",
            "was released; a released lock has no fenced writes",
        )));
    };
    let ops = ops(writes).map_err(Failure::from)?;
    let Some(txn) = distlock_etcd::fenced_txn(&held, ops) else {
        return Err(Failure::from(Error::invalid(
            "handle",
            format!(
                "must be a lock of an EtcdLockProvider, got the {}",
                held.target()
            ),
        )));
    };
    Ok(match txn.await.map_err(Failure::from)? {
        Fenced::Written { revision } => FencedAnswer {
            written: true,
            revision: BigInt::from(revision),
        },
        Fenced::Stale { current } => FencedAnswer {
            written: false,
            revision: BigInt::from(current),
        },
    })
}

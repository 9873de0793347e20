//! Inspection: what the servers say about a lock now (holders, lease, last fencing token),
//! without taking it.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::{Error, LockInfo, LockKind, Result};
use fred::types::Value;

use crate::fault::show;
use crate::keys::Keys;
use crate::op::{Op, Side};
use crate::scripts::Scripts;
use crate::{BACKEND, Inner};

impl Inner {
    /// Asks the servers in turn about `name` until one answers (on RedLock: a snapshot of one
    /// server's view).
    pub(crate) async fn inspect(self: Arc<Self>, name: String, kind: LockKind) -> Result<LockInfo> {
        distlock_core::validate_name(&name)?;
        let prefix = &self.opts.key_prefix;
        let (keys, side, max) = match kind {
            LockKind::Semaphore { max_count, .. } => {
                (Keys::semaphore(prefix, &name), Side::S(1), Some(max_count))
            }
            _ => (Keys::lock(prefix, &name), Side::W, None),
        };
        let op = Op::new(keys, side, Arc::from(""));
        // The first server that answers (on RedLock: a snapshot of one server's view).
        let mut errors = Vec::new();
        for s in &self.servers {
            let args = vec![Value::from(side.code().as_ref())];
            let bound = self.opts.server_timeout + Duration::from_millis(50);
            let looking = s.eval(&Scripts::get().inspect, op.keys(), args);
            let answer = tokio::time::timeout(bound, looking)
                .await
                .unwrap_or_else(|_| {
                    Err(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        "no answer in time",
                    ))
                });
            match answer {
                Ok(Value::Array(v)) if v.len() == 3 => {
                    let n = |i: usize| v[i].as_i64().unwrap_or(0);
                    let holders = u32::try_from(n(0)).unwrap_or(0);
                    return Ok(LockInfo {
                        held: max.map_or(holders > 0, |m| holders >= m),
                        holders: Some(holders),
                        lease_remaining: u64::try_from(n(1))
                            .ok()
                            .filter(|_| holders > 0)
                            .map(Duration::from_millis),
                        fencing_token: u64::try_from(n(2)).ok().filter(|&t| t > 0),
                    });
                }
                Ok(v) => errors.push(format!("{}: unexpected reply {}", s.label, show(&v))),
                Err(e) => errors.push(s.explain(&e)),
            }
        }
        let detail = errors.join("; ");
        Err(Error::backend(
            BACKEND,
            format!("inspecting {name:?}: {detail}"),
            self.cause_of(&detail),
        ))
    }
}

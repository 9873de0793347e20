//! Deleting what an acquire or a held lock leaves in etcd: keys, and leases of their own.

use std::sync::Arc;
use std::time::Duration;

use crate::pool::Pool;
use crate::session::Session;
use crate::{BACKEND, Inner};

/// How long a delete that failed keeps trying in the background.
const DELETE_FOR: Duration = Duration::from_secs(300);

/// Deletes `key`, retrying within `bound`. A delete that did not get through goes on in the
/// background (the key's lease may be the shared one, which lives as long as the provider):
/// retried for up to five minutes, then left to the lease.
pub(crate) async fn delete(pool: &Arc<Pool>, bound: Duration, key: String) {
    let attempt = |pool: Arc<Pool>, key: String, bound: Duration| async move {
        pool.call(bound, |c| {
            let key = key.clone();
            async move { c.delete(key).await }
        })
        .await
    };
    let r = attempt(pool.clone(), key.clone(), bound).await;
    match r {
        Ok(_) => {}
        Err(t) if !t.transient => {
            tracing::warn!(backend = BACKEND, key = %key, error = %t.message, "cannot delete; the lease ends the key");
        }
        Err(t) => {
            tracing::debug!(backend = BACKEND, key = %key, error = %t.message, "delete failed; retrying in the background");
            let pool = pool.clone();
            tokio::spawn(async move {
                if let Err(t) = attempt(pool, key.clone(), DELETE_FOR).await {
                    tracing::warn!(backend = BACKEND, key = %key, error = %t.message, "cannot delete; the lease ends the key");
                }
            });
        }
    }
}

impl Inner {
    pub(crate) fn delete_later(&self, key: String) {
        let Some(rt) = self.runtime.get() else {
            return;
        };
        let (pool, bound) = (self.pool.clone(), self.opts.op_timeout);
        rt.spawn(async move { delete(&pool, bound, key).await });
    }

    pub(crate) fn revoke_later(&self, s: Arc<Session>) {
        let Some(rt) = self.runtime.get() else {
            return;
        };
        let (pool, bound) = (self.pool.clone(), self.opts.op_timeout);
        rt.spawn(async move { s.revoke(&pool, bound).await });
    }
}

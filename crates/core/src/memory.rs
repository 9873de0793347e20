//! The in-memory backend: the same locks, semantics and errors as the others, inside one
//! process, for users' unit tests. A lock is a place in the name's [`FairQueue`]: FIFO,
//! writer-preferring reader-writer locks and counted semaphores come with the queue.
//!
//! A memory lock is lost only when its provider is closed: `close` fires the signal and gives
//! the place in the queue back in the same step, so nothing in the process waits on a lost lock.
//!
//! [`FairQueue`]: crate::FairQueue

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::admission::{Admitted, Turns};
use crate::backend::{
    AcquireRequest, Acquiring, Backend, BoxFuture, HeldLock, LockInfo, LockKind, ProviderCore,
    ProviderState, race,
};
use crate::error::Result;
use crate::held::HeldCore;
use crate::options::{Timeout, validate_name};
use crate::queue::{Entry, SHARED_CAPACITY, Ticket};
use crate::sync::lock;

const BACKEND: &str = "memory";

/// Locks that live in this process only.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    core: ProviderCore<MemoryHeld>,
    turns: Turns<Names>,
    /// One counter for every name: strictly increasing per name, as fencing needs.
    tokens: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            core: ProviderCore::new(BACKEND),
            turns: Turns::default(),
            tokens: AtomicU64::new(0),
        }
    }
}

/// Per-name state beside the queue.
#[derive(Default)]
struct Names {
    last_token: AtomicU64,
}

impl MemoryBackend {
    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemoryBackend {
    fn core(&self) -> &dyn ProviderState {
        &self.inner.core
    }

    fn begin(&self, req: AcquireRequest) -> Result<Acquiring> {
        let Admitted { entry, mut ticket } =
            self.inner.turns.admit(&req, BACKEND, Names::default)?;
        let inner = self.inner.clone();
        Ok(Box::pin(async move {
            let granted = if req.timeout == Timeout::Zero {
                ticket.is_granted()
            } else {
                let deadline = req.timeout.deadline(tokio::time::Instant::now());
                match race(
                    ticket.granted(),
                    deadline,
                    req.cancel.as_ref(),
                    inner.core.closed(),
                )
                .await
                .done()
                {
                    Ok(()) => true,
                    Err(why) => return why.into_outcome(&req, BACKEND),
                }
            };
            if !granted {
                return Ok(None);
            }
            let token = inner.tokens.fetch_add(1, Ordering::Relaxed) + 1;
            entry.state.last_token.store(token, Ordering::Relaxed);
            let id = inner.core.held().next_id();
            let held = Arc::new(MemoryHeld {
                inner: Arc::downgrade(&inner),
                id,
                core: HeldCore::new(req.target(BACKEND).to_string(), token),
                turn: Mutex::new(Some((ticket, entry))),
            });
            inner.core.held().insert(id, &held);
            Ok(Some(held as crate::Held))
        }))
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let info = validate_name(name).map(|()| {
            let semaphore = matches!(kind, LockKind::Semaphore { .. });
            let entry = self.inner.turns.get(name, kind);
            let Some(entry) = entry else {
                return LockInfo {
                    holders: Some(0),
                    ..LockInfo::default()
                };
            };
            let used = entry.queue.in_use();
            let holders = if used >= SHARED_CAPACITY { 1 } else { used };
            LockInfo {
                held: if semaphore {
                    used >= entry.queue.capacity()
                } else {
                    used > 0
                },
                holders: Some(u32::try_from(holders).unwrap_or(u32::MAX)),
                lease_remaining: None,
                fencing_token: Some(entry.state.last_token.load(Ordering::Relaxed))
                    .filter(|&t| t > 0),
            }
        });
        Box::pin(async move { info })
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            for h in inner.core.close("the lock provider was closed") {
                h.release_now();
            }
            Ok(())
        })
    }
}

struct MemoryHeld {
    inner: Weak<Inner>,
    id: u64,
    core: HeldCore,
    turn: Mutex<Option<(Ticket, Arc<Entry<Names>>)>>,
}

impl MemoryHeld {
    fn release_now(&self) {
        if !self.core.mark_released() {
            return;
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.core.held().remove(self.id);
        }
        drop(lock(&self.turn).take());
    }
}

impl HeldLock for MemoryHeld {
    fn core(&self) -> &HeldCore {
        &self.core
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        self.release_now();
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemoryHeld {
    fn drop(&mut self) {
        self.release_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn keeps_the_backend_contract() {
        crate::testing::run(&crate::testing::Subject {
            open: Box::new(|| Arc::new(MemoryBackend::new())),
            prefix: "contract:".into(),
            read_write: true,
            semaphore: true,
            shared_store: false,
        })
        .await;
    }

    fn req(name: &str, kind: LockKind, timeout: Timeout) -> AcquireRequest {
        AcquireRequest {
            name: name.into(),
            kind,
            timeout,
            cancel: None,
            lease: None,
            auto_renew: true,
        }
    }

    #[tokio::test]
    async fn exclusion_tokens_inspection_and_fifo() {
        let m = MemoryBackend::new();
        let a = m
            .acquire(req("x", LockKind::Mutex, Timeout::Zero))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(
            m.acquire(req("x", LockKind::Read, Timeout::Zero))
                .unwrap()
                .await
                .unwrap()
                .is_none()
        );
        let info = m.inspect("x", LockKind::Mutex).await.unwrap();
        assert!(info.held);
        assert_eq!(info.fencing_token, Some(a.fencing_token()));
        let waiter = m
            .acquire(req(
                "x",
                LockKind::Mutex,
                Timeout::After(Duration::from_secs(5)),
            ))
            .unwrap();
        let t1 = a.fencing_token();
        a.release().await.unwrap();
        let b = waiter.await.unwrap().unwrap();
        assert!(b.fencing_token() > t1);
        drop(b);
        assert!(!m.inspect("x", LockKind::Mutex).await.unwrap().held);
        let sem = LockKind::semaphore(2);
        let s1 = m
            .acquire(req("s", sem, Timeout::Zero))
            .unwrap()
            .await
            .unwrap();
        assert!(!m.inspect("s", sem).await.unwrap().held);
        let s2 = m
            .acquire(req("s", sem, Timeout::Zero))
            .unwrap()
            .await
            .unwrap();
        let info = m.inspect("s", sem).await.unwrap();
        assert!(info.held && info.holders == Some(2));
        drop((s1, s2));
        m.close().await.unwrap();
        assert!(m.acquire(req("x", LockKind::Mutex, Timeout::Zero)).is_err());
    }

    /// Close is the only way a memory lock is lost: its signal fires and its turn is given back
    /// in the same step, before `release()` (issue 11 item 9).
    #[tokio::test]
    async fn close_fires_lost_and_frees_the_turn_before_release() {
        let m = MemoryBackend::new();
        let h = m
            .acquire(req("x", LockKind::Mutex, Timeout::Zero))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let entry = m.inner.turns.get("x", LockKind::Mutex).unwrap();
        assert_eq!(entry.queue.in_use(), SHARED_CAPACITY);
        m.close().await.unwrap();
        assert!(h.lost().is_lost());
        assert_eq!(
            entry.queue.in_use(),
            0,
            "the turn is back without release()"
        );
        h.release().await.unwrap();
    }
}

//! A lock acquire: core's two-phase SQL acquire over one named lock. The try (`GET_LOCK(name,
//! 0)`, with the fencing bump in the same statement) runs on a shared session; a busy lock is
//! then waited for on a session of the caller's own with `GET_LOCK(name, seconds)`, the
//! caller's timeout rounded up to whole seconds, and a wait that ends early (deadline,
//! `AbortSignal`, close) is ended on the server by `KILL CONNECTION` of its session.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::two_phase::{self, Answer, TwoPhase};
use distlock_core::{
    AcquireRequest, Admitted, BoxFuture, Fault, Held, Interrupted, Reporter, Result,
};
use tokio::time::Instant;

use crate::held::{Got, Keep, Turn};
use crate::names;
use crate::session::{Session, Use};
use crate::statements::{
    FOREVER_SECS, bump, kill_connection, release_all, try_and_bump, try_with_uuid, wait_for,
};
use crate::{BACKEND, Inner};

/// How long a wait that ends early (deadline, cancel, close) waits for the server to confirm
/// that its waiting session is gone before it settles anyway (the cleanup goes on).
const KILL_SETTLE: Duration = Duration::from_millis(250);

/// Acquires the named lock `req.name` once this caller's `ticket` comes up.
pub(crate) async fn acquire(
    inner: Arc<Inner>,
    req: AcquireRequest,
    Admitted { entry, mut ticket }: Admitted<()>,
) -> Result<Option<Held>> {
    let start = Instant::now();
    inner.start_keepalive();
    let named = Arc::new(NamedLock {
        inner: inner.clone(),
        name: names::lock_name(&req.name),
    });
    let (policy, closed) = (inner.policy(), inner.core.closed());
    let reporter = Reporter::of(inner.pool.observer.get(), &req, BACKEND);
    match two_phase::after_turn(named, policy, &req, &mut ticket, start, reporter, closed).await {
        Ok(got) => {
            let turn = Turn {
                ticket,
                keep: Keep::Entry(entry),
            };
            Ok(Some(inner.grant(&req, got, turn, start)))
        }
        Err(end) => inner.finish(&req, end),
    }
}

/// The named lock of one acquire, as core's two-phase acquire sees it.
struct NamedLock {
    inner: Arc<Inner>,
    /// The server's lock name.
    name: String,
}

impl TwoPhase for NamedLock {
    type Grant = Got;
    type Shared = Use;
    type Waiter = Arc<Session>;

    fn shared(&self) -> BoxFuture<'static, std::result::Result<Use, Fault>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Creating the fencing table is the first statement a provider sends, so it is
            // where a server that accepts and never answers is met.
            inner.ensure_table().await?;
            inner.pool.shared().await
        })
    }

    fn try_lock(&self, u: Use) -> Answer<Got> {
        let (inner, name) = (self.inner.clone(), self.name.clone());
        let op = if inner.pool.opts.uuid_short {
            try_with_uuid(name.clone())
        } else {
            try_and_bump(&inner.pool.opts.fencing_table, name.clone())
        };
        Box::pin(async move {
            let s = u.session.clone();
            match s.run(Some(inner.op_timeout()), op).await {
                Ok(Some(token)) => Ok(Some(Got::new(s, Some(u), vec![name], token))),
                Ok(None) => Ok(None),
                Err(f) => Err(f),
            }
        })
    }

    fn undo(&self, got: Got) -> BoxFuture<'static, ()> {
        let limit = self.inner.op_timeout();
        Box::pin(async move {
            let _ = got.session.run(Some(limit), release_all(got.names)).await;
        })
    }

    fn waiter(&self) -> BoxFuture<'static, std::result::Result<Option<Arc<Session>>, Fault>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.pool.for_wait().await.map(Some) })
    }

    /// `GET_LOCK` with the caller's timeout rounded up to whole seconds (the caller's own
    /// deadline is kept to the millisecond, by the interrupt), then, when granted, the fencing
    /// bump on the same session. A wait that ends without a grant hands its session back.
    fn wait(&self, w: &Arc<Session>, until: Option<Instant>) -> Answer<Got> {
        let (inner, name, w) = (self.inner.clone(), self.name.clone(), w.clone());
        let secs = match until {
            None => FOREVER_SECS,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64,
        };
        Box::pin(async move {
            let granted = match w.run(None, wait_for(name.clone(), secs)).await {
                Ok((Some(1), uuid)) => uuid,
                // The server's timeout, or the wait was killed.
                Ok(_) => {
                    w.end_wait();
                    return Ok(None);
                }
                Err(f) => {
                    w.end_wait();
                    return Err(f);
                }
            };
            let limit = inner.op_timeout();
            let token = if inner.pool.opts.uuid_short {
                Ok(granted)
            } else {
                let table = &inner.pool.opts.fencing_table;
                w.run(Some(limit), bump(table, name.clone())).await
            };
            match token {
                Ok(Some(token)) => Ok(Some(Got::new(w, None, vec![name], token))),
                other => {
                    // Without a token the grant cannot be handed out: give it back.
                    let _ = w.run(Some(limit), release_all(vec![name])).await;
                    w.end_wait();
                    Err(match other {
                        Err(f) => f,
                        _ => Fault::fatal("the fencing counter gave no token"),
                    })
                }
            }
        })
    }

    /// While its `GET_LOCK` may still be on the way or waiting, the session is ended on the
    /// server with `KILL CONNECTION` from another session: that ends the wait whenever its
    /// statement arrives, and frees a grant that raced it (a `KILL QUERY` could land before
    /// the statement and miss it, leaving a wait the server never ends). The caller settles
    /// once the server has the kill. A wait that already answered is cleaned up on its own
    /// session. Each step is bounded by `op_timeout`.
    fn interrupt(
        &self,
        _: Interrupted,
        w: Arc<Session>,
        wait: Answer<Got>,
    ) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let limit = inner.op_timeout();
            let mut wait = wait;
            if let Some(answer) = now_or_never(&mut wait) {
                if let Ok(Some(got)) = answer {
                    let _ = w.run(Some(limit), release_all(got.names)).await;
                    w.end_wait();
                }
                // Else the wait handed its session back itself.
                return;
            }
            match tokio::time::timeout(limit, inner.pool.shared()).await {
                Ok(Ok(u)) => {
                    let _ = u.session.run(Some(limit), kill_connection(w.id)).await;
                }
                _ => tracing::debug!(backend = BACKEND, "no session to end a wait from"),
            }
            // The wait now ends with an error: its session is gone, and so is anything it was
            // granted.
            tokio::spawn(async move {
                w.kill("it was ended to stop a wait");
                let _ = tokio::time::timeout(limit, wait).await;
                if inner.core.closed().is_cancelled() {
                    // The provider closed while this wait ended: the sessions opened for it go
                    // too.
                    for s in inner.pool.drain() {
                        s.close(limit).await;
                    }
                }
            });
        })
    }

    fn settle(&self, _: Interrupted) -> Duration {
        KILL_SETTLE
    }
}

/// `f`'s output if it is ready now.
fn now_or_never<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

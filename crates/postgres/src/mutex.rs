//! A mutex or reader-writer acquire: core's two-phase SQL acquire over one advisory key. The
//! try (`pg_try_advisory_lock`) runs on a shared session, right behind the release that let
//! this caller in when it can; a busy key is then waited for on a session of the caller's own,
//! with `lock_timeout` set for that statement's transaction, so the server gives up by itself
//! at the deadline. A wait interrupted by a cancel or a close is cancelled on the server.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::two_phase::{self, Answer, TwoPhase, Usage};
use distlock_core::{
    AcquireRequest, Admitted, BoxFuture, Fault, Held, Interrupted, Reporter, Result,
};
use tokio::time::Instant;

use crate::config::Scope;
use crate::fault::fault;
use crate::held::{Handoff, Keep, Turn};
use crate::session::{Param, Session};
use crate::sql::{Sql, bigint_cell, parse_token};
use crate::{BACKEND, Inner};

/// SQLSTATE of `lock_timeout` expiring.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How long a cancelled or closed wait waits for the server to confirm the cancel before it
/// settles anyway (the cleanup then goes on in the background).
const CANCEL_SETTLE: Duration = Duration::from_secs(1);

/// How often a waiter that finds no session free for its wait (every session holds locks and
/// the pool is full) tries again, besides whenever a session frees up.
const NO_SESSION_RETRY: Duration = Duration::from_millis(100);

/// Acquires the advisory key of `sql` once this caller's `ticket` comes up.
pub(crate) async fn acquire(
    inner: Arc<Inner>,
    req: AcquireRequest,
    Admitted { entry, mut ticket }: Admitted<Handoff>,
    sql: Sql,
) -> Result<Option<Held>> {
    let start = Instant::now();
    inner.start_keepalive();
    let key = Arc::new(KeyLock {
        inner: inner.clone(),
        sql,
        handoff: entry.clone(),
        target: req.target(BACKEND).to_string(),
    });
    let (policy, closed) = (inner.policy(), inner.core.closed());
    let reporter = Reporter::of(inner.pool.observer.get(), &req, BACKEND);
    match two_phase::after_turn(key, policy, &req, &mut ticket, start, reporter, closed).await {
        Ok(KeyGrant { session, token }) => {
            let turn = Turn {
                ticket,
                keep: Keep::Entry(entry),
            };
            inner.grant(&req, session, sql.unlock(), token, turn, start)
        }
        Err(end) => inner.finish(&req, end),
    }
}

/// The advisory key of one acquire, as core's two-phase acquire sees it.
struct KeyLock {
    inner: Arc<Inner>,
    sql: Sql,
    handoff: Arc<Entry<Handoff>>,
    target: String,
}

/// A granted key: the session that holds it and the fencing token.
struct KeyGrant {
    session: Arc<Session>,
    token: u64,
}

impl TwoPhase for KeyLock {
    type Grant = KeyGrant;
    type Shared = Arc<Session>;
    type Waiter = Arc<Session>;

    fn shared(&self) -> BoxFuture<'static, std::result::Result<Arc<Session>, Fault>> {
        let (inner, target) = (self.inner.clone(), self.target.clone());
        // Right behind the release that let this caller in, on its session if it can.
        let prefer = lock(&self.handoff.state.session)
            .take()
            .and_then(|s| s.upgrade());
        Box::pin(async move { inner.attempt_session(&target, prefer).await })
    }

    fn try_lock(&self, s: Arc<Session>) -> Answer<KeyGrant> {
        let (inner, target) = (self.inner.clone(), self.target.clone());
        let stmt = self.sql.attempt(&inner.pool.opts.fencing_sequence);
        Box::pin(async move {
            let rows = inner.run_attempt(&s, stmt, &target).await?;
            match bigint_cell(&rows, 0).and_then(|t| t.map(|t| parse_token(Some(t))).transpose()) {
                Ok(Some(_)) if s.is_dead() => Err(Inner::ended_at_grant(&target, &s)),
                Ok(Some(token)) => Ok(Some(KeyGrant { session: s, token })),
                Ok(None) => {
                    inner.end_attempt(&s).await;
                    Ok(None)
                }
                Err(e) => {
                    s.kill(String::from("the server answered an attempt unexpectedly"));
                    Err(Fault::fatal(e.to_string()))
                }
            }
        })
    }

    fn undo(&self, grant: KeyGrant) -> BoxFuture<'static, ()> {
        let (inner, unlock) = (self.inner.clone(), self.sql.unlock());
        Box::pin(async move { inner.undo(&grant.session, unlock).await })
    }

    /// A session that holds nothing. If none can be had (every session holds locks and the
    /// pool is full), the acquire tries again whenever a session frees up, or after
    /// [`NO_SESSION_RETRY`] (session scope), until the deadline.
    fn waiter(&self) -> BoxFuture<'static, std::result::Result<Option<Arc<Session>>, Fault>> {
        let (inner, scope) = (self.inner.clone(), self.sql.scope);
        Box::pin(async move {
            tokio::select! {
                s = inner.pool.session(Usage::Own) => s.map(Some),
                _ = tokio::time::sleep(NO_SESSION_RETRY), if scope == Scope::Session => Ok(None),
            }
        })
    }

    /// The blocking statement on the waiter's session: the fencing token, or `None` when
    /// `lock_timeout` ran out. A session that answers without a grant is cleaned up (a grant
    /// can race `lock_timeout`) and handed back.
    fn wait(&self, s: &Arc<Session>, until: Option<Instant>) -> Answer<KeyGrant> {
        let (inner, target, s) = (self.inner.clone(), self.target.clone(), s.clone());
        let mut stmt = self
            .sql
            .wait(&inner.pool.opts.fencing_sequence, until.is_some());
        Box::pin(async move {
            let answer = async {
                // Prepared first (once per session), so that lock_timeout is measured from when
                // the wait is sent, not from before a prepare's round trip.
                s.prepare(&stmt).await?;
                if let Some(d) = until {
                    // Rounded up: the server must not give up before the caller's deadline.
                    let left = d.saturating_duration_since(Instant::now());
                    let ms = left.as_micros().div_ceil(1000).max(1);
                    stmt.params.push(Param::Text(format!("{ms}ms")));
                }
                s.execute(&stmt).await
            };
            match answer.await {
                Ok(rows) => match bigint_cell(&rows, 1).and_then(parse_token) {
                    Ok(_) if s.is_dead() => Err(Inner::ended_at_grant(&target, &s)),
                    Ok(token) => Ok(Some(KeyGrant { session: s, token })),
                    Err(e) => {
                        inner.spawn_clean(&s);
                        Err(fault(e.to_string(), false))
                    }
                },
                Err(e) if e.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) => {
                    inner.spawn_clean(&s);
                    Ok(None)
                }
                Err(e) => {
                    let f = inner.fault(&target, "waiting for", &e);
                    inner.spawn_clean(&s);
                    Err(f)
                }
            }
        })
    }

    /// At the deadline the wait is left to end by itself (its `lock_timeout`), cancelled only
    /// if it does not within `op_timeout`; a cancel or close cancels it on the server at once.
    fn interrupt(
        &self,
        why: Interrupted,
        s: Arc<Session>,
        wait: Answer<KeyGrant>,
    ) -> BoxFuture<'static, ()> {
        let cancel_first = why != Interrupted::TimedOut;
        Box::pin(self.inner.clone().finish_wait(s, wait, cancel_first))
    }

    fn settle(&self, why: Interrupted) -> Duration {
        match why {
            Interrupted::TimedOut => Duration::ZERO,
            Interrupted::Cancelled | Interrupted::Closed => CANCEL_SETTLE,
        }
    }
}

impl Inner {
    /// Ends a wait whose caller stopped waiting: lets the statement end (lock_timeout) or
    /// cancels it, then drops whatever the session was granted and hands it back. Each step is
    /// bounded by `op_timeout`; a session that does not answer is closed.
    async fn finish_wait(
        self: Arc<Self>,
        s: Arc<Session>,
        mut wait: Answer<KeyGrant>,
        cancel_first: bool,
    ) {
        let op = self.pool.opts.op_timeout;
        if !cancel_first && let Ok(answer) = tokio::time::timeout(op, &mut wait).await {
            self.after_interrupted(&s, answer).await;
            return;
        }
        let _ = tokio::time::timeout(op, s.cancel_running(self.pool.tls.clone())).await;
        match s.within(op, &mut wait).await {
            Some(answer) => self.after_interrupted(&s, answer).await,
            None => s.kill(format!(
                "an interrupted wait did not end within {} ms",
                op.as_millis()
            )),
        }
    }

    /// Drops what an interrupted wait was granted; a wait that answered without a grant has
    /// cleaned up its session itself.
    async fn after_interrupted(
        &self,
        s: &Arc<Session>,
        answer: std::result::Result<Option<KeyGrant>, Fault>,
    ) {
        if let Ok(Some(_)) = answer {
            self.clean_after(s).await;
        }
    }
}

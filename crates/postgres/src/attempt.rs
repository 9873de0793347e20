//! What the mutex and the semaphore attempts share: the session a try runs on, running it
//! within `op_timeout`, and handing back or cleaning up a session an attempt or a wait owned.
//! A session that does not answer in time is closed: the server frees what it held once it
//! notices.

use std::sync::Arc;

use distlock_core::Fault;
use distlock_core::two_phase::Usage;

use crate::config::Scope;
use crate::fault::{describe, fault, is_transient};
use crate::pool::SHARED;
use crate::session::{Session, Stmt};
use crate::sql::{Rows, reset};
use crate::{BACKEND, Inner};

impl Inner {
    /// The fault of `e` while doing `what` to `target`.
    pub(crate) fn fault(&self, target: &str, what: &str, e: &tokio_postgres::Error) -> Fault {
        let message = format!(
            "{what} {target} on {}: {}",
            self.pool.opts.server(),
            describe(e)
        );
        fault(message, is_transient(e))
    }

    /// Which session an attempt that never waits runs on: a shared one in session scope
    /// (pipelined with other callers), one of its own in transaction scope.
    pub(crate) fn attempt_usage(&self) -> Usage {
        match self.pool.opts.scope {
            Scope::Session => SHARED,
            Scope::Transaction => Usage::Own,
        }
    }

    /// The session for an attempt at `target`: `prefer` if it is free for one, else the pool's
    /// pick; the fencing sequence made sure of first.
    pub(crate) async fn attempt_session(
        &self,
        target: &str,
        prefer: Option<Arc<Session>>,
    ) -> Result<Arc<Session>, Fault> {
        self.ensure_sequence(target).await?;
        let usage = self.attempt_usage();
        match prefer.filter(|s| s.take(usage)) {
            Some(s) => Ok(s),
            None => self.pool.session(usage).await,
        }
    }

    /// Runs a non-waiting attempt at `target` on `s`. A statement that never waits gets
    /// `op_timeout` for its answer, also when the caller's deadline is further away: past that,
    /// its session is taken for cut off and closed.
    pub(crate) async fn run_attempt(
        &self,
        s: &Arc<Session>,
        stmt: Stmt,
        target: &str,
    ) -> Result<Rows, Fault> {
        let op = self.pool.opts.op_timeout;
        let mut q = std::pin::pin!(s.execute(&stmt));
        match s.within(op, &mut q).await {
            Some(Ok(rows)) => Ok(rows),
            Some(Err(e)) => {
                let f = self.fault(target, "trying", &e);
                self.end_attempt(s).await;
                Err(f)
            }
            None => {
                let message = format!(
                    "trying {target} on {}: no answer within {} ms",
                    self.pool.opts.server(),
                    op.as_millis()
                );
                // The server frees whatever the session held once it notices it closed.
                s.kill(message.clone());
                Err(Fault::transient(message))
            }
        }
    }

    /// A grant whose session ended before the grant could be handed out (it reached this
    /// thread late): the server freed the lock with the session, maybe to someone else already,
    /// so it is not handed out as held; the caller tries again as after any broken session.
    pub(crate) fn ended_at_grant(target: &str, s: &Session) -> Fault {
        tracing::debug!(
            backend = BACKEND,
            session = s.id,
            "a grant's session ended before the grant was handed out"
        );
        Fault::transient(format!(
            "the session that was granted {target} ended before the grant was handed out"
        ))
    }

    /// Undoes, on its session, a grant its caller gave up on: runs `unlock` (session scope; in
    /// transaction scope the rollback does it) and hands the session back.
    pub(crate) async fn undo(&self, s: &Arc<Session>, unlock: Stmt) {
        if self.pool.opts.scope == Scope::Session {
            self.bounded(s, &unlock, "undoing a grant its caller gave up on")
                .await;
        }
        self.end_attempt(s).await;
    }

    /// Runs `stmt` on `s` within `op_timeout`; a session that fails or does not answer is
    /// closed (the server then frees what it held).
    pub(crate) async fn bounded(&self, s: &Arc<Session>, stmt: &Stmt, what: &str) {
        let op = self.pool.opts.op_timeout;
        let mut q = std::pin::pin!(s.execute(stmt));
        match s.within(op, &mut q).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => s.kill(format!("{what} failed: {}", describe(&e))),
            None => s.kill(format!("{what} got no answer within {} ms", op.as_millis())),
        }
    }

    /// Hands back the session of an attempt that was not granted (a no-op for a shared one).
    pub(crate) async fn end_attempt(&self, s: &Arc<Session>) {
        if self.attempt_usage() == Usage::Own {
            self.clean_after(s).await;
        }
    }

    pub(crate) fn spawn_clean(self: &Arc<Self>, s: &Arc<Session>) {
        let (inner, s) = (self.clone(), s.clone());
        tokio::spawn(async move { inner.clean_after(&s).await });
    }

    /// Drops anything a busy session may hold and hands it back; a session that cannot be
    /// cleaned within `op_timeout` is closed (the server then frees what it held).
    pub(crate) async fn clean_after(&self, s: &Arc<Session>) {
        if s.is_dead() {
            return;
        }
        let op = self.pool.opts.op_timeout;
        for _ in 0..3 {
            let stmt = reset(self.pool.opts.scope);
            let mut q = std::pin::pin!(s.execute(&stmt));
            match s.within(op, &mut q).await {
                Some(Ok(_)) => {
                    s.unbusy();
                    return;
                }
                // A cancel request can land on the statement after the one it was meant for.
                Some(Err(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {}
                _ => break,
            }
        }
        s.kill(String::from(
            "its session could not be reset after an interrupted wait",
        ));
    }
}

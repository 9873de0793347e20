//! distlock-postgres: locks on PostgreSQL advisory locks.
//!
//! - Mutex: `pg_advisory_lock(key)`; reader-writer lock: the shared form for readers, the
//!   exclusive form for writers (the server queues new readers behind a waiting writer);
//!   semaphore: `maxCount` keys derived from the name, one per permit.
//! - Keys: [`AdvisoryKey::from_name`], identical to .NET DistributedLock's.
//! - Waiting: the callers of one process queue in memory ([`FairQueue`]), so one process sends at
//!   most one waiter per name; that waiter first tries without blocking on a shared session, then
//!   blocks on a session of its own with `lock_timeout` set for that statement's transaction (as
//!   `SET LOCAL` would). Between processes the server's lock queue is FIFO.
//! - Statements: the attempts, waits and unlocks are prepared once per session and sent with the
//!   keys bound as parameters (session scope), or parsed unnamed with bound parameters
//!   (transaction scope, for transaction poolers); see the `pool` module.
//! - Fencing tokens come from one sequence (`nextval` in the statement that takes the lock),
//!   created on first use if missing.
//! - A session that ends fires the lost signal of every lock it held, then gives each lock's
//!   in-process turn back, so the name is free in this process at once (no `release()` needed;
//!   a later `release()` of the lost handle does nothing and does not fail).
//!
//! # Time bounds
//!
//! Every call settles within its budget whatever the network does (slow link, reset, silent
//! partition, server stopped). With default options ([`PgOptions::op_timeout`] and
//! [`PgOptions::keepalive`] both 5 s):
//!
//! | call | settles by |
//! |---|---|
//! | `acquire` with `timeout` T > 0 | T + scheduling slack (documented ≤ 50 ms; measured ≈ 1-2 ms, over a 200 ms/200 ms link too) |
//! | `acquire` with `timeout` 0 (try) | `op_timeout` (5 s) for connect and attempt together |
//! | `release` | `op_timeout` (5 s); no answer by then closes the session (the server frees its locks once it notices) |
//! | `inspect` | `op_timeout` (5 s) |
//! | cancel of a waiting `acquire` | 1 s (the server's confirmation of the cancel; cleanup goes on in the background) |
//! | `close` | 5 s for the unlocks, then every session is closed |
//!
//! - The deadline is raced against the whole call: connecting, the attempt, the blocking wait.
//!   A statement still in flight at the deadline is finished in the background, and a grant that
//!   raced the deadline is undone there (`pg_advisory_unlock`, or `pg_advisory_unlock_all` on the
//!   waiter's own session, or `ROLLBACK`), each step within `op_timeout`; a session that does not
//!   answer is closed. So a call that failed or timed out leaves nothing held on a live session.
//! - At the deadline the answer is "busy" (`None`) if the server answered during the call, else a
//!   backend error (no connection, or no answer since the call began: a partition is not a busy
//!   lock).
//! - Dead sessions are detected by default: sessions that hold locks are probed every
//!   `keepalive`; a probe unanswered within `keepalive` closes the session and fires its locks'
//!   lost signals, so a silent partition is reported within 2 × `keepalive` (10 s) of the last
//!   answer. TCP keepalives (idle and interval `keepalive`) and `TCP_USER_TIMEOUT`
//!   (2 × `keepalive`, Linux) end dead connections that the probe does not cover.
//! - Waiters ride out transient faults, before the first connection as after it (the one rule
//!   of every backend): the server refusing or resetting connections, down, restarting or out
//!   of connections, a login unanswered within `connect_timeout`, a host name that does not
//!   resolve (yet), the session terminated. They reconnect and queue again, pausing 50 ms,
//!   doubling up to 1 s, for as long as their timeout lasts (a waiter without timeout: until
//!   granted, cancelled or closed); each attempt is raced against the deadline, so a connect
//!   in flight never makes the acquire overrun it (the login goes on in the background, within
//!   `connect_timeout`, and its session joins the pool). If the timeout ends while the server is
//!   still unreachable, the error is a backend error that names the cause. This is core's
//!   `Patience` ([`POLICY`]) running core's two-phase SQL acquire (`distlock_core::two_phase`).
//!   Not retried: a try (`timeout` 0), and refusals a reconnect cannot cure (authentication,
//!   an unknown database, permissions, TLS configuration and verification, an invalid
//!   connection string); the classification is `fault::is_transient`. A waiter without timeout
//!   behind a partition that keeps its socket alive waits until the network heals.
//!
//! [`FairQueue`]: distlock_core::FairQueue

mod attempt;
mod config;
mod fault;
mod held;
pub mod key;
mod mutex;
mod pool;
#[cfg(test)]
mod prepared_statements;
mod semaphore;
mod session;
mod socket;
mod sql;

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use distlock_core::two_phase::{self, Usage};
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, End, Error, Fault, LockInfo, LockKind, Policy,
    ProviderCore, ProviderState, Result, Turns,
};
use tokio::sync::OnceCell;

pub use config::{PgOptions, Scope, Verify};
use fault::describe;
use held::{Handoff, PgHeld, SemState};
pub use key::AdvisoryKey;
use pool::Pool;
use sql::Sql;

/// The backend's name in errors and logs.
pub const BACKEND: &str = "postgres";

/// How an acquire spends its budget (core's `Patience`); the try's bound is the provider's
/// `op_timeout`, set per provider ([`Inner::policy`]).
const POLICY: Policy = Policy {
    fault_pause: two_phase::FAULT_PAUSE,
    // A busy key is waited for on the server (its queue wakes the waiter): nothing to poll.
    busy_poll: None,
    // A try does not retry: a session the server closed ends its connection task at once, which
    // takes it out of the pool, so a try does not meet a stale one.
    try_retries: 0,
    try_budget: config::DEFAULT_OP_TIMEOUT,
};

/// A lock provider on one PostgreSQL database. See the crate documentation for the time bounds
/// of every call.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    core: ProviderCore<PgHeld>,
    /// Mutexes and reader-writer locks of one name share a queue (a mutex is the writer side).
    turns: Turns<Handoff, SemState>,
    sequence: OnceCell<()>,
    keepalive_started: OnceLock<()>,
}

impl PostgresBackend {
    /// A provider with these options. Connects lazily, on the first acquire.
    pub fn new(opts: PgOptions) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                pool: Pool::new(opts)?,
                core: ProviderCore::new(BACKEND),
                turns: Turns::default(),
                sequence: OnceCell::new(),
                keepalive_started: OnceLock::new(),
            }),
        })
    }

    /// Server connections open now.
    pub fn connections(&self) -> usize {
        self.inner.pool.connections()
    }

    /// Of those, the ones whose socket is read on the host's event loop.
    pub fn connections_on_loop(&self) -> usize {
        self.inner.pool.on_loop()
    }
}

impl Backend for PostgresBackend {
    fn core(&self) -> &dyn ProviderState {
        &self.inner.core
    }

    fn observe(&self, observer: distlock_core::Observer) {
        let _ = self.inner.pool.observer.set(observer);
    }

    fn begin(&self, req: AcquireRequest) -> Result<Acquiring> {
        let inner = self.inner.clone();
        let scope = inner.pool.opts.scope;
        match req.kind {
            LockKind::Mutex | LockKind::Read | LockKind::Write => {
                let shared = req.kind == LockKind::Read;
                let admitted = inner.turns.lock(&req, Handoff::default);
                let sql = Sql {
                    key: AdvisoryKey::from_name(&req.name),
                    shared,
                    scope,
                };
                Ok(Box::pin(mutex::acquire(inner, req, admitted, sql)))
            }
            LockKind::Semaphore { .. } => {
                let admitted = inner.turns.semaphore(&req, BACKEND, SemState::default)?;
                Ok(Box::pin(semaphore::acquire(inner, req, admitted)))
            }
        }
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move {
            distlock_core::validate_name(&name)?;
            let (keys, max) = match kind {
                LockKind::Semaphore { max_count, .. } => (
                    (0..max_count)
                        .map(|i| AdvisoryKey::Bigint(sql::semaphore_key(&name, i)))
                        .collect(),
                    Some(max_count),
                ),
                _ => (vec![AdvisoryKey::from_name(&name)], None),
            };
            let wanted = keys
                .iter()
                .map(|k| {
                    let (class, obj, sub) = k.pg_locks_columns();
                    format!(
                        "(classid::bigint = {class} AND objid::bigint = {obj} AND objsubid = {sub})"
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND ({wanted})"
            );
            let usage = inner.attempt_usage();
            let op = inner.pool.opts.op_timeout;
            let ask = async {
                let server = inner.pool.opts.server();
                let s = inner
                    .pool
                    .session(usage)
                    .await
                    .map_err(|f| f.into_error(BACKEND, Some(&server)))?;
                let rows = s.query(&sql).await;
                if usage == Usage::Own {
                    s.unbusy();
                }
                rows.map_err(|e| {
                    let why = describe(&e);
                    let message = format!("inspecting {name:?} on {server}: {why}");
                    Error::backend(BACKEND, message, fault::cause_of(&server, &why))
                })
            };
            let rows = tokio::time::timeout(op, ask)
                .await
                .map_err(|_| Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "inspecting {name:?}: no answer from {} within {} ms",
                        inner.pool.opts.server(),
                        op.as_millis()
                    ),
                    cause: Default::default(),
                })??;
            let holders: u32 = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Ok(LockInfo {
                held: max.map_or(holders > 0, |m| holders >= m),
                // pg_locks shows sessions, and one session may hold a shared lock for several
                // readers: only permits (one key each) can be counted.
                holders: max.map(|_| holders),
                lease_remaining: None,
                // Tokens come from one sequence for every name: no per-name token to report.
                fencing_token: None,
            })
        })
    }

    fn attach(&self, reactor: Arc<dyn distlock_core::reactor::Reactor>) {
        self.inner.pool.attach(reactor);
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let held = inner.core.close("the lock provider was closed");
            inner
                .pool
                .closing
                .store(true, std::sync::atomic::Ordering::Release);
            let releases = held.into_iter().map(|h| h.take_and_unlock());
            let all = async {
                for r in releases {
                    r.await;
                }
            };
            // Unlocks are one pipelined round trip each; a dead server must not hang close().
            let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
            for s in inner.pool.sessions() {
                s.kill(String::from("the lock provider was closed"));
            }
            Ok(())
        })
    }
}

impl Inner {
    fn closed_error(&self, req: &AcquireRequest) -> Error {
        Error::Closed {
            backend: BACKEND,
            detail: format!("; stopped acquiring {}", req.target(BACKEND)),
        }
    }

    /// [`POLICY`] with this provider's bound for a try.
    fn policy(&self) -> Policy {
        Policy {
            try_budget: self.pool.opts.op_timeout,
            ..POLICY
        }
    }

    /// What an acquire that ended without a grant returns.
    fn finish<T>(&self, req: &AcquireRequest, end: End) -> Result<Option<T>> {
        end.into_result(req, BACKEND, &self.pool.opts.server())
    }

    fn start_keepalive(self: &Arc<Self>) {
        if let Some(period) = self.pool.opts.keepalive
            && self.keepalive_started.set(()).is_ok()
        {
            tokio::spawn(
                self.pool
                    .clone()
                    .keepalive(period, self.core.closed().clone()),
            );
        }
    }

    /// Creates the fencing sequence once per provider if it is missing, within `op_timeout`.
    async fn ensure_sequence(&self, target: &str) -> std::result::Result<(), Fault> {
        if self.sequence.initialized() {
            return Ok(());
        }
        let init = self.sequence.get_or_try_init(|| async {
            let seq = &self.pool.opts.fencing_sequence;
            let s = self.pool.session(pool::SHARED).await?;
            let created = s
                .query(&format!("CREATE SEQUENCE IF NOT EXISTS {seq}"))
                .await;
            let Err(create_err) = created else {
                return Ok(());
            };
            if fault::is_transient(&create_err) {
                return Err(self.fault(target, "creating the fencing sequence for", &create_err));
            }
            // Without CREATE on the schema, or when another process created it at the same
            // moment: fine if it exists now.
            let exists = s
                .query(&format!("SELECT to_regclass('{seq}') IS NOT NULL"))
                .await
                .map_err(|e| self.fault(target, "checking the fencing sequence for", &e))?;
            if sql::first_cell(&exists).as_deref() == Some("t") {
                return Ok(());
            }
            Err(fault::fault(
                format!(
                    "cannot create the fencing-token sequence {seq} on {} ({}); create it once \
                     as a privileged user (CREATE SEQUENCE {seq}; GRANT USAGE ON SEQUENCE {seq} \
                     TO <user>) or point the fencingSequence option at one you can use",
                    self.pool.opts.server(),
                    describe(&create_err)
                ),
                false,
            ))
        });
        let op = self.pool.opts.op_timeout;
        match tokio::time::timeout(op, init).await {
            Ok(done) => done.map(drop),
            Err(_) => Err(Fault::transient(format!(
                "preparing the fencing sequence for {target}: no answer from {} within {} ms",
                self.pool.opts.server(),
                op.as_millis()
            ))),
        }
    }
}

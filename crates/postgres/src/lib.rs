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
//! - Waiters ride out transient faults (the session terminated, the connection reset, the server
//!   restarting or refusing connections): they reconnect and queue again, pausing 50 ms, doubling
//!   up to 1 s, for as long as their timeout lasts (a waiter without timeout: until granted,
//!   cancelled or closed). If the timeout ends while the server is still unreachable, the error
//!   is a backend error that names the cause. Not retried: a try (`timeout` 0), refusals a
//!   reconnect cannot cure (authentication, permissions), and a server this provider never
//!   reached (taken for a configuration error). A waiter without timeout behind a partition that
//!   keeps its socket alive waits until the network heals.
//!
//! [`FairQueue`]: distlock_core::FairQueue

mod config;
pub mod key;
mod machine;
mod pool;
mod socket;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use distlock_core::HeldSet;
use distlock_core::queue::Entry;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Error, Held, HeldLock,
    Interrupted, LockInfo, LockKind, LostSignal, Registry, Result, SHARED_CAPACITY, Ticket,
    Timeout, Waited, race,
};
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;

pub use config::{PgOptions, Scope, Verify};
pub use key::AdvisoryKey;
use machine::{Miss, Retry};
use pool::{Fault, Param, Pool, Query, Session, Stmt, Use, describe};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "postgres";

/// SQLSTATE of `lock_timeout` expiring.
const LOCK_NOT_AVAILABLE: &str = "55P03";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Short critical sections of plain field updates: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A lock provider on one PostgreSQL database. See the crate documentation for the time bounds
/// of every call.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    closed: CancellationToken,
    /// Mutexes and reader-writer locks of one name share a queue (a mutex is the writer side).
    locks: Registry<String, Handoff>,
    semaphores: Registry<(String, u32), SemState>,
    held: HeldSet<PgHeld>,
    sequence: OnceCell<()>,
    keepalive_started: OnceLock<()>,
}

/// Where the last release of a name in this process queued its unlock, for the next caller's
/// attempt (see [`PgHeld::take_and_unlock`]).
#[derive(Default)]
struct Handoff {
    session: Mutex<Option<Weak<Session>>>,
}

#[derive(Default)]
struct SemState {
    /// Permit slots this process holds (the server would let one session take a key twice).
    taken: Mutex<HashSet<u32>>,
    /// Held from choosing the free slots of an attempt until the slots it won are in `taken`:
    /// two callers of this process whose turns overlap (a semaphore admits several) would
    /// otherwise try the same slots, and on a shared session both would get them.
    gate: Arc<tokio::sync::Mutex<()>>,
    freed: Notify,
}

impl PostgresBackend {
    /// A provider with these options. Connects lazily, on the first acquire.
    pub fn new(opts: PgOptions) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                pool: Pool::new(opts)?,
                closed: CancellationToken::new(),
                locks: Registry::default(),
                semaphores: Registry::default(),
                held: HeldSet::default(),
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

    /// Locks held through this provider now.
    pub fn held_count(&self) -> usize {
        self.inner.held.len()
    }
}

/// The statement pieces for one key and mode.
#[derive(Clone, Copy)]
struct Sql {
    key: AdvisoryKey,
    shared: bool,
    scope: Scope,
}

impl Sql {
    /// The key as parameters: the argument list (`$1::int8`, or `$1::int4, $2::int4`) and the
    /// values.
    fn key(self) -> (&'static str, Vec<Param>) {
        match self.key {
            AdvisoryKey::Bigint(k) => ("$1::int8", vec![Param::Int8(k)]),
            AdvisoryKey::Pair(a, b) => ("$1::int4, $2::int4", vec![Param::Int4(a), Param::Int4(b)]),
        }
    }

    fn func(self, try_: bool) -> String {
        format!(
            "pg{}_advisory{}_lock{}({})",
            if try_ { "_try" } else { "" },
            if self.scope == Scope::Transaction {
                "_xact"
            } else {
                ""
            },
            if self.shared { "_shared" } else { "" },
            self.key().0
        )
    }

    /// The attempt that never waits: one row, the fencing token if granted, else NULL.
    fn attempt(self, seq: &str) -> Stmt {
        Stmt {
            text: format!(
                "SELECT CASE WHEN {} THEN nextval('{seq}') END",
                self.func(true)
            ),
            params: self.key().1,
            begin: self.scope == Scope::Transaction,
        }
    }

    /// The blocking wait: one row, the fencing token in the second column. With `timeout`, the
    /// server gives up after it (SQLSTATE 55P03): `lock_timeout` is set for the transaction,
    /// like `SET LOCAL`, by `set_config` in a subquery that runs before the lock is asked for
    /// (`OFFSET 0` keeps the planner from merging it away). Its value is the last parameter,
    /// bound by the caller.
    fn wait(self, seq: &str, timeout: bool) -> Stmt {
        let (_, params) = self.key();
        let text = if timeout {
            format!(
                "SELECT {}, nextval('{seq}') FROM (SELECT set_config('lock_timeout', ${}::text, \
                 true) OFFSET 0) AS t",
                self.func(false),
                params.len() + 1
            )
        } else {
            format!("SELECT {}, nextval('{seq}')", self.func(false))
        };
        Stmt {
            text,
            params,
            begin: self.scope == Scope::Transaction,
        }
    }

    fn unlock(self) -> Stmt {
        match self.scope {
            Scope::Session => {
                let (args, params) = self.key();
                let shared = if self.shared { "_shared" } else { "" };
                Stmt::new(format!("SELECT pg_advisory_unlock{shared}({args})"), params)
            }
            Scope::Transaction => rollback(),
        }
    }
}

fn rollback() -> Stmt {
    Stmt::new("ROLLBACK", Vec::new())
}

/// What cleans up a session a wait was interrupted on: whatever it may have been granted.
fn reset(scope: Scope) -> Stmt {
    match scope {
        Scope::Session => Stmt::new("SELECT pg_advisory_unlock_all()", Vec::new()),
        Scope::Transaction => rollback(),
    }
}

/// Unlocks the permit `slots` of semaphore `name` (session scope).
fn slots_unlock(name: &str, slots: &[u32]) -> Stmt {
    Stmt::new(
        "SELECT pg_advisory_unlock(k) FROM unnest($1::int8[]) AS k",
        vec![Param::Int8Array(
            slots.iter().map(|&i| semaphore_key(name, i)).collect(),
        )],
    )
}

/// Cell `i` of the first row as a bigint: `None` when there is no row or the cell is NULL.
fn bigint_cell(rows: &Rows, i: usize) -> Result<Option<i64>> {
    match rows.first() {
        None => Ok(None),
        Some(row) => row.try_get(i).map_err(|e| Error::Backend {
            backend: BACKEND,
            message: format!("unexpected answer from the server: {}", describe(&e)),
            cause: Default::default(),
        }),
    }
}

fn parse_token(value: Option<i64>) -> Result<u64> {
    value
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| Error::Backend {
            backend: BACKEND,
            message: format!(
                "unexpected fencing token {:?} from the server",
                value.map(|t| t.to_string())
            ),
            cause: Default::default(),
        })
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn observe(&self, observer: distlock_core::Observer) {
        let _ = self.inner.pool.observer.set(observer);
    }

    fn acquire(&self, req: AcquireRequest) -> Result<Acquiring> {
        distlock_core::validate_name(&req.name)?;
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed {
                backend: BACKEND,
                detail: format!("; cannot acquire {}", req.target(BACKEND)),
            });
        }
        let inner = self.inner.clone();
        let scope = inner.pool.opts.scope;
        match req.kind {
            LockKind::Mutex | LockKind::Read | LockKind::Write => {
                let shared = req.kind == LockKind::Read;
                let entry = inner
                    .locks
                    .entry(&req.name, SHARED_CAPACITY, Handoff::default);
                let ticket = entry
                    .queue
                    .enqueue(if shared { 1 } else { SHARED_CAPACITY });
                let sql = Sql {
                    key: AdvisoryKey::from_name(&req.name),
                    shared,
                    scope,
                };
                Ok(Box::pin(async move {
                    inner.acquire_key(req, ticket, entry, sql).await
                }))
            }
            LockKind::Semaphore { max_count, permits } => {
                let entry = inner.semaphores.entry(
                    &(req.name.clone(), max_count),
                    u64::from(max_count),
                    SemState::default,
                );
                let ticket = entry.queue.enqueue(u64::from(permits));
                Ok(Box::pin(async move {
                    inner
                        .acquire_slots(req, ticket, entry, max_count, permits)
                        .await
                }))
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
                        .map(|i| AdvisoryKey::Bigint(semaphore_key(&name, i)))
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
                    .map_err(|f| f.into_error(&server))?;
                let rows = s.query(&sql).await;
                if usage == Use::Busy {
                    s.unbusy();
                }
                rows.map_err(|e| {
                    let why = describe(&e);
                    let message = format!("inspecting {name:?} on {server}: {why}");
                    Error::backend(BACKEND, message, crate::pool::cause_of(&server, &why))
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

    fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    fn attach(&self, reactor: Arc<dyn distlock_core::reactor::Reactor>) {
        self.inner.pool.attach(reactor);
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.closed.cancel();
            inner
                .pool
                .closing
                .store(true, std::sync::atomic::Ordering::Release);
            let releases = inner.held.drain().into_iter().map(|h| {
                h.lost.fire("the lock provider was closed");
                h.take_and_unlock()
            });
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

/// A statement in flight that owns what it needs, so it can outlive the caller that sent it
/// (the caller's deadline passed; the answer still has to be looked at and undone).
type Rows = Vec<tokio_postgres::Row>;

fn send(s: &Arc<Session>, stmt: Stmt) -> Query {
    let s = s.clone();
    Box::pin(async move { s.execute(&stmt).await })
}

/// What undoes a grant an abandoned attempt may have received: from its rows, the statement to
/// run on its session (session scope; in transaction scope the rollback does it).
type Undo = Box<dyn FnOnce(&Rows) -> Option<Stmt> + Send>;

/// The first reply cell of the first row (simple protocol).
fn first_cell(rows: &[Vec<Option<String>>]) -> Option<String> {
    rows.first().and_then(|r| r.first()).cloned().flatten()
}

/// How long a cancelled or closed wait waits for the server to confirm the cancel before it
/// settles anyway (the cleanup then goes on in the background).
const CANCEL_SETTLE: Duration = Duration::from_secs(1);
impl Inner {
    fn closed_error(&self, req: &AcquireRequest) -> Error {
        Error::Closed {
            backend: BACKEND,
            detail: format!("; stopped acquiring {}", req.target(BACKEND)),
        }
    }

    fn fault(&self, req: &AcquireRequest, what: &str, e: &tokio_postgres::Error) -> Fault {
        Fault {
            message: format!(
                "{what} {} on {}: {}",
                req.target(BACKEND),
                self.pool.opts.server(),
                describe(e)
            ),
            transient: pool::is_transient(e),
        }
    }

    fn start_keepalive(self: &Arc<Self>) {
        if let Some(period) = self.pool.opts.keepalive
            && self.keepalive_started.set(()).is_ok()
        {
            tokio::spawn(self.pool.clone().keepalive(period, self.closed.clone()));
        }
    }

    /// What an acquire returns for `miss`, once it will not try again.
    fn finish(&self, req: &AcquireRequest, miss: Miss, retry: &Retry) -> Result<Option<Held>> {
        retry.outcome(miss, req, &self.pool.opts.server())
    }

    /// After a round missed: `None` to go again (a transient fault, time left: pause first),
    /// or the acquire's result.
    async fn again(
        &self,
        req: &AcquireRequest,
        miss: Miss,
        retry: &mut Retry,
        deadline: Option<Instant>,
    ) -> Option<Result<Option<Held>>> {
        let Some(pause) = retry.again(&miss, req.timeout == Timeout::Zero) else {
            return Some(self.finish(req, miss, retry));
        };
        if let Miss::Fault(f) = &miss {
            tracing::info!(backend = BACKEND, name = %req.name, cause = %f.message, pause_ms = pause.as_millis() as u64, "reconnecting");
        }
        let pause = tokio::time::sleep(pause);
        match race(pause, deadline, req.cancel.as_ref(), &self.closed)
            .await
            .done()
        {
            Ok(()) => None,
            Err(why) => Some(self.finish(req, Miss::Stop(why), retry)),
        }
    }

    /// A session, raced against `until` and the caller's cancel and the provider's close.
    async fn session(
        &self,
        usage: Use,
        req: &AcquireRequest,
        until: Option<Instant>,
    ) -> std::result::Result<Arc<Session>, Miss> {
        match race(
            self.pool.session(usage),
            until,
            req.cancel.as_ref(),
            &self.closed,
        )
        .await
        .done()
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(f)) => Err(Miss::Fault(f)),
            // Out of time with no connection at all: the server is slow or unreachable, which
            // is not the same as the lock being busy.
            Err(Interrupted::TimedOut) if self.pool.connections() == 0 => {
                Err(Miss::Silent(format!(
                    "no connection to {} could be opened within the timeout of {}",
                    self.pool.opts.server(),
                    req.target(BACKEND)
                )))
            }
            Err(why) => Err(Miss::Stop(why)),
        }
    }

    /// Creates the fencing sequence once per provider if it is missing.
    async fn ensure_sequence(
        &self,
        req: &AcquireRequest,
        until: Option<Instant>,
    ) -> std::result::Result<(), Miss> {
        if self.sequence.initialized() {
            return Ok(());
        }
        let init = self.sequence.get_or_try_init(|| async {
            let seq = &self.pool.opts.fencing_sequence;
            let s = self.pool.session(Use::Shared).await?;
            let created = s
                .query(&format!("CREATE SEQUENCE IF NOT EXISTS {seq}"))
                .await;
            let Err(create_err) = created else {
                return Ok(());
            };
            if pool::is_transient(&create_err) {
                return Err(self.fault(req, "creating the fencing sequence for", &create_err));
            }
            // Without CREATE on the schema, or when another process created it at the same
            // moment: fine if it exists now.
            let exists = s
                .query(&format!("SELECT to_regclass('{seq}') IS NOT NULL"))
                .await
                .map_err(|e| self.fault(req, "checking the fencing sequence for", &e))?;
            if first_cell(&exists).as_deref() == Some("t") {
                return Ok(());
            }
            Err(Fault {
                message: format!(
                    "cannot create the fencing-token sequence {seq} on {} ({}); create it once \
                     as a privileged user (CREATE SEQUENCE {seq}; GRANT USAGE ON SEQUENCE {seq} \
                     TO <user>) or point the fencingSequence option at one you can use",
                    self.pool.opts.server(),
                    describe(&create_err)
                ),
                transient: false,
            })
        });
        let op = self.pool.opts.op_timeout;
        let init = tokio::time::timeout(op, init);
        match race(init, until, req.cancel.as_ref(), &self.closed).await {
            Waited::Done(Ok(Ok(()))) => Ok(()),
            Waited::Done(Ok(Err(f))) => Err(Miss::Fault(f)),
            Waited::Done(Err(_)) => Err(Miss::Fault(Fault {
                message: format!(
                    "preparing the fencing sequence for {}: no answer from {} within {} ms",
                    req.target(BACKEND),
                    self.pool.opts.server(),
                    op.as_millis()
                ),
                transient: self.pool.ever_connected(),
            })),
            Waited::TimedOut => Err(Miss::Silent(format!(
                "no answer from {} within the timeout of {} (preparing the fencing sequence)",
                self.pool.opts.server(),
                req.target(BACKEND)
            ))),
            Waited::Cancelled => Err(Miss::Stop(Interrupted::Cancelled)),
            Waited::Closed => Err(Miss::Stop(Interrupted::Closed)),
        }
    }

    /// Waits for this caller's turn in the process.
    async fn take_turn(
        self: &Arc<Self>,
        req: &AcquireRequest,
        ticket: &mut Ticket,
        deadline: Option<Instant>,
    ) -> std::result::Result<(), Interrupted> {
        race(
            ticket.granted(),
            deadline,
            req.cancel.as_ref(),
            &self.closed,
        )
        .await
        .done()?;
        self.start_keepalive();
        Ok(())
    }

    /// Which session an attempt that never waits runs on: a shared one in session scope
    /// (pipelined with other callers), one of its own in transaction scope.
    fn attempt_usage(&self) -> Use {
        match self.pool.opts.scope {
            Scope::Session => Use::Shared,
            Scope::Transaction => Use::Busy,
        }
    }

    /// Runs one non-waiting attempt `stmt` by `until`; returns its session and rows. If `until`
    /// passes (or the caller cancels) first, the answer is awaited in the background and what
    /// it granted is undone with `undo`.
    async fn attempt(
        self: &Arc<Self>,
        req: &AcquireRequest,
        start: Instant,
        until: Option<Instant>,
        stmt: Stmt,
        undo: Undo,
        prefer: Option<Arc<Session>>,
    ) -> std::result::Result<(Arc<Session>, Rows), Miss> {
        let usage = self.attempt_usage();
        let s = match prefer.and_then(|s| pool::claim(&s, usage)) {
            Some(s) => s,
            None => self.session(usage, req, until).await?,
        };
        let mut q = send(&s, stmt);
        // A statement that never waits gets op_timeout for its answer, also when the caller's
        // deadline is further away: past that, its session is taken for cut off.
        let op = self.pool.opts.op_timeout;
        let op_end = Instant::now() + op;
        let by_deadline = until.is_some_and(|u| u <= op_end);
        let bound = if by_deadline { until } else { Some(op_end) };
        match race(&mut q, bound, req.cancel.as_ref(), &self.closed).await {
            Waited::Done(Ok(rows)) => Ok((s, rows)),
            Waited::TimedOut if !by_deadline => match s.within(Duration::ZERO, &mut q).await {
                // Answered after all: the timer fired while JavaScript blocked the loop.
                Some(Ok(rows)) => Ok((s, rows)),
                Some(Err(e)) => {
                    let f = self.fault(req, "trying", &e);
                    self.end_attempt(&s).await;
                    Err(Miss::Fault(f))
                }
                None => {
                    let message = format!(
                        "trying {} on {}: no answer within {} ms",
                        req.target(BACKEND),
                        self.pool.opts.server(),
                        op.as_millis()
                    );
                    // The server frees whatever the session held once it notices it closed.
                    s.kill(message.clone());
                    Err(Miss::Fault(Fault {
                        message,
                        transient: true,
                    }))
                }
            },
            Waited::Done(Err(e)) => {
                let f = self.fault(req, "trying", &e);
                self.end_attempt(&s).await;
                Err(Miss::Fault(f))
            }
            Waited::TimedOut => {
                let heard = s.heard_since(start);
                self.abandon_attempt(s, q, undo);
                if heard {
                    Err(Miss::Stop(Interrupted::TimedOut))
                } else {
                    Err(Miss::Silent(format!(
                        "no answer from {} within the timeout of {}",
                        self.pool.opts.server(),
                        req.target(BACKEND)
                    )))
                }
            }
            Waited::Cancelled => {
                self.abandon_attempt(s, q, undo);
                Err(Miss::Stop(Interrupted::Cancelled))
            }
            Waited::Closed => {
                self.abandon_attempt(s, q, undo);
                Err(Miss::Stop(Interrupted::Closed))
            }
        }
    }

    /// Looks at the answer of an attempt whose caller stopped waiting, in the background, and
    /// undoes its grant. A session that does not answer within `op_timeout` is closed.
    fn abandon_attempt(self: &Arc<Self>, s: Arc<Session>, q: Query, undo: Undo) {
        let inner = self.clone();
        tokio::spawn(async move {
            let op = inner.pool.opts.op_timeout;
            let mut q = q;
            match s.within(op, &mut q).await {
                Some(Ok(rows)) => {
                    if inner.pool.opts.scope == Scope::Session
                        && let Some(stmt) = undo(&rows)
                    {
                        inner
                            .bounded(&s, &stmt, "undoing a grant its caller gave up on")
                            .await;
                    }
                }
                Some(Err(_)) => {}
                None => {
                    s.kill(format!(
                        "an attempt got no answer within {} ms",
                        op.as_millis()
                    ));
                    return;
                }
            }
            inner.end_attempt(&s).await;
        });
    }

    /// Runs `stmt` on `s` within `op_timeout`; a session that fails or does not answer is
    /// closed (the server then frees what it held).
    async fn bounded(&self, s: &Arc<Session>, stmt: &Stmt, what: &str) {
        let op = self.pool.opts.op_timeout;
        let mut q = std::pin::pin!(s.execute(stmt));
        match s.within(op, &mut q).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => s.kill(format!("{what} failed: {}", describe(&e))),
            None => s.kill(format!("{what} got no answer within {} ms", op.as_millis())),
        }
    }

    /// Hands back the session of an attempt that was not granted (a no-op for a shared one).
    async fn end_attempt(&self, s: &Arc<Session>) {
        if self.attempt_usage() == Use::Busy {
            self.clean_after(s, self.pool.opts.scope).await;
        }
    }

    async fn acquire_key(
        self: Arc<Self>,
        req: AcquireRequest,
        mut ticket: Ticket,
        entry: Arc<Entry<Handoff>>,
        sql: Sql,
    ) -> Result<Option<Held>> {
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        if let Err(why) = self.take_turn(&req, &mut ticket, deadline).await {
            return why.into_outcome(&req, BACKEND);
        }
        let mut retry = Retry::new();
        loop {
            let round = self.key_round(&req, sql, &entry.state, start, deadline, &mut retry);
            let miss = match round.await {
                Ok(Some((s, token))) if !s.is_dead() => {
                    let turn = Turn {
                        ticket,
                        keep: Keep::Entry(entry),
                    };
                    return self.grant(&req, s, sql.unlock(), token, turn, start);
                }
                Ok(Some((s, _))) => self.ended_at_grant(&req, &s),
                Ok(None) => return Ok(None),
                Err(miss) => miss,
            };
            if let Some(done) = self.again(&req, miss, &mut retry, deadline).await {
                return done;
            }
        }
    }

    /// A grant whose session ended before the grant could be handed out (it reached this
    /// thread late): the server freed the lock with the session, maybe to someone else already,
    /// so it is not handed out as held; the caller tries again as after any broken session.
    fn ended_at_grant(&self, req: &AcquireRequest, s: &Session) -> Miss {
        tracing::debug!(
            backend = BACKEND,
            session = s.id,
            "a grant's session ended before the grant was handed out"
        );
        Miss::Fault(Fault {
            message: format!(
                "the session that was granted {} ended before the grant was handed out",
                req.target(BACKEND)
            ),
            transient: true,
        })
    }

    /// The end of a try: `timeout` 0 has no time to wait for the lock, but `op_timeout` for
    /// the answer.
    fn until(
        &self,
        req: &AcquireRequest,
        start: Instant,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        match req.timeout {
            Timeout::Zero => Some(start + self.pool.opts.op_timeout),
            _ => deadline,
        }
    }

    /// One round of a mutex or reader-writer acquire: a try on a shared session, then a wait
    /// on a session of its own. `Ok(None)` is "busy" (a try) or `lock_timeout`.
    async fn key_round(
        self: &Arc<Self>,
        req: &AcquireRequest,
        sql: Sql,
        handoff: &Handoff,
        start: Instant,
        deadline: Option<Instant>,
        retry: &mut Retry,
    ) -> std::result::Result<Option<(Arc<Session>, u64)>, Miss> {
        let until = self.until(req, start, deadline);
        self.ensure_sequence(req, until).await?;
        let try_stmt = sql.attempt(&self.pool.opts.fencing_sequence);
        loop {
            // Anything but a NULL may be a grant.
            let undo: Undo = Box::new(move |rows| match bigint_cell(rows, 0) {
                Ok(None) => None,
                _ => Some(sql.unlock()),
            });
            // Right behind the release that let this caller in, on its session if it can.
            let prefer = lock(&handoff.session).take().and_then(|s| s.upgrade());
            let (s, rows) = self
                .attempt(req, start, until, try_stmt.clone(), undo, prefer)
                .await?;
            retry.answered(); // the server answers again
            match bigint_cell(&rows, 0).and_then(|t| t.map(|t| parse_token(Some(t))).transpose()) {
                Ok(Some(token)) => return Ok(Some((s, token))),
                Ok(None) => {}
                Err(e) => {
                    s.kill(String::from("the server answered an attempt unexpectedly"));
                    return Err(Miss::Fault(Fault {
                        message: e.to_string(),
                        transient: false,
                    }));
                }
            }
            self.end_attempt(&s).await;
            if req.timeout == Timeout::Zero {
                return Ok(None);
            }
            // Block on a session that holds nothing. If none can be had (every session holds
            // locks and the pool is full), try again whenever a session frees up, or every
            // 100 ms, until the deadline.
            let wait_for_session = async {
                tokio::select! {
                    s = self.pool.session(Use::Busy) => Some(s),
                    _ = tokio::time::sleep(Duration::from_millis(100)), if sql.scope == Scope::Session => None,
                }
            };
            let s = match race(
                wait_for_session,
                deadline,
                req.cancel.as_ref(),
                &self.closed,
            )
            .await
            .done()
            {
                Ok(Some(Ok(s))) => s,
                Ok(Some(Err(f))) => return Err(Miss::Fault(f)),
                Ok(None) => continue,
                Err(why) => return Err(Miss::Stop(why)),
            };
            return self
                .wait_on(&s, req, sql, deadline)
                .await
                .map(|t| t.map(|t| (s, t)));
        }
    }

    /// Runs the blocking statement on a busy session; returns the fencing token, or `None` when
    /// `lock_timeout` ran out. Settles at the deadline whatever the server does: the statement
    /// is then finished in the background (a grant that raced the deadline is undone). On
    /// cancel or close, cancels the statement on the server (waiting up to [`CANCEL_SETTLE`]
    /// for that) and undoes a grant that raced it.
    async fn wait_on(
        self: &Arc<Self>,
        s: &Arc<Session>,
        req: &AcquireRequest,
        sql: Sql,
        deadline: Option<Instant>,
    ) -> std::result::Result<Option<u64>, Miss> {
        // The server gives up by itself too, so a wait whose caller is gone (or cut off) never
        // turns into a grant long after the deadline.
        let mut stmt = sql.wait(&self.pool.opts.fencing_sequence, deadline.is_some());
        let session = s.clone();
        let mut q: Query = Box::pin(async move {
            // Prepared first (once per session), so that lock_timeout is measured from when the
            // wait is sent, not from before a prepare's round trip.
            session.prepare(&stmt).await?;
            if let Some(d) = deadline {
                // Rounded up: the server must not give up before the caller's deadline.
                let left = d.saturating_duration_since(Instant::now());
                let ms = left.as_micros().div_ceil(1000).max(1);
                stmt.params.push(Param::Text(format!("{ms}ms")));
            }
            session.execute(&stmt).await
        });
        let why = match race(&mut q, deadline, req.cancel.as_ref(), &self.closed).await {
            Waited::Done(Ok(rows)) => {
                return match bigint_cell(&rows, 1).and_then(parse_token) {
                    Ok(token) => Ok(Some(token)),
                    Err(e) => {
                        self.spawn_clean(s);
                        Err(Miss::Fault(Fault {
                            message: e.to_string(),
                            transient: false,
                        }))
                    }
                };
            }
            Waited::Done(Err(e)) if e.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) => {
                // A grant can race lock_timeout: the cleanup drops it.
                self.spawn_clean(s);
                return Ok(None);
            }
            Waited::Done(Err(e)) => {
                let f = self.fault(req, "waiting for", &e);
                self.spawn_clean(s);
                return Err(Miss::Fault(f));
            }
            Waited::TimedOut => {
                tokio::spawn(self.clone().finish_wait(s.clone(), q, false));
                return Err(Miss::Stop(Interrupted::TimedOut));
            }
            Waited::Cancelled => Interrupted::Cancelled,
            Waited::Closed => Interrupted::Closed,
        };
        let mut cleanup = Box::pin(self.clone().finish_wait(s.clone(), q, true));
        if tokio::time::timeout(CANCEL_SETTLE, &mut cleanup)
            .await
            .is_err()
        {
            tokio::spawn(cleanup);
        }
        Err(Miss::Stop(why))
    }

    /// Ends a wait whose caller stopped waiting: lets the statement end (lock_timeout) or
    /// cancels it, then drops whatever the session was granted and hands it back. Each step is
    /// bounded by `op_timeout`; a session that does not answer is closed.
    async fn finish_wait(self: Arc<Self>, s: Arc<Session>, mut q: Query, cancel_first: bool) {
        let op = self.pool.opts.op_timeout;
        if !cancel_first && tokio::time::timeout(op, &mut q).await.is_ok() {
            self.clean_after(&s, self.pool.opts.scope).await;
            return;
        }
        let _ = tokio::time::timeout(op, s.cancel_running(self.pool.tls.clone())).await;
        if s.within(op, &mut q).await.is_none() {
            s.kill(format!(
                "an interrupted wait did not end within {} ms",
                op.as_millis()
            ));
            return;
        }
        self.clean_after(&s, self.pool.opts.scope).await;
    }

    fn spawn_clean(self: &Arc<Self>, s: &Arc<Session>) {
        let (inner, s) = (self.clone(), s.clone());
        tokio::spawn(async move { inner.clean_after(&s, inner.pool.opts.scope).await });
    }

    /// Drops anything a busy session may hold and hands it back; a session that cannot be
    /// cleaned within `op_timeout` is closed (the server then frees what it held).
    async fn clean_after(&self, s: &Arc<Session>, scope: Scope) {
        if s.is_dead() {
            return;
        }
        let op = self.pool.opts.op_timeout;
        for _ in 0..3 {
            let stmt = reset(scope);
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

    async fn acquire_slots(
        self: Arc<Self>,
        req: AcquireRequest,
        mut ticket: Ticket,
        entry: Arc<Entry<SemState>>,
        max_count: u32,
        permits: u32,
    ) -> Result<Option<Held>> {
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        if let Err(why) = self.take_turn(&req, &mut ticket, deadline).await {
            return why.into_outcome(&req, BACKEND);
        }
        let mut retry = Retry::new();
        loop {
            let miss = match self
                .slot_round(
                    &req,
                    &entry,
                    (max_count, permits),
                    start,
                    deadline,
                    &mut retry,
                )
                .await
            {
                Ok(Some((s, _, _, _gate))) if s.is_dead() => self.ended_at_grant(&req, &s),
                Ok(Some((s, slots, token, gate))) => {
                    lock(&entry.state.taken).extend(slots.iter().copied());
                    drop(gate);
                    let unlock = match self.pool.opts.scope {
                        Scope::Session => slots_unlock(&req.name, &slots),
                        Scope::Transaction => rollback(),
                    };
                    let turn = Turn {
                        ticket,
                        keep: Keep::Slots(entry, slots),
                    };
                    return self.grant(&req, s, unlock, token, turn, start);
                }
                Ok(None) => return Ok(None),
                Err(miss) => miss,
            };
            if let Some(done) = self.again(&req, miss, &mut retry, deadline).await {
                return done;
            }
        }
    }

    /// One round of a semaphore acquire: non-waiting attempts on the free permits, polled
    /// (woken at once by a permit freed in this process) until the deadline. An attempt takes
    /// `permits` of them in one statement, all or none: a statement that locked fewer unlocks
    /// them again before it answers (session scope), or its transaction is rolled back.
    async fn slot_round(
        self: &Arc<Self>,
        req: &AcquireRequest,
        entry: &Arc<Entry<SemState>>,
        (max_count, permits): (u32, u32),
        start: Instant,
        deadline: Option<Instant>,
        retry: &mut Retry,
    ) -> std::result::Result<Option<SlotGrant>, Miss> {
        let until = self.until(req, start, deadline);
        self.ensure_sequence(req, until).await?;
        let scope = self.pool.opts.scope;
        let seq = &self.pool.opts.fencing_sequence;
        let mut backoff = Duration::from_millis(2);
        loop {
            let freed = entry.state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let gate = entry.state.gate.clone().lock_owned();
            let gate = race(gate, until, req.cancel.as_ref(), &self.closed)
                .await
                .done()
                .map_err(Miss::Stop)?;
            let free: Vec<u32> = {
                let taken = lock(&entry.state.taken);
                (0..max_count).filter(|i| !taken.contains(i)).collect()
            };
            let keys = free.iter().map(|i| semaphore_key(&req.name, *i)).collect();
            let slots = free.iter().map(|i| i64::from(*i)).collect();
            // The LIMIT stops the tries once `permits` are locked; with fewer, the outer query
            // gives them back (CASE fixes the order: nothing is unlocked when all were taken).
            let (xact, give_back) = match scope {
                Scope::Transaction => ("_xact", "false"),
                Scope::Session => ("", "NOT pg_advisory_unlock(got.k)"),
            };
            let stmt = Stmt {
                text: format!(
                    "WITH got AS MATERIALIZED (SELECT t.i, t.k \
                     FROM unnest($1::int8[], $2::int8[]) AS t(k, i) \
                     WHERE pg_try_advisory{xact}_lock(t.k) LIMIT $3::int8), \
                     n AS (SELECT count(*) AS c FROM got) \
                     SELECT got.i, (SELECT nextval('{seq}')) FROM got, n \
                     WHERE CASE WHEN n.c = $3::int8 THEN true ELSE {give_back} END",
                ),
                params: vec![
                    Param::Int8Array(keys),
                    Param::Int8Array(slots),
                    Param::Int8(i64::from(permits)),
                ],
                begin: scope == Scope::Transaction,
            };
            let name = req.name.clone();
            let undo: Undo = Box::new(move |rows| {
                let slots = slot_cells(rows)?;
                Some(slots_unlock(&name, &slots))
            });
            let (s, rows) = self.attempt(req, start, until, stmt, undo, None).await?;
            retry.answered(); // the server answers again
            if !rows.is_empty() {
                let cells = (slot_cells(&rows), bigint_cell(&rows, 1));
                let granted = match &cells {
                    (Some(slots), Ok(token)) if slots.len() == permits as usize => {
                        parse_token(*token).ok().map(|t| (slots.clone(), t))
                    }
                    _ => None,
                };
                let Some((slots, token)) = granted else {
                    s.kill(String::from(
                        "the server answered a semaphore attempt unexpectedly",
                    ));
                    return Err(Miss::Fault(Fault {
                        message: format!(
                            "unexpected answer {cells:?} acquiring {}",
                            req.target(BACKEND)
                        ),
                        transient: false,
                    }));
                };
                return Ok(Some((s, slots, token, gate)));
            }
            drop(gate);
            self.end_attempt(&s).await;
            if req.timeout == Timeout::Zero {
                return Ok(None);
            }
            // Permits freed in this process wake us at once; other processes' are polled for.
            let pause = async {
                tokio::select! {
                    _ = freed => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
            };
            race(pause, deadline, req.cancel.as_ref(), &self.closed)
                .await
                .done()
                .map_err(Miss::Stop)?;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        session: Arc<Session>,
        unlock: Stmt,
        token: u64,
        turn: Turn,
        start: Instant,
    ) -> Result<Option<Held>> {
        let id = self.held.next_id();
        let lost = LostSignal::new();
        let turn = Arc::new(Mutex::new(Some(turn)));
        // A session that dies gives the turn back after the lost signal fired: the name is
        // free in this process at once, without waiting for the holder's release().
        let on_lost = {
            let turn = turn.clone();
            Box::new(move || drop(lock(&turn).take()))
        };
        session.hold(id, lost.clone(), on_lost);
        if self.pool.opts.scope == Scope::Session {
            session.unbusy();
        }
        let held = Arc::new(PgHeld {
            id,
            token,
            lost,
            released: AtomicBool::new(false),
            grant: Mutex::new(Some(Grant { session, unlock })),
            turn,
            scope: self.pool.opts.scope,
            op_timeout: self.pool.opts.op_timeout,
            runtime: tokio::runtime::Handle::current(),
            owner: Arc::downgrade(self),
            target: req.target(BACKEND).to_string(),
        });
        self.held.insert(id, &held);
        tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, token, waited_us = start.elapsed().as_micros() as u64, "acquired");
        if self.closed.is_cancelled() {
            held.lost.fire("the lock provider was closed");
            let undo = held.take_and_unlock();
            tokio::spawn(undo);
            return Err(self.closed_error(req));
        }
        Ok(Some(held))
    }
}

/// A semaphore attempt that won: its session, slots and token, and the gate of the name's
/// attempts in this process, held until the slots are marked taken.
type SlotGrant = (
    Arc<Session>,
    Vec<u32>,
    u64,
    tokio::sync::OwnedMutexGuard<()>,
);

/// The permit slots in the first cell of every row, `None` if one is not a slot number.
fn slot_cells(rows: &Rows) -> Option<Vec<u32>> {
    rows.iter()
        .map(|row| {
            let slot: Option<i64> = row.try_get(0).ok()?;
            u32::try_from(slot?).ok()
        })
        .collect()
}

/// The key of permit `slot` of semaphore `name` (always in the bigint space).
fn semaphore_key(name: &str, slot: u32) -> i64 {
    key::hashed(&format!("distlock-semaphore\u{0}{name}\u{0}{slot}"))
}

/// What a grant keeps alive besides its session: its place in the in-process queue.
enum Keep {
    Entry(Arc<Entry<Handoff>>),
    Slots(Arc<Entry<SemState>>, Vec<u32>),
}

/// A grant's share of this process: its turn in the in-process queue and, for a semaphore, its
/// permit slot. Dropping it lets the next caller of this process in.
struct Turn {
    #[allow(dead_code)] // kept for its Drop
    ticket: Ticket,
    keep: Keep,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Keep::Slots(entry, slots) = &self.keep {
            let mut taken = lock(&entry.state.taken);
            for slot in slots {
                taken.remove(slot);
            }
            drop(taken);
            entry.state.freed.notify_waiters();
        }
        // The ticket is dropped after this body: the queue moves on once the slot is free.
    }
}

/// A grant's share of the server: the session it lives on and how to undo it there.
struct Grant {
    session: Arc<Session>,
    unlock: Stmt,
}

struct PgHeld {
    id: u64,
    token: u64,
    lost: LostSignal,
    released: AtomicBool,
    grant: Mutex<Option<Grant>>,
    /// Shared with the session, which drops it if it dies first.
    turn: Arc<Mutex<Option<Turn>>>,
    scope: Scope,
    op_timeout: Duration,
    runtime: tokio::runtime::Handle,
    owner: Weak<Inner>,
    target: String,
}

impl PgHeld {
    /// Takes the grant (once) and returns the future that unlocks it on the server (within
    /// `op_timeout`, else the session is closed), then lets the next caller of this process in.
    fn take_and_unlock(&self) -> impl Future<Output = ()> + Send + use<> {
        let grant = lock(&self.grant).take();
        self.released.store(true, Ordering::Release);
        if let Some(owner) = self.owner.upgrade() {
            owner.held.remove(self.id);
        }
        let (id, token, scope, op) = (self.id, self.token, self.scope, self.op_timeout);
        let turn = self.turn.clone();
        async move {
            let Some(grant) = grant else { return };
            let s = grant.session;
            if !s.is_dead() {
                // In session scope, once the unlock is queued on its session the next caller of
                // this process may go, and its attempt is sent to that session behind the
                // unlock, so one round trip answers both. The order keeps the server's queue
                // between processes: the unlock comes first, so a session of another process
                // that waits for the lock is granted it there, and the attempt finds it busy.
                // Exclusion does not depend on the order: the turn passes only once the holder
                // released, and the server lock stays with the session until its unlocks
                // balance its grants. An attempt on another session is an ordinary one (busy if
                // it arrives first). When the unlock cannot be queued at once (a statement this
                // session has not prepared yet), the turn passes after its answer.
                let queued = if scope == Scope::Session {
                    s.send_prepared(&grant.unlock)
                } else {
                    None
                };
                if queued.is_some() {
                    let next = lock(&turn).take();
                    if let Some(Turn {
                        keep: Keep::Entry(entry),
                        ..
                    }) = &next
                    {
                        *lock(&entry.state.session) = Some(Arc::downgrade(&s));
                    }
                    drop(next);
                }
                let unlocking = async {
                    match queued {
                        Some(answer) => answer.await,
                        None => s.execute(&grant.unlock).await,
                    }
                };
                let mut unlocking = std::pin::pin!(unlocking);
                match s.within(op, &mut unlocking).await {
                    Some(Ok(rows)) => {
                        let held = rows.first().and_then(|r| r.try_get::<_, bool>(0).ok());
                        if scope == Scope::Session && held == Some(false) {
                            tracing::warn!(
                                backend = BACKEND,
                                token,
                                "unlock found the lock not held"
                            );
                        }
                    }
                    Some(Err(e)) if !s.is_dead() => {
                        // The lock may still be held on a live session: close it so the server
                        // frees it (the session's other locks report lost).
                        s.kill(format!("unlocking failed: {}", describe(&e)));
                    }
                    Some(Err(_)) => {}
                    None => s.kill(format!(
                        "an unlock got no answer within {} ms",
                        op.as_millis()
                    )),
                }
            }
            s.forget(id);
            if scope == Scope::Transaction {
                s.unbusy();
            }
            drop(lock(&turn).take());
            tracing::debug!(backend = BACKEND, token, "released");
        }
    }
}

impl HeldLock for PgHeld {
    fn target(&self) -> &str {
        &self.target
    }

    fn fencing_token(&self) -> u64 {
        self.token
    }

    fn lost(&self) -> &LostSignal {
        &self.lost
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        let undo = self.take_and_unlock();
        Box::pin(async move {
            undo.await;
            Ok(())
        })
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        if lock(&self.grant).is_some() {
            // Dropped without release (a garbage-collected handle): unlock in the background.
            let undo = self.take_and_unlock();
            self.runtime.spawn(undo);
        }
    }
}

/// The hot path's statements on a real server (`DISTLOCK_TEST_PG_URL`, else the local server on
/// 127.0.0.1:5432), read back from the provider's own sessions: what `pg_prepared_statements`
/// shows there is invisible from any other connection.
#[cfg(test)]
mod prepared_statements {
    use distlock_core::Timeout;

    use super::*;

    fn url(app: &str) -> String {
        let base = std::env::var("DISTLOCK_TEST_PG_URL")
            .unwrap_or_else(|_| String::from("postgres://postgres@127.0.0.1:5432/postgres"));
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}application_name={app}")
    }

    fn provider(app: &str, scope: Scope, max_connections: f64) -> PostgresBackend {
        let opts = PgOptions::parse(&url(app))
            .unwrap()
            .max_connections(max_connections)
            .unwrap()
            .scope(scope);
        PostgresBackend::new(opts).unwrap()
    }

    fn req(name: &str, kind: LockKind, timeout_ms: f64) -> AcquireRequest {
        AcquireRequest {
            name: name.to_owned(),
            kind,
            timeout: Timeout::from_ms(Some(timeout_ms)).unwrap(),
            cancel: None,
            lease: None,
            auto_renew: true,
        }
    }

    fn tag(what: &str) -> String {
        format!("dlprep_{what}_{}", std::process::id())
    }

    /// The provider's only session.
    fn session(b: &PostgresBackend) -> Arc<Session> {
        let sessions = b.inner.pool.sessions();
        assert_eq!(sessions.len(), 1, "expected one session");
        sessions[0].clone()
    }

    /// The statements prepared on the extended protocol on `s` (`PREPARE` in SQL is not used),
    /// with how often each was executed.
    async fn prepared_on(s: &Session) -> Vec<(String, i64)> {
        let rows = s
            .query(
                "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements \
                 WHERE NOT from_sql ORDER BY statement",
            )
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| {
                let text = r[0].clone().unwrap();
                let runs = r[1].as_deref().unwrap().parse().unwrap();
                (text, runs)
            })
            .collect()
    }

    /// Acquires every request at once (each a try that must be granted), then releases all at
    /// once.
    async fn take_and_release_concurrently(b: &PostgresBackend, reqs: Vec<AcquireRequest>) {
        let mut tries = tokio::task::JoinSet::new();
        for r in reqs {
            tries.spawn(b.acquire(r).unwrap());
        }
        let held: Vec<Held> = tries
            .join_all()
            .await
            .into_iter()
            .map(|h| h.unwrap().expect("a free lock was busy"))
            .collect();
        let mut releases = tokio::task::JoinSet::new();
        for h in held {
            releases.spawn(h.release());
        }
        for r in releases.join_all().await {
            r.unwrap();
        }
    }

    #[tokio::test]
    async fn session_scope_prepares_each_statement_once_per_session_and_reuses_it() {
        const N: usize = 6;
        let seq = config::DEFAULT_SEQUENCE;
        // One connection: every try and unlock, sent concurrently, shares one session.
        let b = provider(&tag("session"), Scope::Session, 1.0);
        let long = |i: usize| format!("{}-mutex-{i}", tag("session")); // hashed: a bigint key
        let short = |i: usize| format!("p{:08x}", std::process::id() * 16 + i as u32); // a pair
        let mut reqs = Vec::new();
        for i in 0..N {
            reqs.push(req(&long(i), LockKind::Mutex, 0.0));
            reqs.push(req(&short(i), LockKind::Read, 0.0));
        }
        take_and_release_concurrently(&b, reqs).await;
        let s = session(&b);
        let sql = |key, shared| Sql {
            key,
            shared,
            scope: Scope::Session,
        };
        let bigint = sql(AdvisoryKey::from_name(&long(0)), false);
        let pair = sql(AdvisoryKey::from_name(&short(0)), true);
        assert!(matches!(bigint.key, AdvisoryKey::Bigint(_)));
        assert!(matches!(pair.key, AdvisoryKey::Pair(..)));
        // Each text once, with how often it ran.
        let expected = |bigint_runs: usize, pair_runs: usize| {
            let mut all = vec![
                (bigint.attempt(seq).text, bigint_runs as i64),
                (bigint.unlock().text, bigint_runs as i64),
                (pair.attempt(seq).text, pair_runs as i64),
                (pair.unlock().text, pair_runs as i64),
            ];
            all.sort();
            all
        };
        assert_eq!(prepared_on(&s).await, expected(N, N));
        for (text, _) in expected(N, N) {
            assert!(text.contains("$1::int"), "not parameterized: {text}");
        }

        // Again on the same session: the same statements run again, none is prepared anew.
        let reqs = (0..N)
            .map(|i| req(&long(i), LockKind::Mutex, 0.0))
            .collect();
        take_and_release_concurrently(&b, reqs).await;
        let again = expected(2 * N, N);
        assert_eq!(prepared_on(&session(&b)).await, again);
        b.close().await.unwrap();
    }

    #[tokio::test]
    async fn session_scope_waits_and_semaphores_use_prepared_statements() {
        let seq = config::DEFAULT_SEQUENCE;
        let name = format!("{}-busy", tag("wait"));
        let holder = provider(&tag("holder"), Scope::Session, 1.0);
        let held = holder
            .acquire(req(&name, LockKind::Mutex, 0.0))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        // The waiter's try finds the lock busy, then it blocks on the same (empty) session until
        // the server's lock_timeout ends the wait (55P03: "busy").
        let waiter = provider(&tag("waiter"), Scope::Session, 1.0);
        for _ in 0..2 {
            let start = Instant::now();
            let got = waiter
                .acquire(req(&name, LockKind::Mutex, 150.0))
                .unwrap()
                .await
                .unwrap();
            assert!(got.is_none());
            assert!(start.elapsed() >= Duration::from_millis(150));
        }
        let sem = format!("{}-sem", tag("wait"));
        for _ in 0..3 {
            let permit = waiter
                .acquire(req(&sem, LockKind::semaphore(3), 0.0))
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            permit.release().await.unwrap();
        }
        let sql = Sql {
            key: AdvisoryKey::from_name(&name),
            shared: false,
            scope: Scope::Session,
        };
        let prepared = prepared_on(&session(&waiter)).await;
        let runs = |text: &str| {
            let found: Vec<i64> = prepared
                .iter()
                .filter(|(t, _)| t == text)
                .map(|(_, runs)| *runs)
                .collect();
            assert_eq!(found.len(), 1, "{text} in {prepared:#?}");
            found[0]
        };
        assert_eq!(runs(&sql.attempt(seq).text), 2);
        assert_eq!(runs(&sql.wait(seq, true).text), 2);
        let sem_try = prepared
            .iter()
            .find(|(t, _)| t.contains("unnest($1::int8[], $2::int8[])"))
            .unwrap_or_else(|| panic!("no semaphore attempt in {prepared:#?}"));
        assert_eq!(sem_try.1, 3);
        assert_eq!(
            runs("SELECT pg_advisory_unlock(k) FROM unnest($1::int8[]) AS k"),
            3
        );
        held.release().await.unwrap();
        holder.close().await.unwrap();
        waiter.close().await.unwrap();
    }

    #[tokio::test]
    async fn transaction_scope_binds_its_values_and_keeps_no_named_statements() {
        let app = tag("xact");
        let b = provider(&app, Scope::Transaction, 1.0);
        let name = format!("{app}-lock");
        let held = b
            .acquire(req(&name, LockKind::Mutex, 0.0))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let (admin, conn) = tokio_postgres::connect(&url("dlprep_admin"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // The session holds the lock idle in its transaction; its last statement is the attempt,
        // with the key as a parameter (the simple protocol would show "BEGIN; SELECT ..." with
        // the key spelled out).
        let row = admin
            .query_one(
                "SELECT state, query FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        let (state, query): (String, String) = (row.get(0), row.get(1));
        assert_eq!(state, "idle in transaction");
        let sql = Sql {
            key: AdvisoryKey::from_name(&name),
            shared: false,
            scope: Scope::Transaction,
        };
        assert_eq!(query, sql.attempt(config::DEFAULT_SEQUENCE).text);
        assert!(query.contains("pg_try_advisory_xact_lock($1::int8)"));
        assert!(prepared_on(&session(&b)).await.is_empty());

        // A wait that the server's lock_timeout ends (55P03) leaves the waiter's transaction
        // aborted; the unnamed ROLLBACK that cleans it up keeps the session usable.
        let waiter = provider(&tag("xact_waiter"), Scope::Transaction, 1.0);
        let got = waiter
            .acquire(req(&name, LockKind::Mutex, 150.0))
            .unwrap()
            .await
            .unwrap();
        assert!(got.is_none());
        let first = session(&waiter);
        let other = waiter
            .acquire(req(&format!("{app}-other"), LockKind::Mutex, 2_000.0))
            .unwrap()
            .await
            .unwrap()
            .expect("a free lock was busy");
        let again = session(&waiter);
        assert!(
            Arc::ptr_eq(&first, &again) && !again.is_dead(),
            "the session was replaced after the wait"
        );
        other.release().await.unwrap();
        held.release().await.unwrap();
        waiter.close().await.unwrap();
        b.close().await.unwrap();
    }
}

//! distlock-postgres: locks on PostgreSQL advisory locks.
//!
//! - Mutex: `pg_advisory_lock(key)`; reader-writer lock: the shared form for readers, the
//!   exclusive form for writers (the server queues new readers behind a waiting writer);
//!   semaphore: `maxCount` keys derived from the name, one per permit.
//! - Keys: [`AdvisoryKey::from_name`], identical to .NET DistributedLock's.
//! - Waiting: the callers of one process queue in memory ([`FairQueue`]), so one process sends at
//!   most one waiter per name; that waiter first tries without blocking on a shared session, then
//!   blocks on a session of its own with `SET LOCAL lock_timeout`. Between processes the server's
//!   lock queue is FIFO.
//! - Fencing tokens come from one sequence (`nextval` in the statement that takes the lock),
//!   created on first use if missing.
//! - A session that ends fires the lost signal of every lock it held.
//!
//! [`FairQueue`]: distlock_core::FairQueue

mod config;
pub mod key;
mod pool;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use distlock_core::HeldSet;
use distlock_core::queue::Entry;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Error, Held, HeldLock,
    Interrupted, LockInfo, LockKind, LostSignal, Registry, Result, SHARED_CAPACITY, Ticket,
    Timeout, race,
};
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;

pub use config::{PgOptions, Scope, Verify};
pub use key::AdvisoryKey;
use pool::{Pool, Session, Use, describe};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "postgres";

/// SQLSTATE of `lock_timeout` expiring.
const LOCK_NOT_AVAILABLE: &str = "55P03";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Short critical sections of plain field updates: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A lock provider on one PostgreSQL database.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    closed: CancellationToken,
    /// Mutexes and reader-writer locks of one name share a queue (a mutex is the writer side).
    locks: Registry<String, ()>,
    semaphores: Registry<(String, u32), SemState>,
    held: HeldSet<PgHeld>,
    sequence: OnceCell<()>,
    keepalive_started: OnceLock<()>,
}

#[derive(Default)]
struct SemState {
    /// Permit slots this process holds (the server would let one session take a key twice).
    taken: Mutex<HashSet<u32>>,
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
            self.key.sql_args()
        )
    }

    fn unlock(self) -> String {
        match self.scope {
            Scope::Session => format!(
                "SELECT pg_advisory_unlock{}({})",
                if self.shared { "_shared" } else { "" },
                self.key.sql_args()
            ),
            Scope::Transaction => String::from("ROLLBACK"),
        }
    }
}

fn begin(scope: Scope) -> &'static str {
    match scope {
        Scope::Session => "",
        Scope::Transaction => "BEGIN; ",
    }
}

/// What cleans up a session a wait was interrupted on: whatever it may have been granted.
fn reset(scope: Scope) -> &'static str {
    match scope {
        Scope::Session => "SELECT pg_advisory_unlock_all()",
        Scope::Transaction => "ROLLBACK",
    }
}

fn parse_token(text: Option<&str>) -> Result<u64> {
    text.and_then(|t| t.parse::<i64>().ok())
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| Error::Backend {
            backend: BACKEND,
            message: format!("unexpected fencing token {text:?} from the server"),
        })
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        BACKEND
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
                let entry = inner.locks.entry(&req.name, SHARED_CAPACITY, || ());
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
            LockKind::Semaphore { max_count } => {
                let entry = inner.semaphores.entry(
                    &(req.name.clone(), max_count),
                    u64::from(max_count),
                    SemState::default,
                );
                let ticket = entry.queue.enqueue(1);
                Ok(Box::pin(async move {
                    inner.acquire_slot(req, ticket, entry, max_count).await
                }))
            }
        }
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move {
            distlock_core::validate_name(&name)?;
            let (keys, max) = match kind {
                LockKind::Semaphore { max_count } => (
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
            let s = inner.pool.session(usage).await?;
            let rows = s.query(&sql).await;
            if usage == Use::Busy {
                s.unbusy();
            }
            let rows = rows.map_err(|e| Error::Backend {
                backend: BACKEND,
                message: format!(
                    "inspecting {name:?} on {}: {}",
                    inner.pool.opts.server(),
                    describe(&e)
                ),
            })?;
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

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.closed.cancel();
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

impl Inner {
    fn closed_error(&self, req: &AcquireRequest) -> Error {
        Error::Closed {
            backend: BACKEND,
            detail: format!("; stopped acquiring {}", req.target(BACKEND)),
        }
    }

    fn backend_error(&self, req: &AcquireRequest, what: &str, e: &tokio_postgres::Error) -> Error {
        Error::Backend {
            backend: BACKEND,
            message: format!(
                "{what} {} on {}: {}",
                req.target(BACKEND),
                self.pool.opts.server(),
                describe(e)
            ),
        }
    }

    fn start_keepalive(self: &Arc<Self>) {
        if let Some(period) = self.pool.opts.keepalive
            && self.keepalive_started.set(()).is_ok()
        {
            tokio::spawn(self.pool.clone().keepalive(period, self.closed.clone()));
        }
    }

    /// A session, raced against the caller's deadline and cancel and the provider's close.
    async fn session(
        &self,
        usage: Use,
        req: &AcquireRequest,
        deadline: Option<Instant>,
    ) -> std::result::Result<Arc<Session>, Outcome> {
        // Connecting is not waiting for the lock: a zero timeout still gets its one attempt.
        let deadline = if req.timeout == Timeout::Zero {
            None
        } else {
            deadline
        };
        match race(
            self.pool.session(usage),
            deadline,
            req.cancel.as_ref(),
            &self.closed,
        )
        .await
        .done()
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Outcome::Fail(e)),
            // Out of time with no connection at all: the server is slow or unreachable, which
            // is not the same as the lock being busy.
            Err(Interrupted::TimedOut) if self.pool.connections() == 0 => {
                Err(Outcome::Fail(Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "no connection to {} could be opened within the timeout of {}",
                        self.pool.opts.server(),
                        req.target(BACKEND)
                    ),
                }))
            }
            Err(why) => Err(Outcome::Stop(why)),
        }
    }

    /// Creates the fencing sequence once per provider if it is missing.
    async fn ensure_sequence(&self, req: &AcquireRequest, deadline: Option<Instant>) -> Result<()> {
        self.sequence
            .get_or_try_init(|| async {
                let seq = &self.pool.opts.fencing_sequence;
                let s = match self.session(Use::Shared, req, deadline).await {
                    Ok(s) => s,
                    Err(Outcome::Fail(e)) => return Err(e),
                    Err(Outcome::Stop(why)) => {
                        return why.into_outcome::<()>(req, BACKEND).map(|_| ());
                    }
                };
                let created = s
                    .query(&format!("CREATE SEQUENCE IF NOT EXISTS {seq}"))
                    .await;
                let Err(create_err) = created else {
                    return Ok(());
                };
                // Without CREATE on the schema, or when another process created it at the same
                // moment: fine if it exists now.
                let exists = s
                    .query(&format!("SELECT to_regclass('{seq}') IS NOT NULL"))
                    .await
                    .map_err(|e| self.backend_error(req, "checking the fencing sequence for", &e))?;
                if exists.first().and_then(|r| r.first()).cloned().flatten().as_deref() == Some("t") {
                    return Ok(());
                }
                Err(Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "cannot create the fencing-token sequence {seq} on {} ({}); create it once \
                         as a privileged user (CREATE SEQUENCE {seq}; GRANT USAGE ON SEQUENCE {seq} \
                         TO <user>) or point the fencingSequence option at one you can use",
                        self.pool.opts.server(),
                        describe(&create_err)
                    ),
                })
            })
            .await
            .map(|_| ())
    }

    /// Waits for this caller's turn in the process, then makes sure the provider is ready
    /// (keepalive running, fencing sequence present).
    async fn take_turn(
        self: &Arc<Self>,
        req: &AcquireRequest,
        ticket: &mut Ticket,
        deadline: Option<Instant>,
    ) -> std::result::Result<(), Outcome> {
        race(
            ticket.granted(),
            deadline,
            req.cancel.as_ref(),
            &self.closed,
        )
        .await
        .done()
        .map_err(Outcome::Stop)?;
        self.start_keepalive();
        self.ensure_sequence(req, deadline)
            .await
            .map_err(Outcome::Fail)
    }

    /// Which session an attempt that never waits runs on: a shared one in session scope
    /// (pipelined with other callers), one of its own in transaction scope.
    fn attempt_usage(&self) -> Use {
        match self.pool.opts.scope {
            Scope::Session => Use::Shared,
            Scope::Transaction => Use::Busy,
        }
    }

    /// Runs one non-waiting attempt `text`; returns its session and rows.
    async fn attempt(
        &self,
        req: &AcquireRequest,
        deadline: Option<Instant>,
        text: &str,
    ) -> std::result::Result<(Arc<Session>, Vec<Vec<Option<String>>>), Outcome> {
        let s = self.session(self.attempt_usage(), req, deadline).await?;
        match s.query(text).await {
            Ok(rows) => Ok((s, rows)),
            Err(e) => {
                self.end_attempt(&s).await;
                Err(Outcome::Fail(self.backend_error(req, "trying", &e)))
            }
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
        entry: Arc<Entry<()>>,
        sql: Sql,
    ) -> Result<Option<Held>> {
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        if let Err(o) = self.take_turn(&req, &mut ticket, deadline).await {
            return o.finish(&req);
        }
        let seq = &self.pool.opts.fencing_sequence;
        let try_sql = format!(
            "{}SELECT CASE WHEN {} THEN nextval('{seq}') END",
            begin(sql.scope),
            sql.func(true)
        );
        loop {
            let (s, rows) = match self.attempt(&req, deadline, &try_sql).await {
                Ok(answer) => answer,
                Err(o) => return o.finish(&req),
            };
            let token = rows.first().and_then(|r| r.first()).cloned().flatten();
            if let Some(token) = token {
                let token = parse_token(Some(&token))?;
                return self.grant(
                    &req,
                    s,
                    sql.unlock(),
                    token,
                    ticket,
                    Keep::Entry(entry),
                    start,
                );
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
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => continue,
                Err(why) => return why.into_outcome(&req, BACKEND),
            };
            return match self.wait_on(&s, &req, sql, deadline).await {
                Ok(Some(token)) => self.grant(
                    &req,
                    s,
                    sql.unlock(),
                    token,
                    ticket,
                    Keep::Entry(entry),
                    start,
                ),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
        }
    }

    /// Runs the blocking statement on a busy session; returns the fencing token, or `None` when
    /// `lock_timeout` ran out. On cancel or close, cancels the statement on the server and
    /// undoes a grant that raced it.
    async fn wait_on(
        &self,
        s: &Arc<Session>,
        req: &AcquireRequest,
        sql: Sql,
        deadline: Option<Instant>,
    ) -> Result<Option<u64>> {
        let seq = &self.pool.opts.fencing_sequence;
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                format!("SET LOCAL lock_timeout = '{}ms'; ", left.as_millis().max(1))
            }
            None => String::new(),
        };
        let text = format!(
            "{}{timeout}SELECT {}, nextval('{seq}')",
            begin(sql.scope),
            sql.func(false)
        );
        let query = s.query(&text);
        tokio::pin!(query);
        let cancelled = async {
            match &req.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let interrupted = tokio::select! {
            biased;
            _ = cancelled => Interrupted::Cancelled,
            _ = self.closed.cancelled() => Interrupted::Closed,
            result = &mut query => {
                return match result {
                    Ok(rows) => {
                        let token = rows.first().and_then(|r| r.get(1)).cloned().flatten();
                        let token = parse_token(token.as_deref());
                        if token.is_err() {
                            self.clean_after(s, sql.scope).await;
                        }
                        token.map(Some)
                    }
                    Err(e) if e.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) => {
                        self.after_lock_timeout(s, req, sql).await
                    }
                    Err(e) => {
                        let err = self.backend_error(req, "waiting for", &e);
                        self.clean_after(s, sql.scope).await;
                        Err(err)
                    }
                };
            }
        };
        s.cancel_running(self.pool.tls.clone()).await;
        let _ = query.await; // cancelled, or granted just before the cancel arrived
        self.clean_after(s, sql.scope).await;
        interrupted.into_outcome::<u64>(req, BACKEND)
    }

    /// `lock_timeout` fired. The grant can race the timeout, so look at what the session holds.
    async fn after_lock_timeout(
        &self,
        s: &Arc<Session>,
        req: &AcquireRequest,
        sql: Sql,
    ) -> Result<Option<u64>> {
        if sql.scope == Scope::Transaction {
            // The transaction is aborted; rolling back drops whatever it was granted.
            self.clean_after(s, sql.scope).await;
            return Ok(None);
        }
        let seq = &self.pool.opts.fencing_sequence;
        let check = format!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted) THEN nextval('{seq}') END"
        );
        match s.query(&check).await {
            Ok(rows) => match rows.first().and_then(|r| r.first()).cloned().flatten() {
                Some(token) => parse_token(Some(&token)).map(Some),
                None => {
                    s.unbusy();
                    Ok(None)
                }
            },
            Err(e) => {
                let err = self.backend_error(req, "checking pg_locks for", &e);
                self.clean_after(s, sql.scope).await;
                Err(err)
            }
        }
    }

    /// Drops anything a busy session may hold and hands it back; a session that cannot be
    /// cleaned is closed (the server then frees what it held).
    async fn clean_after(&self, s: &Arc<Session>, scope: Scope) {
        if s.is_dead() {
            return;
        }
        for _ in 0..3 {
            match s.query(reset(scope)).await {
                Ok(_) => {
                    s.unbusy();
                    return;
                }
                // A cancel request can land on the statement after the one it was meant for.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {}
                Err(_) => break,
            }
        }
        s.kill(String::from(
            "its session could not be reset after an interrupted wait",
        ));
    }

    async fn acquire_slot(
        self: Arc<Self>,
        req: AcquireRequest,
        mut ticket: Ticket,
        entry: Arc<Entry<SemState>>,
        max_count: u32,
    ) -> Result<Option<Held>> {
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        if let Err(o) = self.take_turn(&req, &mut ticket, deadline).await {
            return o.finish(&req);
        }
        let scope = self.pool.opts.scope;
        let seq = &self.pool.opts.fencing_sequence;
        let mut backoff = Duration::from_millis(2);
        loop {
            let freed = entry.state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let free: Vec<u32> = {
                let taken = lock(&entry.state.taken);
                (0..max_count).filter(|i| !taken.contains(i)).collect()
            };
            let keys: Vec<String> = free
                .iter()
                .map(|i| semaphore_key(&req.name, *i).to_string())
                .collect();
            let slots: Vec<String> = free.iter().map(u32::to_string).collect();
            let text = format!(
                "{}SELECT t.i, nextval('{seq}') FROM unnest('{{{}}}'::bigint[], '{{{}}}'::int[]) \
                 AS t(k, i) WHERE pg{}_advisory{}_lock(t.k) LIMIT 1",
                begin(scope),
                keys.join(","),
                slots.join(","),
                "_try",
                if scope == Scope::Transaction {
                    "_xact"
                } else {
                    ""
                },
            );
            let (s, rows) = match self.attempt(&req, deadline, &text).await {
                Ok(answer) => answer,
                Err(o) => return o.finish(&req),
            };
            if let Some(row) = rows.first() {
                let slot = row
                    .first()
                    .cloned()
                    .flatten()
                    .and_then(|t| t.parse::<u32>().ok());
                let token = parse_token(row.get(1).cloned().flatten().as_deref());
                let (Some(slot), Ok(token)) = (slot, token) else {
                    s.kill(String::from(
                        "the server answered a semaphore attempt unexpectedly",
                    ));
                    return Err(Error::Backend {
                        backend: BACKEND,
                        message: format!(
                            "unexpected answer {row:?} acquiring {}",
                            req.target(BACKEND)
                        ),
                    });
                };
                lock(&entry.state.taken).insert(slot);
                let unlock = match scope {
                    Scope::Session => {
                        format!(
                            "SELECT pg_advisory_unlock({})",
                            semaphore_key(&req.name, slot)
                        )
                    }
                    Scope::Transaction => String::from("ROLLBACK"),
                };
                return self.grant(
                    &req,
                    s,
                    unlock,
                    token,
                    ticket,
                    Keep::Slot(entry.clone(), slot),
                    start,
                );
            }
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
            if let Err(why) = race(pause, deadline, req.cancel.as_ref(), &self.closed)
                .await
                .done()
            {
                return why.into_outcome(&req, BACKEND);
            }
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        session: Arc<Session>,
        unlock: String,
        token: u64,
        ticket: Ticket,
        keep: Keep,
        start: Instant,
    ) -> Result<Option<Held>> {
        let id = self.held.next_id();
        let lost = LostSignal::new();
        session.hold(id, lost.clone());
        if self.pool.opts.scope == Scope::Session {
            session.unbusy();
        }
        let held = Arc::new(PgHeld {
            id,
            token,
            lost,
            released: AtomicBool::new(false),
            grant: Mutex::new(Some(Grant {
                session,
                unlock,
                ticket,
                keep,
            })),
            scope: self.pool.opts.scope,
            runtime: tokio::runtime::Handle::current(),
            owner: Arc::downgrade(self),
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

/// The key of permit `slot` of semaphore `name` (always in the bigint space).
fn semaphore_key(name: &str, slot: u32) -> i64 {
    key::hashed(&format!("distlock-semaphore\u{0}{name}\u{0}{slot}"))
}

/// How a session or queue wait ended without a session.
enum Outcome {
    Fail(Error),
    Stop(Interrupted),
}

impl Outcome {
    fn finish(self, req: &AcquireRequest) -> Result<Option<Held>> {
        match self {
            Outcome::Fail(e) => Err(e),
            Outcome::Stop(why) => why.into_outcome(req, BACKEND),
        }
    }
}

/// What a grant keeps alive besides its session: its place in the in-process queue.
enum Keep {
    Entry(#[allow(dead_code)] Arc<Entry<()>>),
    Slot(Arc<Entry<SemState>>, u32),
}

struct Grant {
    session: Arc<Session>,
    unlock: String,
    ticket: Ticket,
    keep: Keep,
}

struct PgHeld {
    id: u64,
    token: u64,
    lost: LostSignal,
    released: AtomicBool,
    grant: Mutex<Option<Grant>>,
    scope: Scope,
    runtime: tokio::runtime::Handle,
    owner: Weak<Inner>,
}

impl PgHeld {
    /// Takes the grant (once) and returns the future that unlocks it on the server, then lets
    /// the next caller of this process in.
    fn take_and_unlock(&self) -> impl Future<Output = ()> + Send + use<> {
        let grant = lock(&self.grant).take();
        self.released.store(true, Ordering::Release);
        if let Some(owner) = self.owner.upgrade() {
            owner.held.remove(self.id);
        }
        let (id, token, scope) = (self.id, self.token, self.scope);
        async move {
            let Some(grant) = grant else { return };
            let s = grant.session;
            if !s.is_dead() {
                match s.query(&grant.unlock).await {
                    Ok(rows) => {
                        if scope == Scope::Session
                            && rows
                                .first()
                                .and_then(|r| r.first())
                                .cloned()
                                .flatten()
                                .as_deref()
                                == Some("f")
                        {
                            tracing::warn!(
                                backend = BACKEND,
                                token,
                                "unlock found the lock not held"
                            );
                        }
                    }
                    Err(e) if !s.is_dead() => {
                        // The lock may still be held on a live session: close it so the server
                        // frees it (the session's other locks report lost).
                        s.kill(format!("unlocking failed: {}", describe(&e)));
                    }
                    Err(_) => {}
                }
            }
            s.forget(id);
            if scope == Scope::Transaction {
                s.unbusy();
            }
            if let Keep::Slot(entry, slot) = &grant.keep {
                lock(&entry.state.taken).remove(slot);
                entry.state.freed.notify_waiters();
            }
            drop(grant.ticket);
            tracing::debug!(backend = BACKEND, token, "released");
        }
    }
}

impl HeldLock for PgHeld {
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

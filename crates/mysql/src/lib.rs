//! distlock-mysql: locks on MySQL and MariaDB named locks (`GET_LOCK` / `RELEASE_LOCK`).
//!
//! - Mutex: `GET_LOCK(name, 0)` for a try, `GET_LOCK(name, seconds)` for a wait; the server's
//!   lock name comes from [`names::lock_name`], the rule of .NET DistributedLock's MySQL lock,
//!   so both libraries exclude each other on the same name.
//! - Semaphore: `maxCount` named locks derived from the name, one per permit; an acquire of
//!   `permits` takes that many, all or none, with tries that never wait, repeated (woken at
//!   once by a permit freed in this process, else after a pause of 2 ms doubling to 50 ms) until
//!   the deadline.
//! - Reader-writer locks are refused: named locks are exclusive, and a shared side built from
//!   them would either cap the readers or starve the writers.
//! - No transaction scope: a named lock belongs to the session, not to a transaction, and
//!   outlives `COMMIT`.
//! - Waiting: the callers of one process queue in memory ([`FairQueue`]), so one process sends
//!   at most one waiter per name; it first tries on a shared session, then waits on a session of
//!   its own. The server's timeout is the caller's rounded up to whole seconds; the caller's own
//!   deadline is kept to the millisecond, and a wait that ends early (deadline, `AbortSignal`,
//!   close) is ended on the server by `KILL CONNECTION` of its session, sent from another
//!   session; the server frees whatever it was granted meanwhile.
//! - Fencing tokens: a counter per name in a table (default `distlock_fencing`, created on
//!   first use), bumped with `LAST_INSERT_ID(token + 1)` by the holder only, so strictly
//!   increasing per name; or, with `fencing: 'uuid-short'`, the server's `UUID_SHORT()` read
//!   in the statement that takes the lock. A try takes the lock and bumps the counter in one statement
//!   (`INSERT … SELECT … WHERE GET_LOCK(?, 0) = 1`); a wait bumps it after its grant.
//! - A session that ends (killed on the server, the socket closed, a probe unanswered within
//!   `keepalive`) fires the lost signal of every lock it held and gives each lock's in-process
//!   turn back. Sessions that hold locks are probed every `keepalive` (default 1 s).
//!
//! # Time bounds
//!
//! | call | settles by |
//! |---|---|
//! | `acquire` with `timeout` T > 0 | T, plus the server's confirmation of the kill of its waiting session (at most 250 ms) |
//! | `acquire` with `timeout` 0 (try) | `connect_timeout` + `op_timeout` |
//! | `release` | `op_timeout`; no answer closes the session (the server frees its locks) |
//! | `inspect` | `op_timeout` |
//!
//! [`FairQueue`]: distlock_core::FairQueue

mod config;
pub mod names;
mod session;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Error, Held, HeldLock,
    HeldSet, Interrupted, LockInfo, LockKind, LostSignal, Registry, Result, Ticket, Timeout,
    Waited, race,
};
use mysql_async::prelude::Queryable;
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::MySqlOptions;
use session::{Dependent, Failure, Op, Pool, Session, Use, lock};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "mysql";

/// What `GET_LOCK` waits without a timeout: the most seconds the servers accept (as .NET
/// DistributedLock sends).
const FOREVER_SECS: u64 = 0xFFFF_FFFF;

/// A lock provider on one MySQL or MariaDB server.
#[derive(Clone)]
pub struct MySqlBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    closed: CancellationToken,
    locks: Registry<String, ()>,
    semaphores: Registry<(String, u32), SemState>,
    held: HeldSet<MyHeld>,
    table: OnceCell<()>,
    keepalive_started: OnceLock<()>,
}

#[derive(Default)]
struct SemState {
    /// Permit slots this process holds or is trying: a session that holds a named lock is
    /// granted it again, so two callers of one process must never try the same slot.
    claimed: Mutex<HashSet<u32>>,
    freed: Notify,
}

/// Why a round of an acquire did not grant.
enum Miss {
    /// The caller's deadline, cancel or the provider's close.
    Stop(Interrupted),
    /// A statement or connection failed.
    Fault(Failure),
    /// The server ended a wait without a grant before the caller's deadline: go again.
    Again,
}

impl From<Failure> for Miss {
    fn from(f: Failure) -> Self {
        Miss::Fault(f)
    }
}

/// Why a race that did not end with its result ended.
fn interruption<T>(w: &Waited<T>) -> Interrupted {
    match w {
        Waited::Cancelled => Interrupted::Cancelled,
        Waited::Closed => Interrupted::Closed,
        _ => Interrupted::TimedOut,
    }
}

fn stop<T>(w: Waited<T>) -> std::result::Result<T, Miss> {
    w.done().map_err(Miss::Stop)
}

impl MySqlBackend {
    /// A provider with these options. Connects lazily, on the first acquire.
    pub fn new(opts: MySqlOptions) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                pool: Pool::new(opts),
                closed: CancellationToken::new(),
                locks: Registry::default(),
                semaphores: Registry::default(),
                held: HeldSet::default(),
                table: OnceCell::new(),
                keepalive_started: OnceLock::new(),
            }),
        })
    }

    /// Server connections open now.
    pub fn connections(&self) -> usize {
        self.inner.pool.len()
    }

    /// Locks held through this provider now.
    pub fn held_count(&self) -> usize {
        self.inner.held.len()
    }
}

/// The server lock name of permit `slot` of semaphore `name` (always hashed: the uppercase
/// keeps it apart from the names of locks).
fn slot_name(name: &str, slot: u32) -> String {
    names::lock_name(&format!("DISTLOCK-SEMAPHORE:{slot}:{name}"))
}

/// The fencing counter's row of semaphore `name`.
fn semaphore_fence(name: &str) -> String {
    names::lock_name(&format!("DISTLOCK-SEMAPHORE:{name}"))
}

/// `?, ?, …` with `n` placeholders of `each`.
fn list(each: &str, n: usize) -> String {
    vec![each; n].join(", ")
}

/// The statement that takes `names` if free, never waiting: one 0/1 cell per name.
fn try_all(names: Vec<String>) -> Op<Vec<bool>> {
    Box::new(move |c| {
        Box::pin(async move {
            let sql = format!("SELECT {}", list("GET_LOCK(?, 0)", names.len()));
            let row: Option<mysql_async::Row> = c.exec_first(sql, names).await?;
            let row = row.map(|r| r.unwrap()).unwrap_or_default();
            Ok(row
                .into_iter()
                .map(|v| matches!(v, mysql_async::Value::Int(1) | mysql_async::Value::UInt(1)))
                .collect())
        })
    })
}

/// The statement that releases `names` (a name not held is ignored by the server).
fn release_all(names: Vec<String>) -> Op<()> {
    Box::new(move |c| {
        Box::pin(async move {
            let sql = format!("DO {}", list("RELEASE_LOCK(?)", names.len()));
            c.exec_drop(sql, names).await
        })
    })
}

/// The statement that bumps the fencing counter of `row` in `table`; returns the new token.
fn bump(table: &str, row: String) -> Op<Option<u64>> {
    let sql = format!(
        "INSERT INTO {table} (name, token) VALUES (?, LAST_INSERT_ID(1)) \
         ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)"
    );
    Box::new(move |c| {
        Box::pin(async move {
            c.exec_drop(sql, (row,)).await?;
            Ok(c.last_insert_id())
        })
    })
}

/// A try that takes the lock `name` and bumps its fencing counter in one statement: the
/// counter's row is written only when `GET_LOCK` granted. `None` when busy.
fn try_and_bump(table: &str, name: String) -> Op<Option<u64>> {
    let sql = format!(
        "INSERT INTO {table} (name, token) SELECT ?, LAST_INSERT_ID(1) FROM DUAL \
         WHERE GET_LOCK(?, 0) = 1 ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)"
    );
    Box::new(move |c| {
        Box::pin(async move {
            c.exec_drop(sql, (name.clone(), name)).await?;
            Ok(if c.affected_rows() == 0 {
                None
            } else {
                c.last_insert_id()
            })
        })
    })
}

/// What a blocking wait answers: `GET_LOCK`'s result and the `UUID_SHORT()` read after it.
type WaitAnswer = (Option<i64>, Option<u64>);

/// The blocking wait for `name`, up to `secs` seconds: `Some(1)` granted, `Some(0)` the
/// server's timeout, `None` killed; with the server's `UUID_SHORT()` read after it.
fn wait_for(name: String, secs: u64) -> Op<WaitAnswer> {
    Box::new(move |c| {
        Box::pin(async move {
            let row: Option<(Option<i64>, Option<u64>)> = c
                .exec_first("SELECT GET_LOCK(?, ?), UUID_SHORT()", (name, secs))
                .await?;
            Ok(row.unwrap_or((None, None)))
        })
    })
}

/// A try that takes `name` and reads `UUID_SHORT()` in one statement (no write): `None` when
/// busy.
fn try_with_uuid(name: String) -> Op<Option<u64>> {
    Box::new(move |c| {
        Box::pin(async move {
            let row: Option<(Option<i64>, Option<u64>)> = c
                .exec_first("SELECT GET_LOCK(?, 0), UUID_SHORT()", (name,))
                .await?;
            Ok(match row {
                Some((Some(1), token)) => token,
                _ => None,
            })
        })
    })
}

/// The server's next `UUID_SHORT()`.
fn uuid_short() -> Op<Option<u64>> {
    Box::new(|c| Box::pin(async move { c.query_first("SELECT UUID_SHORT()").await }))
}

fn kill_connection(id: u32) -> Op<()> {
    Box::new(move |c| Box::pin(async move { c.query_drop(format!("KILL CONNECTION {id}")).await }))
}

/// How long a wait that ends early (deadline, cancel, close) waits for the server to confirm
/// that its waiting session is gone before it settles anyway (the cleanup goes on).
const KILL_SETTLE: Duration = Duration::from_millis(250);

fn ping() -> Op<()> {
    Box::new(|c| Box::pin(async move { c.ping().await }))
}

impl Backend for MySqlBackend {
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
        match req.kind {
            LockKind::Read | LockKind::Write => Err(Error::invalid(
                "createReaderWriterLock",
                format!(
                    "is not available on MySQL: named locks (GET_LOCK) are exclusive, so {} could not let readers share without capping them or starving writers; use a lock or a semaphore",
                    req.target(BACKEND)
                ),
            )),
            LockKind::Mutex => {
                let entry = inner.locks.entry(&req.name, 1, || ());
                let ticket = entry.queue.enqueue(1);
                Ok(Box::pin(async move {
                    inner.acquire_lock(req, ticket, Keep::Entry(entry)).await
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
                        .acquire_lock(req, ticket, Keep::Slots(entry, Vec::new()))
                        .await
                }))
            }
        }
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move { inner.inspect(name, kind).await })
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.closed.cancel();
            let releasing: Vec<_> = inner
                .held
                .drain()
                .into_iter()
                .map(|h| {
                    h.lost.fire("the provider was closed");
                    h.take_and_release()
                })
                .collect();
            // Each release is one statement on its session; sessions work in parallel.
            futures_join(releasing).await;
            let limit = Duration::from_secs(5);
            for s in inner.pool.drain() {
                s.close(limit).await;
            }
            Ok(())
        })
    }
}

/// Runs `futures` together to the end.
async fn futures_join(futures: Vec<impl Future<Output = ()> + Send + 'static>) {
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for t in tasks {
        let _ = t.await;
    }
}

impl Inner {
    fn label(&self) -> &str {
        &self.pool.opts.label
    }

    fn op_timeout(&self) -> Duration {
        self.pool.opts.op_timeout
    }

    /// Probes the sessions that hold locks every `keepalive`, from the first acquire on.
    fn start_keepalive(self: &Arc<Self>) {
        if self.keepalive_started.set(()).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        let (every, closed) = (self.pool.opts.keepalive, self.closed.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                // Idle sessions too: the server's `wait_timeout` would end them, and the next
                // call would find its session gone.
                for s in inner.pool.sessions() {
                    if !s.is_waiting() && !s.is_dead() {
                        tokio::spawn(async move {
                            // A probe that fails or gets no answer ends the session.
                            let _ = s.run(Some(every), ping()).await;
                        });
                    }
                }
            }
        });
    }

    /// Creates the fencing table once per provider if it is missing.
    async fn ensure_table(&self) -> std::result::Result<(), Failure> {
        if self.pool.opts.uuid_short {
            return Ok(());
        }
        let table = self.pool.opts.fencing_table.clone();
        self.table
            .get_or_try_init(|| async {
                let u = self.pool.shared().await?;
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {table} (name VARBINARY(256) NOT NULL PRIMARY KEY, \
                     token BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"
                );
                let op: Op<()> = Box::new(move |c| Box::pin(async move { c.query_drop(sql).await }));
                u.session.run(Some(self.op_timeout()), op).await.map_err(|f| Failure {
                    message: format!(
                        "cannot create the fencing table {table} (set fencingTable to a table this user may create or write): {}",
                        f.message
                    ),
                    ..f
                })
            })
            .await
            .map(drop)
    }

    /// Runs `op` on `s` as its own task, so it finishes even when the caller stops waiting at
    /// `until` (or cancels): then `undo` runs in the background on its answer, on that session.
    async fn attempt<T: Send + 'static>(
        self: &Arc<Self>,
        req: &AcquireRequest,
        s: &Arc<Session>,
        op: Op<T>,
        until: Option<Instant>,
        undo: impl FnOnce(T) -> Option<Op<()>> + Send + 'static,
    ) -> std::result::Result<T, Miss> {
        let (session, limit) = (s.clone(), self.op_timeout());
        let mut q: JoinHandle<std::result::Result<T, Failure>> =
            tokio::spawn(async move { session.run(Some(limit), op).await });
        match race(&mut q, until, req.cancel.as_ref(), &self.closed).await {
            Waited::Done(Ok(answer)) => answer.map_err(Miss::Fault),
            Waited::Done(Err(e)) => Err(Miss::Fault(Failure::new(e.to_string(), false))),
            other => {
                let s = s.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(answer)) = q.await
                        && let Some(op) = undo(answer)
                    {
                        let _ = s.run(Some(limit), op).await;
                    }
                });
                Err(Miss::Stop(interruption(&other)))
            }
        }
    }

    async fn acquire_lock(
        self: Arc<Self>,
        req: AcquireRequest,
        mut ticket: Ticket,
        mut keep: Keep,
    ) -> Result<Option<Held>> {
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        if let Err(i) = race(
            ticket.granted(),
            deadline,
            req.cancel.as_ref(),
            &self.closed,
        )
        .await
        .done()
        {
            return i.into_outcome(&req, BACKEND);
        }
        self.start_keepalive();
        let mut pause = Duration::from_millis(50);
        let mut last_fault: Option<Failure> = None;
        let mut stale_retry = true;
        let mut answered = false;
        loop {
            let round = async {
                // Creating the fencing table is the first statement a provider sends, so it is
                // where a server that accepts and never answers is met: it keeps to the budget.
                // A server that never answers is trouble, not a busy lock.
                let until = self.until(&req, deadline);
                match race(
                    self.ensure_table(),
                    until,
                    req.cancel.as_ref(),
                    &self.closed,
                )
                .await
                {
                    Waited::TimedOut => {
                        let f = Failure::new("no answer within the acquire's timeout", true);
                        return Err(Miss::Fault(f));
                    }
                    w => stop(w)??,
                }
                match &mut keep {
                    Keep::Entry(_) => self.lock_round(&req, deadline).await,
                    Keep::Slots(entry, _) => {
                        let entry = entry.clone();
                        self.slot_round(&req, &entry, deadline).await
                    }
                }
            };
            match round.await {
                Ok(Some(got)) => {
                    if let Keep::Slots(_, slots) = &mut keep {
                        slots.clone_from(&got.slots);
                    }
                    let turn = Turn { ticket, keep };
                    return Ok(Some(self.grant(&req, got, turn, start)));
                }
                Ok(None) => return Ok(None),
                Err(Miss::Again) => answered = true,
                Err(Miss::Stop(Interrupted::TimedOut)) if req.timeout == Timeout::Zero => {
                    let f = Failure::new("no answer in time", true);
                    return Err(
                        f.into_error(self.label(), &format!("trying {}", req.target(BACKEND)))
                    );
                }
                Err(Miss::Stop(Interrupted::TimedOut)) if !answered && last_fault.is_some() => {
                    let f = last_fault.unwrap_or_else(|| Failure::new("no answer", true));
                    return Err(
                        f.into_error(self.label(), &format!("acquiring {}", req.target(BACKEND)))
                    );
                }
                Err(Miss::Stop(i)) => return i.into_outcome(&req, BACKEND),
                Err(Miss::Fault(f)) => {
                    // A try goes again once, at once: a pooled session the server ended while
                    // it was idle (a restart, `wait_timeout`) is not a reason to fail.
                    let retry = f.transient
                        && self.pool.ever_connected()
                        && match req.timeout {
                            Timeout::Zero => std::mem::take(&mut stale_retry),
                            _ => deadline.is_none_or(|d| Instant::now() + pause < d),
                        };
                    if !retry {
                        return Err(f.into_error(
                            self.label(),
                            &format!("acquiring {}", req.target(BACKEND)),
                        ));
                    }
                    tracing::debug!(backend = BACKEND, error = %f.message, "retrying after a fault");
                    last_fault = Some(f);
                    if req.timeout == Timeout::Zero {
                        continue;
                    }
                    let sleep = tokio::time::sleep(pause);
                    if let Err(i) = race(sleep, deadline, req.cancel.as_ref(), &self.closed)
                        .await
                        .done()
                    {
                        if i == Interrupted::TimedOut && !answered {
                            continue;
                        }
                        return i.into_outcome(&req, BACKEND);
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// A try's deadline: the caller's, or for a try (`timeout` 0) a session within
    /// `connect_timeout` and an answer within `op_timeout`.
    fn until(&self, req: &AcquireRequest, deadline: Option<Instant>) -> Option<Instant> {
        match req.timeout {
            Timeout::Zero => {
                Some(Instant::now() + self.pool.opts.connect_timeout + self.op_timeout())
            }
            _ => deadline,
        }
    }

    /// One round of a lock acquire: a try on a shared session, then a wait on one of its own.
    async fn lock_round(
        self: &Arc<Self>,
        req: &AcquireRequest,
        deadline: Option<Instant>,
    ) -> std::result::Result<Option<Got>, Miss> {
        let name = names::lock_name(&req.name);
        let until = self.until(req, deadline);
        let table = self.pool.opts.fencing_table.clone();
        let u = stop(race(self.pool.shared(), until, req.cancel.as_ref(), &self.closed).await)??;
        let s = u.session.clone();
        let undo_name = name.clone();
        let token = self
            .attempt(
                req,
                &s,
                if self.pool.opts.uuid_short {
                    try_with_uuid(name.clone())
                } else {
                    try_and_bump(&table, name.clone())
                },
                until,
                move |t| t.map(|_| release_all(vec![undo_name])),
            )
            .await?;
        if let Some(token) = token {
            return Ok(Some(Got::new(s, Some(u), vec![name], token)));
        }
        drop(u);
        if req.timeout == Timeout::Zero {
            return Ok(None);
        }
        let w = stop(
            race(
                self.pool.for_wait(),
                deadline,
                req.cancel.as_ref(),
                &self.closed,
            )
            .await,
        )??;
        let secs = match deadline {
            None => FOREVER_SECS,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64,
        };
        let session = w.clone();
        let waiting = wait_for(name.clone(), secs);
        let mut q = tokio::spawn(async move { session.run(None, waiting).await });
        match race(&mut q, deadline, req.cancel.as_ref(), &self.closed).await {
            Waited::Done(Ok(Ok((Some(1), uuid)))) => {
                let bumped = if self.pool.opts.uuid_short {
                    Ok(uuid)
                } else {
                    self.attempt(req, &w, bump(&table, name.clone()), None, |_| None)
                        .await
                };
                match bumped {
                    Ok(Some(token)) => {
                        let got = Got::new(w.clone(), None, vec![name], token);
                        Ok(Some(got))
                    }
                    other => {
                        // Without a token the grant cannot be handed out: give it back.
                        let _ = w
                            .run(Some(self.op_timeout()), release_all(vec![name]))
                            .await;
                        w.end_wait();
                        Err(match other {
                            Err(m) => m,
                            _ => Miss::Fault(Failure::new(
                                "the fencing counter gave no token",
                                false,
                            )),
                        })
                    }
                }
            }
            Waited::Done(Ok(Ok(_))) => {
                w.end_wait();
                Err(Miss::Again)
            }
            Waited::Done(Ok(Err(f))) => {
                w.end_wait();
                Err(Miss::Fault(f))
            }
            Waited::Done(Err(e)) => {
                w.end_wait();
                Err(Miss::Fault(Failure::new(e.to_string(), false)))
            }
            other => {
                let inner = self.clone();
                let (confirmed, ended) = tokio::sync::oneshot::channel();
                tokio::spawn(async move { inner.finish_wait(w, q, name, confirmed).await });
                let _ = tokio::time::timeout(KILL_SETTLE, ended).await;
                Err(Miss::Stop(interruption(&other)))
            }
        }
    }

    /// Ends a wait whose caller stopped waiting. While its `GET_LOCK` may still be on the way or
    /// waiting, the session is ended on the server with `KILL CONNECTION` from another session:
    /// that ends the wait whenever its statement arrives, and frees a grant that raced it (a
    /// `KILL QUERY` could land before the statement and miss it, leaving a wait the server never
    /// ends). `confirmed` is told once the server has the kill. A wait that already answered is
    /// cleaned up on its own session. Each step is bounded by `op_timeout`.
    async fn finish_wait(
        self: Arc<Self>,
        w: Arc<Session>,
        mut q: JoinHandle<std::result::Result<WaitAnswer, Failure>>,
        name: String,
        confirmed: tokio::sync::oneshot::Sender<()>,
    ) {
        let limit = self.op_timeout();
        if !q.is_finished() {
            match tokio::time::timeout(limit, self.pool.shared()).await {
                Ok(Ok(u)) => {
                    let _ = u.session.run(Some(limit), kill_connection(w.id)).await;
                }
                _ => tracing::debug!(backend = BACKEND, "no session to end a wait from"),
            }
            let _ = confirmed.send(());
            // The wait now ends with an error: its session is gone, and so is anything it was
            // granted.
            w.kill("it was ended to stop a wait");
            if tokio::time::timeout(limit, &mut q).await.is_err() {
                q.abort();
            }
        } else {
            let _ = confirmed.send(());
            match q.await {
                Ok(Ok((Some(1), _))) => {
                    let _ = w.run(Some(limit), release_all(vec![name])).await;
                    w.end_wait();
                }
                // Not granted: the server's own timeout.
                Ok(Ok(_)) if !w.is_dead() => w.end_wait(),
                _ => w.kill("a wait could not be ended"),
            }
        }
        if self.closed.is_cancelled() {
            // The provider closed while this wait ended: the sessions opened for it go too.
            for s in self.pool.drain() {
                s.close(limit).await;
            }
        }
    }

    /// One round of a semaphore acquire: tries of the free permits, never waiting, until the
    /// deadline; woken at once by a permit freed in this process, else polled.
    async fn slot_round(
        self: &Arc<Self>,
        req: &AcquireRequest,
        entry: &Arc<Entry<SemState>>,
        deadline: Option<Instant>,
    ) -> std::result::Result<Option<Got>, Miss> {
        let LockKind::Semaphore { max_count, permits } = req.kind else {
            return Ok(None);
        };
        let until = self.until(req, deadline);
        let table = self.pool.opts.fencing_table.clone();
        let mut backoff = Duration::from_millis(2);
        loop {
            let freed = entry.state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let u =
                stop(race(self.pool.shared(), until, req.cancel.as_ref(), &self.closed).await)??;
            let s = u.session.clone();
            let claims = Claims::new(entry.clone());
            let mut got: Vec<u32> = Vec::new();
            let first = (std::process::id() ^ self.held.next_id() as u32) % max_count;
            let mut order = (0..max_count).map(|i| (first + i) % max_count);
            while got.len() < permits as usize {
                // Claim as many untried, unclaimed slots as are still needed, and try them in
                // one statement.
                let need = permits as usize - got.len();
                let batch: Vec<u32> = order
                    .by_ref()
                    .filter(|&i| claims.claim(i))
                    .take(need)
                    .collect();
                if batch.is_empty() {
                    break;
                }
                let names: Vec<String> = batch.iter().map(|&i| slot_name(&req.name, i)).collect();
                let undo_names = names.clone();
                let undo_claims = claims.clone_all();
                let undo = move |won: Vec<bool>| {
                    drop(undo_claims);
                    let won: Vec<String> = undo_names
                        .into_iter()
                        .zip(won)
                        .filter_map(|(n, w)| w.then_some(n))
                        .collect();
                    (!won.is_empty()).then(|| release_all(won))
                };
                let won = match self.attempt(req, &s, try_all(names), until, undo).await {
                    Ok(won) => won,
                    Err(m) => {
                        self.give_back(&s, &req.name, &got).await;
                        return Err(m);
                    }
                };
                for (i, w) in batch
                    .into_iter()
                    .zip(won.into_iter().chain(std::iter::repeat(false)))
                {
                    if w {
                        got.push(i);
                    } else {
                        claims.unclaim(i);
                    }
                }
            }
            if got.len() == permits as usize {
                let fence = semaphore_fence(&req.name);
                let held_names: Vec<String> =
                    got.iter().map(|&i| slot_name(&req.name, i)).collect();
                let undo_names = held_names.clone();
                let token = if self.pool.opts.uuid_short {
                    uuid_short()
                } else {
                    bump(&table, fence)
                };
                let bumped = self
                    .attempt(req, &s, token, until, move |_| {
                        Some(release_all(undo_names))
                    })
                    .await;
                match bumped {
                    Ok(Some(token)) => {
                        claims.keep();
                        let mut g = Got::new(s, Some(u), held_names, token);
                        g.slots = got;
                        return Ok(Some(g));
                    }
                    Ok(None) => {
                        self.give_back(&s, &req.name, &got).await;
                        return Err(Miss::Fault(Failure::new(
                            "the fencing counter gave no token",
                            false,
                        )));
                    }
                    Err(m) => {
                        if !matches!(m, Miss::Stop(_)) {
                            self.give_back(&s, &req.name, &got).await;
                        }
                        return Err(m);
                    }
                }
            }
            self.give_back(&s, &req.name, &got).await;
            drop(claims);
            drop(u);
            if req.timeout == Timeout::Zero {
                return Ok(None);
            }
            let pause = async {
                tokio::select! {
                    _ = freed => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
            };
            stop(race(pause, deadline, req.cancel.as_ref(), &self.closed).await)?;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Releases the permit `slots` an attempt won but cannot keep.
    async fn give_back(&self, s: &Arc<Session>, name: &str, slots: &[u32]) {
        if slots.is_empty() {
            return;
        }
        let names = slots.iter().map(|&i| slot_name(name, i)).collect();
        let _ = s.run(Some(self.op_timeout()), release_all(names)).await;
    }

    fn grant(self: &Arc<Self>, req: &AcquireRequest, got: Got, turn: Turn, start: Instant) -> Held {
        let id = self.held.next_id();
        let held = Arc::new(MyHeld {
            id,
            token: got.token,
            lost: LostSignal::new(),
            released: AtomicBool::new(false),
            grant: Mutex::new(Some(Grant {
                session: got.session.clone(),
                names: got.names,
                turn,
            })),
            op_timeout: self.op_timeout(),
            runtime: tokio::runtime::Handle::current(),
            owner: Arc::downgrade(self),
            target: req.target(BACKEND).to_string(),
        });
        self.held.insert(id, &held);
        let dependent: Arc<dyn Dependent> = held.clone();
        got.session.hold(id, Arc::downgrade(&dependent));
        // Only now may the session serve a wait again, or be shared.
        if got.shared.is_none() {
            got.session.end_wait();
        }
        drop(got.shared);
        tracing::debug!(
            backend = BACKEND,
            token = got.token,
            waited_ms = start.elapsed().as_millis() as u64,
            "granted"
        );
        held
    }

    async fn inspect(self: Arc<Self>, name: String, kind: LockKind) -> Result<LockInfo> {
        let doing = format!("inspecting {:?}", name);
        let fail = |f: Failure| f.into_error(&self.pool.opts.label, &doing);
        if matches!(kind, LockKind::Read | LockKind::Write) {
            return Err(Error::invalid(
                "createReaderWriterLock",
                "is not available on MySQL: named locks (GET_LOCK) are exclusive",
            ));
        }
        self.ensure_table().await.map_err(fail)?;
        let table = (!self.pool.opts.uuid_short).then(|| self.pool.opts.fencing_table.clone());
        let (locks, fence, max) = match kind {
            LockKind::Semaphore { max_count, .. } => (
                (0..max_count)
                    .map(|i| slot_name(&name, i))
                    .collect::<Vec<_>>(),
                semaphore_fence(&name),
                max_count,
            ),
            _ => {
                let n = names::lock_name(&name);
                (vec![n.clone()], n, 1)
            }
        };
        let count = locks.len();
        let op: Op<(u32, Option<u64>)> = Box::new(move |c| {
            Box::pin(async move {
                let used = list("(IS_USED_LOCK(?) IS NOT NULL)", count).replace(", ", " + ");
                let mut params: Vec<mysql_async::Value> =
                    locks.into_iter().map(Into::into).collect();
                // With UUID_SHORT tokens no per-name token is kept.
                let sql = match table {
                    Some(table) => {
                        params.push(fence.into());
                        format!("SELECT ({used}), (SELECT token FROM {table} WHERE name = ?)")
                    }
                    None => format!("SELECT ({used}), NULL"),
                };
                let row: Option<(Option<u64>, Option<u64>)> = c.exec_first(sql, params).await?;
                let (used, token) = row.unwrap_or((None, None));
                Ok((used.unwrap_or(0) as u32, token))
            })
        });
        let u = self.pool.shared().await.map_err(fail)?;
        let (used, token) = u
            .session
            .run(Some(self.op_timeout()), op)
            .await
            .map_err(fail)?;
        Ok(LockInfo {
            held: used >= max,
            holders: Some(used),
            lease_remaining: None,
            fencing_token: token,
        })
    }
}

/// What an acquire round won: its session and the server lock names it holds there.
struct Got {
    session: Arc<Session>,
    /// The caller's use of a shared session, kept until the hold is registered (else the
    /// session could be picked for a wait in between).
    shared: Option<Use>,
    names: Vec<String>,
    slots: Vec<u32>,
    token: u64,
}

impl Got {
    fn new(session: Arc<Session>, shared: Option<Use>, names: Vec<String>, token: u64) -> Self {
        Self {
            session,
            shared,
            names,
            slots: Vec::new(),
            token,
        }
    }
}

/// Permit slots claimed in this process by one attempt; unclaimed on drop unless kept.
struct Claims {
    entry: Arc<Entry<SemState>>,
    mine: Arc<Mutex<Vec<u32>>>,
    kept: bool,
}

impl Claims {
    fn new(entry: Arc<Entry<SemState>>) -> Self {
        Self {
            entry,
            mine: Arc::new(Mutex::new(Vec::new())),
            kept: false,
        }
    }

    fn claim(&self, slot: u32) -> bool {
        let fresh = lock(&self.entry.state.claimed).insert(slot);
        if fresh {
            lock(&self.mine).push(slot);
        }
        fresh
    }

    fn unclaim(&self, slot: u32) {
        lock(&self.mine).retain(|&s| s != slot);
        lock(&self.entry.state.claimed).remove(&slot);
    }

    /// A second owner of the same claims, for an abandoned attempt's cleanup: the slots stay
    /// claimed until both are gone.
    fn clone_all(&self) -> Claims {
        Claims {
            entry: self.entry.clone(),
            mine: self.mine.clone(),
            kept: false,
        }
    }

    /// The claims now belong to a grant (its turn unclaims them on release).
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if self.kept || Arc::strong_count(&self.mine) > 1 {
            return;
        }
        let mine = std::mem::take(&mut *lock(&self.mine));
        let mut claimed = lock(&self.entry.state.claimed);
        for s in mine {
            claimed.remove(&s);
        }
        drop(claimed);
        self.entry.state.freed.notify_waiters();
    }
}

/// What a grant keeps of this process: its place in the in-process queue and, for a
/// semaphore, its permit slots.
enum Keep {
    Entry(#[allow(dead_code)] Arc<Entry<()>>),
    Slots(Arc<Entry<SemState>>, Vec<u32>),
}

/// A grant's share of this process; dropping it lets the next caller of this process in.
struct Turn {
    #[allow(dead_code)] // kept for its Drop
    ticket: Ticket,
    keep: Keep,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Keep::Slots(entry, slots) = &self.keep {
            let mut claimed = lock(&entry.state.claimed);
            for slot in slots {
                claimed.remove(slot);
            }
            drop(claimed);
            entry.state.freed.notify_waiters();
        }
    }
}

struct Grant {
    session: Arc<Session>,
    names: Vec<String>,
    turn: Turn,
}

struct MyHeld {
    id: u64,
    token: u64,
    lost: LostSignal,
    released: AtomicBool,
    grant: Mutex<Option<Grant>>,
    op_timeout: Duration,
    runtime: tokio::runtime::Handle,
    owner: Weak<Inner>,
    target: String,
}

impl MyHeld {
    /// Takes the grant (once) and returns the future that releases it on the server (within
    /// `op_timeout`, else the session is closed), then lets the next caller of this process in.
    fn take_and_release(&self) -> impl Future<Output = ()> + Send + use<> {
        let grant = lock(&self.grant).take();
        self.released.store(true, Ordering::Release);
        if let Some(owner) = self.owner.upgrade() {
            owner.held.remove(self.id);
        }
        let (id, op) = (self.id, self.op_timeout);
        async move {
            let Some(grant) = grant else { return };
            let s = grant.session;
            if !s.is_dead() {
                // A failure ends the session, which frees the lock on the server.
                let _ = s.run(Some(op), release_all(grant.names)).await;
            }
            s.forget(id);
            drop(grant.turn);
        }
    }
}

impl Dependent for MyHeld {
    fn session_ended(&self, reason: &str) {
        let grant = lock(&self.grant).take();
        if grant.is_some() {
            self.lost.fire(reason);
            if let Some(owner) = self.owner.upgrade() {
                owner.held.remove(self.id);
            }
        }
        drop(grant);
    }
}

impl HeldLock for MyHeld {
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
        let releasing = self.take_and_release();
        Box::pin(async move {
            releasing.await;
            Ok(())
        })
    }
}

impl Drop for MyHeld {
    fn drop(&mut self) {
        if lock(&self.grant).is_some() {
            // Dropped without release (a garbage-collected handle): release in the background.
            let releasing = self.take_and_release();
            self.runtime.spawn(releasing);
        }
    }
}

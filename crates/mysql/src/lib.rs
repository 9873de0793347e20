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
//! | `acquire` with `timeout` 0 (try) | `op_timeout` (5 s), connecting included (its one retry too) |
//! | `release` | `op_timeout`; no answer closes the session (the server frees its locks) |
//! | `inspect` | `op_timeout` |
//!
//! [`FairQueue`]: distlock_core::FairQueue

mod config;
mod held;
mod mutex;
pub mod names;
mod semaphore;
mod session;
mod statements;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use distlock_core::two_phase;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, End, Error, Fault, LockInfo, LockKind, Policy,
    ProviderCore, ProviderState, Result, Turns,
};
use mysql_async::prelude::Queryable;
use tokio::sync::OnceCell;

pub use config::MySqlOptions;
use held::{MyHeld, SemState};
use session::{Op, Pool, failed};
use statements::{list, ping, semaphore_fence, slot_name};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "mysql";

/// How an acquire spends its budget (core's `Patience`); the try's bound is the provider's
/// `op_timeout`, connecting included, set per provider ([`Inner::policy`]).
const POLICY: Policy = Policy {
    fault_pause: two_phase::FAULT_PAUSE,
    // A busy lock is waited for on the server (`GET_LOCK` with a timeout): nothing to poll.
    busy_poll: None,
    // A try goes again once, at once: a pooled session the server ended while it was idle (a
    // restart, `wait_timeout`) is only found out when used, and is not a reason to fail.
    try_retries: 1,
    try_budget: Duration::ZERO,
};

/// A lock provider on one MySQL or MariaDB server.
#[derive(Clone)]
pub struct MySqlBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    core: ProviderCore<MyHeld>,
    turns: Turns<(), SemState>,
    table: OnceCell<()>,
    keepalive_started: OnceLock<()>,
}

impl MySqlBackend {
    /// A provider with these options. Connects lazily, on the first acquire.
    pub fn new(opts: MySqlOptions) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                pool: Pool::new(opts),
                core: ProviderCore::new(BACKEND),
                turns: Turns::default(),
                table: OnceCell::new(),
                keepalive_started: OnceLock::new(),
            }),
        })
    }

    /// Server connections open now.
    pub fn connections(&self) -> usize {
        self.inner.pool.len()
    }
}

impl Backend for MySqlBackend {
    fn core(&self) -> &dyn ProviderState {
        &self.inner.core
    }

    fn observe(&self, observer: distlock_core::Observer) {
        let _ = self.inner.pool.observer.set(observer);
    }

    fn begin(&self, req: AcquireRequest) -> Result<Acquiring> {
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
                let admitted = inner.turns.lock(&req, || ());
                Ok(Box::pin(mutex::acquire(inner, req, admitted)))
            }
            LockKind::Semaphore { .. } => {
                let admitted = inner.turns.semaphore(&req, BACKEND, SemState::default)?;
                Ok(Box::pin(semaphore::acquire(inner, req, admitted)))
            }
        }
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move { inner.inspect(name, kind).await })
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // MySQL's wording since its first release (the other backends say "the lock
            // provider"); kept so that what users match on does not change.
            let releasing: Vec<_> = inner
                .core
                .close("the provider was closed")
                .into_iter()
                .map(|h| h.take_and_release())
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
        let (every, closed) = (self.pool.opts.keepalive, self.core.closed().clone());
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
    async fn ensure_table(&self) -> std::result::Result<(), Fault> {
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
                u.session.run(Some(self.op_timeout()), op).await.map_err(|f| Fault {
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

    /// [`POLICY`] with this provider's bound for a try: `op_timeout` for connecting and the
    /// attempt together, as on PostgreSQL (a connect that would take longer is cut by it).
    fn policy(&self) -> Policy {
        Policy {
            try_budget: self.op_timeout(),
            ..POLICY
        }
    }

    /// What an acquire that ended without a grant returns; a fault that ended it names what
    /// was being done.
    fn finish<T>(&self, req: &AcquireRequest, end: End) -> Result<Option<T>> {
        match end {
            End::Failed(f) => {
                let doing = format!("acquiring {}", req.target(BACKEND));
                Err(failed(f, self.label(), &doing))
            }
            end => end.into_result(req, BACKEND, self.label()),
        }
    }

    async fn inspect(self: Arc<Self>, name: String, kind: LockKind) -> Result<LockInfo> {
        let doing = format!("inspecting {:?}", name);
        let fail = |f: Fault| failed(f, &self.pool.opts.label, &doing);
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

//! One server connection, and the statements it runs.
//!
//! A session is either *shared* (it runs only statements that never wait on the server — the
//! `pg_try_…` attempts and the unlocks — pipelined from many callers, and it holds many locks),
//! or *busy* (one caller owns it: a blocking `pg_advisory_lock` is in flight, or, in transaction
//! scope, it holds that caller's lock inside an open transaction). A blocking wait only ever
//! starts on a session that holds nothing, so an unlock never queues behind a wait.
//!
//! When its connection ends (the server terminated the backend, the socket closed, a keepalive
//! probe failed) every lock the session held fires its lost signal, then gives its in-process
//! turn back (so the name is free in this process at once).
//!
//! The statements of the hot path (attempts, waits, unlocks, resets: [`Stmt`]) go on the extended
//! protocol with their values bound. In session scope each text is a named prepared statement,
//! prepared on a session's first use of it and reused by every later call on that session, so
//! the server parses and plans it once per session. In transaction scope (the mode for
//! transaction poolers such as PgBouncer, where consecutive transactions of one client may run on
//! different server connections) a named statement could be missing on the server connection the
//! pooler picks next, so there each statement is parsed unnamed in the same round trip as its
//! execution: bound values, nothing kept on the server between transactions. The rest (creating
//! the fencing sequence, `inspect`, the keepalive probe) is rare and uses the simple protocol.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use distlock_core::LostSignal;
use distlock_core::sync::lock;
use distlock_core::two_phase::{Load, Pick, Usage, pick};
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::fault::describe;
use crate::socket::SocketIo;

/// Who keeps the sessions (the pool), told when one frees up or ends.
pub(crate) trait Owner: Send + Sync {
    /// A session may now be free for another caller.
    fn freed(&self);
    /// A session is ending with locks on it (told before their lost signals fire).
    fn lost_locks(&self);
    /// Session `id` ended.
    fn ended(&self, id: u64);
}

/// A statement's answer to come.
pub(crate) type Query = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>>
            + Send,
    >,
>;

/// What runs when a session dies with a lock on it, after the lock's lost signal fired.
pub(crate) type OnLost = Box<dyn FnOnce() + Send>;

/// A value bound to a statement parameter.
#[derive(Clone, Debug)]
pub(crate) enum Param {
    Int8(i64),
    Int4(i32),
    Int8Array(Vec<i64>),
    Text(String),
}

impl Param {
    fn ty(&self) -> Type {
        match self {
            Param::Int8(_) => Type::INT8,
            Param::Int4(_) => Type::INT4,
            Param::Int8Array(_) => Type::INT8_ARRAY,
            Param::Text(_) => Type::TEXT,
        }
    }

    fn value(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Int8(v) => v,
            Param::Int4(v) => v,
            Param::Int8Array(v) => v,
            Param::Text(v) => v,
        }
    }
}

/// A statement of the hot path, sent on the extended protocol with its values bound.
#[derive(Clone, Debug)]
pub(crate) struct Stmt {
    /// One statement, `$n` for the parameters, each with an explicit cast: the text alone fixes
    /// the parameter types (it is the key of a session's prepared statements).
    pub(crate) text: String,
    /// The values of `$1`, `$2`, ….
    pub(crate) params: Vec<Param>,
    /// Opens a transaction first: `BEGIN`, sent in the same round trip.
    pub(crate) begin: bool,
}

impl Stmt {
    /// `text` with `params`, outside a transaction of its own.
    pub(crate) fn new(text: impl Into<String>, params: Vec<Param>) -> Self {
        Stmt {
            text: text.into(),
            params,
            begin: false,
        }
    }
}

/// A statement ready to send: prepared, or to be parsed unnamed along with its execution.
enum Ready<'a> {
    Named(Statement, Vec<&'a (dyn ToSql + Sync)>),
    Unnamed(&'a str, Vec<(&'a (dyn ToSql + Sync), Type)>),
}

impl Ready<'_> {
    /// Sends the statement (tokio-postgres writes it on this future's first poll) and collects
    /// its rows.
    async fn send(&self, client: &Client) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        match self {
            Ready::Named(statement, params) => client.query(statement, params).await,
            Ready::Unnamed(text, params) => client.query_typed(text, params).await,
        }
    }
}

/// One server connection.
pub(crate) struct Session {
    pub(crate) id: u64,
    client: Client,
    st: Mutex<SessionState>,
    dead: CancellationToken,
    /// The connection's task on the runtime (aborted to close it)…
    driver: Mutex<Option<AbortHandle>>,
    /// …or its socket, read on the event loop (shut down to close it), with the server's
    /// address for cancel requests.
    io: Option<(Arc<SocketIo>, String, u16)>,
    owner: Weak<dyn Owner>,
    /// Named prepared statements by text, each prepared on first use (concurrent first users
    /// wait for one prepare); `None` in transaction scope, where statements are parsed unnamed.
    /// The texts come from a small fixed set (a few per scope and key space), so this stays small.
    prepared: Option<Mutex<HashMap<String, Arc<OnceCell<Statement>>>>>,
}

#[derive(Default)]
struct SessionState {
    /// Locks held on this session, by grant id.
    held: HashMap<u64, (LostSignal, OnLost)>,
    /// Owned by one caller (blocking wait, or a transaction-scoped lock).
    busy: bool,
    /// Statements sent and not yet answered.
    inflight: usize,
    /// Why the connection ended.
    death: Option<String>,
}

/// Counts a statement in flight for as long as it lives.
struct Inflight<'a>(&'a Session);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        lock(&self.0.st).inflight -= 1;
    }
}

impl Session {
    /// A session over `client` (its socket `io` when read on the event loop), kept by `owner`;
    /// `prepare`: whether it keeps named prepared statements (session scope).
    pub(crate) fn new(
        id: u64,
        client: Client,
        io: Option<(Arc<SocketIo>, String, u16)>,
        owner: Weak<dyn Owner>,
        prepare: bool,
    ) -> Self {
        Session {
            id,
            client,
            st: Mutex::new(SessionState::default()),
            dead: CancellationToken::new(),
            driver: Mutex::new(None),
            io,
            owner,
            prepared: prepare.then(Mutex::default),
        }
    }

    /// The connection's task on the runtime, aborted to close it.
    pub(crate) fn set_driver(&self, driver: AbortHandle) {
        *lock(&self.driver) = Some(driver);
    }

    /// Whether its socket is read on the event loop.
    pub(crate) fn on_loop(&self) -> bool {
        self.io.is_some()
    }

    /// What the pool's pick needs to know of it.
    pub(crate) fn load(&self) -> Load {
        self.load_in(&lock(&self.st))
    }

    fn load_in(&self, st: &SessionState) -> Load {
        Load {
            dead: self.is_dead() || st.death.is_some(),
            owned: st.busy,
            inflight: st.inflight,
            holds: !st.held.is_empty(),
        }
    }

    /// Takes the session for `usage` if it is still free for it (by the pool's one rule,
    /// [`pick`]); a session taken for [`Usage::Own`] is marked busy at once.
    pub(crate) fn take(&self, usage: Usage) -> bool {
        let mut st = lock(&self.st);
        let free = pick(&[self.load_in(&st)], usage, false) == Pick::Take(0);
        if free && usage == Usage::Own {
            st.busy = true;
        }
        free
    }

    /// Whether the keepalive probes it: it holds locks, is not owned by a waiter (in
    /// transaction scope a holder owns its session) and has not ended.
    pub(crate) fn probed(&self, transaction_scope: bool) -> bool {
        let st = lock(&self.st);
        !st.held.is_empty() && (!st.busy || transaction_scope) && st.death.is_none()
    }

    /// Counts a statement in flight until the guard drops.
    fn track(&self) -> Inflight<'_> {
        lock(&self.st).inflight += 1;
        Inflight(self)
    }

    /// Runs `sql` on the simple protocol (one round trip, several statements allowed; for the
    /// statements off the hot path) and returns the columns of each row as text.
    pub(crate) async fn query(
        &self,
        sql: &str,
    ) -> std::result::Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
        let _guard = self.track();
        let messages = self.client.simple_query(sql).await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Prepares what `stmt` needs on this session, unless it already did (nothing to do for
    /// unnamed statements).
    pub(crate) async fn prepare(
        &self,
        stmt: &Stmt,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let _guard = self.track();
        if stmt.begin {
            self.statement("BEGIN").await?;
        }
        self.statement(&stmt.text).await?;
        Ok(())
    }

    /// Runs `stmt` (after `BEGIN`, in the same round trip, if it asks for one) and returns its
    /// rows. Concurrent calls pipeline: a prepared statement is sent at once, without waiting
    /// for other callers' answers.
    pub(crate) async fn execute(
        &self,
        stmt: &Stmt,
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let _guard = self.track();
        let main = self.ready(&stmt.text, &stmt.params).await?;
        let rows = if stmt.begin {
            let begin = self.ready("BEGIN", &[]).await?;
            // Polled in this order, `BEGIN` is written first; both are in flight together.
            let (began, rows) =
                tokio::join!(biased; begin.send(&self.client), main.send(&self.client));
            began?;
            rows?
        } else {
            main.send(&self.client).await?
        };
        Ok(rows)
    }

    /// Sends `stmt` now if this session has it prepared already, and returns its answer to
    /// come; `None` if it would need a prepare (or a `BEGIN`) first. When this returns `Some`,
    /// the statement is queued on the connection ahead of anything sent on it afterwards
    /// (tokio-postgres sends a request when its future is first polled, and runs requests in
    /// that order).
    pub(crate) fn send_prepared(self: &Arc<Self>, stmt: &Stmt) -> Option<Query> {
        if stmt.begin {
            return None;
        }
        let statement = lock(self.prepared.as_ref()?)
            .get(&stmt.text)?
            .get()?
            .clone();
        let (s, params) = (self.clone(), stmt.params.clone());
        let mut answer: Query = Box::pin(async move {
            let _guard = s.track();
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::value).collect();
            let rows = s.client.query(&statement, &values).await?;
            Ok(rows)
        });
        // The first poll sends it; an answer that is already there is kept.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(done) = answer.as_mut().poll(&mut cx) {
            return Some(Box::pin(std::future::ready(done)));
        }
        Some(answer)
    }

    /// `text` with `params`, prepared if this session keeps prepared statements.
    async fn ready<'a>(
        &self,
        text: &'a str,
        params: &'a [Param],
    ) -> std::result::Result<Ready<'a>, tokio_postgres::Error> {
        Ok(match self.statement(text).await? {
            Some(statement) => Ready::Named(statement, params.iter().map(Param::value).collect()),
            None => Ready::Unnamed(text, params.iter().map(|p| (p.value(), p.ty())).collect()),
        })
    }

    /// The prepared statement for `text` (prepared now if this session has not yet), or `None`
    /// when this session parses statements unnamed.
    async fn statement(
        &self,
        text: &str,
    ) -> std::result::Result<Option<Statement>, tokio_postgres::Error> {
        let Some(prepared) = &self.prepared else {
            return Ok(None);
        };
        let cell = {
            let mut prepared = lock(prepared);
            match prepared.get(text) {
                Some(cell) => cell.clone(),
                None => prepared.entry(text.to_owned()).or_default().clone(),
            }
        };
        let statement = cell
            .get_or_try_init(|| async {
                // The parameter types come from the casts in the text.
                let statement = self.client.prepare(text).await?;
                Ok::<_, tokio_postgres::Error>(statement)
            })
            .await?;
        Ok(Some(statement.clone()))
    }

    /// Asks the server to cancel whatever this session is running (a new short connection).
    pub(crate) async fn cancel_running(&self, mut tls: MakeRustlsConnect) {
        let token = self.client.cancel_token();
        let sent = match &self.io {
            None => token.cancel_query(tls).await,
            // A connection opened outside tokio-postgres: open the cancel request's ourselves.
            Some((_, host, port)) => {
                match tokio::net::TcpStream::connect((host.as_str(), *port)).await {
                    Ok(tcp) => match MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                        &mut tls, host,
                    ) {
                        Ok(connect) => token.cancel_query_raw(tcp, connect).await,
                        Err(e) => {
                            tracing::warn!(backend = BACKEND, session = self.id, error = %e, "cancel request failed");
                            return;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(backend = BACKEND, session = self.id, error = %e, "cancel request failed");
                        return;
                    }
                }
            }
        };
        if let Err(e) = sent {
            tracing::warn!(backend = BACKEND, session = self.id, error = %describe(&e), "cancel request failed");
        }
    }

    /// Whether the connection has ended.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.is_cancelled()
    }

    /// Records a lock held on this session; if the session dies, `lost` fires and then
    /// `on_lost` runs. If it already died, both happen at once.
    pub(crate) fn hold(&self, id: u64, lost: LostSignal, on_lost: OnLost) {
        let mut st = lock(&self.st);
        if let Some(reason) = st.death.clone() {
            drop(st);
            lost.fire(reason);
            on_lost();
            return;
        }
        st.held.insert(id, (lost, on_lost));
    }

    /// Forgets a released lock; a session left holding nothing is free for blocking waits.
    pub(crate) fn forget(&self, id: u64) {
        let empty = {
            let mut st = lock(&self.st);
            st.held.remove(&id);
            st.held.is_empty()
        };
        if empty && let Some(owner) = self.owner.upgrade() {
            owner.freed();
        }
    }

    /// Hands a busy session back to the pool.
    pub(crate) fn unbusy(&self) {
        lock(&self.st).busy = false;
        if let Some(owner) = self.owner.upgrade() {
            owner.freed();
        }
    }

    /// Marks the session dead and fires the lost signal of every lock it held.
    pub(crate) fn die(&self, reason: String) {
        let held = {
            let mut st = lock(&self.st);
            if st.death.is_some() {
                return;
            }
            st.death = Some(reason.clone());
            std::mem::take(&mut st.held)
        };
        self.dead.cancel();
        let owner = self.owner.upgrade();
        if !held.is_empty() {
            tracing::warn!(backend = BACKEND, session = self.id, locks = held.len(), %reason, "session lost");
            if let Some(owner) = &owner {
                owner.lost_locks();
            }
        }
        // Every signal first, so no holder can still believe it holds when a turn moves on.
        for (lost, _) in held.values() {
            lost.fire(reason.clone());
        }
        for (_, on_lost) in held.into_values() {
            on_lost();
        }
        if let Some(owner) = owner {
            owner.ended(self.id);
        }
    }

    /// Closes the connection now (the server frees the session's locks when it sees the socket
    /// close).
    pub(crate) fn kill(&self, reason: String) {
        self.die(reason);
        if let Some(driver) = lock(&self.driver).take() {
            driver.abort();
        }
        if let Some((io, _, _)) = &self.io {
            io.close();
        }
    }

    /// Waits up to `op` for `q`; `None` if it got no answer. On a session read on the event
    /// loop, `op` is counted from when the loop could have written the statement, and a timeout
    /// is only believed once the loop has read the socket after it: a statement sent from
    /// another thread while JavaScript blocked the loop goes out only when it resumes, and an
    /// answer may sit in the kernel while it is blocked.
    pub(crate) async fn within<F: std::future::Future + Unpin>(
        &self,
        op: Duration,
        q: &mut F,
    ) -> Option<F::Output> {
        let Some((io, _, _)) = self.io.as_ref() else {
            return tokio::time::timeout(op, &mut *q).await.ok();
        };
        if !io.on_loop() {
            // Off the loop: the clock starts once the loop has polled the connection after
            // the statement was queued (the poll that writes it).
            tokio::select! {
                biased;
                out = &mut *q => return Some(out),
                _ = io.looked() => {}
            }
        }
        if let Ok(out) = tokio::time::timeout(op, &mut *q).await {
            return Some(out);
        }
        let asked = Instant::now();
        let _ = io.looked().await;
        if let Some(out) = now_or_never(q) {
            return Some(out);
        }
        if asked.elapsed() < LOOP_LATE {
            // The loop was running: the server is silent.
            return None;
        }
        // The loop was blocked when the time ran out: the answer may only now be on its way.
        tokio::time::timeout(op, &mut *q).await.ok()
    }
}

/// How late the event loop may read a socket it was asked to and still count as running.
const LOOP_LATE: Duration = Duration::from_millis(20);

/// `q`'s output if it is ready now.
fn now_or_never<F: std::future::Future + Unpin>(q: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(q).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

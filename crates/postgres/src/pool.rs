//! Server sessions and the bounded pool they live in.
//!
//! A session is either *shared* (it runs only statements that never wait on the server — the
//! `pg_try_…` attempts and the unlocks — pipelined from many callers, and it holds many locks),
//! or *busy* (one caller owns it: a blocking `pg_advisory_lock` is in flight, or, in transaction
//! scope, it holds that caller's lock inside an open transaction). A blocking wait only ever
//! starts on a session that holds nothing, so an unlock never queues behind a wait.
//!
//! Each session's connection runs on its own task: on the host's event loop when the provider
//! was given one and the server is a single TCP host ([`crate::socket`]; the statements of calls
//! made on the JS thread are then written and answered there), else on the tokio runtime. When it ends (the server terminated the
//! backend, the socket closed, a keepalive probe failed) every lock the session held fires its
//! lost signal, then gives its in-process turn back (so the name is free in this process at once).
//!
//! Connections are opened on their own task, bounded by `connect_timeout`: a caller that stops
//! waiting (deadline, cancel) does not waste the login, the session joins the pool.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use distlock_core::reactor::Reactor;
use distlock_core::{Error, LostSignal, Result};
use tokio::sync::{Notify, OnceCell};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::PgOptions;
use crate::machine::{Load, free_for_wait, shared_rank, transient_sqlstate};
use crate::socket::{LoopSocket, SocketIo};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few field updates; a panic cannot leave them half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Describes a driver error with its causes, without credentials (tokio-postgres never puts the
/// password in an error).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    distlock_core::error::with_sources(e)
}

/// A server error or an unreachable server, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) message: String,
    /// The connection broke or the server is restarting (not a refusal such as a bad password):
    /// a waiter with time left reconnects and queues again.
    pub(crate) transient: bool,
}

impl Fault {
    pub(crate) fn into_error(self, server: &str) -> Error {
        let cause = cause_of(server, &self.message);
        Error::backend(BACKEND, self.message, cause)
    }
}

/// The facts of a failure on `server` whose message came from [`describe`]: its SQLSTATE is
/// the `(SQLSTATE xxxxx)` that `describe` appends to a server's error.
pub(crate) fn cause_of(server: &str, message: &str) -> distlock_core::Cause {
    let sqlstate = message.rfind("(SQLSTATE ").and_then(|at| {
        let code = &message[at + "(SQLSTATE ".len()..];
        let code = code.get(..5)?;
        code.chars()
            .all(|c| c.is_ascii_alphanumeric())
            .then(|| code.to_owned())
    });
    distlock_core::Cause {
        server: Some(server.to_owned()),
        sqlstate,
        message: Some(message.to_owned()),
        ..Default::default()
    }
    .with_os_error_in(message)
}

/// Whether a driver error is one a reconnect can cure: the connection broke (I/O, closed,
/// reset), the server is shutting down, starting up or out of connections, or our statement
/// was cancelled by someone else.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    transient_sqlstate(e.code().map(|c| c.code()))
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
    pool: Weak<Pool>,
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
    /// When the server last answered a statement on this session.
    heard: Option<Instant>,
}

/// Counts a statement in flight for as long as it lives.
struct Inflight<'a>(&'a Session);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        lock(&self.0.st).inflight -= 1;
    }
}

impl Session {
    /// Counts a statement in flight until the guard drops.
    fn track(&self) -> Inflight<'_> {
        lock(&self.st).inflight += 1;
        Inflight(self)
    }

    fn heard(&self) {
        lock(&self.st).heard = Some(Instant::now());
    }

    /// Runs `sql` on the simple protocol (one round trip, several statements allowed; for the
    /// statements off the hot path) and returns the columns of each row as text.
    pub(crate) async fn query(
        &self,
        sql: &str,
    ) -> std::result::Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
        let _guard = self.track();
        let messages = self.client.simple_query(sql).await?;
        self.heard();
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
        self.heard();
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
            s.heard();
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
                self.heard();
                Ok::<_, tokio_postgres::Error>(statement)
            })
            .await?;
        Ok(Some(statement.clone()))
    }

    /// Whether the server answered a statement on this session at or after `t`.
    pub(crate) fn heard_since(&self, t: Instant) -> bool {
        lock(&self.st).heard.is_some_and(|h| h >= t)
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
        if empty && let Some(pool) = self.pool.upgrade() {
            pool.changed.notify_waiters();
        }
    }

    /// Hands a busy session back to the pool.
    pub(crate) fn unbusy(&self) {
        lock(&self.st).busy = false;
        if let Some(pool) = self.pool.upgrade() {
            pool.changed.notify_waiters();
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
        if !held.is_empty() {
            tracing::warn!(backend = BACKEND, session = self.id, locks = held.len(), %reason, "session lost");
            if let Some(pool) = self.pool.upgrade()
                && !pool.closing.load(Ordering::Acquire)
            {
                pool.lost_one.store(true, Ordering::Release);
                pool.emit(distlock_core::BackendEvent::Disconnected {
                    server: pool.opts.server(),
                });
            }
        }
        // Every signal first, so no holder can still believe it holds when a turn moves on.
        for (lost, _) in held.values() {
            lost.fire(reason.clone());
        }
        for (_, on_lost) in held.into_values() {
            on_lost();
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.remove(self.id);
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

/// The bounded set of sessions of one provider.
pub(crate) struct Pool {
    pub(crate) opts: PgOptions,
    pub(crate) tls: MakeRustlsConnect,
    /// The host's event loop, if the provider was given one.
    reactor: Mutex<Option<Arc<dyn Reactor>>>,
    st: Mutex<PoolState>,
    changed: Notify,
    next_id: AtomicU64,
    /// Whether a session was ever opened: until then a server that cannot be reached is taken
    /// for a configuration error (wrong host, port or credentials), not a passing fault.
    ever_connected: AtomicBool,
    /// Who hears that a session with locks died, and that a session opened after that.
    pub(crate) observer: OnceLock<distlock_core::Observer>,
    /// A session with locks died, and no session has opened since.
    lost_one: AtomicBool,
    /// The provider is closing: its sessions end on purpose.
    pub(crate) closing: AtomicBool,
}

#[derive(Default)]
struct PoolState {
    sessions: Vec<Arc<Session>>,
    opening: usize,
}

/// Counts a connection being opened until the login ends, whoever waits for it.
struct Opening(Arc<Pool>);

impl Drop for Opening {
    fn drop(&mut self) {
        lock(&self.0.st).opening -= 1;
        self.0.changed.notify_waiters();
    }
}

/// Which kind of session a caller needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Pipelined with others; runs only statements that never wait.
    Shared,
    /// Owned by the caller until `unbusy`; holds no locks when handed out.
    Busy,
}

impl Pool {
    pub(crate) fn new(opts: PgOptions) -> Result<Arc<Self>> {
        let tls = opts.tls()?;
        Ok(Arc::new(Pool {
            opts,
            tls,
            reactor: Mutex::new(None),
            st: Mutex::new(PoolState::default()),
            changed: Notify::new(),
            next_id: AtomicU64::new(1),
            ever_connected: AtomicBool::new(false),
            observer: OnceLock::new(),
            lost_one: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }))
    }

    /// Opens the sessions from now on with their sockets on `reactor`.
    pub(crate) fn attach(&self, reactor: Arc<dyn Reactor>) {
        *lock(&self.reactor) = Some(reactor);
    }

    /// Sessions whose socket is read on the event loop, out of those open.
    pub(crate) fn on_loop(&self) -> usize {
        lock(&self.st)
            .sessions
            .iter()
            .filter(|s| s.io.is_some())
            .count()
    }

    /// Whether a session was ever opened.
    fn emit(&self, event: distlock_core::BackendEvent) {
        if let Some(observe) = self.observer.get() {
            observe(event);
        }
    }

    pub(crate) fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Acquire)
    }

    /// Open connections (for tests and inspection).
    pub(crate) fn connections(&self) -> usize {
        lock(&self.st).sessions.len()
    }

    /// Every open session.
    pub(crate) fn sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.st).sessions.clone()
    }

    fn remove(&self, id: u64) {
        lock(&self.st).sessions.retain(|s| s.id != id);
        self.changed.notify_waiters();
    }

    /// A session of the kind asked for: an existing one, a new one while under the bound, or
    /// the next one to come free. The caller races this against its deadline and cancel.
    pub(crate) async fn session(
        self: &Arc<Self>,
        usage: Use,
    ) -> std::result::Result<Arc<Session>, Fault> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let may_open = {
                let mut st = lock(&self.st);
                if let Some(s) = pick(&st.sessions, usage) {
                    return Ok(s);
                }
                let room = st.sessions.len() + st.opening < self.opts.max_connections;
                if room {
                    st.opening += 1;
                }
                room
            };
            if may_open {
                let opening = Opening(self.clone());
                let login = tokio::spawn(async move {
                    let out = opening.0.open().await;
                    drop(opening);
                    out
                });
                let opened = match login.await {
                    Ok(opened) => opened?,
                    Err(e) => {
                        return Err(Fault {
                            message: format!("connecting to {}: {e}", self.opts.server()),
                            transient: false,
                        });
                    }
                };
                if let Some(s) = claim(&opened, usage) {
                    return Ok(s);
                }
                // Someone else took the new session first: look again.
                continue;
            }
            notified.await;
        }
    }

    /// Opens a session (not busy) and adds it to the pool.
    async fn open(self: &Arc<Self>) -> std::result::Result<Arc<Session>, Fault> {
        // tokio-postgres bounds the TCP connect only; bound the TLS and startup handshake too.
        let limit = self
            .opts
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(crate::config::DEFAULT_OP_TIMEOUT);
        let on_loop = lock(&self.reactor).clone().zip(self.loop_target());
        if let Some((reactor, (host, port))) = on_loop {
            return self.open_on_loop(reactor, host, port, limit).await;
        }
        let connecting = self.opts.config.connect(self.tls.clone());
        let (client, connection) = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(Fault {
                    message: format!("cannot connect to {}: {}", self.opts.server(), describe(&e)),
                    transient: is_transient(&e) && self.ever_connected(),
                });
            }
            Err(_) => {
                return Err(Fault {
                    message: format!(
                        "cannot connect to {}: no answer to the login within {} ms",
                        self.opts.server(),
                        limit.as_millis()
                    ),
                    transient: self.ever_connected(),
                });
            }
        };
        let session = self.adopt(client, None);
        let watched = session.clone();
        let server = self.opts.server();
        let driver = tokio::spawn(async move {
            let reason = match connection.await {
                Ok(()) => format!("the session on {server} was closed"),
                Err(e) => format!("the session on {server} ended: {}", describe(&e)),
            };
            watched.die(reason);
        });
        *lock(&session.driver) = Some(driver.abort_handle());
        Ok(session)
    }

    /// A new session over `client`, in the pool.
    fn adopt(
        self: &Arc<Self>,
        client: Client,
        io: Option<(Arc<SocketIo>, String, u16)>,
    ) -> Arc<Session> {
        self.ever_connected.store(true, Ordering::Release);
        if self.lost_one.swap(false, Ordering::AcqRel) {
            self.emit(distlock_core::BackendEvent::Reconnected {
                server: self.opts.server(),
            });
        }
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client,
            st: Mutex::new(SessionState::default()),
            dead: CancellationToken::new(),
            driver: Mutex::new(None),
            io,
            pool: Arc::downgrade(self),
            prepared: (self.opts.scope == crate::Scope::Session).then(Mutex::default),
        });
        tracing::debug!(backend = BACKEND, session = session.id, server = %self.opts.server(), on_loop = session.io.is_some(), "connected");
        lock(&self.st).sessions.push(session.clone());
        session
    }

    /// The one TCP host and port of the configuration, when its sessions can run on the event
    /// loop: several hosts (tried in turn, with `target_session_attrs`), `hostaddr` and Unix
    /// sockets stay with tokio-postgres's own connect on the runtime.
    fn loop_target(&self) -> Option<(String, u16)> {
        let c = &self.opts.config;
        let [Host::Tcp(host)] = c.get_hosts() else {
            return None;
        };
        if !c.get_hostaddrs().is_empty()
            || c.get_ports().len() > 1
            || c.get_target_session_attrs() != tokio_postgres::config::TargetSessionAttrs::Any
        {
            return None;
        }
        Some((host.clone(), c.get_ports().first().copied().unwrap_or(5432)))
    }

    /// Opens a session whose socket is read on the event loop: the TCP connect here, on the
    /// runtime (with tokio-postgres's socket options), then the login (TLS, startup,
    /// authentication) and the connection itself as a task of the loop.
    async fn open_on_loop(
        self: &Arc<Self>,
        reactor: Arc<dyn Reactor>,
        host: String,
        port: u16,
        limit: Duration,
    ) -> std::result::Result<Arc<Session>, Fault> {
        let refused = |e: &dyn std::fmt::Display| Fault {
            message: format!("cannot connect to {}: {e}", self.opts.server()),
            transient: self.ever_connected(),
        };
        let timed_out = || Fault {
            message: format!(
                "cannot connect to {}: no answer to the login within {} ms",
                self.opts.server(),
                limit.as_millis()
            ),
            transient: self.ever_connected(),
        };
        let start = Instant::now();
        let tcp = match tokio::time::timeout(limit, self.connect_tcp(&host, port)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(refused(&e)),
            Err(_) => return Err(timed_out()),
        };
        let left = limit.saturating_sub(start.elapsed());
        let io = SocketIo::new(reactor.clone(), tcp);
        let mut tls = self.tls.clone();
        let connect = MakeTlsConnect::<LoopSocket>::make_tls_connect(&mut tls, &host)
            .map_err(|e| refused(&e))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (pool, config, server) = (self.clone(), self.opts.config.clone(), self.opts.server());
        reactor.spawn(Box::pin(async move {
            let login = config.connect_raw(LoopSocket(io.clone()), connect);
            let (client, connection) = match tokio::time::timeout(left, login).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(Some(e)));
                    return;
                }
                Err(_) => {
                    let _ = tx.send(Err(None));
                    return;
                }
            };
            // The session joins the pool even if whoever asked for it stopped waiting.
            let session = pool.adopt(client, Some((io, host, port)));
            drop(pool);
            let _ = tx.send(Ok(session.clone()));
            let reason = match connection.await {
                Ok(()) => format!("the session on {server} was closed"),
                Err(e) => format!("the session on {server} ended: {}", describe(&e)),
            };
            session.die(reason);
        }));
        match tokio::time::timeout(left + Duration::from_millis(50), rx).await {
            Ok(Ok(Ok(session))) => Ok(session),
            Ok(Ok(Err(Some(e)))) => Err(Fault {
                message: format!("cannot connect to {}: {}", self.opts.server(), describe(&e)),
                transient: is_transient(&e) && self.ever_connected(),
            }),
            Ok(Ok(Err(None))) | Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(refused(&"the event loop ended")),
        }
    }

    /// A TCP connection to `host:port` with the configuration's socket options, non-blocking.
    async fn connect_tcp(&self, host: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let c = &self.opts.config;
        let sock = socket2::SockRef::from(&tcp);
        #[cfg(target_os = "linux")]
        if let Some(t) = c.get_tcp_user_timeout() {
            sock.set_tcp_user_timeout(Some(*t))?;
        }
        if c.get_keepalives() {
            let mut ka = socket2::TcpKeepalive::new().with_time(c.get_keepalives_idle());
            #[cfg(not(any(target_os = "openbsd", target_os = "redox", target_os = "solaris")))]
            if let Some(i) = c.get_keepalives_interval() {
                ka = ka.with_interval(i);
            }
            #[cfg(not(any(
                target_os = "openbsd",
                target_os = "redox",
                target_os = "solaris",
                target_os = "windows"
            )))]
            if let Some(r) = c.get_keepalives_retries() {
                ka = ka.with_retries(r);
            }
            sock.set_tcp_keepalive(&ka)?;
        }
        let std = tcp.into_std()?;
        std.set_nonblocking(true)?;
        Ok(std)
    }

    /// Probes every session that holds locks and is not owned by a waiter; one that does not
    /// answer within `period` is closed and its locks reported lost.
    pub(crate) async fn keepalive(self: Arc<Self>, period: Duration, closed: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = tick.tick() => {}
            }
            for s in self.sessions() {
                let probe = {
                    let st = lock(&s.st);
                    !st.held.is_empty()
                        && (!st.busy || self.opts.scope == crate::Scope::Transaction)
                        && st.death.is_none()
                };
                if !probe {
                    continue;
                }
                let server = self.opts.server();
                tokio::spawn(async move {
                    let mut probe = std::pin::pin!(s.query("SELECT 1"));
                    match s.within(period, &mut probe).await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => s.kill(format!(
                            "the keepalive probe on {server} failed: {}",
                            describe(&e)
                        )),
                        None => s.kill(format!(
                            "the session on {server} did not answer a keepalive probe within {} ms",
                            period.as_millis()
                        )),
                    }
                });
            }
        }
    }
}

/// Takes the session `s` for `usage` if it is still free for it.
pub(crate) fn claim(s: &Arc<Session>, usage: Use) -> Option<Arc<Session>> {
    pick(std::slice::from_ref(s), usage)
}

/// What the machine needs to know of session `s` to choose one (see [`crate::machine`]).
fn load(s: &Session, st: &SessionState) -> Load {
    Load {
        dead: s.is_dead() || st.death.is_some(),
        busy: st.busy,
        inflight: st.inflight,
        holds: !st.held.is_empty(),
    }
}

/// The session for `usage` among the open ones, as the machine ranks them: shared use by
/// [`shared_rank`], a blocking wait the first [`free_for_wait`] (marked busy at once).
fn pick(sessions: &[Arc<Session>], usage: Use) -> Option<Arc<Session>> {
    match usage {
        Use::Shared => sessions
            .iter()
            .filter_map(|s| shared_rank(load(s, &lock(&s.st))).map(|rank| (rank, s)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, s)| s.clone()),
        Use::Busy => sessions.iter().find_map(|s| {
            let mut st = lock(&s.st);
            let free = free_for_wait(load(s, &st));
            if free {
                st.busy = true;
            }
            free.then(|| s.clone())
        }),
    }
}

//! The bounded pool of a provider's sessions ([`crate::session`]): which one a caller gets
//! (core's one pick rule, [`pick`]), opening new ones, and the keepalive probe.
//!
//! Each session's connection runs on its own task: on the host's event loop when the provider
//! was given one and the server is a single TCP host ([`crate::socket`]; the statements of calls
//! made on the JS thread are then written and answered there), else on the tokio runtime.
//!
//! Connections are opened on their own task, bounded by `connect_timeout`: a caller that stops
//! waiting (deadline, cancel) does not waste the login, the session joins the pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use distlock_core::reactor::Reactor;
use distlock_core::sync::lock;
use distlock_core::two_phase::{Pick, Usage, pick};
use distlock_core::{Fault, Result};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::PgOptions;
use crate::fault::{describe, fault, io_transient, is_transient};
use crate::session::{Owner, Session};
use crate::socket::{LoopSocket, SocketIo};

/// The bounded set of sessions of one provider.
pub(crate) struct Pool {
    pub(crate) opts: PgOptions,
    pub(crate) tls: MakeRustlsConnect,
    /// The host's event loop, if the provider was given one.
    reactor: Mutex<Option<Arc<dyn Reactor>>>,
    st: Mutex<PoolState>,
    changed: Notify,
    next_id: AtomicU64,
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

/// A shared session: PostgreSQL pipelines the statements of many callers on one connection
/// (a busy session is owned by one caller until `unbusy`, and holds no locks when handed out).
pub(crate) const SHARED: Usage = Usage::Shared { pipelined: true };

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
            .filter(|s| s.on_loop())
            .count()
    }

    fn emit(&self, event: distlock_core::BackendEvent) {
        if let Some(observe) = self.observer.get() {
            observe(event);
        }
    }

    /// Open connections (for tests and inspection).
    pub(crate) fn connections(&self) -> usize {
        lock(&self.st).sessions.len()
    }

    /// Every open session.
    pub(crate) fn sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.st).sessions.clone()
    }

    /// A session of the kind asked for: an existing one, a new one while under the bound, or
    /// the next one to come free. The caller races this against its deadline and cancel.
    pub(crate) async fn session(
        self: &Arc<Self>,
        usage: Usage,
    ) -> std::result::Result<Arc<Session>, Fault> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let may_open = {
                let mut st = lock(&self.st);
                let room = st.sessions.len() + st.opening < self.opts.max_connections;
                let loads: Vec<_> = st.sessions.iter().map(|s| s.load()).collect();
                match pick(&loads, usage, room) {
                    Pick::Take(i) if st.sessions[i].take(usage) => {
                        return Ok(st.sessions[i].clone());
                    }
                    Pick::Take(_) => continue,
                    Pick::Open => {
                        st.opening += 1;
                        true
                    }
                    Pick::Later => false,
                }
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
                        let message = format!("connecting to {}: {e}", self.opts.server());
                        return Err(Fault::fatal(message));
                    }
                };
                if opened.take(usage) {
                    return Ok(opened);
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
                return Err(self.refused(&e));
            }
            Err(_) => {
                return Err(self.login_timed_out(limit));
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
        session.set_driver(driver.abort_handle());
        Ok(session)
    }

    /// The fault of a login that failed: transient or not by the crate's one classification
    /// ([`is_transient`]), whether or not a session was ever opened: a server that is down,
    /// still starting or not yet in DNS is ridden out within the acquire's budget, a wrong
    /// password or TLS setting fails at once.
    fn refused(&self, e: &tokio_postgres::Error) -> Fault {
        let message = format!("cannot connect to {}: {}", self.opts.server(), describe(e));
        fault(message, is_transient(e))
    }

    /// The fault of a TCP connect (the event-loop path's own), by [`io_transient`].
    fn unreached(&self, e: &std::io::Error) -> Fault {
        let message = format!("cannot connect to {}: {e}", self.opts.server());
        fault(message, io_transient(e))
    }

    /// The fault of a login that got no answer within `limit`: transient (a server that
    /// accepts and does not answer yet may answer the next login).
    fn login_timed_out(&self, limit: Duration) -> Fault {
        let message = format!(
            "cannot connect to {}: no answer to the login within {} ms",
            self.opts.server(),
            limit.as_millis()
        );
        Fault::transient(message)
    }

    /// A new session over `client`, in the pool.
    fn adopt(
        self: &Arc<Self>,
        client: Client,
        io: Option<(Arc<SocketIo>, String, u16)>,
    ) -> Arc<Session> {
        if self.lost_one.swap(false, Ordering::AcqRel) {
            self.emit(distlock_core::BackendEvent::Reconnected {
                server: self.opts.server(),
            });
        }
        let owner: Weak<dyn Owner> = Arc::downgrade(self) as Weak<Pool>;
        let session = Arc::new(Session::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            client,
            io,
            owner,
            self.opts.scope == crate::Scope::Session,
        ));
        tracing::debug!(backend = BACKEND, session = session.id, server = %self.opts.server(), on_loop = session.on_loop(), "connected");
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
        // What fails here before a login is configuration (the TLS host name) or the process
        // ending (its event loop): nothing a retry cures.
        let refused = |e: &dyn std::fmt::Display| {
            let message = format!("cannot connect to {}: {e}", self.opts.server());
            fault(message, false)
        };
        let timed_out = || self.login_timed_out(limit);
        let start = Instant::now();
        let tcp = match tokio::time::timeout(limit, self.connect_tcp(&host, port)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(self.unreached(&e)),
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
            Ok(Ok(Err(Some(e)))) => Err(self.refused(&e)),
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
                if !s.probed(self.opts.scope == crate::Scope::Transaction) {
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

impl Owner for Pool {
    fn freed(&self) {
        self.changed.notify_waiters();
    }

    fn lost_locks(&self) {
        if !self.closing.load(Ordering::Acquire) {
            self.lost_one.store(true, Ordering::Release);
            self.emit(distlock_core::BackendEvent::Disconnected {
                server: self.opts.server(),
            });
        }
    }

    fn ended(&self, id: u64) {
        lock(&self.st).sessions.retain(|s| s.id != id);
        self.changed.notify_waiters();
    }
}

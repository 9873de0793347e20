//! Server sessions and the bounded pool they live in.
//!
//! A named lock belongs to the session that took it, and a session runs one statement at a
//! time. So a session is either *shared* — it runs only statements that never wait on the
//! server (tries, releases, fencing bumps, probes), one after another for many callers, and
//! holds many locks — or *waiting*: one caller's blocking `GET_LOCK` is in flight on it. A wait
//! only ever starts on a session that holds nothing and has no caller, so a release never
//! queues behind a wait; once its wait is granted the session is shared again.
//!
//! A session that fails (the server killed it, the socket closed, a statement or a probe got no
//! answer in time) is dropped: every lock it held fires its lost signal and gives its
//! in-process turn back. The server frees the locks of a session that ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use distlock_core::sync::lock;
use distlock_core::two_phase::{Load, Pick, Usage, pick};
use distlock_core::{BackendEvent, BoxFuture, Cause, Error, Fault, Observer};
use mysql_async::Conn;
use tokio::sync::Notify;

use crate::config::MySqlOptions;

/// The fault of a driver error, and whether trying again may help. This is the one
/// classification of the backend, the same before the first connection as after it (a
/// waiter rides out trouble within its budget):
///
/// - a server error: by its code ([`transient_server_error`]);
/// - an I/O error (connect, DNS, reads, writes, the TLS handshake): by core's [`distlock_core::fault::io_transient`];
/// - the driver's TLS setup (a CA file that does not parse, a host name that is not one), an
///   invalid URL, an authentication method the driver refuses: not transient;
/// - anything else the driver says of the connection (closed, out of order): transient.
pub(crate) fn fault_of(e: &mysql_async::Error) -> Fault {
    use mysql_async::{DriverError, Error, IoError};
    match e {
        Error::Server(s) => Fault::new(
            format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state),
            transient_server_error(s.code),
        )
        .with_cause(Cause {
            sqlstate: Some(s.state.clone()),
            ..Cause::default()
        }),
        Error::Url(u) => Fault::fatal(u.to_string()),
        // The OS error itself ("Broken pipe (os error 32)"), not under the driver's two
        // layers of "Input/output error: ".
        Error::Io(IoError::Io(io)) => {
            Fault::new(io.to_string(), distlock_core::fault::io_transient(io))
        }
        Error::Io(IoError::Tls(tls)) => Fault::fatal(format!("TLS: {tls}")),
        Error::Driver(
            DriverError::UnknownAuthPlugin { .. }
            | DriverError::MysqlOldPasswordDisabled
            | DriverError::CleartextPluginDisabled
            | DriverError::NoClientSslFlagFromServer
            | DriverError::NamedPipesDisabled
            | DriverError::NoKeyFound,
        ) => Fault::fatal(e.to_string()),
        other => Fault::transient(other.to_string()),
    }
}

/// Whether a server error is one a reconnect can cure: the server shutting down (1053), out
/// of connections (1040, 1203), or our query or connection killed (1317, MariaDB 1927, the
/// idle timeout 4031). Refusals (access denied 1045, an unknown database 1049, a missing
/// privilege, syntax) are not.
fn transient_server_error(code: u16) -> bool {
    matches!(code, 1040 | 1053 | 1203 | 1317 | 1927 | 4031)
}

/// `f` as the error a caller sees, naming `server` and what was being done.
pub(crate) fn failed(f: Fault, server: &str, doing: &str) -> Error {
    let message = format!("{doing} on {server}: {}", f.message);
    Fault { message, ..f }.into_error(crate::BACKEND, Some(server))
}

/// A lock held on a session, told when the session ends under it.
pub(crate) trait Dependent: Send + Sync {
    fn session_ended(&self, reason: &str);
}

/// A statement run on a session's connection.
pub(crate) type Op<T> =
    Box<dyn for<'a> FnOnce(&'a mut Conn) -> BoxFuture<'a, mysql_async::Result<T>> + Send>;

/// One server connection.
pub(crate) struct Session {
    /// The server's id of the connection (`CONNECTION_ID()`), for `KILL CONNECTION`.
    pub id: u32,
    conn: tokio::sync::Mutex<Option<Conn>>,
    holds: Mutex<HashMap<u64, Weak<dyn Dependent>>>,
    users: AtomicUsize,
    waiting: AtomicBool,
    dead: AtomicBool,
    pool: Weak<Pool>,
}

impl Session {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Runs `op` after the statements queued before it, within `limit` when given. A statement
    /// that fails on the connection or gets no answer in time ends the session (the server then
    /// frees what it held), so the session is never left in an unknown state.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        limit: Option<Duration>,
        op: Op<T>,
    ) -> Result<T, Fault> {
        let mut guard = match limit {
            Some(d) => tokio::time::timeout(d, self.conn.lock())
                .await
                .map_err(|_| Fault::transient("the session stayed busy"))?,
            None => self.conn.lock().await,
        };
        let Some(conn) = guard.as_mut() else {
            return Err(Fault::transient("the session has ended"));
        };
        let answer = match limit {
            Some(d) => match tokio::time::timeout(d, op(conn)).await {
                Ok(answer) => answer,
                Err(_) => {
                    *guard = None;
                    drop(guard);
                    let why = format!("a statement got no answer within {} ms", d.as_millis());
                    self.die(&why);
                    return Err(Fault::transient(why));
                }
            },
            None => op(conn).await,
        };
        answer.map_err(|e| {
            let failure = fault_of(&e);
            if !matches!(e, mysql_async::Error::Server(_)) || conn_broken(&e) {
                *guard = None;
                self.die(&failure.message);
            }
            failure
        })
    }

    /// Marks the session ended: its locks fire their lost signals and give their turns back.
    pub(crate) fn die(&self, reason: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        let holds: Vec<_> = lock(&self.holds).drain().collect();
        let reason = format!("its MySQL session ended ({reason})");
        for (_, held) in &holds {
            if let Some(h) = held.upgrade() {
                h.session_ended(&reason);
            }
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.forget(self, !holds.is_empty());
        }
    }

    /// Ends the session now, from outside a statement (a probe that did not come back).
    pub(crate) fn kill(&self, reason: &str) {
        if let Ok(mut guard) = self.conn.try_lock() {
            *guard = None;
        }
        self.die(reason);
    }

    pub(crate) fn hold(&self, id: u64, held: Weak<dyn Dependent>) {
        lock(&self.holds).insert(id, held);
        if self.is_dead() {
            // It died between the grant and now: nobody else will tell this lock.
            if let Some(h) = lock(&self.holds).remove(&id).and_then(|w| w.upgrade()) {
                h.session_ended("its MySQL session ended before the grant was handed out");
            }
        }
    }

    pub(crate) fn forget(&self, id: u64) {
        let now_empty = {
            let mut holds = lock(&self.holds);
            holds.remove(&id);
            holds.is_empty()
        };
        if now_empty && let Some(pool) = self.pool.upgrade() {
            pool.freed.notify_waiters();
        }
    }

    /// What the pool's pick needs to know of it.
    fn load(&self) -> Load {
        Load {
            dead: self.is_dead(),
            owned: self.waiting.load(Ordering::Acquire),
            inflight: self.users.load(Ordering::Acquire),
            holds: !lock(&self.holds).is_empty(),
        }
    }

    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    /// Ends this session's blocking wait: it may be shared again.
    pub(crate) fn end_wait(&self) {
        self.waiting.store(false, Ordering::Release);
        if let Some(pool) = self.pool.upgrade() {
            pool.freed.notify_waiters();
        }
    }

    /// Closes the connection politely (the server frees its locks), within `limit`.
    pub(crate) async fn close(&self, limit: Duration) {
        let conn = match tokio::time::timeout(limit, self.conn.lock()).await {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        if let Some(c) = conn {
            let _ = tokio::time::timeout(limit, c.disconnect()).await;
        }
        self.dead.store(true, Ordering::Release);
    }
}

/// Errors after which the connection cannot be used again.
fn conn_broken(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if matches!(s.code, 1053 | 1927 | 4031))
}

/// A caller's use of a shared session; ends on drop.
pub(crate) struct Use {
    pub session: Arc<Session>,
}

impl Drop for Use {
    fn drop(&mut self) {
        if self.session.users.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(pool) = self.session.pool.upgrade()
        {
            pool.freed.notify_waiters();
        }
    }
}

/// A shared session runs one statement at a time: a caller queues behind the others on it
/// only when the pool is full.
const SHARED: Usage = Usage::Shared { pipelined: false };

/// The bounded set of sessions of one provider.
pub(crate) struct Pool {
    pub opts: MySqlOptions,
    sessions: Mutex<Vec<Arc<Session>>>,
    opening: AtomicUsize,
    freed: Notify,
    pub observer: OnceLock<Observer>,
    ever_connected: AtomicBool,
    me: Weak<Pool>,
}

/// Counts a connection being opened until its login ends.
struct Opening<'a>(&'a AtomicUsize);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub(crate) fn new(opts: MySqlOptions) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            opts,
            sessions: Mutex::new(Vec::new()),
            opening: AtomicUsize::new(0),
            freed: Notify::new(),
            observer: OnceLock::new(),
            ever_connected: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub(crate) fn sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).clone()
    }

    /// Takes every session out of the pool (on close).
    pub(crate) fn drain(&self) -> Vec<Arc<Session>> {
        std::mem::take(&mut *lock(&self.sessions))
    }

    /// Takes a session that ended out of the pool; observers hear of it when locks depended on it.
    fn forget(&self, s: &Session, held_locks: bool) {
        lock(&self.sessions).retain(|x| !std::ptr::eq(x.as_ref(), s));
        if held_locks && let Some(o) = self.observer.get() {
            o(BackendEvent::Disconnected {
                server: self.opts.label.clone(),
            });
        }
        self.freed.notify_waiters();
    }

    /// Opens a session within `connect_timeout`; the caller counted it in `opening` (against
    /// the limit, while it logs in).
    async fn open(&self, waiting: bool) -> Result<Arc<Session>, Fault> {
        let _opening = Opening(&self.opening);
        let limit = self.opts.connect_timeout;
        let conn = match tokio::time::timeout(limit, Conn::new(self.opts.server.clone())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fault_of(&e)),
            Err(_) => {
                let message = format!("no connection within {} ms", limit.as_millis());
                return Err(Fault::transient(message));
            }
        };
        let s = Arc::new(Session {
            id: conn.id(),
            conn: tokio::sync::Mutex::new(Some(conn)),
            holds: Mutex::new(HashMap::new()),
            // A shared session is opened for a caller, who uses it at once.
            users: AtomicUsize::new(usize::from(!waiting)),
            waiting: AtomicBool::new(waiting),
            dead: AtomicBool::new(false),
            pool: self.me.clone(),
        });
        let reconnect = self.ever_connected.swap(true, Ordering::AcqRel) && self.len() == 0;
        lock(&self.sessions).push(s.clone());
        if reconnect && let Some(o) = self.observer.get() {
            o(BackendEvent::Reconnected {
                server: self.opts.label.clone(),
            });
        }
        Ok(s)
    }

    fn room(&self, sessions: &[Arc<Session>]) -> bool {
        sessions.len() + self.opening.load(Ordering::Acquire) < self.opts.max_connections
    }

    /// A session for statements that never wait (the pool's pick: the least used live one, or
    /// a new one when every session is in use and there is room).
    pub(crate) async fn shared(&self) -> Result<Use, Fault> {
        let session = self.pick(SHARED).await?;
        Ok(Use { session })
    }

    /// A session for a blocking wait: one that holds nothing and has no caller, or a new one;
    /// when the pool is full, waits until one is free.
    pub(crate) async fn for_wait(&self) -> Result<Arc<Session>, Fault> {
        self.pick(Usage::Own).await
    }

    /// A session for `usage` by core's one pick rule, taken (a user counted, or marked as a
    /// wait's) under the sessions' lock; else a new one when there is room, else, once a
    /// session is freed, the same again.
    async fn pick(&self, usage: Usage) -> Result<Arc<Session>, Fault> {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let chosen = {
                let sessions = lock(&self.sessions);
                let room = self.room(&sessions);
                let loads: Vec<Load> = sessions.iter().map(|s| s.load()).collect();
                let chosen = pick(&loads, usage, room);
                match chosen {
                    Pick::Take(i) if usage == Usage::Own => {
                        sessions[i].waiting.store(true, Ordering::Release);
                    }
                    Pick::Take(i) => {
                        sessions[i].users.fetch_add(1, Ordering::AcqRel);
                    }
                    Pick::Open => {
                        self.opening.fetch_add(1, Ordering::AcqRel);
                    }
                    Pick::Later => {}
                }
                chosen.map(|i| sessions[i].clone())
            };
            match chosen {
                Pick::Take(taken) => return Ok(taken),
                Pick::Open => return self.open(usage == Usage::Own).await,
                Pick::Later => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: std::io::Error) -> Fault {
        fault_of(&mysql_async::Error::Io(mysql_async::IoError::Io(e)))
    }

    #[test]
    fn faults_a_retry_cures_and_refusals() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::TimedOut,
            ErrorKind::HostUnreachable,
        ] {
            assert!(io(Error::from(kind)).transient, "{kind:?}");
        }
        let dns = Error::other("failed to lookup address information: Name or service not known");
        assert!(io(dns).transient, "a name that does not resolve yet");
        let tls = Error::new(
            ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        assert!(!io(tls).transient, "a certificate no CA vouches for");
        for code in [1040, 1053, 1203, 1317, 1927, 4031] {
            assert!(transient_server_error(code), "{code}");
        }
        for code in [1044, 1045, 1049, 1064, 1142] {
            assert!(!transient_server_error(code), "{code}");
        }
        let closed = mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed);
        assert!(fault_of(&closed).transient);
        let plugin = mysql_async::Error::Driver(mysql_async::DriverError::UnknownAuthPlugin {
            name: "x".into(),
        });
        assert!(!fault_of(&plugin).transient);
    }

    #[test]
    fn io_failures_read_as_the_os_error() {
        // EPIPE, as Linux numbers it.
        let io = std::io::Error::from_raw_os_error(32);
        let f = fault_of(&mysql_async::Error::Io(mysql_async::IoError::Io(io)));
        assert_eq!(f.message, "Broken pipe (os error 32)");
        assert!(f.transient);
        let e = failed(f, "127.0.0.1:3306", "acquiring mysql lock \"x\"");
        assert_eq!(
            e.to_string(),
            "mysql backend error: acquiring mysql lock \"x\" on 127.0.0.1:3306: Broken pipe (os error 32)"
        );
    }
}

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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use distlock_core::{BackendEvent, BoxFuture, Cause, Error, Observer};
use mysql_async::Conn;
use tokio::sync::Notify;

use crate::config::MySqlOptions;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert, remove or assignment.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a statement or a connection failed, and whether trying again may help.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub message: String,
    /// The connection broke or timed out (a reconnect may cure it), as opposed to an error the
    /// server answered (access denied, an unknown database, a missing privilege).
    pub transient: bool,
    pub sqlstate: Option<String>,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>, transient: bool) -> Self {
        Self {
            message: message.into(),
            transient,
            sqlstate: None,
        }
    }

    fn of(e: &mysql_async::Error) -> Self {
        match e {
            mysql_async::Error::Server(s) => Self {
                message: format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state),
                // The server is shutting down, or killed our query or connection.
                transient: matches!(s.code, 1053 | 1317 | 1927 | 4031),
                sqlstate: Some(s.state.clone()),
            },
            mysql_async::Error::Url(u) => Self::new(u.to_string(), false),
            // The OS error itself ("Broken pipe (os error 32)"), not under the driver's two
            // layers of "Input/output error: ".
            mysql_async::Error::Io(mysql_async::IoError::Io(io)) => Self::new(io.to_string(), true),
            other => Self::new(other.to_string(), true),
        }
    }

    /// The failure as the error a caller sees, naming `server` and what was being done.
    pub(crate) fn into_error(self, server: &str, doing: &str) -> Error {
        let cause = Cause {
            server: Some(server.to_owned()),
            sqlstate: self.sqlstate.clone(),
            message: Some(self.message.clone()),
            ..Default::default()
        }
        .with_os_error_in(&self.message);
        Error::backend(
            crate::BACKEND,
            format!("{doing} on {server}: {}", self.message),
            cause,
        )
    }
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
    ) -> Result<T, Failure> {
        let mut guard = match limit {
            Some(d) => tokio::time::timeout(d, self.conn.lock())
                .await
                .map_err(|_| Failure::new("the session stayed busy", true))?,
            None => self.conn.lock().await,
        };
        let Some(conn) = guard.as_mut() else {
            return Err(Failure::new("the session has ended", true));
        };
        let answer = match limit {
            Some(d) => match tokio::time::timeout(d, op(conn)).await {
                Ok(answer) => answer,
                Err(_) => {
                    *guard = None;
                    drop(guard);
                    let why = format!("a statement got no answer within {} ms", d.as_millis());
                    self.die(&why);
                    return Err(Failure::new(why, true));
                }
            },
            None => op(conn).await,
        };
        answer.map_err(|e| {
            let failure = Failure::of(&e);
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

    fn holds_nothing(&self) -> bool {
        lock(&self.holds).is_empty()
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

/// What a caller gets from the pool: a session, room for a new one, or a wait for either.
enum Pick {
    This(Arc<Session>),
    Open,
    Later,
}

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

    pub(crate) fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Acquire)
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
    async fn open(&self, waiting: bool) -> Result<Arc<Session>, Failure> {
        let _opening = Opening(&self.opening);
        let limit = self.opts.connect_timeout;
        let conn = match tokio::time::timeout(limit, Conn::new(self.opts.server.clone())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Failure::of(&e)),
            Err(_) => {
                return Err(Failure::new(
                    format!("no connection within {} ms", limit.as_millis()),
                    true,
                ));
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

    /// A session for statements that never wait: the least used live one, or a new one when
    /// every session is in use and there is room.
    pub(crate) async fn shared(&self) -> Result<Use, Failure> {
        let session = self
            .pick(false, |sessions, room| {
                let best = sessions
                    .iter()
                    .filter(|s| !s.is_dead() && !s.waiting.load(Ordering::Acquire))
                    .min_by_key(|s| s.users.load(Ordering::Acquire))?;
                (best.users.load(Ordering::Acquire) == 0 || !room).then(|| {
                    best.users.fetch_add(1, Ordering::AcqRel);
                    best.clone()
                })
            })
            .await?;
        Ok(Use { session })
    }

    /// A session for a blocking wait: one that holds nothing and has no caller, or a new one;
    /// when the pool is full, waits until one is free.
    pub(crate) async fn for_wait(&self) -> Result<Arc<Session>, Failure> {
        self.pick(true, |sessions, _| {
            let idle = sessions.iter().find(|s| {
                !s.is_dead()
                    && !s.waiting.load(Ordering::Acquire)
                    && s.users.load(Ordering::Acquire) == 0
                    && s.holds_nothing()
            })?;
            idle.waiting.store(true, Ordering::Release);
            Some(idle.clone())
        })
        .await
    }

    /// A session `choose` takes (and marks as its own) from the live ones, told whether there
    /// is room for another; else a new one when there is room (opened for a wait when
    /// `waiting`), else, once a session is freed, the same again.
    async fn pick(
        &self,
        waiting: bool,
        choose: impl Fn(&[Arc<Session>], bool) -> Option<Arc<Session>>,
    ) -> Result<Arc<Session>, Failure> {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pick = {
                let sessions = lock(&self.sessions);
                let room = self.room(&sessions);
                match choose(&sessions, room) {
                    Some(s) => Pick::This(s),
                    None if room => {
                        self.opening.fetch_add(1, Ordering::AcqRel);
                        Pick::Open
                    }
                    None => Pick::Later,
                }
            };
            match pick {
                Pick::This(s) => return Ok(s),
                Pick::Open => return self.open(waiting).await,
                Pick::Later => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_failures_read_as_the_os_error() {
        // EPIPE, as Linux numbers it.
        let io = std::io::Error::from_raw_os_error(32);
        let f = Failure::of(&mysql_async::Error::Io(mysql_async::IoError::Io(io)));
        assert_eq!(f.message, "Broken pipe (os error 32)");
        assert!(f.transient);
        let e = f.into_error("127.0.0.1:3306", "acquiring mysql lock \"x\"");
        assert_eq!(
            e.to_string(),
            "mysql backend error: acquiring mysql lock \"x\" on 127.0.0.1:3306: Broken pipe (os error 32)"
        );
    }
}

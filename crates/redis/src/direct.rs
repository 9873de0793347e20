//! The driver that runs a server's scripts on the host's event loop (the JS thread in Node):
//! one plain TCP connection per server, written and read on the loop thread through the
//! [`Reactor`], with the protocol in [`crate::wire`]. A call made on the loop thread sends its
//! script here and is answered there, with no thread in between.
//!
//! Only what is simple stays here: a server named by host and port without TLS (a cluster, a
//! Sentinel group or `rediss://` use fred, as does any call made off the loop thread: lease
//! renewal, revokes, confirmations). The connection is opened in the background, on the tokio
//! runtime (the handshake loads every script, so `EVALSHA` finds them), and handed to the
//! loop when it is ready; until then, and after it breaks, calls go through fred.
//!
//! Safety: a connection that breaks fails its unanswered requests as I/O errors (their callers
//! revoke what may have landed, as for fred) and puts the server's locks in doubt until they are
//! confirmed, as a fred reconnect does. A request unanswered for the server timeout breaks the
//! connection before anything else is queued behind it.

use std::future::Future as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use distlock_core::reactor::{Reactor, Ready, Watch};
use distlock_core::sync::lock;
use fred::error::{Error, ErrorKind};
use fred::prelude::{Config, ServerConfig};
use fred::types::{Key, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::doubt::{Doubt, Event};
use crate::scripts::{Script, Scripts};
use crate::wire::{Arg, Reply, Wire};

/// Where and how to log in.
#[derive(Clone)]
struct Endpoint {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    database: Option<u8>,
}

pub struct Direct {
    shared: Arc<Shared>,
    sent: AtomicU64,
}

struct Shared {
    reactor: Arc<dyn Reactor>,
    endpoint: Endpoint,
    label: String,
    timeout: Duration,
    /// The server's doubt: a broken connection puts its locks in doubt until confirmed.
    doubt: Arc<Doubt>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    /// A connection opened in the background, waiting for the loop thread to take it.
    arrived: Option<TcpStream>,
    connecting: bool,
    failures: u32,
    retry_at: Option<Instant>,
    closed: bool,
}

struct Conn {
    stream: Arc<TcpStream>,
    watch: Box<dyn Watch>,
    wire: Wire,
    writable: bool,
}

impl Direct {
    /// A driver for `config` on `reactor`, if `config` names one plain TCP server.
    pub fn new(
        config: &Config,
        label: &str,
        timeout: Duration,
        reactor: Arc<dyn Reactor>,
        doubt: Arc<Doubt>,
    ) -> Option<Self> {
        if config.tls.is_some() {
            return None;
        }
        let ServerConfig::Centralized { server } = &config.server else {
            return None;
        };
        Some(Self {
            shared: Arc::new(Shared {
                reactor,
                endpoint: Endpoint {
                    host: server.host.to_string(),
                    port: server.port,
                    username: config.username.clone(),
                    password: config.password.clone(),
                    database: config.database,
                },
                label: label.to_owned(),
                timeout,
                doubt,
                state: Mutex::default(),
            }),
            sent: AtomicU64::new(0),
        })
    }

    /// Sends `script` now when called on the loop thread with the connection up; `None` when
    /// the call must go through fred.
    pub fn eval(
        &self,
        script: &Script,
        keys: &[Key],
        args: &[Value],
        by_sha: bool,
    ) -> Option<Reply> {
        let sh = &self.shared;
        if !sh.reactor.on_loop() {
            return None;
        }
        let mut st = lock(&sh.state);
        let now = Instant::now();
        sh.ready_conn(&mut st, now);
        let conn = st.conn.as_mut()?;
        if conn
            .wire
            .oldest()
            .is_some_and(|t| now.duration_since(t) > sh.timeout)
        {
            sh.break_conn(
                &mut st,
                &format!("no answer within {} ms", sh.timeout.as_millis()),
            );
            return None;
        }
        let numkeys = keys.len().to_string();
        let mut cmd: Vec<Arg<'_>> = Vec::with_capacity(3 + keys.len() + args.len());
        if by_sha {
            cmd.push(Arg::Bytes(b"EVALSHA"));
            cmd.push(Arg::Bytes(script.sha.as_bytes()));
        } else {
            cmd.push(Arg::Bytes(b"EVAL"));
            cmd.push(Arg::Bytes(script.lua.as_bytes()));
        }
        cmd.push(Arg::Bytes(numkeys.as_bytes()));
        cmd.extend(keys.iter().map(|k| Arg::Bytes(k.as_bytes())));
        for a in args {
            cmd.push(match a {
                Value::Integer(i) => Arg::Int(*i),
                Value::String(s) => Arg::Bytes(s.as_bytes()),
                Value::Bytes(b) => Arg::Bytes(b),
                // The scripts take only strings and integers.
                _ => return None,
            });
        }
        let reply = conn.wire.request(&cmd, now);
        self.sent.fetch_add(1, Ordering::Relaxed);
        // Alone on the connection: write now. Behind others: cork, and flush when the loop
        // next polls (the socket is writable at once), so a burst goes out in one write.
        let alone = conn.wire.in_flight() == 1 && !conn.writable;
        let flushed = if alone {
            conn.flush()
        } else {
            conn.want_write(true)
        };
        if let Err(e) = flushed {
            sh.break_conn(&mut st, &e.to_string());
        }
        Some(reply)
    }

    /// Scripts sent on the event loop so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Closes the connection (the provider is closing).
    pub fn close(&self) {
        let mut st = lock(&self.shared.state);
        st.closed = true;
        st.arrived = None;
        if let Some(mut c) = st.conn.take() {
            c.wire
                .fail_all(&Error::new(ErrorKind::Canceled, "the provider was closed"));
        }
    }
}

impl Conn {
    /// Writes what the kernel takes; what is left waits for writability.
    fn flush(&mut self) -> io::Result<()> {
        let out = self.wire.output();
        let mut written = 0;
        while written < out.len() {
            match (&*self.stream).write(&out[written..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the socket took nothing",
                    ));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        out.drain(..written);
        let rest = !out.is_empty();
        self.want_write(rest)
    }

    fn want_write(&mut self, on: bool) -> io::Result<()> {
        if self.writable != on {
            self.writable = on;
            self.watch.want_writable(on);
        }
        Ok(())
    }
}

impl Shared {
    /// Takes a connection that arrived, or starts opening one.
    fn ready_conn(self: &Arc<Self>, st: &mut State, now: Instant) {
        if st.conn.is_some() || st.closed {
            return;
        }
        if let Some(stream) = st.arrived.take() {
            let stream = Arc::new(stream);
            let hook: Arc<dyn Ready> = Arc::new(Hook(Arc::downgrade(self)));
            match self
                .reactor
                .watch(raw(&stream), Box::new(stream.clone()), hook)
            {
                Ok(watch) => {
                    st.conn = Some(Conn {
                        stream,
                        watch,
                        wire: Wire::default(),
                        writable: false,
                    });
                    return;
                }
                Err(e) => {
                    tracing::debug!(server = %self.label, error = %e, "distlock: cannot watch the connection on the event loop");
                    st.failures += 1;
                    st.retry_at = Some(now + backoff(st.failures));
                }
            }
        }
        if st.connecting || st.retry_at.is_some_and(|t| now < t) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.connecting = true;
        let me = Arc::downgrade(self);
        let (endpoint, timeout) = (self.endpoint.clone(), self.timeout);
        rt.spawn(async move {
            let opened = tokio::time::timeout(timeout.max(Duration::from_millis(500)), open(endpoint)).await;
            let Some(me) = me.upgrade() else { return };
            let mut st = lock(&me.state);
            st.connecting = false;
            match opened {
                Ok(Ok(stream)) if !st.closed => {
                    st.failures = 0;
                    st.retry_at = None;
                    st.arrived = Some(stream);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(server = %me.label, error = %e, "distlock: event-loop connection failed; using the runtime's");
                    st.failures += 1;
                    st.retry_at = Some(Instant::now() + backoff(st.failures));
                }
                Err(_) => {
                    st.failures += 1;
                    st.retry_at = Some(Instant::now() + backoff(st.failures));
                }
            }
        });
    }

    /// Drops the connection: its unanswered requests fail as I/O errors and the server's locks
    /// are in doubt until confirmed.
    fn break_conn(&self, st: &mut State, why: &str) {
        let Some(mut c) = st.conn.take() else { return };
        tracing::debug!(server = %self.label, why, "distlock: event-loop connection broke");
        c.wire
            .fail_all(&Error::new(ErrorKind::IO, format!("{}: {why}", self.label)));
        st.failures += 1;
        st.retry_at = Some(Instant::now() + backoff(st.failures));
        // Announced as a reconnect: fred's connection is still up, so the confirmation can run
        // at once.
        self.doubt.lose(Event::Connected);
    }

    fn on_ready(&self, readable: bool, writable: bool) {
        let mut st = lock(&self.state);
        let Some(conn) = st.conn.as_mut() else { return };
        if writable && let Err(e) = conn.flush() {
            return self.break_conn(&mut st, &e.to_string());
        }
        if !readable {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&*conn.stream).read(&mut buf) {
                Ok(0) => return self.break_conn(&mut st, "the server closed the connection"),
                Ok(n) => {
                    if let Err(e) = conn.wire.feed(&buf[..n]) {
                        return self.break_conn(&mut st, &format!("protocol error: {e}"));
                    }
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.break_conn(&mut st, &e.to_string()),
            }
        }
    }
}

/// The connection's readiness callback; weak, so the watch does not keep the driver alive.
struct Hook(Weak<Shared>);

impl Ready for Hook {
    fn ready(&self, readable: bool, writable: bool) {
        if let Some(sh) = self.0.upgrade() {
            sh.on_ready(readable, writable);
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((50u64 << failures.min(7)).min(5_000))
}

#[cfg(unix)]
fn raw(s: &TcpStream) -> distlock_core::reactor::RawSocket {
    std::os::fd::AsRawFd::as_raw_fd(s)
}

#[cfg(windows)]
fn raw(s: &TcpStream) -> distlock_core::reactor::RawSocket {
    std::os::windows::io::AsRawSocket::as_raw_socket(s)
}

/// Connects, logs in, selects the database and loads every script; returns the socket in
/// non-blocking mode, with nothing left unanswered on it.
async fn open(e: Endpoint) -> io::Result<TcpStream> {
    let mut s = tokio::net::TcpStream::connect((e.host.as_str(), e.port)).await?;
    s.set_nodelay(true)?;
    let now = Instant::now();
    let mut wire = Wire::default();
    let mut replies = Vec::new();
    if let Some(pw) = &e.password {
        replies.push(match &e.username {
            Some(user) => wire.request(
                &[
                    Arg::Bytes(b"AUTH"),
                    Arg::Bytes(user.as_bytes()),
                    Arg::Bytes(pw.as_bytes()),
                ],
                now,
            ),
            None => wire.request(&[Arg::Bytes(b"AUTH"), Arg::Bytes(pw.as_bytes())], now),
        });
    }
    // Named, so operators (and tests) can tell it from the background client's connections.
    replies.push(wire.request(
        &[
            Arg::Bytes(b"CLIENT"),
            Arg::Bytes(b"SETNAME"),
            Arg::Bytes(b"distlock-event-loop"),
        ],
        now,
    ));
    if let Some(db) = e.database {
        replies.push(wire.request(&[Arg::Bytes(b"SELECT"), Arg::Int(i64::from(db))], now));
    }
    let all = Scripts::get();
    for script in [
        &all.acquire,
        &all.release,
        &all.leave,
        &all.renew,
        &all.inspect,
        &all.floor,
    ] {
        replies.push(wire.request(
            &[
                Arg::Bytes(b"SCRIPT"),
                Arg::Bytes(b"LOAD"),
                Arg::Bytes(script.lua.as_bytes()),
            ],
            now,
        ));
    }
    s.write_all(wire.output()).await?;
    wire.output().clear();
    let mut buf = vec![0u8; 4096];
    while wire.in_flight() > 0 {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        wire.feed(&buf[..n]).map_err(io::Error::other)?;
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for mut r in replies {
        if let std::task::Poll::Ready(Err(err)) = std::pin::Pin::new(&mut r).poll(&mut cx) {
            return Err(io::Error::other(err.details().to_owned()));
        }
    }
    let std = s.into_std()?;
    std.set_nonblocking(true)?;
    Ok(std)
}

//! A session's socket read and written on the host's event loop (the JS thread in Node).
//!
//! [`LoopSocket`] is the byte stream tokio-postgres's connection runs over when the provider was
//! given a [`Reactor`]: the connection future is a task of the loop ([`Reactor::spawn`]), so a
//! statement sent from a call on the JS thread is written there, and its answer read, parsed and
//! handed to the caller there, with no thread in between. The protocol (startup, SCRAM, TLS,
//! the extended protocol) stays tokio-postgres's.
//!
//! The socket is non-blocking; a read or write the kernel cannot take now stores the task's
//! waker, and the loop's readiness callback wakes it. Other threads touch only two things:
//! [`SocketIo::close`] (a `shutdown`, which the kernel makes safe from any thread) and
//! [`SocketIo::looked`], which asks the loop to read what has arrived and says when it has.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use distlock_core::reactor::{RawSocket, Reactor, Ready, Watch};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the session keeps of its socket: a way to close it and to ask whether the loop has
/// read it, from any thread.
pub(crate) struct SocketIo {
    reactor: Arc<dyn Reactor>,
    stream: Arc<TcpStream>,
    st: Mutex<State>,
}

#[derive(Default)]
struct State {
    watch: Option<Box<dyn Watch>>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    writable: bool,
    /// Callers waiting for the loop to have read everything that has arrived.
    looked: Vec<oneshot::Sender<()>>,
}

impl SocketIo {
    /// `stream` (connected, non-blocking), to be watched on `reactor` once its task first runs.
    pub(crate) fn new(reactor: Arc<dyn Reactor>, stream: TcpStream) -> Arc<Self> {
        Arc::new(Self {
            reactor,
            stream: Arc::new(stream),
            st: Mutex::default(),
        })
    }

    /// Closes the socket in both directions (from any thread): the server frees the session's
    /// locks when it sees the close, and the connection task reads the end and stops.
    pub(crate) fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the caller runs on the loop's thread.
    pub(crate) fn on_loop(&self) -> bool {
        self.reactor.on_loop()
    }

    /// Resolves once the loop has read everything the socket had when it looked (and the
    /// connection has handed every complete answer to its caller), or when the connection is
    /// gone. A timeout measured while JavaScript blocked the loop says nothing about the server:
    /// this tells a silent server from a busy loop.
    pub(crate) fn looked(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let reader = {
            let mut st = lock(&self.st);
            st.looked.push(tx);
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
        rx
    }

    /// Watches the socket, on the first use on the loop thread.
    fn watched(self: &Arc<Self>, st: &mut State) -> io::Result<()> {
        if st.watch.is_none() {
            let hook: Arc<dyn Ready> = Arc::new(Hook(Arc::downgrade(self)));
            st.watch = Some(self.reactor.watch(
                raw(&self.stream),
                Box::new(self.stream.clone()),
                hook,
            )?);
        }
        Ok(())
    }
}

/// The byte stream tokio-postgres's connection runs over; polled only by its loop task.
pub(crate) struct LoopSocket(pub(crate) Arc<SocketIo>);

impl AsyncRead for LoopSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let io = &self.0;
        let mut st = lock(&io.st);
        io.watched(&mut st)?;
        loop {
            match (&*io.stream).read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n == 0 {
                        // The end: whoever waits for a look learns the connection is gone.
                        st.looked.clear();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Everything that arrived has been read, and each complete message handed on
                    // (the connection reads again only once its buffer holds no whole message).
                    for tx in st.looked.drain(..) {
                        let _ = tx.send(());
                    }
                    st.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Err(e) => {
                    st.looked.clear();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl AsyncWrite for LoopSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let io = &self.0;
        let mut st = lock(&io.st);
        io.watched(&mut st)?;
        loop {
            match (&*io.stream).write(data) {
                Ok(n) => {
                    if st.writable {
                        st.writable = false;
                        if let Some(w) = &st.watch {
                            w.want_writable(false);
                        }
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.writer = Some(cx.waker().clone());
                    if !st.writable {
                        st.writable = true;
                        if let Some(w) = &st.watch {
                            w.want_writable(true);
                        }
                    }
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.0.stream.shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// The socket's readiness callback; weak, so the watch does not keep the socket alive.
struct Hook(Weak<SocketIo>);

impl Ready for Hook {
    fn ready(&self, readable: bool, writable: bool) {
        let Some(io) = self.0.upgrade() else { return };
        let (reader, writer) = {
            let mut st = lock(&io.st);
            (
                if readable { st.reader.take() } else { None },
                if writable { st.writer.take() } else { None },
            )
        };
        for w in [reader, writer].into_iter().flatten() {
            w.wake();
        }
    }
}

#[cfg(unix)]
fn raw(s: &TcpStream) -> RawSocket {
    std::os::fd::AsRawFd::as_raw_fd(s)
}

#[cfg(windows)]
fn raw(s: &TcpStream) -> RawSocket {
    std::os::windows::io::AsRawSocket::as_raw_socket(s)
}

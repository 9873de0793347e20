//! The host's event loop, as the network backends see it: a way to watch a socket on the thread
//! that runs JavaScript, so a request is written and its reply read and settled there, with no
//! thread in between. The bindings implement it (over libuv in Node); a backend that is given
//! none, or is called off the loop thread, uses its own runtime instead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

/// A socket as the OS names it.
#[cfg(unix)]
pub type RawSocket = std::os::fd::RawFd;
/// A socket as the OS names it.
#[cfg(windows)]
pub type RawSocket = std::os::windows::io::RawSocket;

/// The host's event loop.
pub trait Reactor: Send + Sync + 'static {
    /// Whether the caller runs on the loop's thread: only there may [`Reactor::watch`] be
    /// called and a watched socket be used.
    fn on_loop(&self) -> bool;

    /// Watches `socket` (non-blocking) on the loop: `ready` is called on the loop thread when
    /// it is readable, and when it is writable while the watch asks for that. The watch ends
    /// when the returned [`Watch`] is dropped (from any thread); `owner` (what closes the
    /// socket when dropped) is dropped after the loop has let go of the socket, so its number
    /// cannot be reused while it is still watched.
    fn watch(
        &self,
        socket: RawSocket,
        owner: Box<dyn Send + Sync>,
        ready: Arc<dyn Ready>,
    ) -> io::Result<Box<dyn Watch>>;

    /// Runs `task` on the loop thread until it ends; callable from any thread. It is first
    /// polled at the loop's next turn, and again whenever its waker fires. A task woken by a
    /// call made on the loop thread (a request queued for the connection it drives) is polled
    /// before that call returns to the host, so what it writes goes out at once. Tasks still
    /// pending when the loop ends are dropped.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>);
}

/// What a watched socket calls on the loop thread.
pub trait Ready: Send + Sync + 'static {
    /// The socket is readable and/or writable.
    fn ready(&self, readable: bool, writable: bool);
}

/// A socket being watched; dropping it stops the watch.
pub trait Watch: Send + Sync {
    /// Also report writability (to flush a write the kernel did not take at once), or stop.
    fn want_writable(&self, on: bool);
}

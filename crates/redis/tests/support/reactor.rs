//! A reactor that stands in for Node's libuv loop in the tests of the event-loop driver
//! (`direct.rs`): the test's single-threaded runtime is "the loop thread", and each watched
//! socket is a task waiting on its readiness there.
#![cfg(unix)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;

use distlock_core::Backend;
use distlock_core::reactor::{RawSocket, Reactor, Ready, Watch};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

struct TestReactor {
    thread: ThreadId,
    rt: tokio::runtime::Handle,
}

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The registration, then what keeps the socket open: dropped in that order.
struct Watched {
    fd: AsyncFd<Fd>,
    _owner: Box<dyn Send + Sync>,
}

struct TestWatch {
    task: tokio::task::AbortHandle,
    writable: Arc<AtomicBool>,
    changed: Arc<Notify>,
}

impl Watch for TestWatch {
    fn want_writable(&self, on: bool) {
        self.writable.store(on, Ordering::Release);
        self.changed.notify_one();
    }
}

impl Drop for TestWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reactor for TestReactor {
    fn on_loop(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn watch(
        &self,
        socket: RawSocket,
        owner: Box<dyn Send + Sync>,
        ready: Arc<dyn Ready>,
    ) -> io::Result<Box<dyn Watch>> {
        // SAFETY: `owner` keeps the socket open, and it is dropped after the registration (the
        // fields of `Watched` drop in order).
        let fd = unsafe {
            AsyncFd::register_with_interest(Fd(socket), Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| io::Error::other(e.to_string()))?;
        let watched = Watched { fd, _owner: owner };
        let writable = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Notify::new());
        let (w, c) = (writable.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let fd = &watched.fd;
            loop {
                let want_write = w.load(Ordering::Acquire);
                tokio::select! {
                    r = fd.readable() => {
                        let Ok(mut g) = r else { return };
                        ready.ready(true, false);
                        g.clear_ready();
                    }
                    r = fd.writable(), if want_write => {
                        let Ok(mut g) = r else { return };
                        ready.ready(false, true);
                        g.clear_ready();
                    }
                    _ = c.notified() => {}
                }
                // A dropped watch aborts this task, which takes effect at a yield: a socket
                // left readable (at its end) would otherwise spin here.
                tokio::task::yield_now().await;
            }
        });
        Ok(Box::new(TestWatch {
            task: task.abort_handle(),
            writable,
            changed,
        }))
    }

    fn spawn(&self, task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        self.rt.spawn(task);
    }
}

/// Runs `b`'s calls made on this thread on the event-loop driver.
pub fn on_this_loop(b: &distlock_redis::RedisBackend) {
    b.attach(Arc::new(TestReactor {
        thread: std::thread::current().id(),
        rt: tokio::runtime::Handle::current(),
    }));
}

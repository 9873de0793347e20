//! The sockets the network backends watch on the loop: [`Loop`] as the core's [`Reactor`],
//! each watch a `uv_poll_t` ([`UvWatch`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use distlock_core::reactor::{RawSocket, Reactor, Ready, Watch};

use super::event_loop::{Loop, current_loop};

/// A socket watched with a `uv_poll_t`.
struct UvWatch {
    core: Arc<Loop>,
    handle: usize,
    writable: AtomicBool,
}

impl Watch for UvWatch {
    fn want_writable(&self, on: bool) {
        if self.writable.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let h = self.handle;
        let core = self.core.clone();
        self.core.on_loop_thread(Box::new(move || {
            if !core.is_dead() {
                core.handles().want_writable(h, on);
            }
        }));
    }
}

impl Drop for UvWatch {
    fn drop(&mut self) {
        let h = self.handle;
        let core = self.core.clone();
        self.core.on_loop_thread(Box::new(move || {
            // Once the loop is dead the environment's cleanup closes the handle.
            if !core.is_dead() {
                core.handles().unwatch(h);
            }
        }));
    }
}

impl Reactor for Loop {
    fn on_loop(&self) -> bool {
        self.handles().on_thread() && !self.is_dead()
    }

    fn watch(
        &self,
        socket: RawSocket,
        owner: Box<dyn Send + Sync>,
        ready: Arc<dyn Ready>,
    ) -> io::Result<Box<dyn Watch>> {
        if !self.on_loop() {
            return Err(io::Error::other("not on the event loop's thread"));
        }
        let core = current_loop().ok_or_else(|| io::Error::other("the event loop is gone"))?;
        let handle = self.handles().watch(socket, owner, ready)?;
        Ok(Box::new(UvWatch {
            core,
            handle,
            writable: AtomicBool::new(false),
        }))
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.spawn_background(task);
    }
}

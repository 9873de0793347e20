//! The held locks: each one's handle (`FileHeld`), what it keeps (a [`Hold`]), and the lost check
//! that `stat`s their files while any is held.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use distlock_core::sync::lock;
use distlock_core::{AcquireRequest, BoxFuture, Error, Held, HeldCore, HeldLock, Result};
use tokio::time::Instant;

use crate::os::{self, FileId};
use crate::{BACKEND, Inner};

/// What a held lock keeps: its OS locks and its in-process turn, given back when it is dropped.
pub(crate) trait Hold: Send + Sync {
    /// The locked file's descriptor, where the lock is one file (not a semaphore's several).
    #[cfg(unix)]
    fn descriptor(&self) -> Option<std::os::fd::BorrowedFd<'_>>;
}

/// The files of one held lock, by path and identity: what `is_held` and the lost check `stat`.
pub(crate) type Watch = Vec<(PathBuf, FileId)>;

/// The held locks whose files the lost check looks at, and whether its task runs.
#[derive(Default)]
pub(crate) struct Watched {
    files: HashMap<u64, (Watch, Weak<FileHeld>)>,
    running: bool,
}

impl Inner {
    /// Hands out a granted lock: its handle, in the held set and the lost check.
    pub(crate) fn register(
        self: &Arc<Self>,
        req: &AcquireRequest,
        token: u64,
        state: Box<dyn Hold>,
        watch: Watch,
        start: Instant,
    ) -> Result<Held> {
        let id = self.core.held().next_id();
        let held = Arc::new(FileHeld {
            id,
            core: HeldCore::new(req.target(BACKEND).to_string(), token),
            state: Mutex::new(Some(state)),
            files: watch.clone(),
            backend: Arc::downgrade(self),
        });
        self.core.held().insert(id, &held);
        if !watch.is_empty() {
            self.watch(id, watch, &held);
        }
        tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, token, waited_us = start.elapsed().as_micros() as u64, "acquired");
        if self.core.closed().is_cancelled() {
            // close() ran while we were acquiring: do not hand out a lock nobody will release.
            held.release_now();
            return Err(Error::Closed {
                backend: BACKEND,
                detail: format!("; stopped acquiring {}", req.target(BACKEND)),
            });
        }
        Ok(held)
    }

    /// Adds a held lock to the lost check, starting the check's task if it is not running.
    fn watch(self: &Arc<Self>, id: u64, files: Watch, held: &Arc<FileHeld>) {
        let Some(every) = self.lost_check else {
            return;
        };
        let mut watched = lock(&self.watched);
        watched.files.insert(id, (files, Arc::downgrade(held)));
        if watched.running {
            return;
        }
        // Outside a tokio runtime there is nothing to run the check on; the next grant inside
        // one starts it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        watched.running = true;
        drop(watched);
        runtime.spawn(check_files(Arc::downgrade(self), every));
    }

    pub(crate) fn unwatch(&self, id: u64) {
        if self.lost_check.is_some() {
            lock(&self.watched).files.remove(&id);
        }
    }
}

/// The lost check: every `every`, `stat`s the path of each held lock and reports the locks
/// whose file was deleted or replaced as lost. Ends when nothing is held (the next grant starts
/// it again) or the backend is gone.
async fn check_files(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let files: Vec<(Watch, Weak<FileHeld>)> = {
            let mut watched = lock(&inner.watched);
            if watched.files.is_empty() || inner.core.closed().is_cancelled() {
                watched.running = false;
                return;
            }
            watched.files.values().cloned().collect()
        };
        drop(inner);
        for (paths, held) in files {
            // An error other than "not found" (permissions, I/O) proves nothing: keep the lock.
            let gone = paths
                .iter()
                .find(|(path, id)| os::path_identity(path).is_ok_and(|now| now != Some(*id)));
            if let Some((path, _)) = gone
                && let Some(held) = held.upgrade()
            {
                held.lose_file(path);
            }
        }
    }
}

pub(crate) struct FileHeld {
    id: u64,
    core: HeldCore,
    /// What it keeps; `None` once released or lost.
    state: Mutex<Option<Box<dyn Hold>>>,
    /// The locked files' paths and identities, for `is_held` and the lost check.
    files: Watch,
    backend: Weak<Inner>,
}

impl FileHeld {
    fn lose_file(&self, path: &Path) {
        self.lose(format!(
            "its lock file {} was deleted or replaced while held",
            path.display()
        ));
    }

    /// Releases now; returns whether this call let go of the lock (false if it was released
    /// or lost before).
    pub(crate) fn release_now(&self) -> bool {
        let state = lock(&self.state).take();
        self.core.mark_released();
        let Some(state) = state else {
            return false;
        };
        drop(state);
        self.forget();
        tracing::debug!(backend = BACKEND, token = self.core.token(), "released");
        true
    }

    /// The lock is known lost: fire the signal, and give back the OS lock and the in-process
    /// turn at once, so a re-acquire in this process does not wait for `release()`.
    fn lose(&self, reason: String) {
        let state = lock(&self.state).take();
        let Some(state) = state else {
            return;
        };
        tracing::debug!(backend = BACKEND, token = self.core.token(), reason = %reason, "lost");
        self.core.lost().fire(reason);
        drop(state);
        self.forget();
    }

    fn forget(&self) {
        if let Some(backend) = self.backend.upgrade() {
            backend.core.held().remove(self.id);
            backend.unwatch(self.id);
        }
    }
}

impl HeldLock for FileHeld {
    fn core(&self) -> &HeldCore {
        &self.core
    }

    /// Not released, not lost, and (one `stat`) the path still names the locked file. A file
    /// found deleted or replaced makes the lock lost right here, as the periodic check would.
    fn is_held(&self) -> bool {
        if !self.core.is_held() {
            return false;
        }
        let gone = self
            .files
            .iter()
            .find(|(path, id)| os::path_identity(path).is_ok_and(|now| now != Some(*id)));
        if let Some((path, _)) = gone {
            self.lose_file(path);
            return false;
        }
        true
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        self.release_now();
        Box::pin(async { Ok(()) })
    }

    /// A duplicate of the locked file's descriptor (a lock or a reader-writer lock; `None` for
    /// a semaphore's several slots). Duplicated under the state's lock, so a release or a loss
    /// racing this call cannot close the descriptor in between.
    #[cfg(unix)]
    fn duplicate_descriptor(&self) -> Option<io::Result<std::os::fd::OwnedFd>> {
        let state = lock(&self.state);
        Some(state.as_ref()?.descriptor()?.try_clone_to_owned())
    }
}

impl Drop for FileHeld {
    fn drop(&mut self) {
        self.release_now();
    }
}

//! The lock file of a name: a lock (and a reader-writer lock's writer) is an exclusive OS lock
//! on it, readers share one OS shared lock per process. Owns the per-name state of the file in
//! this process and what a held lock of it keeps.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::{AcquireRequest, Error, Held, Result, Ticket, race};
use tokio::time::Instant;

use crate::held::Hold;
use crate::names::lock_file_name;
use crate::os::{self, FileId, Mode, PendingLock};
use crate::{BACKEND, Inner, LOCK_CALL, MAX_REOPENS, fence, io_at, replaced_too_often};

/// Per-name state of a lock file in this process.
#[derive(Default)]
pub(crate) struct LockState {
    /// Serializes OS acquisition: one caller per process and name talks to the OS at a time.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The OS shared lock all readers of this process share, while any of them holds it.
    shared: Mutex<Weak<SharedOs>>,
    /// An OS wait left running by a caller that timed out or was cancelled, for the next caller.
    pending: Mutex<Option<(Mode, PendingLock)>>,
}

struct SharedOs {
    /// Kept open: the OS shared lock lives exactly as long as this file, that is until the last
    /// reader holding this `Arc` lets go.
    file: File,
    id: FileId,
    token: u64,
}

/// What a held lock of the file keeps. Fields drop in order: the OS lock first (closing the file
/// lets go of it; the last reader closes the shared file), then the in-process turn.
enum LockHold {
    Exclusive {
        file: File,
        _ticket: Ticket,
        _entry: Arc<Entry<LockState>>,
    },
    Shared {
        os: Arc<SharedOs>,
        _ticket: Ticket,
        _entry: Arc<Entry<LockState>>,
    },
}

impl Hold for LockHold {
    #[cfg(unix)]
    fn descriptor(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(match self {
            LockHold::Exclusive { file, .. } => file.as_fd(),
            LockHold::Shared { os, .. } => os.file.as_fd(),
        })
    }
}

impl Inner {
    /// Acquires the lock file of `req.name` in `mode`: the in-process turn, then the OS lock
    /// (a reader joins this process's OS shared lock while it still holds the path's file).
    pub(crate) async fn acquire_lock(
        self: Arc<Self>,
        req: AcquireRequest,
        mode: Mode,
        entry: Arc<Entry<LockState>>,
        mut ticket: Ticket,
        start: Instant,
    ) -> Result<Option<Held>> {
        let deadline = req.timeout.deadline(start);
        let gate = match self
            .turn(&req, &mut ticket, &entry.state.gate, deadline)
            .await
        {
            Ok(gate) => gate,
            Err(why) => return why.into_outcome(&req, BACKEND),
        };
        let file_name = lock_file_name(&req.name);
        let path = self.dir.join(&file_name);
        if mode == Mode::Shared {
            let readers = lock(&entry.state.shared).upgrade();
            // Join the readers' OS lock only while the path still names its file.
            if let Some(os) = readers
                && os::path_identity(&path).map_err(io_at("stat", &path))? == Some(os.id)
            {
                drop(gate);
                let (token, id) = (os.token, os.id);
                let state = Box::new(LockHold::Shared {
                    os,
                    _ticket: ticket,
                    _entry: entry,
                });
                return self
                    .register(&req, token, state, vec![(path, id)], start)
                    .map(Some);
            }
        }
        let Some((file, id)) = self.os_lock(&req, &path, &entry, mode, deadline).await? else {
            return Ok(None);
        };
        let key = self.fence_key(&file_name);
        let (token, state) = match mode {
            Mode::Exclusive => {
                let token = fence::next_token(key, &file).map_err(io_at("write", &path))?;
                let state: Box<dyn Hold> = Box::new(LockHold::Exclusive {
                    file,
                    _ticket: ticket,
                    _entry: entry,
                });
                (token, state)
            }
            Mode::Shared => {
                let token =
                    fence::observe(key, os::read_counter(&file).map_err(io_at("read", &path))?);
                let os = Arc::new(SharedOs { file, id, token });
                *lock(&entry.state.shared) = Arc::downgrade(&os);
                let state: Box<dyn Hold> = Box::new(LockHold::Shared {
                    os,
                    _ticket: ticket,
                    _entry: entry,
                });
                (token, state)
            }
        };
        drop(gate);
        self.register(&req, token, state, vec![(path, id)], start)
            .map(Some)
    }

    /// Takes the OS lock on `path`: one non-blocking try, then (unless the timeout is zero) a
    /// wait on a dedicated thread, resuming a wait an earlier caller left running. A grant on a
    /// file the path no longer names (deleted or replaced meanwhile) is dropped and the path is
    /// opened and locked again, at most [`MAX_REOPENS`] times, within the deadline.
    async fn os_lock(
        &self,
        req: &AcquireRequest,
        path: &Path,
        entry: &Entry<LockState>,
        mode: Mode,
        deadline: Option<Instant>,
    ) -> Result<Option<(File, FileId)>> {
        // A wait for the other mode is dropped: its thread lets go the moment it is granted.
        let mut resumed = lock(&entry.state.pending)
            .take()
            .filter(|(m, _)| *m == mode)
            .map(|(_, rx)| rx);
        for _ in 0..=MAX_REOPENS {
            let pending = match resumed.take() {
                Some(pending) => pending,
                None => {
                    let file = self.open(path)?;
                    if os::try_lock(&file, mode).map_err(io_at(LOCK_CALL, path))? {
                        if let Some(id) =
                            os::still_named(&file, path).map_err(io_at("stat", path))?
                        {
                            return Ok(Some((file, id)));
                        }
                        tracing::debug!(backend = BACKEND, path = %path.display(), "lock file replaced while locking it; locking the path again");
                        continue;
                    }
                    if deadline.is_some_and(|d| d <= Instant::now()) {
                        return Ok(None);
                    }
                    os::lock_in_background(file, mode).map_err(io_at(LOCK_CALL, path))?
                }
            };
            let Some(file) = self
                .wait_os(req, path, entry, mode, pending, deadline)
                .await?
            else {
                return Ok(None);
            };
            if let Some(id) = os::still_named(&file, path).map_err(io_at("stat", path))? {
                return Ok(Some((file, id)));
            }
            // Granted on a file that was deleted (and maybe recreated) while we waited: that
            // lock excludes nobody who opens the path now.
            tracing::debug!(backend = BACKEND, path = %path.display(), "lock file replaced while waiting on it; locking the path again");
        }
        Err(replaced_too_often(req, path))
    }

    /// Waits for a background OS wait. On a timeout, cancel or close the wait keeps running
    /// for the next caller instead of starting another thread.
    async fn wait_os(
        &self,
        req: &AcquireRequest,
        path: &Path,
        entry: &Entry<LockState>,
        mode: Mode,
        mut pending: PendingLock,
        deadline: Option<Instant>,
    ) -> Result<Option<File>> {
        match race(
            &mut pending,
            deadline,
            req.cancel.as_ref(),
            self.core.closed(),
        )
        .await
        .done()
        {
            Ok(Ok(Ok(file))) => Ok(Some(file)),
            Ok(Ok(Err(e))) => Err(Error::io_call(BACKEND, LOCK_CALL, path, e)),
            Ok(Err(_)) => Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "the OS wait for {} ended without an answer",
                    req.target(BACKEND)
                ),
                cause: Default::default(),
            }),
            Err(why) => {
                *lock(&entry.state.pending) = Some((mode, pending));
                why.into_outcome(req, BACKEND)
            }
        }
    }
}

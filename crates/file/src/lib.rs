//! distlock-file: locks on OS file locks (`flock` on Unix, `LockFileEx` on Windows).
//!
//! - A lock (and the writer side of a reader-writer lock of the same name) is an exclusive lock
//!   on `<dir>/<stem>.lock`; readers take shared locks on the same file, and the readers of one
//!   process share a single OS shared lock.
//! - A semaphore of `maxCount` N is N slot files `<stem>.sem<i>`; a holder owns one slot.
//! - Callers in one process queue FIFO in memory (distlock-core's queue); only the caller at the
//!   head talks to the OS. A contended OS wait runs on a dedicated thread, so waiting never
//!   parks a tokio worker or a libuv pool thread, and a cancelled wait leaves nothing held.
//! - The fencing counter is kept in the lock file and bumped while the lock is held.
//! - Lock files are never deleted: deleting a lock file while another process waits on it would
//!   let two processes lock two different files of the same name.

mod names;
mod os;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use distlock_core::HeldSet;
use distlock_core::queue::Entry;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Error, Held, HeldLock,
    Interrupted, LockInfo, LockKind, LostSignal, Registry, Result, SHARED_CAPACITY, Ticket, race,
    validate_name,
};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use names::file_stem;
use os::{Mode, PendingLock};

const BACKEND: &str = "file";

/// Maps an I/O error to [`Error::Io`] naming `path`.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::io(BACKEND, path, e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent at each step, so a panic while
    // holding one of these locks cannot break an invariant; keep going rather than poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file-lock backend over one directory.
pub struct FileBackend {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    dir_ready: AtomicBool,
    locks: Registry<String, LockState>,
    semaphores: Registry<String, SemState>,
    closed: CancellationToken,
    held: HeldSet<FileHeld>,
}

/// Per-name state of a lock file in this process.
#[derive(Default)]
struct LockState {
    /// Serializes OS acquisition: one caller per process and name talks to the OS at a time.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The OS shared lock all readers of this process share, with their count.
    shared: Mutex<Option<SharedOs>>,
    /// An OS wait left running by a caller that timed out or was cancelled, for the next caller.
    pending: Mutex<Option<(Mode, PendingLock)>>,
}

struct SharedOs {
    /// Kept open: the OS shared lock lives exactly as long as this file.
    _file: File,
    holders: usize,
    token: u64,
}

/// Per-name state of a semaphore in this process.
struct SemState {
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The slots this process holds.
    taken: Mutex<Vec<bool>>,
    /// Signalled when this process frees a slot.
    freed: Notify,
}

impl FileBackend {
    /// A backend keeping its lock files in `directory` (created on first use if missing).
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: directory.into(),
                dir_ready: AtomicBool::new(false),
                locks: Registry::default(),
                semaphores: Registry::default(),
                closed: CancellationToken::new(),
                held: HeldSet::default(),
            }),
        }
    }

    /// The lock directory.
    pub fn directory(&self) -> &Path {
        &self.inner.dir
    }

    /// How many locks this backend holds right now.
    pub fn held_count(&self) -> usize {
        self.inner.held.len()
    }
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn acquire(&self, req: AcquireRequest) -> Result<Acquiring> {
        validate_name(&req.name)?;
        let inner = self.inner.clone();
        if inner.closed.is_cancelled() {
            return Err(Error::Closed {
                backend: BACKEND,
                detail: format!("; cannot acquire {}", req.target(BACKEND)),
            });
        }
        inner.ensure_dir()?;
        let start = Instant::now();
        match req.kind {
            LockKind::Semaphore { max_count } => {
                let entry = inner
                    .semaphores
                    .entry(&req.name, u64::from(max_count), || SemState {
                        gate: Arc::default(),
                        taken: Mutex::new(vec![false; max_count as usize]),
                        freed: Notify::new(),
                    });
                if entry.queue.capacity() != u64::from(max_count) {
                    return Err(Error::invalid(
                        "maxCount",
                        format!(
                            "of {} is {max_count}, but this process already uses it with maxCount {}",
                            req.target(BACKEND),
                            entry.queue.capacity()
                        ),
                    ));
                }
                let ticket = entry.queue.enqueue(1);
                Ok(Box::pin(async move {
                    inner.acquire_slot(req, entry, ticket, start).await
                }))
            }
            kind => {
                let mode = if kind == LockKind::Read {
                    Mode::Shared
                } else {
                    Mode::Exclusive
                };
                let entry = inner
                    .locks
                    .entry(&req.name, SHARED_CAPACITY, LockState::default);
                let ticket = entry.queue.enqueue(if mode == Mode::Shared {
                    1
                } else {
                    SHARED_CAPACITY
                });
                Ok(Box::pin(async move {
                    inner.acquire_lock(req, mode, entry, ticket, start).await
                }))
            }
        }
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move {
            validate_name(&name)?;
            let stem = file_stem(&name);
            // A probe on a file of its own: flock conflicts with this process's locks too.
            let probe = |path: PathBuf| -> Result<Option<(bool, u64)>> {
                let file = match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(BACKEND, &path, e)),
                };
                let free = os::try_lock(&file, Mode::Exclusive).map_err(io_at(&path))?;
                let token = os::read_counter(&file).map_err(io_at(&path))?;
                Ok(Some((!free, token)))
            };
            match kind {
                LockKind::Semaphore { max_count } => {
                    let mut busy = 0u32;
                    for slot in 0..max_count {
                        if let Some((true, _)) = probe(inner.dir.join(format!("{stem}.sem{slot}")))?
                        {
                            busy += 1;
                        }
                    }
                    let token = probe(inner.dir.join(format!("{stem}.semtoken")))?.map(|p| p.1);
                    Ok(LockInfo {
                        held: busy >= max_count,
                        holders: Some(busy),
                        lease_remaining: None,
                        fencing_token: token.filter(|&t| t > 0),
                    })
                }
                _ => {
                    let found = probe(inner.dir.join(format!("{stem}.lock")))?;
                    Ok(LockInfo {
                        held: found.is_some_and(|f| f.0),
                        // Readers share one OS lock per process: the OS cannot count them.
                        holders: None,
                        lease_remaining: None,
                        fencing_token: found.map(|f| f.1).filter(|&t| t > 0),
                    })
                }
            }
        })
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        self.inner.closed.cancel();
        for h in self.inner.held.drain() {
            h.lost.fire("the file lock provider was closed");
            h.release_now();
        }
        Box::pin(async { Ok(()) })
    }
}

impl Inner {
    fn ensure_dir(&self) -> Result<()> {
        if self.dir_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        match std::fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                let err = io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "the lock directory path exists and is not a directory",
                );
                return Err(Error::io(BACKEND, &self.dir, err));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
            }
            Err(e) => return Err(Error::io(BACKEND, &self.dir, e)),
        }
        self.dir_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Opens a lock file, recreating the directory if someone removed it since.
    fn open(&self, path: &Path) -> Result<File> {
        match os::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.dir_ready.store(false, Ordering::Release);
                self.ensure_dir()?;
                os::open(path).map_err(io_at(path))
            }
            other => other.map_err(io_at(path)),
        }
    }

    async fn acquire_lock(
        self: Arc<Self>,
        req: AcquireRequest,
        mode: Mode,
        entry: Arc<Entry<LockState>>,
        mut ticket: Ticket,
        start: Instant,
    ) -> Result<Option<Held>> {
        let deadline = req.timeout.deadline(start);
        let cancel = req.cancel.as_ref();
        if let Err(why) = race(ticket.granted(), deadline, cancel, &self.closed)
            .await
            .done()
        {
            return why.into_outcome(&req, BACKEND);
        }
        let gate = match race(
            entry.state.gate.clone().lock_owned(),
            deadline,
            cancel,
            &self.closed,
        )
        .await
        .done()
        {
            Ok(gate) => gate,
            Err(why) => return why.into_outcome(&req, BACKEND),
        };
        if mode == Mode::Shared {
            let mut shared = lock(&entry.state.shared);
            if let Some(os) = shared.as_mut() {
                os.holders += 1;
                let token = os.token;
                drop(shared);
                drop(gate);
                return self
                    .register(&req, token, HeldState::Shared { ticket, entry }, start)
                    .map(Some);
            }
        }
        let path = self.dir.join(format!("{}.lock", file_stem(&req.name)));
        let Some(file) = self.os_lock(&req, &path, &entry, mode, deadline).await? else {
            return Ok(None);
        };
        let state = match mode {
            Mode::Exclusive => {
                let token = os::bump_counter(&file).map_err(io_at(&path))?;
                (
                    token,
                    HeldState::Exclusive {
                        file,
                        ticket,
                        entry,
                    },
                )
            }
            Mode::Shared => {
                let token = os::read_counter(&file).map_err(io_at(&path))?;
                *lock(&entry.state.shared) = Some(SharedOs {
                    _file: file,
                    holders: 1,
                    token,
                });
                (token, HeldState::Shared { ticket, entry })
            }
        };
        drop(gate);
        self.register(&req, state.0, state.1, start).map(Some)
    }

    /// Takes the OS lock on `path`: one non-blocking try, then (unless the timeout is zero) a
    /// wait on a dedicated thread, resuming a wait an earlier caller left running.
    async fn os_lock(
        &self,
        req: &AcquireRequest,
        path: &Path,
        entry: &Entry<LockState>,
        mode: Mode,
        deadline: Option<Instant>,
    ) -> Result<Option<File>> {
        let left_running = lock(&entry.state.pending).take();
        let mut pending = match left_running {
            Some((m, rx)) if m == mode => rx,
            // A wait for the other mode is dropped: its thread lets go the moment it is granted.
            _ => {
                let file = self.open(path)?;
                if os::try_lock(&file, mode).map_err(io_at(path))? {
                    return Ok(Some(file));
                }
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    return Ok(None);
                }
                os::lock_in_background(file, mode).map_err(io_at(path))?
            }
        };
        match race(&mut pending, deadline, req.cancel.as_ref(), &self.closed)
            .await
            .done()
        {
            Ok(Ok(Ok(file))) => Ok(Some(file)),
            Ok(Ok(Err(e))) => Err(Error::io(BACKEND, path, e)),
            Ok(Err(_)) => Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "the OS wait for {} ended without an answer",
                    req.target(BACKEND)
                ),
            }),
            Err(why) => {
                // Keep the OS wait for the next caller instead of starting another thread.
                *lock(&entry.state.pending) = Some((mode, pending));
                why.into_outcome(req, BACKEND)
            }
        }
    }

    async fn acquire_slot(
        self: Arc<Self>,
        req: AcquireRequest,
        entry: Arc<Entry<SemState>>,
        mut ticket: Ticket,
        start: Instant,
    ) -> Result<Option<Held>> {
        let deadline = req.timeout.deadline(start);
        let cancel = req.cancel.as_ref();
        if let Err(why) = race(ticket.granted(), deadline, cancel, &self.closed)
            .await
            .done()
        {
            return why.into_outcome(&req, BACKEND);
        }
        let gate = match race(
            entry.state.gate.clone().lock_owned(),
            deadline,
            cancel,
            &self.closed,
        )
        .await
        .done()
        {
            Ok(gate) => gate,
            Err(why) => return why.into_outcome(&req, BACKEND),
        };
        let stem = file_stem(&req.name);
        let mut backoff = Duration::from_millis(1);
        let (slot, file) = loop {
            // Listen for slots this process frees before scanning, so none is missed.
            let freed = entry.state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(found) = self.try_slots(&stem, &entry)? {
                break found;
            }
            // Slots held by other processes cannot signal us: poll them with a capped backoff.
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Ok(None);
            }
            let retry_at = deadline.map_or(now + backoff, |d| d.min(now + backoff));
            match race(freed, Some(retry_at), cancel, &self.closed)
                .await
                .done()
            {
                Ok(()) | Err(Interrupted::TimedOut) => {}
                Err(why) => return why.into_outcome(&req, BACKEND),
            }
            backoff = (backoff * 2).min(Duration::from_millis(50));
        };
        drop(gate);
        let state = HeldState::Slot {
            file,
            slot,
            ticket,
            entry,
        };
        let token = match self.bump_semaphore_counter(&stem, &req).await {
            Ok(token) => token,
            Err(e) => {
                drop(state);
                return Err(e);
            }
        };
        self.register(&req, token, state, start).map(Some)
    }

    fn try_slots(&self, stem: &str, entry: &Entry<SemState>) -> Result<Option<(usize, File)>> {
        let count = lock(&entry.state.taken).len();
        for slot in 0..count {
            if lock(&entry.state.taken)[slot] {
                continue;
            }
            let path = self.dir.join(format!("{stem}.sem{slot}"));
            let file = self.open(&path)?;
            if os::try_lock(&file, Mode::Exclusive).map_err(io_at(&path))? {
                lock(&entry.state.taken)[slot] = true;
                return Ok(Some((slot, file)));
            }
        }
        Ok(None)
    }

    /// The semaphore's fencing counter lives in its own file, bumped under a short exclusive
    /// lock (holders of different slots run concurrently).
    async fn bump_semaphore_counter(&self, stem: &str, req: &AcquireRequest) -> Result<u64> {
        let path = self.dir.join(format!("{stem}.semtoken"));
        let file = self.open(&path)?;
        loop {
            if os::try_lock(&file, Mode::Exclusive).map_err(io_at(&path))? {
                return os::bump_counter(&file).map_err(io_at(&path));
            }
            // Another process is inside its few-microsecond bump; yield and retry.
            let retry = async { tokio::time::sleep(Duration::from_micros(200)).await };
            if let Err(why) = race(retry, None, req.cancel.as_ref(), &self.closed)
                .await
                .done()
            {
                // Without a deadline only a cancel or a close ends this wait, and both are errors.
                why.into_outcome::<()>(req, BACKEND)?;
            }
        }
    }

    fn register(
        self: &Arc<Self>,
        req: &AcquireRequest,
        token: u64,
        state: HeldState,
        start: Instant,
    ) -> Result<Held> {
        let id = self.held.next_id();
        let held = Arc::new(FileHeld {
            id,
            token,
            lost: LostSignal::new(),
            released: AtomicBool::new(false),
            state: Mutex::new(Some(state)),
            backend: Arc::downgrade(self),
        });
        self.held.insert(id, &held);
        tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, token, waited_us = start.elapsed().as_micros() as u64, "acquired");
        if self.closed.is_cancelled() {
            // close() ran while we were acquiring: do not hand out a lock nobody will release.
            held.release_now();
            return Err(Error::Closed {
                backend: BACKEND,
                detail: format!("; stopped acquiring {}", req.target(BACKEND)),
            });
        }
        Ok(held)
    }
}

/// What a held file lock owns; dropping it releases the OS lock, then the in-process turn.
enum HeldState {
    Exclusive {
        file: File,
        ticket: Ticket,
        entry: Arc<Entry<LockState>>,
    },
    Shared {
        ticket: Ticket,
        entry: Arc<Entry<LockState>>,
    },
    Slot {
        file: File,
        slot: usize,
        ticket: Ticket,
        entry: Arc<Entry<SemState>>,
    },
}

struct FileHeld {
    id: u64,
    token: u64,
    lost: LostSignal,
    released: AtomicBool,
    state: Mutex<Option<HeldState>>,
    backend: Weak<Inner>,
}

impl FileHeld {
    /// Releases now; returns whether this call did it.
    fn release_now(&self) -> bool {
        let Some(state) = lock(&self.state).take() else {
            return false;
        };
        match state {
            HeldState::Exclusive {
                file,
                ticket,
                entry,
            } => {
                drop(file); // closing the file releases the OS lock
                drop(ticket);
                drop(entry);
            }
            HeldState::Shared { ticket, entry } => {
                let mut shared = lock(&entry.state.shared);
                if let Some(os) = shared.as_mut() {
                    os.holders -= 1;
                    if os.holders == 0 {
                        *shared = None;
                    }
                }
                drop(shared);
                drop(ticket);
            }
            HeldState::Slot {
                file,
                slot,
                ticket,
                entry,
            } => {
                drop(file);
                lock(&entry.state.taken)[slot] = false;
                entry.state.freed.notify_waiters();
                drop(ticket);
            }
        }
        self.released.store(true, Ordering::Release);
        if let Some(backend) = self.backend.upgrade() {
            backend.held.remove(self.id);
        }
        tracing::debug!(backend = BACKEND, token = self.token, "released");
        true
    }
}

impl HeldLock for FileHeld {
    fn fencing_token(&self) -> u64 {
        self.token
    }

    fn lost(&self) -> &LostSignal {
        &self.lost
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        self.release_now();
        Box::pin(async { Ok(()) })
    }
}

impl Drop for FileHeld {
    fn drop(&mut self) {
        self.release_now();
    }
}

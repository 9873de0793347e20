//! distlock-file: locks on OS file locks (`flock` on Unix, `LockFileEx` on Windows).
//!
//! - A lock (and the writer side of a reader-writer lock of the same name) is an exclusive lock
//!   on `<dir>/<stem>.lock`; readers take shared locks on the same file, and the readers of one
//!   process share a single OS shared lock.
//! - A semaphore of `maxCount` N is N slot files `<stem>.sem<i>`; a holder of k permits owns k
//!   slots, taken all or nothing.
//! - Callers in one process queue FIFO in memory (distlock-core's queue); only the caller at the
//!   head talks to the OS. A contended OS wait runs on a dedicated thread, so waiting never
//!   parks a tokio worker or a libuv pool thread, and a cancelled wait leaves nothing held.
//! - The fencing counter is kept in the lock file and bumped while the lock is held. Tokens
//!   never go back to or below one this process has seen for the name (see `fence`).
//! - Lock files are never deleted by distlock, except by [`FileBackend::remove_unused`] (files
//!   nobody holds; see there for whom that is safe).
//!
//! # A lock file (or the directory) deleted while held
//!
//! `flock` locks an inode, not a path. If someone deletes a lock file while it is held, the
//! holder keeps a lock on a file nobody can open any more, and the next caller creates and locks
//! a new file of the same name. What distlock does about it:
//!
//! - **No grant on a stale file.** After every OS grant (a try, a blocking wait, a wait resumed
//!   from an earlier caller, a semaphore slot, the semaphore's counter file), the backend checks
//!   that the path still names the locked file (`fstat` of the descriptor against `stat` of the
//!   path: device and inode). If not, it closes that descriptor and opens and locks the path
//!   again, up to [`MAX_REOPENS`] times and within the acquire's deadline. A waiter that was
//!   blocked on the deleted file therefore queues behind whoever holds the new one, instead of
//!   being granted beside it.
//! - **Fencing tokens do not repeat** for a name this process has locked before: a new file's
//!   counter is raised above the largest token this process has seen for the name. A process
//!   that never saw the name and finds a fresh file starts at 1 again: only a surviving process
//!   remembers the old counter. Do not delete lock files.
//! - **The earlier holder is told.** `handle.isHeld` (`HeldLock::is_held`) `stat`s the path
//!   synchronously and returns false as soon as the file is gone or replaced. While a backend
//!   holds locks, a check also runs every [`DEFAULT_LOST_CHECK`] (see
//!   [`FileBackend::with_lost_check_interval`]) and `stat`s the path of every held lock. Either
//!   way, a lock whose file was deleted or replaced is reported lost (`handle.signal` aborts)
//!   and gives back its descriptor and its place in the in-process queue at once, so a
//!   re-acquire in the same process proceeds without `release()`. Until the holder checks or
//!   the next periodic check runs (at most one interval), it does not know, and a newcomer can
//!   hold the new file meanwhile. That overlap is the residual risk of deleting lock files, and
//!   it is why they must stay in place.
//!
//! Apart from the deletion above and `close()`, a file lock is never lost while its process
//! lives: the OS holds it until the descriptor is closed.

mod fence;
mod names;
mod os;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
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

pub use names::{file_stem, lock_file_name, semaphore_counter_file_name, slot_file_name};
use os::{FileId, Mode, PendingLock};

const BACKEND: &str = "file";

/// How many times one acquire reopens a lock file that was deleted or replaced under it before
/// it gives up with a backend error (someone keeps deleting the lock directory).
pub const MAX_REOPENS: u32 = 64;

/// How often a backend holding locks checks that their files are still in place.
pub const DEFAULT_LOST_CHECK: Duration = Duration::from_secs(1);

/// Maps an I/O error of the system call `syscall` to [`Error::Io`] naming `path`.
fn io_at<'p>(syscall: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> Error + 'p {
    move |e| Error::io_call(BACKEND, syscall, path, e)
}

/// The system call that takes and tests OS file locks, as Node would name it.
const LOCK_CALL: &str = if cfg!(windows) { "LockFileEx" } else { "flock" };

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent at each step, so a panic while
    // holding one of these locks cannot break an invariant; keep going rather than poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file-lock backend over one directory.
#[derive(Clone)]
pub struct FileBackend {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    dir_ready: AtomicBool,
    /// The directory canonicalized once it exists, for the fencing floor's keys.
    canonical_dir: OnceLock<PathBuf>,
    locks: Registry<String, LockState>,
    semaphores: Registry<String, SemState>,
    closed: CancellationToken,
    held: HeldSet<FileHeld>,
    /// `None`: no check that held files stay in place.
    lost_check: Option<Duration>,
    watched: Mutex<Watched>,
}

/// The files of one held lock, by path and identity: what `is_held` and the lost check `stat`.
type Watch = Vec<(PathBuf, FileId)>;

/// The held locks whose files the lost check looks at, and whether its task runs.
#[derive(Default)]
struct Watched {
    files: HashMap<u64, (Watch, Weak<FileHeld>)>,
    running: bool,
}

/// Per-name state of a lock file in this process.
#[derive(Default)]
struct LockState {
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

/// Per-name state of a semaphore in this process.
struct SemState {
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The slots this process holds.
    taken: Mutex<Vec<bool>>,
    /// Signalled when this process frees a slot.
    freed: Notify,
}

/// Whether `file_name` is one this backend makes: `<stem>-<16 hex>.lock`, `.sem<N>` or
/// `.semtoken` (see [`names::file_stem`]).
fn is_lock_file(file_name: &str) -> bool {
    let Some((stem, ext)) = file_name.rsplit_once('.') else {
        return false;
    };
    let known = ext == "lock"
        || ext == "semtoken"
        || ext
            .strip_prefix("sem")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let hashed = stem.rsplit_once('-').is_some_and(|(_, hex)| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    });
    known && hashed
}

/// The path of the lock file of `name` in `directory` (a lock and a reader-writer lock of the
/// name use the same file), or an invalid-argument error for a name no lock can have. The
/// path where `flock(1)` and `flock(2)` users exclude distlock's lockers of the name.
pub fn lock_file_path(directory: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    Ok(directory.join(lock_file_name(name)))
}

impl FileBackend {
    /// Removes the lock files in the directory that nobody holds now, and returns how many. A
    /// file is removed only while this call holds its exclusive OS lock.
    ///
    /// Safe against distlock lockers only: every distlock acquire checks, once granted, that the
    /// path still names the file it locked (device and inode), else it locks the path again, so
    /// no distlock process is left holding a removed file. Not safe against other programs that
    /// lock these files (`flock(1)`, `flock(2)` callers such as Python's `fcntl.flock`): one that
    /// opened a file before this call removed it and locks it after holds a lock on a file
    /// nobody can open any more, beside the next distlock holder of the new file. A fencing
    /// counter that goes with a file starts again from the clock, above every token it gave.
    /// Files of other programs are never touched: only names this backend makes.
    pub fn remove_unused(&self) -> Result<usize> {
        let dir = &self.inner.dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io_call(BACKEND, "scandir", dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io_at("scandir", dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_lock_file(&name) {
                continue;
            }
            let path = entry.path();
            // Never create: a file removed meanwhile is someone else's business now.
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io_call(BACKEND, "open", &path, e)),
            };
            if !os::try_lock(&file, Mode::Exclusive).map_err(io_at(LOCK_CALL, &path))? {
                continue; // held (or a waiter is about to have it)
            }
            if os::still_named(&file, &path)
                .map_err(io_at("stat", &path))?
                .is_none()
            {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Windows refuses to delete a file another process has open (a waiter): it
                // stays, harmlessly, until a later run.
                Err(_) if cfg!(windows) => {}
                Err(e) => return Err(Error::io_call(BACKEND, "unlink", &path, e)),
            }
            // Dropping the file lets go of its lock, after the path is gone.
            drop(file);
        }
        Ok(removed)
    }

    /// A backend keeping its lock files in `directory` (created on first use if missing).
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: directory.into(),
                dir_ready: AtomicBool::new(false),
                canonical_dir: OnceLock::new(),
                locks: Registry::default(),
                semaphores: Registry::default(),
                closed: CancellationToken::new(),
                held: HeldSet::default(),
                lost_check: Some(DEFAULT_LOST_CHECK),
                watched: Mutex::default(),
            }),
        }
    }

    /// Sets how often held locks check that their files are still in place (`None`: never).
    /// Each check is one `stat` per held lock. Call before the first acquire.
    pub fn with_lost_check_interval(mut self, every: Option<Duration>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.lost_check = every.filter(|d| !d.is_zero());
        }
        self
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
            LockKind::Semaphore { max_count, permits } => {
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
                let ticket = entry.queue.enqueue(u64::from(permits));
                Ok(Box::pin(async move {
                    inner
                        .acquire_slots(req, permits, entry, ticket, start)
                        .await
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
                    Err(e) => return Err(Error::io_call(BACKEND, "open", &path, e)),
                };
                let free = os::try_lock(&file, Mode::Exclusive).map_err(io_at(LOCK_CALL, &path))?;
                let token = os::read_counter(&file).map_err(io_at("read", &path))?;
                Ok(Some((!free, token)))
            };
            match kind {
                LockKind::Semaphore { max_count, .. } => {
                    let mut busy = 0u32;
                    for slot in 0..max_count {
                        if let Some((true, _)) = probe(inner.dir.join(slot_file_name(&stem, slot)))?
                        {
                            busy += 1;
                        }
                    }
                    let token =
                        probe(inner.dir.join(semaphore_counter_file_name(&stem)))?.map(|p| p.1);
                    Ok(LockInfo {
                        held: busy >= max_count,
                        holders: Some(busy),
                        lease_remaining: None,
                        fencing_token: token.filter(|&t| t > 0),
                    })
                }
                _ => {
                    let found = probe(inner.dir.join(lock_file_name(&name)))?;
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
                return Err(Error::io_call(BACKEND, "mkdir", &self.dir, err));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(io_at("mkdir", &self.dir))?;
            }
            Err(e) => return Err(Error::io_call(BACKEND, "stat", &self.dir, e)),
        }
        if self.canonical_dir.get().is_none()
            && let Ok(canonical) = std::fs::canonicalize(&self.dir)
        {
            let _ = self.canonical_dir.set(canonical);
        }
        self.dir_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The fencing floor's key for the file `file_name` in the lock directory.
    fn fence_key(&self, file_name: &str) -> u64 {
        fence::key(
            &self
                .canonical_dir
                .get()
                .unwrap_or(&self.dir)
                .join(file_name),
        )
    }

    /// Opens a lock file, recreating the directory if someone removed it since.
    fn open(&self, path: &Path) -> Result<File> {
        match os::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.dir_ready.store(false, Ordering::Release);
                self.ensure_dir()?;
                os::open(path).map_err(io_at("open", path))
            }
            other => other.map_err(io_at("open", path)),
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
                let state = HeldState::Shared { os, ticket, entry };
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
                let state = HeldState::Exclusive {
                    file,
                    ticket,
                    entry,
                };
                (token, state)
            }
            Mode::Shared => {
                let token =
                    fence::observe(key, os::read_counter(&file).map_err(io_at("read", &path))?);
                let os = Arc::new(SharedOs { file, id, token });
                *lock(&entry.state.shared) = Arc::downgrade(&os);
                (token, HeldState::Shared { os, ticket, entry })
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
        match race(&mut pending, deadline, req.cancel.as_ref(), &self.closed)
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

    async fn acquire_slots(
        self: Arc<Self>,
        req: AcquireRequest,
        permits: u32,
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
        let slots = loop {
            // Listen for slots this process frees before scanning, so none is missed.
            let freed = entry.state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(found) = self.try_slots(&req, &stem, permits, &entry)? {
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
        let mut watch = Vec::with_capacity(slots.len());
        let mut files = Vec::with_capacity(slots.len());
        for (slot, file, id) in slots {
            watch.push((self.dir.join(slot_file_name(&stem, slot as u32)), id));
            files.push((slot, file));
        }
        let state = HeldState::Slots {
            files,
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
        self.register(&req, token, state, watch, start).map(Some)
    }

    /// One pass over the slots this process does not hold: `permits` free ones whose files are
    /// still in place, all or none (slots taken by a pass that finds too few are let go).
    fn try_slots(
        &self,
        req: &AcquireRequest,
        stem: &str,
        permits: u32,
        entry: &Entry<SemState>,
    ) -> Result<Option<Vec<(usize, File, FileId)>>> {
        let count = lock(&entry.state.taken).len();
        let mut found = Vec::with_capacity(permits as usize);
        let give_back = |found: Vec<(usize, File, FileId)>| {
            let mut taken = lock(&entry.state.taken);
            for (slot, file, _) in found {
                drop(file);
                taken[slot] = false;
            }
        };
        for slot in 0..count {
            if found.len() == permits as usize {
                break;
            }
            if lock(&entry.state.taken)[slot] {
                continue;
            }
            let path = self.dir.join(slot_file_name(stem, slot as u32));
            match self.try_slot(req, &path) {
                Ok(Some((file, id))) => {
                    lock(&entry.state.taken)[slot] = true;
                    found.push((slot, file, id));
                }
                Ok(None) => {}
                Err(e) => {
                    give_back(found);
                    return Err(e);
                }
            }
        }
        if found.len() == permits as usize {
            return Ok(Some(found));
        }
        give_back(found);
        Ok(None)
    }

    /// One non-waiting try on the slot file `path`: its file and identity if this call locked
    /// it and the path still names it, `None` when someone holds it.
    fn try_slot(&self, req: &AcquireRequest, path: &Path) -> Result<Option<(File, FileId)>> {
        for _ in 0..=MAX_REOPENS {
            let file = self.open(path)?;
            if !os::try_lock(&file, Mode::Exclusive).map_err(io_at(LOCK_CALL, path))? {
                return Ok(None);
            }
            if let Some(id) = os::still_named(&file, path).map_err(io_at("stat", path))? {
                return Ok(Some((file, id)));
            }
        }
        Err(replaced_too_often(req, path))
    }

    /// The semaphore's fencing counter lives in its own file, bumped under a short exclusive
    /// lock (holders of different slots run concurrently).
    async fn bump_semaphore_counter(&self, stem: &str, req: &AcquireRequest) -> Result<u64> {
        let file_name = semaphore_counter_file_name(stem);
        let path = self.dir.join(&file_name);
        let key = self.fence_key(&file_name);
        let mut file = self.open(&path)?;
        let mut reopens = 0;
        loop {
            if os::try_lock(&file, Mode::Exclusive).map_err(io_at(LOCK_CALL, &path))? {
                if os::still_named(&file, &path)
                    .map_err(io_at("stat", &path))?
                    .is_some()
                {
                    return fence::next_token(key, &file).map_err(io_at("write", &path));
                }
                // The counter file was deleted or replaced: bump the one the path names.
                reopens += 1;
                if reopens > MAX_REOPENS {
                    return Err(replaced_too_often(req, &path));
                }
                file = self.open(&path)?;
                continue;
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
        watch: Watch,
        start: Instant,
    ) -> Result<Held> {
        let id = self.held.next_id();
        let held = Arc::new(FileHeld {
            id,
            token,
            lost: LostSignal::new(),
            released: AtomicBool::new(false),
            state: Mutex::new(Some(state)),
            files: watch.clone(),
            backend: Arc::downgrade(self),
            target: req.target(BACKEND).to_string(),
        });
        self.held.insert(id, &held);
        if !watch.is_empty() {
            self.watch(id, watch, &held);
        }
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

    fn unwatch(&self, id: u64) {
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
            if watched.files.is_empty() || inner.closed.is_cancelled() {
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

fn replaced_too_often(req: &AcquireRequest, path: &Path) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!(
            "the lock file {} of {} was deleted or replaced {MAX_REOPENS} times while locking it",
            path.display(),
            req.target(BACKEND)
        ),
        cause: Default::default(),
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
        os: Arc<SharedOs>,
        ticket: Ticket,
        entry: Arc<Entry<LockState>>,
    },
    Slots {
        files: Vec<(usize, File)>,
        ticket: Ticket,
        entry: Arc<Entry<SemState>>,
    },
}

impl HeldState {
    /// Lets go of the OS lock (the last reader closes the shared file), then the turn.
    fn give_back(self) {
        match self {
            HeldState::Exclusive {
                file,
                ticket,
                entry,
            } => {
                drop(file); // closing the file releases the OS lock
                drop(ticket);
                drop(entry);
            }
            HeldState::Shared { os, ticket, entry } => {
                drop(os);
                drop(ticket);
                drop(entry);
            }
            HeldState::Slots {
                files,
                ticket,
                entry,
            } => {
                let mut taken = lock(&entry.state.taken);
                for (slot, file) in files {
                    drop(file);
                    taken[slot] = false;
                }
                drop(taken);
                entry.state.freed.notify_waiters();
                drop(ticket);
            }
        }
    }
}

struct FileHeld {
    id: u64,
    token: u64,
    lost: LostSignal,
    released: AtomicBool,
    state: Mutex<Option<HeldState>>,
    /// The locked files' paths and identities, for `is_held` and the lost check.
    files: Watch,
    backend: Weak<Inner>,
    target: String,
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
    fn release_now(&self) -> bool {
        let state = lock(&self.state).take();
        self.released.store(true, Ordering::Release);
        let Some(state) = state else {
            return false;
        };
        state.give_back();
        self.forget();
        tracing::debug!(backend = BACKEND, token = self.token, "released");
        true
    }

    /// The lock is known lost: fire the signal, and give back the OS lock and the in-process
    /// turn at once, so a re-acquire in this process does not wait for `release()`.
    fn lose(&self, reason: String) {
        let state = lock(&self.state).take();
        let Some(state) = state else {
            return;
        };
        tracing::debug!(backend = BACKEND, token = self.token, reason = %reason, "lost");
        self.lost.fire(reason);
        state.give_back();
        self.forget();
    }

    fn forget(&self) {
        if let Some(backend) = self.backend.upgrade() {
            backend.held.remove(self.id);
            backend.unwatch(self.id);
        }
    }
}

impl HeldLock for FileHeld {
    fn target(&self) -> &str {
        &self.target
    }

    fn fencing_token(&self) -> u64 {
        self.token
    }

    fn lost(&self) -> &LostSignal {
        &self.lost
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Not released, not lost, and (one `stat`) the path still names the locked file. A file
    /// found deleted or replaced makes the lock lost right here, as the periodic check would.
    fn is_held(&self) -> bool {
        if self.is_released() || self.lost.is_lost() {
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
        use std::os::fd::AsFd;
        let state = lock(&self.state);
        let fd = match state.as_ref()? {
            HeldState::Exclusive { file, .. } => file.as_fd(),
            HeldState::Shared { os, .. } => os.file.as_fd(),
            HeldState::Slots { .. } => return None,
        };
        Some(fd.try_clone_to_owned())
    }
}

impl Drop for FileHeld {
    fn drop(&mut self) {
        self.release_now();
    }
}

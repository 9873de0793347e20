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
mod held;
mod lockfile;
mod names;
mod os;
mod semaphore;
mod sweep;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use distlock_core::{
    AcquireRequest, Acquiring, Admitted, Backend, BoxFuture, Error, Interrupted, LockInfo,
    LockKind, ProviderCore, ProviderState, Result, Ticket, Turns, race, validate_name,
};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use held::{FileHeld, Watched};
use lockfile::LockState;
pub use names::{file_stem, lock_file_name, semaphore_counter_file_name, slot_file_name};
use os::Mode;
use semaphore::SemState;

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
    core: ProviderCore<FileHeld>,
    turns: Turns<LockState, SemState>,
    /// `None`: no check that held files stay in place.
    lost_check: Option<Duration>,
    watched: Mutex<Watched>,
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
        sweep::remove_unused(&self.inner.dir)
    }

    /// A backend keeping its lock files in `directory` (created on first use if missing).
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: directory.into(),
                dir_ready: AtomicBool::new(false),
                canonical_dir: OnceLock::new(),
                core: ProviderCore::new(BACKEND),
                turns: Turns::default(),
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
}

impl Backend for FileBackend {
    fn core(&self) -> &dyn ProviderState {
        &self.inner.core
    }

    fn begin(&self, req: AcquireRequest) -> Result<Acquiring> {
        let inner = self.inner.clone();
        inner.ensure_dir()?;
        let start = Instant::now();
        match req.kind {
            LockKind::Semaphore { max_count, permits } => {
                let Admitted { entry, ticket } = inner
                    .turns
                    .semaphore(&req, BACKEND, || SemState::new(max_count))?;
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
                let Admitted { entry, ticket } = inner.turns.lock(&req, LockState::default);
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

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let reason = "the file lock provider was closed";
        for h in self.inner.core.close(reason) {
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
    pub(crate) fn fence_key(&self, file_name: &str) -> u64 {
        fence::key(
            &self
                .canonical_dir
                .get()
                .unwrap_or(&self.dir)
                .join(file_name),
        )
    }

    /// Waits for an acquire's in-process turn, then for the name's gate (one caller per process
    /// and name talks to the OS at a time), until `deadline`.
    pub(crate) async fn turn(
        &self,
        req: &AcquireRequest,
        ticket: &mut Ticket,
        gate: &Arc<tokio::sync::Mutex<()>>,
        deadline: Option<Instant>,
    ) -> std::result::Result<OwnedMutexGuard<()>, Interrupted> {
        let cancel = req.cancel.as_ref();
        race(ticket.granted(), deadline, cancel, self.core.closed())
            .await
            .done()?;
        race(
            gate.clone().lock_owned(),
            deadline,
            cancel,
            self.core.closed(),
        )
        .await
        .done()
    }

    /// Opens a lock file, recreating the directory if someone removed it since.
    pub(crate) fn open(&self, path: &Path) -> Result<File> {
        match os::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.dir_ready.store(false, Ordering::Release);
                self.ensure_dir()?;
                os::open(path).map_err(io_at("open", path))
            }
            other => other.map_err(io_at("open", path)),
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

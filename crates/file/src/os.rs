//! The operating-system side: opening lock files, taking `flock`-family locks without blocking
//! the async runtime, and the fencing counter stored in the lock file.
//!
//! `std::fs::File::{try_lock, lock, lock_shared}` are `flock(2)` on Unix and `LockFileEx` on
//! Windows. A lock belongs to the open file description, so closing the file (or the process
//! dying, even by `kill -9`) releases it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

use tokio::sync::oneshot;

/// Shared (reader) or exclusive (writer) OS lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

/// Opens (creating if needed) the lock file at `path` for reading and writing.
pub fn open(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Readable and writable by everyone the umask allows, so processes of different users
        // sharing a lock directory can all lock the same files.
        options.mode(0o666);
    }
    options.open(path)
}

/// One non-blocking attempt. `Ok(false)` means another holder has it.
pub fn try_lock(file: &File, mode: Mode) -> io::Result<bool> {
    let res = match mode {
        Mode::Shared => file.try_lock_shared(),
        Mode::Exclusive => file.try_lock(),
    };
    match res {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The receiving end of a blocking OS wait running on its own thread.
pub type PendingLock = oneshot::Receiver<io::Result<File>>;

/// Starts a blocking lock of `file` on a dedicated thread (never a tokio worker, never the libuv
/// pool) and returns where the locked file will arrive. If nobody is listening any more when
/// the lock is granted, the file is dropped, which closes it and releases the lock at once.
pub fn lock_in_background(file: File, mode: Mode) -> io::Result<PendingLock> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("distlock-file-wait".into())
        .spawn(move || {
            let res = match mode {
                Mode::Shared => file.lock_shared(),
                Mode::Exclusive => file.lock(),
            };
            // An error here means the receiver is gone; the value (and with it the lock) is dropped.
            let _ = tx.send(res.map(|()| file));
        })?;
    Ok(rx)
}

/// Which file an open file or a path is: device and inode on Unix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

/// The identity of an open file (`fstat`).
#[cfg(unix)]
pub fn identity(file: &File) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The identity of the file `path` names now (`stat`), or `None` if nothing is there.
#[cfg(unix)]
pub fn path_identity(path: &Path) -> io::Result<Option<FileId>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

// Windows refuses to delete a file another handle has open unless it was opened with
// FILE_SHARE_DELETE, and the stable API has no file index to compare: every open file counts as
// the one its path names.
#[cfg(not(unix))]
pub fn identity(_file: &File) -> io::Result<FileId> {
    Ok(FileId { dev: 0, ino: 0 })
}

#[cfg(not(unix))]
pub fn path_identity(_path: &Path) -> io::Result<Option<FileId>> {
    Ok(Some(FileId { dev: 0, ino: 0 }))
}

/// Whether `path` still names `file`: after a lock is granted, the file may have been deleted
/// (and maybe recreated) while we waited, and a lock on a file nobody can open any more
/// excludes nobody. Returns the identity when it does.
pub fn still_named(file: &File, path: &Path) -> io::Result<Option<FileId>> {
    let id = identity(file)?;
    Ok((path_identity(path)? == Some(id)).then_some(id))
}

/// Reads the fencing counter stored in the first 8 bytes of `file` (0 for a new file).
pub fn read_counter(file: &File) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        let n = read_at(file, &mut buf[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(if filled == buf.len() {
        u64::from_le_bytes(buf)
    } else {
        0
    })
}

/// Sets the fencing counter of `file`, which the caller holds exclusively, to the greater of its
/// value and `floor`, plus one, and returns the new value. `floor` is the largest token this
/// process has seen for the name, so a deleted and recreated file does not start over while
/// this process lives. Written to the page cache, not synced: it survives process crashes, not
/// an OS crash.
pub fn bump_counter(file: &File, floor: u64) -> io::Result<u64> {
    let mut current = read_counter(file)?;
    if current == 0 {
        // A new file (a new name, or one deleted while in use): start at the clock in
        // microseconds, above every token an earlier file of the name could have handed out
        // (that would take a grant per microsecond), so tokens keep rising for processes that
        // never saw the old file too.
        current = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
    }
    let next = current.max(floor).saturating_add(1);
    write_counter(file, next)?;
    Ok(next)
}

/// Writes `value` as the fencing counter of `file`.
pub fn write_counter(file: &File, value: u64) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let mut written = 0;
    while written < bytes.len() {
        written += write_at(file, &bytes[written..], written as u64)?;
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("distlock-os-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("x.lock")
    }

    #[test]
    fn exclusive_excludes_other_open_files_in_the_same_process() {
        let path = temp_path("excl");
        let a = open(&path).unwrap();
        let b = open(&path).unwrap();
        assert!(try_lock(&a, Mode::Exclusive).unwrap());
        assert!(!try_lock(&b, Mode::Exclusive).unwrap());
        assert!(!try_lock(&b, Mode::Shared).unwrap());
        drop(a); // closing releases
        assert!(try_lock(&b, Mode::Shared).unwrap());
        let c = open(&path).unwrap();
        assert!(try_lock(&c, Mode::Shared).unwrap(), "readers share");
    }

    #[test]
    fn counter_starts_at_the_clock_and_increases() {
        let path = temp_path("counter");
        let _ = std::fs::remove_file(&path);
        let f = open(&path).unwrap();
        assert_eq!(read_counter(&f).unwrap(), 0);
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let first = bump_counter(&f, 0).unwrap();
        assert!(
            first > before,
            "a new file starts at the clock: {first} <= {before}"
        );
        assert_eq!(bump_counter(&f, 0).unwrap(), first + 1);
        assert_eq!(read_counter(&open(&path).unwrap()).unwrap(), first + 1);
        let high = first + 100;
        assert_eq!(
            bump_counter(&f, high).unwrap(),
            high + 1,
            "a floor above the file wins"
        );
        assert_eq!(
            bump_counter(&f, 3).unwrap(),
            high + 2,
            "a floor below it does not"
        );
        // Deleted and created again: above every earlier token once the clock has passed
        // them, which real use guarantees (a grant takes longer than a microsecond); the
        // floors above put `high` 100 µs ahead of the clock, so wait that out first.
        let now_micros = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let spin_until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while now_micros() <= high + 2 && std::time::Instant::now() < spin_until {
            std::thread::yield_now();
        }
        drop(f);
        std::fs::remove_file(&path).unwrap();
        let g = open(&path).unwrap();
        assert!(bump_counter(&g, 0).unwrap() > high + 2);
    }

    #[test]
    fn still_named_sees_a_deleted_or_replaced_file() {
        let path = temp_path("ident");
        let f = open(&path).unwrap();
        assert!(still_named(&f, &path).unwrap().is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(still_named(&f, &path).unwrap().is_none(), "deleted");
        let g = open(&path).unwrap();
        assert!(still_named(&f, &path).unwrap().is_none(), "replaced");
        assert!(still_named(&g, &path).unwrap().is_some());
    }

    #[tokio::test]
    async fn background_wait_is_granted_on_release_and_abandoned_waits_release() {
        let path = temp_path("bg");
        let holder = open(&path).unwrap();
        assert!(try_lock(&holder, Mode::Exclusive).unwrap());
        let pending = lock_in_background(open(&path).unwrap(), Mode::Exclusive).unwrap();
        drop(holder);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let other = open(&path).unwrap();
        assert!(!try_lock(&other, Mode::Exclusive).unwrap());
        let abandoned = lock_in_background(open(&path).unwrap(), Mode::Exclusive).unwrap();
        drop(abandoned);
        drop(got);
        // The abandoned thread takes the lock and drops it straight away; within 5 s it is free.
        let mut free = false;
        for _ in 0..500 {
            if try_lock(&other, Mode::Exclusive).unwrap() {
                free = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(free, "an abandoned background wait must not keep the lock");
    }
}

//! Removing the lock files nobody holds (`FileBackend::remove_unused`).

use std::io;
use std::path::Path;

use distlock_core::{Error, Result};

use crate::os::{self, Mode};
use crate::{BACKEND, LOCK_CALL, io_at};

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

/// Removes the lock files in `dir` that nobody holds now, each only while this call holds its
/// exclusive OS lock, and returns how many (see `FileBackend::remove_unused` for whom that is
/// safe).
pub(crate) fn remove_unused(dir: &Path) -> Result<usize> {
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

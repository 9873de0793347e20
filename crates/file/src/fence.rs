//! The largest fencing token this process has seen per lock file.
//!
//! The counter lives in the lock file. If that file (or its directory) is deleted, the next
//! holder creates a new file whose counter would start again at 1. A process that has seen a
//! token for the name keeps it here and never hands out a token at or below it, so tokens stay
//! strictly increasing for every name a live process has locked. A process that never saw the
//! name cannot know the old counter: that residue is documented in the crate docs.
//!
//! Keys are 64-bit hashes of the lock file's path (its directory canonicalized): 16 bytes per
//! name ever locked in this process, and a collision can only raise a floor, never lower one.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::Path;
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::os;

static SEEN: LazyLock<Mutex<HashMap<u64, u64>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn seen() -> MutexGuard<'static, HashMap<u64, u64>> {
    // Single inserts: a poisoned lock is still consistent.
    SEEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key of the lock file at `path`.
pub fn key(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// Bumps the counter of `file` (held exclusively) above both its value and every token this
/// process has seen for `key`, and records the result. The floor is read and raised under one
/// lock, so two holders in this process never get the same token even on two different files.
pub fn next_token(key: u64, file: &File) -> io::Result<u64> {
    let mut seen = seen();
    let floor = seen.get(&key).copied().unwrap_or(0);
    let token = os::bump_counter(file, floor)?;
    seen.insert(key, token);
    Ok(token)
}

/// A token read under a shared lock (readers do not bump): never below the floor.
pub fn observe(key: u64, token: u64) -> u64 {
    let mut seen = seen();
    let floor = seen.entry(key).or_insert(0);
    *floor = (*floor).max(token);
    *floor
}

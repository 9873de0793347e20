//! A lock file (or the whole lock directory) deleted while the lock is held, with a waiter of
//! another process already blocked in `flock` on the deleted file: the waiter must queue behind
//! whoever holds the new file (no overlap), fencing tokens must keep increasing, and the
//! holder of the deleted file must learn that it lost the lock.
//!
//! Linux only: the tests read `/proc/locks` to see which inode a process is blocked on, instead
//! of sleeping and hoping the waiter got there.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use distlock_core::{AcquireRequest, Backend, Held, LockKind, Timeout};
use distlock_file::{FileBackend, file_stem};

const NAME: &str = "deleted-while-held";

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("distlock-del-{}-{tag}-{nanos}", std::process::id()))
}

fn req(kind: LockKind, timeout: Timeout) -> AcquireRequest {
    AcquireRequest {
        name: NAME.into(),
        kind,
        timeout,
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

async fn acquire(b: &FileBackend, kind: LockKind, timeout: Timeout) -> Option<Held> {
    b.acquire(req(kind, timeout)).unwrap().await.unwrap()
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join(format!("{}.lock", file_stem(NAME)))
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Whether `/proc/locks` shows process `pid` blocked (`->`) in a lock request on inode `ino`.
fn blocked_on(pid: u32, ino: u64) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    locks.lines().any(|line| {
        let Some((_, waiter)) = line.split_once("->") else {
            return false;
        };
        // "FLOCK  ADVISORY  WRITE <pid> <maj>:<min>:<ino> <start> <end>"
        let fields: Vec<&str> = waiter.split_whitespace().collect();
        fields.len() >= 5
            && fields[3] == pid.to_string()
            && fields[4].rsplit(':').next() == Some(ino.to_string().as_str())
    })
}

/// Not a test on its own: the body of the waiter process the tests spawn. It acquires the lock
/// (waiting as long as it takes), prints `GOT <token>`, and holds until its stdin closes.
#[test]
fn child_waiter() {
    let Ok(dir) = std::env::var("DISTLOCK_DELETED_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = FileBackend::new(dir);
        let h = acquire(&b, LockKind::Mutex, Timeout::Forever)
            .await
            .unwrap();
        println!("GOT {}", h.fencing_token());
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        drop(h);
    });
}

struct Waiter {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Waiter {
    fn spawn(dir: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_waiter", "--nocapture", "--test-threads=1"])
            .env("DISTLOCK_DELETED_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                // libtest may print its own text before ours on the same line.
                let Some(at) = line.find("GOT ") else {
                    continue;
                };
                if tx.send(line[at..].to_owned()).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (bounded) until the waiter is blocked on inode `ino`; fails if it is granted first.
    fn wait_blocked_on(&self, ino: u64, what: &str) {
        let until = Instant::now() + Duration::from_secs(20);
        while !blocked_on(self.child.id(), ino) {
            if let Ok(line) = self.lines.try_recv() {
                panic!("the waiter was granted ({line}) instead of waiting on {what}");
            }
            assert!(
                Instant::now() < until,
                "the waiter never blocked on {what} (inode {ino})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn token(&self) -> u64 {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| {
                let locks = std::fs::read_to_string("/proc/locks").unwrap();
                panic!(
                    "no grant ({e}); child {}; /proc/locks:\n{locks}",
                    self.child.id()
                )
            });
        line["GOT ".len()..].trim().parse().unwrap()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the child releases and exits
        if self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The scenario of issue 11 item 4, with the file or the whole directory deleted.
async fn waiter_blocked_on_a_deleted_file_queues_behind_the_new_holder(delete_dir: bool) {
    let dir = temp_dir(if delete_dir { "dir" } else { "file" });
    let path = lock_path(&dir);
    let a = FileBackend::new(&dir);
    let first = acquire(&a, LockKind::Mutex, Timeout::Zero).await.unwrap();
    let old_inode = inode(&path);

    let waiter = Waiter::spawn(&dir);
    waiter.wait_blocked_on(old_inode, "the original lock file");

    if delete_dir {
        std::fs::remove_dir_all(&dir).unwrap();
    } else {
        std::fs::remove_file(&path).unwrap();
    }
    // A newcomer (another provider, so the OS decides, not the in-process queue) finds no file,
    // creates a new one and locks it: nothing can prevent that overlap with `first`.
    let b = FileBackend::new(&dir);
    let newcomer = acquire(&b, LockKind::Mutex, Timeout::Zero).await.unwrap();
    let new_inode = inode(&path);
    assert_ne!(old_inode, new_inode);
    assert!(
        newcomer.fencing_token() > first.fencing_token(),
        "this process saw token {}: the new file must not start over (got {})",
        first.fencing_token(),
        newcomer.fencing_token()
    );

    // The old holder lets go: the waiter's flock on the deleted file is granted. It must notice
    // and queue on the new file, behind the newcomer, instead of running beside it.
    first.release().await.unwrap();
    waiter.wait_blocked_on(new_inode, "the new lock file (held by the newcomer)");
    assert!(waiter.lines.try_recv().is_err(), "no overlap");

    let newcomer_token = newcomer.fencing_token();
    newcomer.release().await.unwrap();
    let waiter_token = waiter.token();
    assert!(
        waiter_token > newcomer_token,
        "tokens strictly increase: newcomer {newcomer_token}, then the waiter {waiter_token}"
    );
    drop(waiter);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn lock_file_deleted_while_held_with_a_blocked_waiter() {
    waiter_blocked_on_a_deleted_file_queues_behind_the_new_holder(false).await;
}

#[tokio::test]
async fn lock_directory_deleted_while_held_with_a_blocked_waiter() {
    waiter_blocked_on_a_deleted_file_queues_behind_the_new_holder(true).await;
}

/// Issue 11 item 9 for the file backend: the only loss besides `close()` is a deleted lock
/// file. It fires the signal, and the name is free in this process at once, before `release()`.
#[tokio::test]
async fn a_deleted_lock_file_fires_lost_and_frees_the_name_in_process() {
    let dir = temp_dir("lost");
    let path = lock_path(&dir);
    let b = FileBackend::new(&dir).with_lost_check_interval(Some(Duration::from_millis(20)));
    let held = acquire(&b, LockKind::Mutex, Timeout::Zero).await.unwrap();
    let reader_backend =
        FileBackend::new(&dir).with_lost_check_interval(Some(Duration::from_millis(20)));
    assert!(
        acquire(&reader_backend, LockKind::Read, Timeout::Zero)
            .await
            .is_none()
    );
    assert!(!held.lost().is_lost());
    std::fs::remove_file(&path).unwrap();
    // The synchronous check, with the periodic one turned off, sees it at once.
    let unwatched = FileBackend::new(&dir).with_lost_check_interval(None);
    let other = acquire(&unwatched, LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    assert!(other.is_held());
    std::fs::remove_file(&path).unwrap();
    assert!(!other.is_held(), "is_held stats the path");
    assert!(other.lost().is_lost(), "and reports the loss");
    drop(other);
    let reason = tokio::time::timeout(Duration::from_secs(10), held.lost().lost())
        .await
        .expect("the holder of a deleted lock file must be told");
    assert!(reason.contains("deleted"), "{reason}");
    assert!(
        !held.is_released(),
        "lost is not released: release() still runs"
    );
    assert_eq!(b.held_count(), 0);

    // No release() yet: the same process gets the name again at once.
    let again = acquire(&b, LockKind::Mutex, Timeout::Zero)
        .await
        .expect("a lost lock must give back its turn in this process");
    assert!(again.fencing_token() > held.fencing_token());
    held.clone().release().await.unwrap();
    assert!(held.is_released());
    assert!(!again.lost().is_lost(), "the new file is in place");
    drop(again);

    // Readers share one OS lock per process: a deleted file makes them all lost, and a new
    // reader does not join the lock on the deleted file.
    let r1 = acquire(&reader_backend, LockKind::Read, Timeout::Zero).await;
    let r1 = r1.unwrap_or_else(|| {
        let ino = inode(&path);
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let mine: Vec<&str> = locks
            .lines()
            .filter(|l| l.contains(&format!(":{ino} ")))
            .collect();
        panic!(
            "r1 refused; pid {}; locks on {ino}: {mine:?}",
            std::process::id()
        )
    });
    let r2 = acquire(&reader_backend, LockKind::Read, Timeout::Zero)
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let writer = acquire(&b, LockKind::Write, Timeout::Zero).await.unwrap();
    let r3 = acquire(
        &reader_backend,
        LockKind::Read,
        Timeout::After(Duration::from_millis(50)),
    )
    .await;
    assert!(
        r3.is_none(),
        "a reader must not join a shared lock on a deleted file while a writer holds the new one"
    );
    for r in [&r1, &r2] {
        tokio::time::timeout(Duration::from_secs(10), r.lost().lost())
            .await
            .expect("every reader of the deleted file is told");
    }
    assert!(!writer.lost().is_lost());
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A semaphore slot file deleted while held: the slot is reported lost and a new holder of the
/// slot does not share it with a grant on the deleted file.
#[tokio::test]
async fn a_deleted_semaphore_slot_is_lost_and_tokens_keep_increasing() {
    let dir = temp_dir("sem");
    let sem = LockKind::semaphore(1);
    let b = FileBackend::new(&dir).with_lost_check_interval(Some(Duration::from_millis(20)));
    let held = acquire(&b, sem, Timeout::Zero).await.unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap(); // the slot and the counter file
    }
    tokio::time::timeout(Duration::from_secs(10), held.lost().lost())
        .await
        .expect("the holder of a deleted slot must be told");
    let other = FileBackend::new(&dir);
    let next = acquire(&other, sem, Timeout::Zero).await.unwrap();
    assert!(next.fencing_token() > held.fencing_token());
    assert!(
        acquire(&b, sem, Timeout::Zero).await.is_none(),
        "one slot: the new slot file is held"
    );
}

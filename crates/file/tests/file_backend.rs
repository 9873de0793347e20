//! The file backend through its public `Backend` interface, with real files, real threads and
//! real child processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock_core::{AcquireRequest, Backend, CancellationToken, Held, LockKind, Timeout};
use distlock_file::FileBackend;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "distlock-it-{}-{tag}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn req(name: &str, kind: LockKind, timeout: Timeout) -> AcquireRequest {
    AcquireRequest {
        name: name.into(),
        kind,
        timeout,
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

async fn acquire(b: &FileBackend, name: &str, kind: LockKind, timeout: Timeout) -> Option<Held> {
    b.acquire(req(name, kind, timeout)).unwrap().await.unwrap()
}

const SHORT: Timeout = Timeout::After(Duration::from_millis(50));

#[tokio::test]
async fn mutex_excludes_within_a_process_and_hands_over_on_release() {
    let b = FileBackend::new(temp_dir("mutex"));
    let h = acquire(&b, "m", LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    assert!(
        acquire(&b, "m", LockKind::Mutex, Timeout::Zero)
            .await
            .is_none()
    );
    assert!(acquire(&b, "m", LockKind::Mutex, SHORT).await.is_none());
    let waiter = b
        .acquire(req("m", LockKind::Mutex, Timeout::Forever))
        .unwrap();
    let t1 = h.fencing_token();
    h.clone().release().await.unwrap();
    assert!(h.is_released());
    h.clone().release().await.unwrap(); // idempotent
    let h2 = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(h2.fencing_token() > t1, "fencing tokens increase");
}

#[tokio::test]
async fn a_separate_backend_on_the_same_directory_is_excluded_by_the_os() {
    let dir = temp_dir("two");
    let a = FileBackend::new(&dir);
    let b = FileBackend::new(&dir);
    let h = acquire(&a, "shared-name", LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    assert!(
        acquire(&b, "shared-name", LockKind::Mutex, Timeout::Zero)
            .await
            .is_none()
    );
    let waiting = b
        .acquire(req("shared-name", LockKind::Mutex, Timeout::Forever))
        .unwrap();
    drop(h);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_some());
}

#[tokio::test]
async fn readers_share_writers_exclude() {
    let dir = temp_dir("rw");
    let a = FileBackend::new(&dir);
    let other = FileBackend::new(&dir);
    let r1 = acquire(&a, "doc", LockKind::Read, Timeout::Zero)
        .await
        .unwrap();
    let r2 = acquire(&a, "doc", LockKind::Read, Timeout::Zero)
        .await
        .unwrap();
    let r3 = acquire(&other, "doc", LockKind::Read, Timeout::Zero)
        .await
        .unwrap();
    assert!(
        acquire(&other, "doc", LockKind::Write, Timeout::Zero)
            .await
            .is_none()
    );
    assert!(
        acquire(&a, "doc", LockKind::Mutex, Timeout::Zero)
            .await
            .is_none(),
        "a mutex is the writer side"
    );
    drop(r1);
    drop(r3);
    assert!(
        acquire(&other, "doc", LockKind::Write, SHORT)
            .await
            .is_none(),
        "r2 still reads"
    );
    drop(r2);
    let w = acquire(&other, "doc", LockKind::Write, SHORT)
        .await
        .unwrap();
    assert!(
        acquire(&a, "doc", LockKind::Read, Timeout::Zero)
            .await
            .is_none()
    );
    drop(w);
}

#[tokio::test]
async fn a_queued_writer_holds_back_later_readers_in_process() {
    let b = FileBackend::new(temp_dir("wpref"));
    let r1 = acquire(&b, "doc", LockKind::Read, Timeout::Zero)
        .await
        .unwrap();
    let writer = b
        .acquire(req("doc", LockKind::Write, Timeout::Forever))
        .unwrap();
    assert!(
        acquire(&b, "doc", LockKind::Read, SHORT).await.is_none(),
        "writer preference"
    );
    drop(r1);
    let w = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .unwrap()
        .unwrap();
    assert!(w.is_some());
}

#[tokio::test]
async fn semaphore_admits_max_count_across_backends() {
    let dir = temp_dir("sem");
    let a = FileBackend::new(&dir);
    let b = FileBackend::new(&dir);
    let sem = LockKind::semaphore(3);
    let h1 = acquire(&a, "gpu", sem, Timeout::Zero).await.unwrap();
    let h2 = acquire(&a, "gpu", sem, Timeout::Zero).await.unwrap();
    let h3 = acquire(&b, "gpu", sem, Timeout::Zero).await.unwrap();
    assert!(acquire(&b, "gpu", sem, Timeout::Zero).await.is_none());
    assert!(acquire(&a, "gpu", sem, SHORT).await.is_none());
    let tokens = [h1.fencing_token(), h2.fencing_token(), h3.fencing_token()];
    assert!(tokens[0] < tokens[1] && tokens[1] < tokens[2], "{tokens:?}");
    let waiting = b.acquire(req("gpu", sem, Timeout::Forever)).unwrap();
    drop(h1); // freed in backend `a`: `b` only sees it by polling
    let h4 = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(h4.fencing_token() > tokens[2]);
    drop((h2, h3, h4));
    let err = a.acquire(req("gpu", LockKind::semaphore(2), Timeout::Zero));
    assert!(
        err.is_ok(),
        "nobody uses it any more, a new maxCount is fine"
    );
}

#[tokio::test]
async fn conflicting_max_count_in_one_process_is_an_error() {
    let b = FileBackend::new(temp_dir("semcount"));
    let _h = acquire(&b, "s", LockKind::semaphore(2), Timeout::Zero)
        .await
        .unwrap();
    let err = b
        .acquire(req("s", LockKind::semaphore(3), Timeout::Zero))
        .err()
        .unwrap();
    assert_eq!(err.code(), "INVALID_ARGUMENT");
    assert!(err.to_string().contains("maxCount 2"), "{err}");
}

#[tokio::test]
async fn cancelling_a_wait_leaves_nothing_held() {
    let dir = temp_dir("cancel");
    let holder_backend = FileBackend::new(&dir);
    let b = FileBackend::new(&dir);
    let held = acquire(&holder_backend, "c", LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let mut r = req("c", LockKind::Mutex, Timeout::Forever);
    r.cancel = Some(cancel.clone());
    let waiting = tokio::spawn(b.acquire(r).unwrap());
    tokio::time::sleep(Duration::from_millis(30)).await; // let it reach the OS wait
    cancel.cancel();
    let err = waiting.await.unwrap().err().unwrap();
    assert_eq!(err.code(), "CANCELLED");
    drop(held);
    // The abandoned OS wait takes the lock and lets go; nobody holds it afterwards.
    let mut free = false;
    for _ in 0..100 {
        if acquire(&holder_backend, "c", LockKind::Mutex, Timeout::Zero)
            .await
            .is_some()
        {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(free);
}

#[tokio::test]
async fn a_timed_out_os_wait_is_resumed_by_the_next_caller() {
    let dir = temp_dir("resume");
    let holder_backend = FileBackend::new(&dir);
    let b = FileBackend::new(&dir);
    let held = acquire(&holder_backend, "r", LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    for _ in 0..5 {
        assert!(
            acquire(
                &b,
                "r",
                LockKind::Mutex,
                Timeout::After(Duration::from_millis(10))
            )
            .await
            .is_none()
        );
    }
    let waiting = b
        .acquire(req("r", LockKind::Mutex, Timeout::Forever))
        .unwrap();
    drop(held);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_on_one_name_complete_in_call_order() {
    let b = Arc::new(FileBackend::new(temp_dir("thousand")));
    let first = acquire(&b, "hot", LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let fut = b
            .acquire(req("hot", LockKind::Mutex, Timeout::Forever))
            .unwrap();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let h = fut.await.unwrap().unwrap();
            order.lock().unwrap().push(i);
            h.release().await.unwrap();
        }));
    }
    drop(first);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn close_releases_held_locks_fires_their_signal_and_rejects_waiters() {
    let dir = temp_dir("close");
    let b = FileBackend::new(&dir);
    let h = acquire(&b, "x", LockKind::Mutex, Timeout::Zero)
        .await
        .unwrap();
    let waiting = tokio::spawn(
        b.acquire(req("x", LockKind::Mutex, Timeout::Forever))
            .unwrap(),
    );
    tokio::task::yield_now().await;
    b.close().await.unwrap();
    assert!(h.is_released());
    assert!(h.lost().is_lost());
    assert_eq!(waiting.await.unwrap().err().unwrap().code(), "CLOSED");
    assert_eq!(
        b.acquire(req("x", LockKind::Mutex, Timeout::Zero))
            .err()
            .unwrap()
            .code(),
        "CLOSED"
    );
    let other = FileBackend::new(&dir);
    assert!(
        acquire(&other, "x", LockKind::Mutex, Timeout::Zero)
            .await
            .is_some(),
        "nothing stays locked"
    );
}

#[tokio::test]
async fn directory_errors_name_the_path() {
    let file_path = temp_dir("notadir");
    std::fs::write(&file_path, b"x").unwrap();
    let b = FileBackend::new(&file_path);
    let err = b
        .acquire(req("x", LockKind::Mutex, Timeout::Zero))
        .err()
        .unwrap();
    assert_eq!(err.code(), "IO");
    assert!(
        err.to_string().contains(&file_path.display().to_string()),
        "{err}"
    );
    let under_file = FileBackend::new(file_path.join("sub"));
    let err = under_file
        .acquire(req("x", LockKind::Mutex, Timeout::Zero))
        .err()
        .unwrap();
    assert_eq!(err.code(), "IO");
    let empty = b
        .acquire(req("", LockKind::Mutex, Timeout::Zero))
        .err()
        .unwrap();
    assert_eq!(empty.code(), "INVALID_ARGUMENT");
}

#[tokio::test]
async fn the_directory_is_created_and_names_of_any_content_work() {
    let dir = temp_dir("names").join("deep/er");
    let b = FileBackend::new(&dir);
    let long = "漢".repeat(300);
    let names = ["../../etc/passwd", "a/b", "a_b", long.as_str(), "\0", "."];
    let mut held = Vec::new();
    for name in names {
        held.push(
            acquire(&b, name, LockKind::Mutex, Timeout::Zero)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        names.len(),
        "one file per distinct name, inside the dir"
    );
}

/// Not a test on its own: the body of the child process the next tests spawn.
#[test]
fn child_holder() {
    let Ok(dir) = std::env::var("DISTLOCK_CHILD_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = FileBackend::new(dir);
        let _h = acquire(&b, "xproc", LockKind::Mutex, Timeout::Forever)
            .await
            .unwrap();
        println!("HOLDING");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[tokio::test]
async fn kill_9_of_a_holder_frees_the_lock_at_once() {
    let dir = temp_dir("kill");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holder", "--nocapture", "--test-threads=1"])
        .env("DISTLOCK_CHILD_DIR", &dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "child exited early"
        );
        if line.contains("HOLDING") {
            break;
        }
    }
    let b = FileBackend::new(&dir);
    assert!(
        acquire(&b, "xproc", LockKind::Mutex, Timeout::Zero)
            .await
            .is_none(),
        "the child holds it"
    );
    let waiting = b
        .acquire(req(
            "xproc",
            LockKind::Mutex,
            Timeout::After(Duration::from_secs(10)),
        ))
        .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let got = waiting.await.unwrap();
    assert!(got.is_some(), "the OS frees a killed holder's lock");
}

#[tokio::test]
async fn concurrent_holders_never_overlap() {
    let dir = temp_dir("overlap");
    let backends: Vec<Arc<FileBackend>> =
        (0..4).map(|_| Arc::new(FileBackend::new(&dir))).collect();
    let inside = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        for _ in 0..4 {
            let (b, inside, violations) = (b.clone(), inside.clone(), violations.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let h = acquire(&b, "ctr", LockKind::Mutex, Timeout::Forever)
                        .await
                        .unwrap();
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(h);
                }
                i
            }));
        }
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0);
}

fn permits(max_count: u32, permits: u32) -> LockKind {
    LockKind::Semaphore { max_count, permits }
}

/// Several permits are taken all or nothing, across processes' backends, and a large request
/// queued in a process is not overtaken there by a later small one.
#[tokio::test]
async fn semaphore_permits_are_all_or_nothing_and_fifo() {
    let dir = temp_dir("permits");
    let a = FileBackend::new(&dir);
    let b = FileBackend::new(&dir);
    let three = acquire(&a, "pool", permits(4, 3), Timeout::Zero)
        .await
        .unwrap();
    // Two are asked for, one is free: nothing is taken, so the one free permit stays free.
    assert!(
        acquire(&b, "pool", permits(4, 2), Timeout::Zero)
            .await
            .is_none()
    );
    let one = acquire(&b, "pool", permits(4, 1), Timeout::Zero)
        .await
        .unwrap();
    assert!(
        acquire(&b, "pool", permits(4, 1), Timeout::Zero)
            .await
            .is_none()
    );
    let info = a.inspect("pool", permits(4, 1)).await.unwrap();
    assert!(info.held);
    assert_eq!(info.holders, Some(4), "holders counts permits taken");
    // In `a`: a request for all four queues first, then one for a single permit.
    let all = a
        .acquire(req("pool", permits(4, 4), Timeout::Forever))
        .unwrap();
    let small = a
        .acquire(req("pool", permits(4, 1), Timeout::Forever))
        .unwrap();
    drop(three);
    let small = tokio::spawn(small);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !small.is_finished(),
        "the single permit waits behind the request for four"
    );
    drop(one);
    let all = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!small.is_finished());
    drop(all);
    let small = tokio::time::timeout(Duration::from_secs(5), small)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    drop(small);
    assert!(!a.inspect("pool", permits(4, 1)).await.unwrap().held);
}

/// What `distlock run` hands its command: a duplicate descriptor that keeps the lock after the
/// handle is released, until the duplicate is closed too; the path is the one documented.
#[cfg(unix)]
#[tokio::test]
async fn a_duplicated_descriptor_keeps_the_lock_after_release() {
    let dir = temp_dir("dup");
    let b = FileBackend::new(&dir);
    let other = FileBackend::new(&dir);
    let path = distlock_file::lock_file_path(&dir, "orders:42").unwrap();
    assert_eq!(path, dir.join("orders_42-0fa4753944a29a4c.lock"));
    for kind in [LockKind::Mutex, LockKind::Read] {
        let h = acquire(&b, "orders:42", kind, Timeout::Zero).await.unwrap();
        let dup = h.duplicate_descriptor().unwrap().unwrap();
        h.clone().release().await.unwrap();
        assert!(
            h.duplicate_descriptor().is_none(),
            "nothing to duplicate once released"
        );
        assert!(
            acquire(&other, "orders:42", LockKind::Write, Timeout::Zero)
                .await
                .is_none(),
            "{kind:?}: the duplicate still holds the lock"
        );
        drop(dup);
        let w = acquire(&other, "orders:42", LockKind::Write, Timeout::Zero).await;
        assert!(w.is_some(), "{kind:?}: free once the duplicate is closed");
        w.unwrap().release().await.unwrap();
    }
    let sem = acquire(
        &b,
        "s",
        LockKind::Semaphore {
            max_count: 2,
            permits: 1,
        },
        Timeout::Zero,
    )
    .await
    .unwrap();
    assert!(
        sem.duplicate_descriptor().is_none(),
        "a semaphore has no one descriptor"
    );
    assert!(distlock_file::lock_file_path(&dir, "").is_err());
}

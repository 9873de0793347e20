//! The MySQL backend against a real server: `DISTLOCK_TEST_MYSQL_URL` (which `npm test` sets
//! after starting a private MariaDB), else the local server on 127.0.0.1:3306 as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use distlock_core::{AcquireRequest, Backend, CancellationToken, Held, LockKind, Timeout};
use distlock_mysql::{MySqlBackend, MySqlOptions, names::lock_name};
use mysql_async::prelude::Queryable;

fn url() -> String {
    std::env::var("DISTLOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| String::from("mysql://root@127.0.0.1:3306/test"))
}

fn provider() -> MySqlBackend {
    MySqlBackend::new(MySqlOptions::parse(&url()).unwrap()).unwrap()
}

async fn admin() -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(&url()).unwrap();
    mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the test MySQL server at {} ({e}); run npm test, or set DISTLOCK_TEST_MYSQL_URL",
            url()
        )
    })
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn req(name: &str, kind: LockKind, ms: Option<f64>) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        kind,
        timeout: Timeout::from_ms(ms).unwrap(),
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

async fn acquire(b: &MySqlBackend, name: &str, kind: LockKind, ms: Option<f64>) -> Option<Held> {
    b.acquire(req(name, kind, ms)).unwrap().await.unwrap()
}

/// The connection id holding server lock `server_name`, if any.
async fn holder(admin: &mut mysql_async::Conn, server_name: &str) -> Option<u64> {
    admin
        .exec_first::<Option<u64>, _, _>("SELECT IS_USED_LOCK(?)", (server_name,))
        .await
        .unwrap()
        .flatten()
}

/// Whether a wait for `server_name` is still pending on the server: after the holder lets go,
/// a pending `GET_LOCK` would take it within a few ms.
async fn wait_left_behind(admin: &mut mysql_async::Conn, server_name: &str) -> bool {
    tokio::time::sleep(Duration::from_millis(150)).await;
    holder(admin, server_name).await.is_some()
}

#[tokio::test]
async fn excludes_times_out_and_hands_out_increasing_tokens() {
    let (a, b) = (provider(), provider());
    let name = unique("mutex");
    let h1 = acquire(&a, &name, LockKind::Mutex, None).await.unwrap();
    assert!(
        acquire(&b, &name, LockKind::Mutex, Some(0.0))
            .await
            .is_none()
    );
    let started = Instant::now();
    assert!(
        acquire(&b, &name, LockKind::Mutex, Some(300.0))
            .await
            .is_none()
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(295), "{waited:?}");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    let t1 = h1.fencing_token();
    // A waiter is granted when the holder releases.
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { acquire(&b, &name, LockKind::Mutex, Some(10_000.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    h1.release().await.unwrap();
    let h2 = waiter.await.unwrap().unwrap();
    let t2 = h2.fencing_token();
    assert!(t2 > t1);
    h2.release().await.unwrap();
    let h3 = acquire(&a, &name, LockKind::Mutex, Some(0.0))
        .await
        .unwrap();
    assert!(h3.fencing_token() > t2);
    h3.release().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_wait_that_ends_early_is_killed_on_the_server_and_holds_nothing() {
    let (a, b) = (provider(), provider());
    let mut admin = admin().await;
    let name = unique("kill");
    let server_name = lock_name(&name);
    let h = acquire(&a, &name, LockKind::Mutex, None).await.unwrap();
    // Timeout: the server's wait (rounded up to 1 s) is killed at the caller's 150 ms.
    assert!(
        acquire(&b, &name, LockKind::Mutex, Some(150.0))
            .await
            .is_none()
    );
    // Cancel: a wait without timeout.
    let cancel = CancellationToken::new();
    let mut r = req(&name, LockKind::Mutex, None);
    r.cancel = Some(cancel.clone());
    let waiting = b.acquire(r).unwrap();
    let waiting = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let out = waiting.await.unwrap();
    assert!(matches!(out, Err(distlock_core::Error::Cancelled { .. })));
    h.release().await.unwrap();
    assert!(
        !wait_left_behind(&mut admin, &server_name).await,
        "a GET_LOCK still waited and took the lock"
    );
    // Nothing was left held by the killed waits: another provider takes it at once.
    let again = acquire(&provider(), &name, LockKind::Mutex, Some(0.0)).await;
    assert!(again.is_some());
    again.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn names_follow_the_dotnet_rule_on_the_server() {
    let a = provider();
    let mut admin = admin().await;
    let name = format!("Upper-{}", unique("x"));
    let h = acquire(&a, &name, LockKind::Mutex, None).await.unwrap();
    assert!(holder(&mut admin, &lock_name(&name)).await.is_some());
    assert!(lock_name(&name).len() == 64 || lock_name(&name).starts_with("upper-"));
    h.release().await.unwrap();
    // A lowercase name is the server's name as is: another client's GET_LOCK excludes us.
    let plain = unique("plain");
    let got: Option<i64> = admin
        .exec_first("SELECT GET_LOCK(?, 0)", (plain.clone(),))
        .await
        .unwrap();
    assert_eq!(got, Some(1));
    assert!(
        acquire(&a, &plain, LockKind::Mutex, Some(0.0))
            .await
            .is_none()
    );
    admin
        .exec_drop("DO RELEASE_LOCK(?)", (plain.clone(),))
        .await
        .unwrap();
    assert!(
        acquire(&a, &plain, LockKind::Mutex, Some(0.0))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_killed_session_fires_lost_for_its_locks_only_and_frees_the_name() {
    let a = provider();
    let mut admin = admin().await;
    let (n1, n2) = (unique("lost1"), unique("lost2"));
    let h1 = acquire(&a, &n1, LockKind::Mutex, None).await.unwrap();
    let id = holder(&mut admin, &lock_name(&n1)).await.unwrap();
    // A second lock on another session: hold a wait-granted lock on its own session.
    let other = provider();
    let h2 = acquire(&other, &n2, LockKind::Mutex, None).await.unwrap();
    let killed = Instant::now();
    admin
        .query_drop(format!("KILL CONNECTION {id}"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), h1.lost().lost())
        .await
        .expect("lost within 3 s of the kill");
    eprintln!("lost after {:?}", killed.elapsed());
    assert!(!h1.is_held());
    assert!(h2.is_held());
    // The name is free in this process and on the server.
    let again = acquire(&a, &n1, LockKind::Mutex, Some(2000.0))
        .await
        .unwrap();
    assert!(again.fencing_token() > h1.fencing_token());
    h1.clone().release().await.unwrap(); // a lost lock releases without error
    again.release().await.unwrap();
    h2.release().await.unwrap();
}

#[tokio::test]
async fn semaphores_count_permits_all_or_none() {
    let (a, b) = (provider(), provider());
    let name = unique("sem");
    let sem = |permits| LockKind::Semaphore {
        max_count: 3,
        permits,
    };
    let h1 = acquire(&a, &name, sem(1), Some(0.0)).await.unwrap();
    let h2 = acquire(&b, &name, sem(2), Some(0.0)).await.unwrap();
    assert!(acquire(&b, &name, sem(1), Some(0.0)).await.is_none());
    let info = a.inspect(&name, LockKind::semaphore(3)).await.unwrap();
    assert_eq!(info.holders, Some(3));
    assert!(info.held);
    h2.release().await.unwrap();
    // Two free: a request for 3 takes none of them.
    assert!(acquire(&b, &name, sem(3), Some(0.0)).await.is_none());
    let h3 = acquire(&b, &name, sem(2), Some(0.0)).await.unwrap();
    assert!(h3.fencing_token() > h1.clone().fencing_token());
    // A waiter for 1 is let in when a permit comes back.
    let waiter = tokio::spawn({
        let (b, name) = (b.clone(), name.clone());
        async move { acquire(&b, &name, sem(1), Some(5000.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    h1.release().await.unwrap();
    let h4 = waiter.await.unwrap().unwrap();
    h3.release().await.unwrap();
    h4.release().await.unwrap();
    assert_eq!(
        a.inspect(&name, LockKind::semaphore(3))
            .await
            .unwrap()
            .holders,
        Some(0)
    );
}

#[tokio::test]
async fn callers_of_one_process_never_take_a_permit_twice() {
    let a = provider();
    let name = unique("sem-local");
    let inside = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (a, name, inside, peak) = (a.clone(), name.clone(), inside.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let h = acquire(&a, &name, LockKind::semaphore(2), Some(10_000.0))
                    .await
                    .unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                h.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    let info = a.inspect(&name, LockKind::semaphore(2)).await.unwrap();
    assert_eq!(info.holders, Some(0));
}

#[tokio::test]
async fn many_held_locks_share_a_few_sessions() {
    let a = provider();
    let tag = unique("share");
    let mut held = Vec::new();
    for i in 0..200 {
        held.push(
            acquire(&a, &format!("{tag}-{i}"), LockKind::Mutex, Some(0.0))
                .await
                .unwrap(),
        );
    }
    assert!(
        a.connections() >= 1 && a.connections() <= 10,
        "{}",
        a.connections()
    );
    assert_eq!(a.held_count(), 200);
    a.close().await.unwrap();
    assert!(held.iter().all(|h| h.lost().is_lost()));
    let b = provider();
    assert!(
        acquire(&b, &format!("{tag}-7"), LockKind::Mutex, Some(0.0))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn reader_writer_locks_are_refused_with_a_reason() {
    let a = provider();
    let e = a
        .acquire(req("rw", LockKind::Read, None))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("not available on MySQL"), "{e}");
}

#[tokio::test]
async fn bad_credentials_are_a_backend_error_not_busy() {
    let bad = url().replacen("://root", "://nobody_here:wrong", 1);
    let a = MySqlBackend::new(MySqlOptions::parse(&bad).unwrap()).unwrap();
    // A refusal no retry cures fails at once, whatever the budget.
    let start = Instant::now();
    let e = a
        .acquire(req("x", LockKind::Mutex, Some(5000.0)))
        .unwrap()
        .await
        .err()
        .expect("an error");
    assert_eq!(e.code(), "BACKEND", "{e}");
    assert!(e.to_string().contains("denied"), "{e}");
    assert!(start.elapsed() < Duration::from_millis(500));
    let refused =
        MySqlBackend::new(MySqlOptions::parse("mysql://root@127.0.0.1:1/test").unwrap()).unwrap();
    // Ridden out until the deadline, also before the provider ever connected.
    let start = Instant::now();
    let e = refused
        .acquire(req("x", LockKind::Mutex, Some(500.0)))
        .unwrap()
        .await
        .err()
        .expect("an error");
    let took = start.elapsed();
    assert_eq!(e.code(), "BACKEND", "{e}");
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(800),
        "{took:?}"
    );
    assert!(e.to_string().contains("ran out after"), "{e}");
}

#[tokio::test]
async fn a_try_rides_out_an_idle_session_the_server_ended() {
    let a = provider();
    let mut admin = admin().await;
    let name = unique("stale");
    let h = acquire(&a, &name, LockKind::Mutex, Some(0.0))
        .await
        .unwrap();
    let id = holder(&mut admin, &lock_name(&name)).await.unwrap();
    h.release().await.unwrap();
    // The session is idle in the pool; the server ends it (a restart, wait_timeout).
    admin
        .query_drop(format!("KILL CONNECTION {id}"))
        .await
        .unwrap();
    let again = acquire(&a, &name, LockKind::Mutex, Some(0.0)).await;
    assert!(again.is_some(), "the try failed on the dead pooled session");
    again.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn close_ends_pending_waits_on_the_server_and_its_sessions() {
    let (a, b) = (provider(), provider());
    let mut admin = admin().await;
    let name = unique("close");
    let h = acquire(&a, &name, LockKind::Mutex, None).await.unwrap();
    let waiting = tokio::spawn(b.acquire(req(&name, LockKind::Mutex, None)).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.close().await.unwrap();
    let out = waiting.await.unwrap();
    assert!(matches!(out, Err(distlock_core::Error::Closed { .. })));
    h.release().await.unwrap();
    assert!(
        !wait_left_behind(&mut admin, &lock_name(&name)).await,
        "the closed provider's wait took the lock"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.connections(), 0);
    a.close().await.unwrap();
}

#[tokio::test]
async fn uuid_short_tokens_increase_without_writing_the_table() {
    let opts = || {
        MySqlOptions::parse(&url())
            .unwrap()
            .fencing("uuid-short")
            .unwrap()
    };
    let (a, b) = (
        MySqlBackend::new(opts()).unwrap(),
        MySqlBackend::new(opts()).unwrap(),
    );
    let mut admin = admin().await;
    let name = unique("uuid");
    let mut last = 0;
    for _ in 0..3 {
        let h = acquire(&a, &name, LockKind::Mutex, Some(0.0))
            .await
            .unwrap();
        assert!(h.fencing_token() > last);
        last = h.fencing_token();
        // A waiter granted on release reads its token in the same statement as its wait.
        let waiter = tokio::spawn({
            let (b, name) = (b.clone(), name.clone());
            async move { acquire(&b, &name, LockKind::Mutex, Some(5_000.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.release().await.unwrap();
        let w = waiter.await.unwrap().unwrap();
        assert!(w.fencing_token() > last);
        last = w.fencing_token();
        w.release().await.unwrap();
    }
    let s = acquire(&a, &name, LockKind::semaphore(2), Some(0.0))
        .await
        .unwrap();
    assert!(s.fencing_token() > last);
    s.release().await.unwrap();
    // Nothing was written for the name (the table may exist from other tests).
    let rows: Vec<u64> = admin
        .exec(
            "SELECT token FROM distlock_fencing WHERE name = ?",
            (lock_name(&name),),
        )
        .await
        .unwrap_or_default();
    assert!(rows.is_empty());
    assert_eq!(
        a.inspect(&name, LockKind::Mutex)
            .await
            .unwrap()
            .fencing_token,
        None
    );
    let e = MySqlOptions::parse(&url())
        .unwrap()
        .fencing("clock")
        .unwrap_err();
    assert!(e.to_string().starts_with("fencing must be"), "{e}");
}

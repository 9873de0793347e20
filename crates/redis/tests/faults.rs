//! Faults that once let two holders in or left names locked by nobody (issue 11), against real
//! redis-server processes: contention on RedLock with no fault, a stalled server with acquires
//! in flight, a server restarted empty under a holder, and a lost lock's in-process turn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock_core::{Backend, LockKind};
use support::*;
use tokio::time::Instant;

/// Several providers (each with its own connections, as separate processes would have) loop
/// acquire → critical section → release on one name for `secs`; returns (grants, overlaps) and
/// checks that fencing tokens rise in grant order.
async fn contend(urls: Vec<String>, providers: usize, secs: u64) -> (usize, usize) {
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..providers {
        let b = backend(&urls, |o| o);
        let (inside, overlaps, tokens) = (inside.clone(), overlaps.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let mut grants = 0;
            while Instant::now() < until {
                let Some(h) = get(&b, req("contended", LockKind::Mutex, Some(2_000.0))).await
                else {
                    continue;
                };
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokens.lock().unwrap().push(h.fencing_token());
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                h.release().await.unwrap();
                grants += 1;
            }
            grants
        }));
    }
    let mut grants = 0;
    for t in tasks {
        grants += t.await.unwrap();
    }
    let tokens = tokens.lock().unwrap();
    for w in tokens.windows(2) {
        assert!(w[0] < w[1], "fencing tokens out of grant order: {w:?}");
    }
    (grants, overlaps.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_contention_never_overlaps() {
    let servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    let urls: Vec<String> = servers.iter().map(RedisProc::url).collect();
    let (grants, overlaps) = contend(urls, 6, 5).await;
    assert_eq!(
        overlaps, 0,
        "{overlaps} overlapping holds in {grants} grants"
    );
    assert!(grants > 200, "too few grants to mean anything: {grants}");
}

#[tokio::test]
async fn acquires_in_flight_on_a_stalled_server_leave_no_orphans() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o.server_timeout(200.0).unwrap());
    // Connect first, so the requests below are written to the stalled server's socket.
    drop(try_get(&a, "warm-up", LockKind::Mutex).await.unwrap());
    server.pause();
    let names: Vec<String> = (0..5).map(|i| format!("orphan-{i}")).collect();
    let mut calls = Vec::new();
    for n in &names {
        calls.push(a.acquire(req(n, LockKind::Mutex, Some(300.0))).unwrap());
    }
    for c in calls {
        assert!(
            !matches!(c.await, Ok(Some(_))),
            "nothing can be granted by a stopped server"
        );
    }
    server.resume();
    // The requests run now; their revokes follow. Every name must be free again long before
    // the 30 s lease would free it.
    let b = backend(&[server.url()], |o| o);
    let start = Instant::now();
    for n in &names {
        let h = get(&b, req(n, LockKind::Mutex, Some(3_000.0))).await;
        assert!(h.is_some(), "{n} stayed locked by a call that gave up");
    }
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_server_restarted_empty_is_noticed_and_fencing_does_not_go_back() {
    let mut server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o);
    let mut last = 0;
    for _ in 0..4 {
        let h = try_get(&a, "restart", LockKind::Mutex).await.unwrap();
        last = h.fencing_token();
        h.release().await.unwrap();
    }
    let held = try_get(&a, "restart", LockKind::Mutex).await.unwrap();
    assert!(held.is_held());
    let token = held.fencing_token();
    assert!(token > last);
    server.restart_empty();
    // The client sees the connection drop: the lock is in doubt at once, and lost once the
    // reconnect shows its key gone.
    let start = Instant::now();
    while held.is_held() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!held.is_held(), "is_held stayed true after the restart");
    tokio::time::timeout(Duration::from_secs(5), held.lost().lost())
        .await
        .expect("the lost signal fires after the reconnect");
    // The floor was restored: another provider's grant is above every token seen.
    let b = backend(&[server.url()], |o| o);
    let h = try_get(&b, "restart", LockKind::Mutex).await.unwrap();
    assert!(
        h.fencing_token() > token,
        "fencing went back: {} after {token}",
        h.fencing_token()
    );
}

#[tokio::test]
async fn a_lost_lock_frees_its_name_in_its_own_process_at_once() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o.lease(500.0).unwrap());
    let held = try_get(&a, "freed", LockKind::Mutex).await.unwrap();
    let raw = raw(&server.url()).await;
    let _: () = fred::prelude::KeysInterface::del(&raw, "freed")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), held.lost().lost())
        .await
        .expect("a renewal finds the key gone");
    // Not released yet: the same process can take the name anyway.
    let again = get(&a, req("freed", LockKind::Mutex, Some(1_000.0))).await;
    assert!(again.is_some(), "the lost handle kept its name blocked");
    held.release().await.unwrap();
}

#[tokio::test]
async fn a_sentinel_failover_to_a_replica_without_the_key_fires_lost() {
    use fred::prelude::*;
    let master = RedisProc::start(&[]);
    let replica_of = format!("127.0.0.1 {}", master.port);
    let replica = RedisProc::start(&[
        "--replicaof",
        &replica_of,
        // Writable, so the test can take the key away from it: a replica that never received
        // the grant (replication is asynchronous).
        "--replica-read-only",
        "no",
    ]);
    let sentinel = Sentinel::start(&master);
    let control = raw(&format!("redis://127.0.0.1:{}", sentinel.port)).await;
    // The sentinel learns of the replica from the master's INFO (every 10 s at most).
    let start = Instant::now();
    loop {
        let replicas: Value = control
            .custom(
                fred::cmd!("SENTINEL"),
                vec!["REPLICAS".to_string(), "mymaster".to_string()],
            )
            .await
            .unwrap();
        if matches!(&replicas, Value::Array(v) if !v.is_empty()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sentinel never saw the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A long renewal period (40 s): a renewal cannot be what notices the loss in time.
    let a = backend(&[sentinel.url()], |o| o.lease(120_000.0).unwrap());
    let held = try_get(&a, "failover", LockKind::Mutex).await.unwrap();
    let r = raw(&replica.url()).await;
    let start = Instant::now();
    loop {
        let n: i64 = r.exists("failover").await.unwrap();
        if n == 1 || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: i64 = r.del("failover").await.unwrap();
    let _: Value = control
        .custom(
            fred::cmd!("SENTINEL"),
            vec!["FAILOVER".to_string(), "mymaster".to_string()],
        )
        .await
        .unwrap();
    // The sentinel promotes the replica when its view of it is fresh (up to ~10 s here).
    let start = Instant::now();
    loop {
        let addr: Value = control
            .custom(
                fred::cmd!("SENTINEL"),
                vec![
                    "GET-MASTER-ADDR-BY-NAME".to_string(),
                    "mymaster".to_string(),
                ],
            )
            .await
            .unwrap();
        if format!("{addr:?}").contains(&replica.port.to_string()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no failover: {addr:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sentinel then reconfigures the old master and drops its clients; the client follows the
    // sentinel to the new master and checks its locks there.
    tokio::time::timeout(Duration::from_secs(5), held.lost().lost())
        .await
        .expect("the holder learns on reconnect that the promoted replica lacks its key");
    assert!(!held.is_held());
    // The promoted replica grants the name to someone else, with a larger token.
    let b = backend(&[sentinel.url()], |o| o);
    let h = get(&b, req("failover", LockKind::Mutex, Some(5_000.0)))
        .await
        .unwrap();
    assert!(h.fencing_token() > held.fencing_token());
}

//! RedLock over independent servers and Redis Cluster, against real redis-server processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use distlock_core::{Backend, LockKind};
use fred::prelude::*;
use support::*;
use tokio::time::Instant;

fn urls(servers: &[RedisProc]) -> Vec<String> {
    servers.iter().map(RedisProc::url).collect()
}

async fn holders(servers: &[RedisProc], key: &str) -> usize {
    let mut n = 0;
    for s in servers {
        let c = raw(&s.url()).await;
        let e: i64 = c.exists(key).await.unwrap();
        n += e as usize;
    }
    n
}

#[tokio::test]
async fn redlock_grants_on_a_quorum_and_survives_one_server_down() {
    let mut servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    let a = backend(&urls(&servers), |o| o.server_timeout(300.0).unwrap());
    let b = backend(&urls(&servers), |o| o.server_timeout(300.0).unwrap());
    let h = try_get(&a, "rl", LockKind::Mutex).await.unwrap();
    // The acquire returns at a quorum; the last server's grant lands a moment later.
    let start = Instant::now();
    while holders(&servers, "rl").await < 3 && start.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(holders(&servers, "rl").await, 3);
    assert!(try_get(&b, "rl", LockKind::Mutex).await.is_none());
    let t1 = h.fencing_token();
    h.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(holders(&servers, "rl").await, 0);

    // One server hangs (SIGSTOP): acquires still succeed, without waiting for its timeout.
    servers[2].pause();
    let start = Instant::now();
    let h = try_get(&b, "rl", LockKind::Mutex).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "waited for the hung server: {:?}",
        start.elapsed()
    );
    assert!(h.fencing_token() > t1);
    let start = Instant::now();
    h.release().await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(250));
    servers[2].resume();

    // One server stopped for good.
    servers[0].kill();
    let h = get(&a, req("rl", LockKind::Mutex, Some(2_000.0)))
        .await
        .unwrap();
    assert!(try_get(&b, "rl", LockKind::Mutex).await.is_none());
    h.release().await.unwrap();

    // A majority down: a backend error, not a timeout, and nothing left held.
    servers[1].kill();
    let err = a
        .acquire(req("rl2", LockKind::Mutex, Some(1_000.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "BACKEND", "{err}");
    assert!(err.to_string().contains("no quorum of 2 of 3"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        holders(&servers[2..], "rl2").await,
        0,
        "the partial grant was released"
    );
}

#[tokio::test]
async fn redlock_silent_servers_are_named_alone_when_the_timeout_ends() {
    let servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    // Commands wait longer than the acquire: the hung servers are silent, not failing.
    let a = backend(&urls(&servers), |o| o.server_timeout(5_000.0).unwrap());
    let h = try_get(&a, "quiet", LockKind::Mutex).await.unwrap();
    h.release().await.unwrap();
    servers[0].pause();
    servers[1].pause();
    let err = a
        .acquire(req("quiet", LockKind::Mutex, Some(600.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    servers[0].resume();
    servers[1].resume();
    assert_eq!(err.code(), "BACKEND", "{err}");
    let msg = err.to_string();
    for s in &servers[..2] {
        assert!(msg.contains(&format!(":{}", s.port)), "{msg}");
    }
    // The third server answered (it granted): it is not named as silent.
    assert!(!msg.contains(&format!(":{}", servers[2].port)), "{msg}");
}

#[tokio::test]
async fn redlock_reader_writer_and_no_semaphore() {
    let servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    let a = backend(&urls(&servers), |o| o);
    let b = backend(&urls(&servers), |o| o);
    let r = try_get(&a, "rw", LockKind::Read).await.unwrap();
    assert!(try_get(&b, "rw", LockKind::Read).await.is_some());
    assert!(try_get(&b, "rw", LockKind::Write).await.is_none());
    r.release().await.unwrap();
    let err = a
        .acquire(req("s", LockKind::semaphore(2), Some(0.0)))
        .err()
        .unwrap();
    assert_eq!(err.code(), "INVALID_ARGUMENT");
    assert!(err.to_string().contains("RedLock"), "{err}");
}

#[tokio::test]
async fn redlock_waiters_wake_on_release() {
    let servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    let a = backend(&urls(&servers), |o| o);
    let b = backend(&urls(&servers), |o| o);
    let h = try_get(&a, "w", LockKind::Mutex).await.unwrap();
    let waiter = tokio::spawn(async move {
        let h = get(&b, req("w", LockKind::Mutex, Some(10_000.0))).await;
        (h.is_some(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    h.release().await.unwrap();
    let (ok, at) = waiter.await.unwrap();
    assert!(ok);
    assert!(
        at - released < Duration::from_millis(500),
        "{:?}",
        at - released
    );
}

#[tokio::test]
async fn cluster_locks_span_slots_and_tokens_increase_per_name() {
    let cluster = Cluster::start();
    let a = backend(&[cluster.url()], |o| o.lease(1_000.0).unwrap());
    let b = backend(&[cluster.url()], |o| o);
    let mut last = Vec::new();
    let names: Vec<String> = (0..30).map(|i| format!("c-{i}")).collect();
    let mut held = Vec::new();
    for n in &names {
        let h = try_get(&a, n, LockKind::Mutex).await.unwrap();
        last.push(h.fencing_token());
        held.push(h);
    }
    let slots: std::collections::HashSet<u16> = names
        .iter()
        .map(|n| distlock_redis::keys::slot(n.as_bytes()) / 5462)
        .collect();
    assert_eq!(slots.len(), 3, "the names land on every master");
    for n in &names {
        assert!(try_get(&b, n, LockKind::Mutex).await.is_none());
    }
    // Renewals run per slot on the right master: still held after several leases.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(held.iter().all(|h| !h.lost().is_lost()));
    for h in held {
        h.release().await.unwrap();
    }
    for (n, t) in names.iter().zip(last) {
        let h = try_get(&b, n, LockKind::Mutex).await.unwrap();
        assert!(h.fencing_token() > t);
        h.release().await.unwrap();
    }
    // Reader-writer locks and semaphores use several keys in one script: one slot.
    for n in ["x}y", "{tag}a", "plain"] {
        let r = try_get(&a, n, LockKind::Read).await.unwrap();
        assert!(try_get(&b, n, LockKind::Write).await.is_none());
        r.release().await.unwrap();
        let s = try_get(&a, n, LockKind::semaphore(1)).await.unwrap();
        assert!(try_get(&b, n, LockKind::semaphore(1)).await.is_none());
        s.release().await.unwrap();
    }
    // A waiter on a cluster is woken by the release.
    let h = try_get(&a, "cw", LockKind::Mutex).await.unwrap();
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        get(&b2, req("cw", LockKind::Mutex, Some(10_000.0)))
            .await
            .is_some()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    h.release().await.unwrap();
    assert!(waiter.await.unwrap());
    assert!(released.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn sentinel_finds_the_master_and_locks_on_it() {
    let master = RedisProc::start(&[]);
    let sentinel = Sentinel::start(&master);
    let a = backend(&[sentinel.url()], |o| o);
    let b = backend(&[sentinel.url()], |o| o);
    let h = get(&a, req("sent", LockKind::Mutex, Some(5_000.0)))
        .await
        .unwrap();
    let raw = raw(&master.url()).await;
    let on_master: i64 = raw.exists("sent").await.unwrap();
    assert_eq!(
        on_master, 1,
        "the lock key lives on the master the sentinel names"
    );
    assert!(try_get(&b, "sent", LockKind::Mutex).await.is_none());
    let t1 = h.fencing_token();
    h.release().await.unwrap();
    let h2 = get(&b, req("sent", LockKind::Mutex, Some(2_000.0)))
        .await
        .unwrap();
    assert!(h2.fencing_token() > t1);
    h2.release().await.unwrap();
}

/// Sentinels with a password of their own (`sentinelPassword`), or, without it, the URL's.
#[tokio::test]
async fn sentinel_credentials_of_their_own_or_the_urls() {
    let master = RedisProc::start(&["--requirepass", "m4st"]);
    let sentinel = Sentinel::start_with(
        &master,
        "requirepass s3nt\nsentinel auth-pass mymaster m4st",
    );
    let url = |query: &str| {
        format!(
            "redis-sentinel://:m4st@127.0.0.1:{}/0?sentinelServiceName=mymaster{query}",
            sentinel.port
        )
    };
    let a = backend(&[url("&sentinelPassword=s3nt")], |o| o);
    let h = get(&a, req("sauth", LockKind::Mutex, Some(5_000.0)))
        .await
        .expect("locks through the sentinel that wants its own password");
    h.release().await.unwrap();
    let wrong = backend(&[url("&sentinelPassword=nope")], |o| o);
    assert!(
        wrong
            .acquire(req("sauth", LockKind::Mutex, Some(1_000.0)))
            .unwrap()
            .await
            .is_err(),
        "a wrong sentinel password is a backend error"
    );

    // One password for both: the URL's reaches the sentinels too.
    let shared = RedisProc::start(&["--requirepass", "same"]);
    let sentinel = Sentinel::start_with(
        &shared,
        "requirepass same\nsentinel auth-pass mymaster same",
    );
    let url = format!(
        "redis-sentinel://:same@127.0.0.1:{}/0?sentinelServiceName=mymaster",
        sentinel.port
    );
    let b = backend(&[url], |o| o);
    let h = get(&b, req("sauth", LockKind::Mutex, Some(5_000.0)))
        .await
        .expect("locks with the URL's password on both");
    h.release().await.unwrap();
}

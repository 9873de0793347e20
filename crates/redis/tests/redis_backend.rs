//! The Redis backend against real redis-server processes this test starts on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use distlock_core::{Backend, CancellationToken, LockKind};
use fred::prelude::*;
use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn mutex_excludes_and_fencing_tokens_increase() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o);
    let b = backend(&[server.url()], |o| o);
    let h1 = try_get(&a, "m", LockKind::Mutex).await.expect("free");
    assert!(
        try_get(&b, "m", LockKind::Mutex).await.is_none(),
        "held by a"
    );
    let raw = raw(&server.url()).await;
    let stored: String = raw.get("m").await.unwrap();
    assert!(
        stored.len() == 35 && stored.starts_with("dl-"),
        "the main key holds the random token (redlock's layout), marked as distlock's: {stored}"
    );
    let ttl: i64 = raw.pttl("m").await.unwrap();
    assert!(
        ttl > 29_000 && ttl <= 30_000,
        "default lease 30 s, got {ttl}"
    );
    let t1 = h1.fencing_token();
    h1.release().await.unwrap();
    let exists: i64 = raw.exists("m").await.unwrap();
    assert_eq!(exists, 0, "release deletes the key");
    let h2 = try_get(&b, "m", LockKind::Mutex).await.expect("free again");
    assert!(h2.fencing_token() > t1);
    h2.release().await.unwrap();
}

#[tokio::test]
async fn a_release_wakes_the_waiter_without_polling() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o);
    let b = backend(&[server.url()], |o| o);
    let held = try_get(&a, "wake", LockKind::Mutex).await.unwrap();
    let waiter = tokio::spawn(async move {
        let h = get(&b, req("wake", LockKind::Mutex, Some(10_000.0))).await;
        (h, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let released = Instant::now();
    held.release().await.unwrap();
    let (h, got) = waiter.await.unwrap();
    assert!(h.is_some());
    // The fallback re-check runs once a second and the lease is 30 s: only the wake-up
    // explains a grant this soon after the release.
    assert!(
        got - released < Duration::from_millis(500),
        "handoff took {:?}",
        got - released
    );
}

#[tokio::test]
async fn a_crashed_holders_lock_is_taken_when_its_lease_expires() {
    let server = RedisProc::start(&[]);
    let raw = raw(&server.url()).await;
    // What a distlock holder that died leaves behind: its token with a lease, and no release
    // (no wake-up, and a holder of ours, so no short re-checks either: the expiry wakes).
    let _: () = raw
        .set(
            "crash",
            "dl-00000000000000000000000000000001",
            Some(Expiration::PX(700)),
            None,
            false,
        )
        .await
        .unwrap();
    let b = backend(&[server.url()], |o| o);
    let start = Instant::now();
    let h = get(&b, req("crash", LockKind::Mutex, Some(5_000.0))).await;
    assert!(h.is_some());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(650),
        "granted before the lease ran out: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1_500),
        "the expiry wake-up came late: {took:?}"
    );
}

#[tokio::test]
async fn a_foreign_holders_release_is_noticed_without_a_wake_up() {
    let server = RedisProc::start(&[]);
    let raw = raw(&server.url()).await;
    // A plain SET NX PX holder (as redlock or redis-py lay it out): its DEL publishes nothing.
    let _: () = raw
        .set(
            "plain",
            "theirs",
            Some(Expiration::PX(10_000)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .unwrap();
    let b = backend(&[server.url()], |o| o);
    let waiter = tokio::spawn(async move {
        let h = get(&b, req("plain", LockKind::Mutex, Some(5_000.0))).await;
        (h, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let released = Instant::now();
    let _: i64 = raw.del("plain").await.unwrap();
    let (h, got) = waiter.await.unwrap();
    assert!(h.is_some());
    // The lease is 10 s and the queue refresh once a second: only the short re-check behind a
    // foreign holder explains this.
    assert!(
        got - released < Duration::from_millis(200),
        "noticed {:?} after the release",
        got - released
    );
}

#[tokio::test]
async fn leases_renew_and_a_deleted_key_fires_lost() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o.lease(300.0).unwrap());
    let b = backend(&[server.url()], |o| o);
    let h = try_get(&a, "renew", LockKind::Mutex).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!h.lost().is_lost(), "renewed in the background");
    assert!(
        try_get(&b, "renew", LockKind::Mutex).await.is_none(),
        "still held after 4 leases"
    );
    let raw = raw(&server.url()).await;
    let _: () = raw.del("renew").await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), h.lost().lost())
        .await
        .unwrap();
    assert!(reason.contains("gone or owned by someone else"), "{reason}");
    h.release().await.unwrap();
}

#[tokio::test]
async fn a_server_that_stops_answering_fires_lost_at_the_local_deadline() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| {
        o.lease(600.0).unwrap().server_timeout(200.0).unwrap()
    });
    let h = try_get(&a, "stall", LockKind::Mutex).await.unwrap();
    let granted = Instant::now();
    server.pause();
    let reason = tokio::time::timeout(Duration::from_secs(3), h.lost().lost())
        .await
        .unwrap();
    let at = granted.elapsed();
    assert!(reason.contains("local deadline"), "{reason}");
    assert!(at < Duration::from_millis(1_000), "lost only after {at:?}");
    // A release against the stopped server returns within the server timeout, without error:
    // the lease is over.
    let start = Instant::now();
    h.release().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    server.resume();
}

#[tokio::test]
async fn reader_writer_lock_with_writer_preference() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o);
    let b = backend(&[server.url()], |o| o);
    let r1 = try_get(&a, "doc", LockKind::Read).await.unwrap();
    let r2 = try_get(&b, "doc", LockKind::Read).await.unwrap();
    assert!(try_get(&b, "doc", LockKind::Write).await.is_none());
    assert!(
        try_get(&b, "doc", LockKind::Mutex).await.is_none(),
        "a mutex is the writer side"
    );
    // The writer comes from a third process: within one process a writer queues in memory
    // behind that process's own readers.
    let c = backend(&[server.url()], |o| o);
    let writer =
        tokio::spawn(async move { get(&c, req("doc", LockKind::Write, Some(10_000.0))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        get(&a, req("doc", LockKind::Read, Some(200.0)))
            .await
            .is_none(),
        "a new reader waits behind the queued writer"
    );
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let w = tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(try_get(&a, "doc", LockKind::Read).await.is_none());
    w.release().await.unwrap();
    assert!(try_get(&a, "doc", LockKind::Read).await.is_some());
}

#[tokio::test]
async fn semaphore_counts_on_the_server_and_dead_permits_expire() {
    let server = RedisProc::start(&[]);
    let sem = LockKind::semaphore(2);
    let a = backend(&[server.url()], |o| o);
    let b = backend(&[server.url()], |o| o);
    let p1 = try_get(&a, "gpu", sem).await.unwrap();
    let p2 = try_get(&b, "gpu", sem).await.unwrap();
    assert!(try_get(&a, "gpu", sem).await.is_none());
    assert!(
        try_get(&a, "gpu", LockKind::Mutex).await.is_some(),
        "semaphores have their own keys"
    );
    assert!(p2.fencing_token() > p1.fencing_token());
    p1.release().await.unwrap();
    let p3 = try_get(&a, "gpu", sem).await.unwrap();
    drop(p3);
    p2.release().await.unwrap();

    // A permit holder that died: a member whose server-time expiry is 500 ms away.
    let raw = raw(&server.url()).await;
    let keys = distlock_redis::keys::Keys::semaphore("", "one");
    let t: Vec<String> = raw
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    let now_ms = t[0].parse::<i64>().unwrap() * 1000 + t[1].parse::<i64>().unwrap() / 1000;
    let _: () = raw
        .zadd(
            &keys.set,
            None,
            None,
            false,
            false,
            (now_ms as f64 + 500.0, "dead"),
        )
        .await
        .unwrap();
    let one = LockKind::semaphore(1);
    assert!(try_get(&a, "one", one).await.is_none());
    let start = Instant::now();
    assert!(get(&a, req("one", one, Some(3_000.0))).await.is_some());
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn waiting_is_fair_between_providers() {
    let server = RedisProc::start(&[]);
    let providers: Vec<_> = (0..3).map(|_| backend(&[server.url()], |o| o)).collect();
    let owners = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        let (p, owners) = (p.clone(), owners.clone());
        loops.push(tokio::spawn(async move {
            for _ in 0..40 {
                let h = get(&p, req("fair", LockKind::Mutex, Some(10_000.0)))
                    .await
                    .unwrap();
                owners.lock().unwrap().push(i);
                tokio::task::yield_now().await;
                h.release().await.unwrap();
            }
        }));
    }
    for l in loops {
        tokio::time::timeout(Duration::from_secs(30), l)
            .await
            .unwrap()
            .unwrap();
    }
    let owners = owners.lock().unwrap();
    let same = owners.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(owners.len(), 120);
    assert!(
        same * 5 <= owners.len(),
        "same owner again {same} of {} times: {owners:?}",
        owners.len()
    );
}

#[tokio::test]
async fn ten_thousand_held_locks_renew_in_batches() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o.lease(1_500.0).unwrap());
    let mut held = Vec::new();
    for chunk in 0..20 {
        let futs: Vec<_> = (0..500)
            .map(|i| {
                a.acquire(req(
                    &format!("many-{chunk}-{i}"),
                    LockKind::Mutex,
                    Some(0.0),
                ))
                .unwrap()
            })
            .collect();
        for f in futs {
            held.push(f.await.unwrap().unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(
        held.iter().all(|h| !h.lost().is_lost()),
        "every lease renewed"
    );
    let (sent, batches) = (a.renewals_sent(), a.renewal_batches());
    assert!(sent >= 10_000, "each lease renewed at least once: {sent}");
    assert!(
        batches * 100 <= sent,
        "{sent} renewals took {batches} scripts"
    );
    for h in held {
        h.release().await.unwrap();
    }
}

#[tokio::test]
async fn bad_servers_and_foreign_keys_are_backend_errors() {
    let server = RedisProc::start(&["--requirepass", "s3cret"]);
    let wrong = backend(&[format!("redis://:nope@127.0.0.1:{}", server.port)], |o| o);
    let err = wrong
        .acquire(req("x", LockKind::Mutex, Some(0.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "BACKEND");
    assert!(
        err.to_string().to_lowercase().contains("wrongpass"),
        "{err}"
    );
    assert!(!err.to_string().contains("nope"));

    let right = backend(
        &[format!("redis://:s3cret@127.0.0.1:{}", server.port)],
        |o| o,
    );
    let raw = raw(&format!("redis://:s3cret@127.0.0.1:{}", server.port)).await;
    let _: () = raw.hset("a-hash", ("f", "v")).await.unwrap();
    let err = right
        .acquire(req("a-hash", LockKind::Mutex, Some(0.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "BACKEND");
    assert!(err.to_string().contains("another Redis type"), "{err}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = backend(&[format!("redis://127.0.0.1:{port}")], |o| o);
    let err = nowhere
        .acquire(req("x", LockKind::Mutex, Some(1_000.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "BACKEND", "{err}");
}

#[tokio::test]
async fn cancel_and_close_leave_nothing_behind() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o);
    let b = backend(&[server.url()], |o| o);
    let held = try_get(&a, "c", LockKind::Mutex).await.unwrap();
    let cancel = CancellationToken::new();
    let mut r = req("c", LockKind::Mutex, None);
    r.cancel = Some(cancel.clone());
    let waiting = b.acquire(r).unwrap();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.cancel();
    });
    assert_eq!(waiting.await.err().unwrap().code(), "CANCELLED");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let raw = raw(&server.url()).await;
    let queued: i64 = raw.zcard("{c}:distlock:queue").await.unwrap();
    assert_eq!(queued, 0, "a cancelled waiter leaves the server queue");
    a.close().await.unwrap();
    assert!(held.lost().is_lost());
    let exists: i64 = raw.exists("c").await.unwrap();
    assert_eq!(exists, 0, "close releases what the provider held");
    assert_eq!(
        a.acquire(req("c", LockKind::Mutex, None))
            .err()
            .unwrap()
            .code(),
        "CLOSED"
    );
}

#[tokio::test]
async fn a_per_acquire_lease_shorter_than_the_renewal_period_is_renewed_in_time() {
    let server = RedisProc::start(&[]);
    // The provider's lease is 30 s, so its renewal period is 10 s; this lock's lease is 600 ms.
    let b = backend(&[server.url()], |o| o);
    let mut r = req("short", LockKind::Mutex, Some(0.0));
    r.lease = Some(Duration::from_millis(600));
    let h = get(&b, r).await.expect("free");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(h.is_held(), "lost: {:?}", h.lost().reason());
    let raw = raw(&server.url()).await;
    let ttl: i64 = raw.pttl("short").await.unwrap();
    assert!(
        ttl > 0 && ttl <= 600,
        "renewed with its own lease, got {ttl}"
    );
    // An extend to a lease shorter still is renewed at its own pace too.
    h.clone().extend(Duration::from_millis(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(h.is_held(), "lost after extend: {:?}", h.lost().reason());
    h.release().await.unwrap();
}

/// k permits are k members of the semaphore's set, added, renewed and removed together and
/// all or none; across providers a queued large request is not overtaken by a later small one.
#[tokio::test]
async fn semaphore_permits_are_all_or_nothing_renewed_together_and_queued_fairly() {
    let server = RedisProc::start(&[]);
    let kind = |permits| LockKind::Semaphore {
        max_count: 4,
        permits,
    };
    let a = backend(&[server.url()], |o| o);
    let b = backend(&[server.url()], |o| o);
    let c = backend(&[server.url()], |o| o);
    let raw = raw(&server.url()).await;
    let set = distlock_redis::keys::Keys::semaphore("", "pool").set;
    let mut three = req("pool", kind(3), Some(0.0));
    three.lease = Some(Duration::from_millis(600));
    let three = get(&a, three).await.unwrap();
    let members: i64 = raw.zcard(&set).await.unwrap();
    assert_eq!(members, 3);
    assert!(try_get(&b, "pool", kind(2)).await.is_none());
    assert_eq!(raw.zcard::<i64, _>(&set).await.unwrap(), 3, "nothing taken");
    // Past two leases: the renewals kept all three members.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(raw.zcard::<i64, _>(&set).await.unwrap(), 3);
    assert!(three.is_held());
    let info = b.inspect("pool", kind(1)).await.unwrap();
    assert_eq!(info.holders, Some(3), "holders counts permits taken");
    // b queues for all four, then c asks for one: c waits behind b.
    let all = tokio::spawn(b.acquire(req("pool", kind(4), Some(5_000.0))).unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let one = tokio::spawn(c.acquire(req("pool", kind(1), Some(5_000.0))).unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !one.is_finished(),
        "the single permit waits behind the request for four"
    );
    three.release().await.unwrap();
    let all = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(raw.zcard::<i64, _>(&set).await.unwrap(), 4);
    assert!(!one.is_finished());
    all.release().await.unwrap();
    let one = tokio::time::timeout(Duration::from_secs(5), one)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(raw.zcard::<i64, _>(&set).await.unwrap(), 1);
    one.release().await.unwrap();
    assert_eq!(raw.zcard::<i64, _>(&set).await.unwrap(), 0);
}

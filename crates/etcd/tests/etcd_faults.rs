//! Faults on real etcd processes: a server stopped (SIGSTOP) past the lease, a 3-member
//! cluster losing a follower, then its leader while two providers contend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use distlock_core::{Backend, LockKind};
use distlock_etcd::{EtcdBackend, EtcdOptions};
use support::{Cluster, backend, prefix, req};
use tokio::time::Instant;

fn with_lease(urls: &[String], p: &str, lease_ms: f64) -> EtcdBackend {
    EtcdBackend::new(
        EtcdOptions::parse(urls)
            .unwrap()
            .key_prefix(p)
            .lease(lease_ms)
            .unwrap()
            .op_timeout(1_000.0)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fires_lost_by_the_local_deadline() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let a = with_lease(&etcd.urls(), &p, 2_000.0);
    let h = a
        .acquire(req("l", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let h2 = a
        .acquire(req("l2", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    // Let a keep-alive or two go through.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(h.is_held());
    etcd.members[0].stop();
    let stopped = Instant::now();
    // The last keep-alive that succeeded was sent before the stop, so the local deadline is at
    // most one TTL (2 s, less the drift margin) after it.
    let reason = tokio::time::timeout(Duration::from_secs(4), h.lost().lost())
        .await
        .unwrap();
    let after = stopped.elapsed();
    etcd.members[0].resume();
    assert!(reason.contains("deadline"), "{reason}");
    assert!(
        after <= Duration::from_millis(2_000),
        "lost {after:?} after the stop"
    );
    assert!(
        after >= Duration::from_millis(500),
        "lost too early: {after:?}"
    );
    assert!(
        h2.lost().is_lost(),
        "every lock of the lease is lost with it"
    );
    assert!(!h.is_held());
    assert_eq!(h.lease_remaining(), Some(Duration::ZERO));
    h.release().await.unwrap();
    h2.release().await.unwrap();
    // The next acquire grants a new lease and works.
    let again = a
        .acquire(req("l", LockKind::Mutex, Some(8_000.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert!(again.is_held());
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_keep_working_when_a_follower_dies() {
    let mut etcd = Cluster::start(3).await;
    let p = prefix();
    let leader = etcd.leader(0).await;
    let follower = (leader + 1) % 3;
    let (a, b) = (backend(&etcd.urls(), &p), backend(&etcd.urls(), &p));
    let h = a
        .acquire(req("f", LockKind::Mutex, Some(5_000.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    h.release().await.unwrap();
    etcd.members[follower].kill();
    let mut last = 0;
    for i in 0..10 {
        let who = if i % 2 == 0 { &a } else { &b };
        let h = who
            .acquire(req("f", LockKind::Mutex, Some(5_000.0)))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(h.fencing_token() > last);
        last = h.fencing_token();
        h.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_overlap_when_the_leader_dies_under_contention() {
    let mut etcd = Cluster::start(3).await;
    let p = prefix();
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let b = with_lease(&etcd.urls(), &p, 5_000.0);
        let (inside, overlaps, grants) = (inside.clone(), overlaps.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..2_000 {
                if Instant::now() >= stop_at {
                    break;
                }
                let got = b
                    .acquire(req("k", LockKind::Mutex, Some(4_000.0)))
                    .unwrap()
                    .await;
                let h = match got {
                    Ok(Some(h)) => h,
                    Ok(None) => continue,
                    Err(e) => {
                        // Allowed while the cluster elects a new leader; never an overlap.
                        errors.push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                grants.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.store(false, Ordering::SeqCst);
                h.release().await.unwrap();
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = grants.load(Ordering::SeqCst);
    assert!(before > 5, "the two providers take turns ({before} grants)");
    let leader = etcd.leader(0).await;
    etcd.members[leader].kill();
    let killed = Instant::now();
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let after = grants.load(Ordering::SeqCst) - before;
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "no two holders at once");
    assert!(
        after > 5,
        "locks work again after the leader died ({after} grants in {:?}; errors: {errors:?})",
        killed.elapsed()
    );
    eprintln!(
        "grants before the kill: {before}, after: {after}, errors: {}",
        errors.len()
    );
}

//! The etcd backend against a private single-member etcd: mutual exclusion, FIFO, timeouts,
//! cancellation, reader-writer locks, semaphores, leases, close and errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_core::{Backend, CancellationToken, LockKind};
use support::{Cluster, backend, count_keys, prefix, req, wait_keys};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_excludes_times_out_in_budget_and_tokens_increase() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let (a, b) = (backend(&etcd.urls(), &p), backend(&etcd.urls(), &p));
    let mut raw = etcd.raw().await;

    let held = a
        .acquire(req("m", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert!(held.is_held());
    let first = held.fencing_token();
    assert!(
        b.acquire(req("m", LockKind::Mutex, Some(0.0)))
            .unwrap()
            .await
            .unwrap()
            .is_none()
    );
    wait_keys(&mut raw, &p, 1).await; // the try deleted its key

    let t0 = Instant::now();
    let busy = b
        .acquire(req("m", LockKind::Mutex, Some(300.0)))
        .unwrap()
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(busy.is_none());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "{took:?}"
    );
    wait_keys(&mut raw, &p, 1).await; // the timed-out waiter deleted its key

    let info = b.inspect("m", LockKind::Mutex).await.unwrap();
    assert!(info.held);
    assert_eq!(info.holders, Some(1));
    assert_eq!(info.fencing_token, Some(first));

    held.clone().release().await.unwrap();
    held.release().await.unwrap(); // idempotent
    let mut last = first;
    for i in 0..5 {
        let who = if i % 2 == 0 { &b } else { &a };
        let h = who
            .acquire(req("m", LockKind::Mutex, Some(2_000.0)))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(
            h.fencing_token() > last,
            "token {} after {last}",
            h.fencing_token()
        );
        last = h.fencing_token();
        h.release().await.unwrap();
    }
    wait_keys(&mut raw, &p, 0).await;
    assert!(!a.inspect("m", LockKind::Mutex).await.unwrap().held);
    assert_eq!(a.held_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_waiters_are_served_in_arrival_order() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let mut raw = etcd.raw().await;
    let holder = backend(&etcd.urls(), &p);
    let h = holder
        .acquire(req("q", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 1..=3 {
        let b = backend(&etcd.urls(), &p);
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let h = b
                .acquire(req("q", LockKind::Mutex, Some(10_000.0)))
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(30)).await;
            h.release().await.unwrap();
        }));
        // The next waiter starts only once this one's key is in etcd.
        wait_keys(&mut raw, &p, 1 + i).await;
    }
    h.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiter_deletes_its_key_and_does_not_block_its_successor() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let mut raw = etcd.raw().await;
    let (a, b, c) = (
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
    );
    let h = a
        .acquire(req("c", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let token = CancellationToken::new();
    let mut r = req("c", LockKind::Mutex, None);
    r.cancel = Some(token.clone());
    let waiting_b = tokio::spawn(b.acquire(r).unwrap());
    wait_keys(&mut raw, &p, 2).await;
    let waiting_c = tokio::spawn(
        c.acquire(req("c", LockKind::Mutex, Some(10_000.0)))
            .unwrap(),
    );
    wait_keys(&mut raw, &p, 3).await;

    token.cancel();
    let got = tokio::time::timeout(Duration::from_secs(1), waiting_b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.err().map(|e| e.code()), Some("CANCELLED"));
    wait_keys(&mut raw, &p, 2).await;

    // The lease is 30 s: C gets the lock at once only because B's key is gone.
    let t0 = Instant::now();
    h.release().await.unwrap();
    let hc = tokio::time::timeout(Duration::from_secs(3), waiting_c)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    hc.release().await.unwrap();
    wait_keys(&mut raw, &p, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_a_writer_excludes_and_a_queued_writer_holds_back_later_readers() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let mut raw = etcd.raw().await;
    let (r1b, r2b, wb, r3b) = (
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
    );
    let r1 = r1b
        .acquire(req("rw", LockKind::Read, Some(0.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let r2 = r2b
        .acquire(req("rw", LockKind::Read, Some(0.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let info = r1b.inspect("rw", LockKind::Read).await.unwrap();
    assert_eq!((info.held, info.holders), (true, Some(2)));
    assert!(
        wb.acquire(req("rw", LockKind::Write, Some(0.0)))
            .unwrap()
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        wb.acquire(req("rw", LockKind::Mutex, Some(200.0)))
            .unwrap()
            .await
            .unwrap()
            .is_none()
    );

    let writer = tokio::spawn(
        wb.acquire(req("rw", LockKind::Write, Some(10_000.0)))
            .unwrap(),
    );
    wait_keys(&mut raw, &p, 3).await;
    assert!(
        r3b.acquire(req("rw", LockKind::Read, Some(0.0)))
            .unwrap()
            .await
            .unwrap()
            .is_none(),
        "a reader behind a queued writer waits"
    );
    let reader3 = tokio::spawn(
        r3b.acquire(req("rw", LockKind::Read, Some(10_000.0)))
            .unwrap(),
    );
    wait_keys(&mut raw, &p, 4).await;

    r1.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "one reader still holds");
    r2.release().await.unwrap();
    let w = tokio::time::timeout(Duration::from_secs(3), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    let info = wb.inspect("rw", LockKind::Write).await.unwrap();
    assert_eq!((info.held, info.holders), (true, Some(1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reader3.is_finished(), "the writer excludes readers");
    w.release().await.unwrap();
    let r3 = tokio::time::timeout(Duration::from_secs(3), reader3)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    r3.release().await.unwrap();
    wait_keys(&mut raw, &p, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_permits_are_all_or_nothing_and_fifo() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let mut raw = etcd.raw().await;
    let sem = |permits| LockKind::Semaphore {
        max_count: 3,
        permits,
    };
    let (a, b, c) = (
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
    );
    let ha = a
        .acquire(req("s", sem(2), Some(0.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let info = a.inspect("s", LockKind::semaphore(3)).await.unwrap();
    assert_eq!((info.held, info.holders), (false, Some(2)));
    // Two more do not fit: B waits for both, all or nothing.
    let waiting_b = tokio::spawn(b.acquire(req("s", sem(2), Some(10_000.0))).unwrap());
    wait_keys(&mut raw, &p, 2).await;
    // One would fit, but B is first (strict FIFO).
    assert!(
        c.acquire(req("s", sem(1), Some(0.0)))
            .unwrap()
            .await
            .unwrap()
            .is_none()
    );
    let info = a.inspect("s", LockKind::semaphore(3)).await.unwrap();
    assert_eq!((info.held, info.holders), (true, Some(2)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting_b.is_finished());

    ha.release().await.unwrap();
    let hb = tokio::time::timeout(Duration::from_secs(3), waiting_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    let hc = c
        .acquire(req("s", sem(1), Some(0.0)))
        .unwrap()
        .await
        .unwrap()
        .expect("2 + 1 <= 3");
    assert!(
        a.acquire(req("s", sem(1), Some(0.0)))
            .unwrap()
            .await
            .unwrap()
            .is_none()
    );
    let info = a.inspect("s", LockKind::semaphore(3)).await.unwrap();
    assert_eq!((info.held, info.holders), (true, Some(3)));
    assert!(hc.fencing_token() > hb.fencing_token());
    hb.release().await.unwrap();
    hc.release().await.unwrap();
    wait_keys(&mut raw, &p, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_by_someone_else_fires_lost_and_frees_the_name() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let raw = etcd.raw().await;
    let opts = distlock_etcd::EtcdOptions::parse(&etcd.urls())
        .unwrap()
        .key_prefix(&p)
        .lease(3_000.0)
        .unwrap();
    let a = distlock_etcd::EtcdBackend::new(opts).unwrap();
    let h = a
        .acquire(req("d", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    raw.delete_prefix(&p).await;
    // Checked at every keep-alive (every second with a 3 s lease).
    let reason = tokio::time::timeout(Duration::from_secs(3), h.lost().lost())
        .await
        .unwrap();
    assert!(reason.contains("deleted"), "{reason}");
    assert!(!h.is_held());
    // The in-process turn came back with the loss.
    let again = a
        .acquire(req("d", LockKind::Mutex, Some(2_000.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    again.release().await.unwrap();
    h.release().await.unwrap(); // a lost lock releases without error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_without_auto_renewal_ends_after_its_lease_unless_extended() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let a = backend(&etcd.urls(), &p);
    let b = backend(&etcd.urls(), &p);
    let mut r = req("n", LockKind::Mutex, None);
    r.auto_renew = false;
    r.lease = Some(Duration::from_millis(2_000));
    let h = a.acquire(r).unwrap().await.unwrap().unwrap();
    let left = h.lease_remaining().unwrap();
    assert!(
        left <= Duration::from_secs(2) && left > Duration::from_millis(1_000),
        "{left:?}"
    );
    let too_long = h
        .clone()
        .extend(Duration::from_secs(5))
        .await
        .map(|_| ())
        .expect_err("an error");
    assert_eq!(too_long.code(), "INVALID_ARGUMENT");
    assert!(too_long.to_string().contains("TTL"), "{too_long}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    h.clone()
        .extend(Duration::from_millis(1_500))
        .await
        .unwrap();
    assert!(h.lease_remaining().unwrap() > Duration::from_millis(1_500));
    let t0 = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(4), h.lost().lost())
        .await
        .unwrap();
    assert!(reason.contains("deadline"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // The server ends the lease at about the same time: another provider gets the lock.
    let hb = b
        .acquire(req("n", LockKind::Mutex, Some(5_000.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    hb.release().await.unwrap();
    h.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_rejects_waiters_fires_lost_and_deletes_keys() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let mut raw = etcd.raw().await;
    let a = backend(&etcd.urls(), &p);
    let b = backend(&etcd.urls(), &p);
    let h = a
        .acquire(req("x", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let held_b = b
        .acquire(req("y", LockKind::Mutex, None))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let waiting = tokio::spawn(b.acquire(req("x", LockKind::Mutex, None)).unwrap());
    wait_keys(&mut raw, &p, 3).await;
    b.close().await.unwrap();
    b.close().await.unwrap(); // idempotent
    assert!(b.is_closed());
    let got = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.err().map(|e| e.code()), Some("CLOSED"));
    assert!(held_b.lost().is_lost());
    assert_eq!(
        b.acquire(req("z", LockKind::Mutex, None))
            .err()
            .map(|e| e.code()),
        Some("CLOSED")
    );
    wait_keys(&mut raw, &p, 1).await;
    h.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_backend_error_not_busy() {
    let port = support::free_port();
    let a = backend(&[format!("127.0.0.1:{port}")], "u/");
    let t0 = Instant::now();
    let err = a
        .acquire(req("u", LockKind::Mutex, Some(0.0)))
        .unwrap()
        .await
        .map(|_| ())
        .expect_err("an error");
    assert_eq!(err.code(), "BACKEND", "{err}");
    assert!(err.to_string().contains("etcd lock \"u\""), "{err}");
    assert!(err.cause().server.unwrap().contains(&port.to_string()));
    let err = a
        .acquire(req("u", LockKind::Mutex, Some(500.0)))
        .unwrap()
        .await
        .map(|_| ())
        .expect_err("an error");
    assert_eq!(err.code(), "BACKEND", "{err}");
    let err = a
        .inspect("u", LockKind::Mutex)
        .await
        .map(|_| ())
        .expect_err("an error");
    assert_eq!(err.code(), "BACKEND", "{err}");
    assert!(t0.elapsed() < Duration::from_secs(7), "{:?}", t0.elapsed());
}

#[test]
fn options_are_validated() {
    use distlock_etcd::EtcdOptions;
    assert_eq!(
        EtcdOptions::parse(&[]).err().map(|e| e.code()),
        Some("INVALID_ARGUMENT")
    );
    let o = EtcdOptions::parse(&["127.0.0.1:2379".to_owned()]).unwrap();
    let e = o.clone().lease(1_000.0).err().unwrap().to_string();
    assert!(e.starts_with("leaseMs") && e.contains("2000"), "{e}");
    let tls = o.tls(distlock_core::TlsPem::default()).unwrap();
    assert!(
        distlock_etcd::EtcdBackend::new(tls).is_err(),
        "TLS needs https endpoints"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_is_exact_under_contention_in_one_process() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    let a = backend(&etcd.urls(), &p);
    let inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let overlaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (a, inside, overlaps) = (a.clone(), inside.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let h = a
                    .acquire(req("c", LockKind::Mutex, Some(10_000.0)))
                    .unwrap()
                    .await
                    .unwrap()
                    .unwrap();
                if inside.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.store(false, std::sync::atomic::Ordering::SeqCst);
                h.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0);
    let mut raw = etcd.raw().await;
    assert_eq!(count_keys(&mut raw, &p).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authentication() {
    let etcd = Cluster::start(1).await;
    let p = prefix();
    {
        etcd.raw().await.enable_auth("root", "rootpw").await;
    }
    let opts = |password: &str| {
        distlock_etcd::EtcdOptions::parse(&etcd.urls())
            .unwrap()
            .key_prefix(&p)
            .auth("root".to_owned(), password.to_owned())
    };
    let wrong = distlock_etcd::EtcdBackend::new(opts("nope")).unwrap();
    let t0 = Instant::now();
    let err = wrong
        .acquire(req("a", LockKind::Mutex, Some(3_000.0)))
        .unwrap()
        .await
        .map(|_| ())
        .expect_err("refused credentials are an error");
    assert_eq!(err.code(), "BACKEND", "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "not retried: {:?}",
        t0.elapsed()
    );

    let right = distlock_etcd::EtcdBackend::new(opts("rootpw")).unwrap();
    let h = right
        .acquire(req("a", LockKind::Mutex, Some(3_000.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert!(right.inspect("a", LockKind::Mutex).await.unwrap().held);
    h.release().await.unwrap();
    assert!(!right.inspect("a", LockKind::Mutex).await.unwrap().held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_replaced_by_authenticating_again() {
    // Simple tokens that expire after one second: every request after a pause of two finds its
    // token refused and must authenticate again.
    let etcd = Cluster::start_args(&["--auth-token-ttl", "1"]).await;
    let p = prefix();
    etcd.raw().await.enable_auth("root", "rootpw").await;
    let opts = distlock_etcd::EtcdOptions::parse(&etcd.urls())
        .unwrap()
        .key_prefix(&p)
        .auth("root".to_owned(), "rootpw".to_owned());
    let b = distlock_etcd::EtcdBackend::new(opts).unwrap();
    for _ in 0..2 {
        let h = b
            .acquire(req("a", LockKind::Mutex, Some(3_000.0)))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(b.inspect("a", LockKind::Mutex).await.unwrap().held);
        h.release().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    assert!(!b.inspect("a", LockKind::Mutex).await.unwrap().held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let pki = support::Pki::make();
    let etcd = Cluster::start_tls(&pki).await;
    let p = prefix();
    let opts = distlock_etcd::EtcdOptions::parse(&etcd.urls())
        .unwrap()
        .key_prefix(&p)
        .op_timeout(2_000.0)
        .unwrap();
    let good = opts
        .clone()
        .tls(distlock_core::TlsPem {
            ca: Some(vec![pki.read("ca.pem")]),
            cert: Some(pki.read("client.pem")),
            key: Some(pki.read("client.key")),
        })
        .unwrap();
    let a = distlock_etcd::EtcdBackend::new(good).unwrap();
    let h = a
        .acquire(req("t", LockKind::Mutex, Some(3_000.0)))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert!(a.inspect("t", LockKind::Mutex).await.unwrap().held);
    h.release().await.unwrap();

    // The system's roots do not know the private CA: an error, never "busy".
    let untrusted = distlock_etcd::EtcdBackend::new(opts).unwrap();
    let err = untrusted
        .acquire(req("t", LockKind::Mutex, Some(0.0)))
        .unwrap()
        .await
        .map(|_| ())
        .expect_err("an unknown CA is an error");
    assert_eq!(err.code(), "BACKEND", "{err}");
}

/// A key etcd's own lock recipe would write (`<name>/<lease hex>`, as `etcdctl lock` and the
/// Lock RPC do) holds against a mutex, a reader and a semaphore of that name; each waits, and
/// is granted when the key goes. (The real etcdctl is in `__test__/etcd.interop.spec.ts`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_etcds_own_recipe_holds_against_every_kind() {
    use distlock_etcd::grpc::wire::PutRequest;

    let etcd = Cluster::start(1).await;
    let p = prefix();
    let b = backend(&etcd.urls(), &p);
    let mut raw = etcd.raw().await;
    let lease = raw.0.lease_grant(30).await.unwrap().id;
    let foreign = format!("{p}f/{lease:x}");
    let put = PutRequest {
        key: foreign.clone().into_bytes(),
        value: Vec::new(),
        lease,
    };
    raw.0.put(put).await.unwrap();
    let kinds = [
        LockKind::Mutex,
        LockKind::Read,
        LockKind::Semaphore {
            max_count: 3,
            permits: 1,
        },
    ];
    for kind in kinds {
        let tried = b.acquire(req("f", kind, Some(0.0))).unwrap().await.unwrap();
        assert!(tried.is_none(), "{kind:?} got past a foreign holder");
        let info = b.inspect("f", kind).await.unwrap();
        assert!(info.held, "{kind:?}: {info:?}");
    }
    // Queued in this order: each key is in etcd before the next acquire starts.
    let mut waiters = Vec::new();
    // One provider each: within one process a reader would queue behind the mutex in-process.
    let providers = [
        b.clone(),
        backend(&etcd.urls(), &p),
        backend(&etcd.urls(), &p),
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        waiters.push(tokio::spawn(
            providers[i]
                .acquire(req("f", kind, Some(10_000.0)))
                .unwrap(),
        ));
        wait_keys(&mut raw, &p, 2 + i).await;
    }
    let mut waiters = waiters.into_iter();
    let mut next = || waiters.next().unwrap();
    let (mutex, reader, semaphore) = (next(), next(), next());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in [&mutex, &reader, &semaphore] {
        assert!(!w.is_finished(), "granted while the foreign key holds");
    }
    raw.0.delete(foreign).await.unwrap();
    type Waiting = tokio::task::JoinHandle<distlock_core::Result<Option<distlock_core::Held>>>;
    let within = |w: Waiting| async move {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("granted in time")
            .unwrap()
            .unwrap()
            .expect("granted, not busy")
    };
    // The key gone, the mutex holds; the semaphore (another family) too; the reader queued
    // behind the mutex and waits for it.
    let (m, s) = (within(mutex).await, within(semaphore).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reader.is_finished());
    m.release().await.unwrap();
    let r = within(reader).await;
    r.release().await.unwrap();
    s.release().await.unwrap();
    raw.0.lease_revoke(lease).await.unwrap();
}

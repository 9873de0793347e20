//! The PostgreSQL backend against a real server: `DISTLOCK_TEST_PG_URL`, else the local server
//! on 127.0.0.1:5432 (`npm test` finds or starts one and sets the variable).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock_core::{AcquireRequest, Backend, CancellationToken, Held, LockKind};
use distlock_postgres::{PgOptions, PostgresBackend, Scope};
use support::proxy::Proxy;
use support::{base_url, req, server_addr, with_app, with_port};
use tokio::time::Instant;

static APP: AtomicU64 = AtomicU64::new(0);

/// A unique application_name per provider, so a test can count its own connections.
fn app_name(tag: &str) -> String {
    format!(
        "dltest_{tag}_{}_{}",
        std::process::id(),
        APP.fetch_add(1, Ordering::Relaxed)
    )
}

fn provider_opts(tag: &str, f: impl FnOnce(PgOptions) -> PgOptions) -> (PostgresBackend, String) {
    let app = app_name(tag);
    let opts = PgOptions::parse(&with_app(&base_url(), &app)).unwrap();
    (PostgresBackend::new(f(opts)).unwrap(), app)
}

fn provider(tag: &str) -> PostgresBackend {
    provider_opts(tag, |o| o).0
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&base_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {} ({e}); run `npm test`, which finds or \
                 starts a server, or set DISTLOCK_TEST_PG_URL",
                base_url()
            )
        });
    tokio::spawn(conn);
    client
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        APP.fetch_add(1, Ordering::Relaxed)
    )
}

async fn get(b: &PostgresBackend, r: AcquireRequest) -> Option<Held> {
    b.acquire(r).unwrap().await.unwrap()
}

/// A fresh provider (a new session) gets `name` within `timeout_ms`, then releases it.
async fn assert_free(tag: &str, name: &str, timeout_ms: f64) {
    let fresh = provider(tag);
    get(&fresh, req(name, LockKind::Mutex, Some(timeout_ms)))
        .await
        .unwrap_or_else(|| panic!("{name} is still held"))
        .release()
        .await
        .unwrap();
}

async fn connections(admin: &tokio_postgres::Client, app: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn mutex_excludes_across_sessions_and_tokens_increase() {
    let a = provider("mx_a");
    let b = provider("mx_b");
    let name = unique("mutex");
    let h1 = get(&a, req(&name, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    assert!(
        get(&b, req(&name, LockKind::Mutex, Some(0.0)))
            .await
            .is_none()
    );
    // In one process too: a second acquire of a held lock waits (non-reentrant).
    assert!(
        get(&a, req(&name, LockKind::Mutex, Some(0.0)))
            .await
            .is_none()
    );
    let t1 = h1.fencing_token();
    h1.clone().release().await.unwrap();
    assert!(h1.is_released());
    h1.release().await.unwrap(); // idempotent
    let h2 = get(&b, req(&name, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    assert!(h2.fencing_token() > t1);
    h2.release().await.unwrap();
}

#[tokio::test]
async fn bounded_wait_times_out_on_the_server_and_is_granted_on_release() {
    let a = provider("tw_a");
    let b = provider("tw_b");
    let name = unique("timed");
    let h = get(&a, req(&name, LockKind::Mutex, None)).await.unwrap();
    let start = Instant::now();
    assert!(
        get(&b, req(&name, LockKind::Mutex, Some(300.0)))
            .await
            .is_none()
    );
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // A waiter blocked on the server is granted when the holder releases.
    let waiting = b
        .acquire(req(&name, LockKind::Mutex, Some(10_000.0)))
        .unwrap();
    let waiter = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    h.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    got.release().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_the_server_wait_and_leaves_nothing_held() {
    let (a, _) = provider_opts("cx_a", |o| o);
    let (b, app_b) = provider_opts("cx_b", |o| o);
    let admin = admin().await;
    let name = unique("cancel");
    let h = get(&a, req(&name, LockKind::Mutex, None)).await.unwrap();
    let cancel = CancellationToken::new();
    let mut r = req(&name, LockKind::Mutex, None);
    r.cancel = Some(cancel.clone());
    let waiting = tokio::spawn(b.acquire(r).unwrap());
    // Wait until b's session is blocked on the lock on the server.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&app_b],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never blocked on the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let err = waiting.await.unwrap().err().unwrap();
    assert_eq!(err.code(), "CANCELLED");
    let blocked: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            &[&app_b],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(blocked, 0, "the server is still waiting after the cancel");
    h.release().await.unwrap();
    // Nothing is held by b: a third provider gets the lock at once.
    assert_free("cx_c", &name, 0.0).await;
}

#[tokio::test]
async fn readers_share_writers_exclude_and_a_waiting_writer_holds_back_new_readers() {
    let a = provider("rw_a");
    let b = provider("rw_b");
    let c = provider("rw_c");
    let name = unique("rw");
    let r1 = get(&a, req(&name, LockKind::Read, Some(0.0)))
        .await
        .unwrap();
    let r2 = get(&b, req(&name, LockKind::Read, Some(0.0)))
        .await
        .unwrap();
    let r3 = get(&a, req(&name, LockKind::Read, Some(0.0)))
        .await
        .unwrap();
    assert!(
        get(&c, req(&name, LockKind::Write, Some(0.0)))
            .await
            .is_none()
    );
    // A writer starts waiting; a new reader must not overtake it.
    let writer = tokio::spawn(
        c.acquire(req(&name, LockKind::Write, Some(10_000.0)))
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late_reader = provider("rw_d");
    assert!(
        get(&late_reader, req(&name, LockKind::Read, Some(200.0)))
            .await
            .is_none(),
        "a reader overtook the waiting writer"
    );
    for r in [r1, r2, r3] {
        r.release().await.unwrap();
    }
    let w = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        get(&a, req(&name, LockKind::Read, Some(0.0)))
            .await
            .is_none()
    );
    // The mutex of the same name is the writer side.
    assert!(
        get(&a, req(&name, LockKind::Mutex, Some(0.0)))
            .await
            .is_none()
    );
    w.release().await.unwrap();
}

#[tokio::test]
async fn semaphore_admits_max_count_across_sessions() {
    let a = provider("sem_a");
    let b = provider("sem_b");
    let name = unique("sem");
    let sem = LockKind::semaphore(3);
    let mut held = vec![
        get(&a, req(&name, sem, Some(0.0))).await.unwrap(),
        get(&a, req(&name, sem, Some(0.0))).await.unwrap(),
        get(&b, req(&name, sem, Some(0.0))).await.unwrap(),
    ];
    assert!(get(&a, req(&name, sem, Some(0.0))).await.is_none());
    assert!(get(&b, req(&name, sem, Some(0.0))).await.is_none());
    let tokens: Vec<u64> = held.iter().map(|h| h.fencing_token()).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]));
    // A cross-process waiter gets the permit another process frees.
    let waiter = tokio::spawn(b.acquire(req(&name, sem, Some(5_000.0))).unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    held.remove(0).release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    held.push(got);
    for h in held {
        h.release().await.unwrap();
    }
}

#[tokio::test]
async fn terminated_session_fires_lost_only_for_its_locks_and_new_acquires_reconnect() {
    let (a, app_a) = provider_opts("lost_a", |o| o);
    let b = provider("lost_b");
    let admin = admin().await;
    let n1 = unique("lost1");
    let n2 = unique("lost2");
    let ha = get(&a, req(&n1, LockKind::Mutex, Some(0.0))).await.unwrap();
    let hb = get(&b, req(&n2, LockKind::Mutex, Some(0.0))).await.unwrap();
    let start = Instant::now();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app_a],
        )
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), ha.lost().lost())
        .await
        .expect("lost did not fire within 2 s");
    assert!(reason.contains("terminat"), "{reason}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!hb.lost().is_lost());
    // The server freed it; the provider reconnects for new acquires (the lost handle gave its
    // turn in this process back: see faults.rs), and releasing the lost handle does not fail.
    let again = get(&a, req(&n1, LockKind::Mutex, Some(0.0))).await.unwrap();
    ha.release().await.unwrap();
    again.release().await.unwrap();
    hb.release().await.unwrap();
}

#[tokio::test]
async fn ten_thousand_locks_use_at_most_sixteen_connections() {
    let (a, app) = provider_opts("many", |o| o.max_connections(16.0).unwrap());
    let admin = admin().await;
    let base = unique("many");
    let futures: Vec<_> = (0..10_000)
        .map(|i| {
            a.acquire(req(&format!("{base}-{i}"), LockKind::Mutex, Some(0.0)))
                .unwrap()
        })
        .collect();
    let mut held = Vec::with_capacity(10_000);
    for f in futures {
        held.push(f.await.unwrap().expect("an uncontended lock was busy"));
    }
    let used = connections(&admin, &app).await;
    assert!((1..=16).contains(&used), "{used} connections");
    let granted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(granted, 10_000);
    for h in held {
        h.release().await.unwrap();
    }
    assert_eq!(a.held_count(), 0);
}

#[tokio::test]
async fn transaction_scope_holds_the_lock_in_an_open_transaction() {
    let (a, app) = provider_opts("xact_a", |o| o.scope(Scope::Transaction));
    let b = provider("xact_b");
    let admin = admin().await;
    let name = unique("xact");
    let h = get(&a, req(&name, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    assert!(
        get(&b, req(&name, LockKind::Mutex, Some(0.0)))
            .await
            .is_none()
    );
    let state: String = admin
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "idle in transaction");
    // Bounded and cancelled waits in transaction scope.
    assert!(
        get(&a, req(&name, LockKind::Mutex, Some(100.0)))
            .await
            .is_none()
    );
    h.release().await.unwrap();
    let hb = get(&b, req(&name, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    let waiting = tokio::spawn(
        a.acquire(req(&name, LockKind::Mutex, Some(5_000.0)))
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    hb.release().await.unwrap();
    let h2 = waiting.await.unwrap().unwrap().unwrap();
    h2.release().await.unwrap();
    let sem = LockKind::semaphore(2);
    let s1 = get(&a, req(&name, sem, Some(0.0))).await.unwrap();
    let s2 = get(&a, req(&name, sem, Some(0.0))).await.unwrap();
    assert!(get(&a, req(&name, sem, Some(0.0))).await.is_none());
    s1.release().await.unwrap();
    s2.release().await.unwrap();
}

#[tokio::test]
async fn close_releases_everything_and_fires_lost() {
    let a = provider("close_a");
    let b = provider("close_b");
    let name = unique("close");
    let h = get(&a, req(&name, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    let pending = tokio::spawn(
        a.acquire(req(&unique("other"), LockKind::Read, None))
            .unwrap(),
    );
    a.close().await.unwrap();
    assert!(h.lost().is_lost());
    assert!(a.is_closed());
    let _ = pending.await.unwrap();
    assert_eq!(
        a.acquire(req(&name, LockKind::Mutex, None))
            .err()
            .unwrap()
            .code(),
        "CLOSED"
    );
    get(&b, req(&name, LockKind::Mutex, Some(2_000.0)))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_server_and_unknown_role_are_backend_errors_not_busy() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = PostgresBackend::new(
        PgOptions::parse(&format!(
            "postgres://postgres@127.0.0.1:{closed_port}/postgres"
        ))
        .unwrap(),
    )
    .unwrap();
    let err = down
        .acquire(req("x", LockKind::Mutex, Some(0.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "BACKEND");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{closed_port}")),
        "{err}"
    );
    // A waiter rides the refused server out until its deadline, also before the provider
    // ever connected.
    let start = std::time::Instant::now();
    let err = down
        .acquire(req("x", LockKind::Mutex, Some(600.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(err.code(), "BACKEND");
    assert!(
        took >= Duration::from_millis(590) && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert!(err.to_string().contains("ran out after"), "{err}");
    assert_eq!(err.cause().errno, Some(111), "{err}");
    // A refusal no retry cures fails at once, whatever the budget.
    let url = base_url().replacen("postgres://postgres@", "postgres://no_such_role_dl@", 1);
    let bad = PostgresBackend::new(PgOptions::parse(&url).unwrap()).unwrap();
    let start = std::time::Instant::now();
    let err = bad
        .acquire(req("x", LockKind::Mutex, None))
        .unwrap()
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "BACKEND");
    assert!(err.to_string().contains("no_such_role_dl"), "{err}");
    assert!(start.elapsed() < Duration::from_millis(500));
}

/// A fault proxy in front of the test server, and the URL through it.
async fn proxied_url() -> (Proxy, String) {
    let p = Proxy::start(server_addr(&base_url()).await).await;
    let through = with_port(&base_url(), p.port);
    (p, through)
}

#[tokio::test]
async fn a_cut_connection_fires_lost_within_two_seconds() {
    let (p, through) = proxied_url().await;
    let a = PostgresBackend::new(PgOptions::parse(&through).unwrap()).unwrap();
    let name = unique("cut");
    let h = get(&a, req(&name, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    p.reset();
    tokio::time::timeout(Duration::from_secs(2), h.lost().lost())
        .await
        .expect("lost did not fire within 2 s of the cut");
    h.release().await.unwrap();
    // The server frees the lock once it sees its side of the socket close.
    assert_free("cut_b", &name, 5_000.0).await;
}

#[tokio::test]
async fn keepalive_reports_a_silent_partition() {
    let (p, through) = proxied_url().await;
    let opts = PgOptions::parse(&through)
        .unwrap()
        .keepalive(Duration::from_millis(300));
    let a = PostgresBackend::new(opts).unwrap();
    let h = get(&a, req(&unique("ka"), LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    // Healthy: probes answer, nothing fires.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!h.lost().is_lost(), "{:?}", h.lost().reason());
    p.blackhole(true);
    let reason = tokio::time::timeout(Duration::from_secs(2), h.lost().lost())
        .await
        .expect("a silent partition was not reported within 2 s");
    assert!(reason.contains("keepalive"), "{reason}");
    h.release().await.unwrap();
    drop(p);
}

#[tokio::test]
async fn many_waiters_on_one_name_are_served_in_call_order() {
    let a = provider("fifo");
    let name = unique("fifo");
    let first = get(&a, req(&name, LockKind::Mutex, None)).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let fut = a
            .acquire(req(&name, LockKind::Mutex, Some(20_000.0)))
            .unwrap();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let h = fut.await.unwrap().unwrap();
            order.lock().unwrap().push(i);
            h.release().await.unwrap();
        }));
    }
    first.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

/// Callers of one process hand the lock on with the next caller's attempt sent right behind the
/// unlock on the same session. With one session every attempt lands on the holder's session,
/// where advisory locks are re-entrant: the in-process turn alone keeps two callers from
/// holding at once, which the overlap check and the token order check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_handoffs_on_one_session_never_overlap_and_tokens_rise() {
    let (a, app) = provider_opts("handoff", |o| o.max_connections(1.0).unwrap());
    let name = unique("handoff");
    let inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (a, name, inside, tokens) = (a.clone(), name.clone(), inside.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let h = get(&a, req(&name, LockKind::Mutex, Some(20_000.0)))
                    .await
                    .expect("granted within 20 s");
                assert!(!inside.swap(true, Ordering::AcqRel), "two holders at once");
                tokens.lock().unwrap().push(h.fencing_token());
                tokio::task::yield_now().await;
                inside.store(false, Ordering::Release);
                h.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 400);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens rise in grant order"
    );
    assert_eq!(connections(&admin().await, &app).await, 1);
    assert_free("handoff_after", &name, 2_000.0).await;
}

/// The handoff inside a process keeps the server's order between processes: a session of
/// another process that waits on the server is served within a few handoffs, not after all of
/// this process's callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_of_another_process_is_not_starved_by_in_process_handoffs() {
    let (a, _) = provider_opts("fair_a", |o| o.max_connections(1.0).unwrap());
    let b = provider("fair_b");
    let name = unique("fair");
    let grants = Arc::new(AtomicU64::new(0));
    let b_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (a, name, grants, b_done) = (a.clone(), name.clone(), grants.clone(), b_done.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded: 250 cycles per task, or until the other process got its turn.
            for _ in 0..250 {
                if b_done.load(Ordering::Acquire) {
                    break;
                }
                let h = get(&a, req(&name, LockKind::Mutex, Some(20_000.0)))
                    .await
                    .expect("granted within 20 s");
                grants.fetch_add(1, Ordering::AcqRel);
                tokio::task::yield_now().await;
                h.release().await.unwrap();
            }
        }));
    }
    // Let the in-process handoffs run, then wait from another session.
    let started = Instant::now();
    while grants.load(Ordering::Acquire) < 20 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = grants.load(Ordering::Acquire);
    let hb = get(&b, req(&name, LockKind::Mutex, Some(20_000.0)))
        .await
        .expect("the other process is granted");
    let during = grants.load(Ordering::Acquire) - before;
    b_done.store(true, Ordering::Release);
    hb.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    // A few handoffs can pass while B's try and its blocking wait travel; the server's queue
    // then serves B at the next unlock. Starved, B would wait for all 1 000 cycles.
    assert!(
        during < 100,
        "{during} in-process grants passed the waiting session"
    );
}

#[tokio::test]
async fn a_blocked_waiter_does_not_hold_up_releases_or_tries_of_the_same_provider() {
    let (a, _) = provider_opts("starve_a", |o| o.max_connections(2.0).unwrap());
    let b = provider("starve_b");
    let busy = unique("busy");
    let other = unique("other");
    let held_by_b = get(&b, req(&busy, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    let mine = get(&a, req(&other, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    // a waits on the server for `busy` (on a session of its own) ...
    let waiting = tokio::spawn(
        a.acquire(req(&busy, LockKind::Mutex, Some(20_000.0)))
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    // ... while its releases and tries still complete at once.
    let start = Instant::now();
    mine.release().await.unwrap();
    let again = get(&a, req(&other, LockKind::Mutex, Some(0.0)))
        .await
        .unwrap();
    again.release().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    held_by_b.release().await.unwrap();
    waiting
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_the_connect_is_a_backend_error_not_a_timeout() {
    // A listener that accepts TCP but never speaks the protocol: connecting hangs.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let b = PostgresBackend::new(
        PgOptions::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).unwrap(),
    )
    .unwrap();
    let start = Instant::now();
    let err = b
        .acquire(req("x", LockKind::Mutex, Some(300.0)))
        .unwrap()
        .await
        .err()
        .expect("a hanging server must not look like a busy lock");
    assert_eq!(err.code(), "BACKEND");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    keep.abort();
}

#[tokio::test]
async fn a_login_that_never_completes_is_retried_per_connect_timeout_within_the_budget() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let b = PostgresBackend::new(
        PgOptions::parse(&format!(
            "postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=1"
        ))
        .unwrap(),
    )
    .unwrap();
    // No timeout on the acquire: each login ends at connect_timeout and the waiter goes on.
    let waiting = tokio::time::timeout(
        Duration::from_millis(2_500),
        b.acquire(req("x", LockKind::Mutex, None)).unwrap(),
    )
    .await;
    assert!(waiting.is_err(), "a waiter without timeout gave up");
    // With a budget: logins of 1 s each, and the acquire ends at its own deadline.
    let start = std::time::Instant::now();
    let err = b
        .acquire(req("x", LockKind::Mutex, Some(2_500.0)))
        .unwrap()
        .await
        .err()
        .unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2_490) && took < Duration::from_millis(2_800),
        "{took:?}"
    );
    assert_eq!(err.code(), "BACKEND");
    assert!(err.to_string().contains("ran out after"), "{err}");
    assert!(err.to_string().contains("no answer"), "{err}");
    keep.abort();
}

/// Several permits are taken all or none, in either scope: an attempt that finds too few free
/// gives back the ones it locked before it answers, so the free ones stay free.
#[tokio::test]
async fn semaphore_permits_are_all_or_nothing_in_both_scopes() {
    for scope in [Scope::Session, Scope::Transaction] {
        let (a, _) = provider_opts("permits_a", |o| o.scope(scope));
        let (b, _) = provider_opts("permits_b", |o| o.scope(scope));
        let name = unique("permits");
        let kind = |permits| LockKind::Semaphore {
            max_count: 4,
            permits,
        };
        let three = get(&a, req(&name, kind(3), Some(0.0))).await.unwrap();
        assert!(get(&b, req(&name, kind(2), Some(0.0))).await.is_none());
        let info = b.inspect(&name, kind(1)).await.unwrap();
        assert_eq!(
            info.holders,
            Some(3),
            "{scope:?}: the failed try took nothing"
        );
        let one = get(&b, req(&name, kind(1), Some(0.0))).await.unwrap();
        assert!(one.fencing_token() > three.fencing_token());
        assert!(b.inspect(&name, kind(1)).await.unwrap().held);
        // Another process's request for all four waits for both holders.
        let all = tokio::spawn(b.acquire(req(&name, kind(4), Some(5_000.0))).unwrap());
        three.release().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!all.is_finished(), "{scope:?}: one permit is still taken");
        one.release().await.unwrap();
        let all = tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(b.inspect(&name, kind(1)).await.unwrap().holders, Some(4));
        all.release().await.unwrap();
        assert_eq!(b.inspect(&name, kind(1)).await.unwrap().holders, Some(0));
    }
}

/// Callers of one process whose turns overlap (a semaphore admits several at once) never get
/// the same permit slot: on a shared session the server would grant a key twice, and another
/// process would then find a slot free that this one counts as taken.
#[tokio::test]
async fn one_process_never_takes_a_permit_twice() {
    let b = Arc::new(provider("permits_inproc"));
    let other = provider("permits_other");
    let name = unique("permits_inproc");
    for round in 0..20u32 {
        // All three callers are let in by this process's queue at once and race to the server.
        let (one, two) = (
            LockKind::semaphore(3),
            LockKind::Semaphore {
                max_count: 3,
                permits: 2,
            },
        );
        let kinds = if round % 2 == 0 {
            [one, one, one]
        } else {
            [two, one, one]
        };
        let n = if round % 2 == 0 { 3 } else { 2 };
        let grants: Vec<_> = kinds[..n]
            .iter()
            .map(|k| tokio::spawn(b.acquire(req(&name, *k, Some(5_000.0))).unwrap()))
            .collect();
        let mut held = Vec::new();
        for g in grants {
            held.push(
                tokio::time::timeout(Duration::from_secs(10), g)
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        let info = other.inspect(&name, LockKind::semaphore(3)).await.unwrap();
        assert_eq!(
            info.holders,
            Some(3),
            "round {round}: three distinct slots on the server"
        );
        assert!(
            get(&other, req(&name, LockKind::semaphore(3), Some(0.0)))
                .await
                .is_none(),
            "round {round}: another process found a permit free"
        );
        for h in held {
            h.release().await.unwrap();
        }
    }
}

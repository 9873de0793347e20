//! A partition that heals: a provider behind a loopback proxy that goes silent (blackhole) with
//! calls in flight, then passes again. After every heal the provider must grant again within
//! about one server timeout, its held lock confirmed (or, when its key vanished meanwhile,
//! reported lost), on the event-loop driver and on the runtime's (fred) alone.
//!
//! The cycles force the order that once wedged a provider for good: the event loop's connection
//! notices the silence first (a call finds a request unanswered past the server timeout and
//! breaks it), the confirmation that follows runs over the background connection while the
//! partition lasts and fails, and then the link heals with no reconnect to start another.
//! Every third cycle also resets the connections mid-partition, so the background client
//! reconnects through the partition; every third deletes the held key meanwhile.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use distlock_core::{Backend, LockKind};
use distlock_redis::RedisBackend;
use fred::prelude::KeysInterface;
use support::proxy::Proxy;
use support::reactor::on_this_loop;
use support::*;
use tokio::time::Instant;

/// The providers' `serverTimeoutMs`.
const TIMEOUT_MS: f64 = 200.0;
const TIMEOUT: Duration = Duration::from_millis(200);
/// How long an acquire made right after a heal may take to be granted: one server timeout,
/// plus slack for this shared machine.
const RECOVERY_BOUND: Duration = Duration::from_millis(200 + 400);
/// The proxied provider's lease, short enough for its renewals to come every second.
const LEASE_MS: f64 = 3_000.0;
const RENEW_PERIOD: Duration = Duration::from_millis(1_000);

/// Heal cycles per test (`DISTLOCK_HEAL_CYCLES` for a longer run).
fn cycles() -> usize {
    std::env::var("DISTLOCK_HEAL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
        .clamp(1, 500)
}

fn proxied(proxy: &Proxy, event_loop: bool) -> RedisBackend {
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let b = backend(&[url], |o| {
        o.server_timeout(TIMEOUT_MS)
            .unwrap()
            .lease(LEASE_MS)
            .unwrap()
    });
    if event_loop {
        on_this_loop(&b);
    }
    b
}

/// Gets the provider's connections up (on the event loop, until scripts go over it).
async fn warm_up(b: &RedisBackend, event_loop: bool) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let h = get(b, req("warm-up", LockKind::Mutex, Some(2_000.0))).await;
        h.expect("granted before any fault")
            .release()
            .await
            .unwrap();
        if !event_loop || b.scripts_on_event_loop() > 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "the event-loop connection never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pct(sorted: &[Duration], p: usize) -> u128 {
    sorted[(sorted.len() - 1) * p / 100].as_millis()
}

/// Runs the heal cycles; returns how many wedged (no grant within the bound after the heal)
/// and the time from each heal to the first grant of the cycles that recovered.
async fn heal_cycles(event_loop: bool) -> (usize, Vec<Duration>, Vec<String>) {
    let server = RedisProc::start(&[]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = Proxy::start(addr).await;
    let raw = raw(&server.url()).await;
    // Another client, straight to the server: it holds the name the pending acquire waits for.
    let other = backend(&[server.url()], |o| o);
    let mut a = proxied(&proxy, event_loop);
    warm_up(&a, event_loop).await;
    let (mut wedged, mut recovered, mut problems) = (0, Vec::new(), Vec::new());
    for k in 0..cycles() {
        let name = |what: &str| format!("{what}-{event_loop}-{k}");
        let before = problems.len();
        let held = try_get(&a, &name("held"), LockKind::Mutex)
            .await
            .expect("held before the partition");
        let releasing = try_get(&a, &name("released"), LockKind::Mutex)
            .await
            .expect("taken before the partition");
        let busy = try_get(&other, &name("busy"), LockKind::Mutex)
            .await
            .unwrap();
        let pending = {
            let (a, r) = (
                a.clone(),
                req(&name("busy"), LockKind::Mutex, Some(4_000.0)),
            );
            tokio::spawn(async move { a.acquire(r).unwrap().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        proxy.blackhole(true);
        // A release and a try in flight in the partition.
        let release = tokio::spawn(releasing.release());
        let _ = a
            .acquire(req(&name("try-1"), LockKind::Mutex, Some(0.0)))
            .unwrap()
            .await;
        // Past the server timeout, the next call finds the request unanswered (on the event
        // loop: and breaks that connection, which starts a confirmation in the partition).
        tokio::time::sleep_until(started + TIMEOUT + Duration::from_millis(30)).await;
        let _ = a
            .acquire(req(&name("try-2"), LockKind::Mutex, Some(0.0)))
            .unwrap()
            .await;
        match k % 3 {
            1 => {
                // The held key vanishes while the holder cannot see it.
                let _: i64 = raw.del(name("held")).await.unwrap();
            }
            2 => proxy.reset(),
            _ => {}
        }
        // Long enough for a confirmation started in the partition to fail before the heal.
        tokio::time::sleep_until(started + TIMEOUT * 7).await;
        proxy.blackhole(false);
        let healed = Instant::now();
        busy.release().await.unwrap();

        let first = a.acquire(req(&name("free"), LockKind::Mutex, Some(3_000.0)));
        let first = first.unwrap().await;
        let took = healed.elapsed();
        match first {
            Ok(Some(h)) if took <= RECOVERY_BOUND => {
                recovered.push(took);
                h.release().await.unwrap();
            }
            other => {
                wedged += 1;
                let what = match &other {
                    Ok(Some(_)) => String::from("granted only"),
                    Ok(None) => String::from("timed out"),
                    Err(e) => format!("failed ({e})"),
                };
                problems.push(format!(
                    "cycle {k}: {what} {} ms after the heal",
                    took.as_millis()
                ));
                if let Ok(Some(h)) = other {
                    h.release().await.unwrap();
                }
            }
        }
        // The held lock: confirmed again, or (its key gone) reported lost.
        let until = Instant::now() + RECOVERY_BOUND;
        if k % 3 == 1 {
            // With no reconnect (the runtime's connection may never notice a partition), the
            // next renewal is what finds the key gone: within one renewal period.
            let until = if event_loop {
                until
            } else {
                until + RENEW_PERIOD
            };
            if tokio::time::timeout_at(until, held.lost().lost())
                .await
                .is_err()
            {
                problems.push(format!(
                    "cycle {k}: the lock whose key vanished was not reported lost"
                ));
            }
        } else {
            while !held.is_held() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !held.is_held() {
                problems.push(format!(
                    "cycle {k}: the held lock was not confirmed after the heal"
                ));
            }
        }
        match tokio::time::timeout(Duration::from_secs(6), pending).await {
            Ok(Ok(Ok(Some(h)))) => h.release().await.unwrap(),
            Ok(Ok(Ok(None))) => problems.push(format!("cycle {k}: the pending acquire timed out")),
            Ok(Ok(Err(e))) => problems.push(format!("cycle {k}: the pending acquire failed: {e}")),
            _ => problems.push(format!("cycle {k}: the pending acquire never settled")),
        }
        let _ = release.await;
        held.release().await.unwrap();
        if problems.len() > before {
            // A wedged provider stays wedged: the next cycles get a fresh one, so each cycle
            // counts on its own.
            let _ = a.close().await;
            a = proxied(&proxy, event_loop);
            warm_up(&a, event_loop).await;
        }
    }
    let _ = a.close().await;
    let _ = other.close().await;
    (wedged, recovered, problems)
}

async fn check(event_loop: bool) {
    let (wedged, mut recovered, problems) = heal_cycles(event_loop).await;
    let n = wedged + recovered.len();
    recovered.sort();
    let spread = if recovered.is_empty() {
        String::from("none recovered")
    } else {
        format!(
            "heal to first grant min {} / median {} / max {} ms",
            recovered[0].as_millis(),
            pct(&recovered, 50),
            pct(&recovered, 100)
        )
    };
    let driver = if event_loop { "event loop" } else { "runtime" };
    eprintln!("heal cycles ({driver}): {n} cycles, {wedged} wedged; {spread}");
    assert!(
        problems.is_empty(),
        "{driver}: {wedged} of {n} cycles wedged; {spread}; {problems:#?}"
    );
}

#[tokio::test]
async fn every_heal_is_confirmed_within_a_server_timeout_on_the_event_loop() {
    check(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_heal_is_confirmed_within_a_server_timeout_on_the_runtime() {
    check(false).await;
}

/// A provider closed while its server is down and its locks are in doubt ends its confirmation
/// (once, a closed provider's confirmation spun on a runtime thread for good, starving every
/// timer of the runtime: closing a second provider then hung).
#[test]
fn closing_a_provider_in_doubt_ends_its_confirmation() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ran = rt.block_on(async {
        let mut server = RedisProc::start(&[]);
        let a = backend(&[server.url()], |o| o.server_timeout(TIMEOUT_MS).unwrap());
        let held = try_get(&a, "doubt-at-close", LockKind::Mutex)
            .await
            .unwrap();
        server.kill();
        let until = Instant::now() + Duration::from_secs(5);
        while held.is_held() {
            assert!(
                Instant::now() < until,
                "the dropped connection was never noticed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), a.close()).await;
        // Past the confirmation round that was under way when it closed.
        std::thread::sleep(TIMEOUT * 4);
        // The runtime's one worker must still run timers.
        let (tx, rx) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(3)).is_ok()
    });
    if !ran {
        // A worker that never yields would hang the runtime's shutdown: leave it.
        std::mem::forget(rt);
        panic!("the runtime's worker is kept busy after the provider closed");
    }
}

//! The driver that runs scripts on the host's event loop (`direct.rs`), against real servers,
//! with the test reactor of `support/reactor.rs` standing in for Node's libuv loop.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use distlock_core::LockKind;
use fred::prelude::*;
use support::reactor::on_this_loop;
use support::*;
use tokio::time::Instant;

async fn cycle(b: &distlock_redis::RedisBackend, name: &str) {
    let h = get(b, req(name, LockKind::Mutex, Some(2_000.0)))
        .await
        .expect("granted");
    h.release().await.unwrap();
}

/// Kills every connection named `distlock-event-loop`; returns how many.
async fn kill_event_loop_connections(raw: &Client) -> usize {
    let list: String = raw
        .custom(fred::cmd!("CLIENT"), vec!["LIST".to_string()])
        .await
        .unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains("name=distlock-event-loop"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect();
    for id in &ids {
        let _: Value = raw
            .custom(
                fred::cmd!("CLIENT"),
                vec!["KILL".to_string(), "ID".to_string(), id.clone()],
            )
            .await
            .unwrap();
    }
    ids.len()
}

#[tokio::test]
async fn scripts_go_over_the_event_loop_and_a_killed_connection_keeps_locks_exclusive() {
    let server = RedisProc::start(&[]);
    let a = backend(&[server.url()], |o| o);
    on_this_loop(&a);
    let other = backend(&[server.url()], |o| o);
    // The connection opens in the background on first use.
    let until = Instant::now() + Duration::from_secs(3);
    while a.scripts_on_event_loop() == 0 {
        assert!(
            Instant::now() < until,
            "the event-loop connection never came up"
        );
        cycle(&a, "el").await;
    }
    let before = a.scripts_on_event_loop();
    for _ in 0..50 {
        cycle(&a, "el").await;
    }
    assert!(
        a.scripts_on_event_loop() >= before + 100,
        "acquire and release both went over it"
    );
    assert_eq!(
        other.scripts_on_event_loop(),
        0,
        "no reactor, no such connection"
    );

    let held = try_get(&a, "el", LockKind::Mutex).await.expect("free");
    assert!(try_get(&other, "el", LockKind::Mutex).await.is_none());
    let raw = raw(&server.url()).await;
    assert_eq!(kill_event_loop_connections(&raw).await, 1);
    // Other names go on (through the background client, then a new event-loop connection);
    // the held lock is confirmed and stays exclusive.
    cycle(&a, "el-other").await;
    let until = Instant::now() + Duration::from_secs(5);
    while !held.is_held() {
        assert!(Instant::now() < until, "the held lock was never confirmed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(try_get(&other, "el", LockKind::Mutex).await.is_none());
    held.release().await.unwrap();
    let after = a.scripts_on_event_loop();
    let until = Instant::now() + Duration::from_secs(5);
    while a.scripts_on_event_loop() <= after {
        assert!(
            Instant::now() < until,
            "the event-loop connection never came back"
        );
        cycle(&a, "el").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn redlock_runs_every_server_on_the_event_loop() {
    let servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    let urls: Vec<String> = servers.iter().map(RedisProc::url).collect();
    let a = backend(&urls, |o| o);
    on_this_loop(&a);
    let b = backend(&urls, |o| o);
    let until = Instant::now() + Duration::from_secs(3);
    while a.scripts_on_event_loop() < 6 {
        assert!(
            Instant::now() < until,
            "the event-loop connections never came up"
        );
        cycle(&a, "rl").await;
    }
    let before = a.scripts_on_event_loop();
    let h = try_get(&a, "rl", LockKind::Mutex).await.expect("free");
    assert!(
        a.scripts_on_event_loop() >= before + 2,
        "a quorum answered on the loop"
    );
    assert!(try_get(&b, "rl", LockKind::Mutex).await.is_none());
    let t = h.fencing_token();
    h.release().await.unwrap();
    // Every server is free within moments (the release returns at a quorum; the rest finish
    // in the background), not after a lease: a grant that landed on the third server after
    // the quorum's is released there too, on whichever connection it came.
    for u in &urls {
        let c = raw(u).await;
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let v: Option<String> = c.get("rl").await.unwrap();
            if v.is_none() {
                break;
            }
            assert!(
                Instant::now() < until,
                "{u} still holds the lock after the release"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let h2 = try_get(&b, "rl", LockKind::Mutex)
        .await
        .expect("released everywhere");
    assert!(h2.fencing_token() > t);
    h2.release().await.unwrap();
}

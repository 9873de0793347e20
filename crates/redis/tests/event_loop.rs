//! The driver that runs scripts on the host's event loop (`direct.rs`), against real servers.
//! A test reactor stands in for Node's libuv loop: the test's single-threaded runtime is "the
//! loop thread", and each watched socket is a task waiting on its readiness there.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;
use std::time::Duration;

use distlock_core::reactor::{RawSocket, Reactor, Ready, Watch};
use distlock_core::{Backend, LockKind};
use fred::prelude::*;
use support::*;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

struct TestReactor {
    thread: ThreadId,
    rt: tokio::runtime::Handle,
}

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The registration, then what keeps the socket open: dropped in that order.
struct Watched {
    fd: AsyncFd<Fd>,
    _owner: Box<dyn Send + Sync>,
}

struct TestWatch {
    task: tokio::task::AbortHandle,
    writable: Arc<AtomicBool>,
    changed: Arc<Notify>,
}

impl Watch for TestWatch {
    fn want_writable(&self, on: bool) {
        self.writable.store(on, Ordering::Release);
        self.changed.notify_one();
    }
}

impl Drop for TestWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reactor for TestReactor {
    fn on_loop(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn watch(
        &self,
        socket: RawSocket,
        owner: Box<dyn Send + Sync>,
        ready: Arc<dyn Ready>,
    ) -> io::Result<Box<dyn Watch>> {
        // SAFETY: `owner` keeps the socket open, and it is dropped after the registration (the
        // fields of `Watched` drop in order).
        let fd = unsafe {
            AsyncFd::register_with_interest(Fd(socket), Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| io::Error::other(e.to_string()))?;
        let watched = Watched { fd, _owner: owner };
        let writable = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Notify::new());
        let (w, c) = (writable.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let fd = &watched.fd;
            loop {
                let want_write = w.load(Ordering::Acquire);
                tokio::select! {
                    r = fd.readable() => {
                        let Ok(mut g) = r else { return };
                        ready.ready(true, false);
                        g.clear_ready();
                    }
                    r = fd.writable(), if want_write => {
                        let Ok(mut g) = r else { return };
                        ready.ready(false, true);
                        g.clear_ready();
                    }
                    _ = c.notified() => {}
                }
                // A dropped watch aborts this task, which takes effect at a yield: a socket
                // left readable (at its end) would otherwise spin here.
                tokio::task::yield_now().await;
            }
        });
        Ok(Box::new(TestWatch {
            task: task.abort_handle(),
            writable,
            changed,
        }))
    }

    fn spawn(&self, task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        self.rt.spawn(task);
    }
}

fn on_this_loop(b: &distlock_redis::RedisBackend) {
    b.attach(Arc::new(TestReactor {
        thread: std::thread::current().id(),
        rt: tokio::runtime::Handle::current(),
    }));
}

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

//! Shared by the integration tests: the test server's URL, a loopback TCP proxy that can delay,
//! blackhole and reset connections, and a private PostgreSQL cluster that a test may restart.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod proxy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock_core::{AcquireRequest, LockKind, Timeout};

/// `DISTLOCK_TEST_PG_URL`, else the local server on 127.0.0.1:5432.
pub fn base_url() -> String {
    std::env::var("DISTLOCK_TEST_PG_URL")
        .unwrap_or_else(|_| String::from("postgres://postgres@127.0.0.1:5432/postgres"))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name (or application_name) no other test or process uses.
pub fn unique(tag: &str) -> String {
    format!(
        "dltest_{tag}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with `application_name=app` added, so a test can find its own sessions on the server.
pub fn with_app(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
pub fn with_port(url: &str, port: u16) -> String {
    let parsed: tokio_postgres::Config = url.parse().unwrap();
    let host = match &parsed.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the test server must be reachable over TCP"),
    };
    let old = parsed.get_ports().first().copied().unwrap_or(5432);
    let through = url.replacen(&format!("{host}:{old}"), &format!("127.0.0.1:{port}"), 1);
    assert_ne!(through, url, "could not point {url} at port {port}");
    through
}

/// The address the URL's server listens on.
pub async fn server_addr(url: &str) -> std::net::SocketAddr {
    let parsed: tokio_postgres::Config = url.parse().unwrap();
    let host = match &parsed.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the test server must be reachable over TCP"),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// A plain client of the server at `url`, for looking at pg_locks and terminating sessions.
pub async fn admin_at(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {url} ({e}); run `npm test`, which finds or \
                 starts a server, or set DISTLOCK_TEST_PG_URL"
            )
        });
    tokio::spawn(conn);
    client
}

pub fn req(name: &str, kind: LockKind, timeout_ms: Option<f64>) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        kind,
        timeout: Timeout::from_ms(timeout_ms).unwrap(),
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

/// Advisory locks granted to the sessions whose application_name is `app`.
pub async fn advisory_locks_of(admin: &tokio_postgres::Client, app: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

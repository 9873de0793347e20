//! The backend contract (`distlock_core::testing`), twin of `__test__/contract.spec.ts`, against
//! real redis-server processes this test starts on free ports: one server, a 3-master Redis
//! Cluster, and RedLock over three servers (which has no semaphores: a count cannot be bounded
//! by quorums).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use distlock_core::testing::{Subject, run};
use support::{Cluster, RedisProc, backend};

fn subject(urls: Vec<String>, semaphore: bool) -> Subject {
    Subject {
        open: Box::new(move || Arc::new(backend(&urls, |o| o))),
        prefix: "contract-".into(),
        read_write: true,
        semaphore,
        shared_store: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_backend_keeps_the_contract() {
    let server = RedisProc::start(&[]);
    run(&subject(vec![server.url()], true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_contract() {
    let cluster = Cluster::start();
    run(&subject(vec![cluster.url()], true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_over_three_servers_keeps_the_contract() {
    let servers: Vec<RedisProc> = (0..3).map(|_| RedisProc::start(&[])).collect();
    let urls = servers.iter().map(RedisProc::url).collect();
    run(&subject(urls, false)).await;
}

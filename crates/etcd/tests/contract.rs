//! The backend contract (`distlock_core::testing`), twin of `__test__/contract.spec.ts`, against
//! a private single-member etcd this test starts on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use distlock_core::testing::{Subject, run};
use support::{Cluster, backend, prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_backend_keeps_the_contract() {
    let etcd = Cluster::start(1).await;
    let (urls, key_prefix) = (etcd.urls(), prefix());
    run(&Subject {
        open: Box::new(move || Arc::new(backend(&urls, &key_prefix))),
        prefix: "contract-".into(),
        read_write: true,
        semaphore: true,
        shared_store: true,
    })
    .await;
}

//! The backend contract (`distlock_core::testing`), twin of `__test__/contract.spec.ts`, against
//! a real server: `DISTLOCK_TEST_MYSQL_URL`, else the local server on 127.0.0.1:3306 as root.
//! Named locks are exclusive, so there are no reader-writer locks: the contract checks that
//! asking for one is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use distlock_core::testing::{Subject, run};
use distlock_mysql::{MySqlBackend, MySqlOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_backend_keeps_the_contract() {
    let url = std::env::var("DISTLOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| String::from("mysql://root@127.0.0.1:3306/test"));
    run(&Subject {
        open: Box::new(move || {
            Arc::new(MySqlBackend::new(MySqlOptions::parse(&url).unwrap()).unwrap())
        }),
        prefix: format!("contract-{}-", std::process::id()),
        read_write: false,
        semaphore: true,
        shared_store: true,
    })
    .await;
}

//! The backend contract (`distlock_core::testing`), twin of `__test__/contract.spec.ts`, against
//! a real server: `DISTLOCK_TEST_PG_URL`, else the local server on 127.0.0.1:5432.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use distlock_core::testing::{Subject, run};
use distlock_postgres::{PgOptions, PostgresBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_backend_keeps_the_contract() {
    let url = support::base_url();
    run(&Subject {
        open: Box::new(move || {
            Arc::new(PostgresBackend::new(PgOptions::parse(&url).unwrap()).unwrap())
        }),
        prefix: format!("contract-{}-", std::process::id()),
        read_write: true,
        semaphore: true,
        shared_store: true,
    })
    .await;
}

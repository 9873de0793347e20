//! The backend contract (`distlock_core::testing`), twin of `__test__/contract.spec.ts`, on a
//! lock directory of its own. Two providers on one directory stand in for two processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use distlock_core::testing::{Subject, run};
use distlock_file::FileBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_backend_keeps_the_contract() {
    let dir = std::env::temp_dir().join(format!("distlock-contract-{}", std::process::id()));
    let open_dir = dir.clone();
    run(&Subject {
        open: Box::new(move || Arc::new(FileBackend::new(open_dir.clone()))),
        prefix: "contract-".into(),
        read_write: true,
        semaphore: true,
        shared_store: true,
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

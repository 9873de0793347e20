//! Waiter drain in Rust, without the Node layer: N callers queue on one name in one process,
//! then the first holder releases and each waiter, once granted, releases at once. Prints the
//! drain time per backend (memory, file) and N, and whether the grants came in call order.
//! Then N queued callers give up, last caller first (dropping their futures, as a cancel does),
//! the worst order for a queue that searches for the leaver.
//!
//!     cargo run --release -p distlock-file --example waiter-drain -- 10000 30000 100000
//!
//! A measurement, not a test: nothing here asserts a time.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use distlock_core::{AcquireRequest, Backend, LockKind, MemoryBackend, Timeout};
use distlock_file::FileBackend;

fn req(name: &str, timeout: Timeout) -> AcquireRequest {
    AcquireRequest {
        name: name.into(),
        kind: LockKind::Mutex,
        timeout,
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

async fn drain(backend: Arc<dyn Backend>, n: usize) -> Result<(f64, bool), String> {
    let err = |e: distlock_core::Error| e.to_string();
    let first = backend
        .acquire(req("drain", Timeout::Zero))
        .map_err(err)?
        .await
        .map_err(err)?
        .ok_or("the first acquire found the lock busy")?;
    let order = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    // The same shape as bench/scenarios.mjs: a 120 s timeout on every waiter.
    let timeout = Timeout::After(std::time::Duration::from_secs(120));
    for i in 0..n {
        let fut = backend.acquire(req("drain", timeout)).map_err(err)?;
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(Some(h)) = fut.await else {
                return false;
            };
            order.lock().unwrap_or_else(|p| p.into_inner()).push(i);
            h.release().await.is_ok()
        }));
    }
    first.release().await.map_err(err)?;
    for t in tasks {
        if !t.await.map_err(|e| e.to_string())? {
            return Err("a waiter was not granted".into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let order = order.lock().unwrap_or_else(|p| p.into_inner());
    let in_order = order.iter().enumerate().all(|(i, &v)| i == v);
    Ok((secs, in_order))
}

async fn give_up(backend: Arc<dyn Backend>, n: usize) -> Result<f64, String> {
    let err = |e: distlock_core::Error| e.to_string();
    let first = backend
        .acquire(req("give-up", Timeout::Zero))
        .map_err(err)?
        .await
        .map_err(err)?
        .ok_or("the first acquire found the lock busy")?;
    let mut waiting = Vec::with_capacity(n);
    for _ in 0..n {
        waiting.push(
            backend
                .acquire(req("give-up", Timeout::Forever))
                .map_err(err)?,
        );
    }
    let start = Instant::now();
    while let Some(fut) = waiting.pop() {
        drop(fut);
    }
    let secs = start.elapsed().as_secs_f64();
    first.release().await.map_err(err)?;
    Ok(secs)
}

fn main() -> Result<(), String> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 30_000, 100_000]
    } else {
        sizes
    };
    // One worker thread, as the Node addon runs by default.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        for &n in &sizes {
            for which in ["memory", "file"] {
                let backend: Arc<dyn Backend> = if which == "memory" {
                    Arc::new(MemoryBackend::new())
                } else {
                    let dir = std::env::temp_dir()
                        .join(format!("distlock-drain-{}-{n}", std::process::id()));
                    Arc::new(FileBackend::new(dir))
                };
                let (secs, in_order) = drain(backend.clone(), n).await?;
                println!(
                    "{which:>6} {n:>7} waiters: drain {:>8.1} ms ({:.2} µs/waiter), in call order: {in_order}",
                    secs * 1e3,
                    secs * 1e6 / n as f64
                );
                let left = give_up(backend.clone(), n).await?;
                println!(
                    "{which:>6} {n:>7} waiters give up, last first: {:>8.1} ms",
                    left * 1e3
                );
                backend.close().await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

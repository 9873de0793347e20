//! W1 in Rust alone: `cargo run --release -p distlock-redis --example w1 -- redis://127.0.0.1:6379 [seconds] [threads]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use distlock_core::{AcquireRequest, Backend, LockKind, Timeout};
use distlock_redis::{RedisBackend, RedisOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.spawn(async move {
        let b = RedisBackend::new(RedisOptions::parse(&[url]).unwrap()).unwrap();
        let name = format!("w1-rust-{}", std::process::id());
        let req = || AcquireRequest {
            name: name.clone(),
            kind: LockKind::Mutex,
            timeout: Timeout::Forever,
            cancel: None,
            lease: None,
            auto_renew: true,
        };
        for _ in 0..1000 {
            b.acquire(req())
                .unwrap()
                .await
                .unwrap()
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        let cpu0 = cpu();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_secs(secs) {
            let h = b.acquire(req()).unwrap().await.unwrap().unwrap();
            h.release().await.unwrap();
            n += 1;
        }
        let el = t0.elapsed().as_secs_f64();
        println!(
            "{:.0} ops/s, {:.1} µs CPU/op",
            n as f64 / el,
            (cpu() - cpu0) / n as f64
        );
    });
    rt.block_on(h).unwrap();
}

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 10_000.0
}

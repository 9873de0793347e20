//! The floor under the file backend: `flock(LOCK_EX)` + `flock(LOCK_UN)` on a file kept open,
//! in a loop, for `seconds` (first argument, default 3). Prints cycles per second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let path = std::env::temp_dir().join(format!("distlock-flock-floor-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    let run = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run {
        for _ in 0..1000 {
            file.lock().unwrap();
            file.unlock().unwrap();
        }
        n += 1000;
    }
    let _ = std::fs::remove_file(&path);
    println!("{:.0} cycles/s", n as f64 / start.elapsed().as_secs_f64());
}

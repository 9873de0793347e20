//! Writes distlock's acquire and release scripts to `<dir>/acquire.lua` and `<dir>/release.lua`,
//! for the redis-benchmark floor in `bench/redis.mjs`:
//! `cargo run -q -p distlock-redis --example scripts -- <dir>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let dir = std::env::args().nth(1).expect("usage: scripts <dir>");
    for which in ["acquire", "release"] {
        let text = distlock_redis::script_text(which).unwrap();
        std::fs::write(format!("{dir}/{which}.lua"), text).unwrap();
    }
}

//! Real redis-server processes on free loopback ports, started and stopped by the tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use distlock_core::{AcquireRequest, Backend, Held, LockKind, Timeout};
use distlock_redis::{RedisBackend, RedisOptions};
use fred::prelude::*;

/// The loopback fault proxy of the PostgreSQL tests (delay, blackhole, reset), shared with them.
#[path = "../../../postgres/tests/support/proxy.rs"]
pub mod proxy;
#[cfg(unix)]
pub mod reactor;

fn redis_server_bin() -> String {
    std::env::var("DISTLOCK_REDIS_SERVER").unwrap_or_else(|_| String::from("redis-server"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One redis-server child; killed on drop.
pub struct RedisProc {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisProc {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Kills the server (kill -9) and starts a new, empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        let port = self.port;
        *self = Self::start_on(port, &[]);
    }

    fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("distlock-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(redis_server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install Redis (Debian/Ubuntu: apt-get install redis-server; \
                     macOS: brew install redis) or set DISTLOCK_REDIS_SERVER to its path",
                    redis_server_bin()
                )
            });
        let p = Self { port, child, dir };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server on port {} did not start within 5 s",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGSTOP: the server keeps its sockets open and stops answering.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster on loopback.
pub struct Cluster {
    pub nodes: Vec<RedisProc>,
}

impl Cluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisProc> = (0..3)
            .map(|_| {
                RedisProc::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            })
            .collect();
        let mut args = vec![String::from("--cluster"), String::from("create")];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli").args(&args).output().unwrap_or_else(|e| {
            panic!("cannot run redis-cli ({e}): it comes with Redis (Debian: apt-get install redis-tools)")
        });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            let mut ok = false;
            for _ in 0..200 {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(ok, "the cluster did not become ready");
        }
        Self { nodes }
    }

    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }
}

pub fn backend(urls: &[String], f: impl FnOnce(RedisOptions) -> RedisOptions) -> RedisBackend {
    RedisBackend::new(f(RedisOptions::parse(urls).unwrap())).unwrap()
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

pub async fn get(b: &RedisBackend, r: AcquireRequest) -> Option<Held> {
    b.acquire(r).unwrap().await.unwrap()
}

pub async fn try_get(b: &RedisBackend, name: &str, kind: LockKind) -> Option<Held> {
    get(b, req(name, kind, Some(0.0))).await
}

/// A plain client for looking at (and tampering with) the server.
pub async fn raw(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

/// A Redis Sentinel (the same binary, `--sentinel`) watching `master` as `mymaster`.
pub struct Sentinel {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Sentinel {
    pub fn start(master: &RedisProc) -> Self {
        Self::start_with(master, "")
    }

    /// A sentinel with `extra` lines in its configuration (`requirepass`, `sentinel auth-pass`).
    pub fn start_with(master: &RedisProc, extra: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "distlock-sentinel-test-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 5000\n{extra}\n",
                dir.display(),
                master.port
            ),
        )
        .unwrap();
        let child = Command::new(redis_server_bin())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Owned before waiting, so a failed start is killed and reaped by Drop.
        let sentinel = Self { port, child, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return sentinel;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis sentinel on port {port} did not start within 5 s");
    }

    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=mymaster",
            self.port
        )
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

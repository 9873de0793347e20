//! Private etcd servers for the tests: real `etcd` processes on free loopback ports, data in
//! temporary directories, killed (and their directories removed) on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock_core::{AcquireRequest, LockKind, Timeout};
use distlock_etcd::grpc::wire::{DeleteRangeRequest, PutRequest, RangeRequest, prefix_end};
use distlock_etcd::grpc::{Certificate, Client, ClientTlsConfig, Identity, Settings};
use distlock_etcd::{EtcdBackend, EtcdOptions};

/// The etcd binary: `$DISTLOCK_ETCD_BIN`, else `etcd` on PATH. Never skips.
pub fn etcd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DISTLOCK_ETCD_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the etcd tests need an etcd server binary: set DISTLOCK_ETCD_BIN, or install it (Debian/Ubuntu: apt-get install etcd-server)"
    );
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid();
        assert!(pid > 0, "member {} is not running", self.name);
        // SAFETY: kill(2) on the pid of a child process this test started and has not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster of `n` members (1 = a single server).
pub struct Cluster {
    pub members: Vec<Member>,
}

/// PEM files for a TLS test: a CA, a server certificate for 127.0.0.1, a client certificate.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Made with the `openssl` command line tool.
    pub fn make() -> Pki {
        let dir = std::env::temp_dir().join(format!("distlock-etcd-pki-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| {
                    panic!("the TLS test needs the openssl command (apt-get install openssl): {e}")
                });
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=distlock test CA",
        ]);
        run(&ca);
        for who in ["server", "client"] {
            let (key, csr, pem, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("{who}.ext"),
            );
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
            run(&req);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Pki { dir }
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, None, &[]).await
    }

    /// One member serving clients over TLS, requiring client certificates.
    pub async fn start_tls(pki: &Pki) -> Cluster {
        Self::start_with(1, Some(pki), &[]).await
    }

    /// One member started with these extra arguments.
    pub async fn start_args(args: &[&str]) -> Cluster {
        Self::start_with(1, None, args).await
    }

    async fn start_with(n: usize, pki: Option<&Pki>, extra: &[&str]) -> Cluster {
        let bin = etcd_bin();
        let scheme = if pki.is_some() { "https" } else { "http" };
        let token = format!("distlock-test-{}", unique());
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                let dir = std::env::temp_dir().join(format!("distlock-etcd-{}", unique()));
                std::fs::create_dir_all(&dir).unwrap();
                Member {
                    name,
                    client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    dir,
                    child: None,
                }
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            let log = std::fs::File::create(m.dir.join("etcd.log")).unwrap();
            let mut cmd = Command::new(&bin);
            if let Some(pki) = pki {
                cmd.arg("--cert-file")
                    .arg(pki.dir.join("server.pem"))
                    .arg("--key-file")
                    .arg(pki.dir.join("server.key"))
                    .arg("--trusted-ca-file")
                    .arg(pki.dir.join("ca.pem"))
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(m.dir.join("data"))
                .args(["--listen-client-urls", &m.client_url])
                .args(["--advertise-client-urls", &m.client_url])
                .args(["--listen-peer-urls", &m.peer_url])
                .args(["--initial-advertise-peer-urls", &m.peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            m.child = Some(child);
        }
        let settings = Settings {
            connect_timeout: Duration::from_secs(2),
            tls: pki.map(|pki| {
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
                    .identity(Identity::from_pem(
                        pki.read("client.pem"),
                        pki.read("client.key"),
                    ))
            }),
            ..Settings::default()
        };
        let cluster = Cluster { members };
        for m in &cluster.members {
            cluster.wait_ready(&m.client_url, &settings).await;
        }
        cluster
    }

    async fn wait_ready(&self, url: &str, settings: &Settings) {
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = async {
                let c = Client::connect(url, settings).await.ok()?;
                let put = PutRequest {
                    key: b"distlock-test-ready".to_vec(),
                    value: b"1".to_vec(),
                    lease: 0,
                };
                c.put(put).await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), ok)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "etcd at {url} did not become ready in 20 s (see {:?})",
                self.members
                    .iter()
                    .map(|m| m.dir.join("etcd.log"))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The index of the current leader, asked of member `via`.
    pub async fn leader(&self, via: usize) -> usize {
        let c = Raw::connect(&self.members[via].client_url).await;
        let status: StatusResponse =
            c.0.unary("/etcdserverpb.Maintenance/Status", Empty {})
                .await
                .unwrap();
        let members: MemberListResponse =
            c.0.unary("/etcdserverpb.Cluster/MemberList", Empty {})
                .await
                .unwrap();
        let m = members
            .members
            .iter()
            .find(|m| m.id == status.leader)
            .expect("the leader is a member");
        let url = m.client_urls[0].clone();
        self.members
            .iter()
            .position(|x| x.client_url == url)
            .expect("the leader's url")
    }

    /// A raw client on the first member, for checks the backend does not offer.
    pub async fn raw(&self) -> Raw {
        Raw::connect(&self.members[0].client_url).await
    }
}

/// distlock's own gRPC client, with the few administrative calls the tests need (messages
/// from etcd's `rpc.proto`, only the fields read here).
pub struct Raw(pub Client);

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(uint64, tag = "4")]
    pub leader: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberListResponse {
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<MemberInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberInfo {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UserAdd {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UserGrantRole {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub role: String,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let settings = Settings {
            connect_timeout: Duration::from_secs(2),
            ..Settings::default()
        };
        Raw(Client::connect(url, &settings).await.unwrap())
    }

    /// Deletes every key starting with `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) {
        let d = DeleteRangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
        };
        self.0.delete_range(d).await.unwrap();
    }

    /// Adds `user` with `password` and the root role, then turns authentication on.
    pub async fn enable_auth(&self, user: &str, password: &str) {
        let add = UserAdd {
            name: user.to_owned(),
            password: password.to_owned(),
        };
        let _: Empty = self
            .0
            .unary("/etcdserverpb.Auth/UserAdd", add)
            .await
            .unwrap();
        let grant = UserGrantRole {
            user: user.to_owned(),
            role: "root".to_owned(),
        };
        let _: Empty = self
            .0
            .unary("/etcdserverpb.Auth/UserGrantRole", grant)
            .await
            .unwrap();
        let _: Empty = self
            .0
            .unary("/etcdserverpb.Auth/AuthEnable", Empty {})
            .await
            .unwrap();
    }
}

/// A key prefix no other test uses.
pub fn prefix() -> String {
    format!("t{}/", unique())
}

pub fn backend(urls: &[String], prefix: &str) -> EtcdBackend {
    EtcdBackend::new(
        EtcdOptions::parse(urls)
            .unwrap()
            .key_prefix(prefix)
            .op_timeout(2_000.0)
            .unwrap(),
    )
    .unwrap()
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

/// How many keys live under `prefix`.
pub async fn count_keys(raw: &mut Raw, prefix: &str) -> usize {
    let r = RangeRequest {
        count_only: true,
        ..RangeRequest::prefix(prefix)
    };
    raw.0.range(r).await.unwrap().count as usize
}

/// Waits (bounded) until `count_keys` is `n`.
pub async fn wait_keys(raw: &mut Raw, prefix: &str, n: usize) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let have = count_keys(raw, prefix).await;
        if have == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "expected {n} keys under {prefix}, have {have}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

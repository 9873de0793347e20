//! A private PostgreSQL cluster (initdb + pg_ctl) on a free loopback port in a temp directory,
//! for tests that stop or restart the server. Never touches the shared server. Run as root, the
//! server runs as the `postgres` user. Stopped (immediate mode) and removed on drop.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

pub struct Cluster {
    dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_user: Option<&'static str>,
    pg_ctl: PathBuf,
}

fn find(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions.flatten().map(|v| v.path().join("bin")).collect();
        found.sort();
        dirs.extend(found.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Cluster {
    /// Creates and starts the cluster. Panics with install instructions when the server binaries
    /// are missing (a test never skips silently).
    pub async fn start() -> Cluster {
        let initdb = find("initdb");
        let pg_ctl = find("pg_ctl");
        let (Some(initdb), Some(pg_ctl)) = (initdb, pg_ctl) else {
            panic!(
                "initdb/pg_ctl not found: the restart tests start a private PostgreSQL cluster; \
                 install the server binaries (Debian/Ubuntu: apt install postgresql)"
            );
        };
        let dir = std::env::temp_dir().join(format!(
            "distlock-pgtest-{}-{}",
            std::process::id(),
            super::unique("c")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let as_user = is_root().then_some("postgres");
        if let Some(user) = as_user {
            let ok = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(&dir)
                .status()
                .await
                .unwrap()
                .success();
            assert!(ok, "chown of {dir:?} failed");
        }
        let data = dir.join("data");
        // The port stays fixed for the cluster's life: restarts reuse it.
        let c = Cluster {
            dir,
            data,
            port: free_port(),
            as_user,
            pg_ctl,
        };
        let out = c
            .run(
                &initdb,
                &[
                    "-D",
                    c.data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.start_server().await;
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn run(&self, bin: &std::path::Path, args: &[&str]) -> std::process::Output {
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args).kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("a server command took over 120 s")
            .unwrap()
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = self
            .run(
                &self.pg_ctl.clone(),
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            )
            .await;
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (immediate mode: every session is cut, no checkpoint).
    pub async fn stop_server(&self) {
        let out = self
            .run(
                &self.pg_ctl.clone(),
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
            .await;
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&self.pg_ctl);
                c
            }
            None => std::process::Command::new(&self.pg_ctl),
        };
        let _ = cmd
            .args([
                "-D",
                self.data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

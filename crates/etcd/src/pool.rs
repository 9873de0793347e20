//! Connections: one [`grpc::Client`] per endpoint, one of them in use at a time.
//!
//! Balancing requests over every endpoint (as gRPC's balancers do) keeps sending a share of them
//! to a dead member, which reports itself ready and fails each request it gets, so a cluster
//! with one member down fails a share of all requests. Here requests stick to one member; a
//! request that fails
//! for any reason a retry might cure (a refused or reset connection, no answer in time, a member
//! without a leader) moves the provider to the next endpoint, and the request is retried there
//! within its bound.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::Trouble;
use crate::grpc::{self, Certificate, Client, ClientTlsConfig, Identity, Settings};
use crate::options::EtcdOptions;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// HTTP/2 pings on idle connections: often enough to find a dead server, rarer than etcd's
/// default `--grpc-keepalive-min-time` (5 s), below which it drops the connection.
const PING_EVERY: Duration = Duration::from_secs(10);
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

pub(crate) struct Pool {
    endpoints: Vec<String>,
    settings: Settings,
    clients: Vec<OnceCell<Client>>,
    current: AtomicUsize,
    /// The bound of one request (`opTimeoutMs`).
    pub bound: Duration,
}

impl Pool {
    pub fn new(opts: &EtcdOptions) -> Self {
        let bound = opts.op_timeout;
        let tls = opts
            .endpoints
            .iter()
            .any(|e| e.starts_with("https://"))
            .then(|| {
                let tls = opts.tls.clone().unwrap_or_default();
                let mut t = ClientTlsConfig::new();
                if tls.ca.is_empty() {
                    t = t.with_native_roots();
                } else {
                    t = t.ca_certificates(tls.ca.iter().map(Certificate::from_pem));
                }
                if let Some((cert, key)) = &tls.identity {
                    t = t.identity(Identity::from_pem(cert, key));
                }
                t
            });
        Self {
            endpoints: opts.endpoints.clone(),
            settings: Settings {
                connect_timeout: bound,
                keep_alive: Some((PING_EVERY, bound)),
                tls,
                user: opts.user.clone(),
            },
            clients: opts.endpoints.iter().map(|_| OnceCell::new()).collect(),
            current: AtomicUsize::new(0),
            bound,
        }
    }

    /// The client in use and its index, connected on first use (connecting authenticates
    /// when a user is set). A failed connect moves to the next endpoint.
    pub async fn client(&self) -> Result<(usize, Client), Trouble> {
        let i = self.current.load(Ordering::Acquire) % self.clients.len();
        let connecting = self.clients[i].get_or_try_init(|| async {
            let connecting = Client::connect(&self.endpoints[i], &self.settings);
            match tokio::time::timeout(self.bound, connecting).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(Trouble::from_grpc(&e)),
                Err(_) => Err(Trouble::timeout(self.bound)),
            }
        });
        match connecting.await {
            Ok(c) => Ok((i, c.clone())),
            Err(t) => {
                if !t.fatal {
                    self.failed(i);
                }
                Err(t.at(&self.endpoints[i]))
            }
        }
    }

    /// Endpoint `i` as messages name it.
    pub fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Request trouble on endpoint `i`: the next request goes to the next endpoint.
    pub fn failed(&self, i: usize) {
        if self.clients.len() > 1 {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.clients.len(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Runs `op` on the client in use, moving on and retrying (pausing 20 ms, doubling to
    /// 500 ms) until it succeeds, fails for good, or `bound` runs out.
    pub async fn call<T, F, Fut>(&self, bound: Duration, mut op: F) -> Result<T, Trouble>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, grpc::Error>>,
    {
        let until = Instant::now() + bound;
        let mut pause = FIRST_PAUSE;
        loop {
            let trouble = match tokio::time::timeout_at(until, self.client()).await {
                Err(_) => return Err(Trouble::timeout(bound)),
                Ok(Err(t)) => t,
                // One attempt gets a third of the bound (at least 1 s): a request stuck on a
                // member (a proposal lost in a leader change hangs until the server's own
                // timeout) then leaves time to try the next endpoint.
                Ok(Ok((i, c))) => {
                    let attempt = Instant::now() + (bound / 3).max(Duration::from_secs(1));
                    match tokio::time::timeout_at(attempt.min(until), op(c)).await {
                        Ok(Ok(v)) => return Ok(v),
                        Ok(Err(e)) => {
                            let t = Trouble::from_grpc(&e);
                            if !t.fatal {
                                self.failed(i);
                            }
                            t.at(&self.endpoints[i])
                        }
                        Err(_) => {
                            self.failed(i);
                            if Instant::now() >= until {
                                return Err(Trouble::timeout(bound).at(&self.endpoints[i]));
                            }
                            continue;
                        }
                    }
                }
            };
            if trouble.fatal || Instant::now() + pause >= until {
                return Err(trouble);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

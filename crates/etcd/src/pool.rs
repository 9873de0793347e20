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

use distlock_core::{Backoff, End, Fault, Input, Patience, Policy, Step, Timeout};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::{at, fault, no_answer};
use crate::grpc::{self, Certificate, Client, ClientTlsConfig, Identity, Settings};
use crate::options::EtcdOptions;

/// HTTP/2 pings on idle connections: often enough to find a dead server, rarer than etcd's
/// default `--grpc-keepalive-min-time` (5 s), below which it drops the connection.
const PING_EVERY: Duration = Duration::from_secs(10);

/// The pause between attempts while a failure is ridden out, for one request within its bound
/// ([`Pool::call`]) and for an acquire within its timeout alike: both wait out the same
/// failures (a member down, a cluster without a leader), so one policy serves both (the pool
/// used to pause 20 ms doubling to 500 ms, the acquire 50 ms doubling to 1 s). 50 ms first: a
/// failed request has already moved to the next endpoint, and 50 ms is little against the
/// round trip of a healthy member's answer; doubling to 1 s, about one etcd leader election
/// (the default `--election-timeout` is 1 000 ms): a longer pause would mostly wait after the
/// cluster is back.
pub(crate) const FAULT_PAUSE: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// How one request spends its bound. Nothing is ever busy here, and a call is never a try (its
/// bound is the request's own), so only the fault pause matters.
const CALL: Policy = Policy {
    fault_pause: FAULT_PAUSE,
    busy_poll: None,
    try_retries: 0,
    try_budget: Duration::ZERO,
};

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
    pub async fn client(&self) -> Result<(usize, Client), Fault> {
        let i = self.current.load(Ordering::Acquire) % self.clients.len();
        let connecting = self.clients[i].get_or_try_init(|| async {
            let connecting = Client::connect(&self.endpoints[i], &self.settings);
            match tokio::time::timeout(self.bound, connecting).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(fault(&e)),
                Err(_) => Err(no_answer(self.bound)),
            }
        });
        match connecting.await {
            Ok(c) => Ok((i, c.clone())),
            Err(f) => {
                if f.transient {
                    self.failed(i);
                }
                Err(at(f, &self.endpoints[i]))
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

    /// Runs `op` on the client in use, moving on and retrying (pausing as [`FAULT_PAUSE`] says)
    /// until it succeeds, fails for good, or `bound` runs out.
    pub async fn call<T, F, Fut>(&self, bound: Duration, mut op: F) -> Result<T, Fault>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, grpc::Error>>,
    {
        let now = Instant::now();
        let until = now + bound;
        let mut patience = Patience::new(CALL, Timeout::After(bound), now);
        let mut step = patience.step(Input::Begin, now);
        loop {
            let input = match step {
                Step::Attempt { .. } => match tokio::time::timeout_at(until, self.client()).await {
                    Err(_) => return Err(no_answer(bound)),
                    Ok(Err(f)) => Input::Fault(f),
                    // One attempt gets a third of the bound (at least 1 s): a request stuck on a
                    // member (a proposal lost in a leader change hangs until the server's own
                    // timeout) then leaves time to try the next endpoint, at once.
                    Ok(Ok((i, c))) => {
                        let attempt = Instant::now() + (bound / 3).max(Duration::from_secs(1));
                        match tokio::time::timeout_at(attempt.min(until), op(c)).await {
                            Ok(Ok(v)) => return Ok(v),
                            Ok(Err(e)) => {
                                let f = fault(&e);
                                if f.transient {
                                    self.failed(i);
                                }
                                Input::Fault(at(f, &self.endpoints[i]))
                            }
                            Err(_) => {
                                self.failed(i);
                                if Instant::now() >= until {
                                    return Err(at(no_answer(bound), &self.endpoints[i]));
                                }
                                Input::Elapsed
                            }
                        }
                    }
                },
                // A pause that would end at the bound: the failure is the answer now.
                Step::Pause { until: resume } if resume >= until => {
                    let last = patience.trouble().cloned();
                    return Err(last.unwrap_or_else(|| no_answer(bound)));
                }
                Step::Pause { until: resume } => {
                    tokio::time::sleep_until(resume).await;
                    Input::Elapsed
                }
                // Not reached: nothing here is busy.
                Step::Wait { .. } => Input::Elapsed,
                Step::Done(End::Failed(f) | End::Unreachable { fault: Some(f), .. }) => {
                    return Err(f);
                }
                Step::Done(_) => return Err(no_answer(bound)),
            };
            step = patience.step(input, Instant::now());
        }
    }
}

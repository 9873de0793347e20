//! Leases: one etcd lease, the keys hanging on it, its local deadline and its keep-alive.
//!
//! A [`Session`] is one etcd lease. Its local deadline (the core's [`Lease`]) is the instant the
//! last successful keep-alive (or the grant) was *sent*, plus the TTL less a margin for clock
//! drift: the server refreshed the lease when it received the request, later than that, so the
//! local deadline always comes before the server can expire the lease and grant the keys'
//! successors. A timer fires the session's lost signal at the deadline, whether or not the
//! keep-alive stream answers; the lost signals of every lock hanging on the lease fire with it.
//!
//! Keep-alive (for auto-renewed leases): one `LeaseKeepAlive` stream per lease, a request every
//! third of the TTL; a stream that fails or does not answer within the bound is reopened, every
//! 200 ms, until the deadline. An answer with TTL ≤ 0 means etcd dropped the lease: lost.
//!
//! Keys deleted by someone else are found at keep-alive time: after each successful keep-alive
//! of a lease that has locks, one `LeaseTimeToLive(keys)` lists the keys on the lease, and a
//! held lock whose key is missing fires its lost signal. (A watch per held key would tell
//! sooner, but costs a watcher per lock; a deleted key is an operator's act, not a race.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_core::sync::lock;
use distlock_core::{BackendEvent, Fault, Lease, LostSignal, Observer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::describe;
use crate::grpc::wire::LeaseKeepAliveRequest;
use crate::pool::Pool;

/// The lost reason of a lease whose keep-alive did not get through in time.
pub(crate) const DEADLINE: &str = "its etcd lease ran out at the local deadline without a successful keep-alive (the server may grant it to another holder from then on)";
const GONE: &str = "etcd reports its lease gone (expired or revoked)";
const PAUSE: Duration = Duration::from_millis(200);

/// The margin kept against clock drift between this process and the server: 1 % of the TTL.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100
}

/// A lock hanging on a session.
struct Attached {
    name: String,
    key: String,
    lost: LostSignal,
    /// When the key was known to exist (its create answer came back).
    since: Instant,
}

/// One etcd lease and what hangs on it.
pub(crate) struct Session {
    pub id: i64,
    pub ttl: Duration,
    pub lease: Lease,
    pub lost: LostSignal,
    /// The provider's shared lease (else one acquire's own).
    pub shared: bool,
    locks: Mutex<HashMap<u64, Attached>>,
    /// Stops the keep-alive (the deadline timer goes on).
    renew_stop: CancellationToken,
    /// Stops everything (revoked, provider closed).
    stop: CancellationToken,
}

impl Session {
    fn new(id: i64, ttl: Duration, sent: Instant, shared: bool, stop: CancellationToken) -> Self {
        Self {
            id,
            ttl,
            lease: Lease::new(ttl - drift(ttl), sent),
            lost: LostSignal::new(),
            shared,
            locks: Mutex::default(),
            renew_stop: CancellationToken::new(),
            stop,
        }
    }

    /// Whether keys put on this lease now can be expected to live: not lost, deadline ahead.
    pub fn is_live(&self) -> bool {
        !self.lost.is_lost() && Instant::now() < self.lease.deadline()
    }

    /// Hangs a held lock on the lease. A lease already lost fires the lock's signal at once.
    pub fn attach(&self, uid: u64, name: &str, key: &str, lost: &LostSignal, since: Instant) {
        lock(&self.locks).insert(
            uid,
            Attached {
                name: name.to_owned(),
                key: key.to_owned(),
                lost: lost.clone(),
                since,
            },
        );
        if !self.is_live() {
            self.lost.fire(DEADLINE);
            self.fire_all();
        }
    }

    /// Takes a lock off the lease (released).
    pub fn detach(&self, uid: u64) {
        lock(&self.locks).remove(&uid);
    }

    /// Fires the lost signal of every lock on the lease with the lease's reason.
    fn fire_all(&self) {
        let reason = self.lost.reason().unwrap_or(DEADLINE).to_owned();
        let locks: Vec<Attached> = lock(&self.locks).drain().map(|(_, a)| a).collect();
        for a in locks {
            a.lost.fire(reason.clone());
        }
    }

    /// Stops renewing; the lease then ends at its deadline unless extended.
    pub fn stop_renewing(&self) {
        self.renew_stop.cancel();
    }

    /// Stops the session's tasks and revokes the lease (its keys go with it), within `bound`.
    pub async fn revoke(&self, pool: &Pool, bound: Duration) {
        self.stop.cancel();
        let id = self.id;
        let revoking = pool.call(bound, |c| async move {
            match c.lease_revoke(id).await {
                Err(e) if e.is_lease_not_found() => Ok(()),
                other => other.map(drop),
            }
        });
        if let Err(t) = revoking.await {
            tracing::debug!(backend = "etcd", lease = id, error = %t.message, "revoke failed; the lease ends on its own");
        }
    }

    /// One keep-alive now (for `extend`): `Ok(true)` renewed, `Ok(false)` the lease is gone.
    pub async fn keep_alive_once(&self, pool: &Pool, bound: Duration) -> Result<bool, Fault> {
        let id = self.id;
        let mut sent = Instant::now();
        let sent_at = &mut sent;
        let renewed = pool
            .call(bound, |c| {
                *sent_at = Instant::now();
                async move {
                    // The answer to the stream's first request says whether it renewed.
                    match c.lease_keep_alive(id).await?.message().await {
                        Ok(Some(answer)) => Ok(answer.ttl > 0),
                        Ok(None) => Err(crate::grpc::Error::Invalid(String::from(
                            "the keep-alive stream ended without an answer",
                        ))),
                        Err(e) if e.is_lease_not_found() => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        if renewed {
            self.lease.renewed(sent);
        } else {
            self.lost.fire(GONE);
            self.fire_all();
        }
        Ok(renewed)
    }

    /// Lists the keys on the lease; a held lock created before `sent` whose key is missing has
    /// lost it to someone else.
    async fn check_keys(&self, pool: &Pool, bound: Duration, sent: Instant) {
        let due = lock(&self.locks).values().any(|a| a.since < sent);
        if !due {
            return;
        }
        let Ok((i, c)) = pool.client().await else {
            return;
        };
        let asking = c.lease_keys(self.id);
        let answer = match tokio::time::timeout(bound, asking).await {
            Ok(Ok(answer)) => answer,
            _ => {
                pool.failed(i);
                return;
            }
        };
        if answer.ttl < 0 {
            self.lost.fire(GONE);
            return;
        }
        let present: HashSet<&[u8]> = answer.keys.iter().map(Vec::as_slice).collect();
        let gone: Vec<Attached> = {
            let mut locks = lock(&self.locks);
            let ids: Vec<u64> = locks
                .iter()
                .filter(|(_, a)| a.since < sent && !present.contains(a.key.as_bytes()))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| locks.remove(id)).collect()
        };
        for a in gone {
            a.lost.fire(format!(
                "its key {:?} was deleted from etcd by someone else",
                a.key
            ));
        }
    }

    fn names(&self) -> Vec<String> {
        lock(&self.locks).values().map(|a| a.name.clone()).collect()
    }
}

/// Grants a lease of `ttl` and starts its deadline timer (and keep-alive if `renew`).
pub(crate) async fn grant(
    pool: &Arc<Pool>,
    ttl: Duration,
    renew: bool,
    shared: bool,
    closed: &CancellationToken,
    observer: Option<Observer>,
) -> Result<Arc<Session>, Fault> {
    let bound = pool.bound;
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut sent = Instant::now();
    let sent_at = &mut sent;
    let answer = pool
        .call(bound, |c| {
            *sent_at = Instant::now();
            async move { c.lease_grant(secs).await }
        })
        .await?;
    if !answer.error.is_empty() {
        return Err(Fault::fatal(format!(
            "etcd refused a lease: {}",
            answer.error
        )));
    }
    let stop = closed.child_token();
    let session = Arc::new(Session::new(answer.id, ttl, sent, shared, stop));
    if closed.is_cancelled() {
        // Closed while the grant was in flight: nothing may hang on it.
        session.revoke(pool, bound).await;
        return Err(Fault::fatal("the lock provider was closed"));
    }
    tokio::spawn(run(session.clone(), pool.clone(), renew, observer));
    Ok(session)
}

/// The session's life: the deadline timer, the keep-alive, and the lost signals at the end.
async fn run(s: Arc<Session>, pool: Arc<Pool>, renew: bool, observer: Option<Observer>) {
    let expiry = s.lease.expire_into(&s.lost, DEADLINE);
    let renewing = async {
        if renew {
            tokio::select! {
                _ = keep_alive(&s, &pool, observer) => return,
                _ = s.renew_stop.cancelled() => {}
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = expiry => {}
        _ = renewing => {}
        _ = s.stop.cancelled() => {}
    }
    if s.lost.is_lost() {
        s.fire_all();
    }
}

/// Keeps the lease alive until it is lost (returns then, the signal fired).
async fn keep_alive(s: &Session, pool: &Pool, observer: Option<Observer>) {
    let period = s.ttl / 3;
    let bound = pool.bound.min(period);
    let mut failing = false;
    let failed = |detail: String, failing: &mut bool| {
        tracing::debug!(backend = "etcd", lease = s.id, %detail, "keep-alive failed; retrying until the local deadline");
        if !std::mem::replace(failing, true)
            && let Some(observe) = &observer
        {
            for name in s.names() {
                observe(BackendEvent::RenewalFailed {
                    name,
                    detail: format!(
                        "keep-alive of etcd lease {:x} failed ({detail}); retrying until the local deadline in {} ms",
                        s.id,
                        s.lease.remaining(Instant::now()).as_millis()
                    ),
                });
            }
        }
    };
    loop {
        if s.lost.is_lost() {
            return;
        }
        let sent = Instant::now();
        let (i, c) = match pool.client().await {
            Ok(pair) => pair,
            Err(t) => {
                failed(t.message, &mut failing);
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        };
        let mut stream = match tokio::time::timeout(bound, c.lease_keep_alive(s.id)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.is_lease_not_found() => {
                s.lost.fire(GONE);
                return;
            }
            Ok(Err(e)) => {
                pool.failed(i);
                failed(describe(&e), &mut failing);
                tokio::time::sleep(PAUSE).await;
                continue;
            }
            Err(_) => {
                pool.failed(i);
                failed(
                    format!("no answer within {} ms", bound.as_millis()),
                    &mut failing,
                );
                continue;
            }
        };
        // The stream opened with its first renewal sent at `sent`; each turn reads the answer
        // to the last one, then sends the next a period later.
        let mut sent = sent;
        loop {
            match tokio::time::timeout(bound, stream.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl > 0 => {
                    s.lease.renewed(sent);
                    failing = false;
                    s.check_keys(pool, bound, sent).await;
                    if s.lost.is_lost() {
                        return;
                    }
                }
                Ok(Ok(Some(_))) => {
                    s.lost.fire(GONE);
                    return;
                }
                Ok(Ok(None)) => {
                    pool.failed(i);
                    failed(String::from("the keep-alive stream ended"), &mut failing);
                    break;
                }
                Ok(Err(e)) if e.is_lease_not_found() => {
                    s.lost.fire(GONE);
                    return;
                }
                Ok(Err(e)) => {
                    pool.failed(i);
                    failed(describe(&e), &mut failing);
                    break;
                }
                Err(_) => {
                    pool.failed(i);
                    failed(
                        format!("no answer within {} ms", bound.as_millis()),
                        &mut failing,
                    );
                    break;
                }
            }
            tokio::time::sleep_until(sent + period).await;
            sent = Instant::now();
            if stream
                .send(LeaseKeepAliveRequest { id: s.id })
                .await
                .is_err()
            {
                pool.failed(i);
                failed(String::from("the keep-alive stream closed"), &mut failing);
                break;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

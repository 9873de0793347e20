//! distlock-redis: locks on Redis — one server, RedLock over several independent servers, a
//! Redis Cluster or a Sentinel group — through fred.
//!
//! - Mutex: the key `keyPrefix + name` holds a random token, set with a lease (`PX`) and deleted
//!   or extended only by its owner: the layout of the `redlock` npm package, so the two exclude
//!   each other. A reader-writer lock uses that key for its writer and a sorted set for readers;
//!   a semaphore is a sorted set of holders. Expiry of readers and permits is in server time
//!   (`TIME` inside the scripts), never a client clock.
//! - Every operation is one Lua script ([`scripts`]). Keys of one name share a cluster slot
//!   ([`keys`]).
//! - Waiting: the callers of one process queue in memory; one waiter per process and name talks
//!   to the server, where waiters queue in arrival order (not on RedLock). A release publishes
//!   the next waiter's id on the lock's channel; the waiter also wakes when the holder's lease
//!   runs out (a crashed holder) and re-checks once a second (lost messages). Behind a foreign
//!   holder (redlock, redis-py, a plain `SET NX PX`: a value without distlock's mark), whose
//!   release publishes nothing, the waiter whose turn it is re-checks every 15–35 ms.
//! - Leases renew in the background in batches: one script per server per batch, not one timer
//!   and round trip per lock. A lock whose renewal finds it gone, or whose local deadline (on
//!   the monotonic clock, from when the granting request was sent) passes without a successful
//!   renewal, fires its lost signal.
//! - RedLock: quorum ⌊N/2⌋+1; an acquire returns as soon as a quorum granted (or cannot), so a
//!   hung server costs nothing; grants of a failed attempt are released.
//! - Every attempt carries a fresh grant token. An attempt the caller gave up on (timed out,
//!   failed, lost its quorum) is revoked on every server it may have reached: released if it
//!   was granted, else remembered as revoked so that the request, should it still arrive, does
//!   not grant. Revokes retry until the server answers, so a stalled server leaves no orphan.
//! - Calls keep to their budget: each attempt races the caller's deadline (a try: the server
//!   timeout); transient trouble (a reset, a stalled or restarting server) is retried with
//!   backoff until the budget ends, and only then reported, with its cause.
//! - `close` settles within the server timeout plus [`CLOSE_SLACK`] whatever the servers do:
//!   the held locks are released at once, each bounded as a release is, then each connected
//!   client says QUIT in what is left of that; a client that never connected is not waited for.
//! - A lock on a server whose connection dropped is in doubt (`is_held` is false) until, after
//!   the reconnect, a renewal finds its key again; if the key is gone (a server restarted empty,
//!   a promoted replica that never saw it) the lost signal fires. The fencing counters this
//!   process has seen are raised back to their floor on every reconnect and with each acquire.
//!
//! Where things live: this file is the provider's front (admission, close). The I/O-free floor
//! is [`machine`] (votes, the waiter's steps, renewal schedule, confirmation pacing) with the
//! RESP protocol in `wire.rs` and the script texts in `scripts.rs`. The drivers over it:
//! `acquire.rs` (one acquire's attempts and waits), `held.rs` (the held lock), `release.rs`
//! (releases and revokes), `renew.rs` (batched renewals), `recover.rs` (connection events,
//! confirmation rounds, fencing floors), `inspect.rs`. Each server's connections are
//! `server.rs` (fred) and `direct.rs` (the host's event loop), sharing one `doubt.rs`;
//! `fault.rs` classifies their errors into core's `Fault`.

mod acquire;
mod cleanup;
mod config;
mod direct;
mod doubt;
mod fan;
mod fault;
mod held;
mod inspect;
pub mod keys;
pub mod machine;
mod op;
mod recover;
mod release;
mod renew;
mod scripts;
mod server;
mod wake;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use distlock_core::sync::lock;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, Cause, Error, LockInfo, LockKind, ProviderCore,
    ProviderState, Result, Turns,
};
use tokio::sync::mpsc;

pub use config::{MIN_LEASE_MS, RedisOptions, redact};
use doubt::Event;
use fault::fault;
use held::RedisHeld;
use keys::Keys;
use op::{Op, Side, token};
use recover::follow;
use renew::Renewals;
use scripts::Scripts;
use server::Server;
use wake::Wakes;

/// The backend's name in errors and logs.
pub const BACKEND: &str = "redis";

/// How long a revoke keeps trying to reach its server.
const REVOKE_FOR: Duration = Duration::from_secs(300);
/// Most revokes in flight per provider; past it the lease alone ends an orphan.
const MAX_REVOKES: usize = 10_000;
/// Most fencing floors remembered per provider.
const MAX_FLOORS: usize = 100_000;
/// How far past the server timeout `close` may take: as much as a release's own bound allows
/// past it (see `RedisHeld::release_now`).
pub const CLOSE_SLACK: Duration = Duration::from_millis(50);

/// A lock provider on one Redis deployment, or on several independent servers (RedLock).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    opts: RedisOptions,
    servers: Vec<Arc<Server>>,
    quorum: usize,
    /// Waiters queue on the server (one deployment); RedLock cannot order waiters consistently
    /// across independent servers, so its waiters only wake and retry.
    fair: bool,
    cluster: bool,
    turns: Turns<()>,
    wakes: Arc<Wakes>,
    renewals: Renewals,
    core: ProviderCore<RedisHeld>,
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Connection events of the servers, handled by one task started on first use.
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// The largest fencing token seen per fencing key (and its slot): never handed out again.
    floors: Mutex<HashMap<String, (u64, u16)>>,
    revokes: AtomicUsize,
    /// Who hears about renewals that failed and connections that dropped or came back.
    observer: OnceLock<distlock_core::Observer>,
}

impl Inner {
    /// Tells the observer, if there is one.
    fn emit(&self, event: distlock_core::BackendEvent) {
        if let Some(observe) = self.observer.get() {
            observe(event);
        }
    }
}

impl RedisBackend {
    /// A provider with these options. Connects lazily, on the first acquire.
    pub fn new(opts: RedisOptions) -> Result<Self> {
        opts.check()?;
        let (events, events_rx) = mpsc::unbounded_channel();
        let servers: Vec<Arc<Server>> = opts
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Arc::new(Server::new(
                    i,
                    s.clone(),
                    opts.server_timeout,
                    events.clone(),
                ))
            })
            .collect();
        let cluster = opts.servers.len() == 1
            && matches!(
                opts.servers[0].config.server,
                fred::prelude::ServerConfig::Clustered { .. }
            );
        Ok(Self {
            inner: Arc::new(Inner {
                quorum: servers.len() / 2 + 1,
                fair: servers.len() == 1,
                cluster,
                servers,
                opts,
                turns: Turns::default(),
                wakes: Arc::default(),
                renewals: Renewals::default(),
                core: ProviderCore::new(BACKEND),
                runtime: OnceLock::new(),
                events: Mutex::new(Some(events_rx)),
                floors: Mutex::default(),
                revokes: AtomicUsize::new(0),
                observer: OnceLock::new(),
            }),
        })
    }

    /// Leases renewed so far, in total (batched: many per round trip).
    pub fn renewals_sent(&self) -> u64 {
        self.inner.renewals.sent()
    }

    /// Scripts sent on the host event loop's connections so far (the calls made there while
    /// the connection was up); 0 without an event loop.
    pub fn scripts_on_event_loop(&self) -> u64 {
        self.inner.servers.iter().map(|s| s.sent_on_loop()).sum()
    }

    /// Renewal scripts sent so far (round trips per server).
    pub fn renewal_batches(&self) -> u64 {
        self.inner.renewals.batches()
    }
}

/// The Lua text of the `acquire` or `release` script, for benchmark floors that run distlock's
/// own scripts (`bench/redis.mjs`).
#[doc(hidden)]
pub fn script_text(which: &str) -> Option<&'static str> {
    let s = Scripts::get();
    match which {
        "acquire" => Some(s.acquire.lua),
        "release" => Some(s.release.lua),
        _ => None,
    }
}

impl Backend for RedisBackend {
    fn core(&self) -> &dyn ProviderState {
        &self.inner.core
    }

    fn begin(&self, req: AcquireRequest) -> Result<Acquiring> {
        let inner = self.inner.clone();
        if let Some(lease) = req.lease {
            distlock_core::options::lease_ms(lease.as_millis() as f64)?;
        }
        let prefix = &inner.opts.key_prefix;
        let (op_keys, side, max) = match req.kind {
            LockKind::Mutex | LockKind::Write => (Keys::lock(prefix, &req.name), Side::W, 0),
            LockKind::Read => (Keys::lock(prefix, &req.name), Side::R, 0),
            LockKind::Semaphore { max_count, permits } => {
                if !inner.fair {
                    return Err(Error::invalid(
                        "urls",
                        format!(
                            "lists {} independent servers, but {} needs one Redis deployment (a server, a cluster or a Sentinel group): a count cannot be bounded by RedLock quorums",
                            inner.servers.len(),
                            req.target(BACKEND)
                        ),
                    ));
                }
                (
                    Keys::semaphore(prefix, &req.name),
                    Side::S(permits),
                    max_count,
                )
            }
        };
        let admitted = inner.turns.admit(&req, BACKEND, || ())?;
        let op = Op::new(op_keys, side, Arc::from(token()));
        Ok(Box::pin(async move {
            inner.acquire(req, op, max, admitted).await
        }))
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        Box::pin(self.inner.clone().inspect(name.to_owned(), kind))
    }

    fn observe(&self, observer: distlock_core::Observer) {
        let _ = self.inner.observer.set(observer);
    }

    fn attach(&self, reactor: Arc<dyn distlock_core::reactor::Reactor>) {
        for s in &self.inner.servers {
            s.attach(reactor.clone());
        }
    }

    /// Releases every held lock (best effort) and closes the connections, within the server
    /// timeout plus [`CLOSE_SLACK`] whatever the servers do: one deadline for all of it, with
    /// no fixed wait (nothing held and no server connected: at once).
    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let until = tokio::time::Instant::now() + inner.opts.server_timeout + CLOSE_SLACK;
            let held = inner.core.close("the lock provider was closed");
            let releases = held.into_iter().map(|h| async move {
                let _ = h.release_now().await;
            });
            // All at once: a server that does not answer costs one bound, not one per lock.
            let releasing = futures_util::future::join_all(releases);
            let _ = tokio::time::timeout_at(until, releasing).await;
            futures_util::future::join_all(inner.servers.iter().map(|s| s.quit(until))).await;
            Ok(())
        })
    }
}

impl Inner {
    /// The facts of a failure described by `detail`: the server, when there is only one, and
    /// the prefix of a Redis error reply found in it.
    fn cause_of(&self, detail: &str) -> Cause {
        let single = (self.servers.len() == 1).then(|| self.servers[0].label.as_str());
        fault(detail.to_owned(), false).cause_on(single)
    }

    /// Starts, once and inside the runtime, the task that follows the servers' connections.
    fn start(self: &Arc<Self>) {
        let _ = self.runtime.get_or_init(tokio::runtime::Handle::current);
        let rx = lock(&self.events).take();
        if let Some(rx) = rx {
            tokio::spawn(follow(Arc::downgrade(self), rx));
        }
    }

    /// The renewal period of a lock whose lease is `lease` (see [`machine::lease::period_for`]).
    fn renew_period(&self, lease: Duration) -> Duration {
        machine::lease::period_for(self.opts.renew_period(), lease)
    }
}

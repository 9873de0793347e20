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
//! - A lock on a server whose connection dropped is in doubt (`is_held` is false) until, after
//!   the reconnect, a renewal finds its key again; if the key is gone (a server restarted empty,
//!   a promoted replica that never saw it) the lost signal fires. The fencing counters this
//!   process has seen are raised back to their floor on every reconnect and with each acquire.

mod cleanup;
mod config;
mod direct;
mod doubt;
pub mod keys;
pub mod machine;
mod renew;
mod scripts;
mod server;
mod wake;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::Duration;

use distlock_core::HeldSet;
use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Error, Held, HeldLock,
    Interrupted, Lease, LockInfo, LockKind, LostSignal, Registry, Result, SHARED_CAPACITY, Ticket,
    Timeout, Waited, race,
};
use fred::types::{Key, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use config::{MIN_LEASE_MS, RedisOptions, redact};
use doubt::Event;
use keys::Keys;
use machine::confirm::{Confirmation, Next};
use machine::lease::Slot;
use machine::vote::{ReleaseVote, Reply, Verdict, Vote, late_needs_revoke};
use machine::waiter::{BACKOFF, End, Pause, Waiter};
use machine::{drift, ms};
use renew::Renewals;
use scripts::Scripts;
use server::{Server, transient};
use wake::{Waiting, Wakes};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "redis";

/// How long a revoke keeps trying to reach its server.
const REVOKE_FOR: Duration = Duration::from_secs(300);
/// Most revokes in flight per provider; past it the lease alone ends an orphan.
const MAX_REVOKES: usize = 10_000;
/// Most fencing floors remembered per provider.
const MAX_FLOORS: usize = 100_000;

/// A 128-bit token in hex after [`scripts::OWN`], unique per grant (and per waiter): 64 random
/// bits drawn once per process (two processes share them with odds of 2^-64), then a counter.
/// Cheap: no system call and one allocation per token, on the hot path of every acquire. The
/// mark tells the acquire script that a holder is one of distlock's, whose release wakes the
/// waiters (see [`machine::waiter::FOREIGN_REFRESH`]).
fn token() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: the clock and the process id, still unique on this machine.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            return t ^ (u64::from(std::process::id()) << 32);
        }
        u64::from_le_bytes(bytes)
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(scripts::OWN.len() + 32);
    out.push_str(scripts::OWN);
    for v in [prefix, n] {
        for shift in (0..16).rev() {
            let digit = ((v >> (shift * 4)) & 0xf) as u8;
            out.push(char::from(if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            }));
        }
    }
    out
}

/// A random number below `n` (n > 0), from OS randomness (or the clock).
fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return u64::from(t) % n.max(1);
    }
    u64::from_le_bytes(bytes) % n.max(1)
}

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
    locks: Registry<String, ()>,
    semaphores: Registry<String, ()>,
    wakes: Arc<Wakes>,
    renewals: Renewals,
    held: HeldSet<RedisHeld>,
    closed: CancellationToken,
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

/// One primitive's side: `w` mutex or writer, `r` reader, `s` semaphore permits (how many).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    W,
    R,
    S(u32),
}

impl Side {
    /// The kind argument of the scripts: `w`, `r`, `s` for one permit, `s<k>:` for k permits.
    fn code(self) -> std::borrow::Cow<'static, str> {
        match self {
            Side::W => "w".into(),
            Side::R => "r".into(),
            Side::S(1) => "s".into(),
            Side::S(k) => format!("s{k}:").into(),
        }
    }
}

/// The request-independent part of one lock operation.
#[derive(Clone)]
struct Op {
    keys: Arc<Keys>,
    side: Side,
    /// The waiter's place in the server queue, the same for all its attempts.
    waiter: Arc<str>,
    /// The grant token of one attempt (and, once granted, of the held lock).
    id: Arc<str>,
    /// `keys` as script keys, built once per operation and shared by its scripts.
    key_list: Arc<[Key]>,
}

impl Op {
    /// The same operation with the fresh grant token of a new attempt.
    fn attempt(&self) -> Op {
        Op {
            id: Arc::from(token()),
            ..self.clone()
        }
    }

    /// An operation on `keys` for the waiter `waiter` (its first attempt's token too).
    fn new(keys: Keys, side: Side, waiter: Arc<str>) -> Op {
        let key_list = keys.all().iter().map(|k| Key::from(*k)).collect();
        Op {
            keys: Arc::new(keys),
            side,
            id: waiter.clone(),
            waiter,
            key_list,
        }
    }

    fn keys(&self) -> Arc<[Key]> {
        self.key_list.clone()
    }

    /// The key whose member or value is this grant (the main key, or the set).
    fn grant_key(&self) -> &str {
        if self.side == Side::W {
            &self.keys.lock
        } else {
            &self.keys.set
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
                locks: Registry::default(),
                semaphores: Registry::default(),
                wakes: Arc::default(),
                renewals: Renewals::default(),
                held: HeldSet::default(),
                closed: CancellationToken::new(),
                runtime: OnceLock::new(),
                events: Mutex::new(Some(events_rx)),
                floors: Mutex::default(),
                revokes: AtomicUsize::new(0),
                observer: OnceLock::new(),
            }),
        })
    }

    /// Locks held through this provider now.
    pub fn held_count(&self) -> usize {
        self.inner.held.len()
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
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn acquire(&self, req: AcquireRequest) -> Result<Acquiring> {
        distlock_core::validate_name(&req.name)?;
        let inner = self.inner.clone();
        if inner.closed.is_cancelled() {
            return Err(Error::Closed {
                backend: BACKEND,
                detail: format!("; cannot acquire {}", req.target(BACKEND)),
            });
        }
        if let Some(lease) = req.lease {
            distlock_core::options::lease_ms(lease.as_millis() as f64)?;
        }
        let prefix = &inner.opts.key_prefix;
        let (op_keys, side, entry, weight, max) = match req.kind {
            LockKind::Mutex | LockKind::Write | LockKind::Read => {
                let entry = inner.locks.entry(&req.name, SHARED_CAPACITY, || ());
                let (side, weight) = if req.kind == LockKind::Read {
                    (Side::R, 1)
                } else {
                    (Side::W, SHARED_CAPACITY)
                };
                (Keys::lock(prefix, &req.name), side, entry, weight, 0)
            }
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
                let entry = inner
                    .semaphores
                    .entry(&req.name, u64::from(max_count), || ());
                if entry.queue.capacity() != u64::from(max_count) {
                    return Err(Error::invalid(
                        "maxCount",
                        format!(
                            "of {} is {max_count}, but this process already uses it with maxCount {}",
                            req.target(BACKEND),
                            entry.queue.capacity()
                        ),
                    ));
                }
                (
                    Keys::semaphore(prefix, &req.name),
                    Side::S(permits),
                    entry,
                    u64::from(permits),
                    max_count,
                )
            }
        };
        let ticket = entry.queue.enqueue(weight);
        let op = Op::new(op_keys, side, Arc::from(token()));
        Ok(Box::pin(async move {
            inner.acquire(req, op, max, entry, ticket).await
        }))
    }

    fn inspect(&self, name: &str, kind: LockKind) -> BoxFuture<'static, Result<LockInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_owned());
        Box::pin(async move {
            distlock_core::validate_name(&name)?;
            let prefix = &inner.opts.key_prefix;
            let (keys, side, max) = match kind {
                LockKind::Semaphore { max_count, .. } => {
                    (Keys::semaphore(prefix, &name), Side::S(1), Some(max_count))
                }
                _ => (Keys::lock(prefix, &name), Side::W, None),
            };
            let op = Op::new(keys, side, Arc::from(""));
            // The first server that answers (on RedLock: a snapshot of one server's view).
            let mut errors = Vec::new();
            for s in &inner.servers {
                let args = vec![Value::from(side.code().as_ref())];
                let bound = inner.opts.server_timeout + Duration::from_millis(50);
                let looking = s.eval(&Scripts::get().inspect, op.keys(), args);
                let answer = tokio::time::timeout(bound, looking)
                    .await
                    .unwrap_or_else(|_| {
                        Err(fred::error::Error::new(
                            fred::error::ErrorKind::Timeout,
                            "no answer in time",
                        ))
                    });
                match answer {
                    Ok(Value::Array(v)) if v.len() == 3 => {
                        let n = |i: usize| v[i].as_i64().unwrap_or(0);
                        let holders = u32::try_from(n(0)).unwrap_or(0);
                        return Ok(LockInfo {
                            held: max.map_or(holders > 0, |m| holders >= m),
                            holders: Some(holders),
                            lease_remaining: u64::try_from(n(1))
                                .ok()
                                .filter(|_| holders > 0)
                                .map(Duration::from_millis),
                            fencing_token: u64::try_from(n(2)).ok().filter(|&t| t > 0),
                        });
                    }
                    Ok(v) => errors.push(format!("{}: unexpected reply {}", s.label, show(&v))),
                    Err(e) => errors.push(s.explain(&e)),
                }
            }
            let detail = errors.join("; ");
            Err(Error::backend(
                BACKEND,
                format!("inspecting {name:?}: {detail}"),
                inner.cause_of(&detail),
            ))
        })
    }

    fn observe(&self, observer: distlock_core::Observer) {
        let _ = self.inner.observer.set(observer);
    }

    fn attach(&self, reactor: Arc<dyn distlock_core::reactor::Reactor>) {
        for s in &self.inner.servers {
            s.attach(reactor.clone());
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.closed.cancel();
            let releases = inner.held.drain().into_iter().map(|h| {
                h.lost.fire("the lock provider was closed");
                async move {
                    let _ = h.release_now().await;
                }
            });
            let all = async {
                for r in releases {
                    r.await;
                }
            };
            // Every release is bounded by the server timeout; a dead server must not hang close.
            let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
            for s in &inner.servers {
                s.quit().await;
            }
            Ok(())
        })
    }
}

/// A reply as messages show it: RESP's shapes, not Rust's `Debug` of fred's types.
fn show(v: &Value) -> String {
    match v {
        Value::Null => String::from("nil"),
        Value::Integer(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Bytes(b) => format!("\"{}\"", String::from_utf8_lossy(b)),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(_) => String::from("a map"),
        Value::Queued => String::from("QUEUED"),
    }
}

/// The Redis error reply prefixes a message may carry (`WRONGPASS invalid username…`).
const REDIS_PREFIXES: [&str; 22] = [
    "ERR",
    "WRONGTYPE",
    "WRONGPASS",
    "NOAUTH",
    "NOPERM",
    "READONLY",
    "LOADING",
    "BUSY",
    "BUSYKEY",
    "NOSCRIPT",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
    "NOREPLICAS",
    "OOM",
    "EXECABORT",
    "MISCONF",
    "NOPROTO",
    "CROSSSLOT",
    "UNBLOCKED",
];

/// The first Redis error reply prefix in `detail`, as a whole word.
fn redis_prefix(detail: &str) -> Option<String> {
    detail
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| REDIS_PREFIXES.contains(w))
        .map(str::to_owned)
}

impl Inner {
    fn backend_error(&self, what: &str, req_target: &str, detail: &str) -> Error {
        Error::backend(
            BACKEND,
            format!("{what} {req_target}: {detail}"),
            self.cause_of(detail),
        )
    }

    /// The facts of a failure described by `detail`: the server, when there is only one, and
    /// the prefix of a Redis error reply found in it.
    fn cause_of(&self, detail: &str) -> distlock_core::Cause {
        distlock_core::Cause {
            server: (self.servers.len() == 1).then(|| self.servers[0].label.clone()),
            redis: redis_prefix(detail),
            message: Some(detail.to_owned()),
            ..Default::default()
        }
        .with_os_error_in(detail)
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

    /// The fencing floor of `keys`: the largest token this provider has seen for the name.
    fn floor(&self, keys: &Keys) -> u64 {
        lock(&self.floors).get(&keys.fence).map_or(0, |f| f.0)
    }

    fn saw(&self, keys: &Keys, fence: u64) {
        let mut floors = lock(&self.floors);
        if floors.len() >= MAX_FLOORS && !floors.contains_key(&keys.fence) {
            // Bounded memory: start over (the counters on the servers keep the floors unless
            // one restarts empty; the README names this residual case).
            floors.clear();
        }
        let f = floors.entry(keys.fence.clone()).or_insert((0, keys.slot));
        f.0 = f.0.max(fence);
    }

    /// Why no quorum can be reached now, if so.
    fn unreachable(&self) -> Option<String> {
        let down: Vec<String> = self
            .servers
            .iter()
            .filter_map(|s| s.last_error().map(|e| format!("{} ({e})", s.label)))
            .collect();
        machine::waiter::unreachable(&down, self.servers.len(), self.quorum)
    }

    fn interrupted(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancellationToken>,
    ) -> Option<Interrupted> {
        if self.closed.is_cancelled() {
            Some(Interrupted::Closed)
        } else if cancel.is_some_and(CancellationToken::is_cancelled) {
            Some(Interrupted::Cancelled)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Interrupted::TimedOut)
        } else {
            None
        }
    }

    async fn acquire(
        self: Arc<Self>,
        req: AcquireRequest,
        op: Op,
        max: u32,
        entry: Arc<Entry<()>>,
        mut ticket: Ticket,
    ) -> Result<Option<Held>> {
        self.start();
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        let cancel = req.cancel.as_ref();
        if !ticket.is_granted()
            && let Err(why) = race(ticket.granted(), deadline, cancel, &self.closed)
                .await
                .done()
        {
            return why.into_outcome(&req, BACKEND);
        }
        let lease = req.lease.unwrap_or(self.opts.lease);
        let mut w = Waiter::new(self.fair, req.timeout == Timeout::Zero);
        let target = req.target(BACKEND).to_string();
        let mut waiting: Option<Waiting> = None;
        let mut random = random_below;
        loop {
            if let Some(wt) = waiting.as_mut() {
                wt.mark();
            }
            let first = &self.servers[0];
            if let Some(nap) = w.before(first.in_doubt().then_some(first.label.as_str())) {
                let napping = tokio::time::sleep(nap);
                if let Err(why) = race(napping, deadline, cancel, &self.closed).await.done() {
                    return self.stop(&w, why, &op, &req, &target, start);
                }
                continue;
            }
            let attempt = op.attempt();
            // The lease counts from here: before the request left.
            let sent = Instant::now();
            let bound = w.bound(sent, self.opts.server_timeout, deadline);
            let trying = self.try_once(&attempt, lease, max, w.queue_ttl());
            match race(trying, bound, cancel, &self.closed).await {
                Waited::Done(verdict) => match w.verdict(verdict) {
                    Some(End::Granted { fence, by }) => {
                        let held = self.grant(&req, attempt, fence, by, lease, sent, entry, ticket);
                        return Ok(Some(held));
                    }
                    Some(End::Failed(message)) => {
                        self.leave(&op, &w);
                        return Err(self.backend_error("acquiring", &target, &message));
                    }
                    None => {}
                },
                cut => {
                    // The attempt may still reach a server: take it back everywhere.
                    self.revoke_all(&attempt, lease);
                    w.unanswered(matches!(cut, Waited::TimedOut), || {
                        self.unreachable().unwrap_or_else(|| {
                            format!(
                                "no answer within {} ms",
                                self.opts.server_timeout.as_millis()
                            )
                        })
                    });
                }
            }
            if let Some(why) = self.interrupted(deadline, cancel) {
                return self.stop(&w, why, &op, &req, &target, start);
            }
            let subscribed = self.servers.iter().all(|s| s.subscribed());
            let nap = match w.pause(subscribed, &mut random) {
                Pause::Sleep(nap) => nap,
                Pause::Join => {
                    // Listen for releases; the next attempt looks again at once, so a release
                    // that happened while joining is not missed.
                    self.subscribe();
                    waiting = Some(
                        self.wakes
                            .join(&op.keys.channel, format!("{}{}", op.side.code(), op.waiter)),
                    );
                    continue;
                }
                Pause::Wait(nap) => {
                    let Some(wt) = waiting.as_mut() else {
                        continue;
                    };
                    let woken = async {
                        tokio::select! {
                            _ = wt.woken() => {}
                            _ = tokio::time::sleep(nap) => {}
                        }
                    };
                    if let Err(why) = race(woken, deadline, cancel, &self.closed).await.done() {
                        return self.stop(&w, why, &op, &req, &target, start);
                    }
                    match w.spread(&mut random) {
                        Some(spread) => spread,
                        None => continue,
                    }
                }
            };
            if let Err(why) = race(tokio::time::sleep(nap), deadline, cancel, &self.closed)
                .await
                .done()
            {
                return self.stop(&w, why, &op, &req, &target, start);
            }
        }
    }

    /// Ends an acquire that stopped early: leaves the server queue, and reports either the
    /// interruption's outcome or, when the waiter's machine says the timeout hid trouble, that
    /// trouble as a backend error.
    fn stop(
        self: &Arc<Self>,
        w: &Waiter,
        why: Interrupted,
        op: &Op,
        req: &AcquireRequest,
        target: &str,
        start: Instant,
    ) -> Result<Option<Held>> {
        self.leave(op, w);
        let labels: Vec<&str> = self.servers.iter().map(|s| s.label.as_str()).collect();
        let timed_out = why == Interrupted::TimedOut;
        match w.gave_up(timed_out, start.elapsed(), self.unreachable(), &labels) {
            Some(message) => Err(self.backend_error("acquiring", target, &message)),
            None => why.into_outcome(req, BACKEND),
        }
    }

    /// Starts the wake-up subscriptions (once). A server that cannot be reached is not an
    /// error: waiters re-check on their own until the subscription is up.
    fn subscribe(self: &Arc<Self>) {
        for s in &self.servers {
            if let Err(e) = s.subscribe(&self.wakes) {
                tracing::warn!(server = %s.label, error = %e, "distlock: cannot subscribe to wake-ups; waiters will poll");
            }
        }
    }

    /// Takes a waiter out of the server queue in the background (it would expire anyway).
    fn leave(self: &Arc<Self>, op: &Op, w: &Waiter) {
        if !w.queues() {
            return;
        }
        let (inner, op) = (self.clone(), op.clone());
        // Sent from here (on the event loop, on the connection the waiter's attempts took, so
        // it cannot overtake one of them), finished in the background.
        send_now(async move {
            let args = vec![
                Value::from(op.side.code().as_ref()),
                Value::from(op.waiter.as_ref()),
                Value::from(op.keys.channel.as_str()),
            ];
            let _ = inner.servers[0]
                .eval(&Scripts::get().leave, op.keys(), args)
                .await;
        });
    }

    fn acquire_args(&self, op: &Op, lease: Duration, max: u32, wait: Duration) -> Vec<Value> {
        vec![
            Value::from(op.side.code().as_ref()),
            Value::from(op.id.as_ref()),
            Value::from(ms(lease)),
            Value::from(i64::from(max)),
            Value::from(ms(wait)),
            Value::from(if self.fair { "1" } else { "0" }),
            Value::from(op.keys.channel.as_str()),
            Value::from(op.waiter.as_ref()),
            Value::from(i64::try_from(self.floor(&op.keys)).unwrap_or(i64::MAX)),
        ]
    }

    /// One attempt on the server, or on every RedLock server, decided by the machine's
    /// [`Vote`]. Whatever does not end in a grant is revoked where it may have landed,
    /// including answers that arrive after the verdict.
    async fn try_once(
        self: &Arc<Self>,
        op: &Op,
        lease: Duration,
        max: u32,
        wait: Duration,
    ) -> Verdict {
        let script = &Scripts::get().acquire;
        let args = self.acquire_args(op, lease, max, wait);
        let sent = Instant::now();
        let mut vote = Vote::new(self.servers.len(), self.quorum);
        if self.servers.len() == 1 {
            // Polled in place: no fan-out to set up for one server.
            let answer = self.servers[0].eval(script, op.keys(), args).await;
            if vote.count(0, self.reply(0, answer)) {
                self.revoke(0, op.clone(), lease);
            }
            return vote.verdict(sent.elapsed(), lease);
        }
        let mut rx = Fan::new(self.servers.iter().map(|s| {
            let (s, keys, args) = (s.clone(), op.keys(), args.clone());
            async move { s.eval(script, keys, args).await }
        }));
        while let Some((i, answer)) = rx.next().await {
            if vote.count(i, self.reply(i, answer)) {
                self.revoke(i, op.clone(), lease);
            }
            if vote.is_decided() {
                break;
            }
        }
        let verdict = vote.verdict(sent.elapsed(), lease);
        if let Verdict::Busy { revoke, .. } | Verdict::Failed { revoke, .. } = &verdict {
            for &i in revoke {
                self.revoke(i, op.clone(), lease);
            }
            let (inner, op) = (self.clone(), op.clone());
            rx.rest(move |i, answer| {
                if late_needs_revoke(&inner.reply(i, answer)) {
                    inner.revoke(i, op.clone(), lease);
                }
            });
        }
        // After a grant, late grants from the other servers stay: renewals and the release
        // cover every server.
        verdict
    }

    /// Server `i`'s answer to an acquire attempt, as the machine reads it.
    fn reply(&self, i: usize, answer: std::result::Result<Value, fred::error::Error>) -> Reply {
        let s = &self.servers[i];
        match answer {
            Ok(v) => Reply::parse(&v).unwrap_or_else(|| Reply::Failed {
                message: format!("{}: unexpected reply {}", s.label, show(&v)),
                transient: false,
            }),
            Err(e) => Reply::Failed {
                message: s.explain(&e),
                transient: transient(&e) && !s.refused(),
            },
        }
    }

    fn release_args(&self, op: &Op, floor: u64, revoke: Option<Duration>) -> Vec<Value> {
        vec![
            Value::from(op.side.code().as_ref()),
            Value::from(op.id.as_ref()),
            Value::from(if self.fair { "1" } else { "0" }),
            Value::from(op.keys.channel.as_str()),
            Value::from(i64::try_from(floor).unwrap_or(i64::MAX)),
            Value::from(revoke.map_or(0, ms)),
        ]
    }

    /// Takes the attempt `op` back on every server (see [`Inner::revoke`]).
    fn revoke_all(self: &Arc<Self>, op: &Op, lease: Duration) {
        for i in 0..self.servers.len() {
            self.revoke(i, op.clone(), lease);
        }
    }

    /// Takes the attempt `op` back on server `server`, in the background: releases its grant
    /// if it was granted, else marks its token revoked so the request, should it still reach
    /// the server (a stalled server, a request buffered on a dead connection), cannot grant.
    /// Retries until the server answers, for at most [`REVOKE_FOR`] or until the provider closes.
    fn revoke(self: &Arc<Self>, server: usize, op: Op, lease: Duration) {
        if self.revokes.fetch_add(1, Ordering::AcqRel) >= MAX_REVOKES {
            self.revokes.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(server = %self.servers[server].label, "distlock: too many revokes in flight; the lease alone ends this attempt's grant");
            return;
        }
        let inner = self.clone();
        // Long enough for any request still on its way: it was sent before the revoke.
        let remember = (lease * 2).max(Duration::from_secs(60));
        tokio::spawn(async move {
            let args = inner.release_args(&op, 0, Some(remember));
            let until = Instant::now() + REVOKE_FOR;
            let mut backoff = BACKOFF.0;
            while Instant::now() < until && !inner.closed.is_cancelled() {
                let s = &inner.servers[server];
                // Nothing can reach a server that refuses connections: wait for it to come
                // back rather than queue commands that can only time out.
                if s.last_error().is_some() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
                if s.eval_text(&Scripts::get().release, op.keys(), args.clone())
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
            inner.revokes.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Releases on every server; done once a quorum answered (the rest finish in the
    /// background). A server that could not be reached is revoked in the background, so a
    /// late grant cannot outlive the release. Fails only if no server answered.
    ///
    /// A server outside `by` (the quorum that granted) may not have answered the acquire yet,
    /// and its answer can come on another connection than this release (the event loop's, or
    /// the background client's): there the release also leaves the attempt revoked, so an
    /// acquire that lands after it grants nothing.
    async fn release(
        self: &Arc<Self>,
        op: &Op,
        floor: u64,
        lease: Duration,
        by: &[usize],
    ) -> std::result::Result<(), String> {
        let script = &Scripts::get().release;
        let plain = self.release_args(op, floor, None);
        if self.servers.len() == 1 {
            // In place, with no fan-out to set up. A caller that stops waiting (its bound)
            // leaves a revoke behind, as the fan-out's background finish would.
            let s = &self.servers[0];
            let mut unfinished = RevokeOnDrop(Some((self.clone(), op.clone(), lease)));
            let mut answer = s.eval(script, op.keys(), plain.clone()).await;
            if answer.as_ref().is_err_and(transient) {
                // The connection broke under it (a reset, a server that dropped its clients):
                // once more, on the connection that replaces it. A release is idempotent (it
                // removes this grant's token only), and the caller's bound covers both.
                answer = s.eval(script, op.keys(), plain).await;
            }
            unfinished.0 = None;
            return answer.map(drop).map_err(|e| {
                self.revoke(0, op.clone(), lease);
                s.explain(&e)
            });
        }
        let revoking = self.release_args(op, floor, Some(lease));
        let mut rx = Fan::new(self.servers.iter().enumerate().map(|(i, s)| {
            let args = if by.contains(&i) {
                plain.clone()
            } else {
                revoking.clone()
            };
            let (inner, s, op) = (self.clone(), s.clone(), op.clone());
            async move {
                s.eval(script, op.keys(), args)
                    .await
                    .map(drop)
                    .map_err(|e| {
                        inner.revoke(i, op, lease);
                        s.explain(&e)
                    })
            }
        }));
        let mut vote = ReleaseVote::new(self.quorum);
        while let Some((_, answer)) = rx.next().await {
            if vote.count(answer).is_some() {
                // The other servers' releases go on in the background.
                rx.rest(|_, _| {});
                return Ok(());
            }
        }
        vote.finish()
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        op: Op,
        fence: u64,
        by: Vec<usize>,
        lease: Duration,
        sent: Instant,
        entry: Arc<Entry<()>>,
        ticket: Ticket,
    ) -> Held {
        let uid = self.held.next_id();
        self.saw(&op.keys, fence);
        let lease_state = Arc::new(Lease::new(lease - drift(lease), sent));
        let lost = LostSignal::new();
        // Renewals and the release carry the token as the counter's floor to every server: on
        // RedLock the servers' counters differ, and a server restarted empty forgets its own.
        let floor = fence;
        let turn: Turn = Arc::new(Mutex::new(Some((ticket, entry))));
        let held = Arc::new(RedisHeld {
            inner: self.clone(),
            uid,
            target: req.target(BACKEND),
            description: req.target(BACKEND).to_string(),
            op: op.clone(),
            fence,
            floor,
            by,
            lease_len: lease,
            lease: lease_state.clone(),
            lost: lost.clone(),
            released: AtomicBool::new(false),
            turn: turn.clone(),
        });
        self.held.insert(uid, &held);
        self.renewals.track(
            self,
            uid,
            renew::Tracked {
                op,
                lease_ms: ms(lease),
                lease: lease_state,
                lost,
                floor,
                turn,
                slot: if req.auto_renew {
                    Slot::new(sent, self.renew_period(lease))
                } else {
                    Slot {
                        due: renew::never_due(sent),
                        in_flight: false,
                    }
                },
                renew: req.auto_renew,
                name: req.name.clone(),
            },
        );
        held
    }

    /// Makes sure server `i`'s locks, in doubt after a loss or reconnect, are being confirmed:
    /// starts the confirmation, or wakes the running one for a round at once.
    fn confirm_soon(self: &Arc<Self>, i: usize) {
        let server = &self.servers[i];
        if server.in_doubt() && server.begin_confirming() {
            tokio::spawn(confirming(Arc::downgrade(self), i));
        }
    }

    /// One confirmation round on server `i`: renew every held lock at once (a key that is gone
    /// fires its lock's lost signal), raise the fencing counters this provider saw back to
    /// their floors. `true` when server `i` answered all of it.
    async fn confirm_round(self: &Arc<Self>, i: usize) -> bool {
        let server = &self.servers[i];
        let renewed = self.renewals.renew_all(self, i).await;
        let floors: Vec<(String, u64, u16)> = lock(&self.floors)
            .iter()
            .map(|(k, f)| (k.clone(), f.0, f.1))
            .collect();
        let mut groups: HashMap<u16, Vec<(String, u64)>> = HashMap::new();
        for (k, f, slot) in floors {
            groups
                .entry(if self.cluster { slot } else { 0 })
                .or_default()
                .push((k, f));
        }
        let mut restored = true;
        for (_, group) in groups {
            for chunk in group.chunks(500) {
                let keys: Vec<Key> = chunk.iter().map(|(k, _)| Key::from(k.as_str())).collect();
                let args: Vec<Value> = chunk
                    .iter()
                    .map(|(_, f)| Value::from(i64::try_from(*f).unwrap_or(i64::MAX)))
                    .collect();
                restored &= server
                    .eval(&Scripts::get().floor, Arc::from(keys), args)
                    .await
                    .is_ok();
            }
        }
        renewed && restored
    }
}

/// Confirms server `i`'s locks, round after round ([`machine::confirm`]), until a round is
/// answered in full with no loss in between, or the provider closes; while a Sentinel failover
/// holds the locks, it waits for the failover's end. Between rounds it holds no reference to the
/// provider.
async fn confirming(inner: Weak<Inner>, i: usize) {
    let mut pacing = None;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let server = me.servers[i].clone();
        let c = pacing.get_or_insert_with(|| Confirmation::new(me.opts.server_timeout));
        if me.closed.is_cancelled() {
            return;
        }
        if !server.in_doubt() {
            // Ended, unless the locks fell in doubt again just now (then the next round runs).
            if server.end_confirming() {
                continue;
            }
            return;
        }
        if let Some(left) = server.doubt().hold_left() {
            // The sentinels' announcement of the failover's end wakes it.
            let closed = me.closed.clone();
            drop(me);
            nap(&server, &closed, left).await;
            continue;
        }
        let losses = server.doubt().losses();
        let answered = me.confirm_round(i).await;
        match c.ended(answered, server.doubt().losses() == losses) {
            Next::Confirmed => server.doubt().confirmed(losses),
            Next::Retry(pause) => {
                let closed = me.closed.clone();
                drop(me);
                nap(&server, &closed, pause).await;
            }
        }
    }
}

/// Waits `d` between confirmation rounds, less when the connection comes back (the server's
/// confirmation is kicked) or the provider closes.
async fn nap(server: &Server, closed: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = server.kicked() => {}
        _ = closed.cancelled() => {}
    }
}

/// Follows the servers' connection events for as long as the provider lives.
async fn follow(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut connected_before: Vec<bool> = Vec::new();
    while let Some(event) = rx.recv().await {
        let Some(me) = inner.upgrade() else { return };
        if me.closed.is_cancelled() {
            return;
        }
        connected_before.resize(me.servers.len(), false);
        match event {
            Event::Lost(i) => {
                tracing::debug!(server = %me.servers[i].label, "distlock: connection lost; its locks are in doubt until confirmed");
                me.emit(distlock_core::BackendEvent::Disconnected {
                    server: me.servers[i].label.clone(),
                });
                // Confirmed once the connection answers again, whether or not a reconnect is
                // announced (a loss can be counted after the reconnect that followed it).
                me.confirm_soon(i);
            }
            Event::Connected(i) => {
                // Any reconnect may have reached another server (a restart, a failover).
                if std::mem::replace(&mut connected_before[i], true) {
                    me.servers[i].doubt().suspect();
                    me.emit(distlock_core::BackendEvent::Reconnected {
                        server: me.servers[i].label.clone(),
                    });
                }
                me.confirm_soon(i);
            }
        }
    }
}

/// Revokes an attempt on the one server when dropped armed: a release whose caller stopped
/// waiting before the answer came.
struct RevokeOnDrop(Option<(Arc<Inner>, Op, Duration)>);

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        if let Some((inner, op, lease)) = self.0.take()
            && let Some(rt) = inner.runtime.get().cloned()
        {
            let _in_runtime = rt.enter();
            inner.revoke(0, op, lease);
        }
    }
}

/// A held lock's in-process turn: given back at release, or the moment the lock is lost.
type Turn = Arc<Mutex<Option<(Ticket, Arc<Entry<()>>)>>>;

/// Polls `fut` once on the calling thread (so a request it makes is written now, in order with
/// the caller's earlier ones), then lets it finish on the runtime.
fn send_now(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut fut = Box::pin(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending()
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        rt.spawn(fut);
    }
}

/// One request per server, polled on the caller's task (on the JS thread, that is where their
/// sockets are), answers yielded as they come; what is left can finish in the background.
struct Fan<T: Send + 'static> {
    futs: Vec<Option<BoxFuture<'static, T>>>,
    /// Already finishing in the background: dropped, it does not hand itself on again (a
    /// runtime that shuts down drops such tasks before they run).
    background: bool,
}

impl<T: Send + 'static> Fan<T> {
    fn new<F>(futs: impl Iterator<Item = F>) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        Self {
            futs: futs
                .map(|f| Some(Box::pin(f) as BoxFuture<'static, T>))
                .collect(),
            background: false,
        }
    }

    /// The next answer and the index of its server; `None` when all have answered.
    async fn next(&mut self) -> Option<(usize, T)> {
        std::future::poll_fn(|cx| {
            let mut left = false;
            for (i, slot) in self.futs.iter_mut().enumerate() {
                let Some(f) = slot else { continue };
                left = true;
                if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                    *slot = None;
                    return std::task::Poll::Ready(Some((i, v)));
                }
            }
            if left {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(None)
            }
        })
        .await
    }

    /// Lets the unanswered requests finish on the runtime, handing each answer to `each`.
    fn rest(mut self, mut each: impl FnMut(usize, T) + Send + 'static) {
        let mut left = Fan {
            futs: std::mem::take(&mut self.futs),
            background: true,
        };
        if left.futs.iter().all(Option::is_none) {
            return;
        }
        tokio::spawn(async move {
            while let Some((i, v)) = left.next().await {
                each(i, v);
            }
        });
    }
}

impl<T: Send + 'static> Drop for Fan<T> {
    /// Requests a dropped caller leaves behind still finish (a release's revoke on error runs),
    /// as they did when each ran in its own task.
    fn drop(&mut self) {
        if self.background || self.futs.iter().all(Option::is_none) {
            return;
        }
        let mut left = Fan {
            futs: std::mem::take(&mut self.futs),
            background: true,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { while left.next().await.is_some() {} });
        }
    }
}

/// A lock held on Redis.
struct RedisHeld {
    inner: Arc<Inner>,
    uid: u64,
    /// The lock, for errors, and as messages name it (built once per grant).
    target: distlock_core::Target,
    description: String,
    op: Op,
    fence: u64,
    floor: u64,
    /// The servers whose grants made the quorum.
    by: Vec<usize>,
    lease_len: Duration,
    lease: Arc<Lease>,
    lost: LostSignal,
    released: AtomicBool,
    /// This handle's in-process turn; given back after the server release, or when lost.
    turn: Turn,
}

impl RedisHeld {
    async fn release_now(&self) -> Result<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.renewals.untrack(self.uid);
        self.inner.held.remove(self.uid);
        let expired = self.lost.is_lost() || Instant::now() >= self.lease.deadline();
        // Bounded: a server that does not answer in time is revoked in the background.
        let bound = self.inner.opts.server_timeout + Duration::from_millis(50);
        let releasing = self
            .inner
            .release(&self.op, self.floor, self.lease_len, &self.by);
        let mut releasing = std::pin::pin!(tokio::time::timeout(bound, releasing));
        // Once the release is on its way, the in-process turn goes to the next caller, whose
        // attempt then follows the release on the same connection instead of a round trip
        // later. It cannot win before the release lands: no grant is re-entrant (the key or
        // entry holds this grant's token until the script removes it), so an attempt that
        // arrives first finds the lock busy and waits for the release's wake-up.
        let sent = std::future::poll_fn(|cx| Poll::Ready(releasing.as_mut().poll(cx))).await;
        drop(lock(&self.turn).take());
        let answered = match sent {
            Poll::Ready(answered) => answered,
            Poll::Pending => releasing.await,
        };
        let result = answered.unwrap_or_else(|_| {
            Err(format!(
                "no quorum of servers answered within {} ms",
                bound.as_millis()
            ))
        });
        match result {
            Ok(()) => Ok(()),
            // Expired already: there is nothing left to release, and nothing to report.
            Err(_) if expired => Ok(()),
            Err(e) => Err(Error::backend(
                BACKEND,
                format!(
                    "releasing {}: {e}; the lease ends on its own within {} ms",
                    self.target,
                    self.lease.remaining(Instant::now()).as_millis()
                ),
                self.inner.cause_of(&e),
            )),
        }
    }

    /// Fires the lost signal and gives the in-process turn back.
    fn lose(&self, reason: &str) {
        self.lost.fire(reason);
        drop(lock(&self.turn).take());
    }

    /// Sets the lease to `lease` from now on every server, and uses it for later renewals.
    async fn extend_now(&self, lease: Duration) -> Result<()> {
        distlock_core::options::lease_ms(lease.as_millis() as f64)?;
        let lost = |reason: String| Error::Lost {
            target: self.target.clone(),
            reason,
        };
        if self.is_released() {
            return Err(lost(String::from("it was released")));
        }
        if !self.is_held()
            && let Some(reason) = self.lost.reason()
        {
            return Err(lost(reason.to_owned()));
        }
        let sent = Instant::now();
        let renewing = self.inner.renew_one(&self.op, ms(lease), self.floor);
        let bound = self.inner.opts.server_timeout + Duration::from_millis(20);
        match tokio::time::timeout(bound, renewing).await.ok().flatten() {
            Some(true) => {
                self.lease.set_length(lease - drift(lease));
                self.lease.renewed(sent);
                let due = sent + self.inner.renew_period(lease);
                self.inner.renewals.set_lease(self.uid, ms(lease), due);
                Ok(())
            }
            Some(false) => {
                let reason = "an extend found its key gone or owned by someone else";
                self.lose(reason);
                Err(lost(reason.to_owned()))
            }
            None => Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "extending {}: no quorum of servers answered; the lease ends within {} ms unless a renewal succeeds",
                    self.target,
                    self.lease.remaining(Instant::now()).as_millis()
                ),
                cause: Default::default(),
            }),
        }
    }
}

impl HeldLock for RedisHeld {
    fn target(&self) -> &str {
        &self.description
    }

    fn fencing_token(&self) -> u64 {
        self.fence
    }

    fn lost(&self) -> &LostSignal {
        &self.lost
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Held: not released, not lost, the local lease deadline not passed (checked against the
    /// clock now, whether or not any timer ran), and no connection in doubt among the servers
    /// whose grants made the quorum.
    fn is_held(&self) -> bool {
        if self.is_released() || self.lost.is_lost() {
            return false;
        }
        if Instant::now() >= self.lease.deadline() {
            self.lose("its lease ran out at the local deadline without a successful renewal");
            return false;
        }
        let sure = self
            .by
            .iter()
            .filter(|&&i| !self.inner.servers[i].in_doubt())
            .count();
        sure >= self.inner.quorum
    }

    fn lease_remaining(&self) -> Option<Duration> {
        if self.lost.is_lost() {
            return Some(Duration::ZERO);
        }
        Some(self.lease.remaining(Instant::now()))
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.release_now().await })
    }

    fn extend(self: Arc<Self>, lease: Duration) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.extend_now(lease).await })
    }
}

impl Drop for RedisHeld {
    fn drop(&mut self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        // Dropped without release (a garbage-collected handle): release in the background.
        self.inner.renewals.untrack(self.uid);
        self.inner.held.remove(self.uid);
        let (inner, op, floor, lease, by) = (
            self.inner.clone(),
            self.op.clone(),
            self.floor,
            self.lease_len,
            self.by.clone(),
        );
        let turn = lock(&self.turn).take();
        if let Some(rt) = self.inner.runtime.get() {
            rt.spawn(async move {
                let _ = inner.release(&op, floor, lease, &by).await;
                drop(turn);
            });
        }
    }
}

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
//!   runs out (a crashed holder) and re-checks once a second (foreign releases, lost messages).
//! - Leases renew in the background in batches: one script per server per batch, not one timer
//!   and round trip per lock. A lock whose renewal finds it gone, or whose local deadline (on
//!   the monotonic clock, from when the granting request was sent) passes without a successful
//!   renewal, fires its lost signal.
//! - RedLock: quorum ⌊N/2⌋+1; an acquire returns as soon as a quorum granted (or cannot), so a
//!   hung server costs nothing; grants of a failed attempt are released.

mod config;
pub mod keys;
mod renew;
mod scripts;
mod server;
mod wake;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use distlock_core::HeldSet;
use distlock_core::queue::Entry;
use distlock_core::{
    AcquireRequest, Acquiring, Backend, BoxFuture, CancellationToken, Error, Held, HeldLock, Lease,
    LockInfo, LockKind, LostSignal, Registry, Result, SHARED_CAPACITY, Ticket, Timeout, race,
};
use fred::types::{Key, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use config::{MIN_LEASE_MS, RedisOptions, redact};
use keys::Keys;
use renew::Renewals;
use scripts::{Script, Scripts};
use server::{Server, describe};
use wake::{Waiting, Wakes};

/// The backend's name in errors and logs.
pub const BACKEND: &str = "redis";

/// How long a waiter stays in a server queue without re-checking (a dead waiter is skipped
/// after this).
const QUEUE_TTL: Duration = Duration::from_secs(3);
/// How often a waiter re-checks without a wake-up.
const REFRESH: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Short critical sections of plain field updates: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A random 128-bit token in hex, unique per grant (and per waiter).
fn token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to time and a counter, still unique in this process.
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!(
            "{t:x}{:016x}{:x}",
            N.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The margin RedLock takes off a lease for clock-rate drift between client and servers.
fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
}

/// What one attempt found.
enum Try {
    Granted { fence: u64 },
    Busy { hint: Option<Duration> },
}

/// One primitive's side: `w` mutex or writer, `r` reader, `s` semaphore permit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    W,
    R,
    S,
}

impl Side {
    fn code(self) -> &'static str {
        match self {
            Side::W => "w",
            Side::R => "r",
            Side::S => "s",
        }
    }
}

/// The request-independent part of one lock operation.
#[derive(Clone)]
struct Op {
    keys: Arc<Keys>,
    side: Side,
    id: Arc<str>,
}

impl Op {
    fn keys(&self) -> Vec<Key> {
        self.keys.all().iter().map(|k| Key::from(*k)).collect()
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
        let servers: Vec<Arc<Server>> = opts
            .servers
            .iter()
            .map(|s| {
                Arc::new(Server::new(
                    s.clone(),
                    opts.connect_timeout,
                    opts.server_timeout,
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

    /// Renewal scripts sent so far (round trips per server).
    pub fn renewal_batches(&self) -> u64 {
        self.inner.renewals.batches()
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
            LockKind::Semaphore { max_count } => {
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
                    Side::S,
                    entry,
                    1,
                    max_count,
                )
            }
        };
        let ticket = entry.queue.enqueue(weight);
        let op = Op {
            keys: Arc::new(op_keys),
            side,
            id: Arc::from(token()),
        };
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
                LockKind::Semaphore { max_count } => {
                    (Keys::semaphore(prefix, &name), Side::S, Some(max_count))
                }
                _ => (Keys::lock(prefix, &name), Side::W, None),
            };
            let op = Op {
                keys: Arc::new(keys),
                side,
                id: Arc::from(""),
            };
            // The first server that answers (on RedLock: a snapshot of one server's view).
            let mut errors = Vec::new();
            for s in &inner.servers {
                let args = vec![Value::from(side.code())];
                match s.eval(&Scripts::get().inspect, op.keys(), args).await {
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
                    Ok(v) => errors.push(format!("{}: unexpected reply {v:?}", s.label)),
                    Err(e) => errors.push(describe(&s.label, s.command_timeout(), &e)),
                }
            }
            Err(Error::Backend {
                backend: BACKEND,
                message: format!("inspecting {name:?}: {}", errors.join("; ")),
            })
        })
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

impl Inner {
    fn backend_error(&self, what: &str, req_target: &str, detail: &str) -> Error {
        Error::Backend {
            backend: BACKEND,
            message: format!("{what} {req_target}: {detail}"),
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
        let wait = if req.timeout == Timeout::Zero {
            Duration::ZERO
        } else {
            QUEUE_TTL
        };
        let target = req.target(BACKEND).to_string();
        let mut waiting: Option<Waiting> = None;
        loop {
            if let Some(w) = waiting.as_mut() {
                w.mark();
            }
            let sent = Instant::now();
            let hint = match self.try_once(&op, lease, max, wait, &target).await {
                Ok(Try::Granted { fence }) => {
                    let held = self.grant(&req, op, fence, lease, sent, entry, ticket);
                    return Ok(Some(held));
                }
                Ok(Try::Busy { hint }) => hint,
                Err(e) => {
                    if waiting.is_some() {
                        self.leave(&op);
                    }
                    return Err(e);
                }
            };
            let now = Instant::now();
            let interrupted = if self.closed.is_cancelled() {
                Some(distlock_core::Interrupted::Closed)
            } else if cancel.is_some_and(CancellationToken::is_cancelled) {
                Some(distlock_core::Interrupted::Cancelled)
            } else if deadline.is_some_and(|d| now >= d) {
                Some(distlock_core::Interrupted::TimedOut)
            } else {
                None
            };
            if let Some(why) = interrupted {
                if wait > Duration::ZERO {
                    self.leave(&op);
                }
                return why.into_outcome(&req, BACKEND);
            }
            let Some(w) = waiting.as_mut() else {
                // First time busy: listen for releases, then look again at once, so a release
                // that happened while subscribing is not missed.
                self.subscribe().await;
                waiting = Some(
                    self.wakes
                        .join(&op.keys.channel, format!("{}{}", op.side.code(), op.id)),
                );
                continue;
            };
            let nap = hint.map_or(REFRESH, |h| h.min(REFRESH));
            let woken = async {
                tokio::select! {
                    _ = w.woken() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            };
            if let Err(why) = race(woken, deadline, cancel, &self.closed).await.done() {
                self.leave(&op);
                return why.into_outcome(&req, BACKEND);
            }
            if !self.fair {
                // Waiters woken together would split RedLock's votes; spread their retries.
                let jitter = u64::from(token().as_bytes()[0] % 16);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
        }
    }

    /// Subscribes every server to the wake-up channels (once). A server that cannot be reached
    /// here is not an error: waiters fall back to re-checking every second.
    async fn subscribe(self: &Arc<Self>) {
        for s in &self.servers {
            if let Err(e) = s.subscribe(&self.wakes).await {
                tracing::warn!(server = %s.label, error = %e, "distlock: cannot subscribe to wake-ups; waiters will poll");
            }
        }
    }

    /// Takes a waiter out of the server queue in the background (it would expire anyway).
    fn leave(self: &Arc<Self>, op: &Op) {
        if !self.fair {
            return;
        }
        let (inner, op) = (self.clone(), op.clone());
        tokio::spawn(async move {
            let args = vec![
                Value::from(op.side.code()),
                Value::from(op.id.as_ref()),
                Value::from(op.keys.channel.as_str()),
            ];
            let _ = inner.servers[0]
                .eval(&Scripts::get().leave, op.keys(), args)
                .await;
        });
    }

    fn acquire_args(&self, op: &Op, lease: Duration, max: u32, wait: Duration) -> Vec<Value> {
        vec![
            Value::from(op.side.code()),
            Value::from(op.id.as_ref()),
            Value::from(ms(lease)),
            Value::from(i64::from(max)),
            Value::from(ms(wait)),
            Value::from(if self.fair { "1" } else { "0" }),
            Value::from(op.keys.channel.as_str()),
        ]
    }

    /// One attempt on the server, or on every RedLock server with a quorum decision.
    async fn try_once(
        self: &Arc<Self>,
        op: &Op,
        lease: Duration,
        max: u32,
        wait: Duration,
        target: &str,
    ) -> Result<Try> {
        let script = &Scripts::get().acquire;
        let args = self.acquire_args(op, lease, max, wait);
        if self.servers.len() == 1 {
            let s = &self.servers[0];
            return match s.eval(script, op.keys(), args).await {
                Ok(v) => parse_attempt(&v).ok_or_else(|| {
                    self.backend_error(
                        "acquiring",
                        target,
                        &format!("{}: unexpected reply {v:?}", s.label),
                    )
                }),
                Err(e) => {
                    // The script may have run before the connection failed: undo it.
                    self.spawn_release(0, op.clone(), 0);
                    Err(self.backend_error(
                        "acquiring",
                        target,
                        &describe(&s.label, s.command_timeout(), &e),
                    ))
                }
            };
        }
        self.try_quorum(op, script, args, lease, target).await
    }

    async fn try_quorum(
        self: &Arc<Self>,
        op: &Op,
        script: &'static Script,
        args: Vec<Value>,
        lease: Duration,
        target: &str,
    ) -> Result<Try> {
        let sent = Instant::now();
        let n = self.servers.len();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (i, s) in self.servers.iter().enumerate() {
            let (s, tx, keys, args) = (s.clone(), tx.clone(), op.keys(), args.clone());
            tokio::spawn(async move {
                let r = s.eval(script, keys, args).await;
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        let mut granted: Vec<(usize, u64)> = Vec::new();
        let mut busy = 0;
        let mut hint: Option<Duration> = None;
        let mut errors: Vec<String> = Vec::new();
        while let Some((i, r)) = rx.recv().await {
            let s = &self.servers[i];
            match r.as_ref().ok().and_then(parse_attempt) {
                Some(Try::Granted { fence }) => granted.push((i, fence)),
                Some(Try::Busy { hint: h }) => {
                    busy += 1;
                    hint = match (hint, h) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                None => errors.push(match r {
                    Err(e) => describe(&s.label, s.command_timeout(), &e),
                    Ok(v) => format!("{}: unexpected reply {v:?}", s.label),
                }),
            }
            if granted.len() >= self.quorum || busy + errors.len() > n - self.quorum {
                break;
            }
        }
        let valid = sent.elapsed() + drift(lease) < lease;
        if granted.len() >= self.quorum && valid {
            // Late grants from the remaining servers stay: renewals and the release cover
            // every server.
            let fence = granted.iter().map(|g| g.1).max().unwrap_or(0);
            return Ok(Try::Granted { fence });
        }
        // No quorum: release what was granted, now and as late answers arrive.
        for (i, _) in &granted {
            self.spawn_release(*i, op.clone(), 0);
        }
        let (inner, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            while let Some((i, _)) = rx.recv().await {
                inner.spawn_release(i, op2.clone(), 0);
            }
        });
        if errors.len() > n - self.quorum {
            return Err(self.backend_error(
                "acquiring",
                target,
                &format!(
                    "no quorum of {} of {n} servers could be reached: {}",
                    self.quorum,
                    errors.join("; ")
                ),
            ));
        }
        Ok(Try::Busy { hint })
    }

    fn release_args(&self, op: &Op, floor: u64) -> Vec<Value> {
        vec![
            Value::from(op.side.code()),
            Value::from(op.id.as_ref()),
            Value::from(if self.fair { "1" } else { "0" }),
            Value::from(op.keys.channel.as_str()),
            Value::from(i64::try_from(floor).unwrap_or(i64::MAX)),
        ]
    }

    fn spawn_release(self: &Arc<Self>, server: usize, op: Op, floor: u64) {
        let inner = self.clone();
        tokio::spawn(async move {
            let args = inner.release_args(&op, floor);
            let _ = inner.servers[server]
                .eval(&Scripts::get().release, op.keys(), args)
                .await;
        });
    }

    /// Releases on every server; done once a quorum answered (the rest finish in the
    /// background). Fails only if no server answered.
    async fn release(self: &Arc<Self>, op: &Op, floor: u64) -> std::result::Result<(), String> {
        let script = &Scripts::get().release;
        let args = self.release_args(op, floor);
        if self.servers.len() == 1 {
            let s = &self.servers[0];
            return s
                .eval(script, op.keys(), args)
                .await
                .map(drop)
                .map_err(|e| describe(&s.label, s.command_timeout(), &e));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        for s in &self.servers {
            let (s, tx, keys, args) = (s.clone(), tx.clone(), op.keys(), args.clone());
            tokio::spawn(async move {
                let r = s
                    .eval(script, keys, args)
                    .await
                    .map(drop)
                    .map_err(|e| describe(&s.label, s.command_timeout(), &e));
                let _ = tx.send(r);
            });
        }
        drop(tx);
        let (mut ok, mut errors) = (0, Vec::new());
        while let Some(r) = rx.recv().await {
            match r {
                Ok(()) => ok += 1,
                Err(e) => errors.push(e),
            }
            if ok >= self.quorum {
                return Ok(());
            }
        }
        if ok > 0 {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        op: Op,
        fence: u64,
        lease: Duration,
        sent: Instant,
        entry: Arc<Entry<()>>,
        ticket: Ticket,
    ) -> Held {
        let uid = self.held.next_id();
        // Runs inside the runtime: remembered for releases from `Drop` on other threads.
        let _ = self.runtime.get_or_init(tokio::runtime::Handle::current);
        let lease_state = Arc::new(Lease::new(lease - drift(lease), sent));
        let lost = LostSignal::new();
        // On RedLock the counters of the servers differ; carrying the token to every server on
        // renewal and release keeps later grants above it (see the README's fencing notes).
        let floor = if self.fair { 0 } else { fence };
        let held = Arc::new(RedisHeld {
            inner: self.clone(),
            uid,
            target: req.target(BACKEND).to_string(),
            op: op.clone(),
            fence,
            floor,
            lease: lease_state.clone(),
            lost: lost.clone(),
            released: AtomicBool::new(false),
            turn: Mutex::new(Some((ticket, entry))),
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
                due: sent + self.opts.renew_period(),
                in_flight: false,
            },
        );
        held
    }
}

/// Parses the acquire script's reply.
fn parse_attempt(v: &Value) -> Option<Try> {
    let Value::Array(items) = v else {
        return None;
    };
    let n = |i: usize| items.get(i).and_then(|x| x.as_i64());
    match n(0)? {
        1 => Some(Try::Granted {
            fence: u64::try_from(n(1)?).ok()?,
        }),
        0 => Some(Try::Busy {
            hint: u64::try_from(n(1)?)
                .ok()
                .filter(|&h| h > 0)
                .map(|h| Duration::from_millis(h + 1)),
        }),
        _ => None,
    }
}

/// A lock held on Redis.
struct RedisHeld {
    inner: Arc<Inner>,
    uid: u64,
    target: String,
    op: Op,
    fence: u64,
    floor: u64,
    lease: Arc<Lease>,
    lost: LostSignal,
    released: AtomicBool,
    /// This handle's in-process turn; given back after the server release.
    turn: Mutex<Option<(Ticket, Arc<Entry<()>>)>>,
}

impl RedisHeld {
    async fn release_now(&self) -> Result<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.renewals.untrack(self.uid);
        self.inner.held.remove(self.uid);
        let expired = self.lost.is_lost() || Instant::now() >= self.lease.deadline();
        let result = self.inner.release(&self.op, self.floor).await;
        drop(lock(&self.turn).take());
        match result {
            Ok(()) => Ok(()),
            // Expired already: there is nothing left to release, and nothing to report.
            Err(_) if expired => Ok(()),
            Err(e) => Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "releasing {}: {e}; the lease ends on its own within {} ms",
                    self.target,
                    self.lease.remaining(Instant::now()).as_millis()
                ),
            }),
        }
    }
}

impl RedisHeld {
    /// Sets the lease to `lease` from now on every server, and uses it for later renewals.
    async fn extend_now(&self, lease: Duration) -> Result<()> {
        distlock_core::options::lease_ms(lease.as_millis() as f64)?;
        let lost = |reason: String| Error::Lost {
            target: distlock_core::Target::new(BACKEND, "lock", self.target.clone()),
            reason,
        };
        if self.is_released() {
            return Err(lost(String::from("it was released")));
        }
        if let Some(reason) = self.lost.reason() {
            return Err(lost(reason.to_owned()));
        }
        let sent = Instant::now();
        match self.inner.renew_one(&self.op, ms(lease), self.floor).await {
            Some(true) => {
                self.lease.set_length(lease - drift(lease));
                self.lease.renewed(sent);
                self.inner.renewals.set_lease(self.uid, ms(lease));
                Ok(())
            }
            Some(false) => {
                let reason = String::from("an extend found its key gone or owned by someone else");
                self.lost.fire(reason.clone());
                Err(lost(reason))
            }
            None => Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "extending {}: no quorum of servers answered; the lease ends within {} ms unless a renewal succeeds",
                    self.target,
                    self.lease.remaining(Instant::now()).as_millis()
                ),
            }),
        }
    }
}

impl HeldLock for RedisHeld {
    fn fencing_token(&self) -> u64 {
        self.fence
    }

    fn lost(&self) -> &LostSignal {
        &self.lost
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
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
        let (inner, op, floor) = (self.inner.clone(), self.op.clone(), self.floor);
        let turn = lock(&self.turn).take();
        if let Some(rt) = self.inner.runtime.get() {
            rt.spawn(async move {
                let _ = inner.release(&op, floor).await;
                drop(turn);
            });
        }
    }
}

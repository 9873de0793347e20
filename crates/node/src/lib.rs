//! The napi bindings: argument conversion, one call into a backend, error mapping. Nothing else
//! lives here (no loops, no retries, no I/O): that is in `distlock-core` and the backend crates.

#[cfg(unix)]
pub mod cli;
pub mod log;
mod uvloop;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use distlock_core::{
    AcquireRequest, Backend, CancellationToken, Held, LockKind, MemoryBackend, Timeout,
};
use distlock_etcd::{EtcdBackend, EtcdOptions as EtcdConfig};
use distlock_file::FileBackend;
use distlock_mysql::{MySqlBackend, MySqlOptions as MySqlConfig};
use distlock_postgres::{PgOptions, PostgresBackend, Scope};
use distlock_redis::{RedisBackend, RedisOptions as RedisConfig};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use uvloop::{JsFn, Loop};

/// Turns a core error into a rejection whose message starts with the stable `CODE: `; the TS
/// layer maps that prefix to the matching error class.
fn to_js(err: distlock_core::Error) -> Error {
    Error::new(Status::GenericFailure, js_message(&err))
}

/// How an error crosses to JS: `CODE: message`, then, when its cause is known, a NUL and the
/// cause as a JSON object (`server`, `errno`, `syscall`, `path`, `sqlstate`, `redis`,
/// `message`), which the TS layer turns into `LockBackendError`'s fields.
fn js_message(err: &distlock_core::Error) -> String {
    let mut out = format!("{}: {err}", err.code());
    let cause = err.cause();
    if cause.is_empty() {
        return out;
    }
    let mut fields: Vec<String> = Vec::new();
    let mut text = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            fields.push(format!("\"{key}\":{}", json_string(v)));
        }
    };
    text("server", cause.server.as_deref());
    text("syscall", cause.syscall);
    text("path", cause.path.as_deref());
    text("sqlstate", cause.sqlstate.as_deref());
    text("redis", cause.redis.as_deref());
    text("message", cause.message.as_deref());
    if let Some(errno) = cause.errno {
        fields.push(format!("\"errno\":{errno}"));
    }
    out.push('\0');
    out.push('{');
    out.push_str(&fields.join(","));
    out.push('}');
    out
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses the JS-side kind string (`mutex`, `read`, `write`, `semaphore`); `permits` (a
/// semaphore's, default 1) is checked against `max_count`.
fn lock_kind(
    kind: &str,
    max_count: Option<f64>,
    permits: Option<f64>,
) -> distlock_core::Result<LockKind> {
    Ok(match kind {
        "mutex" => LockKind::Mutex,
        "read" => LockKind::Read,
        "write" => LockKind::Write,
        "semaphore" => {
            let max_count = distlock_core::validate_max_count(max_count.unwrap_or(f64::NAN))?;
            LockKind::Semaphore {
                max_count,
                permits: distlock_core::validate_permits(permits, max_count)?,
            }
        }
        other => {
            return Err(distlock_core::Error::invalid(
                "kind",
                format!("must be mutex, read, write or semaphore, got {other:?}"),
            ));
        }
    })
}

/// What a call that could not answer at once settles with: a new handle, nothing (a timeout,
/// or a release), or an error message that starts with its stable code.
type Settled = (u32, std::result::Result<Option<Held>, String>);

type LeakFn = ThreadsafeFunction<String, (), String, Status, false, true>;

/// The arguments of the JS settle callback: `(id, handle | null, error | null)`.
type SettleArgs = FnArgs<(u32, Option<NativeHandle>, Option<String>)>;

/// The JS settle callback of one provider, callable from any thread.
type SettleFn = ThreadsafeFunction<Settled, (), SettleArgs, Status, false, true>;

/// One long-lived channel per provider that settles every call that had to wait.
///
/// With the event-loop driver ([`uvloop`]) a pending call is polled on the JS thread and
/// settled there by calling the provider's settle function directly. The fallback (tokio)
/// polls it on the runtime and settles through one threadsafe function, and so one libuv
/// handle, however many calls are pending (a handle per call makes every wake-up of the event
/// loop walk all of them: quadratic with many waiters). Both hold the function weakly: a
/// pending call keeps the process alive through the TS layer, an idle provider does not.
pub struct SettleChannel {
    tsfn: OnceLock<Arc<SettleFn>>,
    /// Told the name of each handle garbage-collected while it still held its lock.
    leaked: OnceLock<LeakFn>,
    direct: OnceLock<JsFn>,
    event_loop: Option<Arc<Loop>>,
    me: Weak<SettleChannel>,
}

type Channel = Arc<SettleChannel>;

impl SettleChannel {
    fn new(event_loop: Option<Arc<Loop>>) -> Channel {
        Arc::new_cyclic(|me| Self {
            tsfn: OnceLock::new(),
            leaked: OnceLock::new(),
            direct: OnceLock::new(),
            event_loop,
            me: me.clone(),
        })
    }
}

impl uvloop::Settle for SettleChannel {
    fn settle(
        &self,
        env: napi::sys::napi_env,
        ctx: napi::sys::napi_async_context,
        id: u32,
        answer: uvloop::Answer,
    ) {
        let Some(f) = self.direct.get() else { return };
        let args = match answer {
            Ok(held) => (
                id,
                held.map(|h| NativeHandle::new(h, self.me.clone())),
                None,
            ),
            Err(message) => (id, None, Some(message)),
        };
        f.call3(env, ctx, args);
    }
}

/// Runs `fut` to its answer: at once on the JS thread when it is ready on its first poll (an
/// uncontended file acquire, a file release), returning `Some`. Else it goes on, on the JS
/// thread's event loop when there is one (woken there, settled there), or on the tokio runtime,
/// and settles through the provider's channel with `id`, returning `None`. Polls run inside the
/// runtime's context, and a pending future keeps its state (and its place in the waiter queue)
/// wherever it goes on.
fn now_or_settle<T, F>(
    channel: &Channel,
    id: u32,
    fut: F,
    settled: fn(T) -> Option<Held>,
) -> Result<Option<Option<Held>>>
where
    T: Send + 'static,
    F: Future<Output = distlock_core::Result<T>> + Send + 'static,
{
    let answering = async move { fut.await.map(settled).map_err(|e| js_message(&e)) };
    if let Some(l) = &channel.event_loop
        && channel.direct.get().is_some()
    {
        let sink: Arc<dyn uvloop::Settle> = match channel.me.upgrade() {
            Some(c) => c,
            None => return Err(internal("the provider's settle channel is gone")),
        };
        return match l.run(Box::pin(answering), sink, id) {
            Some(answer) => answer
                .map(Some)
                .map_err(|m| Error::new(Status::GenericFailure, m)),
            None => Ok(None),
        };
    }
    let mut fut = Box::pin(answering);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match napi::bindgen_prelude::within_runtime_if_available(|| fut.as_mut().poll(&mut cx)) {
        Poll::Ready(answer) => answer
            .map(Some)
            .map_err(|m| Error::new(Status::GenericFailure, m)),
        Poll::Pending => {
            let Some(tsfn) = channel.tsfn.get() else {
                return Err(internal("the provider's settle channel is not set up"));
            };
            let tsfn = Arc::clone(tsfn);
            napi::bindgen_prelude::spawn(async move {
                let out = fut.await;
                tsfn.call((id, out), ThreadsafeFunctionCallMode::NonBlocking);
            });
            Ok(None)
        }
    }
}

fn internal(what: &str) -> Error {
    Error::new(Status::GenericFailure, format!("ERR_INTERNAL: {what}"))
}

/// Checks a lock name now, so `createLock('')` throws at once rather than at acquire.
#[napi]
pub fn validate_name(name: String) -> Result<()> {
    distlock_core::validate_name(&name).map_err(to_js)
}

/// Checks a semaphore's `maxCount` now, so `createSemaphore(name, 0)` throws at once.
#[napi]
pub fn validate_max_count(max_count: f64) -> Result<()> {
    distlock_core::validate_max_count(max_count)
        .map(drop)
        .map_err(to_js)
}

/// A token the TS layer fires when the caller's `AbortSignal` aborts.
#[napi]
pub struct CancelToken {
    token: CancellationToken,
}

#[napi]
impl CancelToken {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self {
            token: CancellationToken::new(),
        }
    }

    /// Cancels every wait this token was passed to.
    #[napi]
    pub fn cancel(&self) {
        self.token.cancel();
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

/// A held lock. Dropping it (garbage collection) releases the lock.
#[napi]
pub struct NativeHandle {
    held: Mutex<Option<Held>>,
    channel: Weak<SettleChannel>,
    token: u64,
    /// Ends the lost-signal watcher once the handle is released.
    done: CancellationToken,
}

impl NativeHandle {
    fn new(held: Held, channel: Weak<SettleChannel>) -> Self {
        let token = held.fencing_token();
        Self {
            held: Mutex::new(Some(held)),
            channel,
            token,
            done: CancellationToken::new(),
        }
    }

    fn take(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn current(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[napi]
impl NativeHandle {
    /// The fencing token of this grant.
    #[napi(getter)]
    pub fn fencing_token(&self) -> BigInt {
        BigInt::from(self.token)
    }

    /// Whether the lock has been released (by `release`, or by the provider on close).
    #[napi(getter)]
    pub fn is_released(&self) -> bool {
        self.current().is_none_or(|h| h.is_released())
    }

    /// Whether the lock is held right now, checked against the clock at the call: false once it
    /// is released, lost, past its local lease deadline, or on a connection in doubt.
    #[napi(getter)]
    pub fn is_held(&self) -> bool {
        self.current().is_some_and(|h| h.is_held())
    }

    /// What is left of the lease by the local deadline, in ms (0 once lost); `null` for
    /// backends whose locks have no lease, and once released.
    #[napi(getter)]
    pub fn lease_remaining_ms(&self) -> Option<f64> {
        let held = self.current()?;
        if held.is_released() {
            return None;
        }
        held.lease_remaining().map(|d| d.as_secs_f64() * 1e3)
    }

    /// Ends the lock as lost with `reason` (its signal fires); the caller then releases it.
    /// Does nothing once released or lost.
    #[napi]
    pub fn expire(&self, reason: String) {
        if let Some(held) = self.current()
            && !held.is_released()
        {
            held.lost().fire(reason);
        }
    }

    /// Why the lock was lost, if it was (`null` while it is held or after a normal release).
    #[napi(getter)]
    pub fn lost_reason(&self) -> Option<String> {
        self.current()
            .and_then(|h| h.lost().reason().map(str::to_owned))
    }

    /// Calls `callback(reason)` once if the lock is lost while held. The callback does not keep
    /// the process alive.
    #[napi]
    pub fn on_lost(&self, callback: Function<String, ()>) -> Result<()> {
        let Some(held) = self.current() else {
            return Ok(());
        };
        let tsfn = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let lost = held.lost().clone();
        let done = self.done.clone();
        drop(held);
        napi::bindgen_prelude::spawn(async move {
            tokio::select! {
                // Lost first: a lock lost and then released (maxHoldMs, a release right after
                // the loss) still reports the loss.
                biased;
                reason = lost.lost() => { tsfn.call(reason, ThreadsafeFunctionCallMode::NonBlocking); }
                _ = done.cancelled() => {}
            }
        });
        Ok(())
    }

    /// Extends the lease to `ms` from now (backends with leases; a no-op for the others).
    #[napi]
    pub fn extend<'env>(&self, env: &'env Env, ms: f64) -> Result<PromiseRaw<'env, ()>> {
        let lease = distlock_core::options::lease_ms(ms).map_err(to_js)?;
        let held = self.current();
        env.spawn_future(async move {
            match held {
                Some(h) => h.extend(lease).await.map_err(to_js),
                None => Err(to_js(distlock_core::Error::invalid(
                    "handle",
                    "was released; a released lock cannot be extended",
                ))),
            }
        })
    }

    /// Releases the lock; idempotent. Returns true when done, false when the release goes on
    /// and settles through the provider's channel with `id`.
    #[napi]
    pub fn release(&self, id: u32) -> Result<bool> {
        self.done.cancel();
        let held = self.take();
        let releasing = async move {
            match held {
                Some(h) => h.release().await,
                None => Ok(()),
            }
        };
        let Some(channel) = self.channel.upgrade() else {
            // The provider object is gone: nobody can be told; release in the background.
            napi::bindgen_prelude::spawn(async move {
                let _ = releasing.await;
            });
            return Ok(true);
        };
        Ok(now_or_settle(&channel, id, releasing, |()| None)?.is_some())
    }
}

impl Drop for NativeHandle {
    fn drop(&mut self) {
        self.done.cancel();
        // Garbage-collected while still holding: the lock is released now (the held lock's own
        // drop does that), and the provider hears of it, to warn about the leak.
        let held = self
            .held
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(held) = held
            && !held.is_released()
            && let Some(channel) = self.channel.upgrade()
            && let Some(leaked) = channel.leaked.get()
        {
            leaked.call(
                held.target().to_owned(),
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        }
    }
}

/// Options of the PostgreSQL provider, validated in TS for types and here for values.
#[napi(object)]
pub struct PostgresOptions {
    pub connection_string: String,
    pub max_connections: Option<f64>,
    pub keepalive_ms: Option<f64>,
    pub op_timeout_ms: Option<f64>,
    pub connect_timeout_ms: Option<f64>,
    pub scope: Option<String>,
    pub fencing_sequence: Option<String>,
}

/// Options of the Redis provider, validated in TS for types and here for values.
#[napi(object)]
pub struct RedisOptions {
    pub urls: Vec<String>,
    pub lease_ms: Option<f64>,
    pub extend_every_ms: Option<f64>,
    pub key_prefix: Option<String>,
    pub server_timeout_ms: Option<f64>,
    pub tls: Option<RedisTlsOptions>,
}

/// Options of the MySQL provider, validated in TS for types and here for values.
#[napi(object)]
pub struct MySqlOptions {
    pub connection_string: String,
    pub max_connections: Option<f64>,
    pub keepalive_ms: Option<f64>,
    pub op_timeout_ms: Option<f64>,
    pub connect_timeout_ms: Option<f64>,
    pub fencing_table: Option<String>,
    pub fencing: Option<String>,
    pub tls: Option<RedisTlsOptions>,
}

/// Options of the etcd provider, validated in TS for types and here for values.
#[napi(object)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub lease_ms: Option<f64>,
    pub key_prefix: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub op_timeout_ms: Option<f64>,
    pub tls: Option<RedisTlsOptions>,
}

/// TLS material for `rediss://` servers, as PEM text (the TS layer turns Buffers into text).
#[napi(object)]
pub struct RedisTlsOptions {
    pub ca: Option<Vec<String>>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// What `getInfo` reports (see `distlock_core::LockInfo`).
#[napi(object)]
pub struct NativeLockInfo {
    pub held: bool,
    pub holders: Option<u32>,
    pub lease_remaining_ms: Option<f64>,
    pub fencing_token: Option<BigInt>,
}

fn postgres_backend(options: PostgresOptions) -> distlock_core::Result<PostgresBackend> {
    let mut opts = PgOptions::parse(&options.connection_string)?;
    if let Some(n) = options.max_connections {
        opts = opts.max_connections(n)?;
    }
    if let Some(ms) = options.keepalive_ms {
        opts = opts.keepalive(distlock_core::options::positive_ms(
            "keepaliveMs",
            ms,
            3_600_000.0,
        )?);
    }
    if let Some(ms) = options.op_timeout_ms {
        opts = opts.op_timeout(distlock_core::options::positive_ms(
            "opTimeoutMs",
            ms,
            600_000.0,
        )?);
    }
    if let Some(ms) = options.connect_timeout_ms {
        opts = opts.connect_timeout(distlock_core::options::positive_ms(
            "connectTimeoutMs",
            ms,
            600_000.0,
        )?);
    }
    if let Some(scope) = options.scope.as_deref() {
        opts = opts.scope(match scope {
            "session" => Scope::Session,
            "transaction" => Scope::Transaction,
            other => {
                return Err(distlock_core::Error::invalid(
                    "scope",
                    format!("must be 'session' or 'transaction', got {other:?}"),
                ));
            }
        });
    }
    if let Some(seq) = options.fencing_sequence.as_deref() {
        opts = opts.fencing_sequence(seq)?;
    }
    PostgresBackend::new(opts)
}

fn redis_backend(options: RedisOptions) -> distlock_core::Result<RedisBackend> {
    let mut opts = RedisConfig::parse(&options.urls)?;
    if let Some(ms) = options.lease_ms {
        opts = opts.lease(ms)?;
    }
    if let Some(ms) = options.extend_every_ms {
        opts = opts.extend_every(ms)?;
    }
    if let Some(prefix) = &options.key_prefix {
        opts = opts.key_prefix(prefix.as_str());
    }
    if let Some(ms) = options.server_timeout_ms {
        opts = opts.server_timeout(ms)?;
    }
    if let Some(tls) = options.tls {
        opts = opts.tls(tls.ca, tls.cert, tls.key)?;
    }
    RedisBackend::new(opts)
}

fn mysql_backend(options: MySqlOptions) -> distlock_core::Result<MySqlBackend> {
    let mut opts = MySqlConfig::parse(&options.connection_string)?;
    if let Some(n) = options.max_connections {
        opts = opts.max_connections(n)?;
    }
    let ms = distlock_core::options::positive_ms;
    if let Some(v) = options.keepalive_ms {
        opts = opts.keepalive(ms("keepaliveMs", v, 3_600_000.0)?);
    }
    if let Some(v) = options.op_timeout_ms {
        opts = opts.op_timeout(ms("opTimeoutMs", v, 600_000.0)?);
    }
    if let Some(v) = options.connect_timeout_ms {
        opts = opts.connect_timeout(ms("connectTimeoutMs", v, 600_000.0)?);
    }
    if let Some(table) = options.fencing_table.as_deref() {
        opts = opts.fencing_table(table)?;
    }
    if let Some(mode) = options.fencing.as_deref() {
        opts = opts.fencing(mode)?;
    }
    if let Some(tls) = options.tls {
        opts = opts.tls(tls.ca, tls.cert, tls.key)?;
    }
    MySqlBackend::new(opts)
}

fn etcd_backend(options: EtcdOptions) -> distlock_core::Result<EtcdBackend> {
    let mut opts = EtcdConfig::parse(&options.endpoints)?;
    if let Some(v) = options.lease_ms {
        opts = opts.lease(v)?;
    }
    if let Some(prefix) = &options.key_prefix {
        opts = opts.key_prefix(prefix);
    }
    match (options.username, options.password) {
        (Some(user), Some(password)) => opts = opts.auth(user, password),
        (None, None) => {}
        _ => {
            return Err(distlock_core::Error::invalid(
                "username",
                "and password go together: give both or neither",
            ));
        }
    }
    if let Some(v) = options.op_timeout_ms {
        opts = opts.op_timeout(v)?;
    }
    if let Some(tls) = options.tls {
        opts = opts.tls(tls.ca, tls.cert, tls.key)?;
    }
    EtcdBackend::new(opts)
}

/// The backend behind a provider, for what only some backends have.
enum Kind {
    File(FileBackend),
    Postgres(PostgresBackend),
    Redis(RedisBackend),
    MySql(MySqlBackend),
    Etcd(EtcdBackend),
    Memory,
}

/// A lock provider on one backend; the factories pick which.
#[napi]
pub struct NativeProvider {
    backend: Arc<dyn Backend>,
    kind: Kind,
    channel: Channel,
}

impl NativeProvider {
    /// A provider over `backend`, on this environment's event loop when the driver is chosen
    /// there ([`Loop::current`]).
    fn on(env: Env, backend: Arc<dyn Backend>, kind: Kind) -> Result<Self> {
        let event_loop = Loop::current(env.raw()).map_err(to_js)?;
        if let Some(l) = &event_loop {
            backend.attach(l.clone());
        }
        Ok(Self {
            backend,
            kind,
            channel: SettleChannel::new(event_loop),
        })
    }
}

#[napi]
impl NativeProvider {
    /// OS file locks in `directory`.
    #[napi(factory)]
    pub fn file(env: Env, directory: String) -> Result<Self> {
        let file = FileBackend::new(directory);
        Self::on(env, Arc::new(file.clone()), Kind::File(file))
    }

    /// PostgreSQL advisory locks.
    #[napi(factory)]
    pub fn postgres(env: Env, options: PostgresOptions) -> Result<Self> {
        let pg = postgres_backend(options).map_err(to_js)?;
        Self::on(env, Arc::new(pg.clone()), Kind::Postgres(pg))
    }

    /// Redis: one server, a cluster, a Sentinel group, or RedLock over several servers.
    #[napi(factory)]
    pub fn redis(env: Env, options: RedisOptions) -> Result<Self> {
        let redis = redis_backend(options).map_err(to_js)?;
        Self::on(env, Arc::new(redis.clone()), Kind::Redis(redis))
    }

    /// MySQL or MariaDB named locks.
    #[napi(factory)]
    pub fn mysql(env: Env, options: MySqlOptions) -> Result<Self> {
        let mysql = mysql_backend(options).map_err(to_js)?;
        Self::on(env, Arc::new(mysql.clone()), Kind::MySql(mysql))
    }

    /// etcd v3: leases, and keys ordered by their create revision.
    #[napi(factory)]
    pub fn etcd(env: Env, options: EtcdOptions) -> Result<Self> {
        let etcd = etcd_backend(options).map_err(to_js)?;
        Self::on(env, Arc::new(etcd.clone()), Kind::Etcd(etcd))
    }

    /// Locks inside this process, for tests.
    #[napi(factory)]
    pub fn memory(env: Env) -> Result<Self> {
        Self::on(env, Arc::new(MemoryBackend::new()), Kind::Memory)
    }

    /// Sets the callback `(id, handle | null, error | null)` that settles the calls that had to
    /// wait (once, before the first call).
    /// Calls `callback(lock)` with how messages name a lock whose handle was garbage-collected
    /// while it still held it (the lock is released then). Does not keep the process alive.
    #[napi]
    pub fn on_leak(&self, callback: Function<String, ()>) -> Result<()> {
        let tsfn: LeakFn = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let _ = self.channel.leaked.set(tsfn);
        Ok(())
    }

    /// Calls `callback(kind, name, server, detail)` for the backend's events: `renewal-failure`
    /// (`name`, `detail`), `disconnect` and `reconnect` (`server`). The callback does not keep
    /// the process alive; the backend calls it only when such a thing happens.
    #[napi]
    #[allow(clippy::type_complexity)] // spelled out: the .d.ts generator cannot see through aliases
    pub fn on_event(
        &self,
        callback: Function<FnArgs<(String, Option<String>, Option<String>, Option<String>)>, ()>,
    ) -> Result<()> {
        type Args = (String, Option<String>, Option<String>, Option<String>);
        let tsfn: ThreadsafeFunction<Args, (), FnArgs<Args>, Status, false, true> = callback
            .build_threadsafe_function::<Args>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(|ctx| Ok(FnArgs::from(ctx.value)))?;
        self.backend.observe(Arc::new(move |event| {
            use distlock_core::BackendEvent as E;
            let args = match event {
                E::RenewalFailed { name, detail } => (
                    String::from("renewal-failure"),
                    Some(name),
                    None,
                    Some(detail),
                ),
                E::Disconnected { server } => {
                    (String::from("disconnect"), None, Some(server), None)
                }
                E::Reconnected { server } => (String::from("reconnect"), None, Some(server), None),
            };
            tsfn.call(args, ThreadsafeFunctionCallMode::NonBlocking);
        }));
        Ok(())
    }

    #[napi]
    #[allow(clippy::type_complexity)] // spelled out: the .d.ts generator cannot see through aliases
    pub fn on_settle(
        &self,
        callback: Function<FnArgs<(u32, Option<NativeHandle>, Option<String>)>, ()>,
    ) -> Result<()> {
        if let Some(f) = JsFn::new(callback.value().env, callback.value().value) {
            let _ = self.channel.direct.set(f);
        }
        let channel = Arc::downgrade(&self.channel);
        let tsfn: SettleFn = callback
            .build_threadsafe_function::<Settled>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(move |ctx| {
                let (id, out) = ctx.value;
                Ok(FnArgs::from(match out {
                    Ok(held) => (
                        id,
                        held.map(|h| NativeHandle::new(h, channel.clone())),
                        None,
                    ),
                    Err(message) => (id, None, Some(message)),
                }))
            })?;
        // Set once; a second call keeps the first callback.
        let _ = self.channel.tsfn.set(Arc::new(tsfn));
        Ok(())
    }

    /// Acquires `name` as `kind` (`permits` of a semaphore's `maxCount`): a handle, or `null`
    /// when `timeoutMs` ran out; `undefined` when the answer is not known at once, which then
    /// settles through the channel with `id`.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn acquire(
        &self,
        id: u32,
        name: String,
        kind: String,
        max_count: Option<f64>,
        permits: Option<f64>,
        timeout_ms: Option<f64>,
        cancel: Option<&CancelToken>,
        lease_ms: Option<f64>,
        auto_renew: Option<bool>,
    ) -> Result<Either<Option<NativeHandle>, ()>> {
        let request = AcquireRequest {
            name,
            kind: lock_kind(&kind, max_count, permits).map_err(to_js)?,
            timeout: Timeout::from_ms(timeout_ms).map_err(to_js)?,
            cancel: cancel.map(|c| c.token.clone()),
            lease: lease(lease_ms).map_err(to_js)?,
            auto_renew: auto_renew.unwrap_or(true),
        };
        let waiting = self.backend.acquire(request).map_err(to_js)?;
        Ok(
            match now_or_settle(&self.channel, id, waiting, |held| held)? {
                Some(held) => {
                    Either::A(held.map(|h| NativeHandle::new(h, Arc::downgrade(&self.channel))))
                }
                None => Either::B(()),
            },
        )
    }

    /// A snapshot of the lock's state.
    #[napi]
    pub fn inspect<'env>(
        &self,
        env: &'env Env,
        name: String,
        kind: String,
        max_count: Option<f64>,
    ) -> Result<PromiseRaw<'env, NativeLockInfo>> {
        let kind = lock_kind(&kind, max_count, None).map_err(to_js)?;
        let looking = self.backend.inspect(&name, kind);
        env.spawn_future(async move {
            let info = looking.await.map_err(to_js)?;
            Ok(NativeLockInfo {
                held: info.held,
                holders: info.holders,
                lease_remaining_ms: info.lease_remaining.map(|d| d.as_millis() as f64),
                fencing_token: info.fencing_token.map(BigInt::from),
            })
        })
    }

    /// Server connections open now (PostgreSQL, MySQL).
    #[napi(getter)]
    pub fn connections(&self) -> Option<u32> {
        let n = match &self.kind {
            Kind::Postgres(p) => p.connections(),
            Kind::MySql(m) => m.connections(),
            _ => return None,
        };
        Some(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Removes what names nobody uses now leave behind: lock files (file backend), fencing
    /// counters (Redis); resolves to how many.
    #[napi]
    pub fn remove_unused<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, u32>> {
        if let Kind::Redis(redis) = &self.kind {
            let redis = redis.clone();
            return env.spawn_future(async move {
                let n = redis.remove_unused_fence_keys().await.map_err(to_js)?;
                Ok(u32::try_from(n).unwrap_or(u32::MAX))
            });
        }
        let Kind::File(file) = &self.kind else {
            return Err(to_js(distlock_core::Error::invalid(
                "provider",
                "has nothing to remove (only the file and Redis backends leave keys behind)",
            )));
        };
        let file = file.clone();
        env.spawn_future(async move {
            let removing = tokio::task::spawn_blocking(move || file.remove_unused());
            match removing.await {
                Ok(Ok(n)) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
                Ok(Err(e)) => Err(to_js(e)),
                Err(e) => Err(Error::new(Status::GenericFailure, format!("IO: {e}"))),
            }
        })
    }

    /// Of those, the ones whose socket is read on the event loop (PostgreSQL).
    #[napi(getter)]
    pub fn event_loop_connections(&self) -> Option<u32> {
        match &self.kind {
            Kind::Postgres(p) => Some(u32::try_from(p.connections_on_loop()).unwrap_or(u32::MAX)),
            _ => None,
        }
    }

    /// Locks held through this provider now (Redis, MySQL, etcd).
    #[napi(getter)]
    pub fn held_count(&self) -> Option<u32> {
        let n = match &self.kind {
            Kind::Redis(r) => r.held_count(),
            Kind::MySql(m) => m.held_count(),
            Kind::Etcd(e) => e.held_count(),
            _ => return None,
        };
        Some(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Lease renewals sent so far, and the scripts (round trips per server) that carried them
    /// (Redis).
    #[napi(getter)]
    pub fn renewal_stats(&self) -> Option<Vec<f64>> {
        match &self.kind {
            Kind::Redis(r) => Some(vec![r.renewals_sent() as f64, r.renewal_batches() as f64]),
            _ => None,
        }
    }

    /// Scripts sent on the event loop's own connections so far (Redis).
    #[napi(getter)]
    pub fn event_loop_scripts(&self) -> Option<f64> {
        match &self.kind {
            Kind::Redis(r) => Some(r.scripts_on_event_loop() as f64),
            _ => None,
        }
    }

    /// Where pending calls are answered: `event-loop` (the JS thread's libuv loop) or
    /// `runtime` (the tokio fallback).
    #[napi(getter)]
    pub fn driver(&self) -> &'static str {
        if self.channel.event_loop.is_some() {
            "event-loop"
        } else {
            "runtime"
        }
    }

    #[napi(getter)]
    pub fn is_closed(&self) -> bool {
        self.backend.is_closed()
    }

    #[napi]
    pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let closing = self.backend.close();
        env.spawn_future(async move { closing.await.map_err(to_js) })
    }
}

/// Parses an optional per-acquire `leaseMs` (backends without leases ignore it).
fn lease(ms: Option<f64>) -> distlock_core::Result<Option<std::time::Duration>> {
    ms.map(distlock_core::options::lease_ms).transpose()
}

/// The runtime every backend runs on: one worker thread by default. distlock's work is waiting
/// on sockets and timers; a second worker mostly adds wake-ups between threads (measured: fewer
/// ops/s and more CPU per op with two). `DISTLOCK_WORKER_THREADS` overrides it.
#[napi_derive::module_init]
fn init_runtime() {
    let workers = std::env::var("DISTLOCK_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1);
    if let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("distlock-rt")
        .enable_all()
        .build()
    {
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}

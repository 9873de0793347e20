//! [`NativeProvider`]: a lock provider on one backend, the factories that pick which, and the
//! calls every provider takes (acquire, inspect, close) or only some backends answer.

use std::sync::Arc;

use distlock_core::{AcquireRequest, Backend, LockKind, MemoryBackend, Timeout};
use distlock_etcd::EtcdBackend;
use distlock_file::FileBackend;
use distlock_mysql::MySqlBackend;
use distlock_postgres::PostgresBackend;
use distlock_redis::RedisBackend;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::cancel::CancelToken;
use crate::errors::{Failure, promise, to_js};
use crate::handle::{Channel, NativeHandle, SettleChannel, now_or_settle};
use crate::options::{
    EtcdOptions, MySqlOptions, PostgresOptions, RedisOptions, etcd_backend, mysql_backend,
    postgres_backend, redis_backend,
};
use crate::uvloop::Loop;

/// What `getInfo` reports (see `distlock_core::LockInfo`).
#[napi(object)]
pub struct NativeLockInfo {
    pub held: bool,
    pub holders: Option<u32>,
    pub lease_remaining_ms: Option<f64>,
    pub fencing_token: Option<BigInt>,
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
        let event_loop = Loop::current(env.raw()).map_err(|e| to_js(&env, e))?;
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
        let pg = postgres_backend(options).map_err(|e| to_js(&env, e))?;
        Self::on(env, Arc::new(pg.clone()), Kind::Postgres(pg))
    }

    /// Redis: one server, a cluster, a Sentinel group, or RedLock over several servers.
    #[napi(factory)]
    pub fn redis(env: Env, options: RedisOptions) -> Result<Self> {
        let redis = redis_backend(options).map_err(|e| to_js(&env, e))?;
        Self::on(env, Arc::new(redis.clone()), Kind::Redis(redis))
    }

    /// MySQL or MariaDB named locks.
    #[napi(factory)]
    pub fn mysql(env: Env, options: MySqlOptions) -> Result<Self> {
        let mysql = mysql_backend(options).map_err(|e| to_js(&env, e))?;
        Self::on(env, Arc::new(mysql.clone()), Kind::MySql(mysql))
    }

    /// etcd v3: leases, and keys ordered by their create revision.
    #[napi(factory)]
    pub fn etcd(env: Env, options: EtcdOptions) -> Result<Self> {
        let etcd = etcd_backend(options).map_err(|e| to_js(&env, e))?;
        Self::on(env, Arc::new(etcd.clone()), Kind::Etcd(etcd))
    }

    /// Locks inside this process, for tests.
    #[napi(factory)]
    pub fn memory(env: Env) -> Result<Self> {
        Self::on(env, Arc::new(MemoryBackend::new()), Kind::Memory)
    }

    /// Calls `callback(lock)` with how messages name a lock whose handle was garbage-collected
    /// while it still held it (the lock is released then). Does not keep the process alive.
    #[napi]
    pub fn on_leak(&self, callback: Function<String, ()>) -> Result<()> {
        self.channel.on_leak(callback)
    }

    /// Calls `callback(kind, name, server, detail, ms)` for the backend's events:
    /// `renewal-failure` (`name`, `detail`), `disconnect` and `reconnect` (`server`), `stall`
    /// (`name`: the lock as messages name it, `detail`: the fault, `ms`: how long its store has
    /// been unreachable). The callback does not keep the process alive; the backend calls it only
    /// when such a thing happens.
    #[napi]
    #[allow(clippy::type_complexity)] // spelled out: the .d.ts generator cannot see through aliases
    pub fn on_event(
        &self,
        callback: Function<
            FnArgs<(
                String,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<f64>,
            )>,
            (),
        >,
    ) -> Result<()> {
        type Args = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<f64>,
        );
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
                    None,
                ),
                E::Disconnected { server } => {
                    (String::from("disconnect"), None, Some(server), None, None)
                }
                E::Reconnected { server } => {
                    (String::from("reconnect"), None, Some(server), None, None)
                }
                E::Stalled {
                    lock,
                    waited,
                    detail,
                } => (
                    String::from("stall"),
                    Some(lock),
                    None,
                    Some(detail),
                    Some(waited.as_secs_f64() * 1000.0),
                ),
            };
            tsfn.call(args, ThreadsafeFunctionCallMode::NonBlocking);
        }));
        Ok(())
    }

    /// Sets the callback `(id, handle | null, error | null)` that settles the calls that had to
    /// wait (once, before the first call); the error is a JS `Error` whose `code` and cause
    /// fields the TS layer reads.
    #[napi]
    #[allow(clippy::type_complexity)] // spelled out: the .d.ts generator cannot see through aliases
    pub fn on_settle(
        &self,
        callback: Function<FnArgs<(u32, Option<NativeHandle>, Option<Error>)>, ()>,
    ) -> Result<()> {
        self.channel.listen(callback)
    }

    /// Acquires `name` as `kind` (`permits` of a semaphore's `maxCount`): a handle, or `null`
    /// when `timeoutMs` ran out; `undefined` when the answer is not known at once, which then
    /// settles through the channel with `id`.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn acquire(
        &self,
        env: &Env,
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
        let js = |e| to_js(env, e);
        let request = AcquireRequest {
            name,
            kind: lock_kind(&kind, max_count, permits).map_err(js)?,
            timeout: Timeout::from_ms(timeout_ms).map_err(js)?,
            cancel: cancel.map(CancelToken::token),
            lease: lease(lease_ms).map_err(js)?,
            auto_renew: auto_renew.unwrap_or(true),
        };
        let waiting = self.backend.acquire(request).map_err(js)?;
        match now_or_settle(&self.channel, id, waiting, |held| held) {
            Ok(Some(held)) => {
                Ok(Either::A(held.map(|h| {
                    NativeHandle::new(h, Arc::downgrade(&self.channel))
                })))
            }
            Ok(None) => Ok(Either::B(())),
            Err(failure) => Err(failure.into_js(env)),
        }
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
        let kind = lock_kind(&kind, max_count, None).map_err(|e| to_js(env, e))?;
        let looking = self.backend.inspect(&name, kind);
        promise(env, async move {
            let info = looking.await?;
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
            return promise(env, async move {
                let n = redis.remove_unused_fence_keys().await?;
                Ok(u32::try_from(n).unwrap_or(u32::MAX))
            });
        }
        let Kind::File(file) = &self.kind else {
            return Err(to_js(
                env,
                distlock_core::Error::invalid(
                    "provider",
                    "has nothing to remove (only the file and Redis backends leave keys behind)",
                ),
            ));
        };
        let file = file.clone();
        promise(env, async move {
            let removing = tokio::task::spawn_blocking(move || file.remove_unused());
            match removing.await {
                Ok(Ok(n)) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
                Ok(Err(e)) => Err(Failure::from(e)),
                Err(e) => Err(Failure::os(e.to_string())),
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
        if self.channel.on_event_loop() {
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
        promise(env, async move { Ok(closing.await?) })
    }
}

/// Parses an optional per-acquire `leaseMs` (backends without leases ignore it).
fn lease(ms: Option<f64>) -> distlock_core::Result<Option<std::time::Duration>> {
    ms.map(distlock_core::options::lease_ms).transpose()
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

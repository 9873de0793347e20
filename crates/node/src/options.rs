//! The options objects of the providers' factories, and the backend each one builds. The TS
//! layer checks their types and keys; the values are checked here and in the backend crates.

use distlock_etcd::{EtcdBackend, EtcdOptions as EtcdConfig};
use distlock_mysql::{MySqlBackend, MySqlOptions as MySqlConfig};
use distlock_postgres::{PgOptions, PostgresBackend, Scope};
use distlock_redis::{RedisBackend, RedisOptions as RedisConfig};
use napi_derive::napi;

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

impl From<RedisTlsOptions> for distlock_core::TlsPem {
    fn from(tls: RedisTlsOptions) -> Self {
        Self {
            ca: tls.ca,
            cert: tls.cert,
            key: tls.key,
        }
    }
}

/// The PostgreSQL backend `options` describe.
pub fn postgres_backend(options: PostgresOptions) -> distlock_core::Result<PostgresBackend> {
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

/// The Redis backend `options` describe.
pub fn redis_backend(options: RedisOptions) -> distlock_core::Result<RedisBackend> {
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
        opts = opts.tls(tls.into())?;
    }
    RedisBackend::new(opts)
}

/// The MySQL backend `options` describe.
pub fn mysql_backend(options: MySqlOptions) -> distlock_core::Result<MySqlBackend> {
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
        opts = opts.tls(tls.into())?;
    }
    MySqlBackend::new(opts)
}

/// The etcd backend `options` describe.
pub fn etcd_backend(options: EtcdOptions) -> distlock_core::Result<EtcdBackend> {
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
        opts = opts.tls(tls.into())?;
    }
    EtcdBackend::new(opts)
}

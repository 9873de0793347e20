//! Options of the Redis provider: the servers (parsed by fred from `redis://` URLs), the lease
//! and renewal period, the key prefix and the per-server timeout.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::options::positive_ms;
use distlock_core::{Error, Result, TlsPem};
use fred::prelude::{Config, ServerConfig};

pub use distlock_core::options::MIN_LEASE_MS;
const MAX_MS: f64 = 2_147_483_647.0;

/// Validated options of a [`crate::RedisBackend`].
#[derive(Clone)]
pub struct RedisOptions {
    pub(crate) servers: Vec<ServerSpec>,
    pub(crate) lease: Duration,
    pub(crate) extend_every: Option<Duration>,
    pub(crate) key_prefix: String,
    pub(crate) server_timeout: Duration,
}

/// The URL schemes fred understands, with and without TLS.
const SCHEMES: [&str; 12] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// One server (or cluster, or sentinel group) as fred's configuration, and how messages name it.
#[derive(Clone)]
pub(crate) struct ServerSpec {
    pub label: String,
    pub config: Config,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print passwords: only the servers' labels.
        f.debug_struct("RedisOptions")
            .field(
                "servers",
                &self.servers.iter().map(|s| &s.label).collect::<Vec<_>>(),
            )
            .field("lease", &self.lease)
            .field("extend_every", &self.extend_every)
            .field("key_prefix", &self.key_prefix)
            .field("server_timeout", &self.server_timeout)
            .finish()
    }
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

fn label(config: &Config) -> String {
    match &config.server {
        ServerConfig::Centralized { server } => format!("{}:{}", server.host, server.port),
        ServerConfig::Clustered { hosts, .. } => format!(
            "cluster {}",
            hosts
                .iter()
                .map(|s| format!("{}:{}", s.host, s.port))
                .collect::<Vec<_>>()
                .join(",")
        ),
        ServerConfig::Sentinel { service_name, .. } => format!("sentinel service {service_name}"),
        #[allow(unreachable_patterns)]
        _ => String::from("redis"),
    }
}

impl RedisOptions {
    /// Parses the server URLs: one is a single server (`redis://`, `rediss://` for TLS), a
    /// cluster (`redis-cluster://host:port?node=host:port…`) or a Sentinel group
    /// (`redis-sentinel://host:26379/0?sentinelServiceName=…&node=…`); several are independent
    /// servers for RedLock.
    pub fn parse<S: AsRef<str>>(urls: &[S]) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::invalid(
                "urls",
                "must list at least one Redis server URL",
            ));
        }
        let mut servers: Vec<ServerSpec> = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let url = url.as_ref();
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            let config = if SCHEMES.contains(&scheme) {
                Config::from_url(url)
            } else {
                Err(fred::error::Error::new(
                    fred::error::ErrorKind::Config,
                    format!("unknown scheme {scheme:?}"),
                ))
            }
            .map_err(|e| {
                Error::invalid(
                    "urls",
                    format!(
                        "[{i}] is not a valid Redis URL ({}): {}; expected redis://[user:password@]host[:port][/db], rediss:// for TLS, redis-cluster:// or redis-sentinel://",
                        redact(url),
                        e.details()
                    ),
                )
            })?;
            let mut config = config;
            // The sentinels take `sentinelUsername`/`sentinelPassword` when the URL gives them,
            // else the URL's own user and password, as they did before those were read.
            if let ServerConfig::Sentinel {
                username, password, ..
            } = &mut config.server
                && username.is_none()
                && password.is_none()
            {
                username.clone_from(&config.username);
                password.clone_from(&config.password);
            }
            let spec = ServerSpec {
                label: label(&config),
                config,
            };
            if urls.len() > 1 {
                if !matches!(spec.config.server, ServerConfig::Centralized { .. }) {
                    return Err(Error::invalid(
                        "urls",
                        format!(
                            "[{i}] ({}) is a cluster or sentinel URL; RedLock over several URLs needs independent single servers",
                            redact(url)
                        ),
                    ));
                }
                if let Some(j) = servers.iter().position(|s| s.label == spec.label) {
                    return Err(Error::invalid(
                        "urls",
                        format!(
                            "[{i}] repeats [{j}] ({}); RedLock needs independent servers",
                            spec.label
                        ),
                    ));
                }
            }
            servers.push(spec);
        }
        Ok(Self {
            servers,
            lease: Duration::from_secs(30),
            extend_every: None,
            key_prefix: String::new(),
            server_timeout: Duration::from_secs(1),
        })
    }

    /// TLS for the `rediss://` servers (`tls`): `ca` (PEM certificates, which replace the
    /// system's roots, as Node's `tls.connect` does), and a client certificate chain `cert` with
    /// its `key` (PEM) for servers that check clients. An error if no URL uses TLS.
    pub fn tls(mut self, tls: TlsPem) -> Result<Self> {
        let TlsPem { ca, cert, key } = tls;
        use fred::rustls::pki_types::pem::PemObject;
        use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |what: &str| Error::invalid("tls", what.to_owned());
        let provider = Arc::new(fred::rustls::crypto::ring::default_provider());
        let mut roots = fred::rustls::RootCertStore::empty();
        match ca {
            Some(pems) => {
                for pem in &pems {
                    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                        let cert = cert.map_err(|e| invalid(&format!("ca is not PEM: {e}")))?;
                        roots.add(cert).map_err(|e| {
                            invalid(&format!("ca holds an unusable certificate: {e}"))
                        })?;
                    }
                }
                if roots.is_empty() {
                    return Err(invalid("ca holds no PEM certificate"));
                }
            }
            None => {
                // What fred uses by default: the system's roots (and SSL_CERT_FILE).
                for cert in fred::rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = fred::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&format!("{e}")))?
            .with_root_certificates(roots);
        let config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| invalid(&format!("cert is not PEM: {e}")))?;
                if chain.is_empty() {
                    return Err(invalid("cert holds no PEM certificate"));
                }
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| invalid(&format!("key is not a PEM private key: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid(&format!("cert and key do not make a client identity: {e}"))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(invalid("cert and key must be given together")),
        };
        let tls =
            fred::types::config::TlsConfig::from(fred::types::config::TlsConnector::from(config));
        let mut any = false;
        for server in &mut self.servers {
            if server.config.tls.is_some() {
                server.config.tls = Some(tls.clone());
                any = true;
            }
        }
        if !any {
            return Err(invalid(
                "applies to TLS servers, and no URL is rediss:// (or another TLS scheme)",
            ));
        }
        Ok(self)
    }

    /// How long a lock lives on the server unless renewed (`leaseMs`, at least 100).
    pub fn lease(mut self, ms: f64) -> Result<Self> {
        self.lease = distlock_core::options::lease_ms(ms)?;
        Ok(self)
    }

    /// How often held leases are renewed (`extendEveryMs`); default a third of the lease.
    pub fn extend_every(mut self, ms: f64) -> Result<Self> {
        self.extend_every = Some(positive_ms("extendEveryMs", ms, MAX_MS)?);
        Ok(self)
    }

    /// A prefix for every key (`keyPrefix`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long one server may take to answer one command (`serverTimeoutMs`, default 1 000).
    pub fn server_timeout(mut self, ms: f64) -> Result<Self> {
        self.server_timeout = positive_ms("serverTimeoutMs", ms, 60_000.0)?;
        Ok(self)
    }

    /// Checks the options against each other.
    pub(crate) fn check(&self) -> Result<()> {
        let every = self.renew_period();
        if every >= self.lease {
            return Err(Error::invalid(
                "extendEveryMs",
                format!(
                    "must be shorter than leaseMs ({} ms), got {} ms",
                    self.lease.as_millis(),
                    every.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// The renewal period.
    pub(crate) fn renew_period(&self) -> Duration {
        self.extend_every.unwrap_or(self.lease / 3)
    }

    /// The servers' labels, for messages.
    pub fn servers(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.label.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_errors() {
        let one = RedisOptions::parse(&["redis://:pw@127.0.0.1:6390/2"]).unwrap();
        assert_eq!(one.servers(), vec!["127.0.0.1:6390"]);
        assert!(!format!("{one:?}").contains("pw"));
        let three = RedisOptions::parse(&["redis://a:1", "redis://b:1", "redis://c:1"]).unwrap();
        assert_eq!(three.servers.len(), 3);
        let cluster =
            RedisOptions::parse(&["redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001"]).unwrap();
        let label = &cluster.servers()[0];
        assert!(
            label.starts_with("cluster ")
                && label.contains("127.0.0.1:7000")
                && label.contains("127.0.0.1:7001"),
            "{label}"
        );

        let err = |urls: &[&str]| {
            RedisOptions::parse(urls)
                .err()
                .map(|e| e.to_string())
                .unwrap()
        };
        assert!(err(&[]).starts_with("urls must list"));
        let bad = err(&["http://user:secret@host"]);
        assert!(bad.contains("[0] is not a valid Redis URL"), "{bad}");
        assert!(!bad.contains("secret"), "{bad}");
        assert!(err(&["redis://a:1", "redis://a:1"]).contains("repeats [0]"));
        assert!(
            err(&["redis://a:1", "redis-cluster://b:1"]).contains("independent single servers")
        );
    }

    #[test]
    fn lease_rules() {
        let o = RedisOptions::parse(&["redis://x"]).unwrap();
        assert!(
            o.clone()
                .lease(50.0)
                .err()
                .unwrap()
                .to_string()
                .contains("at least 100")
        );
        assert!(o.clone().lease(f64::NAN).is_err());
        let short = o
            .clone()
            .lease(1000.0)
            .unwrap()
            .extend_every(1000.0)
            .unwrap();
        assert!(
            short
                .check()
                .err()
                .unwrap()
                .to_string()
                .starts_with("extendEveryMs")
        );
        let ok = o.lease(900.0).unwrap();
        assert_eq!(ok.renew_period(), Duration::from_millis(300));
        assert!(ok.check().is_ok());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:p@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}

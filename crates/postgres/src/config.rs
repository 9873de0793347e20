//! Provider options: the connection string (with libpq's `sslmode` values, including the two
//! verifying ones tokio-postgres does not parse itself), pool size, keepalive, scope, fencing.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use distlock_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where a lock lives: for the whole session, or for one transaction (PgBouncer transaction
/// pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `pg_advisory_lock`: many locks share a few sessions.
    Session,
    /// `pg_advisory_xact_lock` inside an open transaction: one connection per held lock.
    Transaction,
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// No TLS (`sslmode=disable`).
    Off,
    /// Encrypt, do not verify the certificate (`prefer`, `require`: libpq's meaning).
    EncryptOnly,
    /// Verify the chain, not the host name (`verify-ca`).
    Chain,
    /// Verify the chain and the host name (`verify-full`).
    Full,
}

/// Everything the provider was configured with, validated.
#[derive(Clone)]
pub struct PgOptions {
    /// The parsed connection settings.
    pub config: tokio_postgres::Config,
    /// TLS certificate checking.
    pub verify: Verify,
    /// Extra trusted roots (`sslrootcert`), PEM.
    pub root_pem: Option<Vec<u8>>,
    /// At most this many server connections.
    pub max_connections: usize,
    /// Probe sessions that hold locks this often; a probe not answered within the same period
    /// closes the session and marks its locks lost. On by default ([`DEFAULT_KEEPALIVE`]), with
    /// TCP keepalives and `TCP_USER_TIMEOUT` (Linux) of the same scale, so a silent partition
    /// is reported within twice the period.
    pub keepalive: Option<Duration>,
    /// The bound on every statement that does not wait for a lock: a try (`timeout` 0: the
    /// connect and the attempt together), an unlock, `inspect`, creating the fencing sequence,
    /// and the cleanup after an interrupted wait. A release or cleanup that gets no answer within
    /// it closes its session (the server then frees what the session held).
    pub op_timeout: Duration,
    /// Session or transaction scope.
    pub scope: Scope,
    /// The sequence fencing tokens come from (created if missing).
    pub fencing_sequence: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("PgOptions")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("verify", &self.verify)
            .field("max_connections", &self.max_connections)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The default fencing sequence.
pub const DEFAULT_SEQUENCE: &str = "distlock_fencing_token";
/// The default pool size.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10;
/// The default [`PgOptions::op_timeout`], and the default `connect_timeout`.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The default keepalive period: a silent partition is reported within twice this.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);

impl PgOptions {
    /// Parses `connection_string` (URL or `key=value` form) with the defaults for the rest.
    pub fn parse(connection_string: &str) -> Result<Self> {
        if let Some((scheme, _)) = connection_string.split_once("://")
            && !matches!(scheme, "postgres" | "postgresql")
        {
            return Err(Error::invalid(
                "connectionString",
                format!(
                    "is a {scheme}:// URL; expected postgres:// or postgresql:// (or key=value pairs)"
                ),
            ));
        }
        let (rest, verify_override, root_path) = take_libpq_only(connection_string);
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            let detail = distlock_core::error::with_sources(&e);
            let detail = detail
                .strip_prefix("invalid connection string: ")
                .unwrap_or(&detail);
            Error::invalid(
                "connectionString",
                format!("is not a valid PostgreSQL connection string: {detail}"),
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::invalid(
                "connectionString",
                "names no host (expected e.g. postgres://user@host:5432/db)",
            ));
        }
        if config.get_user().is_none() {
            return Err(Error::invalid(
                "connectionString",
                "names no user (expected e.g. postgres://user@host:5432/db)",
            ));
        }
        if config.get_application_name().is_none() {
            config.application_name("distlock");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_OP_TIMEOUT);
        }
        let verify = verify_override.unwrap_or(match config.get_ssl_mode() {
            SslMode::Disable => Verify::Off,
            _ => Verify::EncryptOnly,
        });
        let root_pem = match root_path {
            Some(path) => Some(std::fs::read(&path).map_err(|e| {
                Error::invalid(
                    "connectionString",
                    format!("sslrootcert {path:?} cannot be read: {e}"),
                )
            })?),
            None => None,
        };
        let opts = PgOptions {
            config,
            verify,
            root_pem,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            keepalive: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            scope: Scope::Session,
            fencing_sequence: DEFAULT_SEQUENCE.to_owned(),
        }
        .keepalive(DEFAULT_KEEPALIVE);
        opts.tls()?; // a bad sslrootcert fails now, not at the first acquire
        Ok(opts)
    }

    /// Sets the pool size (1..=1000).
    pub fn max_connections(mut self, n: f64) -> Result<Self> {
        if !(n.fract() == 0.0 && (1.0..=1000.0).contains(&n)) {
            return Err(Error::invalid(
                "maxConnections",
                format!("must be an integer from 1 to 1000, got {n}"),
            ));
        }
        self.max_connections = n as usize;
        Ok(self)
    }

    /// Turns on the keepalive probe and TCP keepalives with this period.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.keepalive = Some(period);
        // TCP keepalive timers count whole seconds (0 is rejected by the kernel).
        let tcp = Duration::from_secs(period.as_millis().div_ceil(1000).max(1) as u64);
        self.config
            .keepalives(true)
            .keepalives_idle(tcp)
            .keepalives_interval(tcp)
            .keepalives_retries(2)
            .tcp_user_timeout(period * 2);
        self
    }

    /// Sets [`PgOptions::op_timeout`].
    pub fn op_timeout(mut self, bound: Duration) -> Self {
        self.op_timeout = bound.max(Duration::from_millis(1));
        self
    }

    /// Bounds each connection's TCP connect, TLS handshake and login (overrides the connection
    /// string's `connect_timeout`; default [`DEFAULT_OP_TIMEOUT`]).
    pub fn connect_timeout(mut self, bound: Duration) -> Self {
        self.config
            .connect_timeout(bound.max(Duration::from_millis(1)));
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the fencing sequence (an identifier, optionally schema-qualified).
    pub fn fencing_sequence(mut self, name: &str) -> Result<Self> {
        let valid_part = |p: &str| {
            let mut chars = p.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && p.len() <= 63
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(Error::invalid(
                "fencingSequence",
                format!("must be an identifier such as locks.fencing_token, got {name:?}"),
            ));
        }
        self.fencing_sequence = name.to_owned();
        Ok(self)
    }

    /// A description of the server for error messages: `host:port/db` (no credentials).
    pub fn server(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::from("?"),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("");
        format!("{host}:{port}/{db}")
    }

    /// The TLS connector for this configuration.
    pub fn tls(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.root_pem {
            let mut read = pem.as_slice();
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut read) {
                let cert = cert.map_err(|e| {
                    Error::invalid("connectionString", format!("sslrootcert is not PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::invalid(
                        "connectionString",
                        format!("sslrootcert holds an unusable certificate: {e}"),
                    )
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::invalid(
                    "connectionString",
                    "sslrootcert holds no PEM certificate",
                ));
            }
        }
        let tls_err = |e: rustls::Error| Error::invalid("connectionString", format!("TLS: {e}"));
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| Error::invalid("connectionString", format!("TLS roots: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?;
        let config = match self.verify {
            Verify::Full => builder.with_webpki_verifier(webpki).with_no_client_auth(),
            Verify::Off | Verify::EncryptOnly | Verify::Chain => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Checker {
                    webpki,
                    provider,
                    mode: self.verify,
                }))
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// Removes what only libpq understands (`sslmode=verify-ca|verify-full`, `sslrootcert`) from a
/// connection string, returning the rest for tokio-postgres with `sslmode=require` in their place.
fn take_libpq_only(s: &str) -> (String, Option<Verify>, Option<String>) {
    let mut verify = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Option<String> {
        match (key, value) {
            ("sslmode", "verify-full") => verify = Some(Verify::Full),
            ("sslmode", "verify-ca") => verify = Some(Verify::Chain),
            ("sslrootcert", v) => root = Some(v.to_owned()),
            _ => return None,
        }
        (key == "sslmode").then(|| String::from("require"))
    };
    let is_url = s.starts_with("postgres://") || s.starts_with("postgresql://");
    let out = if is_url {
        match s.split_once('?') {
            Some((base, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        match take(k, v) {
                            Some(repl) => Some(format!("{k}={repl}")),
                            None if k == "sslrootcert" => None,
                            None => Some(kv.to_owned()),
                        }
                    })
                    .collect();
                if params.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", params.join("&"))
                }
            }
            None => s.to_owned(),
        }
    } else {
        s.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match take(k, v) {
                    Some(repl) => Some(format!("{k}={repl}")),
                    None if k == "sslrootcert" => None,
                    None => Some(kv.to_owned()),
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (out, verify, root)
}

/// The certificate check for the modes rustls has no switch for: accept any certificate
/// (libpq's `prefer`/`require`), or the chain without the host name (`verify-ca`). Handshake
/// signatures are always checked.
#[derive(Debug)]
struct Checker {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    mode: Verify,
}

impl ServerCertVerifier for Checker {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.mode != Verify::Chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_only_parameters_are_taken_out() {
        let (s, v, r) = take_libpq_only(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/tmp/ca.pem&application_name=x",
        );
        assert_eq!(s, "postgres://u@h/db?sslmode=require&application_name=x");
        assert_eq!(v, Some(Verify::Full));
        assert_eq!(r.as_deref(), Some("/tmp/ca.pem"));
        let (s, v, _) = take_libpq_only("host=h user=u sslmode=verify-ca");
        assert_eq!(s, "host=h user=u sslmode=require");
        assert_eq!(v, Some(Verify::Chain));
        let (s, v, r) = take_libpq_only("postgres://u@h/db");
        assert_eq!((s.as_str(), v, r), ("postgres://u@h/db", None, None));
    }

    #[test]
    fn bad_connection_strings_name_the_problem() {
        let msg = |s: &str| {
            PgOptions::parse(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(msg("postgres://u@h:notaport/db").contains("connectionString"));
        assert!(msg("nonsense").contains("connectionString"));
        assert!(
            msg("postgres:///db").contains("no host"),
            "{}",
            msg("postgres:///db")
        );
        assert!(msg("postgres://h/db").contains("no user"));
        // Each names the part that is wrong, not one "invalid connection string" for all.
        let sslmode = msg("postgres://u@h/db?sslmode=bogus");
        assert!(sslmode.contains("sslmode"), "{sslmode}");
        let port = msg("postgres://u@h:99999/db");
        assert!(port.contains("port"), "{port}");
        let mysql = msg("mysql://u@h/db");
        assert!(mysql.contains("mysql://"), "{mysql}");
        let pairs = msg("host=h user=u sslmode=x");
        assert!(pairs.contains("sslmode"), "{pairs}");
        assert!(msg("postgres://u@h/db?sslrootcert=/nonexistent").contains("sslrootcert"));
        assert!(PgOptions::parse("postgres://u:secret@h/db").is_ok());
    }

    #[test]
    fn options_are_validated() {
        let o = PgOptions::parse("postgres://u@h/db").unwrap();
        assert!(o.clone().max_connections(0.0).is_err());
        assert!(o.clone().max_connections(1.5).is_err());
        assert_eq!(o.clone().max_connections(16.0).unwrap().max_connections, 16);
        assert!(o.clone().fencing_sequence("a;drop table x").is_err());
        assert!(o.clone().fencing_sequence("a.b.c").is_err());
        assert!(o.clone().fencing_sequence("locks.token_seq").is_ok());
        assert_eq!(o.server(), "h:5432/db");
        assert!(!format!("{o:?}").contains("secret"));
    }
}

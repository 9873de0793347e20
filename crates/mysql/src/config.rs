//! The provider's options: the server URL and what bounds the pool, the probes and each call.

use std::time::Duration;

use distlock_core::{Error, Result, TlsPem};
use mysql_async::{ClientIdentity, Opts, OptsBuilder};

/// Options of a [`crate::MySqlBackend`].
#[derive(Clone, Debug)]
pub struct MySqlOptions {
    pub(crate) server: Opts,
    /// How messages name the server: `host:port`, never the credentials.
    pub(crate) label: String,
    pub(crate) max_connections: usize,
    pub(crate) keepalive: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// The fencing table, quoted for SQL (`` `db`.`table` `` or `` `table` ``).
    pub(crate) fencing_table: String,
    /// Fencing tokens from the server's `UUID_SHORT()` instead of the table.
    pub(crate) uuid_short: bool,
}

impl MySqlOptions {
    /// Options for the server at `url`: `mysql://user:password@host:port/database?…` (or
    /// `mariadb://`), with the query parameters of the `mysql_async` driver (`require_ssl`,
    /// `verify_ca`, `verify_identity`, `socket`, …).
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |why: String| Error::invalid("connectionString", why);
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
            .ok_or_else(|| {
                invalid(String::from(
                    "must be a URL starting with mysql:// or mariadb://",
                ))
            })?;
        let server = Opts::from_url(&format!("mysql://{rest}"))
            .map_err(|e| invalid(format!("is not a valid MySQL URL: {e}")))?;
        let label = format!("{}:{}", server.ip_or_hostname(), server.tcp_port());
        Ok(Self {
            server,
            label,
            max_connections: 10,
            keepalive: Duration::from_secs(1),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            fencing_table: String::from("`distlock_fencing`"),
            uuid_short: false,
        })
    }

    /// The most server sessions the provider opens (1–1000; default 10).
    pub fn max_connections(mut self, n: f64) -> Result<Self> {
        if !(n.fract() == 0.0 && (1.0..=1000.0).contains(&n)) {
            return Err(Error::invalid(
                "maxConnections",
                format!("must be a whole number from 1 to 1000, got {n}"),
            ));
        }
        self.max_connections = n as usize;
        Ok(self)
    }

    /// How often sessions that hold locks are probed, and how long a probe may take before the
    /// session is given up and its locks reported lost (default 1 s).
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// How long one statement may take (a try, a release, the fencing bump, `inspect`) before
    /// the session is closed and the call fails (default 5 s).
    pub fn op_timeout(mut self, d: Duration) -> Self {
        self.op_timeout = d;
        self
    }

    /// How long opening a session (TCP, TLS, login) may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The table the fencing counters live in (`table` in the URL's database, or
    /// `database.table`), created on first use if missing. Default `distlock_fencing`.
    pub fn fencing_table(mut self, table: &str) -> Result<Self> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) {
            return Err(Error::invalid(
                "fencingTable",
                format!(
                    "must be a table name or database.table of letters, digits, _ and $ (at most 64 each), got {table:?}"
                ),
            ));
        }
        self.fencing_table = parts
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(".");
        Ok(self)
    }

    /// Where fencing tokens come from: `table` (default), a counter per name in the fencing
    /// table, written by every grant; or `uuid-short`, the server's `UUID_SHORT()`, read in the
    /// statement that takes the lock (no write): strictly increasing on one server, across its
    /// restarts unless its clock is set back, but after a failover larger only if the new
    /// server's `server_id` is larger.
    pub fn fencing(mut self, mode: &str) -> Result<Self> {
        self.uuid_short = match mode {
            "table" => false,
            "uuid-short" => true,
            other => {
                return Err(Error::invalid(
                    "fencing",
                    format!("must be 'table' or 'uuid-short', got {other:?}"),
                ));
            }
        };
        Ok(self)
    }

    /// TLS beyond the URL's parameters: the certificates to trust instead of the built-in
    /// roots, and a client certificate and key (PEM text). Giving any of them requires TLS.
    pub fn tls(mut self, tls: TlsPem) -> Result<Self> {
        let TlsPem { ca, cert, key } = tls;
        let mut ssl = self.server.ssl_opts().cloned().unwrap_or_default();
        if let Some(ca) = ca {
            if ca.is_empty() {
                return Err(Error::invalid("tls.ca", "must not be an empty list"));
            }
            let roots = ca.into_iter().map(|pem| pem.into_bytes().into()).collect();
            ssl = ssl.with_root_certs(roots).with_disable_built_in_roots(true);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                ssl = ssl.with_client_identity(Some(ClientIdentity::new(
                    cert.into_bytes().into(),
                    key.into_bytes().into(),
                )));
            }
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    "tls",
                    "needs both cert and key for a client certificate, or neither",
                ));
            }
        }
        self.server = OptsBuilder::from_opts(self.server)
            .ssl_opts(Some(ssl))
            .into();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_options_by_name() {
        let e = MySqlOptions::parse("postgres://x").unwrap_err().to_string();
        assert!(e.starts_with("connectionString must be a URL"), "{e}");
        let o = MySqlOptions::parse("mariadb://root:secret@db.example:3307/app").unwrap();
        assert_eq!(o.label, "db.example:3307");
        assert!(!format!("{:?}", o.label).contains("secret"));
        let e = o.clone().max_connections(0.0).unwrap_err().to_string();
        assert!(e.contains("maxConnections"), "{e}");
        let e = o.clone().fencing_table("a;b").unwrap_err().to_string();
        assert!(e.starts_with("fencingTable"), "{e}");
        let t = o.clone().fencing_table("app.locks_fence").unwrap();
        assert_eq!(t.fencing_table, "`app`.`locks_fence`");
        let cert_only = TlsPem {
            cert: Some(String::from("x")),
            ..TlsPem::default()
        };
        let e = o.tls(cert_only).unwrap_err();
        assert!(e.to_string().contains("cert and key"));
    }
}

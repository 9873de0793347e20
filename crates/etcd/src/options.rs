//! The etcd provider's options, validated up front.

use std::time::Duration;

use distlock_core::{Error, Result, TlsPem};

/// The shortest lease accepted, in milliseconds: etcd refuses shorter TTLs (its minimum is about
/// 1.5 × the election timeout) and a renewal every third of it must land in time.
pub const MIN_LEASE_MS: f64 = 2_000.0;
/// The longest lease accepted, in milliseconds (one day).
pub const MAX_LEASE_MS: f64 = 86_400_000.0;
/// The longest `opTimeoutMs` accepted, in milliseconds (ten minutes).
pub const MAX_OP_TIMEOUT_MS: f64 = 600_000.0;

/// TLS material, PEM text.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tls {
    pub ca: Vec<String>,
    pub identity: Option<(String, String)>,
}

/// How to reach etcd and how locks behave there.
#[derive(Clone)]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) lease: Duration,
    pub(crate) key_prefix: String,
    pub(crate) user: Option<(String, String)>,
    pub(crate) tls: Option<Tls>,
    pub(crate) op_timeout: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password or the private key.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("lease", &self.lease)
            .field("key_prefix", &self.key_prefix)
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .field("tls", &self.tls.is_some())
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl EtcdOptions {
    /// Options for these endpoints: `http://host:port`, `https://host:port`, or a bare
    /// `host:port` (plain HTTP; `:2379` when the port is left out). Several endpoints are
    /// members of one cluster: requests are balanced over them and fail over.
    pub fn parse(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::invalid(
                "endpoints",
                "must list at least one etcd endpoint, e.g. http://127.0.0.1:2379",
            ));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| normalize(e))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            endpoints,
            lease: Duration::from_secs(30),
            key_prefix: String::from("distlock/"),
            user: None,
            tls: None,
            op_timeout: Duration::from_secs(5),
        })
    }

    /// The lease of every lock (`leaseMs`), from 2 000 ms to one day. etcd leases are whole
    /// seconds: the value is rounded up to the next second.
    pub fn lease(mut self, ms: f64) -> Result<Self> {
        if ms.is_nan() {
            return Err(Error::invalid(
                "leaseMs",
                "must be a number of milliseconds, got NaN",
            ));
        }
        if ms < MIN_LEASE_MS {
            return Err(Error::invalid(
                "leaseMs",
                format!(
                    "must be at least {MIN_LEASE_MS} ms (etcd leases are whole seconds, and etcd refuses shorter ones), got {ms}"
                ),
            ));
        }
        if ms > MAX_LEASE_MS {
            return Err(Error::invalid(
                "leaseMs",
                format!("must be at most {MAX_LEASE_MS} ms (one day), got {ms}"),
            ));
        }
        self.lease = lease_secs(ms);
        Ok(self)
    }

    /// The prefix of every key this provider writes (`keyPrefix`, default `distlock/`).
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.key_prefix);
        self
    }

    /// Authenticates as `username` (etcd's user/password authentication).
    pub fn auth(mut self, username: String, password: String) -> Self {
        self.user = Some((username, password));
        self
    }

    /// TLS: trusted CA certificates (`ca`, PEM; the system's roots when absent) and a client
    /// certificate with its private key (PEM) for mutual TLS. Needs `https://` endpoints.
    pub fn tls(mut self, tls: TlsPem) -> Result<Self> {
        let TlsPem { ca, cert, key } = tls;
        let ca = ca.unwrap_or_default();
        for (i, pem) in ca.iter().enumerate() {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::invalid(
                    "tls",
                    format!("ca[{i}] must be a PEM certificate (-----BEGIN CERTIFICATE-----)"),
                ));
            }
        }
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                if !cert.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(Error::invalid(
                        "tls",
                        "cert must be a PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ));
                }
                if !(key.contains("-----BEGIN") && key.contains("PRIVATE KEY-----")) {
                    return Err(Error::invalid(
                        "tls",
                        "key must be a PEM private key (-----BEGIN … PRIVATE KEY-----)",
                    ));
                }
                Some((cert, key))
            }
            _ => {
                return Err(Error::invalid(
                    "tls",
                    "cert and key must be given together (a client certificate needs its private key)",
                ));
            }
        };
        self.tls = Some(Tls { ca, identity });
        Ok(self)
    }

    /// The bound on one request to etcd (`opTimeoutMs`, default 5 000): a release, an inspect,
    /// one renewal, connecting.
    pub fn op_timeout(mut self, ms: f64) -> Result<Self> {
        self.op_timeout =
            distlock_core::options::positive_ms("opTimeoutMs", ms, MAX_OP_TIMEOUT_MS)?;
        Ok(self)
    }

    /// Checks the options as a whole (called by the backend's constructor).
    pub(crate) fn check(&self) -> Result<()> {
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != self.endpoints.len() {
            return Err(Error::invalid(
                "endpoints",
                "must all use http:// or all use https://, not a mix",
            ));
        }
        if self.tls.is_some() && https == 0 {
            return Err(Error::invalid(
                "tls",
                "needs https:// endpoints (the endpoints use plain http://)",
            ));
        }
        Ok(())
    }

    /// The endpoints as messages name them.
    pub(crate) fn label(&self) -> String {
        self.endpoints.join(",")
    }
}

/// A lease override from a request, validated like `leaseMs`.
pub(crate) fn request_lease(lease: Duration) -> Result<Duration> {
    let ms = lease.as_secs_f64() * 1000.0;
    EtcdOptions {
        endpoints: Vec::new(),
        lease,
        key_prefix: String::new(),
        user: None,
        tls: None,
        op_timeout: Duration::ZERO,
    }
    .lease(ms)
    .map(|o| o.lease)
}

fn lease_secs(ms: f64) -> Duration {
    Duration::from_secs((ms / 1000.0).ceil() as u64)
}

/// `host:port` → `http://host:port`; checks the scheme, host and port.
/// `endpoint` with any `user:password@` replaced, for messages.
fn redact(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    match rest.split_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => endpoint.to_owned(),
    }
}

fn normalize(endpoint: &str) -> Result<String> {
    let e = endpoint.trim();
    let shown = redact(endpoint);
    let bad = |why: &str| {
        Error::invalid(
            "endpoints",
            format!(
                "has {shown:?}, which is not an etcd endpoint ({why}); expected http://host:port, https://host:port or host:port (credentials go in username and password)"
            ),
        )
    };
    let (scheme, rest) = match e.split_once("://") {
        Some((s, rest)) => {
            let s = s.to_ascii_lowercase();
            if s != "http" && s != "https" {
                return Err(bad("the scheme must be http or https"));
            }
            (s, rest)
        }
        None => (String::from("http"), e),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("only a host and a port may follow the scheme"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, tail)) = v6.split_once(']') else {
            return Err(bad("an IPv6 address must be closed with ]"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address"));
        }
        (format!("[{addr}]"), tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
        return Err(bad("no host, or an IPv6 address without [ ]"));
    }
    let port = match port {
        None => 2379,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(e: &str) -> Result<String> {
        EtcdOptions::parse(&[e.to_owned()]).map(|o| o.endpoints[0].clone())
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            one("127.0.0.1:2379").ok().as_deref(),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(one("http://a:1/").ok().as_deref(), Some("http://a:1"));
        assert_eq!(one("HTTPS://a").ok().as_deref(), Some("https://a:2379"));
        assert_eq!(one("[::1]:7").ok().as_deref(), Some("http://[::1]:7"));
        for bad in [
            "",
            "redis://a:1",
            "a:0",
            "a:x",
            "http://",
            "http://a:1/x",
            "::1",
        ] {
            let err = one(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("endpoints "), "{bad}: {err}");
        }
        assert!(EtcdOptions::parse(&[]).is_err());
    }

    #[test]
    fn leases_are_whole_seconds_within_bounds() {
        let o = EtcdOptions::parse(&["a:1".into()]).unwrap();
        assert_eq!(o.lease, Duration::from_secs(30));
        assert_eq!(
            o.clone().lease(2_500.0).unwrap().lease,
            Duration::from_secs(3)
        );
        assert_eq!(
            o.clone().lease(2_000.0).unwrap().lease,
            Duration::from_secs(2)
        );
        let low = o.clone().lease(1_999.0).err().unwrap().to_string();
        assert!(low.starts_with("leaseMs ") && low.contains("2000"), "{low}");
        let high = o.clone().lease(86_400_001.0).err().unwrap().to_string();
        assert!(high.contains("86400000"), "{high}");
        assert!(o.clone().lease(f64::NAN).is_err());
        assert!(o.clone().op_timeout(0.0).is_err());
        assert_eq!(
            request_lease(Duration::from_millis(2_001)).unwrap(),
            Duration::from_secs(3)
        );
        assert!(request_lease(Duration::from_millis(500)).is_err());
    }

    #[test]
    fn tls_needs_https_and_pairs() {
        let o = EtcdOptions::parse(&["a:1".into()]).unwrap();
        let cert_only = TlsPem {
            cert: Some("x".into()),
            ..TlsPem::default()
        };
        assert!(o.clone().tls(cert_only).is_err());
        let bad_ca = TlsPem {
            ca: Some(vec!["nope".into()]),
            ..TlsPem::default()
        };
        assert!(o.clone().tls(bad_ca).is_err());
        let plain = o.clone().tls(TlsPem::default()).unwrap();
        assert!(plain.check().is_err(), "TLS over http:// endpoints");
        let mixed = EtcdOptions::parse(&["https://a:1".into(), "b:2".into()]).unwrap();
        assert!(mixed.check().is_err());
    }
}

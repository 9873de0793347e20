//! Validated options shared by every backend: lock names, wait timeouts, counts.
//!
//! Validation lives here so that every binding reports bad input with the same words.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// The largest finite `timeoutMs` accepted (the same bound as Node's timers, about 24.8 days).
pub const MAX_TIMEOUT_MS: f64 = 2_147_483_647.0;

/// The largest semaphore `maxCount` accepted.
pub const MAX_SEMAPHORE_COUNT: u32 = 1_000_000;

/// How long an acquire may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Wait until granted (or cancelled).
    Forever,
    /// One attempt, no waiting.
    Zero,
    /// Wait at most this long.
    After(Duration),
}

impl Timeout {
    /// Parses a JavaScript-style timeout: `None` (undefined) or `+Infinity` waits forever,
    /// `0` tries once, a positive finite number of milliseconds bounds the wait.
    pub fn from_ms(ms: Option<f64>) -> Result<Self> {
        let Some(ms) = ms else {
            return Ok(Timeout::Forever);
        };
        if ms.is_nan() {
            return Err(Error::invalid(
                "timeoutMs",
                "must be a number of milliseconds, got NaN",
            ));
        }
        if ms < 0.0 {
            return Err(Error::invalid(
                "timeoutMs",
                format!("must not be negative, got {ms}"),
            ));
        }
        if ms == f64::INFINITY {
            return Ok(Timeout::Forever);
        }
        if ms > MAX_TIMEOUT_MS {
            return Err(Error::invalid(
                "timeoutMs",
                format!(
                    "must be at most {MAX_TIMEOUT_MS} (leave it undefined to wait forever), got {ms}"
                ),
            ));
        }
        if ms == 0.0 {
            return Ok(Timeout::Zero);
        }
        // Fractions of a millisecond round up so that a tiny positive timeout still waits.
        Ok(Timeout::After(Duration::from_micros(
            (ms * 1000.0).ceil() as u64
        )))
    }

    /// The instant the wait ends, measured on the monotonic clock from `start`.
    pub fn deadline(self, start: Instant) -> Option<Instant> {
        match self {
            Timeout::Forever => None,
            Timeout::Zero => Some(start),
            Timeout::After(d) => Some(start + d),
        }
    }
}

/// The longest lock name, in UTF-8 bytes. Names are identifiers: a longer one is almost always
/// a value passed by mistake (a document, a serialized object), and Redis keys, lock file names
/// and messages carry the name.
pub const MAX_NAME_BYTES: usize = 1024;

/// Checks a lock name: any non-empty string of at most [`MAX_NAME_BYTES`] bytes is a name.
/// Backends map names to their own key space (file names, advisory keys, Redis keys) without
/// ever making two names collide.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("name", "must be a non-empty string"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(
            "name",
            format!(
                "must be at most {MAX_NAME_BYTES} bytes in UTF-8, got {} bytes",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a semaphore's `maxCount`: a whole number from 1 to [`MAX_SEMAPHORE_COUNT`].
pub fn validate_max_count(max_count: f64) -> Result<u32> {
    if !(max_count.is_finite() && max_count.fract() == 0.0) {
        return Err(Error::invalid(
            "maxCount",
            format!("must be a whole number, got {max_count}"),
        ));
    }
    if max_count < 1.0 || max_count > f64::from(MAX_SEMAPHORE_COUNT) {
        return Err(Error::invalid(
            "maxCount",
            format!("must be from 1 to {MAX_SEMAPHORE_COUNT}, got {max_count}"),
        ));
    }
    Ok(max_count as u32)
}

/// Validates how many permits of a semaphore with `max_count` permits one acquire takes: a
/// whole number from 1 to `max_count` (`None`, undefined in JS, is 1).
pub fn validate_permits(permits: Option<f64>, max_count: u32) -> Result<u32> {
    let Some(permits) = permits else {
        return Ok(1);
    };
    if !(permits.is_finite() && permits.fract() == 0.0) {
        return Err(Error::invalid(
            "permits",
            format!("must be a whole number, got {permits}"),
        ));
    }
    if permits < 1.0 || permits > f64::from(max_count) {
        return Err(Error::invalid(
            "permits",
            format!("must be from 1 to the semaphore's maxCount {max_count}, got {permits}"),
        ));
    }
    Ok(permits as u32)
}

/// Parses a duration option in milliseconds that must be a positive whole number no larger than `max`.
pub fn positive_ms(argument: &'static str, ms: f64, max: f64) -> Result<Duration> {
    if !(ms.is_finite() && ms.fract() == 0.0 && ms >= 1.0 && ms <= max) {
        return Err(Error::invalid(
            argument,
            format!("must be a whole number of milliseconds from 1 to {max}, got {ms}"),
        ));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// The `tls` option of the network backends (MySQL, Redis, etcd), as PEM text: what each
/// backend's options take, whatever its TLS library makes of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPem {
    /// Certificates to trust instead of the default roots.
    pub ca: Option<Vec<String>>,
    /// A client certificate (chain), for servers that check clients; goes with `key`.
    pub cert: Option<String>,
    /// The client certificate's private key.
    pub key: Option<String>,
}

/// The shortest lease accepted (`leaseMs`): below it a renewal cannot reliably land in time.
pub const MIN_LEASE_MS: f64 = 100.0;

/// Parses a lease in milliseconds: a whole number from [`MIN_LEASE_MS`] to [`MAX_TIMEOUT_MS`].
pub fn lease_ms(ms: f64) -> Result<Duration> {
    if ms.is_finite() && ms > 0.0 && ms < MIN_LEASE_MS {
        return Err(Error::invalid(
            "leaseMs",
            format!("must be at least {MIN_LEASE_MS} ms so renewals can land in time, got {ms}"),
        ));
    }
    positive_ms("leaseMs", ms, MAX_TIMEOUT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_forms() {
        assert_eq!(Timeout::from_ms(None).ok(), Some(Timeout::Forever));
        assert_eq!(
            Timeout::from_ms(Some(f64::INFINITY)).ok(),
            Some(Timeout::Forever)
        );
        assert_eq!(Timeout::from_ms(Some(0.0)).ok(), Some(Timeout::Zero));
        assert_eq!(
            Timeout::from_ms(Some(1500.0)).ok(),
            Some(Timeout::After(Duration::from_millis(1500)))
        );
        assert_eq!(
            Timeout::from_ms(Some(0.25)).ok(),
            Some(Timeout::After(Duration::from_micros(250)))
        );
    }

    #[test]
    fn bad_timeouts_name_the_argument() {
        for bad in [f64::NAN, -1.0, f64::NEG_INFINITY, 3e9] {
            let err = Timeout::from_ms(Some(bad))
                .err()
                .map(|e| (e.code(), e.to_string()));
            let (code, msg) = err.unwrap_or_default();
            assert_eq!(code, "INVALID_ARGUMENT", "{bad}");
            assert!(msg.starts_with("timeoutMs "), "{msg}");
        }
    }

    #[test]
    fn deadlines_follow_the_timeout() {
        let now = Instant::now();
        assert_eq!(Timeout::Forever.deadline(now), None);
        assert_eq!(Timeout::Zero.deadline(now), Some(now));
        assert_eq!(
            Timeout::After(Duration::from_secs(1)).deadline(now),
            Some(now + Duration::from_secs(1))
        );
    }

    #[test]
    fn names_and_counts() {
        assert!(validate_name("").is_err());
        assert!(validate_name("漢字 / .. \0 anything").is_ok());
        assert_eq!(validate_max_count(4.0).ok(), Some(4));
        for bad in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY, 2e6] {
            assert!(validate_max_count(bad).is_err(), "{bad}");
        }
        assert!(positive_ms("leaseMs", 0.0, 1e9).is_err());
        assert_eq!(
            positive_ms("leaseMs", 30_000.0, 1e9).ok(),
            Some(Duration::from_secs(30))
        );
    }
}

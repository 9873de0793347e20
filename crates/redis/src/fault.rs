//! What a failure of Redis looks like to distlock: fred's errors and the servers' error replies
//! classified once into core's [`Fault`] (may a retry cure it, which Redis error prefix), and
//! replies shown as messages show them.

use std::time::Duration;

use distlock_core::{Cause, Fault};
use fred::error::{Error, ErrorKind};
use fred::types::Value;

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
pub fn redis_prefix(detail: &str) -> Option<String> {
    detail
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| REDIS_PREFIXES.contains(w))
        .map(str::to_owned)
}

/// A fault described by `message`, with the Redis error prefix found in it as its cause.
pub fn fault(message: String, transient: bool) -> Fault {
    let cause = Cause {
        redis: redis_prefix(&message),
        ..Cause::default()
    };
    Fault::new(message, transient).with_cause(cause)
}

/// Why a command to one server failed, as a sentence naming the server.
pub fn describe(label: &str, timeout: Duration, e: &Error) -> String {
    match e.kind() {
        ErrorKind::Timeout => format!("{label} did not answer within {} ms", timeout.as_millis()),
        _ => {
            // fred passes OS errors on as Rust `Debug` text: show their words instead.
            let (details, _) = distlock_core::error::os_error_text(e.details());
            if details.contains("WRONGTYPE") {
                format!("{label}: a key of this lock holds another Redis type ({details})")
            } else {
                format!("{label}: {details}")
            }
        }
    }
}

/// Whether trying again later can help: connection trouble and the server's own transient
/// refusals, not a wrong password, a key of another type or a script error.
pub fn transient(e: &Error) -> bool {
    let details = e.details();
    const BUSY: [&str; 7] = [
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "NOREPLICAS",
    ];
    if BUSY.iter().any(|p| details.starts_with(p)) {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Sentinel
    )
}

/// Whether a connection error is one no reconnect cures (a wrong password, TLS, a bad URL).
pub fn refusal(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Auth | ErrorKind::Tls | ErrorKind::Config | ErrorKind::Url
    ) || e.details().contains("WRONGPASS")
        || e.details().contains("NOAUTH")
}

/// A reply as messages show it: RESP's shapes, not Rust's `Debug` of fred's types.
pub fn show(v: &Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_carries_the_redis_prefix_it_names() {
        let f = fault(
            "a:1: WRONGPASS invalid username-password pair".into(),
            false,
        );
        assert_eq!(f.cause.redis.as_deref(), Some("WRONGPASS"));
        assert!(!f.transient);
        assert_eq!(fault("a:1: reset".into(), true).cause.redis, None);
        // A whole word only: "BUSYKEYS" is not "BUSYKEY", "ERRORS" not "ERR".
        assert_eq!(redis_prefix("ERRORS BUSYKEYS"), None);
    }

    #[test]
    fn fred_errors_are_classified_once() {
        assert!(transient(&Error::new(ErrorKind::IO, "reset")));
        assert!(transient(&Error::new(
            ErrorKind::Unknown,
            "LOADING dataset"
        )));
        assert!(!transient(&Error::new(ErrorKind::Auth, "WRONGPASS")));
        assert!(refusal(&Error::new(ErrorKind::Unknown, "NOAUTH needed")));
        assert!(!refusal(&Error::new(ErrorKind::IO, "reset")));
        let e = Error::new(ErrorKind::Timeout, "late");
        assert_eq!(
            describe("a:1", Duration::from_millis(300), &e),
            "a:1 did not answer within 300 ms"
        );
    }
}

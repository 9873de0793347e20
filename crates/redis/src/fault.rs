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
            } else if details.starts_with("Failed to route") {
                format!("{label}: no open connection to send the command on")
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
    // fred's "Failed to route command." (kind `Unknown`): no connection to send it on yet.
    if BUSY.iter().any(|p| details.starts_with(p)) || details.starts_with("Failed to route") {
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

/// Whether a connection error is one no reconnect cures (a wrong password, TLS, a bad URL, a
/// server certificate that is not trusted).
pub fn refusal(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Auth | ErrorKind::Tls | ErrorKind::Config | ErrorKind::Url
    ) || e.details().contains("WRONGPASS")
        || e.details().contains("NOAUTH")
        || e.details().contains("InvalidCertificate")
}

/// The hint of a URL whose scheme asked for TLS, for a server that does not seem to speak it.
pub fn tls_hint(label: &str) -> String {
    format!("the URL is rediss://: is TLS enabled on {label}?")
}

/// A failed connection to `label` in words, for the cause of later messages: the OS error's
/// words, and when the server never answered yet (`first`) and the failure looks like a URL
/// whose scheme does not match the server, a hint. A server without TLS is silent at a TLS
/// handshake, or answers in plain text, or closes; a server that speaks only TLS resets a
/// connection that does not open with a handshake.
pub fn connection_error(
    label: &str,
    tls: bool,
    first: bool,
    timeout: Duration,
    e: &Error,
) -> String {
    let (mut words, errno) = distlock_core::error::os_error_text(e.details());
    if *e.kind() == ErrorKind::Timeout {
        words = format!("no answer within {} ms", timeout.as_millis());
    } else if tls && words.contains("InvalidContentType") {
        words = String::from("the answer is not TLS");
    } else if let Some(why) = words
        .strip_prefix("InvalidCertificate(")
        .and_then(|w| w.strip_suffix(')'))
        .map(str::to_owned)
    {
        // rustls's error, as its own `Display` words it.
        words = format!("invalid peer certificate: {why}");
        if why == "UnknownIssuer" {
            words.push_str(" (is the CA that signed it in tls.ca?)");
        }
    }
    let looks_plain = || {
        errno.is_none()
            && !matches!(e.kind(), ErrorKind::Auth)
            && !words.contains("failed to lookup")
            && !e.details().contains("Certificate")
            // A Redis error reply came through: the server speaks TLS.
            && redis_prefix(&words).is_none()
    };
    let reset = errno.map(|n| std::io::Error::from_raw_os_error(n).kind())
        == Some(std::io::ErrorKind::ConnectionReset);
    let hint = match tls {
        _ if !first => None,
        true => looks_plain().then(|| tls_hint(label)),
        false => reset.then(|| format!("the URL is redis://: does {label} want TLS (rediss://)?")),
    };
    match hint {
        Some(h) => format!("{words}; {h}"),
        None => words,
    }
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
    fn a_scheme_that_does_not_match_the_server_gets_a_hint() {
        let t = Duration::from_millis(1000);
        let words = |tls, first, e: &Error| connection_error("h:1", tls, first, t, e);
        let silent = Error::new(ErrorKind::Timeout, "Request timed out.");
        assert_eq!(
            words(true, true, &silent),
            "no answer within 1000 ms; the URL is rediss://: is TLS enabled on h:1?"
        );
        let plain_answer = Error::new(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }",
        );
        assert_eq!(
            words(true, true, &plain_answer),
            "the answer is not TLS; the URL is rediss://: is TLS enabled on h:1?"
        );
        assert!(
            words(true, true, &Error::new(ErrorKind::IO, "tls handshake eof"))
                .ends_with("enabled on h:1?")
        );
        let reset = Error::new(
            ErrorKind::IO,
            "Os { code: 104, kind: ConnectionReset, message: \"Connection reset by peer\" }",
        );
        assert_eq!(
            words(false, true, &reset),
            "Connection reset by peer (os error 104); the URL is redis://: does h:1 want TLS (rediss://)?"
        );
        // Not for a server that answered before, nor for failures a scheme does not explain.
        assert_eq!(words(true, false, &silent), "no answer within 1000 ms");
        assert_eq!(
            words(false, false, &reset),
            "Connection reset by peer (os error 104)"
        );
        let refused = Error::new(
            ErrorKind::IO,
            "Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
        );
        assert_eq!(
            words(true, true, &refused),
            "Connection refused (os error 111)"
        );
        let untrusted = Error::new(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
        );
        assert_eq!(
            words(true, true, &untrusted),
            "invalid peer certificate: UnknownIssuer (is the CA that signed it in tls.ca?)"
        );
        assert!(refusal(&untrusted));
        let login = Error::new(ErrorKind::Unknown, "NOAUTH Authentication required.");
        assert_eq!(words(true, true, &login), "NOAUTH Authentication required.");
        assert_eq!(words(false, true, &silent), "no answer within 1000 ms");
    }

    #[test]
    fn fred_errors_are_classified_once() {
        assert!(transient(&Error::new(ErrorKind::IO, "reset")));
        assert!(transient(&Error::new(
            ErrorKind::Unknown,
            "LOADING dataset"
        )));
        assert!(!transient(&Error::new(ErrorKind::Auth, "WRONGPASS")));
        assert!(transient(&Error::new(
            ErrorKind::Unknown,
            "Failed to route command."
        )));
        assert!(refusal(&Error::new(ErrorKind::Unknown, "NOAUTH needed")));
        assert!(!refusal(&Error::new(ErrorKind::IO, "reset")));
        let e = Error::new(ErrorKind::Timeout, "late");
        assert_eq!(
            describe("a:1", Duration::from_millis(300), &e),
            "a:1 did not answer within 300 ms"
        );
    }
}

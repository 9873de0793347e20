//! How the PostgreSQL backend reads its driver's errors: the words a user sees (without
//! credentials), the SQLSTATE, and which errors a reconnect can cure. Everything after that
//! (riding a fault out, the error at the deadline) is core's [`Fault`] and `Patience`.

pub(crate) use distlock_core::fault::io_transient;
use distlock_core::{Cause, Fault};

/// Describes a driver error with its causes, without credentials (tokio-postgres never puts the
/// password in an error).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    distlock_core::error::with_sources(e)
}

/// A fault with `message` (whose SQLSTATE, if any, is the `(SQLSTATE xxxxx)` that [`describe`]
/// appends to a server's error).
pub(crate) fn fault(message: String, transient: bool) -> Fault {
    let cause = Cause {
        sqlstate: sqlstate_in(&message),
        ..Cause::default()
    };
    Fault::new(message, transient).with_cause(cause)
}

/// The facts of a failure on `server` whose message came from [`describe`].
pub(crate) fn cause_of(server: &str, message: &str) -> Cause {
    fault(message.to_owned(), false).cause_on(Some(server))
}

fn sqlstate_in(message: &str) -> Option<String> {
    let at = message.rfind("(SQLSTATE ")?;
    let code = message[at + "(SQLSTATE ".len()..].get(..5)?;
    code.chars()
        .all(|c| c.is_ascii_alphanumeric())
        .then(|| code.to_owned())
}

/// Whether a driver error is one a reconnect can cure. This is the one classification of the
/// backend, the same before the first connection as after it (a waiter rides out trouble
/// within its budget):
///
/// - a server error: by its SQLSTATE ([`transient_sqlstate`]);
/// - the connection closed, timed out or broke mid-message (no source): transient;
/// - an I/O error (connect, DNS, read, write, the TLS handshake): by [`io_transient`];
/// - anything else the driver raised before the server answered (an invalid connection
///   string or configuration, a password missing, an unsupported authentication method, a
///   server that does not speak TLS when TLS is required, a TLS host name that is not one):
///   not transient.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return transient_sqlstate(code.code());
    }
    if e.is_closed() {
        return true;
    }
    match std::error::Error::source(e) {
        None => true,
        Some(s) => s.downcast_ref::<std::io::Error>().is_some_and(io_transient),
    }
}

/// Whether an error with SQLSTATE `code` is one a reconnect can cure: a connection exception
/// (class 08), the server shutting down, restarting or out of connections, or our statement
/// cancelled by someone else. Refusals (authentication 28P01/28000, an unknown database
/// 3D000, permissions, syntax) are not.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "57014")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_a_reconnect_cures() {
        for c in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "57014",
        ] {
            assert!(transient_sqlstate(c), "{c}");
        }
        for c in [
            "28P01", "28000", "3D000", "42501", "42601", "55P03", "40P01",
        ] {
            assert!(!transient_sqlstate(c), "{c}");
        }
    }

    #[test]
    fn io_errors_a_retry_cures() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::TimedOut,
            ErrorKind::HostUnreachable,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(io_transient(&Error::from(kind)), "{kind:?}");
        }
        // What the resolver says of a name that does not exist (yet), and of a resolver that
        // could not answer.
        let dns = Error::other("failed to lookup address information: Name or service not known");
        assert!(io_transient(&dns));
        let tls = Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(!io_transient(&tls), "a certificate no CA vouches for");
        assert!(!io_transient(&Error::new(
            ErrorKind::InvalidInput,
            "bad address"
        )));
    }

    #[test]
    fn the_sqlstate_is_read_from_the_message() {
        let c = cause_of("db:5432", "ERROR: no (SQLSTATE 42501)");
        assert_eq!(c.sqlstate.as_deref(), Some("42501"));
        assert_eq!(c.server.as_deref(), Some("db:5432"));
        assert_eq!(cause_of("db:5432", "reset").sqlstate, None);
    }
}

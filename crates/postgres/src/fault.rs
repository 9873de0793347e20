//! How the PostgreSQL backend reads its driver's errors: the words a user sees (without
//! credentials), the SQLSTATE, and which errors a reconnect can cure. Everything after that
//! (riding a fault out, the error at the deadline) is core's [`Fault`] and `Patience`.

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

/// Whether a driver error is one a reconnect can cure: the connection broke (I/O, closed,
/// reset), the server is shutting down, starting up or out of connections, or our statement
/// was cancelled by someone else.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    transient_sqlstate(e.code().map(|c| c.code()))
}

/// Whether an error with SQLSTATE `code` (`None`: no server error, the connection broke) is
/// one a reconnect can cure: a connection exception (class 08), the server shutting down,
/// restarting or out of connections, or our statement cancelled by someone else. Refusals
/// (authentication, permissions, syntax) are not.
fn transient_sqlstate(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "57014")
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_a_reconnect_cures() {
        for c in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "57014",
        ] {
            assert!(transient_sqlstate(Some(c)), "{c}");
        }
        for c in ["28P01", "42501", "42601", "55P03", "40P01"] {
            assert!(!transient_sqlstate(Some(c)), "{c}");
        }
        assert!(transient_sqlstate(None), "a broken connection");
    }

    #[test]
    fn the_sqlstate_is_read_from_the_message() {
        let c = cause_of("db:5432", "ERROR: no (SQLSTATE 42501)");
        assert_eq!(c.sqlstate.as_deref(), Some("42501"));
        assert_eq!(c.server.as_deref(), Some("db:5432"));
        assert_eq!(cause_of("db:5432", "reset").sqlstate, None);
    }
}

//! The one failure type backends report while they work: what went wrong, whether trying
//! again may cure it, and the machine-readable facts behind it.

use crate::error::{Cause, Error};

/// A failure of one attempt, a statement or a connection: a server error, an unreachable
/// server, a broken connection.
///
/// Backends classify their client library's errors into this once (which SQLSTATEs, Redis
/// prefixes or gRPC codes a retry can cure is backend knowledge); everything after that (riding
/// it out, the error a user sees) is core's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What failed, in words, naming the server or the statement where known.
    pub message: String,
    /// Whether trying again may cure it: the connection broke, the server is restarting or out
    /// of connections, the request timed out. Refusals (a bad password, a missing permission,
    /// a malformed request) are not transient.
    pub transient: bool,
    /// The facts behind it, for `LockBackendError`'s fields.
    pub cause: Cause,
}

impl Fault {
    /// A fault that trying again may cure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(message, true)
    }

    /// A fault that trying again will not cure.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(message, false)
    }

    /// A fault with `message`, transient or not, with no facts yet.
    pub fn new(message: impl Into<String>, transient: bool) -> Self {
        Self {
            message: message.into(),
            transient,
            cause: Cause::default(),
        }
    }

    /// The same fault with `cause` as its facts.
    pub fn with_cause(mut self, cause: Cause) -> Self {
        self.cause = cause;
        self
    }

    /// The facts, with `server` filled in where the fault did not name one, the message as the
    /// cause's text where it has none, and an OS error number found in the text.
    pub fn cause_on(&self, server: Option<&str>) -> Cause {
        let mut cause = self.cause.clone();
        if cause.server.is_none() {
            cause.server = server.map(str::to_owned);
        }
        if cause.message.is_none() {
            cause.message = Some(self.message.clone());
        }
        cause.with_os_error_in(&self.message)
    }

    /// The backend error a user sees for this fault on `server`.
    pub fn into_error(self, backend: &'static str, server: Option<&str>) -> Error {
        let cause = self.cause_on(server);
        Error::backend(backend, self.message, cause)
    }
}

/// Whether an I/O error of a connection (its TCP connect, name lookup, TLS handshake, reads
/// and writes) is one a retry can cure: refused, reset, timed out, unreachable, a name that
/// does not resolve (yet: a DNS record can appear later) are; a TLS verification or
/// configuration error (`InvalidData`: tokio-rustls's kind for rustls's refusals) and an
/// address the configuration cannot form (`InvalidInput`, `Unsupported`) are not. The SQL
/// backends classify their drivers' I/O errors by it.
pub fn io_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    !matches!(
        e.kind(),
        ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::Unsupported
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_server_and_keeps_the_facts() {
        let f = Fault::transient("cannot connect: Connection refused (os error 111)").with_cause(
            Cause {
                sqlstate: Some("08006".into()),
                ..Cause::default()
            },
        );
        let Error::Backend {
            backend,
            message,
            cause,
        } = f.clone().into_error("postgres", Some("db:5432"))
        else {
            panic!("not a backend error");
        };
        assert_eq!(backend, "postgres");
        assert_eq!(message, f.message);
        assert_eq!(cause.server.as_deref(), Some("db:5432"));
        assert_eq!(cause.sqlstate.as_deref(), Some("08006"));
        assert_eq!(cause.errno, Some(111));
        assert_eq!(cause.syscall, Some("connect"));
        assert_eq!(cause.message.as_deref(), Some(f.message.as_str()));
    }

    #[test]
    fn a_server_the_fault_names_is_kept() {
        let f = Fault::fatal("WRONGPASS").with_cause(Cause {
            server: Some("a:1".into()),
            ..Cause::default()
        });
        assert!(!f.transient);
        assert_eq!(f.cause_on(Some("b:2")).server.as_deref(), Some("a:1"));
    }
}

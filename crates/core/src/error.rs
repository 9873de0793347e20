//! The one error type of distlock, with stable codes that every binding maps the same way.

use std::fmt;

/// What a lock operation was about: the backend, the kind of lock and its name.
///
/// Every error message names its target so that a log line is enough to find the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The backend, e.g. `file`, `postgres`, `redis`, `memory`.
    pub backend: &'static str,
    /// The kind of primitive: `lock`, `reader-writer lock` or `semaphore`.
    pub kind: &'static str,
    /// The user's name for the lock, as given.
    pub name: String,
}

impl Target {
    /// A target for the given backend, kind and name.
    pub fn new(backend: &'static str, kind: &'static str, name: impl Into<String>) -> Self {
        Self {
            backend,
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?}", self.backend, self.kind, self.name)
    }
}

/// Every way a distlock operation can fail.
///
/// A lock that is merely busy is not an error: `try` operations return `None` for it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bounded wait ran out before the lock was granted.
    #[error("timed out after {waited_ms} ms waiting for {target}")]
    Timeout {
        /// The lock waited for.
        target: Target,
        /// How long the caller waited, in milliseconds.
        waited_ms: u64,
    },
    /// The caller cancelled the wait; nothing is held.
    #[error("the wait for {target} was cancelled")]
    Cancelled {
        /// The lock waited for.
        target: Target,
    },
    /// A held lock is no longer held (lease expired, session dropped, provider closed).
    #[error("{target} was lost: {reason}")]
    Lost {
        /// The lock that was lost.
        target: Target,
        /// Why it was lost.
        reason: String,
    },
    /// The backend could not be reached or answered with an error. Never means "busy".
    #[error("{backend} backend error: {message}")]
    Backend {
        /// The backend that failed.
        backend: &'static str,
        /// What failed, naming the lock or server where known.
        message: String,
        /// The machine-readable facts behind it, where known.
        cause: Box<Cause>,
    },
    /// An operating-system I/O error, with the path it concerned.
    #[error("{backend} backend I/O error on {path}: {source}")]
    Io {
        /// The backend that failed.
        backend: &'static str,
        /// The file or directory involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// The system call that failed, where the backend knows it (`open`, `flock`, …).
        syscall: Option<&'static str>,
    },
    /// An argument had a value outside what is allowed; the message names it.
    #[error("{argument} {message}")]
    InvalidArgument {
        /// The argument's name as the user wrote it, e.g. `timeoutMs`.
        argument: &'static str,
        /// What is wrong with it and what is allowed.
        message: String,
    },
    /// The provider was closed before or during the operation.
    #[error("the {backend} lock provider is closed{detail}")]
    Closed {
        /// The backend whose provider is closed.
        backend: &'static str,
        /// Optional detail, starting with a separator, e.g. `; cannot acquire "x"`.
        detail: String,
    },
}

/// What is known, in machine-readable form, about the failure behind a backend error: for
/// `LockBackendError`'s fields. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cause {
    /// The server that failed, as messages name it (never with a password).
    pub server: Option<String>,
    /// The operating-system error number (positive, as the OS reports it).
    pub errno: Option<i32>,
    /// The system call or operation that failed, e.g. `open`, `connect`.
    pub syscall: Option<&'static str>,
    /// The file involved.
    pub path: Option<String>,
    /// PostgreSQL's SQLSTATE, e.g. `28P01`.
    pub sqlstate: Option<String>,
    /// The prefix of a Redis error reply, e.g. `WRONGPASS`, `NOAUTH`, `READONLY`.
    pub redis: Option<String>,
    /// The underlying error's own text.
    pub message: Option<String>,
}

impl Cause {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Cause::default()
    }

    /// Fills `errno` (and `syscall`, for a failed connection) from an OS error that a driver
    /// only passed on as text (see [`os_error_text`]).
    pub fn with_os_error_in(mut self, text: &str) -> Self {
        if self.errno.is_some() {
            return self;
        }
        if let (_, Some(errno)) = os_error_text(text) {
            self.errno = Some(errno);
            if text.contains("cannot connect") || text.contains("cannot reach") {
                self.syscall.get_or_insert("connect");
            }
        } else if let Some(errno) = dns_error(text) {
            self.errno = Some(errno);
            self.syscall = Some("getaddrinfo");
        }
        self
    }
}

/// libuv's number for a name-resolution failure that the system resolver reported in words
/// (Rust's `lookup_host` keeps only the text of `getaddrinfo`'s error): `EAI_NONAME` (3008,
/// which Node reports as `ENOTFOUND`) for a name that does not exist, `EAI_AGAIN` (3001) for
/// a resolver that could not answer.
fn dns_error(text: &str) -> Option<i32> {
    if !text.contains("failed to lookup address information") {
        return None;
    }
    if text.contains("Temporary failure in name resolution") {
        Some(3001)
    } else {
        Some(3008)
    }
}

/// An error in words: its own text, then the text of each source it does not already contain,
/// joined by ": ". Client libraries often keep the detail (which option, which port) only in a
/// source, under a top-level text such as "invalid connection string".
pub fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Rewrites the OS errors that drivers pass on as Rust text into plain words, and returns the
/// first one's number: `Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }`
/// (an `io::Error` shown with `Debug`) becomes `Connection refused (os error 111)`, its
/// `Display` form, which is left as it is.
pub fn os_error_text(text: &str) -> (String, Option<i32>) {
    let mut out = String::with_capacity(text.len());
    let mut errno = None;
    let mut rest = text;
    while let Some(at) = rest.find("Os { code: ") {
        let tail = &rest[at + "Os { code: ".len()..];
        let code: String = tail.chars().take_while(char::is_ascii_digit).collect();
        let message = tail
            .find("message: \"")
            .map(|m| &tail[m + "message: \"".len()..])
            .and_then(|m| m.find("\" }").map(|end| &m[..end]));
        let (Ok(n), Some(message)) = (code.parse::<i32>(), message) else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str(&format!("{message} (os error {n})"));
        errno.get_or_insert(n);
        rest = &tail[tail.find("\" }").map_or(tail.len(), |e| e + 3)..];
    }
    out.push_str(rest);
    // `Custom { kind: Uncategorized, error: "failed to lookup …" }`: an io::Error without an OS
    // number, shown with `Debug`; its words are the inner text. An inner error that is not a
    // string (`error: InvalidCertificate(UnknownIssuer)`, a TLS library's) is kept as it is shown.
    while let Some(at) = out.find("Custom { kind: ") {
        let Some(open) = out[at..].find("error: ").map(|o| at + o + "error: ".len()) else {
            break;
        };
        let quoted = out[open..].starts_with('"');
        let end = if quoted {
            out[open + 1..]
                .find("\" }")
                .map(|c| (open + 1, open + 1 + c, 3))
        } else {
            debug_end(&out[open..]).map(|c| (open, open + c, 2))
        };
        let Some((from, to, tail)) = end else {
            break;
        };
        let inner = out[from..to].to_string();
        out.replace_range(at..to + tail, &inner);
    }
    if errno.is_none()
        && let Some(at) = out.find("(os error ")
    {
        let digits: String = out[at + "(os error ".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        errno = digits.parse().ok();
    }
    (out, errno)
}

/// Where the `Debug` text of a value that opens `text` ends, before the ` }` that closes the
/// struct around it: the first ` }` outside any bracket the value opened.
fn debug_end(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth > 0 => depth -= 1,
            ' ' if depth == 0 && text[i..].starts_with(" }") => return Some(i),
            _ => {}
        }
    }
    None
}

impl Error {
    /// A backend error with `message` and what is known of its `cause`.
    pub fn backend(backend: &'static str, message: impl Into<String>, cause: Cause) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            cause: Box::new(cause),
        }
    }

    /// The machine-readable facts behind this error: a backend error's cause, or an I/O error's
    /// OS error and path.
    pub fn cause(&self) -> Cause {
        match self {
            Error::Backend { cause, .. } => (**cause).clone(),
            Error::Io {
                path,
                source,
                syscall,
                ..
            } => Cause {
                errno: source.raw_os_error(),
                syscall: *syscall,
                path: Some(path.clone()),
                message: Some(source.to_string()),
                ..Cause::default()
            },
            _ => Cause::default(),
        }
    }

    /// The stable code of this error: part of the public contract, never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Timeout { .. } => "TIMEOUT",
            Error::Cancelled { .. } => "CANCELLED",
            Error::Lost { .. } => "LOST",
            Error::Backend { .. } => "BACKEND",
            Error::Io { .. } => "IO",
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::Closed { .. } => "CLOSED",
        }
    }

    /// An [`Error::InvalidArgument`] for `argument`.
    pub fn invalid(argument: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            message: message.into(),
        }
    }

    /// An [`Error::Io`] for `path`, from the system call `syscall`.
    pub fn io_call(
        backend: &'static str,
        syscall: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        let mut err = Self::io(backend, path, source);
        if let Error::Io { syscall: call, .. } = &mut err {
            *call = Some(syscall);
        }
        err
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(
        backend: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            backend,
            path: path.as_ref().display().to_string(),
            source,
            syscall: None,
        }
    }
}

/// Result alias used across distlock.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_in_driver_text_become_plain_words_and_a_number() {
        let (text, errno) = os_error_text(
            "cannot reach 127.0.0.1:1 (Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" })",
        );
        assert_eq!(
            text,
            "cannot reach 127.0.0.1:1 (Connection refused (os error 111))"
        );
        assert_eq!(errno, Some(111));
        let (text, errno) =
            os_error_text("cannot connect to h:1: Connection refused (os error 111)");
        assert_eq!(
            text,
            "cannot connect to h:1: Connection refused (os error 111)"
        );
        assert_eq!(errno, Some(111));
        assert_eq!(
            os_error_text("WRONGPASS invalid"),
            ("WRONGPASS invalid".into(), None)
        );
        let cause = Cause::default().with_os_error_in("cannot connect to h:1: x (os error 104)");
        assert_eq!((cause.errno, cause.syscall), (Some(104), Some("connect")));
    }

    #[test]
    fn name_resolution_failures_become_words_and_libuv_numbers() {
        let debug = "cannot reach nx.invalid:6379 (Custom { kind: Uncategorized, error: \"failed to lookup address information: Name or service not known\" })";
        let (text, errno) = os_error_text(debug);
        assert_eq!(
            text,
            "cannot reach nx.invalid:6379 (failed to lookup address information: Name or service not known)"
        );
        assert_eq!(errno, None);
        let cause = Cause::default().with_os_error_in(&text);
        assert_eq!(
            (cause.errno, cause.syscall),
            (Some(3008), Some("getaddrinfo"))
        );
        let cause = Cause::default().with_os_error_in(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        assert_eq!(cause.errno, Some(3001));
        assert_eq!(Cause::default().with_os_error_in("WRONGPASS").errno, None);
        // A TLS library's error inside: kept as it is shown, without the io::Error around it.
        let (text, _) = os_error_text(
            "cannot reach h:1 (Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) })",
        );
        assert_eq!(text, "cannot reach h:1 (InvalidCertificate(UnknownIssuer))");
        let (text, _) = os_error_text("x Custom { kind: Other, error: A { b: 1 } } y");
        assert_eq!(text, "x A { b: 1 } y");
    }

    #[test]
    fn codes_are_stable() {
        let t = Target::new("file", "lock", "a");
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::Timeout {
                    target: t.clone(),
                    waited_ms: 5,
                },
                "TIMEOUT",
            ),
            (Error::Cancelled { target: t.clone() }, "CANCELLED"),
            (
                Error::Lost {
                    target: t.clone(),
                    reason: "x".into(),
                },
                "LOST",
            ),
            (
                Error::Backend {
                    backend: "redis",
                    message: "down".into(),
                    cause: Default::default(),
                },
                "BACKEND",
            ),
            (Error::io("file", "/x", std::io::Error::other("boom")), "IO"),
            (
                Error::invalid("timeoutMs", "must not be negative"),
                "INVALID_ARGUMENT",
            ),
            (
                Error::Closed {
                    backend: "file",
                    detail: String::new(),
                },
                "CLOSED",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn messages_name_the_lock_and_backend() {
        let err = Error::Timeout {
            target: Target::new("file", "semaphore", "gpu"),
            waited_ms: 250,
        };
        assert_eq!(
            err.to_string(),
            "timed out after 250 ms waiting for file semaphore \"gpu\""
        );
        let err = Error::io(
            "file",
            "/nope/dir",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(err.to_string().contains("/nope/dir"), "{err}");
    }
}

//! What went wrong talking to etcd, and whether trying again can help.

use std::time::Duration;

use etcd_client::Error as EtcdError;
use tonic::Code;

/// A failed request: its description, and whether retrying cannot cure it (authentication,
/// permissions, a request etcd refuses as such).
#[derive(Clone, Debug)]
pub(crate) struct Trouble {
    pub message: String,
    pub fatal: bool,
    /// The endpoint that failed, where known.
    pub server: Option<String>,
}

impl Trouble {
    pub fn from_etcd(e: &EtcdError) -> Self {
        let fatal = match e {
            EtcdError::GRpcStatus(st) => matches!(
                st.code(),
                Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::Unimplemented
                    | Code::OutOfRange
            ),
            EtcdError::InvalidArgs(_)
            | EtcdError::InvalidUri(_)
            | EtcdError::InvalidMetadataValue(_)
            | EtcdError::Utf8Error(_) => true,
            _ => false,
        };
        Self {
            message: describe(e),
            fatal,
            server: None,
        }
    }

    pub fn timeout(bound: Duration) -> Self {
        Self::transient(format!("no answer within {} ms", bound.as_millis()))
    }

    pub fn transient(message: String) -> Self {
        Self {
            message,
            fatal: false,
            server: None,
        }
    }

    pub fn fatal(message: String) -> Self {
        Self {
            message,
            fatal: true,
            server: None,
        }
    }

    /// The same trouble, from endpoint `server`.
    pub fn at(mut self, server: &str) -> Self {
        self.server = Some(server.to_owned());
        self
    }
}

/// An etcd client error in words: the error, then its sources (a transport error's OS error).
pub(crate) fn describe(e: &EtcdError) -> String {
    let mut text = match e {
        EtcdError::GRpcStatus(st) => {
            let msg = st.message();
            if msg.is_empty() {
                format!("{:?}", st.code())
            } else {
                format!("{msg} ({:?})", st.code())
            }
        }
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    let (plain, _) = distlock_core::error::os_error_text(&text);
    plain
}

//! What went wrong talking to etcd, and whether trying again can help.

use std::time::Duration;

use tonic::Code;

use crate::grpc::Error as GrpcError;

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
    pub fn from_grpc(e: &GrpcError) -> Self {
        let fatal = match e {
            GrpcError::Status(st) => matches!(
                st.code(),
                Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::Unimplemented
                    | Code::OutOfRange
            ),
            GrpcError::Invalid(_) => true,
            GrpcError::Transport(_) => false,
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

/// A failed call in words: the error, then its sources (a transport error's OS error).
pub(crate) fn describe(e: &GrpcError) -> String {
    let (plain, _) = distlock_core::error::os_error_text(&distlock_core::error::with_sources(e));
    plain
}

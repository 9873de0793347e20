//! What went wrong talking to etcd, as core [`Fault`]s: which failures a retry may cure.

use std::time::Duration;

use distlock_core::Fault;
use tonic::Code;

use crate::grpc::Error as GrpcError;

/// A failed call as a fault. Not transient (retrying cannot cure it): authentication,
/// permissions, a request etcd refuses as such, and what this side refused before sending. The
/// message names the gRPC status code, as [`describe`] writes it.
pub(crate) fn fault(e: &GrpcError) -> Fault {
    let transient = match e {
        GrpcError::Status(st) => !matches!(
            st.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::Unimplemented
                | Code::OutOfRange
        ),
        GrpcError::Invalid(_) => false,
        GrpcError::Transport(_) => true,
    };
    Fault::new(describe(e), transient)
}

/// A request that got no answer within `bound`.
pub(crate) fn no_answer(bound: Duration) -> Fault {
    Fault::transient(format!("no answer within {} ms", bound.as_millis()))
}

/// `f`, from endpoint `server`.
pub(crate) fn at(mut f: Fault, server: &str) -> Fault {
    f.cause.server = Some(server.to_owned());
    f
}

/// A failed call in words: the error, then its sources (a transport error's OS error).
pub(crate) fn describe(e: &GrpcError) -> String {
    let (plain, _) = distlock_core::error::os_error_text(&distlock_core::error::with_sources(e));
    plain
}

//! The edges: wire protocols translated to and from the domain types. Each
//! edge maps errors to its protocol in one function.

pub mod envoy;
pub mod grpc;
pub mod http;
pub mod noop;

use crate::limiter::CheckError;

/// The one place check errors become gRPC statuses, for both gRPC APIs: bad
/// input names its field, a store that cannot answer is UNAVAILABLE (the
/// caller's failure policy decides), anything else is INTERNAL.
fn check_error_status(e: CheckError) -> tonic::Status {
    match e {
        CheckError::Invalid(e) => tonic::Status::invalid_argument(e.to_string()),
        CheckError::Store(e) if e.is_transient() => tonic::Status::unavailable(e.to_string()),
        CheckError::Store(e) => tonic::Status::internal(e.to_string()),
    }
}

/// The generated code, which moved to [`crate::pb`] so the client can use it
/// without the server; every `api::pb` path keeps working.
pub use crate::pb;

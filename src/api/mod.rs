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

/// Generated protobuf and gRPC code, kept apart from hand-written code.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations
)]
pub mod pb {
    /// `tollgate.v1`: tollgate's own API.
    pub mod tollgate {
        pub mod v1 {
            tonic::include_proto!("tollgate.v1");
        }
    }

    /// Envoy's rate-limit service API (a trimmed, wire-compatible copy).
    pub mod envoy {
        pub mod service {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.ratelimit.v3");
                }
            }
        }
        pub mod extensions {
            pub mod common {
                pub mod ratelimit {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                    }
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }

    /// Descriptors of every service above, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

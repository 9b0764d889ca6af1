//! The edges: wire protocols translated to and from the domain types. Each
//! edge maps errors to its protocol in one function.

pub mod grpc;

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

    /// Descriptors of every service above, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

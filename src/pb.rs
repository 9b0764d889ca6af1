//! Generated protobuf and gRPC code (`tollgate.v1` and Envoy's rate-limit
//! API), kept apart from hand-written code. Compiled with either the `server`
//! or the `client` feature; the server also reaches it as `api::pb`.
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
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");

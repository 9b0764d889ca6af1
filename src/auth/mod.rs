//! Who may call: bearer JWTs for the HTTP usage API ([`jwt`]) and API keys
//! for service-to-service calls ([`api_keys`]). TLS and mutual TLS on the
//! gRPC port are set up in [`crate::server`] from [`crate::config`].

pub mod api_keys;
pub mod jwt;

pub use api_keys::{ApiKey, ApiKeys, Refusal};
pub use jwt::{ADMIN_SCOPE, AuthError, JwtSettings, JwtVerifier, Principal};

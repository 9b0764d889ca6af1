//! API keys for service-to-service calls: `authorization: Bearer <key>` in
//! gRPC metadata (or the HTTP header for `POST /v1/check`), each key allowed
//! a configured set of calls. Health checks and reflection stay open so
//! orchestrators and `grpcurl` keep working.
//!
//! Keys are kept only as SHA-256 digests and looked up by digest, so the
//! comparison's timing says nothing about a key's bytes.

use std::collections::{HashMap, HashSet};
use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;

/// Every call a key can be allowed, by its short name.
pub const CALLS: [&str; 6] = [
    "CheckRateLimit",
    "TrackUsage",
    "TrackUsageBatch",
    "GetUsageSummary",
    "GetBilling",
    "ShouldRateLimit",
];

/// Services anyone may call: health and reflection.
const OPEN_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// One configured key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Who holds it, for logs.
    pub name: String,
    pub key: String,
    /// Short call names ([`CALLS`]) or `*` for all.
    pub allow: Vec<String>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or an unknown one: UNAUTHENTICATED / 401.
    Unauthenticated(&'static str),
    /// A known key not allowed this call: PERMISSION_DENIED / 403.
    Forbidden { name: String, call: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unauthenticated(why) => f.write_str(why),
            Refusal::Forbidden { name, call } => {
                write!(f, "API key '{name}' may not call {call}")
            }
        }
    }
}

#[derive(Debug)]
struct Grant {
    name: String,
    all: bool,
    calls: HashSet<String>,
}

/// The configured keys.
#[derive(Debug)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Grant>,
}

fn digest(key: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl ApiKeys {
    /// Checks and indexes the keys.
    ///
    /// # Errors
    /// An empty or duplicate key, an unknown call name, naming the key's
    /// position and name (never the key).
    pub fn new(keys: Vec<ApiKey>) -> Result<Self, String> {
        let mut by_digest = HashMap::new();
        for (i, k) in keys.into_iter().enumerate() {
            let at = format!("auth.api_keys[{i}] ({})", k.name);
            if k.key.len() < 16 {
                return Err(format!("{at}: key must be at least 16 characters"));
            }
            if k.allow.is_empty() {
                return Err(format!("{at}: allow lists no call"));
            }
            for call in &k.allow {
                if call != "*" && !CALLS.contains(&call.as_str()) {
                    return Err(format!(
                        "{at}: unknown call '{call}' (one of {}, or *)",
                        CALLS.join(", ")
                    ));
                }
            }
            let grant = Grant {
                name: k.name,
                all: k.allow.iter().any(|c| c == "*"),
                calls: k.allow.into_iter().collect(),
            };
            if by_digest.insert(digest(&k.key), grant).is_some() {
                return Err(format!("{at}: the same key is configured twice"));
            }
        }
        Ok(Self { by_digest })
    }

    /// Whether the `authorization` value may make `call` (a short name).
    /// Returns the key's name.
    ///
    /// # Errors
    /// See [`Refusal`].
    pub fn authorize(&self, authorization: Option<&str>, call: &str) -> Result<&str, Refusal> {
        let Some(value) = authorization else {
            return Err(Refusal::Unauthenticated(
                "an API key is required: authorization: Bearer <key>",
            ));
        };
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(Refusal::Unauthenticated(
                "authorization must be 'Bearer <key>'",
            ))?;
        let grant = self
            .by_digest
            .get(&digest(key.trim()))
            .ok_or(Refusal::Unauthenticated("unknown API key"))?;
        if grant.all || grant.calls.contains(call) {
            Ok(&grant.name)
        } else {
            Err(Refusal::Forbidden {
                name: grant.name.clone(),
                call: call.to_owned(),
            })
        }
    }
}

/// A tower layer for the gRPC server that refuses calls without an allowed
/// key; with `None` every call passes.
pub fn layer(keys: Option<Arc<ApiKeys>>) -> ApiKeyLayer {
    ApiKeyLayer { keys }
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub struct ApiKeyLayer {
    keys: Option<Arc<ApiKeys>>,
}

impl<S> tower::Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub struct ApiKeyService<S> {
    inner: S,
    keys: Option<Arc<ApiKeys>>,
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for ApiKeyService<S>
where
    S: tower::Service<http::Request<B>, Response = GrpcResponse>,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = Either<Ready<Result<GrpcResponse, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(keys) = &self.keys else {
            return Either::Right(self.inner.call(req));
        };
        let path = req.uri().path();
        if OPEN_SERVICES.iter().any(|s| path.starts_with(s)) {
            return Either::Right(self.inner.call(req));
        }
        let call = path.rsplit('/').next().unwrap_or_default();
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match keys.authorize(authorization, call) {
            Ok(_) => Either::Right(self.inner.call(req)),
            Err(refusal) => {
                let status = match &refusal {
                    Refusal::Unauthenticated(_) => {
                        tonic::Status::unauthenticated(refusal.to_string())
                    }
                    Refusal::Forbidden { .. } => {
                        tonic::Status::permission_denied(refusal.to_string())
                    }
                };
                Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(vec![
            ApiKey {
                name: "billing".into(),
                key: "billing-key-0123456789".into(),
                allow: vec!["TrackUsage".into(), "TrackUsageBatch".into()],
            },
            ApiKey {
                name: "ops".into(),
                key: "ops-key-0123456789abc".into(),
                allow: vec!["*".into()],
            },
        ])
        .unwrap()
    }

    #[test]
    fn keys_are_allowed_their_calls_only() {
        let k = keys();
        assert_eq!(
            k.authorize(Some("Bearer billing-key-0123456789"), "TrackUsage"),
            Ok("billing")
        );
        assert_eq!(
            k.authorize(Some("Bearer billing-key-0123456789"), "GetBilling"),
            Err(Refusal::Forbidden {
                name: "billing".into(),
                call: "GetBilling".into()
            })
        );
        assert_eq!(
            k.authorize(Some("Bearer ops-key-0123456789abc"), "GetBilling"),
            Ok("ops")
        );
        assert!(matches!(
            k.authorize(Some("Bearer nope-nope-nope-nope"), "TrackUsage"),
            Err(Refusal::Unauthenticated("unknown API key"))
        ));
        assert!(matches!(
            k.authorize(None, "TrackUsage"),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            k.authorize(Some("Basic abc"), "TrackUsage"),
            Err(Refusal::Unauthenticated(_))
        ));
    }

    #[test]
    fn bad_key_config_is_refused_without_echoing_the_key() {
        let err = ApiKeys::new(vec![ApiKey {
            name: "x".into(),
            key: "0123456789abcdef".into(),
            allow: vec!["Nope".into()],
        }])
        .unwrap_err();
        assert!(
            err.contains("auth.api_keys[0] (x): unknown call 'Nope'"),
            "{err}"
        );
        assert!(!err.contains("0123456789abcdef"));
        let short = ApiKeys::new(vec![ApiKey {
            name: "x".into(),
            key: "short".into(),
            allow: vec!["*".into()],
        }]);
        assert!(short.is_err());
    }
}

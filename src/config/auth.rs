//! The `auth:`, `http:` and `server.tls:` sections of the service config,
//! and turning them into verifiers, key sets and a TLS config. Everything is
//! checked at load, so a bad key or certificate stops the start (or, on
//! `validate`, is reported) instead of failing the first request.
//!
//! File paths are relative to the config file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::auth::{ApiKey, ApiKeys, JwtSettings, JwtVerifier};

/// The environment variable that sets (or overrides) the HS256 secret, so
/// it need not be written in a file.
pub const JWT_SECRET_ENV: &str = "TOLLGATE_JWT_HS256_SECRET";

/// Who may call.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer JWTs for the HTTP usage API.
    pub jwt: Option<JwtConfig>,
    /// API keys for gRPC (and `POST /v1/check`); none means open.
    pub api_keys: Vec<ApiKeyConfig>,
}

/// How tokens are checked.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Shared secret for HS256 (at least 32 bytes); `TOLLGATE_JWT_HS256_SECRET` overrides.
    pub hs256_secret: Option<String>,
    /// PEM public keys for RS256 / ES256.
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JWKS document (RSA and EC P-256 keys, matched by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
        }
    }
}

/// One PEM public key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// `RS256` or `ES256`.
    pub algorithm: String,
    pub file: PathBuf,
}

/// One API key: the key itself, or the environment variable holding it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_env: Option<String>,
    /// Calls it may make (`CheckRateLimit`, `ShouldRateLimit`, `TrackUsage`,
    /// `TrackUsageBatch`, `GetUsageSummary`, `GetBilling`) or `*`.
    pub allow: Vec<String>,
}

/// TLS on the gRPC port; with `client_ca_file`, mutual TLS: clients must
/// present a certificate signed by that CA.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Requests per minute each user may make to the usage endpoints;
    /// 0 turns the limit off.
    pub requests_per_minute: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
        }
    }
}

fn relative(config: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        return file.to_path_buf();
    }
    config
        .parent()
        .map_or_else(|| file.to_path_buf(), |dir| dir.join(file))
}

fn read(config: &Path, field: &str, file: &Path) -> Result<Vec<u8>, ConfigError> {
    let full = relative(config, file);
    std::fs::read(&full).map_err(|e| {
        ConfigError::new(
            config,
            None,
            format!("{field}: cannot read {}: {e}", full.display()),
        )
    })
}

fn text(config: &Path, field: &str, file: &Path) -> Result<String, ConfigError> {
    String::from_utf8(read(config, field, file)?)
        .map_err(|_| ConfigError::new(config, None, format!("{field}: not UTF-8 text")))
}

impl AuthConfig {
    /// The JWT verifier, if tokens are configured (in the file or by
    /// `TOLLGATE_JWT_HS256_SECRET`). `env_secret` is that variable's value.
    ///
    /// # Errors
    /// Unreadable key files, keys that do not parse, a short secret.
    pub fn jwt_verifier(
        &self,
        config: &Path,
        env_secret: Option<String>,
    ) -> Result<Option<JwtVerifier>, ConfigError> {
        let jwt = match (&self.jwt, env_secret.filter(|s| !s.is_empty())) {
            (None, None) => return Ok(None),
            (Some(j), secret) => {
                let mut j = j.clone();
                if secret.is_some() {
                    j.hs256_secret = secret;
                }
                j
            }
            (None, secret) => JwtConfig {
                hs256_secret: secret,
                ..JwtConfig::default()
            },
        };
        let mut public_keys = Vec::new();
        for (i, k) in jwt.public_keys.iter().enumerate() {
            let field = format!("auth.jwt.public_keys[{i}]");
            let algorithm = match k.algorithm.as_str() {
                "RS256" => jsonwebtoken::Algorithm::RS256,
                "ES256" => jsonwebtoken::Algorithm::ES256,
                other => {
                    return Err(ConfigError::new(
                        config,
                        None,
                        format!("{field}.algorithm: '{other}' is not RS256 or ES256"),
                    ));
                }
            };
            public_keys.push((algorithm, text(config, &field, &k.file)?));
        }
        let jwks = match &jwt.jwks_file {
            Some(f) => Some(text(config, "auth.jwt.jwks_file", f)?),
            None => None,
        };
        JwtVerifier::new(JwtSettings {
            hs256_secret: jwt.hs256_secret,
            public_keys,
            jwks,
            issuer: jwt.issuer,
            audience: jwt.audience,
            leeway_seconds: jwt.leeway_seconds,
        })
        .map(Some)
        .map_err(|e| ConfigError::new(config, None, e.0))
    }

    /// The API keys, if any are configured. `env` reads `key_env` variables.
    ///
    /// # Errors
    /// A key given both or neither ways, a missing variable, a short or
    /// duplicate key, an unknown call name.
    pub fn api_keys(
        &self,
        config: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ApiKeys>, ConfigError> {
        if self.api_keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let at = format!("auth.api_keys[{i}] ({})", k.name);
            let key = match (&k.key, &k.key_env) {
                (Some(key), None) => key.clone(),
                (None, Some(var)) => env(var).ok_or_else(|| {
                    ConfigError::new(config, None, format!("{at}: ${var} is not set"))
                })?,
                _ => {
                    return Err(ConfigError::new(
                        config,
                        None,
                        format!("{at}: give exactly one of key and key_env"),
                    ));
                }
            };
            keys.push(ApiKey {
                name: k.name.clone(),
                key,
                allow: k.allow.clone(),
            });
        }
        ApiKeys::new(keys)
            .map(Some)
            .map_err(|e| ConfigError::new(config, None, e))
    }
}

impl TlsConfig {
    /// The gRPC server's TLS settings.
    ///
    /// # Errors
    /// Unreadable files, or a certificate or key that rustls refuses.
    pub fn server_tls(
        &self,
        config: &Path,
    ) -> Result<tonic::transport::ServerTlsConfig, ConfigError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let cert = read(config, "server.tls.cert_file", &self.cert_file)?;
        let key = read(config, "server.tls.key_file", &self.key_file)?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca_file {
            let ca = read(config, "server.tls.client_ca_file", ca)?;
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        // rustls checks the PEMs only when the acceptor is built; build one
        // now so a bad file is a config error, not a failed start later.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|e| ConfigError::new(config, None, format!("server.tls: {e}")))?;
        Ok(tls)
    }
}

//! Bearer JWTs for the HTTP usage API: HS256 with a shared secret, RS256 and
//! ES256 with configured public keys or a JWKS file. `sub` is the user;
//! `scope` (space-separated, OAuth 2 style) may grant [`ADMIN_SCOPE`].
//!
//! The algorithm is never taken from the token alone: a token is checked
//! only with keys configured for the algorithm its header names, so an
//! RS256 public key can never be used as an HS256 secret, and `none` is
//! refused.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The scope that lets a token read any user's usage (`?user_id=`).
pub const ADMIN_SCOPE: &str = "usage:admin";

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub admin: bool,
}

/// Why a token was refused; the message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Why the JWT settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwtConfigError(pub String);

/// What to check tokens with.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    pub hs256_secret: Option<String>,
    /// PEM public keys (SubjectPublicKeyInfo), each with its algorithm.
    pub public_keys: Vec<(Algorithm, String)>,
    /// A JWKS document's text.
    pub jwks: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

struct Key {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys (the HS256 secret among them) never reach logs.
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    scope: Option<Scopes>,
}

/// `scope` as a space-separated string (RFC 8693) or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    Text(String),
    List(Vec<String>),
}

impl Scopes {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Scopes::Text(s) => s.split_whitespace().any(|s| s == wanted),
            Scopes::List(l) => l.iter().any(|s| s == wanted),
        }
    }
}

impl JwtVerifier {
    /// Builds a verifier; at least one key is needed.
    ///
    /// # Errors
    /// No key at all, a PEM or JWKS that does not parse, a JWKS key whose
    /// algorithm is not RS256 or ES256.
    pub fn new(settings: JwtSettings) -> Result<Self, JwtConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = settings.hs256_secret.filter(|s| !s.is_empty()) {
            if secret.len() < 32 {
                return Err(JwtConfigError(
                    "auth.jwt.hs256_secret must be at least 32 bytes (RFC 7518 §3.2)".into(),
                ));
            }
            keys.push(Key {
                algorithm: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for (i, (algorithm, pem)) in settings.public_keys.iter().enumerate() {
            let key = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
                Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
                other => {
                    return Err(JwtConfigError(format!(
                        "auth.jwt.public_keys[{i}]: algorithm {other:?} is not supported (RS256 or ES256)"
                    )));
                }
            }
            .map_err(|e| JwtConfigError(format!("auth.jwt.public_keys[{i}]: {e}")))?;
            keys.push(Key {
                algorithm: *algorithm,
                kid: None,
                key,
            });
        }
        if let Some(jwks) = &settings.jwks {
            let set: JwkSet = serde_json::from_str(jwks)
                .map_err(|e| JwtConfigError(format!("auth.jwt.jwks_file: {e}")))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    _ => {
                        return Err(JwtConfigError(format!(
                            "auth.jwt.jwks_file: keys[{i}] is neither RSA nor EC P-256"
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| JwtConfigError(format!("auth.jwt.jwks_file: keys[{i}]: {e}")))?;
                keys.push(Key {
                    algorithm,
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(JwtConfigError(
                "auth.jwt needs hs256_secret, public_keys or jwks_file".into(),
            ));
        }
        Ok(Self {
            keys,
            issuer: settings.issuer,
            audience: settings.audience,
            leeway: settings.leeway_seconds,
        })
    }

    /// Reads the files a config names into settings.
    ///
    /// # Errors
    /// A file that cannot be read, naming it.
    pub fn read_file(path: &Path) -> Result<String, JwtConfigError> {
        std::fs::read_to_string(path)
            .map_err(|e| JwtConfigError(format!("cannot read {}: {e}", path.display())))
    }

    /// Checks a token's signature and claims.
    ///
    /// # Errors
    /// A malformed, unsigned, badly signed, expired, not-yet-valid token,
    /// a wrong issuer or audience, or no `sub`.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError(format!("malformed token: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(have)) => wanted == have,
                    _ => true,
                }
        });
        let mut last = AuthError(format!("no key is configured for {:?} tokens", header.alg));
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let user_id = data
                        .claims
                        .sub
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| AuthError("token has no sub".into()))?;
                    let admin = data
                        .claims
                        .scope
                        .as_ref()
                        .is_some_and(|s| s.contains(ADMIN_SCOPE));
                    return Ok(Principal { user_id, admin });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let message = match e.kind() {
                        ErrorKind::ExpiredSignature => "token has expired".to_owned(),
                        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_owned(),
                        ErrorKind::InvalidAudience => "token is for another audience".to_owned(),
                        ErrorKind::InvalidIssuer => "token is from another issuer".to_owned(),
                        ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                        ErrorKind::MissingRequiredClaim(c) => format!("token has no {c}"),
                        other => format!("invalid token: {other:?}"),
                    };
                    last = AuthError(message);
                    // A signature that fails may be another key's; any other
                    // failure means the signature was good and a claim is not.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET.into()),
            audience: Some("tollgate".into()),
            issuer: Some("https://issuer.test".into()),
            ..JwtSettings::default()
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn good() -> serde_json::Value {
        json!({"sub": "u1", "exp": now() + 600, "aud": "tollgate", "iss": "https://issuer.test"})
    }

    #[test]
    fn accepts_a_good_token_and_reads_the_admin_scope() {
        let v = verifier();
        assert_eq!(
            v.verify(&token(good(), SECRET)).unwrap(),
            Principal {
                user_id: "u1".into(),
                admin: false
            }
        );
        let mut admin = good();
        admin["scope"] = json!("usage:read usage:admin");
        assert!(v.verify(&token(admin, SECRET)).unwrap().admin);
        let mut listed = good();
        listed["scope"] = json!(["usage:admin"]);
        assert!(v.verify(&token(listed, SECRET)).unwrap().admin);
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        let v = verifier();
        let with = |k: &str, val: serde_json::Value| {
            let mut c = good();
            c[k] = val;
            v.verify(&token(c, SECRET)).unwrap_err().0
        };
        assert_eq!(with("exp", json!(now() - 600)), "token has expired");
        assert_eq!(
            with("nbf", json!(now() + 600)),
            "token is not valid yet (nbf)"
        );
        assert_eq!(with("aud", json!("other")), "token is for another audience");
        assert_eq!(
            with("iss", json!("https://evil.test")),
            "token is from another issuer"
        );
        assert_eq!(
            v.verify(&token(good(), "another-secret-of-at-least-32-bytes!!"))
                .unwrap_err()
                .0,
            "token signature is invalid"
        );
        let mut no_sub = good();
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            v.verify(&token(no_sub, SECRET)).unwrap_err().0,
            "token has no sub"
        );
        assert!(v.verify("not.a.token").is_err());
    }

    #[test]
    fn a_token_is_only_checked_with_keys_of_its_algorithm() {
        let v = verifier();
        let rs = encode(
            &Header::new(Algorithm::HS384),
            &good(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            v.verify(&rs).unwrap_err().0,
            "no key is configured for HS384 tokens"
        );
    }

    #[test]
    fn short_secrets_and_no_keys_are_configuration_errors() {
        assert!(
            JwtVerifier::new(JwtSettings {
                hs256_secret: Some("short".into()),
                ..JwtSettings::default()
            })
            .is_err()
        );
        assert!(JwtVerifier::new(JwtSettings::default()).is_err());
    }
}

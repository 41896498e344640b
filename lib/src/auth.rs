//! JSON Web Tokens: verifying the tokens clients present, and issuing them.
//!
//! Only the algorithms the deployment configured are accepted (HS256 with a shared secret, RS256
//! with a public key, or both, each with its own key), so `alg: none` and algorithm-swap attacks
//! (an RS256 public key used as an HS256 secret) fail. `exp` is required; `nbf`, `iss` and `aud`
//! are checked; a small leeway absorbs clock skew.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// Role claim that grants operator rights (agent registry).
pub const OPERATOR_ROLE: &str = "operator";

/// The claims this system reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (or agent id for agent tokens).
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    #[serde(default)]
    pub iat: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Device the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Roles (e.g. `operator`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Claims {
    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Keys and expectations for verifying tokens.
#[derive(Clone)]
pub struct JwtConfig {
    /// Shared secret for HS256, when HS256 is accepted.
    pub hs256_secret: Option<Vec<u8>>,
    /// PEM public key for RS256, when RS256 is accepted.
    pub rs256_public_pem: Option<String>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock-skew allowance.
    pub leeway: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("JwtConfig")
            .field("hs256", &self.hs256_secret.is_some())
            .field("rs256", &self.rs256_public_pem.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Verifies tokens against a [`JwtConfig`].
#[derive(Clone)]
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl JwtVerifier {
    /// A verifier configured from the environment (`JWT_*`, see [`JwtConfig::from_source`]).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self::new(&JwtConfig::from_source(&crate::config::Env)?)?)
    }

    /// A verifier; fails when no key is configured or the RS256 key is not a valid PEM.
    pub fn new(config: &JwtConfig) -> Result<Self> {
        let hs256 = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let rs256 = match &config.rs256_public_pem {
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| Error::dependency("jwt", format!("RS256 public key: {e}")))?,
            ),
            None => None,
        };
        if hs256.is_none() && rs256.is_none() {
            return Err(Error::dependency("jwt", "no verification key configured"));
        }
        Ok(Self {
            hs256,
            rs256,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs(),
        })
    }

    /// The claims of a valid token; `invalid_token` or `token_expired` otherwise.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let invalid = |why: &str| Error::client(ErrorCode::InvalidToken, why.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("token is malformed or uses an unsupported algorithm"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| invalid("token algorithm is not accepted"))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            // A signed token can still name nobody: its subject and device must be usable ids.
            Ok(data) if !crate::ids::is_valid(&data.claims.sub) => {
                Err(invalid("token subject is not a valid user id"))
            }
            Ok(data)
                if data
                    .claims
                    .device_id
                    .as_deref()
                    .is_some_and(|d| !crate::ids::is_valid(d)) =>
            {
                Err(invalid("token device_id is not a valid device id"))
            }
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                JwtErrorKind::ExpiredSignature => {
                    Error::client(ErrorCode::TokenExpired, "token has expired")
                }
                JwtErrorKind::ImmatureSignature => invalid("token is not valid yet"),
                JwtErrorKind::InvalidAudience => invalid("token is for another audience"),
                JwtErrorKind::InvalidIssuer => invalid("token is from another issuer"),
                JwtErrorKind::InvalidSignature => invalid("token signature is invalid"),
                JwtErrorKind::MissingRequiredClaim(claim) => {
                    invalid(&format!("token lacks the `{claim}` claim"))
                }
                _ => invalid("token is invalid"),
            }),
        }
    }
}

/// Issues tokens (the api function; tests).
#[derive(Clone)]
pub struct JwtIssuer {
    algorithm: Algorithm,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl JwtIssuer {
    /// An HS256 issuer.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self {
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// An RS256 issuer from a PEM private key.
    pub fn rs256(private_pem: &str, issuer: &str, audience: &str) -> Result<Self> {
        Ok(Self {
            algorithm: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(private_pem.as_bytes())
                .map_err(|e| Error::dependency("jwt", format!("RS256 private key: {e}")))?,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// Claims for `sub` valid from now for `ttl`.
    pub fn claims(&self, sub: &str, ttl: Duration) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            sub: sub.into(),
            exp: now + ttl.as_secs(),
            iat: now,
            nbf: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            device_id: None,
            roles: Vec::new(),
        }
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key)
            .map_err(|e| Error::dependency("jwt", e))
    }

    /// A token for `sub` valid for `ttl`.
    pub fn issue(&self, sub: &str, ttl: Duration) -> Result<String> {
        self.sign(&self.claims(sub, ttl))
    }
}

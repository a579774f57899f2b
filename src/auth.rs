//! Bearer JWT -> `Viewer`. HS256 with a shared secret, or RS256/ES256 with a public key; `iss` and
//! `aud` checked when configured. Platform-team membership comes from the database, not the token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::domain::{OrganizationId, Role, Viewer};
use crate::error::AppError;
use crate::store;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// The keys that verify (and, with a shared secret, mint) tokens.
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    /// True when the key was generated at boot (`--dev`).
    pub ephemeral: bool,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Builds the keys from settings. Without a key the server refuses to start, unless `--dev`.
    pub fn from_settings(s: &Settings) -> Result<Self, String> {
        let (decoding, encoding, algorithms, ephemeral) = if let Some(secret) = &s.jwt_secret {
            let bytes = secret.expose_secret().as_bytes();
            if bytes.len() < 32 {
                return Err("TOLLGATE_JWT_SECRET must be at least 32 bytes".into());
            }
            (
                DecodingKey::from_secret(bytes),
                Some(EncodingKey::from_secret(bytes)),
                vec![Algorithm::HS256],
                false,
            )
        } else if let Some(key) = &s.jwt_public_key {
            let pem = if key.trim_start().starts_with("-----BEGIN") {
                key.clone()
            } else {
                std::fs::read_to_string(key)
                    .map_err(|e| format!("cannot read TOLLGATE_JWT_PUBLIC_KEY file: {e}"))?
            };
            if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (k, None, vec![Algorithm::RS256], false)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (k, None, vec![Algorithm::ES256], false)
            } else {
                return Err("TOLLGATE_JWT_PUBLIC_KEY is not an RSA or EC public key in PEM".into());
            }
        } else if s.dev {
            let secret = random_secret();
            (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                Some(EncodingKey::from_secret(secret.expose_secret().as_bytes())),
                vec![Algorithm::HS256],
                true,
            )
        } else {
            return Err(
                "no token key configured: set TOLLGATE_JWT_SECRET (HS256) or TOLLGATE_JWT_PUBLIC_KEY (RS256/ES256), \
                 or run with --dev for an ephemeral key"
                    .into(),
            );
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 5;
        validation.validate_exp = true;
        // `nbf`, when a token carries it, is honoured (with the same leeway).
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &s.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &s.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtKeys {
            decoding,
            encoding,
            validation,
            issuer: s.jwt_issuer.clone(),
            audience: s.jwt_audience.clone(),
            ephemeral,
        })
    }

    /// Verifies a token's signature and claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let msg = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "token algorithm is not accepted"
                    }
                    ErrorKind::InvalidIssuer => "token issuer is not accepted",
                    ErrorKind::InvalidAudience => "token audience is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                    ErrorKind::ImmatureSignature => "token is not valid yet (its nbf is ahead)",
                    ErrorKind::Json(_) => {
                        "token claims are not as expected: sub and exp are required; org_id and role are strings"
                    }
                    _ => "token is malformed",
                };
                AppError::Unauthenticated(msg.into())
            })
    }

    /// Mints a token (HS256 only: a public key cannot sign).
    pub fn mint(
        &self,
        sub: &str,
        org: Option<&str>,
        role: Option<Role>,
        ttl: Duration,
    ) -> Result<String, String> {
        let key = self.encoding.as_ref().ok_or(
            "tokens can only be minted with TOLLGATE_JWT_SECRET (a public key cannot sign)",
        )?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now + ttl.as_secs() as i64,
            org_id: org.map(str::to_owned),
            role: role.map(|r| r.as_str().to_owned()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: Some(now),
        };
        encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| format!("cannot sign token: {e}"))
    }
}

fn random_secret() -> SecretString {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(header: &str) -> Result<&str, AppError> {
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| AppError::Unauthenticated("expected a bearer token".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AppError::Unauthenticated("expected a bearer token".into()));
    }
    Ok(token.trim())
}

/// A verified token as a viewer. Tenants need `org_id` (a UUID) and `role`; platform-team members
/// need only `sub` and `exp`.
pub async fn viewer_from_token(
    keys: &JwtKeys,
    db: &DatabaseConnection,
    token: &str,
) -> Result<Viewer, AppError> {
    session_from_token(keys, db, token).await.map(|(v, _)| v)
}

/// A verified token as a viewer, with its expiry (`exp`, seconds since the epoch): a WebSocket closes
/// when its token expires.
pub async fn session_from_token(
    keys: &JwtKeys,
    db: &DatabaseConnection,
    token: &str,
) -> Result<(Viewer, i64), AppError> {
    let claims = keys.verify(token)?;
    let exp = claims.exp;
    if claims.sub.trim().is_empty() {
        return Err(AppError::Unauthenticated(
            "token lacks a required claim".into(),
        ));
    }
    let platform = store::team::is_member(db, &claims.sub).await?;
    let org_id = match claims.org_id.as_deref() {
        Some(s) => Some(
            uuid::Uuid::parse_str(s)
                .map(OrganizationId)
                .map_err(|_| AppError::Unauthenticated("token org_id is not a UUID".into()))?,
        ),
        None => None,
    };
    let role = match claims.role.as_deref() {
        Some(r) => Some(
            Role::parse(r)
                .ok_or_else(|| AppError::Unauthenticated("token role is not known".into()))?,
        ),
        None => None,
    };
    if !platform && (org_id.is_none() || role.is_none()) {
        return Err(AppError::Unauthenticated(
            "token lacks the org_id and role claims".into(),
        ));
    }
    Ok((
        Viewer {
            sub: claims.sub,
            org_id,
            role,
            platform,
        },
        exp,
    ))
}

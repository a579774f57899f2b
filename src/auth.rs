//! Bearer JWT -> `Viewer`. HS256 with a shared secret, RS256/ES256 with a public key, or RS256/ES256
//! with the keys of a JWKS chosen by `kid` (`jwks.rs`); `iss` and `aud` checked when configured. A
//! header with `crit` is refused whatever the key: this server understands no extension. Platform-team
//! membership comes from the database, not the token.

mod jwks;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use self::jwks::UNKNOWN_KID_REFETCH_EVERY;
use self::jwks::{Jwks, Lookup};
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
    verifier: Verifier,
    encoding: Option<EncodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// True when the key was generated at boot (`--dev`).
    pub ephemeral: bool,
}

enum Verifier {
    /// One key: an HS256 secret or a PEM public key.
    Single {
        key: DecodingKey,
        validation: Validation,
    },
    /// The keys of a JWKS, by `kid`, with a validation for each accepted algorithm.
    Jwks {
        set: Arc<Jwks>,
        rs256: Validation,
        es256: Validation,
    },
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ephemeral", &self.ephemeral)
            .field("jwks", &matches!(self.verifier, Verifier::Jwks { .. }))
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Builds the keys from settings. Without a key the server refuses to start, unless `--dev`.
    /// A JWKS must be fetched first: `from_settings_async` builds every kind.
    pub fn from_settings(s: &Settings) -> Result<Self, String> {
        if s.jwt_jwks_url.is_some() {
            return Err(
                "the TOLLGATE_JWT_JWKS_URL keys are fetched at boot: build them with JwtKeys::from_settings_async"
                    .into(),
            );
        }
        let (decoding, encoding, algorithm, ephemeral) = if let Some(secret) = &s.jwt_secret {
            let bytes = secret.expose_secret().as_bytes();
            if bytes.len() < 32 {
                return Err("TOLLGATE_JWT_SECRET must be at least 32 bytes".into());
            }
            (
                DecodingKey::from_secret(bytes),
                Some(EncodingKey::from_secret(bytes)),
                Algorithm::HS256,
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
                (k, None, Algorithm::RS256, false)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (k, None, Algorithm::ES256, false)
            } else {
                return Err("TOLLGATE_JWT_PUBLIC_KEY is not an RSA or EC public key in PEM".into());
            }
        } else if s.dev {
            let secret = random_secret();
            (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                Some(EncodingKey::from_secret(secret.expose_secret().as_bytes())),
                Algorithm::HS256,
                true,
            )
        } else {
            return Err(
                "no token key configured: set TOLLGATE_JWT_SECRET (HS256), TOLLGATE_JWT_PUBLIC_KEY (RS256/ES256) \
                 or TOLLGATE_JWT_JWKS_URL (RS256/ES256), or run with --dev for an ephemeral key"
                    .into(),
            );
        };
        Ok(JwtKeys {
            verifier: Verifier::Single {
                key: decoding,
                validation: validation(s, algorithm),
            },
            encoding,
            issuer: s.jwt_issuer.clone(),
            audience: s.jwt_audience.clone(),
            ephemeral,
        })
    }

    /// Builds the keys from settings, fetching the JWKS when one is configured (an error when it
    /// cannot be fetched: the server does not start without its keys); otherwise as `from_settings`.
    pub async fn from_settings_async(s: &Settings) -> Result<Self, String> {
        let Some(url) = &s.jwt_jwks_url else {
            return Self::from_settings(s);
        };
        let set = Jwks::fetch_at_boot(url, s.jwt_jwks_refresh).await?;
        Ok(JwtKeys {
            verifier: Verifier::Jwks {
                set: Arc::new(set),
                rs256: validation(s, Algorithm::RS256),
                es256: validation(s, Algorithm::ES256),
            },
            encoding: None,
            issuer: s.jwt_issuer.clone(),
            audience: s.jwt_audience.clone(),
            ephemeral: false,
        })
    }

    /// The task that fetches a JWKS every refresh interval, for the server to run as long as it
    /// serves; None for the other kinds of key.
    pub fn refresher(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        match &self.verifier {
            Verifier::Jwks { set, .. } => Some(set.clone().refresh_forever()),
            Verifier::Single { .. } => None,
        }
    }

    /// Verifies a token's header, signature and claims. With a JWKS, a `kid` not in the cache
    /// fetches the set again (rate-limited), so this may wait on the identity provider.
    pub async fn verify(&self, token: &str) -> Result<Claims, AppError> {
        let header = JoseHeader::read(token)?;
        let decoded = match &self.verifier {
            Verifier::Single { key, validation } => decode::<Claims>(token, key, validation),
            Verifier::Jwks { set, rs256, es256 } => {
                let (algorithm, validation) = match header.alg.as_deref() {
                    Some("RS256") => (Algorithm::RS256, rs256),
                    Some("ES256") => (Algorithm::ES256, es256),
                    // HS256 and `none` above all: a JWKS publishes public keys only.
                    _ => return Err(unauthenticated("token algorithm is not accepted")),
                };
                let kid = header
                    .kid
                    .ok_or_else(|| unauthenticated("token lacks a key id (kid)"))?;
                let key = match set.lookup(&kid).await {
                    Lookup::Found(key) => key,
                    Lookup::Unknown => return Err(unauthenticated("token key id is not known")),
                };
                if key.algorithm != algorithm {
                    return Err(unauthenticated("token algorithm is not accepted"));
                }
                decode::<Claims>(token, &key.key, validation)
            }
        };
        decoded.map(|d| d.claims).map_err(|e| {
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
            unauthenticated(msg)
        })
    }

    /// Mints a token (HS256 only: a public key or a JWKS cannot sign).
    pub fn mint(
        &self,
        sub: &str,
        org: Option<&str>,
        role: Option<Role>,
        ttl: Duration,
    ) -> Result<String, String> {
        let key = self.encoding.as_ref().ok_or(
            "tokens can only be minted with TOLLGATE_JWT_SECRET (a public key or a JWKS cannot sign)",
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

fn validation(s: &Settings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
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
    validation
}

fn unauthenticated(message: &str) -> AppError {
    AppError::Unauthenticated(message.into())
}

/// What this server reads of a token's JOSE header before verifying it, decoded here rather than
/// by `jsonwebtoken` so that nothing in it is skipped unseen.
#[derive(Debug, PartialEq)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
}

impl JoseHeader {
    /// Reads the header segment. A `crit` parameter (RFC 7515 section 4.1.11) names extensions the
    /// recipient must understand; this server understands none, so a token with one is refused
    /// whatever it names (an empty list is invalid too).
    fn read(token: &str) -> Result<Self, AppError> {
        let malformed = || unauthenticated("token is malformed");
        let mut segments = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(malformed());
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed())?;
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        if fields.contains_key("crit") {
            return Err(unauthenticated(
                "token header has critical parameters this server does not understand",
            ));
        }
        let text = |name: &str| fields.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(JoseHeader {
            alg: text("alg"),
            kid: text("kid"),
        })
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
    team: Option<Team>,
    db: &DatabaseConnection,
    token: &str,
) -> Result<Viewer, AppError> {
    session_from_token(keys, team, db, token)
        .await
        .map(|(v, _)| v)
}

/// The platform team's members, as the server last read them.
pub type Team = std::sync::Arc<std::collections::HashSet<String>>;

/// A verified token as a viewer, with its expiry (`exp`, seconds since the epoch): a WebSocket closes
/// when its token expires.
///
/// Platform-team membership comes from `team`, the server's snapshot; only before its first read
/// does a token check query the database.
pub async fn session_from_token(
    keys: &JwtKeys,
    team: Option<Team>,
    db: &DatabaseConnection,
    token: &str,
) -> Result<(Viewer, i64), AppError> {
    let claims = keys.verify(token).await?;
    let exp = claims.exp;
    // A NUL cannot be stored or compared by Postgres: such a subject is nobody.
    if claims.sub.trim().is_empty() || claims.sub.contains('\0') {
        return Err(AppError::Unauthenticated(
            "token lacks a required claim".into(),
        ));
    }
    let platform = match team {
        Some(team) => team.contains(&claims.sub),
        None => store::team::is_member(db, &claims.sub).await?,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_header(header: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            b64(&header),
            b64(&serde_json::json!({ "sub": "u" }))
        )
    }

    fn message(e: AppError) -> String {
        match e {
            AppError::Unauthenticated(m) => m,
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn header_is_read() {
        let h = JoseHeader::read(&token_with_header(
            serde_json::json!({ "alg": "RS256", "kid": "k1", "typ": "JWT" }),
        ))
        .unwrap();
        assert_eq!(
            h,
            JoseHeader {
                alg: Some("RS256".into()),
                kid: Some("k1".into())
            }
        );
    }

    #[test]
    fn crit_header_is_refused() {
        for crit in [
            serde_json::json!(["exp"]),
            serde_json::json!([]),
            serde_json::json!("b64"),
            serde_json::Value::Null,
        ] {
            let token = token_with_header(serde_json::json!({ "alg": "HS256", "crit": crit }));
            let m = message(JoseHeader::read(&token).unwrap_err());
            assert_eq!(
                m, "token header has critical parameters this server does not understand",
                "{crit}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for token in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.e30.c2ln",
            "WzFd.e30.c2ln", // [1]: not an object
        ] {
            let m = message(JoseHeader::read(token).unwrap_err());
            assert_eq!(m, "token is malformed", "{token:?}");
        }
    }
}

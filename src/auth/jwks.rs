//! The keys of a JSON Web Key Set (an identity provider's public keys), cached by `kid`.
//!
//! Fetched at boot (a server that cannot fetch them does not start), again every refresh interval
//! by a task the server runs, and again when a token names a `kid` the cache does not hold, at most
//! once every `UNKNOWN_KID_REFETCH_EVERY` so that tokens with made-up kids cannot hammer the
//! identity provider. A failed fetch keeps the cached keys; a successful one replaces them all, so a
//! key removed from the set stops verifying at the next refresh.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

/// The shortest time between two fetches caused by tokens with an unknown `kid`.
pub const UNKNOWN_KID_REFETCH_EVERY: Duration = Duration::from_secs(60);

/// The largest JWKS document read: a real one is a few kilobytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How long one fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One usable key of the set and the one algorithm it verifies.
pub struct JwksKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

type KeyMap = HashMap<String, Arc<JwksKey>>;

pub struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    refresh: Duration,
    /// Replaced whole by each successful fetch; readers clone the Arc and never wait on a fetch.
    keys: RwLock<Arc<KeyMap>>,
    /// Held for each fetch and its install, so two fetches never race to install; it also holds
    /// when the last fetch for an unknown `kid` started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// What a lookup by `kid` found.
pub enum Lookup {
    Found(Arc<JwksKey>),
    Unknown,
}

impl Jwks {
    /// Fetches the set once; an error is the reason the server does not start.
    pub async fn fetch_at_boot(url: &str, refresh: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| format!("TOLLGATE_JWT_JWKS_URL is not a URL: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err("TOLLGATE_JWT_JWKS_URL must be an http(s) URL".into());
        }
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        if url.scheme() == "http" && !loopback {
            tracing::warn!(%url, "the JWKS is fetched over plain http: anyone on the path can swap the keys");
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT / 2)
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        let jwks = Jwks {
            url,
            client,
            refresh,
            keys: RwLock::new(Arc::default()),
            fetching: tokio::sync::Mutex::new(None),
        };
        let keys = jwks.fetch().await.map_err(|e| {
            format!(
                "cannot fetch the token keys from TOLLGATE_JWT_JWKS_URL ({}): {e}",
                jwks.url
            )
        })?;
        if keys.is_empty() {
            return Err(format!(
                "the JWKS at {} holds no usable key (RS256 or ES256 P-256 signing keys with a kid)",
                jwks.url
            ));
        }
        tracing::info!(url = %jwks.url, kids = ?sorted_kids(&keys), "token keys fetched");
        jwks.install(keys);
        Ok(jwks)
    }

    /// The key for `kid`, fetching the set again when it is not known (unless a fetch for an
    /// unknown kid started less than `UNKNOWN_KID_REFETCH_EVERY` ago).
    pub async fn lookup(&self, kid: &str) -> Lookup {
        if let Some(k) = self.current().get(kid) {
            return Lookup::Found(k.clone());
        }
        let mut last = self.fetching.lock().await;
        // Another request may have fetched the set while this one waited.
        if let Some(k) = self.current().get(kid) {
            return Lookup::Found(k.clone());
        }
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFETCH_EVERY) {
            return Lookup::Unknown;
        }
        *last = Some(Instant::now());
        tracing::info!(
            kid,
            "a token names an unknown key id: fetching the JWKS again"
        );
        self.refetch().await;
        match self.current().get(kid) {
            Some(k) => Lookup::Found(k.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Fetches the set every refresh interval, for as long as the server runs.
    pub async fn refresh_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.refresh, self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _guard = self.fetching.lock().await;
            self.refetch().await;
        }
    }

    fn current(&self) -> Arc<KeyMap> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn install(&self, keys: KeyMap) {
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
    }

    /// Fetches and installs the set; on failure the cached keys stay (callers hold `fetching`).
    async fn refetch(&self) {
        match self.fetch().await {
            Ok(keys) => {
                let before = self.current();
                if !same_kids(&before, &keys) {
                    tracing::info!(
                        url = %self.url,
                        before = ?sorted_kids(&before),
                        now = ?sorted_kids(&keys),
                        "the token keys changed"
                    );
                }
                if keys.is_empty() {
                    tracing::warn!(url = %self.url, "the JWKS holds no usable key: every token is refused");
                }
                self.install(keys);
            }
            Err(e) => tracing::warn!(
                url = %self.url,
                error = %e,
                "cannot fetch the JWKS: the cached token keys stay in use"
            ),
        }
    }

    #[tracing::instrument(skip(self), fields(url = %self.url))]
    async fn fetch(&self) -> Result<KeyMap, String> {
        let mut resp = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.without_url().to_string())?;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(usable_keys(parse_set(&body)?))
    }
}

/// Parses the set key by key: one key of a kind this library cannot read (a new `kty`, an `alg`
/// it does not know) must not make the other keys unusable.
fn parse_set(body: &[u8]) -> Result<JwkSet, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body)
        .map_err(|e| format!("the JWKS is not a JSON object with a keys list: {e}"))?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|k| match serde_json::from_value::<Jwk>(k) {
            Ok(jwk) => Some(jwk),
            Err(e) => {
                tracing::debug!(error = %e, "skipping a JWK this server cannot read");
                None
            }
        })
        .collect();
    Ok(JwkSet { keys })
}

/// The set's RS256 and ES256 signing keys by `kid`; every other key is skipped.
fn usable_keys(set: JwkSet) -> KeyMap {
    let mut keys = KeyMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::debug!("skipping a JWK without a kid");
            continue;
        };
        let Some(algorithm) = algorithm_of(jwk) else {
            tracing::debug!(
                kid,
                "skipping a JWK that is not an RS256 or ES256 signing key"
            );
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, Arc::new(JwksKey { key, algorithm }));
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping a JWK that does not parse"),
        }
    }
    keys
}

/// The algorithm a JWK verifies: its `alg` when present (and consistent with its type), else
/// derived from `kty` and `crv`. Only RS256 (RSA) and ES256 (EC P-256) signing keys qualify:
/// symmetric keys (`oct`) never do, whatever their `alg`.
pub fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let derived = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(derived),
        Some(KeyAlgorithm::RS256) if derived == Algorithm::RS256 => Some(derived),
        Some(KeyAlgorithm::ES256) if derived == Algorithm::ES256 => Some(derived),
        Some(_) => None,
    }
}

fn sorted_kids(keys: &KeyMap) -> Vec<&str> {
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    kids
}

fn same_kids(a: &KeyMap, b: &KeyMap) -> bool {
    a.len() == b.len() && a.keys().all(|k| b.contains_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(v: serde_json::Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    // A P-256 point and an RSA modulus as published (values only need to parse here).
    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn jwk_algorithms_are_derived_or_checked() {
        let rsa = |alg: Option<&str>| {
            let mut v = serde_json::json!({ "kty": "RSA", "kid": "r", "n": N, "e": "AQAB" });
            if let Some(a) = alg {
                v["alg"] = a.into();
            }
            algorithm_of(&jwk(v))
        };
        assert_eq!(rsa(None), Some(Algorithm::RS256));
        assert_eq!(rsa(Some("RS256")), Some(Algorithm::RS256));
        assert_eq!(rsa(Some("RS512")), None);
        assert_eq!(rsa(Some("ES256")), None);
        assert_eq!(rsa(Some("HS256")), None);

        let ec = |crv: &str, alg: Option<&str>| {
            let mut v = serde_json::json!({ "kty": "EC", "kid": "e", "crv": crv, "x": X, "y": Y });
            if let Some(a) = alg {
                v["alg"] = a.into();
            }
            algorithm_of(&jwk(v))
        };
        assert_eq!(ec("P-256", None), Some(Algorithm::ES256));
        assert_eq!(ec("P-256", Some("ES256")), Some(Algorithm::ES256));
        assert_eq!(ec("P-384", None), None);
        assert_eq!(ec("P-256", Some("RS256")), None);

        let oct =
            jwk(serde_json::json!({ "kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256" }));
        assert_eq!(algorithm_of(&oct), None);
        let enc =
            jwk(serde_json::json!({ "kty": "RSA", "kid": "x", "use": "enc", "n": N, "e": "AQAB" }));
        assert_eq!(algorithm_of(&enc), None);
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let body = serde_json::json!({ "keys": [
            { "kty": "RSA", "kid": "rsa", "n": N, "e": "AQAB", "alg": "RS256", "use": "sig" },
            { "kty": "EC", "kid": "ec", "crv": "P-256", "x": X, "y": Y },
            { "kty": "RSA", "n": N, "e": "AQAB" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "OKP", "kid": "new", "crv": "X448", "x": "AAAA" },
            { "kty": "RSA", "kid": "odd-alg", "n": N, "e": "AQAB", "alg": "XS999" }
        ] });
        let keys = usable_keys(parse_set(body.to_string().as_bytes()).unwrap());
        assert_eq!(sorted_kids(&keys), ["ec", "rsa"]);
        assert_eq!(keys["rsa"].algorithm, Algorithm::RS256);
        assert_eq!(keys["ec"].algorithm, Algorithm::ES256);
        assert!(parse_set(b"[]").is_err());
        assert!(parse_set(b"<html>").is_err());
    }
}

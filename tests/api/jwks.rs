//! `--jwt-jwks-url`: RS256 and ES256 tokens verified by the keys of a JSON Web Key Set, served by a
//! small server inside the test that the test swaps, breaks and stops. The key pairs are committed
//! under tests/fixtures/jwks/ (test-only keys); the published JWKs are derived from them here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tollgate::auth::JwtKeys;
use tollgate::config::Settings;

use crate::helpers::{Engine, PLATFORM_SUB, SECRET, TestApp, code, spawn_app_with_keys};

const RSA_A: &[u8] = include_bytes!("../fixtures/jwks/rsa-a.pem");
const RSA_B: &[u8] = include_bytes!("../fixtures/jwks/rsa-b.pem");
const EC: &[u8] = include_bytes!("../fixtures/jwks/ec-p256.pem");

/// One of the committed key pairs, published under `kid`.
#[derive(Clone, Copy)]
struct TestKey {
    kid: &'static str,
    algorithm: Algorithm,
    pem: &'static [u8],
}

const KEY_A: TestKey = TestKey {
    kid: "rsa-a",
    algorithm: Algorithm::RS256,
    pem: RSA_A,
};
const KEY_B: TestKey = TestKey {
    kid: "rsa-b",
    algorithm: Algorithm::RS256,
    pem: RSA_B,
};
const KEY_EC: TestKey = TestKey {
    kid: "ec-p256",
    algorithm: Algorithm::ES256,
    pem: EC,
};

impl TestKey {
    fn encoding(&self) -> EncodingKey {
        match self.algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.pem).expect("RSA fixture"),
            _ => EncodingKey::from_ec_pem(self.pem).expect("EC fixture"),
        }
    }

    /// The public JWK, with its `alg` (as most identity providers publish) or without it (then
    /// the server derives it from `kty` and `crv`).
    fn jwk(&self, with_alg: bool) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding(), self.algorithm).expect("jwk");
        jwk.common.key_id = Some(self.kid.to_owned());
        if !with_alg {
            jwk.common.key_algorithm = None;
        }
        serde_json::to_value(jwk).expect("jwk json")
    }

    /// A platform-team token signed by this key, with `header`'s `alg` and `kid` as given.
    fn sign_with(&self, header: Header) -> String {
        jsonwebtoken::encode(&header, &claims(), &self.encoding()).expect("sign")
    }

    fn sign(&self) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.to_owned());
        self.sign_with(header)
    }
}

fn claims() -> Value {
    json!({ "sub": PLATFORM_SUB, "exp": chrono::Utc::now().timestamp() + 3600 })
}

fn set(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

// ---- the identity provider's key server ----

struct Served {
    set: Value,
    failing: bool,
    hits: usize,
}

struct KeyServer {
    url: String,
    served: Arc<Mutex<Served>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn jwks_handler(State(served): State<Arc<Mutex<Served>>>) -> Response {
    let mut s = served.lock().unwrap();
    s.hits += 1;
    if s.failing {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down for maintenance").into_response();
    }
    axum::Json(s.set.clone()).into_response()
}

impl KeyServer {
    async fn start(set: Value) -> Self {
        let served = Arc::new(Mutex::new(Served {
            set,
            failing: false,
            hits: 0,
        }));
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks_handler))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        KeyServer {
            url,
            served,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn publish(&self, set: Value) {
        self.served.lock().unwrap().set = set;
    }

    fn fail(&self, failing: bool) {
        self.served.lock().unwrap().failing = failing;
    }

    fn hits(&self) -> usize {
        self.served.lock().unwrap().hits
    }

    /// Stops listening: fetches now fail to connect.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the key server stops")
                .expect("the key server task");
        }
    }
}

/// Tollgate on SQLite with `--jwt-jwks-url` pointing at `keys`, refreshing every `refresh`.
async fn spawn(keys: &KeyServer, refresh: &str) -> TestApp {
    spawn_app_with_keys(
        Engine::Sqlite,
        &["--jwt-jwks-url", &keys.url, "--jwt-jwks-refresh", refresh],
        &[],
    )
    .await
    .expect("sqlite is always there")
}

/// The answer to a viewer query with `token`: Ok(userId) or Err(the UNAUTHENTICATED message).
async fn viewer(app: &TestApp, token: &str) -> Result<String, String> {
    let (status, body) = app
        .post(
            Some(token),
            "{ viewer { userId isPlatformTeam } }",
            json!({}),
        )
        .await;
    if status == 200 && body.get("errors").is_none() {
        return Ok(body["data"]["viewer"]["userId"]
            .as_str()
            .unwrap_or_default()
            .to_owned());
    }
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");
    Err(body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

async fn accepted(app: &TestApp, token: &str, what: &str) {
    assert_eq!(
        viewer(app, token).await.as_deref(),
        Ok(PLATFORM_SUB),
        "{what}"
    );
}

async fn refused(app: &TestApp, token: &str, what: &str) -> String {
    viewer(app, token)
        .await
        .expect_err(&format!("{what}: accepted"))
}

/// Polls `condition` every 50 ms for up to 15 s.
async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "waited 15s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_are_accepted() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true), KEY_EC.jwk(false)])).await;
    let app = spawn(&keys, "5m").await;
    accepted(&app, &KEY_A.sign(), "RS256, the JWK with its alg").await;
    accepted(&app, &KEY_EC.sign(), "ES256, alg derived from kty and crv").await;
    // A token signed by another key under a known kid.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_A.kid.into());
    let forged = KEY_B.sign_with(header);
    assert_eq!(
        refused(&app, &forged, "wrong key").await,
        "token signature is invalid"
    );
    // A token without a kid.
    let no_kid = KEY_A.sign_with(Header::new(Algorithm::RS256));
    assert_eq!(
        refused(&app, &no_kid, "no kid").await,
        "token lacks a key id (kid)"
    );
    assert_eq!(keys.hits(), 1, "fetched once, at boot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_for_its_unknown_kid() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true)])).await;
    // A refresh too far away to help: only the unknown-kid fetch can find the new key.
    let app = spawn(&keys, "1h").await;
    accepted(&app, &KEY_A.sign(), "the boot key").await;
    keys.publish(set(&[KEY_A.jwk(true), KEY_B.jwk(true)]));
    accepted(&app, &KEY_B.sign(), "the new key, without a restart").await;
    assert_eq!(keys.hits(), 2, "one fetch at boot, one for the new kid");
    accepted(&app, &KEY_A.sign(), "the old key still").await;
    accepted(&app, &KEY_B.sign(), "the new key, from the cache").await;
    assert_eq!(keys.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_are_refused_and_refetched_at_most_once_a_minute() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true)])).await;
    let app = spawn(&keys, "1h").await;
    let with_kid = |kid: String| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid);
        KEY_A.sign_with(header)
    };
    assert_eq!(
        refused(&app, &with_kid("nobody-0".into()), "unknown kid").await,
        "token key id is not known"
    );
    assert_eq!(
        keys.hits(),
        2,
        "the first unknown kid fetches the set again"
    );
    // A flood of made-up kids, at once: none reaches the identity provider.
    let flood = (1..=30).map(|i| {
        let token = with_kid(format!("nobody-{i}"));
        let app = &app;
        async move { viewer(app, &token).await }
    });
    for answer in futures_util::future::join_all(flood).await {
        assert_eq!(answer, Err("token key id is not known".to_owned()));
    }
    assert_eq!(keys.hits(), 2, "no fetch within a minute of the last");
    // Even a real new key waits for the minute (or the periodic refresh).
    keys.publish(set(&[KEY_A.jwk(true), KEY_B.jwk(true)]));
    assert_eq!(
        refused(&app, &KEY_B.sign(), "new kid within the minute").await,
        "token key id is not known"
    );
    assert_eq!(keys.hits(), 2);
    accepted(&app, &KEY_A.sign(), "the cached key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_set_is_refused_after_the_next_refresh() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true), KEY_B.jwk(true)])).await;
    let app = spawn(&keys, "1s").await;
    let b = KEY_B.sign();
    accepted(&app, &b, "key b while published").await;
    keys.publish(set(&[KEY_A.jwk(true)]));
    until("key b refused after a refresh", async || {
        viewer(&app, &b).await.is_err()
    })
    .await;
    assert_eq!(
        refused(&app, &b, "removed key").await,
        "token key id is not known"
    );
    accepted(&app, &KEY_A.sign(), "the key that stayed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_keep_working_while_the_jwks_server_is_down() {
    let mut keys = KeyServer::start(set(&[KEY_A.jwk(true), KEY_EC.jwk(true)])).await;
    let app = spawn(&keys, "1s").await;
    let (a, ec) = (KEY_A.sign(), KEY_EC.sign());
    accepted(&app, &a, "before the outage").await;

    // Answering 500: two refreshes fail, the keys stay.
    keys.fail(true);
    let before = keys.hits();
    until("two failed refreshes", async || keys.hits() >= before + 2).await;
    accepted(&app, &a, "RS256 while the JWKS answers 500").await;
    accepted(&app, &ec, "ES256 while the JWKS answers 500").await;

    // Not listening at all. No request reaches it to count, so this waits past two refresh
    // intervals instead of polling.
    keys.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    accepted(&app, &a, "RS256 while the JWKS is unreachable").await;
    accepted(&app, &ec, "ES256 while the JWKS is unreachable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_and_unsigned_tokens_are_refused() {
    // The set even publishes a symmetric key: a JWKS key never verifies HS256.
    let hmac = json!({ "kty": "oct", "kid": "hmac", "alg": "HS256", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET) });
    let keys = KeyServer::start(set(&[KEY_A.jwk(true), hmac])).await;
    let app = spawn(&keys, "1h").await;
    let hs256 = |kid: &str, secret: &[u8]| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap()
    };
    // The classic confusion: HS256 "signed" with the bytes of the RSA public key.
    let public_bytes = serde_json::to_vec(&KEY_A.jwk(true)).unwrap();
    let unsigned = |kid: Option<&str>| {
        let mut header = json!({ "alg": "none", "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        format!("{}.{}.", b64(&header), b64(&claims()))
    };
    for (what, token) in [
        (
            "HS256 with the published oct key",
            hs256("hmac", SECRET.as_bytes()),
        ),
        ("HS256 under an RSA kid", hs256(KEY_A.kid, &public_bytes)),
        (
            "HS256 under an unknown kid",
            hs256("other", SECRET.as_bytes()),
        ),
        ("alg none under an RSA kid", unsigned(Some(KEY_A.kid))),
        ("alg none without a kid", unsigned(None)),
    ] {
        assert_eq!(
            refused(&app, &token, what).await,
            "token algorithm is not accepted",
            "{what}"
        );
    }
    assert_eq!(keys.hits(), 1, "no refused algorithm fetches the set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_algorithm_must_match_its_key() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true), KEY_EC.jwk(false)])).await;
    let app = spawn(&keys, "1h").await;
    // ES256, signed by the EC key, but naming the RSA key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_A.kid.into());
    let es_under_rsa = KEY_EC.sign_with(header);
    // RS256, signed by an RSA key, but naming the EC key.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_EC.kid.into());
    let rs_under_ec = KEY_A.sign_with(header);
    for (what, token) in [
        ("ES256 under an RSA kid", es_under_rsa),
        ("RS256 under an EC kid", rs_under_ec),
    ] {
        assert_eq!(
            refused(&app, &token, what).await,
            "token algorithm is not accepted",
            "{what}"
        );
    }
    // RS384 is not accepted even from an RSA key.
    let mut header = Header::new(Algorithm::RS384);
    header.kid = Some(KEY_A.kid.into());
    assert_eq!(
        refused(&app, &KEY_A.sign_with(header), "RS384").await,
        "token algorithm is not accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crit_header_is_refused_with_a_jwks() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true)])).await;
    let app = spawn(&keys, "1h").await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_A.kid.into());
    header.crit = Some(vec!["exp".into()]);
    assert_eq!(
        refused(&app, &KEY_A.sign_with(header), "crit").await,
        "token header has critical parameters this server does not understand"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_does_not_start_without_its_keys() {
    let keys = KeyServer::start(set(&[KEY_A.jwk(true)])).await;
    let settings = |url: &str| Settings::parse_from_env_and(&["--jwt-jwks-url", url]).unwrap();

    keys.fail(true);
    let err = JwtKeys::from_settings_async(&settings(&keys.url))
        .await
        .unwrap_err();
    assert!(err.contains("cannot fetch the token keys"), "{err}");
    assert!(err.contains("500"), "{err}");

    keys.fail(false);
    keys.publish(set(&[
        json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" }),
    ]));
    let err = JwtKeys::from_settings_async(&settings(&keys.url))
        .await
        .unwrap_err();
    assert!(err.contains("no usable key"), "{err}");

    // `tollgate serve` says so and exits (a server that started would be killed at the timeout).
    keys.fail(true);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["--database-url", &db, "--bind", "127.0.0.1:0"])
            .args(["--jwt-jwks-url", &keys.url])
            .args(args)
            .env_remove("TOLLGATE_DATABASE_URL")
            .env_remove("TOLLGATE_JWT_SECRET")
            .env_remove("TOLLGATE_JWT_PUBLIC_KEY")
            .kill_on_drop(true)
            .output()
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run(&["serve"]))
        .await
        .expect("serve exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot fetch the token keys"), "{stderr}");

    // Minting needs the signing key, which the identity provider holds.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(&["token", "--sub", PLATFORM_SUB]),
    )
    .await
    .expect("token exits")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot be minted"), "{stderr}");
}

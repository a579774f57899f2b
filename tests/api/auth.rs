//! Tokens: every bad token answers UNAUTHENTICATED; introspection works without one.

use base64::Engine as _;
use serde_json::json;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code};

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn bad_tokens_are_unauthenticated(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let good = app.tenant_token(&org, Role::Admin);
    assert_eq!(
        app.ok(&good, "{ viewer { userId role } }", json!({})).await["viewer"]["role"],
        "ADMIN"
    );

    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims = json!({ "sub": "u", "org_id": org, "role": "ADMIN", "exp": exp });
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&claims)
    );
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another-secret"),
    )
    .unwrap();
    let expired = {
        let c = json!({ "sub": "u", "org_id": org, "role": "ADMIN", "exp": chrono::Utc::now().timestamp() - 600 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let immature = {
        let now = chrono::Utc::now().timestamp();
        let c = json!({ "sub": "u", "org_id": org, "role": "ADMIN", "exp": exp, "nbf": now + 600 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let claimless = app.token("someone", None, None);
    let bad_role = {
        let c = json!({ "sub": "u", "org_id": org, "role": "KING", "exp": exp });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
        )
        .unwrap()
    };
    // A critical header parameter names an extension this server does not understand.
    let crit = {
        let header = jsonwebtoken::Header {
            crit: Some(vec!["exp".into()]),
            ..Default::default()
        };
        let c = json!({ "sub": "u", "org_id": org, "role": "ADMIN", "exp": exp });
        jsonwebtoken::encode(
            &header,
            &c,
            &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (what, token) in [
        ("malformed", "not.a.token".to_owned()),
        ("crit header", crit),
        ("alg none", alg_none),
        ("wrong key", other_key),
        ("expired", expired),
        ("not valid before ten minutes from now", immature),
        ("no org_id/role", claimless),
        ("unknown role", bad_role),
    ] {
        let (status, body) = app
            .post(Some(&token), "{ viewer { userId } }", json!({}))
            .await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{what}: {body}");
        assert!(
            body.get("data").is_none() || body["data"].is_null(),
            "{what}: {body}"
        );
        if what == "crit header" {
            assert_eq!(
                body["errors"][0]["message"],
                "token header has critical parameters this server does not understand",
                "{body}"
            );
        }
        if what.starts_with("not valid before") {
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains("not valid yet"), "{body}");
        }
    }

    // No token: only introspection.
    let (status, body) = app.post(None, "{ viewer { userId } }", json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );
    let (status, body) = app
        .post(None, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
    // An anonymous introspection sees the tenant view.
    let (_, body) = app
        .post(
            None,
            "{ __type(name: \"Query\") { fields { name } } }",
            json!({}),
        )
        .await;
    let fields = body["data"]["__type"]["fields"].as_array().unwrap();
    assert!(
        !fields.iter().any(|f| f["name"] == "organizations"),
        "{body}"
    );
}
both_engines!(bad_tokens, super::bad_tokens_are_unauthenticated);

async fn platform_token_needs_only_sub_and_exp(app: TestApp) {
    let data = app
        .ok(
            &app.platform_token(),
            "{ viewer { userId role isPlatformTeam organization { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["viewer"],
        json!({ "userId": "platform-admin", "role": null, "isPlatformTeam": true, "organization": null })
    );
}
both_engines!(platform_token, super::platform_token_needs_only_sub_and_exp);

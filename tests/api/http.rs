//! The HTTP layer: content negotiation, status codes, limits, playground, probes.

use serde_json::json;

use crate::both_engines;
use crate::helpers::{Engine, TestApp, spawn_app};

async fn http_behaviour(app: TestApp) {
    let c = &app.client;
    // Playground and its assets, served locally.
    let page = c
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/assets/graphiql.min.js")
            && !page.contains("unpkg")
            && !page.contains("cdn"),
        "{page}"
    );
    for asset in [
        "graphiql.min.js",
        "graphiql.min.css",
        "react.production.min.js",
        "react-dom.production.min.js",
    ] {
        let r = c
            .get(app.url(&format!("/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.bytes().await.unwrap().len() > 1000, "{asset}");
    }
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(app.url("/readyz")).send().await.unwrap().status(),
        200
    );

    // GET for queries; mutations over GET are 405 with Allow.
    let r = c
        .get(app.url("/graphql?query=%7B__typename%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["data"]["__typename"],
        "Query"
    );
    let r = c
        .get(app.url("/graphql?query=mutation%7B__typename%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    // Accept negotiation and status codes.
    let post = |accept: &'static str, body: &'static str| {
        c.post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body)
            .send()
    };
    let r = post(
        "application/graphql-response+json",
        r#"{"query":"{ __typename"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["content-type"],
        "application/graphql-response+json"
    );
    let r = post("application/json", r#"{"query":"{ __typename"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    // Without a token anything but introspection is 401; with one, an unknown field is a 400.
    let r = post(
        "application/graphql-response+json",
        r#"{"query":"{ nope }"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let (status, body) = app
        .post(Some(&app.platform_token()), "{ nope }", json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    let r = post("text/html", r#"{"query":"{ __typename }"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    let r = c
        .post(app.url("/graphql"))
        .body(r#"{"query":"{ __typename }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "a missing content type is refused");
    let r = post("application/json", "not json").await.unwrap();
    assert_eq!(r.status(), 400);

    // Batches within the limit work; past it they are refused.
    let r = c
        .post(app.url("/graphql"))
        .json(&json!([{ "query": "{ __typename }" }, { "query": "{ __typename }" }]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let many: Vec<_> = (0..11)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let r = c
        .post(app.url("/graphql"))
        .json(&many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
both_engines!(http_layer, super::http_behaviour);

#[tokio::test]
async fn limits_are_enforced() {
    let app = spawn_app(
        Engine::Sqlite,
        &["--max-body-bytes", "2048", "--max-depth", "5"],
    )
    .await
    .unwrap();
    let big = format!(
        r#"{{"query":"{{ __typename }}","variables":{{"pad":"{}"}}}}"#,
        "x".repeat(4096)
    );
    let r = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let deep = "{ __schema { types { fields { type { ofType { ofType { name } } } } } } }";
    let (_, body) = app.post(None, deep, json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{body}"
    );
}

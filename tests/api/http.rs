//! The HTTP layer: content negotiation, status codes, limits, playground, probes.

use serde_json::json;

use crate::both_engines;
use crate::helpers::{Engine, TestApp, code, spawn_app};

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

/// Responses as the GraphQL specification completes them: a failed nullable field answers null, a
/// failed non-null field makes its nearest nullable ancestor null (here all of data), fields come in
/// the order the query asked for them, and every error carries a code.
async fn responses_are_complete_and_ordered(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, tollgate::domain::Role::Admin);
    let platform = app.platform_token();
    let raw = |token: String, query: String| {
        let c = app.client.clone();
        let url = app.url("/graphql");
        async move {
            c.post(url)
                .bearer_auth(token)
                .json(&json!({ "query": query }))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let ghost = uuid::Uuid::new_v4();
    let body = raw(
        platform.clone(),
        format!(
            "{{ viewer {{ userId }} organization(id: \"{ghost}\") {{ id }} plans {{ code }} }}"
        ),
    )
    .await;
    assert!(
        body.starts_with(r#"{"data":{"viewer":{"userId":"#),
        "{body}"
    );
    assert!(
        body.contains(r#""organization":null,"plans":[{"code":"basic"}"#),
        "{body}"
    );
    assert!(body.contains(r#""code":"NOT_FOUND""#), "{body}");
    let body = raw(
        platform.clone(),
        format!("{{ organization(id: \"{ghost}\") {{ id }} }}"),
    )
    .await;
    assert!(
        body.starts_with(r#"{"data":{"organization":null},"errors":"#),
        "{body}"
    );
    // checkEntitlement is non-null: its failure leaves no data.
    let body = raw(
        admin.clone(),
        "{ viewer { userId } checkEntitlement(metric: \"nope\") { allowed } }".into(),
    )
    .await;
    assert!(body.starts_with(r#"{"data":null,"errors":"#), "{body}");
    // Twelve aliases resolved concurrently come back in the order asked.
    let aliases: Vec<String> = (1..=12).map(|i| format!("a{i}")).collect();
    let query = aliases
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i % 2 == 0 {
                format!("{a}: plans {{ code }}")
            } else {
                format!("{a}: organization {{ slug usage {{ hasExceededLimits }} name }}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let body = raw(admin.clone(), format!("{{ {query} }}")).await;
    let positions: Vec<usize> = aliases
        .iter()
        .map(|a| {
            body.find(&format!("\"{a}\":"))
                .unwrap_or_else(|| panic!("{a}: {body}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{body}");
    assert!(
        body.contains(r#"{"slug":"acme","usage":{"hasExceededLimits":false},"name":"#),
        "{body}"
    );
    // The executor's own errors carry a code too, and a request error has no data entry.
    let body: serde_json::Value = serde_json::from_str(
        &raw(
            admin.clone(),
            "{ checkEntitlement(metric: \"bookings\", quantity: \"abc\") { allowed } }".into(),
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    for query in [
        "{ viewer { nope } }",
        "{ viewer { userId }",
        "query A { viewer { userId } } query B { viewer { userId } }",
    ] {
        let body: serde_json::Value =
            serde_json::from_str(&raw(admin.clone(), query.into()).await).unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{query}: {body}"
        );
        assert!(body.get("data").is_none(), "{query}: {body}");
    }
    // Variables: left out, of the wrong JSON type, or not a plain decimal: a request error, before
    // anything runs or is recorded.
    let service = app.tenant_token(&org, tollgate::domain::Role::Service);
    let record = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted } }";
    let check =
        "query($q: Decimal!) { checkEntitlement(metric: \"bookings\", quantity: $q) { allowed } }";
    for (query, variables) in [
        (record, json!({})),
        (check, json!({})),
        (check, json!({ "q": 1.5 })),
        (check, json!({ "q": "1e2" })),
        (check, json!({ "q": true })),
        (
            record,
            json!({ "i": { "metric": "bookings", "quantity": 1.5 } }),
        ),
        (
            record,
            json!({ "i": { "metric": "bookings", "quantity": ".5" } }),
        ),
        (
            "mutation { recordUsage(input: {metric: \"bookings\", quantity: 1.5}) { accepted } }",
            json!({}),
        ),
    ] {
        let body = app.gql(&service, query, variables.clone()).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{variables}: {body}");
        assert!(body.get("data").is_none(), "{variables}: {body}");
    }
    let usage = app
        .ok(
            &service,
            "{ organization { usage { metric(code: \"bookings\") { used } } } }",
            json!({}),
        )
        .await;
    assert_eq!(usage["organization"]["usage"]["metric"]["used"], "0");
}
both_engines!(completion, super::responses_are_complete_and_ordered);

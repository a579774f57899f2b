//! The usage engine through the real server: the seed's examples, concurrency, idempotency, HARD limits.

use serde_json::json;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code, pluck};

const SUMMARY: &str = "{ organization { usage { hasExceededLimits exceededLimitsDetails \
    metrics { metric { code } used allowance remaining utilizationPct exceeded exceededBy } } } }";

async fn seed_examples(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    // An organization with no usage answers zeros against its plan's limits.
    let data = app.ok(&t, SUMMARY, json!({})).await;
    let bookings = data["organization"]["usage"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"]["code"] == "bookings")
        .unwrap()
        .clone();
    assert_eq!(bookings["used"], "0");
    assert_eq!(bookings["allowance"], "100");
    assert_eq!(bookings["utilizationPct"], 0.0);

    assert_eq!(
        app.record(&t, "venues", "1").await["data"]["recordUsage"]["accepted"],
        true
    );
    let body = app
        .gql(&t, "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"120\"}) { accepted usage { used exceeded } alerts { kind } } }", json!({}))
        .await;
    let kinds = pluck(&body["data"]["recordUsage"]["alerts"], &["kind"]);
    assert_eq!(kinds, ["NEAR_LIMIT", "LIMIT_EXCEEDED"], "{body}");
    let data = app.ok(&t, SUMMARY, json!({})).await;
    let usage = &data["organization"]["usage"];
    assert_eq!(usage["hasExceededLimits"], true);
    assert_eq!(
        usage["exceededLimitsDetails"],
        json!({ "bookings": { "limit": 100, "actual": 120, "exceeded_by": 20 } })
    );
    let venues = usage["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"]["code"] == "venues")
        .unwrap();
    assert_eq!(venues["utilizationPct"], 100.0);
    assert_eq!(venues["exceeded"], false);
    // The stored period row carries the same JSON, for SQL consumers of the seed's shape.
    let rows = tollgate::store::query_all(
        &app.state.engine.db,
        "SELECT exceeded_limits_details AS d FROM organization_usage",
        vec![],
    )
    .await
    .unwrap();
    let stored: serde_json::Value = rows[0].try_get("", "d").unwrap();
    assert_eq!(
        stored,
        json!({ "bookings": { "limit": 100, "actual": 120, "exceeded_by": 20 } })
    );
    // A second venue passes Basic's HARD limit of 1: refused, nothing recorded.
    let body = app.record(&t, "venues", "2").await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], false, "{body}");
    assert!(
        body["data"]["recordUsage"]["rejectionReason"]
            .as_str()
            .unwrap()
            .contains("HARD")
    );
    assert_eq!(body["data"]["recordUsage"]["usage"]["used"], "1");
}
both_engines!(seed, super::seed_examples);

async fn concurrent_recordings_add_up(app: TestApp) {
    let org = app.create_org("acme", "enterprise").await;
    let t = app.tenant_token(&org, Role::Service);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, t) = (app.client.clone(), app.url("/graphql"), t.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let r: serde_json::Value = client
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&json!({ "query": "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }" }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(r["data"]["recordUsage"]["accepted"], true, "{r}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(own_bookings_used(&app, &t).await, "3200");
}
both_engines!(concurrency, super::concurrent_recordings_add_up);

async fn idempotency_key_counts_once(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Admin);
    let q = "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"3\", idempotencyKey: \"booking:42\"}) { accepted duplicate event { id } } }";
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url, t) = (app.client.clone(), app.url("/graphql"), t.clone());
        tasks.push(tokio::spawn(async move {
            let r: serde_json::Value = client
                .post(&url)
                .bearer_auth(&t)
                .json(&json!({ "query": q }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r
        }));
    }
    let mut firsts = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r["data"]["recordUsage"]["accepted"], true, "{r}");
        if r["data"]["recordUsage"]["duplicate"] == false {
            firsts += 1;
        }
        ids.insert(
            r["data"]["recordUsage"]["event"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(firsts, 1);
    assert_eq!(ids.len(), 1, "every replay answers the first event");
    // The same amount written otherwise is a replay; another amount or metric under the key is a
    // mistake, refused rather than silently dropped.
    let again = |metric: &str, quantity: &str| {
        format!(
            "mutation {{ recordUsage(input: {{metric: {metric:?}, quantity: {quantity:?}, idempotencyKey: \"booking:42\"}}) {{ duplicate }} }}"
        )
    };
    let replay = app.ok(&t, &again("bookings", "3.000"), json!({})).await;
    assert_eq!(replay["recordUsage"]["duplicate"], true);
    for (metric, quantity) in [("bookings", "4"), ("staff", "3")] {
        let refused = app.gql(&t, &again(metric, quantity), json!({})).await;
        assert_eq!(code(&refused), Some("CONFLICT"), "{refused}");
    }
    assert_eq!(own_bookings_used(&app, &t).await, "3");
}
both_engines!(idempotency, super::idempotency_key_counts_once);

/// Keys come back from the store as JSON the engine builds (`store::recording::views`): a key of any
/// text is found again exactly, through a batch's run and through a recording alone.
async fn keys_of_any_text_are_found_again(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    let keys = [
        "quote\"d",
        "back\\slash",
        "üñí©ødé 😀",
        "line\nbreak\ttab\u{1}",
        "[\"looks\",\"like\",\"json\"]",
    ];
    let batch = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted duplicate } }";
    let items: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| json!({ "metric": "bookings", "quantity": "1", "idempotencyKey": k }))
        .collect();
    for round in 0..2 {
        let d = app.ok(&t, batch, json!({ "i": items })).await;
        for (k, r) in keys.iter().zip(d["recordUsageBatch"].as_array().unwrap()) {
            assert_eq!(r["accepted"], true, "{k:?}: {r}");
            assert_eq!(r["duplicate"], round == 1, "{k:?} in round {round}: {r}");
        }
    }
    let one = "mutation($k: String!) { recordUsage(input: {metric: \"bookings\", quantity: \"1\", idempotencyKey: $k}) { duplicate } }";
    for k in keys {
        let d = app.ok(&t, one, json!({ "k": k })).await;
        assert_eq!(d["recordUsage"]["duplicate"], true, "{k:?}: {d}");
    }
    // A key that differs only in a character is another key.
    let d = app.ok(&t, one, json!({ "k": "quote'd" })).await;
    assert_eq!(d["recordUsage"]["duplicate"], false, "{d}");
    assert_eq!(
        own_bookings_used(&app, &t).await,
        (keys.len() + 1).to_string()
    );
}
both_engines!(keys_of_any_text, super::keys_of_any_text_are_found_again);

async fn hard_limit_is_never_overshot(app: TestApp) {
    app.upsert_plan(
        "strict",
        "Strict",
        5,
        "10",
        "included: \"100\", enforcement: HARD",
    )
    .await;
    let org = app.create_org("acme", "strict").await;
    let t = app.tenant_token(&org, Role::Service);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url, t) = (app.client.clone(), app.url("/graphql"), t.clone());
        tasks.push(tokio::spawn(async move {
            let q = format!("mutation {{ recordUsage(input: {{metric: \"bookings\", quantity: \"1\", idempotencyKey: \"k{i}\"}}) {{ accepted }} }}");
            let r: serde_json::Value =
                client.post(&url).bearer_auth(&t).json(&json!({ "query": q })).send().await.unwrap().json().await.unwrap();
            r["data"]["recordUsage"]["accepted"] == true
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        if task.await.unwrap() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 100);
    let data = app
        .ok(
            &t,
            "{ organization { usage { metric(code: \"bookings\") { used exceeded } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["organization"]["usage"]["metric"]["used"], "100");
    // checkEntitlement agrees, and records nothing.
    let data = app.ok(&t, "{ checkEntitlement(metric: \"bookings\", quantity: \"1\") { allowed wouldExceed remaining reason } }", json!({})).await;
    assert_eq!(data["checkEntitlement"]["allowed"], false);
    assert_eq!(data["checkEntitlement"]["wouldExceed"], true);
    assert_eq!(data["checkEntitlement"]["remaining"], "0");
}
both_engines!(hard_limit, super::hard_limit_is_never_overshot);

async fn summaries_filter_in_sql(app: TestApp) {
    let platform = app.platform_token();
    let busy = app.create_org("busy", "basic").await;
    let quiet = app.create_org("quiet", "basic").await;
    app.record(&app.tenant_token(&busy, Role::Service), "bookings", "90")
        .await;
    app.record(&app.tenant_token(&quiet, Role::Service), "bookings", "10")
        .await;
    let q = "query($m: Float, $e: Boolean) { usageSummaries(minUtilizationPct: $m, exceededOnly: $e) { totalCount nodes { organization { slug } } } }";
    let slugs = |d: &serde_json::Value| -> Vec<String> {
        d["usageSummaries"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["organization"]["slug"].as_str().unwrap().to_owned())
            .collect()
    };
    app.create_org("idle", "basic").await;
    app.create_org("unlimited", "enterprise").await;
    let all = app.ok(&platform, q, json!({})).await;
    assert_eq!(slugs(&all), ["busy", "idle", "quiet", "unlimited"]);
    // At 0 (or under) an organization with nothing recorded counts: its utilization is 0; one
    // whose plan limits nothing has no utilization to compare.
    for m in [0.0, -5.0] {
        let zero = app.ok(&platform, q, json!({ "m": m })).await;
        assert_eq!(slugs(&zero), ["busy", "idle", "quiet"], "{m}");
    }
    let some = app.ok(&platform, q, json!({ "m": 0.01 })).await;
    assert_eq!(slugs(&some), ["busy", "quiet"]);
    let near = app.ok(&platform, q, json!({ "m": 80.0 })).await;
    assert_eq!(slugs(&near), ["busy"]);
    assert_eq!(near["usageSummaries"]["totalCount"], 1);
    let exceeded = app.ok(&platform, q, json!({ "e": true })).await;
    assert!(slugs(&exceeded).is_empty());
    app.record(&app.tenant_token(&busy, Role::Service), "bookings", "30")
        .await;
    let exceeded = app.ok(&platform, q, json!({ "e": true })).await;
    assert_eq!(slugs(&exceeded), ["busy"]);
    // Bad input has a code.
    let body = app
        .gql(
            &platform,
            "{ usageSummaries(first: -1) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"));
}
both_engines!(summaries, super::summaries_filter_in_sql);

/// checkEntitlement asks about `quantity` more for a GAUGE too: with one venue of a HARD allowance
/// of one, another does not fit (and the recording it stands for is refused).
async fn gauge_entitlement_counts_one_more(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let service = app.tenant_token(&org, Role::Service);
    let q = "{ checkEntitlement(metric: \"venues\") { allowed wouldExceed remaining } }";
    let before = app.ok(&service, q, json!({})).await;
    assert_eq!(before["checkEntitlement"]["allowed"], true, "{before}");
    app.record(&service, "venues", "1").await;
    let after = app.ok(&service, q, json!({})).await;
    assert_eq!(after["checkEntitlement"]["allowed"], false, "{after}");
    assert_eq!(after["checkEntitlement"]["wouldExceed"], true);
    let refused = app.record(&service, "venues", "2").await;
    assert_eq!(
        refused["data"]["recordUsage"]["accepted"], false,
        "{refused}"
    );
    // An unknown metric is bad input here as everywhere, not an empty list.
    let events = app
        .gql(
            &service,
            "{ organization { usageEvents(metric: \"nope\") { nodes { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&events), Some("BAD_USER_INPUT"), "{events}");
    assert_eq!(events["data"]["organization"], serde_json::Value::Null);
}
both_engines!(gauge_entitlement, super::gauge_entitlement_counts_one_more);

/// The caller's organization's bookings used this period, read through the API.
async fn own_bookings_used(app: &TestApp, token: &str) -> serde_json::Value {
    let data = app
        .ok(
            token,
            "{ organization { usage { metric(code: \"bookings\") { used } } } }",
            json!({}),
        )
        .await;
    data["organization"]["usage"]["metric"]["used"].clone()
}

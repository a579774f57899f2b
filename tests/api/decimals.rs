//! Money and quantities are exact on both engines.

use serde_json::json;
use tollgate::domain::{Amount, Role};

use crate::both_engines;
use crate::helpers::TestApp;

async fn sums_are_exact(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    app.record(&t, "revenue", "0.1").await;
    let body = app.record(&t, "revenue", "0.2").await;
    assert_eq!(
        body["data"]["recordUsage"]["usage"]["used"], "0.3",
        "{body}"
    );
    // The ledger sums exactly in SQL too.
    let row = tollgate::store::query_one(
        &app.state.engine.db,
        "SELECT CAST(SUM(quantity) AS BIGINT) AS s FROM usage_events WHERE metric_code = $1",
        vec!["revenue".into()],
    )
    .await
    .unwrap()
    .unwrap();
    let sum: i64 = row.try_get("", "s").unwrap();
    assert_eq!(Amount::from_scaled(sum).to_decimal().to_string(), "0.3000");
    assert_eq!(
        Amount::from_scaled(sum).to_decimal(),
        rust_decimal::Decimal::new(3, 1)
    );

    // More places than we keep are refused, not rounded.
    let body = app.record(&t, "revenue", "0.00001").await;
    assert_eq!(
        crate::helpers::code(&body),
        Some("BAD_USER_INPUT"),
        "{body}"
    );
}
both_engines!(exact_sums, super::sums_are_exact);

async fn prices_round_trip(app: TestApp) {
    let platform = app.platform_token();
    let data = app
        .ok(
            &platform,
            "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code priceMonthly applicationFeePct limits { metric { code } included enforcement overageUnitPrice } } }",
            json!({ "i": { "code": "starter", "name": "Starter", "rank": 0, "priceMonthly": "19.9900", "applicationFeePct": "2.5",
                 "limits": [{ "metric": "bookings", "included": "50", "enforcement": "OVERAGE", "overageUnitPrice": "0.0045" }] } }),
        )
        .await;
    assert_eq!(data["upsertPlan"]["priceMonthly"], "19.99");
    assert_eq!(data["upsertPlan"]["applicationFeePct"], "2.50");
    assert_eq!(
        data["upsertPlan"]["limits"][0]["overageUnitPrice"],
        "0.0045"
    );
    let stored = tollgate::store::catalog::plan_by_code(&app.state.engine.db, "starter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Amount::from_scaled(stored.price_monthly)
            .to_decimal()
            .to_string(),
        "19.9900"
    );
}
both_engines!(price_round_trip, super::prices_round_trip);

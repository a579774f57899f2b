//! The money side through the real server: application-fee quotes (exact, half-up, per currency),
//! payments recorded once per PaymentIntent with the revenue metric in the same transaction, and
//! revenue per period and currency; tenant scope and roles.

use serde_json::{Value, json};
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code, tollgate_cli};

/// An organization on a plan whose application fee is `pct` percent.
async fn org_with_fee(app: &TestApp, slug: &str, pct: &str, rank: i32) -> String {
    let plan = format!("fee-{slug}");
    let body = app
        .gql(
            &app.platform_token(),
            "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code } }",
            json!({ "i": { "code": plan, "name": plan, "rank": rank,
                "priceMonthly": "10", "applicationFeePct": pct,
                "limits": [{ "metric": "bookings", "included": "100", "enforcement": "SOFT" }] } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    app.create_org(slug, &plan).await
}

const QUOTE: &str = "query($o: ID, $a: Decimal!, $c: String) { quoteApplicationFee(organizationId: $o, amount: $a, currency: $c) { amount currency applicationFeePct applicationFee netAmount } }";

async fn fees_are_exact(app: TestApp) {
    let org = org_with_fee(&app, "ten", "10", 51).await;
    let viewer = app.tenant_token(&org, Role::Viewer);
    for (amount, currency, fee, net) in [
        ("42.00", "usd", "4.20", "37.80"),
        ("0.05", "usd", "0.01", "0.04"),
        ("19.99", "EUR", "2.00", "17.99"),
    ] {
        let data = app
            .ok(&viewer, QUOTE, json!({ "a": amount, "c": currency }))
            .await;
        let q = &data["quoteApplicationFee"];
        assert_eq!(
            (q["applicationFee"].as_str(), q["netAmount"].as_str()),
            (Some(fee), Some(net)),
            "{amount} {currency}: {q}"
        );
        assert_eq!(q["currency"], currency.to_lowercase());
    }
    let jpy = org_with_fee(&app, "yen", "7.5", 52).await;
    let data = app
        .ok(
            &app.tenant_token(&jpy, Role::Viewer),
            QUOTE,
            json!({ "a": "1000", "c": "jpy" }),
        )
        .await;
    assert_eq!(data["quoteApplicationFee"]["applicationFee"], "75");
    assert_eq!(data["quoteApplicationFee"]["amount"], "1000");
    // Finer than the currency's minor unit, or not positive: refused.
    for (a, c) in [
        ("10.5", "jpy"),
        ("0.001", "usd"),
        ("0", "usd"),
        ("-1", "usd"),
    ] {
        let body = app.gql(&viewer, QUOTE, json!({ "a": a, "c": c })).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{a} {c}: {body}");
    }
    // Another tenant's organization answers as a missing one.
    let body = app
        .gql(&viewer, QUOTE, json!({ "o": jpy, "a": "10" }))
        .await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
}
both_engines!(fees, super::fees_are_exact);

const PAY: &str = "mutation($i: RecordPaymentInput!) { recordPayment(input: $i) { id stripePaymentIntentId amount currency applicationFee netAmount refundedAmount status reference organization { slug } } }";

fn revenue_used(data: &Value) -> String {
    data["organization"]["usage"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"]["code"] == "revenue")
        .map(|m| m["used"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn payments_are_recorded_once(app: TestApp) {
    let org = org_with_fee(&app, "shop", "10", 51).await;
    let service = app.tenant_token(&org, Role::Service);
    let pay = |pi: &str, amount: &str| json!({ "i": { "stripePaymentIntentId": pi, "amount": amount, "currency": "usd", "reference": "booking:1" } });
    let first = app.ok(&service, PAY, pay("pi_1", "42.00")).await;
    let p = &first["recordPayment"];
    assert_eq!(
        (
            p["amount"].as_str(),
            p["applicationFee"].as_str(),
            p["netAmount"].as_str()
        ),
        (Some("42.00"), Some("4.20"), Some("37.80")),
        "{p}"
    );
    assert_eq!(
        (p["status"].as_str(), p["refundedAmount"].as_str()),
        (Some("SUCCEEDED"), Some("0.00"))
    );
    // A replay answers the same payment and counts nothing again, also when replays race.
    let mut replays = Vec::new();
    for _ in 0..10 {
        let (client, url, token) = (app.client.clone(), app.url("/graphql"), service.clone());
        replays.push(tokio::spawn(async move {
            crate::helpers::post_graphql(&client, &url, Some(&token), PAY, pay("pi_1", "42.00"))
                .await
                .unwrap()
                .1
        }));
    }
    for r in replays {
        let body = r.await.unwrap();
        assert_eq!(body["data"]["recordPayment"]["id"], p["id"], "{body}");
    }
    // The same PaymentIntent with another amount is a conflict.
    let body = app.gql(&service, PAY, pay("pi_1", "41.00")).await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");
    app.ok(&service, PAY, pay("pi_2", "8.00")).await;
    // The revenue metric moved once per payment, in the same transaction.
    let usage = "{ organization { usage { metrics { metric { code } used } } } }";
    assert_eq!(
        revenue_used(&app.ok(&service, usage, json!({})).await),
        "50"
    );
    // Revenue of the current period, from stored rows.
    let data = app
        .ok(
            &app.tenant_token(&org, Role::Viewer),
            "{ organization { revenue { periodStart currency paymentsCount grossAmount refundedAmount applicationFees netAmount } payments(first: 1) { nodes { stripePaymentIntentId } pageInfo { hasNextPage } } } }",
            json!({}),
        )
        .await;
    let rows = data["organization"]["revenue"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "the last 12 periods by default");
    let now = rows.last().unwrap();
    assert_eq!(
        (
            now["paymentsCount"].as_i64(),
            now["grossAmount"].as_str(),
            now["applicationFees"].as_str(),
            now["netAmount"].as_str()
        ),
        (Some(2), Some("50.00"), Some("5.00"), Some("45.00")),
        "{now}"
    );
    assert_eq!(rows[0]["paymentsCount"], 0);
    assert_eq!(rows[0]["grossAmount"], "0.00");
    let payments = &data["organization"]["payments"];
    assert_eq!(
        payments["nodes"][0]["stripePaymentIntentId"], "pi_2",
        "newest first"
    );
    assert_eq!(payments["pageInfo"]["hasNextPage"], true);

    // Roles and scope: a VIEWER may not record; another tenant sees nothing of it.
    let body = app
        .gql(
            &app.tenant_token(&org, Role::Viewer),
            PAY,
            pay("pi_3", "1.00"),
        )
        .await;
    assert_eq!(code(&body), Some("FORBIDDEN"), "{body}");
    let other = app.create_org("other", "basic").await;
    let other_admin = app.tenant_token(&other, Role::Admin);
    let body = app
        .gql(
            &other_admin,
            PAY,
            json!({ "i": { "organizationId": org, "stripePaymentIntentId": "pi_9", "amount": "1.00", "currency": "usd" } }),
        )
        .await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
    // Its own payment with a PaymentIntent another organization recorded: a conflict, nothing more.
    let body = app.gql(&other_admin, PAY, pay("pi_1", "42.00")).await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");
    assert!(!body.to_string().contains("shop"), "{body}");
    let data = app
        .ok(
            &other_admin,
            "{ organization { payments { nodes { id } } revenue { paymentsCount } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["organization"]["payments"]["nodes"], json!([]));
    assert!(
        data["organization"]["revenue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["paymentsCount"] == 0)
    );
    let (ok, out) = tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "{out}");
}
both_engines!(payments, super::payments_are_recorded_once);

async fn plans_name_their_stripe_price(app: TestApp) {
    let platform = app.platform_token();
    let upsert = "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code stripePriceId } }";
    let plan = |code: &str, rank: i32, price: Option<&str>| {
        json!({ "i": { "code": code, "name": code, "rank": rank, "priceMonthly": "42",
            "stripePriceId": price, "limits": [] } })
    };
    let data = app
        .ok(
            &platform,
            upsert,
            plan("pro", 60, Some("price_pro_monthly")),
        )
        .await;
    assert_eq!(data["upsertPlan"]["stripePriceId"], "price_pro_monthly");
    // A price bills one plan.
    let body = app
        .gql(
            &platform,
            upsert,
            plan("pro2", 61, Some("price_pro_monthly")),
        )
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");
    // The price is part of the audited definition.
    app.ok(&platform, upsert, plan("pro", 60, Some("price_pro_v2")))
        .await;
    let data = app
        .ok(
            &platform,
            "{ planHistory(code: \"pro\") { before after } }",
            json!({}),
        )
        .await;
    let newest = &data["planHistory"][0];
    assert_eq!(
        newest["before"]["stripePriceId"], "price_pro_monthly",
        "{newest}"
    );
    assert_eq!(newest["after"]["stripePriceId"], "price_pro_v2", "{newest}");
    let data = app
        .ok(&platform, "{ plans { code stripePriceId } }", json!({}))
        .await;
    let pro = data["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "pro")
        .cloned()
        .unwrap();
    assert_eq!(pro["stripePriceId"], "price_pro_v2");
}
both_engines!(stripe_prices, super::plans_name_their_stripe_price);

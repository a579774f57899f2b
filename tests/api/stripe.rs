//! Stripe webhooks through the real server: signatures (forged, stale, malformed, missing), each
//! event applied once (replays, a storm of concurrent replays), out-of-order delivery, plan and
//! status changes with their subscription_history rows, invoices, refunds.

use std::time::Duration;

use serde_json::{Value, json};
use stripe_webhook::Webhook;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code};

const SECRET: &str = "whsec_test_0123456789";

fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
    json!({ "id": id, "object": "event", "type": kind, "created": created,
        "api_version": "2017-08-15", "livemode": false, "data": { "object": object } })
    .to_string()
}

async fn deliver_signed(app: &TestApp, body: &str, signature: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/stripe/webhook"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let resp = req.send().await.expect("webhook");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn deliver(app: &TestApp, body: &str) -> (u16, Value) {
    let now = chrono::Utc::now().timestamp();
    let sig = Webhook::generate_test_header(body, SECRET, Some(now));
    deliver_signed(app, body, Some(&sig)).await
}

fn subscription(id: &str, org: &str, price: &str, status: &str) -> Value {
    json!({ "id": id, "object": "subscription", "customer": "cus_1", "status": status,
        "metadata": { "organization_id": org },
        "items": { "data": [{ "quantity": 1, "plan": { "id": price, "amount": 4200, "currency": "usd" } }] } })
}

async fn history(app: &TestApp, org: &str) -> Vec<Value> {
    let data = app
        .ok(
            &app.platform_token(),
            "query($o: ID) { organization(id: $o) { status plan { code } stripeCustomerId stripeSubscriptionId subscriptionHistory(first: 50) { nodes { changeType stripeEventId stripeSubscriptionId amountPaid } } } }",
            json!({ "o": org }),
        )
        .await;
    let mut rows = vec![data["organization"].clone()];
    rows.extend(
        data["organization"]["subscriptionHistory"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| !h["stripeEventId"].is_null())
            .cloned(),
    );
    rows
}

async fn webhooks_apply_each_event_once(app: TestApp) {
    let platform = app.platform_token();
    for (code, rank, price) in [("starter", 60, "price_starter"), ("pro", 61, "price_pro")] {
        let body = app
            .gql(
                &platform,
                "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code } }",
                json!({ "i": { "code": code, "name": code, "rank": rank, "priceMonthly": "42",
                    "stripePriceId": price,
                    "limits": [{ "metric": "bookings", "included": "100", "enforcement": "SOFT" }] } }),
            )
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    let org = app.create_org("acme", "basic").await;
    let t0 = chrono::Utc::now().timestamp() - 100;

    // Signatures: missing, forged, stale, malformed are refused and apply nothing.
    let created = event(
        "evt_1",
        "customer.subscription.created",
        t0,
        subscription("sub_1", &org, "price_pro", "active"),
    );
    let now = chrono::Utc::now().timestamp();
    let forged = Webhook::generate_test_header(&created, "whsec_other", Some(now));
    let stale = Webhook::generate_test_header(&created, SECRET, Some(now - 600));
    for sig in [
        None,
        Some(forged.as_str()),
        Some(stale.as_str()),
        Some("t=1,v1=zz"),
    ] {
        let (status, body) = deliver_signed(&app, &created, sig).await;
        assert_eq!(
            (status, code(&body)),
            (400, Some("BAD_USER_INPUT")),
            "{sig:?}: {body}"
        );
    }
    assert_eq!(history(&app, &org).await.len(), 1, "nothing applied");

    // The subscription puts the organization on the plan of its price.
    let (status, body) = deliver(&app, &created).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let h = history(&app, &org).await;
    assert_eq!(h[0]["plan"]["code"], "pro");
    assert_eq!(h[0]["status"], "ACTIVE");
    assert_eq!(h[0]["stripeCustomerId"], "cus_1");
    assert_eq!(h[0]["stripeSubscriptionId"], "sub_1");
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[1]["changeType"], "UPGRADE");
    assert_eq!(h[1]["stripeEventId"], "evt_1");
    assert_eq!(h[1]["amountPaid"], "42.00");
    // A replay answers 200 and changes nothing.
    let (status, body) = deliver(&app, &created).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("replay")),
        "{body}"
    );
    assert_eq!(history(&app, &org).await.len(), 2);

    // A storm: one new event from 20 concurrent senders is applied once.
    let downgrade = event(
        "evt_2",
        "customer.subscription.updated",
        t0 + 10,
        subscription("sub_1", &org, "price_starter", "active"),
    );
    let mut storm = Vec::new();
    for _ in 0..20 {
        let (client, url, body) = (
            app.client.clone(),
            app.url("/stripe/webhook"),
            downgrade.clone(),
        );
        storm.push(tokio::spawn(async move {
            let sig =
                Webhook::generate_test_header(&body, SECRET, Some(chrono::Utc::now().timestamp()));
            client
                .post(url)
                .header("stripe-signature", sig)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for s in storm {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    let h = history(&app, &org).await;
    assert_eq!(h[0]["plan"]["code"], "starter");
    assert_eq!(
        h.iter().filter(|r| r["changeType"] == "DOWNGRADE").count(),
        1,
        "{h:?}"
    );

    // Out of order: an event older than the last applied to the subscription changes nothing.
    let older = event(
        "evt_3",
        "customer.subscription.updated",
        t0 + 5,
        subscription("sub_1", &org, "price_pro", "active"),
    );
    let (_, body) = deliver(&app, &older).await;
    assert_eq!(body["outcome"], "stale", "{body}");
    assert_eq!(history(&app, &org).await[0]["plan"]["code"], "starter");

    // Unknown types are acknowledged and change nothing.
    let (status, body) = deliver(
        &app,
        &event(
            "evt_4",
            "radar.early_fraud_warning.created",
            t0,
            json!({ "id": "x" }),
        ),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );

    // Invoices: a failed payment makes the subscription PAST_DUE, a paid one ACTIVE again.
    let invoice = |id: &str, kind: &str, created: i64| {
        event(
            id,
            kind,
            created,
            json!({ "id": format!("in_{id}"), "object": "invoice", "customer": "cus_1", "amount_paid": 4200, "currency": "usd" }),
        )
    };
    deliver(&app, &invoice("evt_5", "invoice.payment_failed", t0 + 20)).await;
    assert_eq!(history(&app, &org).await[0]["status"], "PAST_DUE");
    deliver(
        &app,
        &invoice("evt_6", "invoice.payment_succeeded", t0 + 30),
    )
    .await;
    assert_eq!(history(&app, &org).await[0]["status"], "ACTIVE");

    // Deleted: CANCELLED, with its row.
    let deleted = event(
        "evt_7",
        "customer.subscription.deleted",
        t0 + 40,
        subscription("sub_1", &org, "price_starter", "canceled"),
    );
    deliver(&app, &deleted).await;
    let h = history(&app, &org).await;
    assert_eq!(h[0]["status"], "CANCELLED");
    assert!(
        h.iter()
            .any(|r| r["changeType"] == "CANCELLED" && r["stripeEventId"] == "evt_7")
    );

    // Refunds of a recorded payment, each once, never more than it paid.
    let service = app.tenant_token(&org, Role::Service);
    app.ok(
        &service,
        "mutation { recordPayment(input: {stripePaymentIntentId: \"pi_r\", amount: \"42.00\", currency: \"usd\"}) { id } }",
        json!({}),
    )
    .await;
    let charge = |id: &str, created: i64, refunds: Value| {
        event(
            id,
            "charge.refunded",
            created,
            json!({ "id": "ch_1", "object": "charge",
            "payment_intent": "pi_r", "currency": "usd", "refunds": { "data": refunds } }),
        )
    };
    let now = chrono::Utc::now().timestamp();
    deliver(
        &app,
        &charge(
            "evt_8",
            t0 + 50,
            json!([{ "id": "re_1", "amount": 1000, "created": now }]),
        ),
    )
    .await;
    let payment = "{ organization { payments { nodes { refundedAmount status } } revenue(from: \"2026-01-01\") { refundedAmount } } }";
    let data = app.ok(&service, payment, json!({})).await;
    assert_eq!(
        data["organization"]["payments"]["nodes"][0]["refundedAmount"],
        "10.00"
    );
    assert_eq!(
        data["organization"]["payments"]["nodes"][0]["status"],
        "PARTIALLY_REFUNDED"
    );
    deliver(
        &app,
        &charge(
            "evt_9",
            t0 + 60,
            json!([
                { "id": "re_1", "amount": 1000, "created": now },
                { "id": "re_2", "amount": 5000, "created": now },
            ]),
        ),
    )
    .await;
    let data = app.ok(&service, payment, json!({})).await;
    let p = &data["organization"]["payments"]["nodes"][0];
    assert_eq!(
        (p["refundedAmount"].as_str(), p["status"].as_str()),
        (Some("42.00"), Some("REFUNDED")),
        "{p}"
    );
    let refunded: Vec<&str> = data["organization"]["revenue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["refundedAmount"].as_str())
        .filter(|r| *r != "0.00")
        .collect();
    assert_eq!(
        refunded,
        vec!["42.00"],
        "refunds count once, capped at what was paid"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}
both_engines!(
    webhooks,
    super::webhooks_apply_each_event_once,
    &["--stripe-webhook-secret", super::SECRET]
);

async fn webhooks_need_a_secret(app: TestApp) {
    let (status, body) = deliver(
        &app,
        &event("evt_x", "invoice.paid", 1, json!({ "id": "in_x" })),
    )
    .await;
    assert_eq!((status, code(&body)), (503, Some("INTERNAL")), "{body}");
}
both_engines!(unconfigured, super::webhooks_need_a_secret);

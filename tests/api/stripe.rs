//! Stripe webhooks through the real server: signatures (forged, stale, malformed, missing), each
//! event applied once (replays, a storm of concurrent replays), out-of-order delivery, plan and
//! status changes with their subscription_history rows, invoices, refunds.

use std::time::Duration;

use chrono::Datelike;

use serde_json::{Value, json};
use stripe_webhook::Webhook;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code};

pub const SECRET: &str = "whsec_test_0123456789";

pub fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
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

pub async fn deliver(app: &TestApp, body: &str) -> (u16, Value) {
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
    // The amount the invoice says was paid is kept with the event.
    let row = tollgate::store::query_one(
        &app.state.engine.db,
        "SELECT amount_paid, currency FROM stripe_events WHERE id = $1",
        vec!["evt_6".into()],
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        row.try_get::<i64>("", "amount_paid").unwrap(),
        420_000,
        "42.00 at 10^4"
    );
    assert_eq!(row.try_get::<String>("", "currency").unwrap(), "usd");

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

    // Reactivated here, then Stripe retries the deletion (its first 200 was lost): a replay,
    // answered 200, changing nothing.
    app.ok(
        &platform,
        "mutation($o: ID) { reactivateSubscription(input: {organizationId: $o}) { changeType } }",
        json!({ "o": org }),
    )
    .await;
    let (status, body) = deliver(&app, &deleted).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("replay")),
        "{body}"
    );
    assert_eq!(history(&app, &org).await[0]["status"], "ACTIVE");

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

    // Newer API versions leave the refund list out: the charge's amount_refunded counts.
    app.ok(
        &service,
        "mutation { recordPayment(input: {stripePaymentIntentId: \"pi_n\", amount: \"20.00\", currency: \"usd\"}) { id } }",
        json!({}),
    )
    .await;
    let bare = event(
        "evt_10",
        "charge.refunded",
        t0 + 70,
        json!({ "id": "ch_2", "object": "charge",
        "payment_intent": "pi_n", "currency": "usd", "amount_refunded": 500 }),
    );
    deliver(&app, &bare).await;
    let data = app
        .ok(
            &service,
            "{ organization { payments { nodes { stripePaymentIntentId refundedAmount } } } }",
            json!({}),
        )
        .await;
    let n = data["organization"]["payments"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stripePaymentIntentId"] == "pi_n")
        .cloned()
        .unwrap();
    assert_eq!(n["refundedAmount"], "5.00", "{n}");
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

/// A recording stand-in for Stripe's API (localstripe has no Connect): it keeps every request
/// (method, path, form, Idempotency-Key, Stripe-Account) and answers a repeated Idempotency-Key
/// with its first answer, as Stripe does.
#[derive(Default)]
pub struct FakeStripe {
    pub requests: std::sync::Mutex<Vec<Value>>,
    by_key: tokio::sync::Mutex<std::collections::HashMap<String, Value>>,
    accounts: std::sync::atomic::AtomicUsize,
    pub invoice_items: std::sync::atomic::AtomicUsize,
    /// Answers 500 to this many invoice-item requests first (Stripe down).
    pub fail_next: std::sync::atomic::AtomicUsize,
    /// Milliseconds a new invoice item's answer is held after it was made (a crash in between).
    pub hold_ms: std::sync::atomic::AtomicU64,
}

pub async fn fake_stripe() -> (String, std::sync::Arc<FakeStripe>) {
    use axum::extract::{Form, Path, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use std::collections::HashMap;
    use std::sync::Arc;
    type S = State<Arc<FakeStripe>>;
    fn record(
        s: &FakeStripe,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) {
        let h = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        s.requests
            .lock()
            .unwrap()
            .push(json!({ "method": method, "path": path, "form": form,
            "idempotencyKey": h("idempotency-key"), "stripeAccount": h("stripe-account") }));
    }
    async fn accounts(
        State(s): S,
        headers: HeaderMap,
        Form(form): Form<HashMap<String, String>>,
    ) -> axum::Json<Value> {
        record(&s, "POST", "/v1/accounts", &headers, &form);
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut by_key = s.by_key.lock().await;
        if let Some(first) = key.as_ref().and_then(|k| by_key.get(k)) {
            return axum::Json(first.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = s.accounts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let answer = json!({ "id": format!("acct_{n}"), "object": "account", "type": "express",
            "charges_enabled": false, "payouts_enabled": false, "details_submitted": false,
            "requirements": { "currently_due": ["external_account"], "disabled_reason": null } });
        if let Some(k) = key {
            by_key.insert(k, answer.clone());
        }
        axum::Json(answer)
    }
    async fn links(
        State(s): S,
        headers: HeaderMap,
        Form(form): Form<HashMap<String, String>>,
    ) -> axum::Json<Value> {
        record(&s, "POST", "/v1/account_links", &headers, &form);
        let acct = form.get("account").cloned().unwrap_or_default();
        axum::Json(
            json!({ "object": "account_link", "url": format!("https://connect.stripe.test/setup/{acct}"),
            "created": 1, "expires_at": chrono::Utc::now().timestamp() + 300 }),
        )
    }
    async fn account(State(s): S, headers: HeaderMap, Path(id): Path<String>) -> axum::Json<Value> {
        record(
            &s,
            "GET",
            &format!("/v1/accounts/{id}"),
            &headers,
            &HashMap::new(),
        );
        axum::Json(
            json!({ "id": id, "object": "account", "charges_enabled": true, "payouts_enabled": true,
            "details_submitted": true, "requirements": { "currently_due": [], "disabled_reason": null } }),
        )
    }
    /// A subscription on the platform's or a connected account: its customer is `cus_member_1`.
    async fn subscription(
        State(s): S,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> axum::Json<Value> {
        record(
            &s,
            "GET",
            &format!("/v1/subscriptions/{id}"),
            &headers,
            &HashMap::new(),
        );
        axum::Json(json!({ "id": id, "object": "subscription", "customer": "cus_member_1" }))
    }
    async fn invoice_items(
        State(s): S,
        headers: HeaderMap,
        Form(form): Form<HashMap<String, String>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        record(&s, "POST", "/v1/invoiceitems", &headers, &form);
        let down = s
            .fail_next
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if down {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({ "error": { "message": "down" } })),
            )
                .into_response();
        }
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut by_key = s.by_key.lock().await;
        if let Some(first) = key.as_ref().and_then(|k| by_key.get(k)) {
            return axum::Json(first.clone()).into_response();
        }
        let n = s
            .invoice_items
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let answer = json!({ "id": format!("ii_{n}"), "object": "invoiceitem", "amount": form.get("amount") });
        if let Some(k) = key {
            by_key.insert(k, answer.clone());
        }
        drop(by_key);
        let hold = s.hold_ms.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(hold)).await;
        axum::Json(answer).into_response()
    }
    let state = Arc::new(FakeStripe::default());
    let app = axum::Router::new()
        .route("/v1/invoiceitems", post(invoice_items))
        .route("/v1/accounts", post(accounts))
        .route("/v1/accounts/{id}", get(account))
        .route("/v1/account_links", post(links))
        .route("/v1/subscriptions/{id}", get(subscription))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

const CONNECT: &str = "{ organization { connectAccount { status stripeAccountId chargesEnabled payoutsEnabled detailsSubmitted requirementsDue updatedAt } } }";

async fn connect_accounts_are_made_once(engine: crate::helpers::Engine) {
    let (url, fake) = fake_stripe().await;
    let Some(app) = crate::helpers::spawn_app(
        engine,
        &[
            "--stripe-secret-key",
            "sk_test_123",
            "--stripe-api-base",
            &url,
            "--stripe-webhook-secret",
            SECRET,
        ],
    )
    .await
    else {
        return;
    };
    let org = app.create_org("acme", "growth").await;
    let admin = app.tenant_token(&org, Role::Admin);
    let data = app.ok(&admin, CONNECT, json!({})).await;
    assert_eq!(data["organization"]["connectAccount"]["status"], "NONE");

    // Two concurrent creations make one account.
    let create = "mutation { createConnectAccount(input: {email: \"owner@acme.test\", country: \"us\"}) { status stripeAccountId } }";
    let (a, b) = tokio::join!(
        app.gql(&admin, create, json!({})),
        app.gql(&admin, create, json!({}))
    );
    for body in [&a, &b] {
        assert_eq!(
            body["data"]["createConnectAccount"]["stripeAccountId"], "acct_1",
            "{body}"
        );
        assert_eq!(
            body["data"]["createConnectAccount"]["status"], "ONBOARDING",
            "{body}"
        );
    }
    assert_eq!(fake.accounts.load(std::sync::atomic::Ordering::SeqCst), 1);
    let sent = fake.requests.lock().unwrap().clone();
    let creations: Vec<&Value> = sent
        .iter()
        .filter(|r| r["path"] == "/v1/accounts")
        .collect();
    assert!(!creations.is_empty());
    for r in &creations {
        assert_eq!(
            r["idempotencyKey"],
            format!("tollgate-connect-account-{org}"),
            "{r}"
        );
        assert_eq!(r["form"]["type"], "express");
        assert_eq!(r["form"]["metadata[organization_id]"], org.as_str());
        assert_eq!(r["form"]["country"], "US");
    }
    // Again: the existing account, no call.
    app.ok(&admin, create, json!({})).await;
    assert_eq!(fake.accounts.load(std::sync::atomic::Ordering::SeqCst), 1);

    let link = app
        .ok(
            &admin,
            "mutation { createConnectAccountLink(input: {refreshUrl: \"https://acme.test/r\", returnUrl: \"https://acme.test/done\"}) { url expiresAt } }",
            json!({}),
        )
        .await;
    assert_eq!(
        link["createConnectAccountLink"]["url"],
        "https://connect.stripe.test/setup/acct_1"
    );
    let sent = fake.requests.lock().unwrap().clone();
    let l = sent
        .iter()
        .find(|r| r["path"] == "/v1/account_links")
        .unwrap();
    assert_eq!(
        (l["form"]["account"].as_str(), l["form"]["type"].as_str()),
        (Some("acct_1"), Some("account_onboarding"))
    );

    let data = app.ok(&admin, CONNECT, json!({})).await;
    assert_eq!(
        data["organization"]["connectAccount"]["requirementsDue"],
        json!(["external_account"])
    );
    let data = app
        .ok(
            &admin,
            "mutation { refreshConnectAccount { status chargesEnabled } }",
            json!({}),
        )
        .await;
    assert_eq!(data["refreshConnectAccount"]["status"], "ACTIVE");

    // account.updated: Stripe disabled it.
    let t0 = chrono::Utc::now().timestamp();
    let updated = event(
        "evt_a1",
        "account.updated",
        t0,
        json!({ "id": "acct_1", "object": "account",
        "charges_enabled": false, "payouts_enabled": true, "details_submitted": true,
        "requirements": { "currently_due": ["individual.verification.document"], "disabled_reason": "requirements.past_due" } }),
    );
    let (status, body) = deliver(&app, &updated).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let data = app.ok(&admin, CONNECT, json!({})).await;
    assert_eq!(
        data["organization"]["connectAccount"]["status"],
        "RESTRICTED"
    );

    // A refund on the connected account before its payment: refused (500), so Stripe sends it
    // again; once the payment is in, the same event applies.
    let mut early: Value = serde_json::from_str(&event(
        "evt_r0",
        "charge.refunded",
        t0,
        json!({ "id": "ch_c1",
        "object": "charge", "payment_intent": "pi_c1", "currency": "usd",
        "refunds": { "data": [{ "id": "re_c1", "amount": 200, "created": t0 }] } }),
    ))
    .unwrap();
    early["account"] = json!("acct_1");
    let early = early.to_string();
    let (status, _) = deliver(&app, &early).await;
    assert_eq!(status, 500);
    // payment_intent.succeeded on the connected account: recorded once, with the plan's fee.
    let paid = event(
        "evt_p1",
        "payment_intent.succeeded",
        t0,
        json!({ "id": "pi_c1", "object": "payment_intent",
        "amount": 4200, "amount_received": 4200, "currency": "usd", "created": t0,
        "metadata": { "reference": "booking:77" } }),
    );
    let paid: Value = serde_json::from_str(&paid).unwrap();
    let mut paid = paid;
    paid["account"] = json!("acct_1");
    let paid = paid.to_string();
    deliver(&app, &paid).await;
    let (_, body) = deliver(&app, &paid).await;
    assert_eq!(body["outcome"], "replay", "{body}");
    let data = app
        .ok(&admin, "{ organization { payments { nodes { stripePaymentIntentId amount applicationFee reference } } } }", json!({}))
        .await;
    let nodes = data["organization"]["payments"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["amount"], "42.00");
    assert_eq!(nodes[0]["applicationFee"], "1.26", "growth's 3%");
    assert_eq!(nodes[0]["reference"], "booking:77");
    let (status, body) = deliver(&app, &early).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let data = app
        .ok(
            &admin,
            "{ organization { payments { nodes { refundedAmount } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["organization"]["payments"]["nodes"][0]["refundedAmount"],
        "2.00"
    );

    // Roles and scope.
    let body = app
        .gql(&app.tenant_token(&org, Role::Viewer), create, json!({}))
        .await;
    assert_eq!(code(&body), Some("FORBIDDEN"), "{body}");
    let other = app.create_org("other", "basic").await;
    let body = app
        .gql(
            &app.tenant_token(&other, Role::Admin),
            "mutation($o: ID) { createConnectAccount(input: {organizationId: $o}) { status } }",
            json!({ "o": org }),
        )
        .await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
}
crate::per_engine!(connect, super::connect_accounts_are_made_once);

async fn without_a_key_stripe_calls_say_so(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, Role::Admin);
    let body = app
        .gql(
            &admin,
            "mutation { createConnectAccount(input: {}) { status } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert!(
        body.to_string().contains("TOLLGATE_STRIPE_SECRET_KEY"),
        "{body}"
    );
    let data = app.ok(&admin, CONNECT, json!({})).await;
    assert_eq!(data["organization"]["connectAccount"]["status"], "NONE");
}
both_engines!(no_key, super::without_a_key_stripe_calls_say_so);

const CHARGES: &str = "{ organization { overageCharges { nodes { id metric { code } periodStart quantity unitPrice amount currency status stripeId attempts lastError } } } }";

async fn overage_is_billed_once(engine: crate::helpers::Engine) {
    let (url, fake) = fake_stripe().await;
    let Some(app) = crate::helpers::spawn_app(
        engine,
        &[
            "--stripe-secret-key",
            "sk_test_123",
            "--stripe-api-base",
            &url,
            "--stripe-webhook-secret",
            SECRET,
            "--stripe-outbox-interval",
            "1s",
        ],
    )
    .await
    else {
        return;
    };
    let platform = app.platform_token();
    let body = app
        .gql(
            &platform,
            "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code } }",
            json!({ "i": { "code": "metered", "name": "Metered", "rank": 80, "priceMonthly": "10",
                "stripePriceId": "price_metered",
                "limits": [{ "metric": "bookings", "included": "10", "enforcement": "OVERAGE", "overageUnitPrice": "2.00" }] } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let billed = app.create_org("billed", "metered").await;
    let unlinked = app.create_org("unlinked", "metered").await;
    // The billed organization's Stripe customer, learnt from its subscription.
    let t0 = chrono::Utc::now().timestamp();
    let sub = json!({ "id": "sub_m", "object": "subscription", "customer": "cus_o", "status": "active",
        "metadata": { "organization_id": billed },
        "items": { "data": [{ "plan": { "id": "price_metered", "amount": 1000, "currency": "usd" } }] } });
    deliver(
        &app,
        &event("evt_m1", "customer.subscription.updated", t0, sub),
    )
    .await;
    // Last period: 15 bookings and 12 bookings against 10 included.
    let last_day = chrono::Utc::now()
        .date_naive()
        .with_day(1)
        .and_then(|d| d.pred_opt())
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    for (org, n) in [(&billed, "15"), (&unlinked, "12")] {
        let body = app
            .gql(
                &app.tenant_token(org, Role::Service),
                "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted } }",
                json!({ "i": { "metric": "bookings", "quantity": n, "occurredAt": last_day.to_rfc3339() } }),
            )
            .await;
        assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
    }
    // Stripe is down for the first two attempts.
    fake.fail_next.store(2, std::sync::atomic::Ordering::SeqCst);
    let bill = "mutation { billOverage { id organization { slug } quantity amount status } }";
    let first = app.ok(&platform, bill, json!({})).await;
    let again = app.ok(&platform, bill, json!({})).await;
    let charges = first["billOverage"].as_array().unwrap().clone();
    assert_eq!(charges.len(), 2, "{first}");
    assert_eq!(
        again["billOverage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect::<Vec<_>>(),
        charges.iter().map(|c| c["id"].clone()).collect::<Vec<_>>(),
        "billing again creates nothing"
    );
    let mine = charges
        .iter()
        .find(|c| c["organization"]["slug"] == "billed")
        .unwrap();
    assert_eq!(
        (mine["quantity"].as_str(), mine["amount"].as_str()),
        (Some("5"), Some("10.00")),
        "{mine}"
    );
    // The outbox sends it through the outage: SENT once, with the charge's key on every try.
    let admin = app.tenant_token(&billed, Role::Admin);
    let started = std::time::Instant::now();
    let sent = loop {
        let data = app.ok(&admin, CHARGES, json!({})).await;
        let c = data["organization"]["overageCharges"]["nodes"][0].clone();
        if c["status"] == "SENT" {
            break c;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not sent: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sent["stripeId"], "ii_1");
    assert!(sent["attempts"].as_i64().unwrap() >= 3, "{sent}");
    assert_eq!(
        fake.invoice_items.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let sent_id = sent["id"].as_str().unwrap();
    let tries: Vec<Value> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/v1/invoiceitems")
        .cloned()
        .collect();
    assert_eq!(tries.len(), 3, "{tries:?}");
    for t in &tries {
        assert_eq!(
            t["idempotencyKey"],
            format!("tollgate-overage-{sent_id}"),
            "{t}"
        );
        assert_eq!(
            (
                t["form"]["customer"].as_str(),
                t["form"]["amount"].as_str(),
                t["form"]["currency"].as_str()
            ),
            (Some("cus_o"), Some("1000"), Some("usd"))
        );
    }
    // Without a Stripe customer the charge needs a person: FAILED with the reason.
    let started = std::time::Instant::now();
    loop {
        let data = app
            .ok(
                &app.tenant_token(&unlinked, Role::Admin),
                CHARGES,
                json!({}),
            )
            .await;
        let c = data["organization"]["overageCharges"]["nodes"][0].clone();
        if c["status"] == "FAILED" {
            assert!(
                c["lastError"].as_str().unwrap().contains("Stripe customer"),
                "{c}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not failed: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Corrections after billing: a charge not yet sent takes them (VOID when nothing is left); a
    // SENT one is left alone, and its history says so.
    let period = last_day.date_naive().to_string();
    let adjust = |org: &str, q: &str| json!({ "i": { "organizationId": org, "metric": "bookings", "quantity": q, "period": period, "reason": "correction" } });
    let adjust_q = "mutation($i: AdjustUsageInput!) { adjustUsage(input: $i) { used } }";
    app.ok(&platform, adjust_q, adjust(&unlinked, "-1")).await;
    app.ok(&platform, adjust_q, adjust(&billed, "-2")).await;
    app.ok(&platform, "mutation { billOverage { id } }", json!({}))
        .await;
    let charge_of = |org: String| {
        let app = &app;
        async move {
            let data = app.ok(&app.tenant_token(&org, Role::Admin), "{ organization { overageCharges { nodes { quantity amount status history } } } }", json!({})).await;
            data["organization"]["overageCharges"]["nodes"][0].clone()
        }
    };
    let c = charge_of(unlinked.clone()).await;
    assert_eq!(
        (
            c["quantity"].as_str(),
            c["amount"].as_str(),
            c["status"].as_str()
        ),
        (Some("1"), Some("2.00"), Some("FAILED")),
        "{c}"
    );
    let c = charge_of(billed.clone()).await;
    assert_eq!(
        (
            c["quantity"].as_str(),
            c["amount"].as_str(),
            c["status"].as_str()
        ),
        (Some("5"), Some("10.00"), Some("SENT")),
        "{c}"
    );
    assert!(c["history"].to_string().contains("left alone"), "{c}");
    app.ok(&platform, adjust_q, adjust(&unlinked, "-5")).await;
    app.ok(&platform, "mutation { billOverage { id } }", json!({}))
        .await;
    assert_eq!(charge_of(unlinked.clone()).await["status"], "VOID");
    assert_eq!(
        fake.invoice_items.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing billed twice"
    );
    // The platform's revenue counts the overage Stripe accepted.
    let data = app
        .ok(
            &platform,
            "{ platformRevenue { periodStart currency overageBilled } }",
            json!({}),
        )
        .await;
    let rows = data["platformRevenue"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["overageBilled"] == "10.00" && r["currency"] == "usd"),
        "{rows:?}"
    );
    // Tenants know neither.
    let body = app
        .gql(&admin, "mutation { billOverage { id } }", json!({}))
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown field"),
        "{body}"
    );
}
crate::per_engine!(overage, super::overage_is_billed_once);

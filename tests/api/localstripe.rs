//! Through a Stripe that speaks HTTP: localstripe (PyPI), started on a free port, signs and sends
//! its webhooks to the real server. A customer subscribes to a plan's price and the organization
//! moves to that plan with its subscription_history row; its overage of the last period is billed
//! as an invoice item on that customer (localstripe ignores Idempotency-Key: the recording fake in
//! stripe.rs and replicas.rs shows it); cancelling the subscription cancels it.
//!
//! localstripe runs from a venv under target/ (.ci/run installs it; the test installs it on first
//! use when Python is there). Without it the test says so and passes, unless
//! `TOLLGATE_TEST_REQUIRE_CLIENTS=1` makes its absence a failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::TestApp;

const SECRET: &str = "whsec_localstripe_test";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The localstripe executable, installed into target/localstripe-venv if need be.
async fn localstripe() -> Result<PathBuf, String> {
    static READY: tokio::sync::OnceCell<Result<PathBuf, String>> =
        tokio::sync::OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let venv = root().join("target/localstripe-venv");
            let exe = venv.join("bin/localstripe");
            if exe.exists() {
                return Ok(exe);
            }
            let ok = |o: std::io::Result<std::process::Output>, what: &str| match o {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!("{what}: {}", String::from_utf8_lossy(&o.stderr))),
                Err(e) => Err(format!("{what}: {e}")),
            };
            ok(
                Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .output()
                    .await,
                "python3 -m venv",
            )?;
            ok(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "-r"])
                    .arg(root().join("tests/stripe/requirements.txt"))
                    .output()
                    .await,
                "pip install localstripe",
            )?;
            if exe.exists() {
                Ok(exe)
            } else {
                Err("localstripe is not there after its install".into())
            }
        })
        .await
        .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until `check` answers true (within 20 s), or fails with what it last saw.
async fn eventually(app: &TestApp, org: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let data = app
            .ok(
                &app.platform_token(),
                "query($o: ID) { organization(id: $o) { status plan { code } stripeCustomerId stripeSubscriptionId subscriptionHistory(first: 20) { nodes { changeType stripeEventId stripeSubscriptionId amountPaid } } } }",
                json!({ "o": org }),
            )
            .await;
        if check(&data["organization"]) {
            return data["organization"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "localstripe's webhooks did not arrive: {data}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_subscription_in_stripe_moves_the_organization(engine: crate::helpers::Engine) {
    let exe = match localstripe().await {
        Ok(exe) => exe,
        Err(why) if std::env::var("TOLLGATE_TEST_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") => {
            panic!("localstripe is required: {why}")
        }
        Err(why) => {
            eprintln!("skipping the localstripe test: {why}");
            return;
        }
    };
    let port = free_port();
    let mut child = Command::new(&exe)
        .args(["--port", &port.to_string(), "--from-scratch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start localstripe");
    let stripe = format!("http://127.0.0.1:{port}");
    let Some(app) = crate::helpers::spawn_app(
        engine,
        &[
            "--stripe-webhook-secret",
            SECRET,
            "--stripe-secret-key",
            "sk_test_x",
            "--stripe-api-base",
            &stripe,
            "--stripe-outbox-interval",
            "1s",
        ],
    )
    .await
    else {
        return;
    };
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("{stripe}/v1/customers"))
        .basic_auth("sk_test_x", Some(""))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "localstripe did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let post = |path: &str, form: Vec<(&str, String)>| {
        http.post(format!("{stripe}{path}"))
            .basic_auth("sk_test_x", Some(""))
            .form(&form)
            .send()
    };
    // localstripe signs and sends its events to Tollgate's endpoint.
    let hook = http
        .post(format!("{stripe}/_config/webhooks/tollgate"))
        .json(&json!({ "url": app.url("/stripe/webhook"), "secret": SECRET,
            "events": ["customer.subscription.created", "customer.subscription.deleted", "invoice.payment_succeeded"] }))
        .send()
        .await
        .unwrap();
    assert!(hook.status().is_success(), "{}", hook.status());

    let platform = app.platform_token();
    let body = app
        .gql(
            &platform,
            "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code } }",
            json!({ "i": { "code": "pro", "name": "Pro", "rank": 70, "priceMonthly": "42",
                "stripePriceId": "price_pro_monthly",
                "limits": [{ "metric": "bookings", "included": "10", "enforcement": "OVERAGE", "overageUnitPrice": "2.00" }] } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let org = app.create_org("acme", "basic").await;

    // In Stripe (localstripe's dialect: a plan's id plays the price's): a price, a customer with a
    // card, a subscription carrying the organization's id.
    let ok = |r: reqwest::Response| async move {
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{status}: {v}");
        v
    };
    ok(post(
        "/v1/products",
        vec![
            ("id", "prod_pro".into()),
            ("name", "Pro".into()),
            ("type", "service".into()),
        ],
    )
    .await
    .unwrap())
    .await;
    ok(post(
        "/v1/plans",
        vec![
            ("id", "price_pro_monthly".into()),
            ("product", "prod_pro".into()),
            ("amount", "4200".into()),
            ("currency", "usd".into()),
            ("interval", "month".into()),
        ],
    )
    .await
    .unwrap())
    .await;
    let customer = ok(
        post("/v1/customers", vec![("email", "owner@acme.test".into())])
            .await
            .unwrap(),
    )
    .await;
    let cus = customer["id"].as_str().unwrap().to_owned();
    let token = ok(post(
        "/v1/tokens",
        vec![
            ("card[number]", "4242424242424242".into()),
            ("card[exp_month]", "12".into()),
            ("card[exp_year]", "2030".into()),
            ("card[cvc]", "123".into()),
        ],
    )
    .await
    .unwrap())
    .await;
    ok(post(
        &format!("/v1/customers/{cus}/sources"),
        vec![("source", token["id"].as_str().unwrap().to_owned())],
    )
    .await
    .unwrap())
    .await;
    let sub = ok(post(
        "/v1/subscriptions",
        vec![
            ("customer", cus.clone()),
            ("items[0][plan]", "price_pro_monthly".into()),
            ("metadata[organization_id]", org.clone()),
        ],
    )
    .await
    .unwrap())
    .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    let seen = eventually(&app, &org, |o| o["plan"]["code"] == "pro").await;
    assert_eq!(seen["status"], "ACTIVE");
    assert_eq!(seen["stripeCustomerId"], cus.as_str());
    assert_eq!(seen["stripeSubscriptionId"], sub_id.as_str());
    let rows: Vec<&Value> = seen["subscriptionHistory"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| !h["stripeEventId"].is_null())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["changeType"], "UPGRADE");
    assert_eq!(rows[0]["stripeSubscriptionId"], sub_id.as_str());
    assert_eq!(rows[0]["amountPaid"], "42.00");
    assert!(
        rows[0]["stripeEventId"]
            .as_str()
            .unwrap()
            .starts_with("evt_")
    );

    // Overage of the last period, billed through Stripe: an invoice item on the customer, naming
    // its charge.
    use chrono::Datelike;
    let last_day = chrono::Utc::now()
        .date_naive()
        .with_day(1)
        .and_then(|d| d.pred_opt())
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let service = app.tenant_token(&org, tollgate::domain::Role::Service);
    let body = app
        .gql(
            &service,
            "mutation($t: DateTime) { recordUsage(input: {metric: \"bookings\", quantity: \"15\", occurredAt: $t}) { accepted } }",
            json!({ "t": last_day.to_rfc3339() }),
        )
        .await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
    let billed = app
        .ok(
            &platform,
            "mutation { billOverage { id amount } }",
            json!({}),
        )
        .await;
    let charge = billed["billOverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["amount"] == "10.00")
        .unwrap_or_else(|| panic!("{billed}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let item = loop {
        let items: Value = http
            .get(format!("{stripe}/v1/invoiceitems"))
            .basic_auth("sk_test_x", Some(""))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(i) = items["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["metadata"]["tollgate_charge_id"] == charge.as_str())
        {
            break i.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no invoice item: {items}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (item["customer"].as_str(), item["amount"].as_i64()),
        (Some(cus.as_str()), Some(1000)),
        "{item}"
    );
    let started = Instant::now();
    loop {
        let seen = app
            .ok(
                &service,
                "{ organization { overageCharges { nodes { status stripeId } } } }",
                json!({}),
            )
            .await;
        let node = seen["organization"]["overageCharges"]["nodes"][0].clone();
        if node["status"] == "SENT" {
            assert_eq!(node["stripeId"], item["id"], "{node}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not SENT: {node}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Cancelled in Stripe: cancelled here.
    let cancelled = http
        .delete(format!("{stripe}/v1/subscriptions/{sub_id}"))
        .basic_auth("sk_test_x", Some(""))
        .send()
        .await
        .unwrap();
    assert!(cancelled.status().is_success());
    let seen = eventually(&app, &org, |o| o["status"] == "CANCELLED").await;
    assert!(
        seen["subscriptionHistory"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["changeType"] == "CANCELLED" && !h["stripeEventId"].is_null()),
        "{seen}"
    );
    let _ = child.kill().await;
}
crate::per_engine!(
    subscriptions,
    super::a_subscription_in_stripe_moves_the_organization
);
